"""flops_per_token per attention variant: hand-checked values, the shapes of the formulas, and a
cross-check against XLA's cost analysis of the compiled training step (forward + backward)."""

import functools

import jax
import jax.numpy as jnp
import pytest

from lmjax.models import ModelConfig, Transformer, attention_flops_per_token, flops_per_token, init_params

VARIANTS = {
    "mha": dict(attention="mha"),
    "mqa": dict(attention="mqa"),
    "gqa": dict(attention="gqa", num_kv_heads=2),
    "mha_window": dict(attention="mha", window=8),
    "gqa_window": dict(attention="gqa", num_kv_heads=2, window=8),
    "linear": dict(attention="linear", linear_chunk=12),  # 12 does not divide 32: a padded chunk
    "swiglu_bias": dict(attention="gqa", num_kv_heads=2, mlp="swiglu", mlp_width=320, bias=True),
}
B, T = 2, 32
# Matmul-dominated: width 128 >> seq 32, so the elementwise work XLA also counts (norms, GELU,
# softmax, masks, the loss) stays a few percent of the total.
BASE = dict(vocab_size=64, max_len=T, num_layers=2, num_heads=4, width=128)
TOLERANCE = 0.04  # measured 1.6-2.3% over: elementwise FLOPs that the formula leaves out


@functools.cache  # mha and mqa are compiled once for two tests (linear: its few chunks are unrolled,
# attention.LINEAR_UNROLL_CHUNKS, so the cost analysis counts every chunk)
def xla_flops(cfg, batch=B, seq=T) -> float:
    """FLOPs of the compiled value_and_grad of the LM loss, by XLA's cost analysis."""
    def loss(params, tokens_BL):
        logits = Transformer(cfg).apply({"params": params}, tokens_BL[:, :-1])
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, tokens_BL[:, 1:, None], -1).mean()

    params = jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0))
    tokens = jax.ShapeDtypeStruct((batch, seq + 1), jnp.int32)
    cost = jax.jit(jax.value_and_grad(loss)).lower(params, tokens).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):  # one dict per device program in some versions
        cost = cost[0]
    return float(cost["flops"])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_formula_matches_xla_cost_analysis(variant):
    """XLA computes the full masked score matrix (and the masked C x C blocks and padding of linear
    attention), so the comparison is with count_masked=True; the formula must account for every
    matmul XLA sees, and XLA may exceed it only by the elementwise work (TOLERANCE)."""
    cfg = ModelConfig(**BASE, **VARIANTS[variant])
    ratio = xla_flops(cfg) / (flops_per_token(cfg, T, count_masked=True) * B * T)
    print(f"{variant}: XLA / formula(count_masked) = {ratio:.4f}")
    assert 1.0 <= ratio <= 1.0 + TOLERANCE


def test_kv_heads_difference_matches_xla():
    """The difference between mha and mqa is k/v projections only: 3 * 2 * 2*D*(H-1)*E per token
    and layer. XLA's difference agrees to 0.5% (softmax and masks are the same in both)."""
    mha, mqa = (ModelConfig(**BASE, attention=a) for a in ("mha", "mqa"))
    want = (flops_per_token(mha, T) - flops_per_token(mqa, T)) * B * T
    assert want == 3 * 2 * 2 * 128 * 3 * 32 * 2 * B * T
    assert xla_flops(mha) - xla_flops(mqa) == pytest.approx(want, rel=0.005)


def test_hand_counted_values():
    H, E, L, V, D = 4, 32, 2, 64, 128
    dense = 3 * (2 * L * 12 * D * D + 2 * V * D)  # 4 D^2 attention + 8 D^2 MLP per layer
    cfg = ModelConfig(**BASE)
    # Causal: mean keys per query (T+1)/2 = 16.5; QK^T and PV: 2 * 2 * H * E each key.
    assert flops_per_token(cfg, 32) == dense + 3 * L * 4 * H * E * 16.5
    assert flops_per_token(cfg, 32, count_masked=True) == dense + 3 * L * 4 * H * E * 32
    # Window 8 over 32 tokens: keys 1..8 for t < 8, then 8: (36 + 24 * 8) / 32 = 7.125.
    win = ModelConfig(**BASE, window=8)
    assert flops_per_token(win, 32) == dense + 3 * L * 4 * H * E * 7.125
    assert flops_per_token(win, 32, count_masked=True) == flops_per_token(cfg, 32, count_masked=True)
    # Linear, chunk 8 dividing 32: state update + inter-chunk output (2 E^2 each per head) +
    # intra-chunk scores and values over (8+1)/2 keys.
    lin = ModelConfig(**BASE, attention="linear", linear_chunk=8)
    per_layer = 2 * H * E * E + 2 * H * E * E + 4 * H * E * 4.5
    assert flops_per_token(lin, 32) == dense + 3 * L * per_layer
    # Chunk 12 over 32 tokens: chunks of 12, 12, 8 keys; masked: 3 chunks of 12 = 36 tokens' work.
    lin12 = ModelConfig(**BASE, attention="linear", linear_chunk=12)
    intra = (2 * 78 + 36) / 32  # 1 + ... + 12 twice, 1 + ... + 8 once
    assert attention_flops_per_token(lin12, 32) == pytest.approx(4 * H * E * E + 4 * H * E * intra)
    assert attention_flops_per_token(lin12, 32, count_masked=True) == pytest.approx(
        (4 * H * E * E + 4 * H * E * 12) * 36 / 32)
    # GQA: k and v shrink with the kv heads (2 of 4); the attention core does not.
    gqa = ModelConfig(**BASE, attention="gqa", num_kv_heads=2)
    assert flops_per_token(cfg, 32) - flops_per_token(gqa, 32) == 3 * L * 2 * 2 * D * 2 * E


def test_formula_shapes():
    full = ModelConfig(**BASE)  # (max_len does not enter the formula)
    win = ModelConfig(**BASE, window=128)
    lin = ModelConfig(**BASE, attention="linear", linear_chunk=64)
    for T_ in (256, 1024, 4096):
        assert flops_per_token(win, T_) < flops_per_token(full, T_)
        # Total linear-attention FLOPs grow linearly with the length: per token it is constant.
        assert attention_flops_per_token(lin, T_) == attention_flops_per_token(lin, 256)
        assert flops_per_token(lin, T_) == flops_per_token(lin, 256)
    # Softmax attention per token grows with the length, a window's saturates at the window.
    assert attention_flops_per_token(full, 4096) == pytest.approx(
        attention_flops_per_token(full, 1024) * 4097 / 1025)
    assert attention_flops_per_token(win, 4096) < attention_flops_per_token(win, 256 * 256) \
        <= 4 * 4 * 32 * 128
    assert attention_flops_per_token(win, 100) == attention_flops_per_token(full, 100)  # W >= T
