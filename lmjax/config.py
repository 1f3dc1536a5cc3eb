"""The config schema: every key lmjax understands, written once.

Each section of the config is a frozen dataclass below; each field is one key with its default,
its allowed values or bounds and a one-line help (`key(...)`), and each section checks itself in
`__post_init__`, so a section built by hand (`ModelConfig(vocab_size=65, max_len=64, width=128)`)
is checked exactly as one resolved from a config file.

    base_config()  -> ml_collections.ConfigDict of every key at its default (what config files
                      under configs/ start from; they change values, never add keys)
    resolve(c)     -> Config: the typed, checked sections (model, data and training code receive
                      these objects, not ConfigDicts)

Model families: `config.model.family` picks one; a key of config.model that only some families
use names them in `key(..., families=...)`, and `resolve` refuses such a key set away from its
default for another family. A new family adds its name to FAMILIES and its keys as one more base
class of ModelConfig.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Mapping

import ml_collections

from lmjax.errors import ConfigError

# Named model sizes, defined once: (num_layers, num_heads, width). Aspect ratios follow the
# GPT-2/Chinchilla ladders (width/depth ~ 32-128, head dim 32-128).
SIZES: dict[str, tuple[int, int, int]] = {
    "nano": (2, 2, 64),
    "micro": (4, 4, 128),
    "tiny": (4, 4, 256),
    "mini": (6, 6, 384),
    "small": (12, 12, 768),
    "medium": (24, 16, 1024),
    "large": (24, 16, 1536),
    "xl": (24, 32, 2048),
}

FAMILIES = ("decoder", "encoder", "lstm", "gru", "rnn", "mlp", "ngram")
TRANSFORMERS = ("decoder", "encoder")  # the families built from attention blocks
RECURRENT = ("lstm", "gru", "rnn")  # one recurrent module, its cell named by the family
NEURAL = ("decoder", "encoder", *RECURRENT, "mlp")  # the families trained by gradient steps
CAUSAL = ("decoder", *RECURRENT, "mlp", "ngram")  # the next-token language models (all but encoder)
COUNTED_STEP = 1  # an n-gram model is counted, not trained: its checkpoint and result are "step 1"
TOKENIZERS = ("byte", "char", "sentencepiece", "bpe", "hf")
TRAINED_TOKENIZERS = ("sentencepiece", "bpe")  # learn a vocabulary of config.data.vocab_size
PACKINGS = ("concat", "documents")
BAD_RECORDS = ("error", "skip")
SP_MODEL_TYPES = ("bpe", "unigram")
VAL_PARTS = ("all", "tune", "test")  # the whole validation split, its first half, its second half
NORMS = ("rmsnorm", "layernorm")
MLPS = ("gelu", "swiglu")
POSITIONS = ("rope", "learned", "sinusoidal", "alibi", "none")
ATTENTIONS = ("mha", "mqa", "gqa", "linear")
ATTENTION_IMPLS = ("auto", "einsum", "xla", "cudnn")
REMAT_POLICIES = ("nothing", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16")
SCHEDULES = ("cosine", "linear", "constant")
NONFINITE = ("halt", "skip")
OPTIMIZERS = ("adamw", "muon")
# Token ids are stored as uint16/uint32 and batched as int32: ids must fit int32.
MAX_VOCAB = 2**31


def key(default, help: str, *, choices: tuple | None = None, minimum: float | None = None,
        families: tuple[str, ...] | None = None, identity: bool | None = None):
    """One config key: its default, one-line help, and (optionally) its allowed values, its
    smallest allowed value, the model families that use it, and whether it is part of a run's
    identity (default: the data and model keys, which fix the parameters and the token stream,
    so a workdir's checkpoints only continue under the same values)."""
    return dataclasses.field(default=default, metadata={
        "help": help, "choices": choices, "minimum": minimum, "families": families,
        "identity": identity})


def derived(help: str):
    """A field of a section that is not a config key: resolve() fills it from other sections."""
    return dataclasses.field(default=0, metadata={"help": help, "derived": True})


def keys(section) -> list[dataclasses.Field]:
    """The config keys of a section class or instance (derived fields left out)."""
    return [f for f in dataclasses.fields(section) if not f.metadata.get("derived")]


def _check_keys(section, name: str) -> None:
    """Type, choices and minimum of every key of a section instance."""
    for f in keys(section):
        value, want = getattr(section, f.name), type(f.default)
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(section, f.name, float(value))
        elif not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ConfigError(f"config.{name}.{f.name} must be {want.__name__}, got "
                              f"{type(value).__name__} {value!r}")
        choices, minimum = f.metadata["choices"], f.metadata["minimum"]
        if choices and value not in choices:
            raise ConfigError(
                f"config.{name}.{f.name}={value!r} is not one of {', '.join(map(repr, choices))}"
                f" (did you mean {nearest_key(str(value), list(choices))!r}?)")
        if minimum is not None and value < minimum:
            bound = "positive" if minimum == 1 else f">= {minimum}"
            raise ConfigError(f"config.{name}.{f.name} must be {bound}, got {value}")


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, min(n, 64) + 1) if n % k == 0]


