import dataclasses
import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lmjax.errors import ConfigError, LmjaxError
from lmjax.models import (
    ModelConfig,
    Transformer,
    attend,
    flops_per_token,
    init_params,
    param_count,
)
from lm_testing import assert_bfloat16_close, trained_like


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=50, max_len=32, num_layers=2, num_heads=4, width=32)
    return ModelConfig(**{**base, **kw})


@functools.partial(jax.jit, static_argnames=("cfg", "train"))
def forward(params, tokens_BL, rng=None, *, cfg, train=False):
    rngs = {"dropout": rng} if rng is not None else None
    return Transformer(cfg).apply({"params": params}, tokens_BL, train=train, rngs=rngs)


def tokens(seed, shape=(2, 16), vocab=50):
    return jax.random.randint(jax.random.key(seed), shape, 0, vocab, dtype=jnp.int32)


# Every pair of (positions, norm, tying) values appears in one of these four.
@pytest.mark.parametrize("positions,norm,tie", [("rope", "rmsnorm", True), ("rope", "layernorm", False),
                                                ("learned", "rmsnorm", False),
                                                ("learned", "layernorm", True)])
def test_causal(positions, norm, tie):
    cfg = tiny(positions=positions, norm=norm, tie_embeddings=tie)
    params = init_params(cfg, jax.random.key(0))
    a_BL = tokens(1)
    t = 9
    b_BL = a_BL.at[:, t + 1:].set((a_BL[:, t + 1:] + 7) % cfg.vocab_size)
    la, lb = forward(params, a_BL, cfg=cfg), forward(params, b_BL, cfg=cfg)
    assert la.shape == (2, 16, 50) and la.dtype == jnp.float32
    np.testing.assert_allclose(la[:, :t + 1], lb[:, :t + 1], atol=1e-6)
    assert np.abs(la[:, t + 1:] - lb[:, t + 1:]).max() > 1e-3  # the future does change its own logits


PARAM_CONFIGS = [
    tiny(),
    tiny(tie_embeddings=False),
    tiny(positions="learned"),
    tiny(norm="layernorm", positions="learned", tie_embeddings=False),
    tiny(attention="gqa", num_kv_heads=2, mlp_ratio=2, num_layers=3),
    # the GPT-2 and LLaMA layouts (lmjax/hf): biases everywhere; SwiGLU with an odd hidden width
    tiny(norm="layernorm", positions="learned", bias=True),
    tiny(mlp="swiglu", mlp_width=72, attention="gqa", num_kv_heads=2, tie_embeddings=False),
    tiny(mlp="swiglu", bias=True),
]


def abstract_params(cfg, boxed):
    return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0), boxed=boxed))


@pytest.mark.parametrize("cfg", PARAM_CONFIGS)
def test_param_count_matches_tree(cfg):
    params = abstract_params(cfg, boxed=False)
    total = sum(x.size for x in jax.tree.leaves(params))
    assert param_count(cfg) == total
    embedding = params["embedding"].size
    embedding += params["pos_embedding"].size if cfg.positions == "learned" else 0
    embedding += 0 if cfg.tie_embeddings else params["unembed"]["kernel"].size
    assert param_count(cfg, embeddings=False) == total - embedding
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


ALLOWED_AXES = {
    ("vocab", "embed_vocab"), ("length_pos", "embed_vocab"), ("embed", "heads"),
    ("embed", "kv_heads"), ("heads", "embed"), ("embed", "mlp"), ("mlp", "embed"),
    ("embed", "vocab"), ("norm",), ("heads",), ("kv_heads",), ("embed",), ("mlp",),  # biases
}


@pytest.mark.parametrize("cfg", PARAM_CONFIGS[2:4] + PARAM_CONFIGS[-1:])
def test_logical_axes_on_every_param(cfg):
    boxed = abstract_params(cfg, boxed=True)
    flat = jax.tree_util.tree_flatten_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
    names = {}
    for path, leaf in flat:
        assert isinstance(leaf, nn.LogicallyPartitioned), path
        assert leaf.names in ALLOWED_AXES, (path, leaf.names)
        assert len(leaf.names) == leaf.value.ndim, path
        names[jax.tree_util.keystr(path)] = leaf.names
    assert names["['embedding']"] == ("vocab", "embed_vocab")
    if cfg.positions == "learned":
        assert names["['pos_embedding']"] == ("length_pos", "embed_vocab")
    assert names["['block_0']['attn']['query']['kernel']"] == ("embed", "heads")
    assert names["['block_0']['attn']['value']['kernel']"] == ("embed", "kv_heads")
    assert names["['block_0']['attn']['out']['kernel']"] == ("heads", "embed")
    assert names["['block_0']['mlp']['up']['kernel']"] == ("embed", "mlp")
    assert names["['block_0']['mlp']['down']['kernel']"] == ("mlp", "embed")
    if not cfg.tie_embeddings:
        assert names["['unembed']['kernel']"] == ("embed", "vocab")
    specs = nn.get_partition_spec(boxed)  # what the sharding layer will call
    assert specs["embedding"] == jax.sharding.PartitionSpec("vocab", "embed_vocab")


