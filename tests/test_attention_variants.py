"""Every attention variant x position scheme: causality, KV-cache decoding equals the full forward
pass, exact parameter count, and agreement with a naive per-head reference written here."""

import dataclasses
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.errors import ConfigError
from lmjax.models import (
    ModelConfig,
    Transformer,
    alibi_slopes,
    generate,
    init_cache,
    init_params,
    linear_attention_chunked,
    param_count,
    softmax_attention,
)
from lmjax.models import attention as attention_module
from lmjax.models.transformer import SINUSOID_SCALE

VOCAB, MAX_LEN, SEQ = 50, 40, 17
CHUNK, WINDOW = 5, 5  # neither divides SEQ: the last linear chunk is padded

VARIANTS = {
    "mha": dict(attention="mha"),
    "mqa": dict(attention="mqa"),
    "gqa": dict(attention="gqa", num_kv_heads=2),
    "mha_window": dict(attention="mha", window=WINDOW),
    "gqa_window": dict(attention="gqa", num_kv_heads=2, window=WINDOW),
    "linear": dict(attention="linear", linear_chunk=CHUNK),
    "linear_gqa": dict(attention="linear", num_kv_heads=2, linear_chunk=CHUNK),
}
# Each position scheme with softmax attention at least once; rope and none with linear attention.
# Some cases also switch norm / tying so the parameter formula sees every branch.
CASES = [
    ("mha", "rope", {}), ("mha", "alibi", {}), ("mqa", "learned", dict(tie_embeddings=False)),
    ("gqa", "sinusoidal", {}), ("gqa", "none", dict(norm="layernorm")),
    ("mha_window", "alibi", {}), ("mha_window", "rope", {}), ("gqa_window", "learned", {}),
    ("linear", "rope", {}), ("linear", "none", {}),
    ("linear_gqa", "sinusoidal", dict(norm="layernorm", tie_embeddings=False)),
]
IDS = [f"{v}-{p}" + "".join(f"-{k}={x}" for k, x in extra.items()) for v, p, extra in CASES]


def make_cfg(variant, positions, extra) -> ModelConfig:
    return ModelConfig(vocab_size=VOCAB, max_len=MAX_LEN, num_layers=2, num_heads=4, width=32,
                       positions=positions, **VARIANTS[variant], **extra)


@functools.cache
def make_model(case):
    cfg = make_cfg(*CASES[case])
    params = init_params(cfg, jax.random.key(0))
    # 5x the init scale, so attention scores are O(1) and masks, biases and rotations matter.
    return cfg, jax.tree.map(lambda x: x * 5.0 if x.ndim == 2 else x, params)


@pytest.fixture(params=range(len(CASES)), ids=IDS)
def model(request):
    return make_model(request.param)


from test_decode import decode_step, forward  # noqa: E402  (the same jitted helpers)


def tokens(seed, shape=(2, SEQ)):
    return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, shape, dtype=np.int32))


def normal(rng, shape):
    return jnp.asarray(rng.standard_normal(shape, dtype=np.float32))


# ----------------------------------------------------------------------------- naive reference

def naive_slopes(H):
    # Press et al.: 2^(-8h/H) for a power of two; else the nearest smaller power of two's slopes,
    # then every other slope of twice that many heads.
    pow2 = 2 ** int(math.log2(H))
    base = [2 ** (-8 * (h + 1) / pow2) for h in range(pow2)]
    extra = [2 ** (-8 * (h + 1) / (2 * pow2)) for h in range(0, 2 * pow2, 2)][:H - pow2]
    return base + extra


