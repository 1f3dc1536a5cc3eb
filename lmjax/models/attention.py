"""Attention kernels: the one place where queries meet keys.

The Transformer calls `attend(...)` and never looks inside; `cfg.attention` picks an entry of
`ATTENTION`:

- 'mha', 'mqa', 'gqa': causal softmax attention (`softmax_attention`). They differ only in the
  number of key/value heads (cfg.kv_heads: num_heads, 1, num_kv_heads); query heads are grouped
  over kv heads, never repeated. cfg.window > 0 makes it sliding-window attention (query t sees
  keys in (t - window, t]); cfg.positions == 'alibi' adds ALiBi's per-head linear bias.
- 'linear': causal linear attention (`linear_attention`) with the feature map elu(x) + 1,
  computed chunk-wise; its decode cache is a running state, not keys and values
  (`linear_attention_chunked`).

Softmax attention has two code paths, chosen per call by `implementation` or, when that is None,
by the module-level `IMPLEMENTATION` (read once from $LMJAX_ATTENTION_IMPL at import):
  'einsum' (default): explicit einsums, mask and softmax.
  'xla':   jax.nn.dot_product_attention(implementation=None), XLA's own lowering.
  'cudnn': jax.nn.dot_product_attention(implementation='cudnn'): cuDNN flash attention on NVIDIA
           GPUs (bfloat16/float16 only). Decode steps against a cache (where `is_causal`'s top-left
           alignment is wrong) use the explicit-mask XLA path instead.
Assigning `IMPLEMENTATION` takes effect for functions traced afterwards (jit caches its traces).
Measured: on a 2-core CPU, 'einsum' and 'xla' train steps were equal within noise (4 layers, width
256, seq 128); on an H100, bfloat16, B=8 T=2048 H=16 E=64, forward + backward took 8.0 ms
(einsum), 8.9 ms (xla), 1.2 ms (cudnn; 0.9 ms with window 256), cudnn agreeing with einsum to
bfloat16 rounding for mha/mqa/gqa, windows and ALiBi.

Shapes: B batch, T query length, S key length (the whole cache when decoding), H query heads,
K key/value heads (K divides H), G = H // K query heads per kv head, D head dim, C chunk length.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Callable

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from lmjax.models.transformer import ModelConfig

# Finite, so a fully masked row (never produced by causal masks, but cheap insurance) gives a
# uniform softmax instead of NaN; far below any real score in float32.
MASK_VALUE = -1e30

IMPLEMENTATIONS = ("einsum", "xla", "cudnn")
IMPLEMENTATION = os.environ.get("LMJAX_ATTENTION_IMPL", "") or "einsum"
if IMPLEMENTATION not in IMPLEMENTATIONS:
    raise ValueError(f"LMJAX_ATTENTION_IMPL={IMPLEMENTATION!r} is not one of "
                     f"{', '.join(map(repr, IMPLEMENTATIONS))}")

# lax.scan unroll of linear attention's loop over chunks. XLA's cost analysis counts a loop body
# once, so tests/test_flops.py sets True (unroll fully) to see every chunk.
LINEAR_SCAN_UNROLL: int | bool = 1


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


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi's per-head slopes (Press et al. 2022): 2^(-8h/n) for h = 1..n when n is a power of
    two; otherwise the slopes of the nearest smaller power of two n0, then every other slope of
    2 * n0 for the remaining heads (the paper's reference implementation)."""
    def power_of_two(n):
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]
    n0 = 2 ** int(math.floor(math.log2(num_heads)))
    return power_of_two(n0) + power_of_two(2 * n0)[0::2][:num_heads - n0]


