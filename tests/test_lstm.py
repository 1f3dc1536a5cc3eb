import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.config import MeshConfig, ModelConfig
from lmjax.models import init_cache, init_params, unembedding_VD
from lmjax.models.lstm import LSTMLM, flops_per_token, param_count
from lmjax.training import sharding
from lm_testing import assert_bfloat16_close, decode_step, forward, random_tokens, trained_like

VOCAB, MAX_LEN = 50, 32


def tiny(**kw) -> ModelConfig:
    base = dict(family="lstm", vocab_size=VOCAB, max_len=MAX_LEN, num_layers=2, width=32)
    return ModelConfig(**{**base, **kw})


def tokens(seed, shape=(2, 16)):
    return random_tokens(seed, shape, VOCAB)


@functools.cache
def model(tie=True):
    cfg = tiny(tie_embeddings=tie)
    return cfg, init_params(cfg, jax.random.key(0))


@pytest.mark.parametrize("cfg", [tiny(), tiny(tie_embeddings=False), tiny(num_layers=1),
                                 tiny(num_layers=1, tie_embeddings=False, width=24)])
def test_param_count_matches_tree(cfg):
    params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    total = sum(x.size for x in jax.tree.leaves(params))
    assert param_count(cfg) == total
    embedding = params["embedding"].size + (0 if cfg.tie_embeddings else params["unembed"]["kernel"].size)
    assert param_count(cfg, embeddings=False) == total - embedding
    D = cfg.width
    assert param_count(cfg, embeddings=False) == cfg.num_layers * (8 * D * D + 4 * D)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    cell = params["layer_0"]["rnn"]["cell"]  # OptimizedLSTMCell: input kernels, recurrent + bias
    assert set(cell) == {"ii", "if", "ig", "io", "hi", "hf", "hg", "ho"}
    assert all(set(cell[g]) == {"kernel"} for g in ("ii", "if", "ig", "io"))
    assert all(set(cell[g]) == {"kernel", "bias"} for g in ("hi", "hf", "hg", "ho"))


def test_flops_per_token():
    cfg = tiny(num_layers=3, width=64)
    want = 3.0 * (2 * 3 * 8 * 64 * 64 + 2 * VOCAB * 64)
    assert flops_per_token(cfg, 16) == want
    assert flops_per_token(cfg, 1024, count_masked=True) == want  # no dependence on the context
    assert flops_per_token(dataclasses.replace(cfg, tie_embeddings=False), 16) == want


@pytest.mark.parametrize("tie", [True, False])
def test_causal(tie):
    cfg, params = model(tie)
    a_BL = tokens(1)
    t = 9
    b_BL = a_BL.at[:, t].set((a_BL[:, t] + 7) % VOCAB)
    la, lb = forward(params, a_BL, cfg=cfg), forward(params, b_BL, cfg=cfg)
    assert la.shape == (2, 16, VOCAB) and la.dtype == jnp.float32
    np.testing.assert_array_equal(la[:, :t], lb[:, :t])
    assert np.abs(la[:, t:] - lb[:, t:]).max() > 1e-4  # token t changes its own and later logits


def test_cache_layout():
    cfg, _ = model()
    cache = init_cache(cfg, 3)
    assert cache["cache_index"].shape == () and cache["cache_index"].dtype == jnp.int32
    assert set(cache) == {"cache_index", "layer_0", "layer_1"}
    for i in range(cfg.num_layers):
        for name in ("c", "h"):
            x = cache[f"layer_{i}"][name]
            assert x.shape == (3, cfg.width) and x.dtype == jnp.float32 and not np.any(x)
    # init(decode=True) creates an empty cache, whatever the tokens, and writes nothing to it.
    made = LSTMLM(cfg).init(jax.random.key(1), tokens(2, (3, 5)), decode=True)["cache"]
    assert int(made["cache_index"]) == 0
    assert all(not np.any(x) for x in jax.tree.leaves(made))


@pytest.mark.parametrize("tie", [True, False])
def test_decode_matches_forward(tie):
    cfg, params = model(tie)
    toks_BL = tokens(3, (2, 12))
    full_BLV = forward(params, toks_BL, cfg=cfg)
    prefix = 5
    logits_BTV, cache = decode_step(params, init_cache(cfg, 2), toks_BL[:, :prefix], cfg=cfg)
    steps = [logits_BTV]
    for t in range(prefix, 12):
        logits_BTV, cache = decode_step(params, cache, toks_BL[:, t:t + 1], cfg=cfg)
        steps.append(logits_BTV)
    assert int(cache["cache_index"]) == 12
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full_BLV, atol=1e-5)
    # The cached carry is the last layer's state: its h is the last hidden state of the forward.
    hidden_BLD = forward(params, toks_BL, cfg=cfg, logits=False)
    np.testing.assert_allclose(cache[f"layer_{cfg.num_layers - 1}"]["h"], hidden_BLD[:, -1], atol=1e-6)


