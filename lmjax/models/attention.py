"""Attention kernels: the one place where queries meet keys.

Each kernel takes the arguments it uses; the Transformer picks one by config.model.attention
(`transformer.attend`):

- 'mha', 'mqa', 'gqa': causal softmax attention (`softmax_attention`). They differ only in the
  number of key/value heads (K: num_heads, 1, num_kv_heads); query heads are grouped over kv heads,
  never repeated. window > 0 makes it sliding-window attention (query t sees keys in
  (t - window, t]); alibi=True adds ALiBi's per-head linear bias.
- 'linear': causal linear attention (`linear_attention`) with the feature map elu(x) + 1,
  computed chunk-wise; its decode cache is a running state, not keys and values
  (`linear_attention_chunked`).

Softmax attention has three kernels, chosen by `implementation` (config.model.attention_impl):
  'einsum': explicit einsums, mask and softmax.
  'xla':    jax.nn.dot_product_attention(implementation=None), XLA's own lowering.
  'cudnn':  jax.nn.dot_product_attention(implementation='cudnn'): cuDNN flash attention on NVIDIA
            GPUs (bfloat16/float16 only). Decode steps against a cache (where `is_causal`'s top-left
            alignment is wrong) and rows of packed documents use the explicit-mask XLA path
            instead: the public API turns a boolean mask into a dense [B, 1, T, S] bias for cuDNN
            (and fails on a broadcast one, jax issue #28974); packed-sequence offsets exist only in
            jax's private cudnn module.
  'auto':   `auto_implementation`: 'cudnn' on an NVIDIA GPU where the dtype and head dim allow,
            'einsum' elsewhere.
Measured: on a 2-core CPU, 'einsum' and 'xla' train steps were equal within noise (4 layers, width
256, seq 128); on an H100, bfloat16, B=8 T=2048 H=16 E=64, forward + backward took 8.0 ms
(einsum), 8.9 ms (xla), 1.2 ms (cudnn; 0.9 ms with window 256), cudnn agreeing with einsum to
bfloat16 rounding for mha/mqa/gqa, windows and ALiBi.

Segment ids (`segments_BS`, packed documents; never when decoding): a query attends only to keys
of its own segment, on top of the causal/window mask, so the mask becomes per row [B, T, S].
Padding (segment 0) attends to padding only. ALiBi needs nothing more: within a segment the
distance between absolute positions is the distance between in-document positions.

Shapes: B batch, T query length, S key length (the whole cache when decoding), H query heads,
K key/value heads (K divides H), G = H // K query heads per kv head, E head dim, C chunk length.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from lmjax.config import TRANSFORMERS

# Finite, so a fully masked row (never produced by causal masks, but cheap insurance) gives a
# uniform softmax instead of NaN; far below any real score in float32.
MASK_VALUE = -1e30

# cuDNN's flash attention: half-precision inputs, head dims it has kernels for.
CUDNN_DTYPES = ("bfloat16", "float16")
CUDNN_MAX_HEAD_DIM = 128
# linear attention's loop over chunks is unrolled fully up to this many chunks (a short loop is
# faster unrolled, and XLA's cost analysis, which counts a loop body once, then sees every chunk).
LINEAR_UNROLL_CHUNKS = 16


def auto_implementation(platform: str, device_kind: str, dtype, head_dim: int) -> str:
    """'cudnn' on an NVIDIA GPU where the dtype and head dim allow, else 'einsum'."""
    nvidia = platform == "gpu" and "nvidia" in device_kind.lower() or platform == "cuda"
    if (nvidia and jnp.dtype(dtype).name in CUDNN_DTYPES and head_dim % 8 == 0
            and head_dim <= CUDNN_MAX_HEAD_DIM):
        return "cudnn"
    return "einsum"


def resolve_implementation(implementation: str, dtype, head_dim: int, device=None) -> str:
    """The kernel that `implementation` means on `device` (default: JAX's first device)."""
    if implementation != "auto":
        return implementation
    device = device or jax.devices()[0]
    return auto_implementation(device.platform, device.device_kind, dtype, head_dim)


def kernel_for(cfg, device=None) -> str | None:
    """The softmax kernel a model of `cfg` (config.model) runs on `device`, as run.json and the
    benchmark records report it; None for the families without attention."""
    if cfg.family not in TRANSFORMERS:
        return None
    return resolve_implementation(cfg.attention_impl, cfg.compute_dtype, cfg.head_dim, device)


def attention_mask(T: int, S: int, *, q_offset, kv_length, window: int = 0,
                   causal: bool = True) -> jax.Array:
    """[T, S] bool, True where query t may attend to key s.

    Query t sits at absolute position q_offset + t (q_offset > 0 when decoding against a KV cache);
    key s sits at position s. Keys at s >= kv_length are cache slots not written yet.
    window > 0 additionally limits each query to its `window` most recent positions (itself included).
    causal=False (the encoder): every written key, before and after the query.
    """
    q_pos_T1 = (q_offset + jnp.arange(T))[:, None]
    k_pos_1S = jnp.arange(S)[None, :]
    mask_TS = ((k_pos_1S <= q_pos_T1) | (not causal)) & (k_pos_1S < kv_length)
    if window > 0:
        mask_TS &= q_pos_T1 - k_pos_1S < window
    return mask_TS


def segment_mask(segments_BS) -> jax.Array:
    """[B, S, S] bool: True where query and key (positions of one sequence) share a segment."""
    return segments_BS[:, :, None] == segments_BS[:, None, :]


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


def softmax_attention(q_BTHE, k_BSKE, v_BSKE, *, q_offset, kv_length, window: int = 0,
                      alibi: bool = False, implementation: str = "einsum", causal: bool = True,
                      block_rows: int | None = None, max_blocks: int | None = None, segments_BS=None):
    """Causal (optionally sliding-window, optionally ALiBi-biased) softmax attention.

    Handles K < H kv heads by grouping query heads rather than repeating keys, so the same function
    serves multi-head, multi-query and grouped-query attention. Scores and softmax are float32.
    causal=False: bidirectional (the encoder). block_rows / max_blocks: the einsum kernel's
    causal blocks (see `causal_blocks`). segments_BS: int segment ids of a whole sequence (T == S);
    attention stays within each segment.
    """
    impl = resolve_implementation(implementation, q_BTHE.dtype, q_BTHE.shape[-1])
    if impl != "einsum":
        return _dot_product_attention(q_BTHE, k_BSKE, v_BSKE, q_offset=q_offset, kv_length=kv_length,
                                      window=window, alibi=alibi, implementation=impl, causal=causal,
                                      segments_BS=segments_BS)
    T, S = q_BTHE.shape[1], k_BSKE.shape[1]
    mask_TS = attention_mask(T, S, q_offset=q_offset, kv_length=kv_length, window=window, causal=causal)
    # With segments one mask per row, [B, 1, 1, T, S]: broadcast over the kernel's [K, G] head axes.
    mask = mask_TS if segments_BS is None else (mask_TS[None] & segment_mask(segments_BS))[:, None, None]
    bias_HTS = alibi_bias(q_BTHE.shape[2], T, S, q_offset=q_offset) if alibi else None
    blocks = causal_blocks(T, S, q_offset=q_offset, kv_length=kv_length,
                           block_rows=block_rows or CAUSAL_BLOCK_ROWS,
                           max_blocks=max_blocks or CAUSAL_BLOCKS_MAX) if causal else [(0, T, S)]
    outs = [_einsum_attention(q_BTHE[:, t0:t1], k_BSKE[:, :s1], v_BSKE[:, :s1], mask[..., t0:t1, :s1],
                              None if bias_HTS is None else bias_HTS[:, t0:t1, :s1])
            for t0, t1, s1 in blocks]
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


def causal_blocks(T: int, S: int, *, q_offset, kv_length, block_rows: int = CAUSAL_BLOCK_ROWS,
                  max_blocks: int = CAUSAL_BLOCKS_MAX) -> list[tuple[int, int, int]]:
    """(first query row, end query row, keys used) per block: [(0, T, S)] unless this is causal
    self-attention over a whole sequence of at least 2 * block_rows tokens."""
    whole = whole_sequence(T, S, q_offset, kv_length)
    n = min(max_blocks, T // block_rows) if whole else 1
    if n < 2:
        return [(0, T, S)]
    return [(T * i // n, T * (i + 1) // n, T * (i + 1) // n) for i in range(n)]


def _einsum_attention(q_BTHE, k_BSKE, v_BSKE, mask, bias_HTS):
    """mask: [T, S], or per row [B, 1, 1, T, S] (segments)."""
    B, T, H, E = q_BTHE.shape
    S, K = k_BSKE.shape[1], k_BSKE.shape[2]
    # Head-major operands, so each (batch, head) dot reads contiguous [T, E] / [S, E] blocks:
    # on XLA:CPU the attention core's forward + backward ran ~15% faster than einsums straight
    # on [B, T, H, E] (benchmarks/RESULTS.md, "CPU levers measured").
    q_BKGTE = q_BTHE.reshape(B, T, K, H // K, E).transpose(0, 2, 3, 1, 4)
    k_BKSE, v_BKSE = k_BSKE.transpose(0, 2, 1, 3), v_BSKE.transpose(0, 2, 1, 3)
    scores_BKGTS = jnp.einsum(
        "bkgtd,bksd->bkgts", q_BKGTE, k_BKSE, preferred_element_type=jnp.float32
    ) * E**-0.5
    if bias_HTS is not None:
        scores_BKGTS += bias_HTS.reshape(1, K, H // K, T, S)
    scores_BKGTS = jnp.where(mask, scores_BKGTS, MASK_VALUE)
    probs_BKGTS = jax.nn.softmax(scores_BKGTS, axis=-1).astype(v_BSKE.dtype)
    out_BKGTE = jnp.einsum("bkgts,bksd->bkgtd", probs_BKGTS, v_BKSE)
    return out_BKGTE.transpose(0, 3, 1, 2, 4).reshape(B, T, H, E)


def _dot_product_attention(q_BTHE, k_BSKE, v_BSKE, *, q_offset, kv_length, window: int,
                           alibi: bool, implementation: str, causal: bool = True, segments_BS=None):
    """softmax_attention through jax.nn.dot_product_attention (GQA, windows and bias built in)."""
    B, T, H, E = q_BTHE.shape
    S = k_BSKE.shape[1]
    # float32, as XLA adds it to float32 logits (cuDNN below wants the input dtype).
    bias_1HTS = alibi_bias(H, T, S, q_offset=q_offset)[None] if alibi else None
    # Self-attention over a whole sequence: the built-in (top-left aligned) causal mask is right.
    if whole_sequence(T, S, q_offset, kv_length) and segments_BS is None:
        if implementation == "cudnn" and bias_1HTS is not None:
            bias_1HTS = bias_1HTS.astype(q_BTHE.dtype)
        return jax.nn.dot_product_attention(
            q_BTHE, k_BSKE, v_BSKE, bias_1HTS, is_causal=causal,
            local_window_size=(window - 1, 0) if window > 0 else None,
            implementation="cudnn" if implementation == "cudnn" else None)
    # Against a cache (queries sit at q_offset..) or within segments: an explicit mask (XLA path).
    mask_11TS = attention_mask(T, S, q_offset=q_offset, kv_length=kv_length,
                               window=window, causal=causal)[None, None]
    if segments_BS is None:
        return jax.nn.dot_product_attention(q_BTHE, k_BSKE, v_BSKE, bias_1HTS, mask_11TS)
    mask_B1TS = mask_11TS & segment_mask(segments_BS)[:, None]
    return jax.nn.dot_product_attention(q_BTHE, k_BSKE, v_BSKE, bias_1HTS, mask_B1TS)


def elu_feature_map(x):
    """phi(x) = elu(x) + 1 > 0 (Katharopoulos et al. 2020), in float32."""
    return jax.nn.elu(x.astype(jnp.float32)) + 1.0


def linear_attention_chunked(q_BTHE, k_BTKE, v_BTKE, state=None, *, chunk: int, unroll=None):
    """Causal linear attention continuing from `state`; returns (out [B, T, H, E], new state).

        o_t = phi(q_t)^T S_t / (phi(q_t)^T z_t),  S_t = S_0 + sum_{s<=t} phi(k_s) v_s^T,
                                                  z_t = z_0 + sum_{s<=t} phi(k_s)

    state = (S [B, K, E, E], z [B, K, E]) float32, zeros when None: the whole prefix summarised,
    which is also the decode cache. The T tokens are split into chunks of `chunk` (the last one
    zero-padded; padded keys are zeroed after the feature map so they never enter the state);
    lax.scan carries the state across chunks, and within a chunk the output is the masked
    quadratic form plus the contribution of the state entering the chunk. Memory: the state per
    chunk (kept for the backward pass), O(T/C * E^2) per head, plus one C x C score block.
    Query heads are grouped over kv heads as in softmax attention; all arithmetic is float32.
    """
    B, T, H, E = q_BTHE.shape
    K = k_BTKE.shape[2]
    G = H // K
    C = min(chunk, T)
    n = -(-T // C)
    pad = n * C - T
    phi_q = elu_feature_map(q_BTHE).reshape(B, T, K, G, E)
    phi_k = elu_feature_map(k_BTKE)
    v = v_BTKE.astype(jnp.float32)
    if pad:
        widths = [(0, 0), (0, pad)] + [(0, 0)] * 2
        phi_q = jnp.pad(phi_q, widths + [(0, 0)], constant_values=1.0)
        phi_k, v = jnp.pad(phi_k, widths), jnp.pad(v, widths)
    # Chunk-major for the scan: [n, B, C, ...].
    to_chunks = lambda x: jnp.moveaxis(x.reshape(B, n, C, *x.shape[2:]), 1, 0)  # noqa: E731
    xs = (to_chunks(phi_q), to_chunks(phi_k), to_chunks(v))
    if state is None:
        state = (jnp.zeros((B, K, E, E), jnp.float32), jnp.zeros((B, K, E), jnp.float32))
    causal_TS = jnp.tril(jnp.ones((C, C), bool))

    def step(carry, x):
        S_BKEE, z_BKE = carry
        q_BCKGE, k_BCKE, v_BCKE = x
        scores_BKGTS = jnp.where(causal_TS, jnp.einsum("btkgd,bskd->bkgts", q_BCKGE, k_BCKE), 0.0)
        num_BCKGE = (jnp.einsum("bkgts,bske->btkge", scores_BKGTS, v_BCKE)
                     + jnp.einsum("btkgd,bkde->btkge", q_BCKGE, S_BKEE))
        den_BCKG = (jnp.einsum("bkgts->btkg", scores_BKGTS)
                    + jnp.einsum("btkgd,bkd->btkg", q_BCKGE, z_BKE))
        S_BKEE = S_BKEE + jnp.einsum("bskd,bske->bkde", k_BCKE, v_BCKE)
        z_BKE = z_BKE + jnp.sum(k_BCKE, axis=1)
        return (S_BKEE, z_BKE), num_BCKGE / den_BCKG[..., None]

    if unroll is None:
        unroll = True if n <= LINEAR_UNROLL_CHUNKS else 1
    state, out_nBCKGE = jax.lax.scan(step, state, xs, unroll=unroll)
    out_BTHE = jnp.moveaxis(out_nBCKGE, 0, 1).reshape(B, n * C, H, E)[:, :T]
    return out_BTHE.astype(v_BTKE.dtype), state


def linear_attention(q_BTHE, k_BSKE, v_BSKE, *, q_offset, kv_length, chunk: int):
    """Causal linear attention of a whole sequence from an empty state (keys = the queries'
    positions). Decoding goes through `linear_attention_chunked` with the cached state instead:
    linear attention's cache holds no keys, so this entry point refuses to see a cache."""
    T, S = q_BTHE.shape[1], k_BSKE.shape[1]
    if not (isinstance(q_offset, int) and q_offset == 0 and S == T):
        raise ValueError("linear_attention attends over a whole sequence (q_offset=0, as many "
                         "keys as queries); decode with linear_attention_chunked and its state")
    return linear_attention_chunked(q_BTHE, k_BSKE, v_BSKE, chunk=chunk)[0]