def alibi_bias(num_heads: int, T: int, S: int, *, q_offset) -> jax.Array:
    """[H, T, S] float32: -slope_h * (query position - key position), with absolute positions
    (query t at q_offset + t, key s at s), so it is the same through a KV cache. Positive distances
    (future keys) get a positive bias, but those are masked anyway."""
    dist_TS = (q_offset + jnp.arange(T))[:, None] - jnp.arange(S)[None, :]
    slopes_H = jnp.asarray(alibi_slopes(num_heads), jnp.float32)
    return -slopes_H[:, None, None] * dist_TS.astype(jnp.float32)[None]


def softmax_attention(q_BTHD, k_BSKD, v_BSKD, *, q_offset, kv_length, cfg: ModelConfig,
                      implementation: str | None = None):
    """Causal (optionally sliding-window, optionally ALiBi-biased) softmax attention.

    Handles K < H kv heads by grouping query heads rather than repeating keys, so the same function
    serves multi-head, multi-query and grouped-query attention. Scores and softmax are float32.
    """
    impl = implementation or IMPLEMENTATION
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {impl!r} is not one of {IMPLEMENTATIONS}")
    if impl != "einsum":
        return _dot_product_attention(q_BTHD, k_BSKD, v_BSKD, q_offset=q_offset,
                                      kv_length=kv_length, cfg=cfg, implementation=impl)
    T, S = q_BTHD.shape[1], k_BSKD.shape[1]
    mask_TS = attention_mask(T, S, q_offset=q_offset, kv_length=kv_length, window=cfg.window)
    bias_HTS = (alibi_bias(q_BTHD.shape[2], T, S, q_offset=q_offset)
                if cfg.positions == "alibi" else None)
    outs = [_einsum_attention(q_BTHD[:, t0:t1], k_BSKD[:, :s1], v_BSKD[:, :s1], mask_TS[t0:t1, :s1],
                              None if bias_HTS is None else bias_HTS[:, t0:t1, :s1])
            for t0, t1, s1 in causal_blocks(T, S, q_offset=q_offset, kv_length=kv_length)]
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


# Causal blocks: a whole sequence's queries split into up to CAUSAL_BLOCKS_MAX row blocks of at
# least CAUSAL_BLOCK_ROWS, each scored only against the keys up to its last row (the keys after it
# are masked anyway), which skips up to ~half of the score matrix exactly. Measured on the 2-core
# CPU, forward + backward of the core: B=64 T=256 H=6 D=64 421 -> 251 ms (2 blocks), B=8 T=1024
# H=12 D=64 1185 -> 745 ms (4 blocks); at T=64 splitting was no faster, so short sequences stay whole.
CAUSAL_BLOCK_ROWS = 128
CAUSAL_BLOCKS_MAX = 4


def whole_sequence(T: int, S: int, q_offset, kv_length) -> bool:
    """Self-attention over a whole sequence (training, eval, prefill at 0), not against a cache."""
    return (isinstance(q_offset, int) and q_offset == 0 and isinstance(kv_length, int)
            and kv_length == S == T)


