import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.errors import LmjaxError
from lmjax.models import (
    ModelConfig,
    Transformer,
    generate,
    init_cache,
    init_params,
    sample_logits,
    token_logprobs,
)

VOCAB, MAX_LEN = 50, 32


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=VOCAB, max_len=MAX_LEN, num_layers=2, num_heads=4, width=32)
    return ModelConfig(**{**base, **kw})


@functools.partial(jax.jit, static_argnames="cfg")
def forward(params, tokens_BL, *, cfg):
    return Transformer(cfg).apply({"params": params}, tokens_BL)


@functools.partial(jax.jit, static_argnames="cfg")
def decode_step(params, cache, tokens_BT, *, cfg):
    logits_BTV, vars_ = Transformer(cfg).apply({"params": params, "cache": cache}, tokens_BT,
                                               decode=True, mutable=["cache"])
    return logits_BTV, vars_["cache"]


@functools.cache
def make_model(positions):
    # Two kv heads for four query heads also exercises the grouped einsum through the cache.
    cfg = tiny(positions=positions, **(dict(attention="gqa", num_kv_heads=2) if positions == "rope" else {}))
    return cfg, init_params(cfg, jax.random.key(0))


@pytest.fixture(params=["rope", "learned"])
def model(request):
    return make_model(request.param)


@pytest.fixture
def rope_model():
    """For tests of the batching and sampling logic, which does not depend on positions."""
    return make_model("rope")


def test_cache_layout(model):
    cfg, _ = model
    cache = init_cache(cfg, 3)
    assert cache["cache_index"].shape == () and cache["cache_index"].dtype == jnp.int32
    assert cache["block_0"]["attn"]["cached_key"].shape == (3, MAX_LEN, cfg.kv_heads, cfg.head_dim)
    # The same cache as the Linen idiom: init with decode=True on a [B, max_len] input.
    init = jax.jit(functools.partial(Transformer(cfg).init, decode=True))
    idiom = init(jax.random.key(0), jnp.zeros((3, MAX_LEN), jnp.int32))["cache"]
    assert jax.tree.map(jnp.shape, idiom) == jax.tree.map(jnp.shape, cache)
    assert all(not np.asarray(x).any() for x in jax.tree.leaves(idiom))


@pytest.mark.parametrize("chunks", [[1] * 12, [5, 1, 3, 1, 2]])
def test_cached_decoding_equals_full_forward(model, chunks):
    cfg, params = model
    tokens_BL = jax.random.randint(jax.random.key(1), (2, sum(chunks)), 0, VOCAB, dtype=jnp.int32)
    full_BLV = forward(params, tokens_BL, cfg=cfg)
    cache, start, pieces = init_cache(cfg, 2), 0, []
    for n in chunks:
        logits_BTV, cache = decode_step(params, cache, tokens_BL[:, start:start + n], cfg=cfg)
        pieces.append(logits_BTV)
        start += n
        assert int(cache["cache_index"]) == start
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full_BLV, atol=1e-5)


@pytest.mark.parametrize("attention", ["gqa", "linear"])
def test_scan_layers_cache(attention):
    """With scan_layers the cache is stacked per layer and decoding still equals the forward."""
    kw = dict(attention="gqa", num_kv_heads=2) if attention == "gqa" else dict(attention="linear")
    cfg = tiny(num_layers=3, scan_layers=True, **kw)
    params = init_params(cfg, jax.random.key(0))
    cache = init_cache(cfg, 2)
    leaf = "cached_key" if attention == "gqa" else "linear_state"
    assert cache["blocks"]["attn"][leaf].shape[:2] == (3, 2)
    tokens_BL = jax.random.randint(jax.random.key(1), (2, 9), 0, VOCAB, dtype=jnp.int32)
    full_BLV = forward(params, tokens_BL, cfg=cfg)
    pieces = []
    for start, n in [(0, 4), (4, 1), (5, 4)]:
        logits_BTV, cache = decode_step(params, cache, tokens_BL[:, start:start + n], cfg=cfg)
        pieces.append(logits_BTV)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full_BLV, atol=1e-5)


def naive_greedy(cfg, params, prompt, n):
    """Greedy rollout with a full forward pass per token (right padding is harmless: causal)."""
    buf = np.zeros((1, len(prompt) + n), np.int32)
    buf[0, :len(prompt)] = prompt
    for t in range(len(prompt), len(prompt) + n):
        buf[0, t] = int(np.argmax(forward(params, jnp.asarray(buf), cfg=cfg)[0, t - 1]))
    return buf[0, len(prompt):]


