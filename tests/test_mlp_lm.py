"""The MLP language model (lmjax/models/mlp_lm.py): parameter count, causality and the context
limit, decoding with the cache, the hidden-state output, and sharding under a 2x2x2 mesh."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.config import MeshConfig, ModelConfig
from lmjax.models import init_cache, init_params, unembedding_VD
from lmjax.models.mlp_lm import MlpLM, flops_per_token, param_count
from lmjax.training import sharding
from lm_testing import decode_step, forward, random_tokens

VOCAB, MAX_LEN = 50, 32


def tiny(**kw) -> ModelConfig:
    base = dict(family="mlp", vocab_size=VOCAB, max_len=MAX_LEN, num_layers=2, width=16, context=4)
    return ModelConfig(**{**base, **kw})


def tokens(seed, shape=(2, 16)):
    return random_tokens(seed, shape, VOCAB)


@functools.cache
def model(**kw):
    cfg = tiny(**kw)
    return cfg, init_params(cfg, jax.random.key(0))


PARAM_CONFIGS = [
    tiny(),
    tiny(tie_embeddings=False),
    tiny(direct=True),
    tiny(direct=True, tie_embeddings=False, num_layers=1),
    tiny(num_layers=1, context=1),
]


@pytest.mark.parametrize("cfg", PARAM_CONFIGS)
def test_param_count_matches_tree(cfg):
    params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    total = sum(x.size for x in jax.tree.leaves(params))
    assert param_count(cfg) == total
    embedding = params["embedding"].size
    embedding += 0 if cfg.tie_embeddings else params["unembed"]["kernel"].size
    assert param_count(cfg, embeddings=False) == total - embedding
    assert ("direct" in params) == cfg.direct
    assert ("unembed" in params) == (not cfg.tie_embeddings)
    assert params["hidden_0"]["kernel"].shape == (cfg.context * cfg.width, cfg.width)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


def test_flops_formula():
    C, D, V = 4, 16, VOCAB
    cfg = tiny(num_layers=3)
    assert flops_per_token(cfg, 32) == 3 * (2 * (C * D * D + 2 * D * D) + 2 * V * D)
    assert flops_per_token(cfg, 32) == flops_per_token(cfg, 7, count_masked=True)
    direct = dataclasses.replace(cfg, direct=True)
    assert flops_per_token(direct, 32) - flops_per_token(cfg, 32) == 3 * 2 * C * D * V


@pytest.mark.parametrize("kw", [dict(), dict(direct=True, tie_embeddings=False)])
def test_causal_and_context_limit(kw):
    cfg, params = model(**kw)
    a_BL = tokens(1)
    t = 7
    b_BL = a_BL.at[:, t].set((a_BL[:, t] + 7) % VOCAB)
    la, lb = forward(params, a_BL, cfg=cfg), forward(params, b_BL, cfg=cfg)
    assert la.shape == (2, 16, VOCAB) and la.dtype == jnp.float32
    np.testing.assert_array_equal(la[:, :t], lb[:, :t])  # the past does not see token t
    np.testing.assert_array_equal(la[:, t + cfg.context:], lb[:, t + cfg.context:])  # out of reach
    diff_L = np.abs(np.asarray(la - lb)).max(axis=(0, 2))
    assert (diff_L[t:t + cfg.context] > 1e-6).all()  # the C positions that see token t change


@pytest.mark.parametrize("kw", [dict(), dict(direct=True, tie_embeddings=False, num_layers=1),
                                dict(context=1)])
def test_decode_equals_forward(kw):
    cfg, params = model(**kw)
    x_BL = tokens(2, (3, 12))
    full = forward(params, x_BL, cfg=cfg)
    cache = init_cache(cfg, 3)
    assert cache["cache_index"].shape == () and cache["cache_index"].dtype == jnp.int32
    assert cache["context"].shape == (3, cfg.context - 1, cfg.width)
    assert not np.asarray(cache["context"]).any()
    prefill = 5
    logits, cache = decode_step(params, cache, x_BL[:, :prefill], cfg=cfg)
    outs = [logits]
    for t in range(prefill, 12):
        logits, cache = decode_step(params, cache, x_BL[:, t:t + 1], cfg=cfg)
        outs.append(logits)
    assert int(cache["cache_index"]) == 12
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5, rtol=1e-5)


def test_init_decode_does_not_write():
    cfg, _ = model()
    variables = MlpLM(cfg).init(jax.random.key(0), tokens(3, (5, 9)), decode=True)
    cache = variables["cache"]
    assert int(cache["cache_index"]) == 0 and not np.asarray(cache["context"]).any()
    assert jax.tree.map(jnp.shape, cache) == jax.tree.map(jnp.shape, init_cache(cfg, 5))


@pytest.mark.parametrize("tie", [True, False])
def test_hidden_states_project_to_logits(tie):
    cfg, params = model(tie_embeddings=tie)
    x_BL = tokens(4)
    h_BLD = forward(params, x_BL, cfg=cfg, logits=False)
    assert h_BLD.shape == (2, 16, cfg.width)
    projected = jnp.einsum("bld,vd->blv", h_BLD, unembedding_VD(cfg, params))
    np.testing.assert_allclose(projected, forward(params, x_BL, cfg=cfg), atol=1e-6)


def test_dropout():
    cfg, params = model()
    cfg = dataclasses.replace(cfg, dropout=0.3)
    x = tokens(5)
    eval_ = forward(params, x, jax.random.key(1), cfg=cfg)
    np.testing.assert_array_equal(eval_, forward(params, x, cfg=dataclasses.replace(cfg, dropout=0.0)))
    train_a = forward(params, x, jax.random.key(1), cfg=cfg, train=True)
    np.testing.assert_array_equal(train_a, forward(params, x, jax.random.key(1), cfg=cfg, train=True))
    assert np.abs(train_a - forward(params, x, jax.random.key(2), cfg=cfg, train=True)).max() > 1e-6
    assert np.abs(train_a - eval_).max() > 1e-6


def test_shardings_on_2x2x2_mesh():
    cfg = tiny(direct=True, tie_embeddings=False, width=32, vocab_size=64)
    mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    dummy = jnp.zeros((1, 8), jnp.int32)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        boxed = jax.eval_shape(lambda: MlpLM(cfg).init(jax.random.key(0), dummy)["params"])
    shardings = sharding.tree_shardings(mesh, boxed)
    flat = jax.tree_util.tree_flatten_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
    assert all(isinstance(leaf, nn.LogicallyPartitioned) for _, leaf in flat)
    P = jax.sharding.PartitionSpec
    assert shardings["embedding"].spec == P("tensor", None)
    assert shardings["hidden_0"]["kernel"].spec == P("fsdp", "tensor")
    assert shardings["hidden_1"]["bias"].spec == P("tensor")
    assert shardings["unembed"]["kernel"].spec == P("fsdp", "tensor")
    assert shardings["direct"]["kernel"].spec == P("fsdp", "tensor")