def causal_blocks(T: int, S: int, *, q_offset, kv_length) -> list[tuple[int, int, int]]:
    """(first query row, end query row, keys used) per block: [(0, T, S)] unless this is causal
    self-attention over a whole sequence of at least 2 * CAUSAL_BLOCK_ROWS tokens."""
    whole = whole_sequence(T, S, q_offset, kv_length)
    n = min(CAUSAL_BLOCKS_MAX, T // CAUSAL_BLOCK_ROWS) if whole else 1
    if n < 2:
        return [(0, T, S)]
    return [(T * i // n, T * (i + 1) // n, T * (i + 1) // n) for i in range(n)]


def _einsum_attention(q_BTHD, k_BSKD, v_BSKD, mask_TS, bias_HTS):
    B, T, H, D = q_BTHD.shape
    S, K = k_BSKD.shape[1], k_BSKD.shape[2]
    # Head-major operands, so each (batch, head) dot reads contiguous [T, D] / [S, D] blocks:
    # on XLA:CPU the attention core's forward + backward ran ~15% faster than einsums straight
    # on [B, T, H, D] (benchmarks/RESULTS.md, "CPU levers measured").
    q_BKGTD = q_BTHD.reshape(B, T, K, H // K, D).transpose(0, 2, 3, 1, 4)
    k_BKSD, v_BKSD = k_BSKD.transpose(0, 2, 1, 3), v_BSKD.transpose(0, 2, 1, 3)
    scores_BKGTS = jnp.einsum(
        "bkgtd,bksd->bkgts", q_BKGTD, k_BKSD, preferred_element_type=jnp.float32
    ) * D**-0.5
    if bias_HTS is not None:
        scores_BKGTS += bias_HTS.reshape(1, K, H // K, T, S)
    scores_BKGTS = jnp.where(mask_TS, scores_BKGTS, MASK_VALUE)
    probs_BKGTS = jax.nn.softmax(scores_BKGTS, axis=-1).astype(v_BSKD.dtype)
    out_BKGTD = jnp.einsum("bkgts,bksd->bkgtd", probs_BKGTS, v_BKSD)
    return out_BKGTD.transpose(0, 3, 1, 2, 4).reshape(B, T, H, D)


def _dot_product_attention(q_BTHD, k_BSKD, v_BSKD, *, q_offset, kv_length, cfg: ModelConfig,
                           implementation: str):
    """softmax_attention through jax.nn.dot_product_attention (GQA, windows and bias built in)."""
    B, T, H, D = q_BTHD.shape
    S = k_BSKD.shape[1]
    # float32, as XLA adds it to float32 logits (cuDNN below wants the input dtype).
    bias_1HTS = alibi_bias(H, T, S, q_offset=q_offset)[None] if cfg.positions == "alibi" else None
    # Self-attention over a whole sequence: the built-in (top-left aligned) causal mask is right.
    if whole_sequence(T, S, q_offset, kv_length):
        if implementation == "cudnn" and bias_1HTS is not None:
            bias_1HTS = bias_1HTS.astype(q_BTHD.dtype)
        return jax.nn.dot_product_attention(
            q_BTHD, k_BSKD, v_BSKD, bias_1HTS, is_causal=True,
            local_window_size=(cfg.window - 1, 0) if cfg.window > 0 else None,
            implementation="cudnn" if implementation == "cudnn" else None)
    # Against a cache: queries sit at q_offset.., so the mask must be explicit (XLA path).
    mask_11TS = attention_mask(T, S, q_offset=q_offset, kv_length=kv_length,
                               window=cfg.window)[None, None]
    return jax.nn.dot_product_attention(q_BTHD, k_BSKD, v_BSKD, bias_1HTS, mask_11TS)


def elu_feature_map(x):
    """phi(x) = elu(x) + 1 > 0 (Katharopoulos et al. 2020), in float32."""
    return jax.nn.elu(x.astype(jnp.float32)) + 1.0


def linear_attention_chunked(q_BTHD, k_BTKD, v_BTKD, state=None, *, chunk: int, unroll=None):
    """Causal linear attention continuing from `state`; returns (out [B, T, H, D], new state).

        o_t = phi(q_t)^T S_t / (phi(q_t)^T z_t),  S_t = S_0 + sum_{s<=t} phi(k_s) v_s^T,
                                                  z_t = z_0 + sum_{s<=t} phi(k_s)

    state = (S [B, K, D, D], z [B, K, D]) float32, zeros when None: the whole prefix summarised,
    which is also the decode cache. The T tokens are split into chunks of `chunk` (the last one
    zero-padded; padded keys are zeroed after the feature map so they never enter the state);
    lax.scan carries the state across chunks, and within a chunk the output is the masked
    quadratic form plus the contribution of the state entering the chunk. Memory: the state per
    chunk (kept for the backward pass), O(T/C * D^2) per head, plus one C x C score block.
    Query heads are grouped over kv heads as in softmax attention; all arithmetic is float32.
    """
    B, T, H, D = q_BTHD.shape
    K = k_BTKD.shape[2]
    G = H // K
    C = min(chunk, T)
    n = -(-T // C)
    pad = n * C - T
    phi_q = elu_feature_map(q_BTHD).reshape(B, T, K, G, D)
    phi_k = elu_feature_map(k_BTKD)
    v = v_BTKD.astype(jnp.float32)
    if pad:
        widths = [(0, 0), (0, pad)] + [(0, 0)] * 2
        phi_q = jnp.pad(phi_q, widths + [(0, 0)], constant_values=1.0)
        phi_k, v = jnp.pad(phi_k, widths), jnp.pad(v, widths)
    # Chunk-major for the scan: [n, B, C, ...].
    to_chunks = lambda x: jnp.moveaxis(x.reshape(B, n, C, *x.shape[2:]), 1, 0)  # noqa: E731
    xs = (to_chunks(phi_q), to_chunks(phi_k), to_chunks(v))
    if state is None:
        state = (jnp.zeros((B, K, D, D), jnp.float32), jnp.zeros((B, K, D), jnp.float32))
    causal_TS = jnp.tril(jnp.ones((C, C), bool))

    def step(carry, x):
        S_BKDE, z_BKD = carry
        q_BCKGD, k_BCKD, v_BCKE = x
        scores_BKGTS = jnp.where(causal_TS, jnp.einsum("btkgd,bskd->bkgts", q_BCKGD, k_BCKD), 0.0)
        num_BCKGE = (jnp.einsum("bkgts,bske->btkge", scores_BKGTS, v_BCKE)
                     + jnp.einsum("btkgd,bkde->btkge", q_BCKGD, S_BKDE))
        den_BCKG = (jnp.einsum("bkgts->btkg", scores_BKGTS)
                    + jnp.einsum("btkgd,bkd->btkg", q_BCKGD, z_BKD))
        S_BKDE = S_BKDE + jnp.einsum("bskd,bske->bkde", k_BCKD, v_BCKE)
        z_BKD = z_BKD + jnp.sum(k_BCKD, axis=1)
        return (S_BKDE, z_BKD), num_BCKGE / den_BCKG[..., None]

    state, out_nBCKGD = jax.lax.scan(step, state, xs,
                                     unroll=LINEAR_SCAN_UNROLL if unroll is None else unroll)
    out_BTHD = jnp.moveaxis(out_nBCKGD, 0, 1).reshape(B, n * C, H, D)[:, :T]
    return out_BTHD.astype(v_BTKD.dtype), state


def linear_attention(q_BTHD, k_BSKD, v_BSKD, *, q_offset, kv_length, cfg: ModelConfig):
    """Causal linear attention of a whole sequence from an empty state (keys = the queries'
    positions). Decoding goes through `linear_attention_chunked` with the cached state instead:
    linear attention's cache holds no keys, so this entry point refuses to see a cache."""
    T, S = q_BTHD.shape[1], k_BSKD.shape[1]
    if not (isinstance(q_offset, int) and q_offset == 0 and S == T):
        raise ValueError("linear_attention attends over a whole sequence (q_offset=0, as many "
                         "keys as queries); decode with linear_attention_chunked and its state")
    return linear_attention_chunked(q_BTHD, k_BSKD, v_BSKD, chunk=cfg.linear_chunk)[0]


ATTENTION: dict[str, Callable] = {
    "mha": softmax_attention,
    "mqa": softmax_attention,
    "gqa": softmax_attention,
    "linear": linear_attention,
}


def attend(q_BTHD, k_BSKD, v_BSKD, *, q_offset, kv_length, cfg: ModelConfig):
    """Attention output [B, T, H, D] for queries at positions q_offset + arange(T) over the first
    kv_length keys; selected by cfg.attention."""
    return ATTENTION[cfg.attention](
        q_BTHD, k_BSKD, v_BSKD, q_offset=q_offset, kv_length=kv_length, cfg=cfg
    )
