"""The pieces every model family shares: parameter initialisers with logical axis names, the
token embedding, the output head (tied or untied), and reading the head back from params.

Parameter names are the same in every family ('embedding' [V, D], 'unembed' when untied), so a
checkpoint's head is found the same way whatever the family.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.config import ModelConfig


def param_init(std: float, axes: tuple[str, ...]):
    """normal(std) initialiser whose parameter carries logical axis names."""
    return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


def dense(cfg: ModelConfig, features: int, axes, name: str, std: float = 0.02, *, bias: bool = False,
          **kw) -> nn.Dense:
    """A Dense with float32 parameters and cfg.dtype compute; bias-free unless `bias` (zeros,
    sharded as the kernel's output axis)."""
    return nn.Dense(features, use_bias=bias, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                    kernel_init=param_init(std, axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
                    name=name, **kw)


def embedding(module: nn.Module, cfg: ModelConfig) -> jax.Array:
    """The token embedding [V, D] of `module` (call inside its compact __call__)."""
    return module.param("embedding", param_init(0.02, ("vocab", "embed_vocab")),
                        (cfg.vocab_size, cfg.width), jnp.float32)


def lm_head(cfg: ModelConfig, x_BLD, embed_VD) -> jax.Array:
    """float32 logits [B, L, V] of x_BLD: through the embedding when tied, else an 'unembed'
    Dense created in the calling module (call inside its compact __call__)."""
    if cfg.tie_embeddings:
        logits_BLV = jnp.einsum("bld,vd->blv", x_BLD, embed_VD.astype(cfg.compute_dtype),
                                preferred_element_type=jnp.float32)
    else:
        f32_dot = functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32)
        logits_BLV = dense(cfg, cfg.vocab_size, ("embed", "vocab"), "unembed", dot_general=f32_dot)(x_BLD)
    return nn.with_logical_constraint(logits_BLV.astype(jnp.float32), ("batch", "length", "vocab"))


def unembedding_VD(cfg: ModelConfig, params) -> jax.Array:
    """The output projection of `params` (unboxed) as [V, D]: the embedding when tied."""
    return params["embedding"] if cfg.tie_embeddings else params["unembed"]["kernel"].T


def unboxed(tree):
    """`tree` with nn.LogicallyPartitioned boxes replaced by their arrays. Unlike nn.unbox this
    adds no sharding constraint, so it also works under a mesh and logical-axis rules."""
    is_box = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
    return jax.tree.map(lambda x: x.value if is_box(x) else x, tree, is_leaf=is_box)
