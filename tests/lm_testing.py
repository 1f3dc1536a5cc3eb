"""Helpers the model-family tests share: a jitted forward pass and decode step for any family
(`lmjax.models.build`), and random token ids."""

import functools

import jax
import jax.numpy as jnp

from lmjax.models import build


@functools.partial(jax.jit, static_argnames=("cfg", "train", "logits"))
def forward(params, tokens_BL, rng=None, *, cfg, train=False, logits=True):
    rngs = {"dropout": rng} if rng is not None else None
    return build(cfg).apply({"params": params}, tokens_BL, train=train, logits=logits, rngs=rngs)


@functools.partial(jax.jit, static_argnames="cfg")
def decode_step(params, cache, tokens_BT, *, cfg):
    logits_BTV, vars_ = build(cfg).apply({"params": params, "cache": cache}, tokens_BT,
                                         decode=True, mutable=["cache"])
    return logits_BTV, vars_["cache"]


def random_tokens(seed, shape, vocab):
    return jax.random.randint(jax.random.key(seed), shape, 0, vocab, dtype=jnp.int32)
