"""A decoder-only Transformer in Flax Linen, readable in one sitting.

Pre-norm blocks, x + Attn(Norm(x)) then x + MLP(Norm(x)), and a final norm. The MLP (cfg.mlp) is
GELU (tanh approximation, as GPT-2) or SwiGLU (as LLaMA), of hidden width cfg.mlp_hidden; the
projections have biases only with cfg.bias (GPT-2 has them; PaLM/LLaMA do not; LayerNorm keeps its
own bias). Dropout, when on, follows the embedding and each residual branch (not the attention
probabilities). These choices cover the GPT-2 and LLaMA layouts exactly (lmjax/hf converts both).
Parameters are float32; activations are computed in cfg.dtype, while attention softmax and the
returned logits are float32.

Tensor names carry their shapes: B batch, L sequence length, D width, H heads, K kv heads,
E head dim, F mlp hidden, V vocab.

Every parameter carries logical axis names (nn.with_logical_partitioning); a sharding layer maps
them to mesh axes. Outside a logical-rules context they are plain metadata.

Attention (cfg.attention; kernels in attention.py): 'mha', 'mqa' (one kv head), 'gqa'
(num_kv_heads kv heads), each optionally sliding-window (cfg.window), or 'linear' (elu+1 feature
map, chunked causal scan). Positions (cfg.positions): 'rope' (rotary, on q and k), 'learned'
(a max_len x D table added to the embeddings), 'sinusoidal' (fixed, added to the embeddings),
'alibi' (per-head linear bias on softmax scores), 'none' (the causal mask only).

Packed documents (segments_BL, int segment ids, 0 = padding): attention stays within each
segment (still causal for the decoder, still windowed) and positions restart at 0 at each
segment's first token, read from the same static tables at per-row positions (learned,
sinusoidal, rope); ALiBi's distances within a segment need nothing more. Without segments the
code path is the shared [T, S] mask and the static tables, as before. Decoding has no segments.

KV cache (decode=True): collection 'cache' holds `cache_index` (int32 scalar, next position to
write; the absolute position of the next token) at the top level and, in each attention layer,
  softmax attention: `cached_key`/`cached_value` [B, max_len, K, E] (only the K kv heads);
  linear attention:  `linear_state` [B, K, E, E] and `linear_normalizer` [B, K, E] (float32), the
                     running sums S = sum phi(k) v^T and z = sum phi(k) of the prefix.
`init_cache(cfg, B)` builds an empty one; equivalently `Transformer(cfg).init(rng, tokens_BT,
decode=True)['cache']` for any [B, T] tokens (e.g. [B, max_len]) - init never writes to it.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmjax.config import ModelConfig  # the schema's config.model section (checked there)
from lmjax.errors import LmjaxError
from lmjax.models.attention import linear_attention, linear_attention_chunked, softmax_attention
from lmjax.models.layers import dense, embedding, lm_head, param_init

SINUSOID_BASE = 10000.0
# Sinusoidal positions are scaled to the embedding's init std, so tokens and positions start on
# the same scale in the residual stream (unscaled sinusoids, rms 0.7, would drown 0.02 embeddings).
SINUSOID_SCALE = 0.02


def _layer_matmul_params(cfg: ModelConfig) -> int:
    D, E = cfg.width, cfg.head_dim
    attn = D * cfg.num_heads * E * 2 + D * cfg.kv_heads * E * 2  # q, out; k, v (K kv heads)
    return attn + _mlp_matrices(cfg) * D * cfg.mlp_hidden


def _mlp_matrices(cfg: ModelConfig) -> int:
    return 3 if cfg.mlp == "swiglu" else 2  # (gate,) up, down


def _layer_bias_params(cfg: ModelConfig) -> int:
    """q, k, v and out biases, then the MLP's: one per output feature of each projection."""
    if not cfg.bias:
        return 0
    H, K, E, D = cfg.num_heads, cfg.kv_heads, cfg.head_dim, cfg.width
    return H * E + 2 * K * E + D + (_mlp_matrices(cfg) - 1) * cfg.mlp_hidden + D


