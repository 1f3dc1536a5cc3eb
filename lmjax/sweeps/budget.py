"""What a run costs before it runs: parameters, tokens and training FLOPs from a resolved config
(the dry run's table), and steps for a token budget per parameter (`budget_steps`, for `derive`)."""

from __future__ import annotations

import math
from typing import Callable

from lmjax import config as config_lib
from lmjax.sweeps.spec import apply_overrides


def vocab_size(config) -> tuple[int, bool]:
    """(vocabulary size, exact?). byte: 256. sentencepiece, hf: config.data.vocab_size. char: the
    corpus's distinct characters are only known once it is read, so config.data.vocab_size when
    set, else an estimate of 100 (printable ASCII plus a few; tinyshakespeare has 65)."""
    d = config.data
    if d.tokenizer == "byte":
        return 256, True
    if d.vocab_size > 0:
        return int(d.vocab_size), d.tokenizer in ("sentencepiece", "hf")
    return 100, False


def model_config(config, vocab: int | None = None):
    """The `ModelConfig` of a resolved config, with its vocabulary (`vocab_size` when None)."""
    from lmjax.models import model_vocab_size

    return config.model.replace(vocab_size=model_vocab_size(config.model, vocab or vocab_size(config)[0]))


def estimate(config) -> dict:
    """Parameters, tokens and training FLOPs of one resolved config (no compute), the tokens and
    FLOPs of all its replicas (config.train.replicas) together. An n-gram model counts its train
    split once (its size is known only then): 0 parameters and FLOPs."""
    from lmjax.models import flops_per_token, param_count

    vocab, exact = vocab_size(config)
    mc = model_config(config, vocab)
    t = config.train
    neural = mc.family in config_lib.NEURAL
    tokens = int(t.steps) * int(t.batch_size) * int(t.seq_len) * int(t.replicas) if neural else 0
    fpt = flops_per_token(mc, int(t.seq_len)) if neural else 0.0
    return {
        "params": param_count(mc) if neural else 0,
        "params_non_embedding": param_count(mc, embeddings=False) if neural else 0,
        "vocab_size": vocab,
        "vocab_exact": exact,
        "tokens": tokens,
        "flops_per_token": fpt,
        "flops": fpt * tokens,
    }


def steps_for_budget(config, tokens_per_param: float) -> int:
    """Steps that give `tokens_per_param` training tokens per non-embedding parameter."""
    est = estimate(config)
    per_step = int(config.train.batch_size) * int(config.train.seq_len)
    return max(1, math.ceil(tokens_per_param * est["params_non_embedding"] / per_step))


def budget_steps(base, tokens_per_param: float) -> Callable[[dict], dict]:
    """For `derive`: each point gets `train.steps` for a fixed tokens-per-parameter budget
    (non-embedding parameters), computed on `base` (the get_config result) with the point applied."""
    def fn(point: dict) -> dict:
        cfg = config_lib.resolve(apply_overrides(base, point))
        return {"train.steps": steps_for_budget(cfg, tokens_per_param)}
    return fn