# --------------------------------------------------------------------------------------- data

@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    corpus: str = key("stdlib", "'stdlib', 'tinyshakespeare', or a path, folder or glob of UTF-8 text "
                      "files (each file a document), .jsonl / .jsonl.gz / .jsonl.zst or .parquet files "
                      "(each record a document), or a Hugging Face datasets folder (save_to_disk)")
    mixture: str = key("", "instead of corpus: several corpora with weights, 'SOURCE:W,SOURCE:W' (a "
                       "source may be named, 'NAME=SOURCE:W'); each batch takes each source's share "
                       "of rows, and validation is reported per source")
    text_key: str = key("text", "JSONL, Parquet and datasets inputs: the field holding a record's text")
    bad_records: str = key("error", "a record that is not JSON, has no text_key or is not UTF-8: "
                           "'error' names it and stops, 'skip' leaves it out and counts it",
                           choices=BAD_RECORDS)
    tokenizer: str = key("byte", "how text becomes ids", choices=TOKENIZERS)
    vocab_size: int = key(0, "sentencepiece, bpe: the vocabulary to train; hf: the model's (>= the "
                          "tokenizer's; 0: the tokenizer's); byte/char derive theirs", minimum=0)
    tokenizer_path: str = key("", "tokenizer='hf': a Hugging Face tokenizer.json (`lmjax import` "
                              "writes one into the workdir); needs the hf extra",
                              identity=False)  # its contents are checked on resume, not its place
    sp_model_type: str = key("bpe", "sentencepiece model", choices=SP_MODEL_TYPES)
    tokenizer_train_bytes: int = key(20_000_000, "sentencepiece, bpe: train on at most this many "
                                     "bytes of training documents, sampled evenly over them", minimum=1)
    val_fraction: float = key(0.1, "share held out: by document (a hash of its file and position), "
                              "or for one text file its tail")
    packing: str = key("concat", "'concat': windows drawn over the documents end to end; "
                       "'documents': rows of whole documents (a long one's tail), attention and "
                       "positions within each document (decoder, encoder)", choices=PACKINGS)
    data_dir: str = key("", "where named corpora live; empty means $LMJAX_DATA_DIR", identity=False)
    cache_dir: str = key("", "token stores; empty means $LMJAX_CACHE_DIR or ~/.cache/lmjax",
                         identity=False)
    # Not identity: it changes what is evaluated, never the parameters or the token stream.
    val_part: str = key("all", "validation tokens every evaluation scores: all, or the first ('tune') "
                        "or second ('test') half, to choose settings on one and report the other",
                        choices=VAL_PARTS, identity=False)

    def __post_init__(self):
        _check_keys(self, "data")
        if self.vocab_size > MAX_VOCAB:
            raise ConfigError(f"config.data.vocab_size={self.vocab_size} is too large for the token "
                              "cache (ids must fit int32); lower config.data.vocab_size")
        if self.tokenizer in TRAINED_TOKENIZERS and self.vocab_size <= 0:
            raise ConfigError(f"config.data.tokenizer={self.tokenizer!r} needs config.data.vocab_size > 0, "
                              "e.g. 4096")
        if (self.tokenizer == "hf") != bool(self.tokenizer_path):
            raise ConfigError("config.data.tokenizer_path goes with config.data.tokenizer='hf' (a "
                              "tokenizer.json), and only with it; set both or neither")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"config.data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if not self.text_key:
            raise ConfigError("config.data.text_key must name a field, e.g. 'text'")
        if self.mixture:
            from lmjax.data.sources import parse_mixture

            parse_mixture(self.mixture)  # raises ConfigError naming the bad part


