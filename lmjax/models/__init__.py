"""The model families (decoder Transformer, recurrent: LSTM, GRU, Elman; MLP), the attention
kernels, and sampling.

`param_count`, `flops_per_token`, `init_params` and `init_cache` dispatch on cfg.family
(`families.py`); `build(cfg)` is the family's Flax module."""

from lmjax.config import ModelConfig
from lmjax.models.attention import (
    alibi_slopes,
    attention_mask,
    linear_attention,
    linear_attention_chunked,
    softmax_attention,
)
from lmjax.models.decode import generate, sample_logits, token_logprobs
from lmjax.models.families import (
    build,
    eval_overlap,
    flops_per_token,
    init_cache,
    init_params,
    model_vocab_size,
    param_count,
)
from lmjax.models.layers import unboxed, unembedding_VD
from lmjax.models.transformer import Transformer, attend, attention_flops_per_token

__all__ = [
    "ModelConfig", "Transformer", "alibi_slopes", "attend", "attention_flops_per_token", "build", "eval_overlap", "model_vocab_size",
    "attention_mask", "flops_per_token", "generate", "init_cache", "init_params",
    "linear_attention", "linear_attention_chunked", "param_count", "sample_logits",
    "softmax_attention", "token_logprobs", "unboxed", "unembedding_VD",
]