def param_count(cfg: ModelConfig, *, embeddings: bool = True) -> int:
    """Exact number of parameters:

        num_layers * (2*D*H*E + 2*D*K*E + M*D*F + 2*norm + bias) + norm      (blocks, final norm)
        + V*D  (+ max_len*D for learned positions)  (+ D*V untied unembedding)  (embeddings)

    with E = D / H, K = cfg.kv_heads (H for mha, 1 for mqa, num_kv_heads for gqa), F =
    cfg.mlp_hidden, M = 2 MLP matrices for 'gelu' or 3 for 'swiglu', norm = D (RMSNorm scale) or
    2D (LayerNorm scale and bias), and bias = H*E + 2*K*E + D + (M-1)*F + D with cfg.bias (q, k,
    v, out, the MLP's up (and gate) and down), else 0. Rotary, sinusoidal, ALiBi and 'none'
    positions have no parameters; linear attention has the same projections as softmax attention.
    embeddings=False leaves out the token embedding, the learned positions table and an untied
    unembedding (Kaplan et al.'s "non-embedding" count)."""
    D = cfg.width
    norm = D * (2 if cfg.norm == "layernorm" else 1)
    n = cfg.num_layers * (_layer_matmul_params(cfg) + 2 * norm + _layer_bias_params(cfg)) + norm
    if embeddings:
        n += cfg.vocab_size * D
        n += cfg.max_len * D if cfg.positions == "learned" else 0
        n += 0 if cfg.tie_embeddings else D * cfg.vocab_size
    return n


def attention_keys_per_query(seq_len: int, window: int = 0) -> float:
    """Mean number of keys a query attends to in a causal sequence of seq_len tokens:
    mean over t < T of min(t + 1, W), i.e. (T + 1) / 2 without a window (W = T)."""
    T = seq_len
    W = min(window, T) if window > 0 else T
    return (W * (W + 1) / 2 + (T - W) * W) / T


