"""`lmjax.load(workdir)`: a trained run in a notebook, on any machine.

The checkpoint is restored onto this process's first device whatever mesh wrote it: the
restore target carries a single-device sharding (orbax reshards on read). In a job of several
processes every process restores its own copy (orbax's restore is collective).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from lmjax import config as config_lib
from lmjax.checkpointing import Checkpointer
from lmjax.data import Tokenizer, prepare, tokenizer_from_json
from lmjax.errors import CheckpointError, LmjaxError
from lmjax.models import ModelConfig, build, generate, model_vocab_size, token_logprobs
from lmjax.models.attention import resolve_implementation
from lmjax.training import sharding
from lmjax.workdir import CHECKPOINTS, Workdir, read_json


MASK_TOKEN = "[MASK]"  # what run.fill replaces with the encoder's mask id


class History(dict):
    """Logged metrics as columns (name -> list, None where a row lacks the name).

    `pd.DataFrame(run.metrics)` or `run.metrics.to_pandas()` gives a table indexed by row.
    """

    def __init__(self, rows: list[dict]):
        names = list(dict.fromkeys(k for r in rows for k in r))
        super().__init__({k: [r.get(k) for r in rows] for k in names})
        self.rows = rows

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def __repr__(self):
        return f"History({len(self.rows)} rows: {', '.join(self)})"


@dataclasses.dataclass
class TokenScores:
    tokens: list[str]  # the scored tokens (every token but the first, which has no context)
    logprobs: np.ndarray  # log p(token | everything before it), nats

    @property
    def total(self) -> float:
        return float(self.logprobs.sum())


@dataclasses.dataclass
class Run:
    workdir: Path
    step: int
    config: config_lib.Config
    params: dict  # the model's parameters (an n-gram model: its counted NgramModel)
    tokenizer: Tokenizer
    model_cfg: ModelConfig
    finetune: config_lib.FinetuneConfig | None = None  # set for a classifier from `lmjax finetune`
    labels: tuple[str, ...] = ()  # the classifier's labels, in the order of its outputs
    # Of a run of config.train.replicas > 1: which one this is. `config` is then that replica's
    # own (replicas=1, seed=its seed), so evaluate() and finetune see one ordinary run.
    replica: int | None = None

    @property
    def metrics(self) -> History:
        """Logged metrics; of one replica, its own values under the usual names (`loss` is its
        loss, not the replicas' mean)."""
        rows = Workdir(self.workdir).metrics()
        if self.replica is not None:
            rows = [replica_row(r, self.replica) for r in rows]
        return History(rows)

    def generate(self, prompts: str | Sequence[str], *, max_new_tokens: int | None = None,
                 temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None) -> str | list[str]:
        """Continuations of `prompts` (a string gives a string). Defaults from config.sample;
        max_new_tokens 0 fills the model's context after the longest prompt."""
        self._language_model("generate")
        s = self.config.sample
        single = isinstance(prompts, str)
        ids = [self.tokenizer.encode(p) for p in ([prompts] if single else prompts)]
        max_new_tokens = _or(max_new_tokens, s.max_new_tokens)
        if max_new_tokens == 0:  # fill the context
            max_new_tokens = max(self.model_cfg.max_len - max(len(i) for i in ids), 1)
        new = generate(
            self.model_cfg, self.params, ids,
            max_new_tokens=max_new_tokens, temperature=_or(temperature, s.temperature),
            top_k=_or(top_k, s.top_k), top_p=_or(top_p, s.top_p), seed=_or(seed, s.seed),
        )
        texts = [self.tokenizer.decode(t) for t in new]
        return texts[0] if single else texts

    def fill(self, text: str, *, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """An encoder's top_k predictions (token text, probability) for each MASK_TOKEN in
        `text`, in order."""
        self._language_model("fill")
        if self.model_cfg.family != "encoder":
            raise LmjaxError(f"fill is for the encoder family (a masked LM); this run is a "
                             f"{self.model_cfg.family}: use run.generate(...)")
        parts = text.split(MASK_TOKEN)
        if len(parts) < 2:
            raise LmjaxError(f"no {MASK_TOKEN} in the text to fill, e.g. run.fill('def {MASK_TOKEN}(self):')")
        mask_id, ids, where = self.model_cfg.vocab_size - 1, [], []
        for i, part in enumerate(parts):
            ids += [int(t) for t in self.tokenizer.encode(part)]
            if i < len(parts) - 1:
                where.append(len(ids))
                ids.append(mask_id)
        if len(ids) > self.model_cfg.max_len:
            raise LmjaxError(f"{len(ids)} tokens exceed the model's context of {self.model_cfg.max_len}; "
                             "fill a shorter text")
        logits_LV = _forward(self.model_cfg, self.params, np.asarray([ids], np.int32))[0]
        probs_MV = jax.nn.softmax(logits_LV[np.asarray(where), :mask_id], axis=-1)  # never [MASK]
        top_MK = np.argsort(-np.asarray(probs_MV), axis=-1)[:, :top_k]
        return [[(self.tokenizer.decode([int(i)]), float(probs_MV[m, i])) for i in row]
                for m, row in enumerate(top_MK)]

    def logits(self, tokens) -> np.ndarray:
        """float32 next-token logits [B, L, V] of token ids [B, L] (L at most the context)."""
        self._language_model("logits")
        if self.model_cfg.family == "ngram":
            raise LmjaxError("logits is for the neural families; an n-gram model gives run.score(text)")
        tokens_BL = np.asarray(tokens, np.int32)
        if tokens_BL.ndim != 2 or tokens_BL.shape[1] > self.model_cfg.max_len:
            raise LmjaxError(f"logits takes token ids [batch, length <= {self.model_cfg.max_len}], got "
                             f"shape {tokens_BL.shape}")
        return np.asarray(_forward(self.model_cfg, self.params, tokens_BL))

    def score(self, text: str) -> TokenScores:
        self._language_model("score")
        ids = self.tokenizer.encode(text)
        logprobs = token_logprobs(self.model_cfg, self.params, ids)
        return TokenScores([self.tokenizer.decode([i]) for i in ids[1:]], np.asarray(logprobs))

    def _language_model(self, operation: str) -> None:
        if self.finetune is not None:
            raise LmjaxError(f"{self.workdir} is a classifier fine-tuned on {self.finetune.task}; {operation} "
                             f"needs a language model: use run.classify(texts), or load {self.finetune.init}")

    def classify(self, texts: str | Sequence[str]) -> list[dict]:
        """A fine-tuned classifier's prediction for each text: {'label', 'probabilities': {label: p}}
        (texts longer than the context are truncated, as in fine-tuning)."""
        from lmjax.data.tasks import padded
        from lmjax.training.finetune import classifier_for, predict

        if self.finetune is None:
            raise LmjaxError(f"{self.workdir} is a language model, not a classifier; fine-tune it with "
                             f"`lmjax finetune --init {self.workdir} --task TASK --workdir OUT`")
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = [np.asarray(self.tokenizer.encode(t), np.int32)[:self.config.train.seq_len] for t in texts]
        ex = padded(ids, [0] * len(ids), self.config.train.seq_len)
        model = classifier_for(self.model_cfg, self.finetune, len(self.labels))
        probs = predict(model, self.params, ex.tokens, ex.lengths)
        return [{"label": self.labels[int(p.argmax())],
                 "probabilities": {label: float(q) for label, q in zip(self.labels, p)}} for p in probs]

    def evaluate(self, batches: int = 0, val_part: str | None = None) -> dict:
        """Validation loss, its standard error, perplexity, bits per byte and what was scored
        (`tokens`, `bytes`), over the whole split (`batches` N > 0: N x config.train.batch_size
        windows spread evenly over it; see lmjax/training/evaluation.py), or over the half of it
        `val_part` names ('all', 'tune', 'test'; default: the run's config.data.val_part); for a fine-tuned
        classifier, accuracy, macro-F1 and the confusion matrix on the task's held-out examples
        (`batches` does not apply)."""
        from lmjax.training import evaluation
        from lmjax.training.steps import make_setup

        if self.finetune is not None:
            from lmjax.data.tasks import check_labels
            from lmjax.training.finetune import classifier_for, evaluate_classifier, task_for

            task = task_for(self.finetune, self.config, self.tokenizer)
            check_labels(task, self.labels)
            model = classifier_for(self.model_cfg, self.finetune, len(self.labels))
            return {**evaluate_classifier(model, self.params, task.val), "labels": list(self.labels)}

        data_cfg = self.config.data
        data = prepare(data_cfg if val_part is None else dataclasses.replace(data_cfg, val_part=val_part),
                       tokenizer=self.tokenizer)  # the run's own: the one its model was trained with
        tc = self.config.train
        kw = dict(seq_len=tc.seq_len, max_windows=batches * tc.batch_size)
        if self.config.model.family == "ngram":
            return evaluation.evaluate_data(None, self.params, data, batch_size=0, **kw)
        setup = make_setup(self.config, vocab_size=self.tokenizer.vocab_size, mesh=_one_device_mesh())
        rows = evaluation.batch_rows(tc.batch_size, tc.seq_len, self.model_cfg.vocab_size)
        return evaluation.evaluate_data(setup, self.params, data, batch_size=rows, **kw)


def replica_row(row: dict, k: int) -> dict:
    """A metrics row of a replicated run as replica k's own: `<name>_replicas[k]` -> `<name>`."""
    own = {name[:-len("_replicas")]: values[k] for name, values in row.items() if name.endswith("_replicas")}
    return {name: own.get(name, v) for name, v in row.items() if not name.endswith("_replicas")}


@functools.partial(jax.jit, static_argnames=("cfg",))
def _forward(cfg, params, tokens_BL):
    return build(cfg).apply({"params": params}, tokens_BL)


def _or(value, default):
    return default if value is None else value


def _one_device_mesh():
    # This process's own first device: in a job of several processes each one restores its own copy.
    return sharding.make_mesh(config_lib.MeshConfig(data=1), devices=jax.local_devices()[:1])


def _runnable_here(config: config_lib.Config) -> config_lib.Config:
    """A run trained with cuDNN attention, loaded where there is none, uses 'auto' instead."""
    m = config.model
    if (m.family in config_lib.TRANSFORMERS and m.attention_impl == "cudnn"
            and resolve_implementation("auto", m.compute_dtype, m.head_dim) != "cudnn"):
        return dataclasses.replace(config, model=m.replace(attention_impl="auto"))
    return config


def load(workdir: str | Path, step: int | None = None, replica: int | None = None) -> Run:
    """Load the run in `workdir` (the latest checkpoint, or `step`) onto this machine. Of a run
    of config.train.replicas=K models, `replica` k (0..K-1; default 0) is the one of seed
    `seed + k`."""
    from lmjax.training.steps import make_setup

    workdir = Path(workdir)
    if not (workdir / CHECKPOINTS).is_dir():
        raise CheckpointError(f"{workdir} holds no checkpoints; train one with `lmjax train --workdir {workdir}`")
    ckpt = Checkpointer(workdir, read_only=True)
    steps = ckpt.all_steps()
    if not steps:
        raise CheckpointError(f"{workdir}/checkpoints holds no complete checkpoint")
    step = max(steps) if step is None else step
    if step not in steps:
        raise CheckpointError(f"{workdir} has no checkpoint at step {step}; it has steps {sorted(steps)}")
    cfg_dict, tok_json = ckpt.restore_meta(step)
    ft_dict = cfg_dict.pop("finetune", None)  # a classifier from `lmjax finetune`
    config = _runnable_here(config_lib.resolve(cfg_dict))
    replicas = config.train.replicas
    if replica is not None and not 0 <= replica < replicas:
        raise LmjaxError(f"{workdir} holds {replicas} replica(s) (config.train.replicas={replicas}); "
                         f"replica={replica} is not one of 0..{replicas - 1}")
    tokenizer = tokenizer_from_json(tok_json)
    model_cfg = config.model.replace(vocab_size=model_vocab_size(config.model, tokenizer.vocab_size))
    if ft_dict is not None:
        from lmjax.training.finetune import LABELS, classifier_for, init_classifier

        finetune = config_lib.resolve_finetune(ft_dict)
        labels = tuple(read_json(workdir / LABELS) or ())
        if len(labels) < 2:
            raise CheckpointError(f"{workdir} is a fine-tuned run without its {LABELS}; fine-tune it again")
        model = classifier_for(model_cfg, finetune, len(labels))
        abstract = jax.eval_shape(lambda: init_classifier(model, 0, config.train.seq_len))
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract)
        params = ckpt.restore_state(step, {"params": abstract})["params"]
        ckpt.close()
        return Run(workdir, step, config, params, tokenizer, model_cfg, finetune, labels)
    if model_cfg.family == "ngram":
        from lmjax.models.ngram import NgramModel

        params = NgramModel.from_arrays(model_cfg.order, tokenizer.vocab_size, ckpt.restore_state(step))
    else:
        setup = make_setup(config, vocab_size=tokenizer.vocab_size, mesh=_one_device_mesh())
        params = ckpt.restore_state(step, setup.abstract_state).params
    ckpt.close()
    if replicas == 1:
        return Run(workdir, step, config, params, tokenizer, model_cfg)
    k = replica or 0
    params = jax.tree.map(lambda x: x[k], params)
    own = dataclasses.replace(config, train=dataclasses.replace(config.train, replicas=1, seed=config.train.seed + k))
    return Run(workdir, step, own, params, tokenizer, model_cfg, replica=k)