def naive_attention_core(q, k, v, cfg, q_offset=0, kv_length=None):
    """out[b, t, h] by explicit loops: softmax over the allowed keys (with ALiBi's bias), or the
    O(L^2) causal linear-attention sum with phi = elu + 1. float64."""
    B, T, H, E = q.shape
    S, K = k.shape[1], k.shape[2]
    kv_length = q_offset + T if kv_length is None else kv_length
    phi = lambda x: np.where(x > 0, x + 1.0, np.exp(x))  # noqa: E731  elu(x) + 1
    slopes = naive_slopes(H)
    out = np.zeros((B, T, H, E))
    for b, h, t in itertools.product(range(B), range(H), range(T)):
        g = h // (H // K)
        pos = q_offset + t
        keys = [s for s in range(min(S, kv_length)) if s <= pos
                and (cfg.window == 0 or pos - s < cfg.window)]
        if cfg.attention == "linear":
            w = np.array([phi(q[b, t, h]) @ phi(k[b, s, g]) for s in keys])
        else:
            scores = np.array([q[b, t, h] @ k[b, s, g] / np.sqrt(E) for s in keys])
            if cfg.positions == "alibi":
                scores -= slopes[h] * np.array([pos - s for s in keys])
            w = np.exp(scores - scores.max())
        out[b, t, h] = sum(wi * v[b, s, g] for wi, s in zip(w, keys)) / w.sum()
    return out