def attention_flops_per_token(cfg: ModelConfig, seq_len: int, *, count_masked: bool = False) -> float:
    """Forward FLOPs per token of one layer's attention core (between the projections), counting
    matmuls only, 2 FLOPs per multiply-add. H heads, K kv heads, E head dim, T = seq_len.

    softmax ('mha', 'mqa', 'gqa'): QK^T and PV, each 2 * H * E per key attended:
        4 * H * E * attention_keys_per_query(T, window)       ((T+1)/2 keys when causal, full)
      count_masked=True counts the whole T x T score matrix that the einsum and XLA paths compute
      and mask (4 * H * E * T; the window does not shrink it either). cuDNN skips masked blocks.
    linear (chunk C' = min(linear_chunk, T)):
        2 * K * E^2        state update S += phi(k) v^T
      + 2 * H * E^2        inter-chunk output phi(q)^T S
      + 4 * H * E * c      intra-chunk scores and their product with V, with
                           c = mean over t < T of (t mod C') + 1  (= (C'+1)/2 when C' divides T)
      count_masked=True: c = C' (the masked C' x C' blocks are computed), and every term scaled by
      ceil(T/C') * C' / T for the padding of the last chunk.
    Not counted: the feature map, softmax, masks, ALiBi bias, the normaliser terms (phi(q).z, row
    sums of the scores, z updates: O(H*E) per token, a 1/E fraction of the above).
    """
    H, K, E, T = cfg.num_heads, cfg.kv_heads, cfg.head_dim, seq_len
    if cfg.attention != "linear":  # the encoder's queries see all T keys
        keys = T if count_masked or cfg.family == "encoder" else attention_keys_per_query(T, cfg.window)
        return 4.0 * H * E * keys
    C = min(cfg.linear_chunk, T)
    n = -(-T // C)
    if count_masked:
        return (2.0 * K * E * E + 2.0 * H * E * E + 4.0 * H * E * C) * n * C / T
    intra = sum((t % C) + 1 for t in range(T)) / T
    return 2.0 * K * E * E + 2.0 * H * E * E + 4.0 * H * E * intra


def flops_per_token(cfg: ModelConfig, seq_len: int, *, count_masked: bool = False) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward), for a sequence of seq_len:

        3 * (2 * N + 2 * V * D + num_layers * attention_flops_per_token(cfg, seq_len))

    N counts the matmul weights of the blocks (q and out: D*H*E each; k and v: D*K*E each; MLP up
    and down (and SwiGLU's gate): D*F each; norms, biases and embedding lookups are not matmuls), 2 * V * D is the
    unembedding (tied or not), and the attention core is counted per variant by
    `attention_flops_per_token`: for causal softmax attention 4*H*E*(T+1)/2 = 2*(T+1)*D per layer,
    for a window W the mean of min(t+1, W) keys instead of (T+1)/2, for linear attention its state
    and chunk terms. The backward pass costs two matmuls per forward matmul (the gradients of both
    operands), hence 3x. count_masked=True counts the masked work the einsum/XLA kernels really do
    (the full score matrix, whole padded linear chunks), which is what XLA's cost analysis sees
    (tests/test_flops.py: within 1.5-2.5%, the elementwise work); the default counts useful work.
    Remat recomputation is not counted (it is not model FLOPs).
    """
    D = cfg.width
    forward = (2 * cfg.num_layers * _layer_matmul_params(cfg) + 2 * cfg.vocab_size * D
               + cfg.num_layers * attention_flops_per_token(cfg, seq_len, count_masked=count_masked))
    return float(3 * forward)


# ---------------------------------------------------------------------------------------------

def _norm(cfg: ModelConfig, name: str) -> nn.Module:
    ones = nn.with_logical_partitioning(nn.initializers.ones, ("norm",))
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, scale_init=ones, name=name)
    zeros = nn.with_logical_partitioning(nn.initializers.zeros, ("norm",))
    return nn.LayerNorm(epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, scale_init=ones,
                        bias_init=zeros, name=name)


def _out_std(cfg: ModelConfig) -> float:
    # GPT-2: residual-branch outputs scaled down so the stream's variance does not grow with depth.
    return 0.02 / math.sqrt(2 * cfg.num_layers)


def _xp(pos_L):
    # Static positions (training, eval, prefill at 0) give numpy tables, which XLA embeds as
    # constants; traced ones (decoding) compute in jnp. Why: XLA fuses a traced sin/cos into
    # every consumer and recomputes it per element of q and k (~8% of a baby CPU step).
    return (np, np.float64) if isinstance(pos_L, np.ndarray) else (jnp, jnp.float32)


def rope_sin_cos(pos_L, head_dim: int, theta: float):
    """sin, cos [L, E/2] (float32) for rotary embeddings at absolute positions pos_L, frequencies
    theta^(-i / (E/2))."""
    xp, dt = _xp(pos_L)
    freq_F = theta ** (-xp.arange(0, head_dim // 2, dtype=dt) / (head_dim // 2))
    angle_LF = pos_L.astype(dt)[:, None] * freq_F[None, :]
    return xp.sin(angle_LF).astype(np.float32), xp.cos(angle_LF).astype(np.float32)


def sinusoidal_positions(pos_L, width: int):
    """[L, D] float32: Vaswani et al.'s sinusoids at absolute positions pos_L, PE[p, 2i] =
    sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos(same), times SINUSOID_SCALE."""
    xp, dt = _xp(pos_L)
    half = (width + 1) // 2
    freq_F = SINUSOID_BASE ** (-2.0 * xp.arange(half, dtype=dt) / width)
    angle_LF = pos_L.astype(dt)[:, None] * freq_F[None, :]
    pe_LF2 = xp.stack([xp.sin(angle_LF), xp.cos(angle_LF)], axis=-1)
    return (SINUSOID_SCALE * pe_LF2.reshape(pos_L.shape[0], 2 * half)[:, :width]).astype(np.float32)


def segment_positions(segments_BL) -> jax.Array:
    """int32 [B, L]: each token's position within its segment (0 at the segment's first token)."""
    idx_L = jnp.arange(segments_BL.shape[1], dtype=jnp.int32)
    starts_BL = jnp.concatenate([jnp.ones_like(segments_BL[:, :1], bool),
                                 segments_BL[:, 1:] != segments_BL[:, :-1]], axis=1)
    return idx_L - jax.lax.cummax(jnp.where(starts_BL, idx_L, 0), axis=1)


def at_positions(table_L, pos_BL):
    """A static per-position table ([L, ...]) as it is, or its rows at per-row positions [B, L]."""
    return table_L if pos_BL is None else jnp.take(table_L, pos_BL, axis=0)


def apply_rope(x_BLHE, sin_LF, cos_LF):
    """Rotate pairs (x[i], x[i + E/2]) by position-dependent angles (GPT-NeoX/LLaMA layout).
    sin/cos: [L, E/2] shared by the rows, or [B, L, E/2] (positions within segments)."""
    x1, x2 = jnp.split(x_BLHE.astype(jnp.float32), 2, axis=-1)
    if sin_LF.ndim == 2:
        sin, cos = sin_LF[None, :, None, :], cos_LF[None, :, None, :]
    else:
        sin, cos = sin_LF[:, :, None, :], cos_LF[:, :, None, :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x_BLHE.dtype)


class Attention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BLD, rope, offset, decode: bool, segments_BL=None):
        cfg = self.cfg
        B, L, D = x_BLD.shape
        H, K, E = cfg.num_heads, cfg.kv_heads, cfg.head_dim
        x_ND = x_BLD.reshape(B * L, D)  # 2-D matmuls: see Mlp
        q_BLHE = dense(cfg, H * E, ("embed", "heads"), "query", bias=cfg.bias)(x_ND).reshape(B, L, H, E)
        k_BLKE = dense(cfg, K * E, ("embed", "kv_heads"), "key", bias=cfg.bias)(x_ND).reshape(B, L, K, E)
        v_BLKE = dense(cfg, K * E, ("embed", "kv_heads"), "value", bias=cfg.bias)(x_ND).reshape(B, L, K, E)
        if rope is not None:  # linear attention too: rotated q, k go into the feature map
            q_BLHE, k_BLKE = apply_rope(q_BLHE, *rope), apply_rope(k_BLKE, *rope)
        if decode and cfg.attention == "linear":
            out_BLHE = self._linear_with_state(q_BLHE, k_BLKE, v_BLKE)
        else:
            k_BSKE, v_BSKE = (self._update_cache(k_BLKE, v_BLKE, offset) if decode
                              else (k_BLKE, v_BLKE))
            out_BLHE = attend(cfg, q_BLHE, k_BSKE, v_BSKE, q_offset=offset, kv_length=offset + L,
                              segments_BS=segments_BL)
        out_ND = dense(cfg, D, ("heads", "embed"), "out", _out_std(cfg), bias=cfg.bias)(
            out_BLHE.reshape(B * L, H * E))
        return out_ND.reshape(B, L, D)

    def _update_cache(self, k_BLKE, v_BLKE, offset):
        """Write this call's keys/values at cache slots offset..offset+L; return the whole cache."""
        cfg = self.cfg
        shape = (k_BLKE.shape[0], cfg.max_len, cfg.kv_heads, cfg.head_dim)
        initialized = self.has_variable("cache", "cached_key")
        key = self.variable("cache", "cached_key", jnp.zeros, shape, cfg.compute_dtype)
        value = self.variable("cache", "cached_value", jnp.zeros, shape, cfg.compute_dtype)
        if not initialized:  # model.init(decode=True) only creates the (empty) cache
            return k_BLKE, v_BLKE
        key.value = jax.lax.dynamic_update_slice(key.value, k_BLKE.astype(key.value.dtype),
                                                 (0, offset, 0, 0))
        value.value = jax.lax.dynamic_update_slice(value.value, v_BLKE.astype(value.value.dtype),
                                                   (0, offset, 0, 0))
        return key.value, value.value

    def _linear_with_state(self, q_BLHE, k_BLKE, v_BLKE):
        """Linear attention continuing the cached state (S, z) of the prefix; updates it."""
        cfg = self.cfg
        B, K, E = q_BLHE.shape[0], cfg.kv_heads, cfg.head_dim
        initialized = self.has_variable("cache", "linear_state")
        state = self.variable("cache", "linear_state", jnp.zeros, (B, K, E, E), jnp.float32)
        norm = self.variable("cache", "linear_normalizer", jnp.zeros, (B, K, E), jnp.float32)
        out_BLHE, (S_BKEE, z_BKE) = linear_attention_chunked(
            q_BLHE, k_BLKE, v_BLKE, (state.value, norm.value), chunk=cfg.linear_chunk)
        if initialized:  # model.init(decode=True) only creates the (empty) cache
            state.value, norm.value = S_BKEE, z_BKE
        return out_BLHE


def attend(cfg: ModelConfig, q_BLHE, k_BSKE, v_BSKE, *, q_offset, kv_length, segments_BS=None):
    """The attention core selected by cfg.attention, given the arguments each kernel uses."""
    if cfg.attention == "linear":
        if segments_BS is not None:  # config.py refuses packing='documents' with it
            raise LmjaxError("linear attention has no mask, so it cannot keep to segments (documents)")
        return linear_attention(q_BLHE, k_BSKE, v_BSKE, q_offset=q_offset, kv_length=kv_length,
                                chunk=cfg.linear_chunk)
    return softmax_attention(q_BLHE, k_BSKE, v_BSKE, q_offset=q_offset, kv_length=kv_length,
                             window=cfg.window, alibi=cfg.positions == "alibi",
                             implementation=cfg.attention_impl, causal=cfg.family != "encoder",
                             segments_BS=segments_BS)


class Mlp(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BLD):
        cfg = self.cfg
        B, L, D = x_BLD.shape
        # 2-D matmuls: XLA:CPU runs the backward of 3-D ones fused with GELU ~3x slower.
        x_ND = x_BLD.reshape(B * L, D)
        F = cfg.mlp_hidden
        up_NF = dense(cfg, F, ("embed", "mlp"), "up", bias=cfg.bias)(x_ND)
        if cfg.mlp == "swiglu":
            h_NF = nn.silu(dense(cfg, F, ("embed", "mlp"), "gate", bias=cfg.bias)(x_ND)) * up_NF
        else:
            h_NF = nn.gelu(up_NF)
        return dense(cfg, D, ("mlp", "embed"), "down", _out_std(cfg), bias=cfg.bias)(h_NF).reshape(B, L, D)


class Block(nn.Module):
    cfg: ModelConfig
    train: bool = False
    decode: bool = False

    @nn.compact
    def __call__(self, x_BLD, rope, offset, segments_BL=None):
        cfg = self.cfg
        drop = nn.Dropout(cfg.dropout, deterministic=not self.train)
        x_BLD = x_BLD + drop(Attention(cfg, name="attn")(_norm(cfg, "attn_norm")(x_BLD), rope,
                                                         offset, self.decode, segments_BL))
        x_BLD = x_BLD + drop(Mlp(cfg, name="mlp")(_norm(cfg, "mlp_norm")(x_BLD)))
        return nn.with_logical_constraint(x_BLD, ("batch", "length", "act_embed"))


# config.model.remat_policy -> what the backward keeps of a rematerialised block (None: nothing).
REMAT_POLICIES = {
    "nothing": None,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _scan_step(block: Block, x_BLD, rope, offset, segments_BL):
    return block(x_BLD, rope, offset, segments_BL), None


def run_blocks(cfg: ModelConfig, x_BLD, rope, offset, *, train: bool, decode: bool, segments_BL=None):
    """The residual stream through cfg.num_layers blocks.

    Unrolled: params block_0..block_{N-1}, one traced copy per layer. With cfg.scan_layers one
    `nn.scan` over params 'blocks' whose leaves are stacked [num_layers, ...] (logical axis
    'layers'), and so is the KV cache: XLA compiles one layer instead of N, which is what makes
    deep models start quickly. remat only pays off when training; the cache update must not be
    recomputed.
    """
    block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat_policy]) if cfg.remat and not decode else Block
    if not cfg.scan_layers:
        for i in range(cfg.num_layers):
            x_BLD = block(cfg, train, decode, name=f"block_{i}")(x_BLD, rope, offset, segments_BL)
        return x_BLD
    scan = nn.scan(_scan_step, variable_axes={"params": 0, "cache": 0},
                   split_rngs={"params": True, "dropout": True},
                   in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                   length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
    x_BLD, _ = scan(block(cfg, train, decode, name="blocks"), x_BLD, rope, offset, segments_BL)
    return x_BLD


class Transformer(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BL, *, segments_BL=None, train: bool = False, decode: bool = False,
                 logits: bool = True):
        """float32 logits [B, L, V]. With decode=True (and mutable=['cache']) the tokens continue
        the sequence in the cache: they sit at positions cache_index..cache_index+L. With
        logits=False, the final-normed hidden states [B, L, D] instead, for a loss that projects
        them itself (`unembedding_VD`). segments_BL: int segment ids of packed documents (module
        docstring)."""
        cfg = self.cfg
        B, L = tokens_BL.shape
        offset = 0
        if decode and cfg.family == "encoder":
            raise LmjaxError("the encoder family is a masked LM and does not sample or decode; "
                             "use run.fill('... [MASK] ...') or lmjax eval")
        if decode and segments_BL is not None:
            raise LmjaxError("decoding continues one sequence from its cache; it takes no segment ids")
        if decode:
            initialized = self.has_variable("cache", "cache_index")
            index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
            if initialized:
                offset = index.value
                index.value = offset + L
        if cfg.positions == "learned" and L > cfg.max_len:
            raise LmjaxError(f"{L} tokens exceed the learned positions table of {cfg.max_len}; "
                             "feed at most max_len tokens")
        pos_L = offset + (np.arange(L) if isinstance(offset, int) else jnp.arange(L))
        # Segments: each token reads the tables at its position within its segment.
        pos_BL = None if segments_BL is None else segment_positions(segments_BL)

        embed_VD = embedding(self, cfg)
        x_BLD = jnp.take(embed_VD, tokens_BL, axis=0).astype(cfg.compute_dtype)
        if cfg.positions == "learned":
            pos_embed_LD = self.param("pos_embedding", param_init(0.02, ("length_pos", "embed_vocab")),
                                      (cfg.max_len, cfg.width), jnp.float32)
            x_BLD = x_BLD + jnp.take(pos_embed_LD, pos_L if pos_BL is None else pos_BL,
                                     axis=0).astype(cfg.compute_dtype)
        elif cfg.positions == "sinusoidal":
            x_BLD = x_BLD + at_positions(sinusoidal_positions(pos_L, cfg.width), pos_BL).astype(cfg.compute_dtype)
        x_BLD = nn.Dropout(cfg.dropout, deterministic=not train)(x_BLD)
        x_BLD = nn.with_logical_constraint(x_BLD, ("batch", "length", "act_embed"))
        rope = None
        if cfg.positions == "rope":
            rope = tuple(at_positions(t, pos_BL) for t in rope_sin_cos(pos_L, cfg.head_dim, cfg.rope_theta))

        x_BLD = run_blocks(cfg, x_BLD, rope, offset, train=train, decode=decode, segments_BL=segments_BL)
        x_BLD = _norm(cfg, "final_norm")(x_BLD)
        if not logits:
            return x_BLD

        return lm_head(cfg, x_BLD, embed_VD)
