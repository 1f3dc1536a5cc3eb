"""The Transformer language model, its attention kernels, and sampling."""

from lmjax.models.attention import ATTENTION, attend, attention_mask, softmax_attention
from lmjax.models.decode import generate, sample_logits, token_logprobs
from lmjax.models.transformer import (
    ModelConfig,
    Transformer,
    flops_per_token,
    init_cache,
    init_params,
    param_count,
    unboxed,
)

__all__ = [
    "ATTENTION", "ModelConfig", "Transformer", "attend", "attention_mask", "flops_per_token",
    "generate", "init_cache", "init_params", "param_count", "sample_logits", "softmax_attention",
    "token_logprobs", "unboxed",
]
