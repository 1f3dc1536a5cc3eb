"""The config schema: every key lmjax understands, with its default and type.

Config files under configs/ start from `base_config()` and change values; they never add keys,
so a typo in a file or on the command line fails before any compute (see `validate`).
"""

from __future__ import annotations

import difflib

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

CORPORA_HELP = "'stdlib', 'tinyshakespeare', or a path/glob of UTF-8 text files"
TOKENIZERS = ("byte", "char", "sentencepiece")
SP_MODEL_TYPES = ("bpe", "unigram")
NORMS = ("rmsnorm", "layernorm")
POSITIONS = ("rope", "learned", "sinusoidal", "alibi", "none")
ATTENTIONS = ("mha", "mqa", "gqa", "linear")
DTYPES = ("float32", "bfloat16")
SCHEDULES = ("cosine", "linear", "constant")
NONFINITE = ("halt", "skip")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.data = ml_collections.ConfigDict()
    c.data.corpus = "stdlib"
    c.data.tokenizer = "byte"
    c.data.vocab_size = 0  # sentencepiece only: the vocabulary to train; byte/char derive theirs
    c.data.sp_model_type = "bpe"
    c.data.val_fraction = 0.1  # stdlib and globs: share of files held out (by file); text: tail
    c.data.data_dir = ""  # where named corpora live; empty means $LMJAX_DATA_DIR
    c.data.cache_dir = ""  # token caches; empty means $LMJAX_CACHE_DIR or ~/.cache/lmjax

    c.model = ml_collections.ConfigDict()
    c.model.size = ""  # a name from SIZES; sets num_layers/num_heads/width unless overridden
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.num_kv_heads = 0  # 0 means num_heads
    c.model.width = 256
    c.model.mlp_ratio = 4
    c.model.attention = "mha"
    c.model.window = 0  # 0 means full causal attention; W > 0: each token sees the last W
    c.model.linear_chunk = 64  # attention='linear': chunk length of the causal scan
    c.model.positions = "rope"
    c.model.norm = "rmsnorm"
    c.model.tie_embeddings = True
    c.model.dropout = 0.0
    c.model.dtype = "float32"  # compute dtype; parameters are always float32
    c.model.remat = False
    c.model.scan_layers = False  # True: nn.scan over stacked layers (compiles one layer, not N)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: the devices left over after fsdp and tensor
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000
    c.train.batch_size = 32  # global, in sequences
    c.train.seq_len = 128
    c.train.lr = 1e-3
    c.train.seed = 0
    c.train.warmup_steps = 100
    c.train.schedule = "cosine"
    c.train.min_lr_ratio = 0.1  # final lr as a share of the peak
    c.train.weight_decay = 0.1
    c.train.b1 = 0.9
    c.train.b2 = 0.95
    c.train.grad_clip = 1.0  # global-norm clipping; 0 disables
    c.train.grad_accum = 1  # micro-batches per step
    # > 0: the training loss computes logits this many positions at a time and recomputes them in
    # the backward, so the [batch, seq_len, vocab] float32 logits are never stored whole.
    c.train.loss_chunk = 0
    c.train.log_every = 10
    c.train.eval_every = 250
    c.train.eval_batches = 16  # 0: the whole validation split
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 2
    c.train.nonfinite = "halt"  # NaN/Inf loss or gradients: 'halt', or 'skip' the update
    c.train.max_nonfinite = 3  # 'skip': halt after this many non-finite steps in a row

    c.sample = ml_collections.ConfigDict()
    c.sample.prompt = ""  # `lmjax train` ends by printing a continuation of this, when set
    c.sample.max_new_tokens = 0  # 0: fill the context (train.seq_len) after the prompt
    c.sample.temperature = 0.8
    c.sample.top_k = 0
    c.sample.top_p = 1.0
    c.sample.seed = 0
    return c


