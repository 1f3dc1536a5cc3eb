"""The MLP language model of Bengio et al. (2003), "A Neural Probabilistic Language Model",
in Flax Linen (`config.model.family='mlp'`).

At position t the model sees the embeddings of the C = cfg.context tokens t-C+1..t (the current
token included), concatenated oldest first into one [C*D] vector x_t; positions before the start
of the sequence contribute zero vectors (so the first C-1 positions see a zero-padded context).
Then cfg.num_layers tanh hidden layers of width D = cfg.width (Dense with bias; the first from
C*D), and the output

    logits_t = W_out h_t  (+ W_direct x_t  when cfg.direct)

where W_out is the embedding transposed (cfg.tie_embeddings) or an untied 'unembed' Dense, and
W_direct [C*D, V] is Bengio's direct connection from the context to the output. No output bias.
Dropout (cfg.dropout, rng 'dropout', train=True only) follows the token embedding and each hidden
layer. Parameters are float32; activations are computed in cfg.dtype; logits are float32.

Tensor names carry their shapes: B batch, L sequence length, D width, C context, V vocab.

Parameters (logical axis names in brackets, see lmjax/training/sharding.py):
  embedding           [V, D]    ("vocab", "embed_vocab")  normal(0.02)
  hidden_i/kernel     [C*D or D, D]  ("embed", "mlp")     normal(1/sqrt(fan_in)): LeCun, keeps the
                                                          activation scale through a tanh stack
  hidden_i/bias       [D]       ("mlp",)                  zeros
  unembed/kernel      [D, V]    ("embed", "vocab")        normal(0.02), untied only
  direct/kernel       [C*D, V]  ("embed", "vocab")        normal(0.02), cfg.direct only

Decoding (decode=True, mutable=['cache']): collection 'cache' holds `cache_index` (int32 scalar,
the number of tokens seen so far) at the top level and `context` [B, C-1, D] (cfg.dtype), the
embeddings of the last C-1 tokens of the sequence so far, zeros for positions before its start,
so each new token costs O(1) whatever the length. Several tokens at once (a prefill) work too.
`init_cache(cfg, B)` builds an empty one; equivalently `MlpLM(cfg).init(rng, tokens_BT,
decode=True)['cache']` for any [B, T] tokens - init never writes to it. The model has no position
limit: cfg.max_len only sizes the dummy input of `init_params`.

The module-level functions mirror lmjax/models/transformer.py's (same names and signatures).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.config import ModelConfig
from lmjax.models.layers import dense, embedding, lm_head, param_init

__all__ = ["MlpLM", "context_features", "flops_per_token", "param_count"]


def _hidden_matmul_params(cfg: ModelConfig) -> int:
    """Kernel entries of the hidden layers: C*D*D for the first, D*D for each further one."""
    D = cfg.width
    return cfg.context * D * D + (cfg.num_layers - 1) * D * D


def param_count(cfg: ModelConfig, *, embeddings: bool = True) -> int:
    """Exact number of parameters:

        C*D*D + D  +  (num_layers - 1) * (D*D + D)      (hidden layers: kernels and biases)
        + C*D*V  when cfg.direct                         (the direct connection)
        + V*D  (+ D*V untied unembedding)                (embeddings)

    with C = cfg.context, D = cfg.width, V = cfg.vocab_size. embeddings=False leaves out the token
    embedding and an untied unembedding (Kaplan et al.'s "non-embedding" count); the direct
    connection is a weight matrix of the model body, not an embedding table, so it stays in."""
    D, V = cfg.width, cfg.vocab_size
    n = _hidden_matmul_params(cfg) + cfg.num_layers * D
    n += cfg.context * D * V if cfg.direct else 0
    if embeddings:
        n += V * D
        n += 0 if cfg.tie_embeddings else D * V
    return n


def flops_per_token(cfg: ModelConfig, seq_len: int, *, count_masked: bool = False) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward):

        3 * (2 * (C*D*D + (num_layers - 1) * D*D) + 2 * V * D  (+ 2 * C*D*V when cfg.direct))

    i.e. 2 FLOPs per multiply-add of the hidden-layer kernels, of the unembedding (tied or not) and
    of the direct connection; the backward pass costs two matmuls per forward matmul, hence 3x.
    Biases, tanh, dropout and the embedding lookup are not matmuls and are not counted. The model
    has no attention, so seq_len and count_masked (kept for transformer.py's signature) change
    nothing."""
    del seq_len, count_masked
    forward = 2 * _hidden_matmul_params(cfg) + 2 * cfg.vocab_size * cfg.width
    forward += 2 * cfg.context * cfg.width * cfg.vocab_size if cfg.direct else 0
    return float(3 * forward)


def context_features(prev_BPD, x_BLD, context: int):
    """[B, L, C*D]: at position t the embeddings of tokens t-C+1..t concatenated, oldest first.

    prev_BPD [B, C-1, D] holds the C-1 embeddings before x_BLD[:, 0] (zeros: before the start).
    C shifted copies of the padded sequence, one slice each - no loop over positions."""
    L, C = x_BLD.shape[1], context
    ext_BMD = jnp.concatenate([prev_BPD.astype(x_BLD.dtype), x_BLD], axis=1)  # M = C-1+L
    return jnp.concatenate([ext_BMD[:, j:j + L] for j in range(C)], axis=-1)


class MlpLM(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BL, *, train: bool = False, decode: bool = False, logits: bool = True):
        """float32 logits [B, L, V]. With decode=True (and mutable=['cache']) the tokens continue
        the sequence in the cache. With logits=False, the last hidden layer's output [B, L, D]
        (cfg.dtype) instead, for a loss that projects it itself (`unembedding_VD`); note that with
        cfg.direct the direct term W_direct x_t is then NOT included, so those projected logits
        differ from the model's."""
        cfg = self.cfg
        B, L = tokens_BL.shape
        C, D, V = cfg.context, cfg.width, cfg.vocab_size
        drop = nn.Dropout(cfg.dropout, deterministic=not train)

        embed_VD = embedding(self, cfg)
        x_BLD = jnp.take(embed_VD, tokens_BL, axis=0).astype(cfg.compute_dtype)

        if decode:
            initialized = self.has_variable("cache", "cache_index")
            index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
            prev = self.variable("cache", "context", jnp.zeros, (B, C - 1, D), cfg.compute_dtype)
            prev_BPD = prev.value
            if initialized:  # model.init(decode=True) only creates the (empty) cache
                index.value = index.value + L
                ext_BMD = jnp.concatenate([prev_BPD, x_BLD.astype(prev_BPD.dtype)], axis=1)
                prev.value = ext_BMD[:, ext_BMD.shape[1] - (C - 1):]
        else:
            prev_BPD = jnp.zeros((B, C - 1, D), cfg.compute_dtype)  # before the start: zeros

        x_BLD = drop(x_BLD)
        ctx_BLX = context_features(prev_BPD, x_BLD, C)  # X = C*D
        ctx_BLX = nn.with_logical_constraint(ctx_BLX, ("batch", "length", "act_embed"))

        h_ND = ctx_BLX.reshape(B * L, C * D)  # 2-D matmuls, as transformer.py's Mlp
        for i in range(cfg.num_layers):
            fan_in = h_ND.shape[-1]
            h_ND = nn.Dense(D, use_bias=True, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                            kernel_init=param_init(1.0 / math.sqrt(fan_in), ("embed", "mlp")),
                            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
                            name=f"hidden_{i}")(h_ND)
            h_ND = drop(jnp.tanh(h_ND))
        h_BLD = nn.with_logical_constraint(h_ND.reshape(B, L, D), ("batch", "length", "act_embed"))
        if not logits:
            return h_BLD

        logits_BLV = lm_head(cfg, h_BLD, embed_VD)
        if cfg.direct:
            f32_dot = functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32)
            direct_NV = dense(cfg, V, ("embed", "vocab"), "direct", dot_general=f32_dot)(
                ctx_BLX.reshape(B * L, C * D))
            logits_BLV = logits_BLV + direct_NV.reshape(B, L, V).astype(jnp.float32)
        return logits_BLV
