"""An LSTM language model (config.model.family='lstm'), with the Transformer's interface.

Token embedding [V, D] -> dropout -> num_layers LSTM layers of hidden width D = cfg.width (each
followed by dropout, as in Zaremba et al. 2014: the embedding, every layer's output and so the
input of the output projection are dropped; the recurrent connections are not) -> the output
projection: the embedding transposed (tie_embeddings) or an untied bias-free 'unembed' Dense.
No positions (the recurrence orders the tokens) and no normalisation layers.

Each layer is `nn.RNN(nn.OptimizedLSTMCell(D))`: per layer the input kernels ii, if, ig, io
[D, D] (no bias) and the recurrent kernels hi, hf, hg, ho [D, D] with biases [D]. Parameters are
float32; the matmuls and gates run in cfg.dtype, while the cell state and the carry stay float32
(the carry mixes the bfloat16 gates with the float32 state) and the returned logits are float32.
Input kernels start lecun-normal and recurrent kernels orthogonal (Flax's defaults), biases zero,
the embedding (and an untied unembedding) normal(0.02).

Logical axes: embedding ('vocab', 'embed_vocab'), LSTM kernels ('embed', 'mlp') - the input
dimension as the Transformer's 'embed', each gate's output dimension as its 'mlp' hidden units
(sharded over 'tensor') - biases ('mlp',), untied unembedding ('embed', 'vocab').

Tensor names carry their shapes: B batch, L sequence length, D width, V vocab.

Decode cache (decode=True): collection 'cache' holds `cache_index` (int32 scalar, tokens seen so
far) at the top level and, per layer `layer_i`, the carry `c` and `h` [B, D] (float32): read as
the initial carry and written back after the call, so each new token costs O(1), however long the
prefix. `init_cache(cfg, B)` builds an empty (zero) one; equivalently
`LSTMLM(cfg).init(rng, tokens_BT, decode=True)['cache']` - init never writes to it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.config import ModelConfig  # the schema's config.model section (checked there)
from lmjax.models.layers import embedding, lm_head

__all__ = ["LSTMLM", "LSTMLayer", "flops_per_token", "param_count"]


def _layer_matmul_params(cfg: ModelConfig) -> int:
    D = cfg.width
    return 4 * D * D + 4 * D * D  # input kernels (4 gates) + recurrent kernels (4 gates)


def param_count(cfg: ModelConfig, *, embeddings: bool = True) -> int:
    """Exact number of parameters:

        num_layers * (8*D^2 + 4*D)                          (LSTM layers)
        + V*D  (+ D*V untied unembedding)                   (embeddings)

    per layer 4 input kernels [D, D] without bias and 4 recurrent kernels [D, D] with a bias [D]
    each (gates i, f, g, o; Flax's OptimizedLSTMCell layout). embeddings=False leaves out the token
    embedding and an untied unembedding (Kaplan et al.'s "non-embedding" count)."""
    D = cfg.width
    n = cfg.num_layers * (_layer_matmul_params(cfg) + 4 * D)
    if embeddings:
        n += cfg.vocab_size * D
        n += 0 if cfg.tie_embeddings else D * cfg.vocab_size
    return n


def flops_per_token(cfg: ModelConfig, seq_len: int, *, count_masked: bool = False) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward):

        3 * (2 * num_layers * 8 * D^2 + 2 * V * D)  =  48 * num_layers * D^2 + 6 * V * D

    counting matmuls only, 2 FLOPs per multiply-add: per layer the 8 gate kernels [D, D] (4 input,
    4 recurrent), and 2 * V * D for the unembedding (tied or not). The gate nonlinearities, biases,
    the state update and the embedding lookup are not matmuls and not counted. An LSTM's cost per
    token does not depend on the context, so seq_len and count_masked (accepted for the families'
    common interface) change nothing."""
    del seq_len, count_masked
    forward = 2 * cfg.num_layers * _layer_matmul_params(cfg) + 2 * cfg.vocab_size * cfg.width
    return float(3 * forward)


class LSTMLayer(nn.Module):
    """One LSTM layer over [B, L, D]; with decode=True its carry continues from the cache."""

    cfg: ModelConfig
    decode: bool = False

    @nn.compact
    def __call__(self, x_BLD):
        cfg = self.cfg
        B, D = x_BLD.shape[0], cfg.width
        cell = nn.OptimizedLSTMCell(
            D,
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
            recurrent_kernel_init=nn.with_logical_partitioning(nn.initializers.orthogonal(),
                                                               ("embed", "mlp")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",)),
            dtype=cfg.compute_dtype, param_dtype=jnp.float32, parent=None)
        zeros = lambda: jnp.zeros((B, D), jnp.float32)  # noqa: E731
        initialized = False
        if self.decode:
            initialized = self.has_variable("cache", "c")
            c = self.variable("cache", "c", zeros)
            h = self.variable("cache", "h", zeros)
            carry = (c.value, h.value)
        else:
            carry = (zeros(), zeros())
        (c_BD, h_BD), y_BLD = nn.RNN(cell, return_carry=True, unroll=_unroll(cfg), name="rnn")(x_BLD, initial_carry=carry)
        if initialized:  # model.init(decode=True) only creates the (empty) cache
            c.value, h.value = c_BD.astype(jnp.float32), h_BD.astype(jnp.float32)
        return y_BLD.astype(cfg.compute_dtype)


def _unroll(cfg) -> int:
    """config.model.unroll, with 0 resolved for the backend (benchmarks/RESULTS.md, "GPU")."""
    return cfg.unroll or (8 if jax.default_backend() == "gpu" else 1)


class LSTMLM(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BL, *, train: bool = False, decode: bool = False, logits: bool = True):
        """float32 logits [B, L, V]. With decode=True (and mutable=['cache']) the tokens continue
        the sequence whose state the cache holds. With logits=False, the last layer's (dropped
        out) hidden states [B, L, D] instead, for a loss that projects them itself
        (`unembedding_VD`)."""
        cfg = self.cfg
        L = tokens_BL.shape[1]
        if decode:
            initialized = self.has_variable("cache", "cache_index")
            index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
            if initialized:
                index.value = index.value + L

        drop = nn.Dropout(cfg.dropout, deterministic=not train)
        embed_VD = embedding(self, cfg)
        x_BLD = drop(jnp.take(embed_VD, tokens_BL, axis=0).astype(cfg.compute_dtype))
        x_BLD = nn.with_logical_constraint(x_BLD, ("batch", "length", "act_embed"))
        for i in range(cfg.num_layers):
            x_BLD = drop(LSTMLayer(cfg, decode, name=f"layer_{i}")(x_BLD))
            x_BLD = nn.with_logical_constraint(x_BLD, ("batch", "length", "act_embed"))
        if not logits:
            return x_BLD

        return lm_head(cfg, x_BLD, embed_VD)