# -------------------------------------------------------------------------------------- model

@dataclasses.dataclass(frozen=True, kw_only=True)
class _CommonModelKeys:
    family: str = key("decoder", "the model family", choices=FAMILIES)
    size: str = key("", "a name from SIZES; sets num_layers, num_heads and width", choices=("", *SIZES),
                    families=NEURAL)
    num_layers: int = key(4, "blocks (decoder), recurrent layers (lstm, gru, rnn), tanh hidden layers "
                          "(mlp)", minimum=1, families=NEURAL)
    width: int = key(256, "residual stream width; the recurrent models' and the MLP's hidden and "
                     "embedding width", minimum=1, families=NEURAL)
    dropout: float = key(0.0, "dropout after the embedding and each residual branch", families=NEURAL)
    dtype: str = key("float32", "compute dtype; parameters are always float32", choices=DTYPES,
                     families=NEURAL)
    tie_embeddings: bool = key(True, "the unembedding is the embedding transposed", families=NEURAL)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _TransformerKeys:
    num_heads: int = key(4, "query heads", minimum=1, families=TRANSFORMERS)
    num_kv_heads: int = key(0, "key/value heads for 'gqa'; 0 means num_heads", minimum=0,
                            families=TRANSFORMERS)
    mlp_ratio: int = key(4, "MLP hidden width / width", minimum=1, families=TRANSFORMERS)
    mlp_width: int = key(0, "MLP hidden width; 0 means mlp_ratio * width", minimum=0,
                         families=TRANSFORMERS)
    mlp: str = key("gelu", "MLP: 'gelu' (up, GELU with the tanh approximation, down: GPT-2) or "
                   "'swiglu' (silu(gate) * up, down: LLaMA)", choices=MLPS, families=TRANSFORMERS)
    bias: bool = key(False, "biases in every projection (query, key, value, out, MLP; not the head), "
                     "as GPT-2", families=TRANSFORMERS)
    attention: str = key("mha", "attention variant", choices=ATTENTIONS, families=TRANSFORMERS)
    attention_impl: str = key("auto", "softmax attention kernel: 'auto' is cuDNN flash attention on "
                              "NVIDIA GPUs where the shape allows, einsums elsewhere",
                              choices=ATTENTION_IMPLS, families=TRANSFORMERS, identity=False)
    window: int = key(0, "0: full causal attention; W > 0: each token sees the last W", minimum=0,
                      families=TRANSFORMERS)
    linear_chunk: int = key(64, "attention='linear': chunk length of the causal scan", minimum=1,
                            families=TRANSFORMERS)
    positions: str = key("rope", "position encoding", choices=POSITIONS, families=TRANSFORMERS)
    norm: str = key("rmsnorm", "normalisation layer", choices=NORMS, families=TRANSFORMERS)
    norm_eps: float = key(1e-6, "epsilon of every norm (GPT-2 and LLaMA use 1e-5)", families=TRANSFORMERS)
    rope_theta: float = key(10000.0, "positions='rope': the rotary base (LLaMA 3 uses 500000)",
                            families=TRANSFORMERS)
    scan_layers: bool = key(False, "one nn.scan over stacked layers (compiles one layer, not N)",
                            families=TRANSFORMERS)
    remat: bool = key(False, "recompute each block's activations in the backward pass",
                      families=TRANSFORMERS, identity=False)
    remat_policy: str = key("nothing", "with remat: what the backward may keep instead of recomputing: "
                            "'nothing', 'dots' (every matmul output) or 'dots_no_batch' (the "
                            "projections', not attention's batched dots)",
                            choices=REMAT_POLICIES, families=TRANSFORMERS, identity=False)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _RecurrentKeys:
    unroll: int = key(0, "lstm, gru, rnn: time steps per iteration of the recurrent loop (nn.RNN's "
                      "unroll), a speed setting; 0: 8 on GPUs (2x faster than 1 on an H100 for the "
                      "LSTM), 1 elsewhere (8 is ~10% slower on CPU)", minimum=0, families=RECURRENT,
                      identity=False)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _MlpLmKeys:
    context: int = key(8, "mlp: how many previous tokens (the current one included) it sees",
                       minimum=1, families=("mlp",))
    direct: bool = key(False, "mlp: Bengio et al.'s direct connection from the context to the output",
                       families=("mlp",))