def test_init_scales():
    cfg = tiny(num_layers=4, width=64)  # residual outputs: 0.02 / sqrt(2 * 4)
    params = init_params(cfg, jax.random.key(0))
    np.testing.assert_allclose(np.std(params["embedding"]), 0.02, rtol=0.1)
    np.testing.assert_allclose(np.std(params["block_0"]["mlp"]["up"]["kernel"]), 0.02, rtol=0.1)
    np.testing.assert_allclose(np.std(params["block_0"]["mlp"]["down"]["kernel"]), 0.02 / 8**0.5, rtol=0.1)
    np.testing.assert_allclose(np.std(params["block_0"]["attn"]["out"]["kernel"]), 0.02 / 8**0.5, rtol=0.15)


def test_bfloat16_close_to_float32():
    cfg32 = tiny(width=64)
    cfg16 = dataclasses.replace(cfg32, dtype="bfloat16")
    params = init_params(cfg16, jax.random.key(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    params = trained_like(params, embedding_scale=5)
    assert_bfloat16_close(forward(params, tokens(1), cfg=cfg32), forward(params, tokens(1), cfg=cfg16))


def test_dropout():
    cfg = tiny(dropout=0.3)
    params = init_params(cfg, jax.random.key(0))
    x = tokens(1)
    eval_a = forward(params, x, jax.random.key(1), cfg=cfg)
    eval_b = forward(params, x, jax.random.key(2), cfg=cfg)
    np.testing.assert_array_equal(eval_a, eval_b)
    np.testing.assert_allclose(eval_a, forward(params, x, cfg=dataclasses.replace(cfg, dropout=0.0)),
                               atol=1e-6)
    train_a = forward(params, x, jax.random.key(1), cfg=cfg, train=True)
    train_a2 = forward(params, x, jax.random.key(1), cfg=cfg, train=True)
    train_b = forward(params, x, jax.random.key(2), cfg=cfg, train=True)
    np.testing.assert_array_equal(train_a, train_a2)
    assert np.abs(train_a - train_b).max() > 1e-3
    assert np.abs(train_a - eval_a).max() > 1e-3


def loss_fn(params, tokens_BL, cfg):
    logits = Transformer(cfg).apply({"params": params}, tokens_BL[:, :-1])
    logp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(logp, tokens_BL[:, 1:, None], -1).mean()


@pytest.mark.parametrize("policy", ["nothing", "dots", "dots_no_batch"])
def test_remat_same_loss_and_grads(policy):
    cfg = tiny(positions="learned")
    cfg_remat = dataclasses.replace(cfg, remat=True, remat_policy=policy)
    params = init_params(cfg, jax.random.key(0))
    assert jax.tree.structure(params) == jax.tree.structure(init_params(cfg_remat, jax.random.key(0)))
    x = tokens(1, (2, 17))
    grad = jax.jit(jax.value_and_grad(loss_fn), static_argnums=2)
    loss, g = grad(params, x, cfg)
    loss_r, g_r = grad(params, x, cfg_remat)
    np.testing.assert_allclose(loss, loss_r, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g, g_r)


def test_remat_policy_needs_remat():
    with pytest.raises(ConfigError, match="remat_policy='dots' applies with remat"):
        tiny(remat_policy="dots")


def stack_layers(params, num_layers):
    """Unrolled params (block_0..block_{N-1}) as the scan_layers=True tree ('blocks', stacked)."""
    out = {k: v for k, v in params.items() if not k.startswith("block_")}
    out["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[f"block_{i}"] for i in range(num_layers)])
    return out


@pytest.mark.parametrize("kw", [dict(), dict(remat=True, norm="layernorm"),
                                dict(attention="linear", positions="learned")])
def test_scan_layers_equals_unrolled(kw):
    cfg = tiny(num_layers=3, **kw)
    cfg_scan = dataclasses.replace(cfg, scan_layers=True)
    params = init_params(cfg, jax.random.key(0))
    scanned = stack_layers(params, cfg.num_layers)
    fresh = init_params(cfg_scan, jax.random.key(0))
    assert jax.tree.map(jnp.shape, fresh) == jax.tree.map(jnp.shape, scanned)
    assert param_count(cfg_scan) == sum(x.size for x in jax.tree.leaves(fresh))
    # Each layer draws its own init: the stacked layers are not copies of one another.
    assert np.abs(fresh["blocks"]["mlp"]["up"]["kernel"][0] - fresh["blocks"]["mlp"]["up"]["kernel"][1]).max() > 0.01
    x = tokens(1, (2, 17))
    grad = jax.jit(jax.value_and_grad(loss_fn), static_argnums=2)
    loss, g = grad(params, x, cfg)
    loss_s, g_s = grad(scanned, x, cfg_scan)
    np.testing.assert_allclose(loss, loss_s, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 stack_layers(g, cfg.num_layers), g_s)


def test_scan_layers_partition_names():
    cfg = tiny(scan_layers=True)
    boxed = Transformer(cfg).init(jax.random.key(0), tokens(0, (1, 8)))["params"]
    specs = nn.get_partition_spec(boxed)
    assert specs["blocks"]["attn"]["query"]["kernel"] == jax.sharding.PartitionSpec("layers", "embed", "heads")
    assert specs["blocks"]["attn_norm"]["scale"] == jax.sharding.PartitionSpec("layers", "norm")


def naive_attention(q, k, v, q_offset, kv_length, window=0):
    q, k, v = map(np.asarray, (q, k, v))
    B, T, H, D = q.shape
    S, K = k.shape[1], k.shape[2]
    out = np.zeros_like(q)
    for b, h, t in itertools.product(range(B), range(H), range(T)):
        kv = h // (H // K)
        pos = q_offset + t
        keys = [s for s in range(S) if s <= pos and s < kv_length and (not window or pos - s < window)]
        scores = np.array([q[b, t, h] @ k[b, s, kv] / np.sqrt(D) for s in keys])
        p = np.exp(scores - scores.max())
        p /= p.sum()
        out[b, t, h] = sum(pi * v[b, s, kv] for pi, s in zip(p, keys))
    return out


@pytest.mark.parametrize("kv_heads,q_offset,window", [(4, 0, 0), (4, 5, 0), (2, 3, 0), (1, 0, 0),
                                                      (4, 2, 3)])
def test_attention_matches_naive(kv_heads, q_offset, window):
    B, T, H, D, S = 2, 4, 4, 8, 12
    attention = {H: "mha", 1: "mqa"}.get(kv_heads, "gqa")
    cfg = tiny(attention=attention, num_kv_heads=kv_heads if attention == "gqa" else 0, window=window)
    assert cfg.kv_heads == kv_heads
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(kq, (B, T, H, D))
    k = jax.random.normal(kk, (B, S, kv_heads, D))
    v = jax.random.normal(kv, (B, S, kv_heads, D))
    kv_length = q_offset + T
    out = jax.jit(attend, static_argnums=0)(cfg, q, k, v, q_offset=q_offset, kv_length=kv_length)
    np.testing.assert_allclose(out, naive_attention(q, k, v, q_offset, kv_length, window),
                               atol=1e-5)


def test_config_from_configdict_and_validation():
    m = ml_collections.ConfigDict(dict(size="", num_layers=3, num_heads=2, num_kv_heads=0,
                                       width=48, positions="learned", norm="layernorm"))
    cfg = ModelConfig.from_config(m, vocab_size=65, max_len=64)
    assert (cfg.num_layers, cfg.width, cfg.head_dim, cfg.kv_heads) == (3, 48, 24, 2)
    assert cfg.positions == "learned" and cfg.vocab_size == 65 and cfg.max_len == 64
    with pytest.raises(ConfigError, match="does not divide"):
        tiny(num_heads=5)
    with pytest.raises(ConfigError, match="attention"):
        tiny(attention="flash")
    with pytest.raises(LmjaxError, match="40 tokens exceed .* 32"):
        cfg = tiny(positions="learned")
        jax.eval_shape(lambda: Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 40), jnp.int32)))


def test_flops_per_token():
    cfg = ModelConfig(vocab_size=65, max_len=64, num_layers=4, num_heads=4, width=128)
    n = 4 * (12 * 128 * 128)  # q, k, v, out: 4 D^2; MLP: 8 D^2
    assert param_count(cfg, embeddings=False) == n + 9 * 128  # plus norm scales
    # Attention: QK^T and PV over (T+1)/2 keys on average, 2 * 2 * 128 FLOPs per key, forward.
    assert flops_per_token(cfg, 64) == 6 * n + 6 * 65 * 128 + 3 * 4 * (2 * 2 * 128 * 65 / 2)
