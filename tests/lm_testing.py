"""Helpers the model-family tests share: a jitted forward pass and decode step for any family
(`lmjax.models.build`), random token ids, parameters moved off their init, the bfloat16
comparison, and greedy decoding without a cache."""

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np

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


def trained_like(params, embedding_scale: float):
    """`params` moved off their initial values as training moves them: the embedding scaled up
    (larger activations, peaked next-token distributions) and every 1-D leaf (norm scales,
    biases) shifted by noise of std 0.3. At init a model's outputs are near uniform and its
    norms' scales 1, so two ways of computing it agree whether or not they compute the same."""
    def move(path, x):
        name = jax.tree_util.keystr(path)
        if name == "['embedding']":
            return x * embedding_scale
        if x.ndim == 1:
            return x + 0.3 * jax.random.normal(jax.random.key(zlib.crc32(name.encode())), x.shape)
        return x

    return jax.tree_util.tree_map_with_path(move, params)


def assert_bfloat16_close(l32_BLV, l16_BLV, prob_rtol: float = 0.1):
    """Logits computed in bfloat16 against the float32 ones of the same, peaked model: within
    bfloat16's rounding. Measured on the tests' decoder and LSTM: 1.4-2.8% of the logits' spread
    and 1-4% on the probabilities above 1%; a 3% error in the logits' scale (a temperature) makes
    9-21% of the spread."""
    p32_BLV = jax.nn.softmax(l32_BLV)
    assert p32_BLV.max(-1).mean() > 0.15  # peaked: a near-uniform output would match anything
    assert l16_BLV.dtype == jnp.float32 and not np.array_equal(l16_BLV, l32_BLV)  # it ran in bfloat16
    assert np.abs(l16_BLV - l32_BLV).max() <= 0.05 * np.std(l32_BLV)
    likely = p32_BLV > 0.01
    dlogp = jax.nn.log_softmax(l16_BLV) - jax.nn.log_softmax(l32_BLV)
    assert np.abs(dlogp[likely]).max() <= prob_rtol  # probabilities within 10% (default), relative


def greedy_by_forward(run, prompt: str, n: int) -> str:
    """What `run.generate(prompt, max_new_tokens=n, temperature=0)` must give, computed another
    way: n argmaxes of full forward passes (`run.logits`, no cache) over the growing sequence,
    decoded. The sequence is right-padded to its final length so that one shape compiles once:
    a causal model's logits at a position do not see the padding after it."""
    ids = [int(i) for i in run.tokenizer.encode(prompt)]
    tokens_1L = np.zeros((1, len(ids) + n), np.int32)
    for t in range(len(ids), len(ids) + n):
        tokens_1L[0, :len(ids)] = ids
        ids.append(int(np.argmax(run.logits(tokens_1L)[0, t - 1])))
    return run.tokenizer.decode(ids[-n:])
