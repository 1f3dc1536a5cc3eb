"""The model families behind `config.model.family`: one module each, with the same interface.

Each family's module defines a Flax module class, called as
`model.apply({'params': p}, tokens_BL, train=..., decode=..., logits=...)` (float32 logits
[B, L, V], or the hidden states [B, L, D] with logits=False; decode=True continues the sequence
held in the 'cache' collection), and the functions `param_count`, `flops_per_token`,
`unembedding_VD`, `init_params` and `init_cache`. The functions below pick the family's.
"""

from __future__ import annotations

import flax.linen as nn

from lmjax.config import ModelConfig
from lmjax.models import lstm, mlp_lm, transformer

# family -> (its module, its model class)
MODULES = {
    "decoder": (transformer, transformer.Transformer),
    "lstm": (lstm, lstm.LSTMLM),
    "mlp": (mlp_lm, mlp_lm.MlpLM),
}


def build(cfg: ModelConfig) -> nn.Module:
    """The Flax module of cfg.family."""
    return MODULES[cfg.family][1](cfg)


def param_count(cfg: ModelConfig, *, embeddings: bool = True) -> int:
    """Exact parameter count (embeddings=False: Kaplan et al.'s non-embedding count)."""
    return MODULES[cfg.family][0].param_count(cfg, embeddings=embeddings)


def flops_per_token(cfg: ModelConfig, seq_len: int, *, count_masked: bool = False) -> float:
    """Training FLOPs per token (forward + backward) for sequences of seq_len."""
    return MODULES[cfg.family][0].flops_per_token(cfg, seq_len, count_masked=count_masked)


def unembedding_VD(cfg: ModelConfig, params):
    """The output projection [V, D] of `params` (the embedding when tied)."""
    return MODULES[cfg.family][0].unembedding_VD(cfg, params)


def init_params(cfg: ModelConfig, rng, *, boxed: bool = False):
    return MODULES[cfg.family][0].init_params(cfg, rng, boxed=boxed)


def init_cache(cfg: ModelConfig, batch_size: int):
    """An empty decode cache (cache_index 0) for `batch_size` rows."""
    return MODULES[cfg.family][0].init_cache(cfg, batch_size)