@dataclasses.dataclass(frozen=True, kw_only=True)
class _EncoderKeys:
    mask_rate: float = key(0.15, "encoder: share of positions chosen for the masked-LM loss",
                           families=("encoder",))


@dataclasses.dataclass(frozen=True, kw_only=True)
class _NgramKeys:
    order: int = key(3, "ngram: tokens per n-gram (the context is order - 1 tokens)", minimum=1,
                     families=("ngram",))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig(_CommonModelKeys, _TransformerKeys, _RecurrentKeys, _MlpLmKeys, _EncoderKeys, _NgramKeys):
    """config.model, plus the two dimensions the model needs from elsewhere."""

    vocab_size: int = derived("the tokenizer's vocabulary (0 until the data is prepared)")
    max_len: int = derived("context length = config.train.seq_len: learned positions, KV cache")

    def __post_init__(self):
        _check_keys(self, "model")
        if self.size:  # a named size sets its three keys
            for name, value in zip(("num_layers", "num_heads", "width"), SIZES[self.size]):
                object.__setattr__(self, name, value)
        if self.vocab_size < 0 or self.max_len < 0:
            raise ConfigError(f"model vocab_size and max_len must be >= 0, got {self.vocab_size}, "
                              f"{self.max_len}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"config.model.dropout must be in [0, 1), got {self.dropout}")
        if self.family in TRANSFORMERS:
            self._check_attention()
        if self.family == "encoder" and (self.attention == "linear" or self.window):
            raise ConfigError("the encoder family attends both ways: config.model.attention='linear' and "
                              "config.model.window are causal-only; use mha, mqa or gqa with window=0")
        if not 0.0 < self.mask_rate < 1.0:
            raise ConfigError(f"config.model.mask_rate must be in (0, 1), got {self.mask_rate}")
        if not self.norm_eps > 0 or not self.rope_theta > 0:
            raise ConfigError(f"config.model.norm_eps and rope_theta must be positive, got "
                              f"{self.norm_eps}, {self.rope_theta}")
        if self.remat_policy != "nothing" and not self.remat:
            raise ConfigError(f"config.model.remat_policy={self.remat_policy!r} applies with remat: "
                              "set config.model.remat=True, or leave remat_policy='nothing'")

    def _check_attention(self):
        H, kv, att, D = self.num_heads, self.num_kv_heads, self.attention, self.width
        if D % H:
            raise ConfigError(f"config.model.num_heads={H} does not divide config.model.width={D}; "
                              f"pick heads from {_divisors(D)}")
        if kv and H % kv:
            raise ConfigError(f"config.model.num_kv_heads={kv} does not divide config.model.num_heads={H}")
        if att == "mha" and kv not in (0, H):
            raise ConfigError(f"config.model.attention='mha' uses all {H} heads for keys/values, got "
                              f"num_kv_heads={kv}; set num_kv_heads=0 or use attention='gqa'")
        if att == "mqa" and kv not in (0, 1):
            raise ConfigError(f"config.model.attention='mqa' has one kv head, got num_kv_heads={kv}; "
                              "set num_kv_heads=0 (or 1) or use attention='gqa'")
        if att == "gqa" and not 1 <= kv < H:
            raise ConfigError(f"config.model.attention='gqa' needs 1 <= num_kv_heads < num_heads={H} "
                              f"(a divisor of it), got num_kv_heads={kv}"
                              + ("; use attention='mha' for as many kv heads as heads" if kv else ""))
        if att == "linear" and self.window:
            raise ConfigError(f"config.model.attention='linear' has no window, got window={self.window}; "
                              "set window=0 or use a softmax attention ('mha', 'mqa', 'gqa')")
        if att == "linear" and self.positions == "alibi":
            raise ConfigError("config.model.positions='alibi' is a softmax bias and does not apply to "
                              "attention='linear'; use positions 'rope', 'learned', 'sinusoidal' or 'none'")
        if self.positions == "rope" and self.head_dim % 2:
            raise ConfigError(f"rotary positions need an even head dim, got {self.head_dim} "
                              f"(config.model.width / num_heads)")

    @classmethod
    def from_config(cls, model_cfg, *, vocab_size: int = 0, max_len: int = 0) -> ModelConfig:
        """From a `config.model` ConfigDict or dict (unknown keys are errors)."""
        d = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
        return _build(cls, "model", d, vocab_size=vocab_size, max_len=max_len)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @property
    def mlp_hidden(self) -> int:
        """The MLP's hidden width: mlp_width, else mlp_ratio * width."""
        return self.mlp_width or self.mlp_ratio * self.width

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads: num_heads for 'mha' (and 'linear' unless set), 1 for 'mqa',
        num_kv_heads for 'gqa'."""
        if self.attention == "mqa":
            return 1
        return self.num_kv_heads or self.num_heads

    @property
    def compute_dtype(self):
        import jax.numpy as jnp

        return jnp.dtype(self.dtype)


# -------------------------------------------------------------------------------- mesh, train

@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """Device counts per mesh axis; one of them may be -1: the devices the others leave."""

    data: int = key(-1, "data-parallel devices", minimum=-1)
    fsdp: int = key(1, "devices the parameters and optimizer state are sharded over", minimum=-1)
    tensor: int = key(1, "tensor-parallel devices", minimum=-1)

    def __post_init__(self):
        _check_keys(self, "mesh")
        sizes = (self.data, self.fsdp, self.tensor)
        if 0 in sizes:
            raise ConfigError(f"config.mesh sizes must be positive or -1, got data/fsdp/tensor={list(sizes)}")
        if sizes.count(-1) > 1:
            raise ConfigError("config.mesh: at most one of data/fsdp/tensor may be -1")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    steps: int = key(1000, "optimizer steps", minimum=1)
    batch_size: int = key(32, "global batch, in sequences", minimum=1)
    seq_len: int = key(128, "tokens per sequence (the context length)", minimum=1, identity=True)
    lr: float = key(1e-3, "peak learning rate")
    seed: int = key(0, "initialisation, batches and dropout")
    replicas: int = key(1, "independently initialised copies of the model trained together in one "
                        "jitted step (seeds seed..seed+replicas-1, each with its own batches): "
                        "several seeds for the price of one compile", minimum=1, identity=True)
    warmup_steps: int = key(100, "linear warm-up", minimum=0)
    schedule: str = key("cosine", "decay after warm-up", choices=SCHEDULES)
    min_lr_ratio: float = key(0.1, "final lr as a share of the peak")
    optimizer: str = key("adamw", "'adamw', or 'muon': optax.contrib.muon (orthogonalised momentum) "
                         "for the weight matrices of the blocks at muon_lr, AdamW at lr for the rest "
                         "(embeddings, head, norms, biases; undecayed)", choices=OPTIMIZERS)
    muon_lr: float = key(0.02, "optimizer='muon': peak learning rate of the blocks' matrices (same "
                         "warmup and decay as lr)")
    muon_ns_steps: int = key(5, "optimizer='muon': Newton-Schulz iterations per update (each three "
                             "matmuls per matrix; fewer are cheaper and orthogonalise less)", minimum=1)
    weight_decay: float = key(0.1, "AdamW decay, on matrices only (muon: on the blocks' matrices)")
    b1: float = key(0.9, "AdamW beta1")
    b2: float = key(0.95, "AdamW beta2")
    grad_clip: float = key(1.0, "global-norm clipping; 0 disables")
    grad_accum: int = key(1, "micro-batches per step", minimum=1)
    loss_chunk: int = key(0, "> 0: the loss computes logits this many positions at a time and "
                          "recomputes them in the backward (no whole [batch, seq_len, vocab] logits)",
                          minimum=0)
    log_every: int = key(10, "steps between metrics rows", minimum=1)
    eval_every: int = key(250, "steps between validation passes", minimum=1)
    eval_batches: int = key(16, "periodic evaluations score eval_batches x batch_size windows spread evenly "
                            "over the validation split (0: all of it); the final one always scores all", minimum=0)
    checkpoint_every: int = key(500, "steps between checkpoints", minimum=1)
    keep_checkpoints: int = key(2, "checkpoints kept; 0 keeps all", minimum=0)
    nonfinite: str = key("halt", "NaN/Inf loss or gradients: 'halt', or 'skip' the update",
                         choices=NONFINITE)
    max_nonfinite: int = key(3, "'skip': halt after this many non-finite steps in a row", minimum=1)

    def __post_init__(self):
        _check_keys(self, "train")
        if self.loss_chunk and self.seq_len % self.loss_chunk:
            raise ConfigError(
                f"config.train.loss_chunk={self.loss_chunk} must be 0 (off) or divide "
                f"config.train.seq_len={self.seq_len}; pick one of {_divisors(self.seq_len)}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"config.train.grad_accum={self.grad_accum} does not divide "
                              f"config.train.batch_size={self.batch_size}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SampleConfig:
    prompt: str = key("", "`lmjax train` ends by printing a continuation of this, when set")
    max_new_tokens: int = key(0, "0: fill the context (train.seq_len) after the prompt", minimum=0)
    temperature: float = key(0.8, "0 for greedy")
    top_k: int = key(0, "keep the k most likely tokens; 0: off", minimum=0)
    top_p: float = key(1.0, "nucleus sampling mass; 1: off")
    seed: int = key(0, "sampling seed")


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "mesh": MeshConfig,
                             "train": TrainConfig, "sample": SampleConfig}


@dataclasses.dataclass(frozen=True)
class Config:
    """A resolved config: one typed, checked object per section."""

    data: DataConfig
    model: ModelConfig
    mesh: MeshConfig
    train: TrainConfig
    sample: SampleConfig

    def __post_init__(self):  # checks that span sections
        if self.train.replicas > 1 and self.model.family == "ngram":
            raise ConfigError("config.train.replicas is for models trained by steps; an n-gram model is "
                              "counted, and every seed counts the same: set replicas=1")
        if self.train.loss_chunk and self.model.family == "encoder":
            raise ConfigError("config.train.loss_chunk is for next-token losses; the encoder's masked-LM "
                              "loss scores few positions: set loss_chunk=0")
        if self.data.packing == "documents":
            self._check_documents_packing()
        if self.data.mixture and self.model.family == "ngram":
            raise ConfigError("config.data.mixture draws each batch's rows from its sources; an n-gram model is "
                              "counted over one corpus: set config.data.corpus instead")
        if self.train.loss_chunk and self.model.family == "mlp" and self.model.direct:
            raise ConfigError("config.train.loss_chunk projects the last hidden layer alone, without "
                              "config.model.direct's context-to-output term; set loss_chunk=0 or direct=False")

    def _check_documents_packing(self):
        m = self.model
        if m.family not in TRANSFORMERS:
            raise ConfigError(f"config.data.packing='documents' keeps attention inside documents, which "
                              f"the {m.family} family does not have; use packing='concat' (or a decoder or "
                              "encoder)")
        if m.attention == "linear":
            raise ConfigError("config.data.packing='documents' needs softmax attention (a mask per document); "
                              "attention='linear' has none: use mha, mqa or gqa, or packing='concat'")

    def to_dict(self) -> dict:
        """The config keys, section by section (what config.json and checkpoints hold)."""
        return {name: {f.name: getattr(getattr(self, name), f.name) for f in keys(cls)}
                for name, cls in SECTIONS.items()}


# ------------------------------------------------------------------------------ fine-tuning

POOLINGS = ("auto", "first", "mean", "last")
STDLIB_TASK = "stdlib-modules"


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """config.finetune: what `lmjax finetune` adds to a pretrained run's config. A section of its
    own, outside SECTIONS: pretraining configs (and their sweeps' hashes) never carry it; a
    fine-tuned run's config.json holds the pretrained run's sections plus this one."""

    init: str = key("", "the pretrained run's workdir (its config, tokenizer and latest checkpoint)")
    task: str = key(STDLIB_TASK, f"'{STDLIB_TASK}' (built in), or a labelled .jsonl "
                    "({'text': ..., 'label': ...} per line) or .tsv (text<TAB>label) file")
    pooling: str = key("auto", "how the hidden states become one vector: 'auto' is 'first' for the "
                       "encoder and 'last' for causal models", choices=POOLINGS)
    freeze_backbone: bool = key(False, "train the head alone (a linear probe)")
    random_init: bool = key(False, "the same model from fresh parameters (the baseline that "
                            "pretraining must beat)")
    steps: int = key(300, "fine-tuning steps", minimum=0)
    batch_size: int = key(32, "examples per step", minimum=1)
    lr: float = key(1e-3, "AdamW peak learning rate (warmup, then cosine to 10%)")
    warmup_steps: int = key(30, "linear warmup steps", minimum=0)
    weight_decay: float = key(0.01, "AdamW decay, on matrices only")
    eval_every: int = key(100, "evaluate on the held-out examples every N steps (and at the end)",
                          minimum=1)
    max_per_label: int = key(2000, f"{STDLIB_TASK}: training snippets kept per label (a fifth of it "
                             "held out), drawn evenly from the label's files", minimum=1)
    seed: int = key(0, "head initialisation, example order and dropout")

    def __post_init__(self):
        _check_keys(self, "finetune")


def finetune_base_config() -> ml_collections.ConfigDict:
    """config.finetune at its defaults, as `lmjax finetune`'s --config starts from."""
    return ml_collections.ConfigDict({"finetune": {f.name: f.default for f in keys(FinetuneConfig)}})


def resolve_finetune(c) -> FinetuneConfig:
    """A {'finetune': {...}} ConfigDict/dict (or its inner dict) -> the checked FinetuneConfig."""
    d = c.to_dict() if hasattr(c, "to_dict") else dict(c)
    d = dict(d.get("finetune", d))
    for k in d:
        check_finetune_key(f"finetune.{k}")
    return FinetuneConfig(**d)


def check_finetune_key(dotted: str) -> str:
    """`dotted` ('finetune.steps') if config.finetune has it, else a ConfigError naming the nearest."""
    section, _, name = dotted.partition(".")
    if section != "finetune":
        raise ConfigError(f"lmjax finetune takes config.finetune keys only, got 'config.{dotted}'; the "
                          "model, data and tokenizer are the pretrained run's")
    valid = [f.name for f in keys(FinetuneConfig)]
    if name not in valid:
        raise ConfigError(f"unknown config key 'config.{dotted}'; did you mean "
                          f"'config.finetune.{nearest_key(name, valid)}'?")
    return dotted


# ------------------------------------------------------------------------- ConfigDict <-> Config

def base_config() -> ml_collections.ConfigDict:
    """Every key at its default, as the ConfigDict that config files start from."""
    return ml_collections.ConfigDict(
        {name: {f.name: f.default for f in keys(cls)} for name, cls in SECTIONS.items()})


def fill_defaults(saved: Mapping) -> dict:
    """A saved config (config.json, a checkpoint's) as today's schema reads it: every key of every
    section, a key added to the schema since at its default (keys it no longer has are left out)."""
    return {name: {f.name: saved.get(name, {}).get(f.name, f.default) for f in keys(cls)}
            for name, cls in SECTIONS.items()}


def flat_keys(c: Mapping | None = None, prefix: str = "") -> list[str]:
    """Dotted keys of `c` (default: the schema), e.g. 'model.width'."""
    if c is None:
        return [f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in keys(cls)]
    out = []
    for k, v in c.items():
        if isinstance(v, (Mapping, ml_collections.ConfigDict)):
            out += flat_keys(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def identity_keys() -> list[str]:
    """Dotted keys that a workdir's checkpoints can only continue under (see `key`)."""
    out = []
    for name, cls in SECTIONS.items():
        for f in keys(cls):
            identity = f.metadata["identity"]
            if identity or (identity is None and name in ("data", "model")):
                out.append(f"{name}.{f.name}")
    return out


def nearest_key(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return close[0] if close else ""


def check_key(dotted: str, *, where: str = "") -> str:
    """`dotted` ('model.width') if the schema has it, else a ConfigError naming the nearest key."""
    valid = flat_keys()
    if dotted not in valid:
        raise ConfigError(f"unknown config key 'config.{dotted}'{where}; did you mean "
                          f"'config.{nearest_key(dotted, valid)}'?")
    return dotted


def _build(cls, name: str, values: Mapping, **derived_values):
    for k in values:
        check_key(f"{name}.{k}")
    return cls(**values, **derived_values)


def _other_family_keys(model: Mapping) -> list[dataclasses.Field]:
    """The keys of config.model that only families other than config.model.family use."""
    family = model.get("family", ModelConfig.family)
    if family not in FAMILIES:
        return []  # ModelConfig names the valid families
    return [f for f in keys(ModelConfig) if f.metadata["families"] and family not in f.metadata["families"]]


def _family_error(f: dataclasses.Field, family: str) -> ConfigError:
    users = f.metadata["families"]
    names = users[0] if len(users) == 1 else f"{', '.join(users[:-1])} and {users[-1]}"
    return ConfigError(
        f"config.model.{f.name} applies to the {names} famil{'ies' if len(users) > 1 else 'y'}, "
        f"not config.model.family={family!r}; leave it at its default ({f.default!r}) or "
        "choose another family")


def _check_family(model: dict) -> None:
    for f in _other_family_keys(model):
        if f.name in model and model[f.name] != f.default:
            raise _family_error(f, model["family"])


def reset_other_family_keys(c: ml_collections.ConfigDict, given: list[str]) -> list[str]:
    """Set the config.model keys of other families than config.model.family back to their
    defaults, so a family chosen on the command line works from a config file written for
    another; returns the names reset. A key in `given` (dotted: those set on the command line)
    is refused instead."""
    reset = []
    for f in _other_family_keys(c.model):
        if f"model.{f.name}" in given:
            raise _family_error(f, c.model.family)
        if c.model[f.name] != f.default:
            c.model[f.name] = f.default
            reset.append(f.name)
    return reset


def resolve(c) -> Config:
    """A ConfigDict (or dict, or Config) -> the typed, checked Config. Raises ConfigError with
    one line naming the key and the fix."""
    if isinstance(c, Config):
        return c
    d = c.to_dict() if hasattr(c, "to_dict") else dict(c)
    for section in d:
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section 'config.{section}'; did you mean "
                              f"'config.{nearest_key(section, list(SECTIONS))}'?")
    _check_family(d.get("model", {}))
    sections = {name: _build(cls, name, d.get(name, {})) for name, cls in SECTIONS.items()
                if name != "model"}
    model = _build(ModelConfig, "model", d.get("model", {}), max_len=sections["train"].seq_len)
    return Config(model=model, **sections)

