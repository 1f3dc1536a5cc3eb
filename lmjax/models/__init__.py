"""The Transformer language model, its attention kernels, and sampling."""

from lmjax.config import ModelConfig
from lmjax.models.attention import (
    alibi_slopes,
    attention_mask,
    linear_attention,
    linear_attention_chunked,
    softmax_attention,
)
from lmjax.models.decode import generate, sample_logits, token_logprobs
from lmjax.models.transformer import (
    Transformer,
    attend,
    attention_flops_per_token,
    flops_per_token,
    init_cache,
    init_params,
    param_count,
    unboxed,
    unembedding_VD,
)

__all__ = [
    "ModelConfig", "Transformer", "alibi_slopes", "attend", "attention_flops_per_token",
    "attention_mask", "flops_per_token", "generate", "init_cache", "init_params",
    "linear_attention", "linear_attention_chunked", "param_count", "sample_logits",
    "softmax_attention", "token_logprobs", "unboxed", "unembedding_VD",
]
