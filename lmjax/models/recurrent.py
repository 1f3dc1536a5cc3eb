"""Recurrent language models (config.model.family 'lstm', 'gru' or 'rnn'), with the Transformer's
interface: one module whose cell the family picks.

Token embedding [V, D] -> dropout -> num_layers recurrent layers of hidden width D = cfg.width
(each followed by dropout, as in Zaremba et al. 2014: the embedding, every layer's output and so
the input of the output projection are dropped; the recurrent connections are not) -> the output
projection: the embedding transposed (tie_embeddings) or an untied bias-free 'unembed' Dense.
No positions (the recurrence orders the tokens) and no normalisation layers.

Each layer is `nn.RNN(cell)`, its parameters under `layer_i/rnn/cell`, per layer (`CELLS`):
- lstm, `nn.OptimizedLSTMCell`: input kernels ii, if, ig, io [D, D] (no bias) and recurrent
  kernels hi, hf, hg, ho [D, D] with biases [D]; state (c, h).
- gru, `nn.GRUCell`: input kernels ir, iz, in [D, D] with biases [D], recurrent kernels hr, hz
  [D, D] (no bias) and hn [D, D] with a bias [D]; state h.
- rnn, `nn.SimpleCell` (Elman's tanh cell, h' = tanh(x W_i + b + h W_h)): i [D, D] with a bias
  [D] and h [D, D] (no bias); state h.
Parameters are float32; the matmuls and gates run in cfg.dtype. The LSTM's and the GRU's state
stays float32 (their update mixes the cfg.dtype gates with the float32 state); the Elman cell's
state is its tanh output, in cfg.dtype. The returned logits are float32. Input kernels start
lecun-normal and recurrent kernels orthogonal (Flax's defaults), biases zero, the embedding (and
an untied unembedding) normal(0.02).

Logical axes: embedding ('vocab', 'embed_vocab'), cell kernels ('embed', 'mlp') - the input
dimension as the Transformer's 'embed', each gate's output dimension as its 'mlp' hidden units
(sharded over 'tensor') - biases ('mlp',), untied unembedding ('embed', 'vocab').

Tensor names carry their shapes: B batch, L sequence length, D width, V vocab.

Decode cache (decode=True): collection 'cache' holds `cache_index` (int32 scalar, tokens seen so
far) at the top level and, per layer `layer_i`, the state: `c` and `h` (lstm) or `h` (gru, rnn),
each [B, D] float32: read as the initial carry and written back after the call, so each new token
costs O(1), however long the prefix. `init_cache(cfg, B)` builds an empty (zero) one; equivalently
`RecurrentLM(cfg).init(rng, tokens_BT, decode=True)['cache']` - init never writes to it.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.config import ModelConfig  # the schema's config.model section (checked there)
from lmjax.models.layers import embedding, lm_head

__all__ = ["CELLS", "RecurrentLM", "RecurrentLayer", "flops_per_token", "param_count"]


@dataclasses.dataclass(frozen=True)
class Cell:
    make: type  # the Flax cell class
    gates: int  # per layer, this many input kernels [D, D] and as many recurrent ones
    biases: int  # per layer, this many biases [D]
    state: tuple[str, ...]  # the carry's parts, as the decode cache names them
    float32_state: bool  # the carry stays float32 (else it is cfg.dtype, as the cell's output)


CELLS = {
    "lstm": Cell(nn.OptimizedLSTMCell, gates=4, biases=4, state=("c", "h"), float32_state=True),
    "gru": Cell(nn.GRUCell, gates=3, biases=4, state=("h",), float32_state=True),
    "rnn": Cell(nn.SimpleCell, gates=1, biases=1, state=("h",), float32_state=False),
}


def _layer_matmul_params(cfg: ModelConfig) -> int:
    return 2 * CELLS[cfg.family].gates * cfg.width * cfg.width  # input + recurrent kernels


def param_count(cfg: ModelConfig, *, embeddings: bool = True) -> int:
    """Exact number of parameters:

        num_layers * (2 * gates * D^2 + biases * D)        (recurrent layers)
        + V*D  (+ D*V untied unembedding)                   (embeddings)

    with (gates, biases) = (4, 4) for the LSTM (8*D^2 + 4*D a layer), (3, 4) for the GRU
    (6*D^2 + 4*D) and (1, 1) for the Elman RNN (2*D^2 + D): each gate has an input kernel [D, D]
    and a recurrent one (Flax's layouts, module docstring). embeddings=False leaves out the token
    embedding and an untied unembedding (Kaplan et al.'s "non-embedding" count)."""
    n = cfg.num_layers * (_layer_matmul_params(cfg) + CELLS[cfg.family].biases * cfg.width)
    if embeddings:
        n += cfg.vocab_size * cfg.width
        n += 0 if cfg.tie_embeddings else cfg.width * cfg.vocab_size
    return n


def flops_per_token(cfg: ModelConfig, seq_len: int, *, count_masked: bool = False) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward):

        3 * (2 * num_layers * 2 * gates * D^2 + 2 * V * D)

    (48 * num_layers * D^2 + 6 * V * D for the LSTM's 4 gates), counting matmuls only, 2 FLOPs
    per multiply-add: per layer the gates' kernels [D, D] (input and recurrent), and 2 * V * D for
    the unembedding (tied or not). The gate nonlinearities, biases, the state update and the
    embedding lookup are not matmuls and not counted. A recurrent model's cost per token does not
    depend on the context, so seq_len and count_masked (accepted for the families' common
    interface) change nothing."""
    del seq_len, count_masked
    forward = 2 * cfg.num_layers * _layer_matmul_params(cfg) + 2 * cfg.vocab_size * cfg.width
    return float(3 * forward)


class RecurrentLayer(nn.Module):
    """One recurrent layer (cfg.family's cell) over [B, L, D]; with decode=True its carry
    continues from the cache."""

    cfg: ModelConfig
    decode: bool = False

    @nn.compact
    def __call__(self, x_BLD):
        cfg, spec = self.cfg, CELLS[self.cfg.family]
        B, D = x_BLD.shape[0], cfg.width
        cell = spec.make(
            D,
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
            recurrent_kernel_init=nn.with_logical_partitioning(nn.initializers.orthogonal(),
                                                               ("embed", "mlp")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",)),
            dtype=cfg.compute_dtype, param_dtype=jnp.float32, parent=None)
        state_dtype = jnp.float32 if spec.float32_state else cfg.compute_dtype
        zeros = lambda: jnp.zeros((B, D), jnp.float32)  # noqa: E731
        initialized = False
        if self.decode:
            initialized = self.has_variable("cache", spec.state[0])
            cached = [self.variable("cache", name, zeros) for name in spec.state]
            parts = [v.value.astype(state_dtype) for v in cached]
        else:
            parts = [zeros().astype(state_dtype) for _ in spec.state]
        carry = tuple(parts) if len(parts) > 1 else parts[0]  # the cell's carry: (c, h) or h
        carry, y_BLD = nn.RNN(cell, return_carry=True, unroll=_unroll(cfg), name="rnn")(
            x_BLD, initial_carry=carry)
        if initialized:  # model.init(decode=True) only creates the (empty) cache
            for v, part in zip(cached, carry if len(parts) > 1 else (carry,)):
                v.value = part.astype(jnp.float32)
        return y_BLD.astype(cfg.compute_dtype)


def _unroll(cfg) -> int:
    """config.model.unroll, with 0 resolved for the backend (benchmarks/RESULTS.md, "GPU")."""
    return cfg.unroll or (8 if jax.default_backend() == "gpu" else 1)


class RecurrentLM(nn.Module):
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
            x_BLD = drop(RecurrentLayer(cfg, decode, name=f"layer_{i}")(x_BLD))
            x_BLD = nn.with_logical_constraint(x_BLD, ("batch", "length", "act_embed"))
        if not logits:
            return x_BLD

        return lm_head(cfg, x_BLD, embed_VD)