def test_dropout():
    cfg = tiny(dropout=0.3)
    params = init_params(cfg, jax.random.key(0))
    x_BL = tokens(4)
    e1 = forward(params, x_BL, jax.random.key(1), cfg=cfg)
    e2 = forward(params, x_BL, jax.random.key(2), cfg=cfg)
    np.testing.assert_array_equal(e1, e2)  # eval: no dropout, whatever the rng
    np.testing.assert_array_equal(e1, forward(params, x_BL, cfg=cfg))
    t1 = forward(params, x_BL, jax.random.key(1), cfg=cfg, train=True)
    t2 = forward(params, x_BL, jax.random.key(2), cfg=cfg, train=True)
    np.testing.assert_array_equal(t1, forward(params, x_BL, jax.random.key(1), cfg=cfg, train=True))
    assert np.abs(t1 - t2).max() > 1e-4 and np.abs(t1 - e1).max() > 1e-4


@pytest.mark.parametrize("tie", [True, False])
def test_hidden_states_project_to_logits(tie):
    cfg, params = model(tie)
    x_BL = tokens(5)
    hidden_BLD = forward(params, x_BL, cfg=cfg, logits=False)
    assert hidden_BLD.shape == (2, 16, cfg.width)
    logits_BLV = jnp.einsum("bld,vd->blv", hidden_BLD, unembedding_VD(cfg, params))
    np.testing.assert_allclose(logits_BLV, forward(params, x_BL, cfg=cfg), atol=1e-5)


def test_bfloat16_close_to_float32():
    cfg32, params = model()
    cfg16 = dataclasses.replace(cfg32, dtype="bfloat16")
    x_BL, moved = tokens(6), trained_like(params, embedding_scale=100)
    assert_bfloat16_close(forward(moved, x_BL, cfg=cfg32), forward(moved, x_BL, cfg=cfg16))
    cache = init_cache(cfg16, 2)  # the carry stays float32 through a bfloat16 decode step
    _, cache = decode_step(params, cache, x_BL[:, :3], cfg=cfg16)
    assert all(x.dtype == jnp.float32 for k, x in jax.tree_util.tree_leaves_with_path(cache)
               if "cache_index" not in jax.tree_util.keystr(k))


@pytest.mark.parametrize("tie", [True, False])
def test_init_and_forward_under_mesh(tie):
    cfg = tiny(tie_embeddings=tie, width=16)
    mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    init = jax.jit(lambda rng: LSTMLM(cfg).init(rng, jnp.zeros((1, 8), jnp.int32))["params"])
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        boxed = jax.eval_shape(init, jax.random.key(0))
    shardings = sharding.tree_shardings(mesh, boxed)  # outside the rules context, as make_setup
    flat = {jax.tree_util.keystr(k): s.spec for k, s in jax.tree_util.tree_leaves_with_path(shardings)}
    P = jax.sharding.PartitionSpec
    assert flat["['layer_0']['rnn']['cell']['ii']['kernel']"] == P("fsdp", "tensor")
    assert flat["['layer_1']['rnn']['cell']['ho']['kernel']"] == P("fsdp", "tensor")
    assert flat["['layer_1']['rnn']['cell']['ho']['bias']"] == P("tensor")
    assert flat["['embedding']"] == P("tensor", None)
    if not tie:
        assert flat["['unembed']['kernel']"] == P("fsdp", "tensor")
    # Every parameter carries logical names, one per dimension.
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert all(isinstance(x, nn.LogicallyPartitioned) and len(x.names) == x.value.ndim for x in leaves)
    # The sharded model computes what the unsharded one does (batch over data x fsdp).
    x_BL = tokens(7, (8, 16))
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        params = jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=shardings)(jax.random.key(0))
        sharded = jax.jit(lambda p, x: LSTMLM(cfg).apply({"params": p}, x))(
            params, jax.device_put(x_BL, sharding.batch_sharding(mesh)))
    np.testing.assert_allclose(sharded, forward(jax.device_get(params), x_BL, cfg=cfg), atol=1e-6)


def test_unroll_is_the_same_function():
    cfg, params = model()
    x = tokens(3)
    out = forward(params, x, cfg=cfg)
    for unroll in (1, 8):  # 0 (auto) resolves to 1 on CPU
        np.testing.assert_allclose(forward(params, x, cfg=dataclasses.replace(cfg, unroll=unroll)), out,
                                   rtol=1e-5, atol=1e-6)
