"""The recurrent families (lstm, gru, rnn: one module, `lmjax.models.recurrent`, three cells)."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.config import RECURRENT, MeshConfig, ModelConfig
from lmjax.models import init_cache, init_params, unembedding_VD
from lmjax.models.recurrent import CELLS, RecurrentLM, flops_per_token, param_count
from lmjax.training import sharding
from lm_testing import assert_bfloat16_close, decode_step, forward, random_tokens, trained_like

VOCAB, MAX_LEN = 50, 32
# family -> (its cell's parameters: input kernels without bias, with bias; recurrent likewise)
LAYOUTS = {
    "lstm": ({"ii", "if", "ig", "io"}, set(), set(), {"hi", "hf", "hg", "ho"}),
    "gru": (set(), {"ir", "iz", "in"}, {"hr", "hz"}, {"hn"}),
    "rnn": (set(), {"i"}, {"h"}, set()),
}
PER_LAYER = {"lstm": lambda D: 8 * D * D + 4 * D, "gru": lambda D: 6 * D * D + 4 * D,
             "rnn": lambda D: 2 * D * D + D}  # the docstrings' formulas, written out
STATE = {"lstm": ("c", "h"), "gru": ("h",), "rnn": ("h",)}
# every cell, and both heads (tied, untied) on one: the head does not depend on the cell
CELLS_AND_HEADS = [("lstm", True), ("lstm", False), ("gru", False), ("rnn", True)]


def tiny(family="lstm", **kw) -> ModelConfig:
    base = dict(family=family, vocab_size=VOCAB, max_len=MAX_LEN, num_layers=2, width=32)
    return ModelConfig(**{**base, **kw})


def tokens(seed, shape=(2, 16)):
    return random_tokens(seed, shape, VOCAB)


@functools.cache
def model(family="lstm", tie=True):
    cfg = tiny(family, tie_embeddings=tie)
    return cfg, init_params(cfg, jax.random.key(0))


def test_every_recurrent_family_has_a_cell():
    assert set(CELLS) == set(RECURRENT) == set(LAYOUTS)


@pytest.mark.parametrize("family", RECURRENT)
@pytest.mark.parametrize("kw", [{}, dict(tie_embeddings=False), dict(num_layers=1),
                                dict(num_layers=1, tie_embeddings=False, width=24)])
def test_param_count_matches_tree(family, kw):
    cfg = tiny(family, **kw)
    params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    total = sum(x.size for x in jax.tree.leaves(params))
    assert param_count(cfg) == total
    embedding = params["embedding"].size + (0 if cfg.tie_embeddings else params["unembed"]["kernel"].size)
    assert param_count(cfg, embeddings=False) == total - embedding
    assert param_count(cfg, embeddings=False) == cfg.num_layers * PER_LAYER[family](cfg.width)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    cell = params["layer_0"]["rnn"]["cell"]
    in_plain, in_biased, rec_plain, rec_biased = LAYOUTS[family]
    assert set(cell) == in_plain | in_biased | rec_plain | rec_biased
    assert all(set(cell[g]) == {"kernel"} for g in in_plain | rec_plain)
    assert all(set(cell[g]) == {"kernel", "bias"} for g in in_biased | rec_biased)


@pytest.mark.parametrize("family, gates", [("lstm", 4), ("gru", 3), ("rnn", 1)])
def test_flops_per_token(family, gates):
    cfg = tiny(family, num_layers=3, width=64)
    want = 3.0 * (2 * 3 * 2 * gates * 64 * 64 + 2 * VOCAB * 64)
    assert flops_per_token(cfg, 16) == want
    assert flops_per_token(cfg, 1024, count_masked=True) == want  # no dependence on the context
    assert flops_per_token(dataclasses.replace(cfg, tie_embeddings=False), 16) == want


@pytest.mark.parametrize("family, tie", CELLS_AND_HEADS)
def test_causal(family, tie):
    cfg, params = model(family, tie)
    a_BL = tokens(1)
    t = 9
    b_BL = a_BL.at[:, t].set((a_BL[:, t] + 7) % VOCAB)
    la, lb = forward(params, a_BL, cfg=cfg), forward(params, b_BL, cfg=cfg)
    assert la.shape == (2, 16, VOCAB) and la.dtype == jnp.float32
    np.testing.assert_array_equal(la[:, :t], lb[:, :t])
    assert np.abs(la[:, t:] - lb[:, t:]).max() > 1e-4  # token t changes its own and later logits


@pytest.mark.parametrize("family", RECURRENT)
def test_cache_layout(family):
    cfg, _ = model(family)
    cache = init_cache(cfg, 3)
    assert cache["cache_index"].shape == () and cache["cache_index"].dtype == jnp.int32
    assert set(cache) == {"cache_index", "layer_0", "layer_1"}
    for i in range(cfg.num_layers):
        assert set(cache[f"layer_{i}"]) == set(STATE[family])
        for name in STATE[family]:
            x = cache[f"layer_{i}"][name]
            assert x.shape == (3, cfg.width) and x.dtype == jnp.float32 and not np.any(x)
    # init(decode=True) creates an empty cache, whatever the tokens, and writes nothing to it.
    made = RecurrentLM(cfg).init(jax.random.key(1), tokens(2, (3, 5)), decode=True)["cache"]
    assert int(made["cache_index"]) == 0
    assert all(not np.any(x) for x in jax.tree.leaves(made))


@pytest.mark.parametrize("family, tie", CELLS_AND_HEADS)
def test_decode_matches_forward(family, tie):
    cfg, params = model(family, tie)
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


def test_dropout():  # the dropout sits between the layers, the same for every cell
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
    cfg, params = model("lstm", tie)
    x_BL = tokens(5)
    hidden_BLD = forward(params, x_BL, cfg=cfg, logits=False)
    assert hidden_BLD.shape == (2, 16, cfg.width)
    logits_BLV = jnp.einsum("bld,vd->blv", hidden_BLD, unembedding_VD(cfg, params))
    np.testing.assert_allclose(logits_BLV, forward(params, x_BL, cfg=cfg), atol=1e-5)


@pytest.mark.parametrize("family", RECURRENT)
def test_bfloat16_close_to_float32(family):
    cfg32, params = model(family)
    cfg16 = dataclasses.replace(cfg32, dtype="bfloat16")
    x_BL, moved = tokens(6), trained_like(params, embedding_scale=100)
    # The Elman cell carries its state in the compute dtype (a float32 carry fails in its scan), so
    # bfloat16 rounding compounds over the steps: 15.5% measured on a likely probability, against
    # 4% (lstm) and 8% (gru), whose carries stay float32.
    assert_bfloat16_close(forward(moved, x_BL, cfg=cfg32), forward(moved, x_BL, cfg=cfg16),
                          prob_rtol=0.2 if family == "rnn" else 0.1)
    cache = init_cache(cfg16, 2)  # the carry stays float32 through a bfloat16 decode step
    _, cache = decode_step(params, cache, x_BL[:, :3], cfg=cfg16)
    assert all(x.dtype == jnp.float32 for k, x in jax.tree_util.tree_leaves_with_path(cache)
               if "cache_index" not in jax.tree_util.keystr(k))


@pytest.mark.parametrize("family, tie", CELLS_AND_HEADS)
def test_init_and_forward_under_mesh(family, tie):
    cfg = tiny(family, tie_embeddings=tie, width=16)
    mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    init = jax.jit(lambda rng: RecurrentLM(cfg).init(rng, jnp.zeros((1, 8), jnp.int32))["params"])
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        boxed = jax.eval_shape(init, jax.random.key(0))
    shardings = sharding.tree_shardings(mesh, boxed)  # outside the rules context, as make_setup
    flat = {jax.tree_util.keystr(k): s.spec for k, s in jax.tree_util.tree_leaves_with_path(shardings)}
    P = jax.sharding.PartitionSpec
    cell = {k: spec for k, spec in flat.items() if k.startswith("['layer_1']['rnn']['cell']")}
    assert len(cell) == sum(map(len, LAYOUTS[family])) + len(LAYOUTS[family][1] | LAYOUTS[family][3])
    for k, spec in cell.items():  # every kernel [D, D] as ('embed', 'mlp'), every bias as 'mlp'
        assert spec == (P("fsdp", "tensor") if k.endswith("['kernel']") else P("tensor")), k
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
        sharded = jax.jit(lambda p, x: RecurrentLM(cfg).apply({"params": p}, x))(
            params, jax.device_put(x_BL, sharding.batch_sharding(mesh)))
    np.testing.assert_allclose(sharded, forward(jax.device_get(params), x_BL, cfg=cfg), atol=1e-6)


def test_unroll_is_the_same_function():
    cfg, params = model()
    x = tokens(3)
    out = forward(params, x, cfg=cfg)
    for unroll in (1, 8):  # 0 (auto) resolves to 1 on CPU
        np.testing.assert_allclose(forward(params, x, cfg=dataclasses.replace(cfg, unroll=unroll)), out,
                                   rtol=1e-5, atol=1e-6)
