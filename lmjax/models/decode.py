"""Sampling from a trained model and scoring token sequences. Every family and attention variant
decodes through the same `decode=True` calls: the Transformer with its KV cache (linear attention
with its running state), the recurrent models (lstm, gru, rnn) with their state, the MLP with its
last tokens."""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import LmjaxError
from lmjax.config import ModelConfig
from lmjax.models.families import build, init_cache
from lmjax.models.layers import unboxed

_REMOVED = -1e30  # logit of tokens that top-k / top-p rule out


def sample_logits(logits_BV, rng, *, temperature, top_k, top_p):
    """Token ids [B] drawn from logits [B, V]. temperature 0 is greedy argmax; top_k 0 and
    top_p 1.0 switch those filters off; top_p applies to what top_k keeps, renormalised.

    The settings may be traced values, so one compiled generate serves every setting.
    """
    logits_BV = logits_BV.astype(jnp.float32)
    V = logits_BV.shape[-1]
    greedy_B = jnp.argmax(logits_BV, axis=-1)
    logits_BV = logits_BV / jnp.where(temperature > 0, temperature, 1.0)
    sorted_BV = -jnp.sort(-logits_BV, axis=-1)  # descending
    k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)
    in_top_k_V = jnp.arange(V) < k
    probs_BV = jax.nn.softmax(jnp.where(in_top_k_V, sorted_BV, _REMOVED), axis=-1)
    # The nucleus: the most likely tokens until their mass reaches top_p (always the top one).
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    keep_BV = in_top_k_V & ((mass_before_BV < top_p) | (top_p >= 1.0))
    cutoff_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    logits_BV = jnp.where(logits_BV < cutoff_B1, _REMOVED, logits_BV)
    sampled_B = jax.random.categorical(rng, logits_BV, axis=-1)
    return jnp.where(temperature > 0, sampled_B, greedy_B)


@functools.partial(jax.jit, static_argnames=("cfg", "prefix"))
def _generate(params, tokens_BN, lengths_B, rng, temperature, top_k, top_p, *, cfg, prefix):
    """Fill tokens_BN from position `prefix` on: row b keeps its prompt (positions < lengths_B[b])
    and gets sampled tokens after it."""
    model = build(cfg)
    B, N = tokens_BN.shape

    def step(cache, tokens_BT):
        logits_BTV, vars_ = model.apply({"params": params, "cache": cache}, tokens_BT,
                                        decode=True, mutable=["cache"])
        return vars_["cache"], logits_BTV[:, -1]

    cache, logits_BV = step(init_cache(cfg, B), tokens_BN[:, :prefix])

    def body(t, carry):
        tokens_BN, cache, logits_BV, rng = carry
        rng, sub = jax.random.split(rng)
        sampled_B = sample_logits(logits_BV, sub, temperature=temperature, top_k=top_k, top_p=top_p)
        # Rows whose prompt is longer than t are teacher-forced with their own prompt token.
        tok_B = jnp.where(t < lengths_B, tokens_BN[:, t], sampled_B.astype(tokens_BN.dtype))
        tokens_BN = tokens_BN.at[:, t].set(tok_B)
        cache, logits_BV = step(cache, tok_B[:, None])  # wasted on the last step; keeps it simple
        return tokens_BN, cache, logits_BV, rng

    tokens_BN, *_ = jax.lax.fori_loop(prefix, N, body, (tokens_BN, cache, logits_BV, rng))
    return tokens_BN


