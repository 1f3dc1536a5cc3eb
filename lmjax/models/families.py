"""The model families behind `config.model.family`: one module each, with the same interface.

Each family's module defines a Flax module class, called as
`model.apply({'params': p}, tokens_BL, train=..., decode=..., logits=...)` (float32 logits
[B, L, V], or the hidden states [B, L, D] with logits=False; decode=True continues the sequence
held in the 'cache' collection, whose `model.init(..., decode=True)` is empty), and the exact
`param_count` and `flops_per_token`. The functions below pick the family's; initialisation and
the output head are the same for all (`layers.py`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.config import ModelConfig
from lmjax.models import mlp_lm, recurrent, transformer
from lmjax.models.layers import unboxed

# family -> (its module, its model class)
MODULES = {
    "decoder": (transformer, transformer.Transformer),
    "encoder": (transformer, transformer.Transformer),  # the same blocks, bidirectional
    **{family: (recurrent, recurrent.RecurrentLM) for family in recurrent.CELLS},  # lstm, gru, rnn
    "mlp": (mlp_lm, mlp_lm.MlpLM),
}


def model_vocab_size(cfg: ModelConfig, tokenizer_vocab: int) -> int:
    """The model's vocabulary for a tokenizer's: the encoder adds its [MASK] id as the last id
    (the tokenizer itself, and its round trips, are unchanged)."""
    return tokenizer_vocab + (1 if cfg.family == "encoder" else 0)


def eval_overlap(cfg: ModelConfig) -> int:
    """How many tokens consecutive evaluation windows share: the MLP LM sees a fixed context, so
    it is evaluated with a sliding window (each scored target gets its context - 1 previous
    tokens, as the n-gram's does); the others score non-overlapping windows."""
    return cfg.context - 1 if cfg.family == "mlp" else 0


def build(cfg: ModelConfig) -> nn.Module:
    """The Flax module of cfg.family."""
    return MODULES[cfg.family][1](cfg)


def param_count(cfg: ModelConfig, *, embeddings: bool = True) -> int:
    """Exact parameter count (embeddings=False: Kaplan et al.'s non-embedding count)."""
    return MODULES[cfg.family][0].param_count(cfg, embeddings=embeddings)


def flops_per_token(cfg: ModelConfig, seq_len: int, *, count_masked: bool = False) -> float:
    """Training FLOPs per token (forward + backward) for sequences of seq_len."""
    return MODULES[cfg.family][0].flops_per_token(cfg, seq_len, count_masked=count_masked)


def init_params(cfg: ModelConfig, rng, *, boxed: bool = False):
    """The 'params' tree of a fresh model, from a dummy [1, min(max_len, 8)] input.

    By default plain float32 arrays (metadata stripped by `unboxed`). boxed=True keeps the
    nn.LogicallyPartitioned boxes, whose names nn.get_partition_spec reads; apply accepts either.
    """
    tokens = jnp.zeros((1, max(1, min(cfg.max_len, 8))), jnp.int32)
    params = build(cfg).init(rng, tokens)["params"]
    return params if boxed else unboxed(params)


def init_cache(cfg: ModelConfig, batch_size: int):
    """An empty decode cache (cache_index 0) for decode=True calls with `batch_size` rows."""
    tokens = jnp.zeros((batch_size, 1), jnp.int32)
    shapes = jax.eval_shape(lambda: build(cfg).init(jax.random.key(0), tokens, decode=True)["cache"])
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
