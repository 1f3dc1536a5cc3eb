"""Attention kernels: the one place where queries meet keys.

The Transformer calls `attend(...)` and never looks inside; `cfg.attention` picks an entry of
`ATTENTION`. A new variant (sliding-window-only kernels, linear attention, ...) is a function with
the same signature added to that dict.

Shapes: B batch, T query length, S key length (the whole cache when decoding), H query heads,
K key/value heads (K divides H), G = H // K query heads per kv head, D head dim.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from lmjax.models.transformer import ModelConfig

# Finite, so a fully masked row (never produced by causal masks, but cheap insurance) gives a
# uniform softmax instead of NaN; far below any real score in float32.
MASK_VALUE = -1e30


def attention_mask(T: int, S: int, *, q_offset, kv_length, window: int = 0) -> jax.Array:
    """[T, S] bool, True where query t may attend to key s.

    Query t sits at absolute position q_offset + t (q_offset > 0 when decoding against a KV cache);
    key s sits at position s. Keys at s >= kv_length are cache slots not written yet.
    window > 0 additionally limits each query to its `window` most recent positions (itself included).
    """
    q_pos_T1 = (q_offset + jnp.arange(T))[:, None]
    k_pos_1S = jnp.arange(S)[None, :]
    mask_TS = (k_pos_1S <= q_pos_T1) & (k_pos_1S < kv_length)
    if window > 0:
        mask_TS &= q_pos_T1 - k_pos_1S < window
    return mask_TS


def softmax_attention(q_BTHD, k_BSKD, v_BSKD, *, q_offset, kv_length, cfg: ModelConfig):
    """Causal softmax attention with einsums (on CPU ~1.5x faster than jax.nn.dot_product_attention).

    Handles K < H kv heads by grouping query heads rather than repeating keys, so the same function
    serves multi-head, multi-query and grouped-query attention.
    """
    B, T, H, D = q_BTHD.shape
    S, K = k_BSKD.shape[1], k_BSKD.shape[2]
    q_BTKGD = q_BTHD.reshape(B, T, K, H // K, D)
    scores_BKGTS = jnp.einsum(
        "btkgd,bskd->bkgts", q_BTKGD, k_BSKD, preferred_element_type=jnp.float32
    ) * D**-0.5
    mask_TS = attention_mask(T, S, q_offset=q_offset, kv_length=kv_length, window=cfg.window)
    scores_BKGTS = jnp.where(mask_TS, scores_BKGTS, MASK_VALUE)
    probs_BKGTS = jax.nn.softmax(scores_BKGTS, axis=-1).astype(v_BSKD.dtype)
    out_BTKGD = jnp.einsum("bkgts,bskd->btkgd", probs_BKGTS, v_BSKD)
    return out_BTKGD.reshape(B, T, H, D)


ATTENTION: dict[str, Callable] = {
    "mha": softmax_attention,
}


def attend(q_BTHD, k_BSKD, v_BSKD, *, q_offset, kv_length, cfg: ModelConfig):
    """Attention output [B, T, H, D] for queries at positions q_offset + arange(T) over the first
    kv_length keys; selected by cfg.attention."""
    return ATTENTION[cfg.attention](
        q_BTHD, k_BSKD, v_BSKD, q_offset=q_offset, kv_length=kv_length, cfg=cfg
    )