def nearest_key(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return close[0] if close else ""


def flat_keys(c: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k, v in c.items():
        name = f"{prefix}{k}"
        if isinstance(v, ml_collections.ConfigDict):
            out += flat_keys(v, name + ".")
        else:
            out.append(name)
    return out


def check_keys(c: ml_collections.ConfigDict) -> None:
    """Every key in `c` must exist in the schema, with the schema's type."""
    schema = base_config()
    valid = flat_keys(schema)
    for key in flat_keys(c):
        if key not in valid:
            raise ConfigError(
                f"unknown config key 'config.{key}'; did you mean 'config.{nearest_key(key, valid)}'?"
            )
        want = type(_get(schema, key))
        got = _get(c, key)
        if want is float and isinstance(got, int) and not isinstance(got, bool):
            continue
        if not isinstance(got, want) or (want is int and isinstance(got, bool)):
            raise ConfigError(
                f"config.{key} must be {want.__name__}, got {type(got).__name__} {got!r}"
            )


def _get(c, dotted: str):
    for part in dotted.split("."):
        c = c[part]
    return c


def resolve(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Apply `model.size`, then check values; returns a locked copy."""
    c = ml_collections.ConfigDict(c.to_dict())
    check_keys(c)
    m, d, t = c.model, c.data, c.train
    if m.size:
        if m.size not in SIZES:
            raise ConfigError(
                f"config.model.size={m.size!r} is not a named size; choose one of {', '.join(SIZES)}"
            )
        m.num_layers, m.num_heads, m.width = SIZES[m.size]
    _choice("data.tokenizer", d.tokenizer, TOKENIZERS)
    _choice("data.sp_model_type", d.sp_model_type, SP_MODEL_TYPES)
    _choice("model.norm", m.norm, NORMS)
    _choice("model.positions", m.positions, POSITIONS)
    _choice("model.attention", m.attention, ATTENTIONS)
    _choice("model.dtype", m.dtype, DTYPES)
    _choice("train.schedule", t.schedule, SCHEDULES)
    _choice("train.nonfinite", t.nonfinite, NONFINITE)
    if d.vocab_size > 2**31:
        raise ConfigError(
            f"config.data.vocab_size={d.vocab_size} is too large for the token cache (ids must fit "
            "int32); lower config.data.vocab_size"
        )
    if d.tokenizer == "sentencepiece" and d.vocab_size <= 0:
        raise ConfigError("config.data.tokenizer='sentencepiece' needs config.data.vocab_size > 0, e.g. 4096")
    kv = m.num_kv_heads or m.num_heads
    for key, val in [("model.num_layers", m.num_layers), ("model.num_heads", m.num_heads),
                     ("model.width", m.width), ("model.mlp_ratio", m.mlp_ratio),
                     ("train.steps", t.steps), ("train.batch_size", t.batch_size),
                     ("train.seq_len", t.seq_len), ("train.grad_accum", t.grad_accum)]:
        if val <= 0:
            raise ConfigError(f"config.{key} must be positive, got {val}")
    if m.width % m.num_heads:
        raise ConfigError(
            f"config.model.num_heads={m.num_heads} does not divide config.model.width={m.width}; "
            f"pick heads from {_divisors(m.width)}"
        )
    if m.num_heads % kv:
        raise ConfigError(
            f"config.model.num_kv_heads={kv} does not divide config.model.num_heads={m.num_heads}"
        )
    if m.positions == "rope" and (m.width // m.num_heads) % 2:
        raise ConfigError(f"rotary positions need an even head dim, got {m.width // m.num_heads}")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"config.model.dropout must be in [0, 1), got {m.dropout}")
    if t.loss_chunk < 0 or (t.loss_chunk and t.seq_len % t.loss_chunk):
        raise ConfigError(
            f"config.train.loss_chunk={t.loss_chunk} must be 0 (off) or divide "
            f"config.train.seq_len={t.seq_len}; pick one of {_divisors(t.seq_len)}"
        )
    if t.batch_size % t.grad_accum:
        raise ConfigError(
            f"config.train.grad_accum={t.grad_accum} does not divide config.train.batch_size={t.batch_size}"
        )
    if not 0.0 < d.val_fraction < 1.0:
        raise ConfigError(f"config.data.val_fraction must be in (0, 1), got {d.val_fraction}")
    c.lock()
    return c


def _choice(key, val, options):
    if val not in options:
        raise ConfigError(
            f"config.{key}={val!r} is not one of {', '.join(map(repr, options))}"
            f" (did you mean {nearest_key(str(val), list(options))!r}?)"
        )


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, min(n, 64) + 1) if n % k == 0]