PROMPTS = [[3, 1, 4, 1, 5, 9, 2], [7], [2, 7, 1, 8]]
NEW = 10  # one generate shape per (batch, longest, shortest prompt): the tests share compilations


def test_greedy_generate_equals_naive_rollout(model):
    cfg, params = model
    out = generate(cfg, params, [PROMPTS[0]], max_new_tokens=NEW, temperature=0.0)
    assert len(out) == 1 and out[0].shape == (NEW,)
    np.testing.assert_array_equal(out[0], naive_greedy(cfg, params, PROMPTS[0], NEW))


def test_batched_prompts_equal_each_alone(rope_model):
    cfg, params = rope_model
    together = generate(cfg, params, PROMPTS, max_new_tokens=NEW, temperature=0.0)
    for prompt, got in zip(PROMPTS, together):
        alone = generate(cfg, params, [prompt], max_new_tokens=NEW, temperature=0.0)[0]
        np.testing.assert_array_equal(got, alone)


def test_sampling_seeds_and_filters(rope_model):
    cfg, params = rope_model
    sample = functools.partial(generate, cfg, params, PROMPTS, max_new_tokens=NEW)
    a, a2, b = sample(seed=0), sample(seed=0), sample(seed=1)
    for x, y in zip(a, a2):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b))
    greedy = sample(temperature=0.0)
    for filtered in (sample(top_k=1, seed=3), sample(top_p=1e-6, seed=3)):
        for x, y in zip(filtered, greedy):
            np.testing.assert_array_equal(x, y)


def test_eos_truncates_after_first_eos(rope_model):
    cfg, params = rope_model
    full = generate(cfg, params, [PROMPTS[0]], max_new_tokens=NEW, seed=5)[0]
    eos = int(full[4])
    cut = generate(cfg, params, [PROMPTS[0]], max_new_tokens=NEW, seed=5, eos_id=eos)[0]
    first = int(np.flatnonzero(full == eos)[0])
    np.testing.assert_array_equal(cut, full[:first + 1])


def test_sample_logits_filters():
    logits_BV = jnp.log(jnp.array([[0.05, 0.5, 0.15, 0.3]] * 2000))
    keys = jax.random.key(0)
    top2 = np.asarray(sample_logits(logits_BV, keys, temperature=1.0, top_k=2, top_p=1.0))
    assert set(top2) == {1, 3}
    nucleus = np.asarray(sample_logits(logits_BV, keys, temperature=1.0, top_k=0, top_p=0.7))
    assert set(nucleus) == {1, 3}  # 0.5 + 0.3 is the smallest set reaching 0.7
    free = np.asarray(sample_logits(logits_BV, keys, temperature=1.0, top_k=0, top_p=1.0))
    np.testing.assert_allclose(np.bincount(free, minlength=4) / 2000, [0.05, 0.5, 0.15, 0.3], atol=0.04)
    greedy = sample_logits(logits_BV, keys, temperature=0.0, top_k=0, top_p=1.0)
    assert (np.asarray(greedy) == 1).all()


def test_token_logprobs(model):
    cfg, params = model
    ids = [4, 8, 15, 16, 23, 42, 0, 1]
    got = token_logprobs(cfg, params, ids)
    assert got.shape == (7,) and got.dtype == np.float32
    logp = jax.nn.log_softmax(forward(params, jnp.asarray([ids]), cfg=cfg)[0])
    np.testing.assert_allclose(got, [logp[t - 1, ids[t]] for t in range(1, 8)], atol=1e-6)


def test_errors(rope_model):
    cfg, params = rope_model
    with pytest.raises(LmjaxError, match=r"prompt of 30 tokens \+ 5 new tokens exceeds .* 32"):
        generate(cfg, params, [[1] * 30, [2]], max_new_tokens=5)
    with pytest.raises(LmjaxError, match="empty"):
        generate(cfg, params, [[1], []], max_new_tokens=5)
    with pytest.raises(LmjaxError, match="top_p"):
        generate(cfg, params, [[1]], max_new_tokens=5, top_p=0.0)
    with pytest.raises(LmjaxError, match="33 tokens .* 32"):
        token_logprobs(cfg, params, [1] * 33)