def generate(cfg: ModelConfig, params, prompts: list[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             eos_id: int | None = None) -> list[np.ndarray]:
    """The new token ids (int32) for each prompt, continued in one batch.

    Prompts are right-padded; the shortest prompt's length is prefilled in one call, then tokens
    are produced one at a time in a jitted fori_loop. Each distinct (batch, longest prompt,
    shortest prompt, max_new_tokens) compiles once; sampling settings and seed are traced.
    The same seed gives the same tokens. With eos_id, each output is cut after its first eos
    (all steps still run).
    """
    if not prompts:
        raise LmjaxError("generate needs at least one prompt")
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
        raise LmjaxError(f"prompt {lengths.index(0)} is empty; give at least one token")
    if max_new_tokens < 0:
        raise LmjaxError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0 or top_k < 0 or not 0.0 < top_p <= 1.0:
        raise LmjaxError(f"sampling needs temperature >= 0, top_k >= 0 and 0 < top_p <= 1; got "
                         f"temperature={temperature}, top_k={top_k}, top_p={top_p}")
    longest = max(lengths)
    if longest + max_new_tokens > cfg.max_len:
        raise LmjaxError(
            f"prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the model's context of "
            f"{cfg.max_len}; shorten the prompt or lower max_new_tokens")
    if max_new_tokens == 0:
        return [np.zeros(0, np.int32) for _ in prompts]
    if cfg.family == "ngram":  # params is the counted NgramModel
        return _generate_ngram(params, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                               top_k=top_k, top_p=top_p, seed=seed, eos_id=eos_id)

    tokens_BN = np.zeros((len(prompts), longest + max_new_tokens), np.int32)
    for b, p in enumerate(prompts):
        tokens_BN[b, :len(p)] = p
    out_BN = np.asarray(_generate(
        unboxed(params), jnp.asarray(tokens_BN), jnp.asarray(lengths, jnp.int32),
        jax.random.key(seed), jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p),
        cfg=cfg, prefix=min(lengths)))

    outs = []
    for b, n in enumerate(lengths):
        new = out_BN[b, n:n + max_new_tokens]
        if eos_id is not None and (hits := np.flatnonzero(new == eos_id)).size:
            new = new[:hits[0] + 1]
        outs.append(new)
    return outs


def _generate_ngram(model, prompts, *, max_new_tokens, temperature, top_k, top_p, seed, eos_id):
    """An n-gram model's continuations, one token at a time from its distribution (numpy),
    drawn with the same `sample_logits` rule as the neural families."""
    rng, outs = jax.random.key(seed), []
    for prompt in prompts:
        seq = list(prompt)
        for _ in range(max_new_tokens):
            rng, sub = jax.random.split(rng)
            logits_1V = np.log(np.maximum(model.distribution(np.asarray(seq)), 1e-300))[None]
            seq.append(int(_sample(logits_1V, sub, temperature=jnp.float32(temperature),
                                   top_k=jnp.int32(top_k), top_p=jnp.float32(top_p))[0]))
            if eos_id is not None and seq[-1] == eos_id:
                break
        outs.append(np.asarray(seq[len(prompt):], np.int32))
    return outs


_sample = jax.jit(sample_logits)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _token_logprobs(params, ids_1N, *, cfg):
    logits_1NV = build(cfg).apply({"params": params}, ids_1N)
    logp_NV = jax.nn.log_softmax(logits_1NV[0, :-1], axis=-1)
    return jnp.take_along_axis(logp_NV, ids_1N[0, 1:, None], axis=-1)[:, 0]


def token_logprobs(cfg: ModelConfig, params, ids: Sequence[int]) -> np.ndarray:
    """log p(ids[t] | ids[:t]) for t = 1..n-1: float32 [n-1], from one full forward pass."""
    n = len(ids)
    if n == 0:
        raise LmjaxError("token_logprobs needs at least one token")
    if n > cfg.max_len:
        raise LmjaxError(f"sequence of {n} tokens exceeds the model's context of {cfg.max_len}; "
                         "score a shorter sequence")
    if cfg.family == "encoder":
        raise LmjaxError("the encoder family is a masked LM: it gives no next-token log-probabilities; "
                         "use run.fill('... [MASK] ...') or lmjax eval (masked-LM loss and accuracy)")
    if cfg.family == "ngram":  # params is the counted NgramModel
        return params.logprobs(np.asarray(ids)).astype(np.float32)
    ids_1N = jnp.asarray(np.asarray(ids, np.int32)[None])
    return np.asarray(_token_logprobs(unboxed(params), ids_1N, cfg=cfg), np.float32)