def naive_norm(x, p, kind):
    if kind == "rmsnorm":
        return x / np.sqrt(np.mean(x**2, -1, keepdims=True) + 1e-6) * p["scale"]
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def naive_rope(x):
    """Rotate pairs (i, i + E/2) of x [B, L, heads, E] by pos * 10000^(-i / (E/2))."""
    L, E = x.shape[1], x.shape[-1]
    out = x.copy()
    for pos, i in itertools.product(range(L), range(E // 2)):
        a = pos * 10000.0 ** (-i / (E // 2))
        x1, x2 = x[:, pos, :, i], x[:, pos, :, i + E // 2]
        out[:, pos, :, i] = x1 * np.cos(a) - x2 * np.sin(a)
        out[:, pos, :, i + E // 2] = x2 * np.cos(a) + x1 * np.sin(a)
    return out


def naive_forward(cfg, params, tokens_BL):
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    tok = np.asarray(tokens_BL)
    B, L = tok.shape
    D, H, K, E = cfg.width, cfg.num_heads, cfg.kv_heads, cfg.head_dim
    x = p["embedding"][tok]
    if cfg.positions == "learned":
        x = x + p["pos_embedding"][:L]
    if cfg.positions == "sinusoidal":
        pe = np.zeros((L, D))
        for pos, i in itertools.product(range(L), range(D // 2)):
            pe[pos, 2 * i] = np.sin(pos / 10000 ** (2 * i / D))
            pe[pos, 2 * i + 1] = np.cos(pos / 10000 ** (2 * i / D))
        x = x + SINUSOID_SCALE * pe
    for i in range(cfg.num_layers):
        blk = p[f"block_{i}"]
        a = blk["attn"]
        h = naive_norm(x, blk["attn_norm"], cfg.norm)
        q = (h @ a["query"]["kernel"]).reshape(B, L, H, E)
        k = (h @ a["key"]["kernel"]).reshape(B, L, K, E)
        v = (h @ a["value"]["kernel"]).reshape(B, L, K, E)
        if cfg.positions == "rope":
            q, k = naive_rope(q), naive_rope(k)
        o = naive_attention_core(q, k, v, cfg)
        x = x + o.reshape(B, L, H * E) @ a["out"]["kernel"]
        h = naive_norm(x, blk["mlp_norm"], cfg.norm) @ blk["mlp"]["up"]["kernel"]
        h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))  # GELU, tanh
        x = x + h @ blk["mlp"]["down"]["kernel"]
    x = naive_norm(x, p["final_norm"], cfg.norm)
    return x @ (p["embedding"].T if cfg.tie_embeddings else p["unembed"]["kernel"])


def formula_params(cfg):
    """The parameter count, written out once more: k and v shrink with the kv heads; only learned
    positions have parameters."""
    D, H, K, E, V = cfg.width, cfg.num_heads, cfg.kv_heads, cfg.head_dim, cfg.vocab_size
    norm = D if cfg.norm == "rmsnorm" else 2 * D
    layer = D * H * E + 2 * D * K * E + H * E * D + 2 * D * cfg.mlp_ratio * D + 2 * norm
    n = cfg.num_layers * layer + norm + V * D
    n += MAX_LEN * D if cfg.positions == "learned" else 0
    return n + (0 if cfg.tie_embeddings else D * V)


# ----------------------------------------------------------------------------- per variant

def test_causal(model):
    cfg, params = model
    a_BL = tokens(1)
    t = 9
    b_BL = a_BL.at[:, t + 1:].set((a_BL[:, t + 1:] + 7) % VOCAB)
    la, lb = forward(params, a_BL, cfg=cfg), forward(params, b_BL, cfg=cfg)
    np.testing.assert_allclose(la[:, :t + 1], lb[:, :t + 1], atol=1e-6)
    assert np.abs(la[:, t + 1:] - lb[:, t + 1:]).max() > 1e-3


def test_matches_naive_reference(model):
    cfg, params = model
    x_BL = tokens(2)
    np.testing.assert_allclose(forward(params, x_BL, cfg=cfg), naive_forward(cfg, params, x_BL),
                               atol=2e-5, rtol=1e-4)


def test_cached_decoding_equals_full_forward(model):
    cfg, params = model
    chunks = [7] + [1] * (SEQ - 7)  # a prefill chunk (longer than a linear chunk), then steps
    x_BL = tokens(3)
    full_BLV = forward(params, x_BL, cfg=cfg)
    cache, start, pieces = init_cache(cfg, 2), 0, []
    K, E = cfg.kv_heads, cfg.head_dim
    attn = cache["block_0"]["attn"]
    if cfg.attention == "linear":  # a running state, not keys/values
        assert set(attn) == {"linear_state", "linear_normalizer"}
        assert attn["linear_state"].shape == (2, K, E, E) and attn["linear_normalizer"].shape == (2, K, E)
    else:  # only the kv heads are cached
        assert attn["cached_key"].shape == attn["cached_value"].shape == (2, MAX_LEN, K, E)
    for n in chunks:
        logits_BTV, cache = decode_step(params, cache, x_BL[:, start:start + n], cfg=cfg)
        pieces.append(logits_BTV)
        start += n
    assert int(cache["cache_index"]) == SEQ
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full_BLV, atol=1e-5, rtol=1e-5)


def test_param_count(model):
    cfg, params = model
    assert sum(x.size for x in jax.tree.leaves(params)) == param_count(cfg) == formula_params(cfg)
    attn = params["block_0"]["attn"]
    assert attn["key"]["kernel"].shape == attn["value"]["kernel"].shape == (32, cfg.kv_heads * 8)
    assert ("pos_embedding" in params) == (cfg.positions == "learned")


@pytest.mark.parametrize("case", [IDS.index("mha_window-alibi"), IDS.index("linear-rope")],
                         ids=["mha_window-alibi", "linear-rope"])
def test_greedy_generate_is_consistent(case):
    """generate (prefill, then one token at a time through the cache) picks, at every step, the
    argmax of a full forward pass over what it produced."""
    cfg, params = make_model(case)
    prompt = [3, 1, 4, 1, 5, 9, 2]
    got = generate(cfg, params, [prompt], max_new_tokens=SEQ - len(prompt), temperature=0.0)[0]
    seq_BL = jnp.asarray(np.stack([prompt + list(got)] * 2), jnp.int32)
    argmax_L = np.argmax(forward(params, seq_BL, cfg=cfg)[0], axis=-1)
    np.testing.assert_array_equal(got, argmax_L[len(prompt) - 1:-1])


# ----------------------------------------------------------------------------- kernels

@pytest.mark.parametrize("implementation", ["einsum", "xla", "einsum-blocks"])
@pytest.mark.parametrize("heads,kv_heads,window,positions,q_offset", [
    (4, 4, 0, "none", 0), (4, 1, 0, "alibi", 3), (4, 2, 3, "none", 5), (6, 3, 4, "alibi", 0),
    (6, 6, 0, "alibi", 2), (4, 2, 2, "alibi", 0),
])
def test_softmax_kernel_matches_naive(implementation, heads, kv_heads, window, positions, q_offset,
                                     ):
    """Both code paths (einsums; jax.nn.dot_product_attention) against the loops above, for a whole
    sequence (q_offset 0: is_causal + local_window_size) and against a partly written cache."""
    B, T, E = 2, 6, 8
    S = T if q_offset == 0 else 16  # a cache of 16 slots with q_offset + T written
    attention = "mha" if kv_heads == heads else "mqa" if kv_heads == 1 else "gqa"
    cfg = ModelConfig(vocab_size=VOCAB, max_len=16, num_heads=heads, width=heads * E,
                      attention=attention, num_kv_heads=kv_heads if attention == "gqa" else 0,
                      window=window, positions=positions)
    rng = np.random.default_rng(0)
    q = normal(rng, (B, T, heads, E))
    k, v = normal(rng, (B, S, kv_heads, E)), normal(rng, (B, S, kv_heads, E))
    block_rows = None
    if implementation == "einsum-blocks":  # causal blocks of 2 query rows (3 blocks when whole)
        block_rows, implementation = 2, "einsum"
    out = jax.jit(functools.partial(
        softmax_attention, q_offset=q_offset, kv_length=q_offset + T, window=window,
        alibi=positions == "alibi", implementation=implementation, block_rows=block_rows))(q, k, v)
    want = naive_attention_core(*map(np.asarray, (q, k, v)), cfg, q_offset=q_offset)
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_causal_blocks_split_only_whole_long_sequences():
    blocks = attention_module.causal_blocks
    assert blocks(64, 64, q_offset=0, kv_length=64) == [(0, 64, 64)]
    assert blocks(256, 256, q_offset=0, kv_length=256) == [(0, 128, 128), (128, 256, 256)]
    assert blocks(1000, 1000, q_offset=0, kv_length=1000) == [
        (0, 250, 250), (250, 500, 500), (500, 750, 750), (750, 1000, 1000)]
    assert blocks(256, 512, q_offset=0, kv_length=256) == [(0, 256, 512)]  # against a cache
    assert blocks(256, 256, q_offset=jnp.int32(0), kv_length=256) == [(0, 256, 256)]  # traced


def test_causal_blocks_equal_one_block_with_gradients():
    """The default split at T=256 (2 blocks) against the unsplit core (grouped-query, ALiBi):
    outputs and gradients."""
    B, T, H, K, E = 2, 256, 4, 2, 8
    rng = np.random.default_rng(1)
    q, k, v = normal(rng, (B, T, H, E)), normal(rng, (B, T, K, E)), normal(rng, (B, T, K, E))

    def loss_and_grads(max_blocks=None):
        loss = lambda q, k, v: jnp.sum(jnp.sin(softmax_attention(  # noqa: E731
            q, k, v, q_offset=0, kv_length=T, alibi=True, max_blocks=max_blocks)))
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)

    assert len(attention_module.causal_blocks(T, T, q_offset=0, kv_length=T)) == 2
    blocked = loss_and_grads()
    whole = loss_and_grads(max_blocks=1)
    for a, b in zip(jax.tree.leaves(blocked), jax.tree.leaves(whole)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [3, 16])
def test_linear_kernel_chunks_and_state(chunk):
    """Any chunk size (dividing T or not, larger than T) gives the naive O(L^2) result, and
    continuing from the state of a prefix equals running over the whole sequence."""
    B, T, H, K, E = 2, 13, 4, 2, 8
    cfg = ModelConfig(vocab_size=VOCAB, max_len=16, num_heads=H, width=H * E, attention="linear",
                      num_kv_heads=K, positions="none")
    rng = np.random.default_rng(1)
    q, k, v = normal(rng, (B, T, H, E)), normal(rng, (B, T, K, E)), normal(rng, (B, T, K, E))
    run = jax.jit(functools.partial(linear_attention_chunked, chunk=chunk))
    out, (S, z) = run(q, k, v)
    np.testing.assert_allclose(out, naive_attention_core(*map(np.asarray, (q, k, v)), cfg), atol=1e-5)
    assert S.dtype == z.dtype == jnp.float32 and S.shape == (B, K, E, E)
    head, (S1, z1) = run(q[:, :6], k[:, :6], v[:, :6])
    tail, (S2, z2) = run(q[:, 6:], k[:, 6:], v[:, 6:], (S1, z1))
    np.testing.assert_allclose(np.concatenate([head, tail], 1), out, atol=1e-5)
    np.testing.assert_allclose(S2, S, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z2, z, rtol=1e-5, atol=1e-5)


def test_alibi_slopes():
    assert alibi_slopes(4) == [2**-2, 2**-4, 2**-6, 2**-8]
    assert alibi_slopes(8) == [2.0**-i for i in range(1, 9)]
    # 6 heads: the 4 slopes of 4 heads, then slopes 1 and 3 of 8 heads (2^-1, 2^-3).
    assert alibi_slopes(6) == [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]
    assert alibi_slopes(6) == naive_slopes(6)


def test_linear_attention_memory_is_linear_in_length():
    """No T x T array anywhere in the compiled forward pass: the largest intermediate grows
    linearly with the sequence length."""
    def biggest(T):
        cfg = ModelConfig(vocab_size=VOCAB, max_len=T, num_layers=1, num_heads=2, width=16,
                          attention="linear", linear_chunk=8, positions="none")
        params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
        x = jax.ShapeDtypeStruct((1, T), jnp.int32)
        jaxpr = jax.make_jaxpr(lambda p, t: Transformer(cfg).apply({"params": p}, t))(params, x)
        sizes = []

        def walk(jpr):
            for eqn in jpr.eqns:
                sizes.extend(int(np.prod(o.aval.shape)) for o in eqn.outvars if hasattr(o.aval, "shape"))
                for val in eqn.params.values():
                    for sub in val if isinstance(val, (list, tuple)) else [val]:
                        if isinstance(sub, jax.extend.core.ClosedJaxpr):
                            walk(sub.jaxpr)
                        elif isinstance(sub, jax.extend.core.Jaxpr):
                            walk(sub)
        walk(jaxpr.jaxpr)
        return max(sizes)
    small, big = biggest(256), biggest(1024)
    assert big <= 4.5 * small  # linear (4x the tokens), not quadratic (16x)


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("kw,match", [
    (dict(attention="mha", num_kv_heads=2), "attention='mha' .* set num_kv_heads=0 or use attention='gqa'"),
    (dict(attention="mqa", num_kv_heads=2), "attention='mqa' has one kv head"),
    (dict(attention="gqa"), "attention='gqa' needs 1 <= num_kv_heads < num_heads=4"),
    (dict(attention="gqa", num_kv_heads=4), "use attention='mha'"),
    (dict(attention="gqa", num_kv_heads=3), "num_kv_heads=3 does not divide config.model.num_heads=4"),
    (dict(attention="linear", window=4), "attention='linear' has no window"),
    (dict(attention="linear", positions="alibi"), "positions='alibi' is a softmax bias"),
    (dict(attention="linear", linear_chunk=0), "linear_chunk must be positive"),
    (dict(positions="absolute"), "positions='absolute' is not one of"),
])
def test_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(vocab_size=VOCAB, max_len=MAX_LEN, num_heads=4, width=32, **kw)


def test_config_accepts():
    base = dict(vocab_size=VOCAB, max_len=MAX_LEN, num_heads=4, width=32)
    assert ModelConfig(**base, attention="mqa").kv_heads == 1
    assert ModelConfig(**base, attention="mqa", num_kv_heads=1).kv_heads == 1
    assert ModelConfig(**base, attention="gqa", num_kv_heads=1).kv_heads == 1
    assert ModelConfig(**base, attention="mha", num_kv_heads=4).kv_heads == 4
    assert ModelConfig(**base, attention="linear", positions="rope").kv_heads == 4
    cfg = ModelConfig(**base, attention="gqa", num_kv_heads=2, window=8, positions="alibi")
    assert dataclasses.replace(cfg, window=0).kv_heads == 2
