"""Documents packing on the model and training side: segment ids keep attention within each
document and restart its positions; losses, steps and evaluation score within documents.

The references are documents run alone through the plain (unpacked) path, so a test fails when
the mask, the positions, the target weights or the step's plumbing of segments goes wrong.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lmjax.config import base_config, resolve
from lmjax.data import packing
from lmjax.models import ModelConfig, Transformer, unboxed
from lmjax.training import evaluation, objectives, sharding
from lmjax.training.steps import make_setup

VOCAB = 64


def packed(rows: list[list[int]], row_len: int, seed: int = 0) -> dict:
    """{"tokens", "segments"} int32 [len(rows), row_len]: row b holds documents of the lengths
    rows[b], in order, then padding (token 0, segment 0). Token ids 1.. are random."""
    rng = np.random.default_rng(seed)
    tokens, segments = np.zeros((2, len(rows), row_len), np.int32)
    for b, lengths in enumerate(rows):
        starts = np.concatenate([[0], np.cumsum(lengths)])
        for i, (s, e) in enumerate(zip(starts[:-1], starts[1:]), 1):
            tokens[b, s:e], segments[b, s:e] = rng.integers(1, VOCAB - 1, e - s), i
    return {"tokens": tokens, "segments": segments}


def documents(batch) -> list[tuple[int, int, int]]:
    """(row, start, end) of every document of a packed batch."""
    out = []
    for b, seg in enumerate(np.asarray(batch["segments"])):
        for i in range(1, seg.max() + 1):
            where = np.flatnonzero(seg == i)
            out.append((b, int(where[0]), int(where[-1]) + 1))
    return out


def model_and_params(**overrides):
    cfg = ModelConfig(**{**dict(vocab_size=VOCAB, max_len=64, num_layers=2, num_heads=2, width=16,
                                tie_embeddings=False), **overrides})
    model = Transformer(cfg)
    return model, unboxed(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])


# --- the model ------------------------------------------------------------------------------

@pytest.mark.parametrize("family, overrides", [
    ("decoder", dict(positions="rope")), ("decoder", dict(positions="learned")),
    ("decoder", dict(positions="rope", scan_layers=True, remat=True)),
    ("encoder", dict(positions="rope")), ("encoder", dict(positions="learned")),
], ids=["decoder-rope", "decoder-learned", "decoder-rope-scan-remat", "encoder-rope", "encoder-learned"])
def test_no_gradient_across_documents(family, overrides):
    """The issue's test: the middle document's summed loss has exactly zero gradient with respect
    to the input embeddings of the documents before and after it in the row (and of the padding),
    and a nonzero one within itself. Every position holds its own token id and the embedding is
    untied, so the gradient of the embedding's row tokens[t] is that of position t's input."""
    model, params = model_and_params(family=family, **overrides)
    L = 24
    seg_L1 = np.array([1] * 6 + [2] * 8 + [3] * 7 + [0] * 4)  # three documents, then padding
    tokens_L1 = np.random.default_rng(0).permutation(VOCAB - 1)[:L + 1] + 1
    inputs, seg = jnp.asarray(tokens_L1[None, :L]), jnp.asarray(seg_L1[None, :L])
    if family == "decoder":  # next-token targets within document 2
        targets = jnp.asarray(tokens_L1[None, 1:])
        weights = packing.target_weights(jnp.asarray(seg_L1[None])) * (seg == 2)
    else:  # the encoder's masked-LM loss at document 2's positions
        targets, weights = inputs, (seg == 2).astype(jnp.float32)

    def loss_of_document_2(p):
        logits = model.apply({"params": p}, inputs, segments_BL=seg)
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights)

    grad_VD = jax.jit(jax.grad(loss_of_document_2))(params)["embedding"]
    per_position = np.abs(np.asarray(grad_VD)[tokens_L1[:L]]).sum(axis=1)  # [L]
    assert np.all(per_position[seg_L1[:L] != 2] == 0.0), per_position  # exactly: masked, not small
    inside = per_position[seg_L1[:L] == 2]
    # The decoder's last input of a document predicts across the boundary, which is no target.
    assert np.all(inside[:-1] > 0) and (inside[-1] > 0) == (family == "encoder"), inside


@pytest.mark.parametrize("family, overrides, L", [
    ("decoder", dict(positions="rope"), 24),
    ("decoder", dict(positions="learned"), 24),
    ("decoder", dict(positions="alibi"), 24),
    ("decoder", dict(positions="sinusoidal", window=5), 24),
    ("decoder", dict(positions="alibi", attention_impl="xla"), 24),
    ("decoder", dict(positions="rope", attention="gqa", num_kv_heads=1), 256),  # causal blocks
    ("encoder", dict(positions="rope"), 24),
], ids=["rope", "learned", "alibi", "sinusoidal-window", "alibi-xla", "rope-gqa-blocks", "encoder-rope"])
def test_packed_document_matches_it_alone(family, overrides, L):
    """Each document of a packed row gets the logits it gets alone at the start of a row."""
    model, params = model_and_params(family=family, **overrides, **({"max_len": 256} if L > 64 else {}))
    lengths = [7, 9, 5] if L < 64 else [100, 60, 80]
    batch = packed([lengths], L)
    apply = jax.jit(lambda tokens, segments=None: model.apply({"params": params}, tokens, segments_BL=segments))
    logits = apply(jnp.asarray(batch["tokens"]), jnp.asarray(batch["segments"]))
    assert np.all(np.isfinite(logits))  # padding too
    for _, s, e in documents(batch):
        alone = apply(jnp.asarray(batch["tokens"][:, s:e]))  # the plain path
        np.testing.assert_allclose(logits[:, s:e], alone, atol=2e-6, rtol=0)


def test_decoding_takes_no_segments():
    from lmjax.errors import LmjaxError
    from lmjax.models import init_cache

    model, params = model_and_params()
    tokens = jnp.ones((1, 4), jnp.int32)
    with pytest.raises(LmjaxError, match="takes no segment ids"):
        model.apply({"params": params, "cache": init_cache(model.cfg, 1)}, tokens,
                    segments_BL=jnp.ones_like(tokens), decode=True, mutable=["cache"])


# --- training steps ---------------------------------------------------------------------------

def config(family="decoder", mesh=(1, 1, 1), **train):
    c = base_config()
    c.data.packing = "documents"
    c.model.update(family=family, num_layers=2, num_heads=2, width=16, tie_embeddings=False)
    c.train.update({**dict(batch_size=8, seq_len=24, lr=3e-3, warmup_steps=1), **train})
    c.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
    return resolve(c)


def setup_on(c, devices):
    return make_setup(c, vocab_size=VOCAB - (c.model.family == "encoder"),
                      mesh=sharding.make_mesh(c.mesh, devices))


# Rows 0, 2, 4, 6 (micro-batch 0 of two) are mostly padding, the others full: unequal target counts.
ROWS = [[5, 3], [10, 15], [4], [25], [6, 2, 2], [12, 13], [3, 3], [1, 20, 4]]


def batch_at(step):
    return packed(ROWS, 25, seed=step)


def reference_loss(model, params, batch, weights_BL, inputs_BL):
    """Summed weighted losses over summed weights, each document alone at the start of its own
    row (checked against the plain path by test_packed_document_matches_it_alone)."""
    tokens, L = batch["tokens"], inputs_BL.shape[1]
    encoder = model.cfg.family == "encoder"
    docs = documents(batch)
    rows = {k: np.zeros((len(docs), L), dtype) for k, dtype in
            [("inputs", np.int32), ("segments", np.int32), ("targets", np.int32), ("weights", np.float32)]}
    for i, (b, s, e) in enumerate(docs):
        n = min(e, L) - s if encoder else e - 1 - s  # the document's inputs
        rows["inputs"][i, :n], rows["segments"][i, :n] = inputs_BL[b, s:s + n], 1
        rows["targets"][i, :n] = tokens[b, s:s + n] if encoder else tokens[b, s + 1:s + 1 + n]
        rows["weights"][i, :n] = weights_BL[b, s:s + n]
    logits = jax.jit(model.apply)({"params": params}, rows["inputs"], segments_BL=rows["segments"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, rows["targets"])
    return float(jnp.sum(ce * rows["weights"])) / float(np.sum(weights_BL))


def run_steps(c, devices, steps=2, replicas=1):
    """(setup, the initial params, [steps, 2(, replicas)] losses and gradient norms)."""
    setup = setup_on(c, devices)
    state, out = setup.init_state(c.train.seed), []
    params = jax.device_get(state.params)  # the step donates the state
    for step in range(steps):
        batch = batch_at(step)
        if replicas > 1:  # replica k: the batches of seed + k, here those of step + k
            batch = jax.tree.map(lambda *r: np.stack(r), *[batch_at(step + k) for k in range(replicas)])
        state, metrics = setup.train_step(state, setup.put_batch(batch))
        out.append((np.asarray(metrics["loss"]), np.asarray(metrics["grad_norm"])))
    return setup, params, np.array(out)


@pytest.fixture(scope="module")
def one_device():
    return run_steps(config(), jax.devices()[:1])


def test_train_step_loss_is_the_mean_over_target_weights(one_device):
    setup, params, out = one_device
    batch = batch_at(0)
    want = reference_loss(setup.model, params, batch, packing.target_weights(batch["segments"]),
                          batch["tokens"][:, :-1])
    np.testing.assert_allclose(out[0, 0], want, rtol=1e-5)


def test_masked_lm_step_scores_chosen_positions_within_documents():
    setup, params, out = run_steps(config("encoder"), jax.devices()[:1], steps=1)
    batch = jax.tree.map(jnp.asarray, batch_at(0))  # the masks the step drew (objectives.train_key):
    inputs, _, weights = map(np.asarray, objectives.masked_lm(setup.model_cfg)(batch, objectives.train_key(0, 0)))
    assert weights.sum() > 0 and np.all(weights[np.asarray(batch["segments"])[:, :-1] == 0] == 0)
    want = reference_loss(setup.model, params, jax.device_get(batch), weights, inputs)
    np.testing.assert_allclose(out[0, 0], want, rtol=1e-5)


def test_grad_accumulation_matches_the_full_batch(one_device):
    """The micro-batches' target counts differ, so the loss is the whole batch's summed losses
    over its summed weights (not the mean of the micro-batches' means)."""
    np.testing.assert_allclose(run_steps(config(grad_accum=2), jax.devices()[:1])[2], one_device[2], rtol=1e-5)


def test_sharded_with_loss_chunk_matches_one_device(one_device):
    """On data=2 x fsdp=2 x tensor=2, with the loss 8 positions at a time (its weights too)."""
    sharded = run_steps(config(mesh=(2, 2, 2), loss_chunk=8), jax.devices()[:8])[2]
    np.testing.assert_allclose(sharded, one_device[2], rtol=1e-5)


def test_replicas_take_packed_batches(one_device):
    """Replica 0 of K=2 on one device follows the K=1 run on the same batches."""
    both = run_steps(config(replicas=2), jax.devices()[:1], replicas=2)[2]
    np.testing.assert_allclose(both[:, :, 0], one_device[2], rtol=1e-5)


# --- evaluation -------------------------------------------------------------------------------

# 65 tokens in windows of 16 targets, [16w, 16w + 17): boundaries at 10, 32 and 44. Window 1's
# only boundary comes before its last target; window 3 lies within document 4.
DOC_LENGTHS = [10, 22, 12, 21]


def make_eval_setup(family):
    setup = setup_on(config(family, batch_size=4, seq_len=16), jax.devices()[:1])
    split = np.random.default_rng(1).integers(1, VOCAB - 1, sum(DOC_LENGTHS)).astype(np.uint16)
    # Scaled up from the initialisation, so that the logits are far from uniform and the per-row
    # mask's rounding (1e-7 relative) would show in the figures.
    return setup, jax.tree.map(lambda x: 10 * x, jax.device_get(setup.init_state(0).params)), split


@pytest.fixture(scope="module")
def eval_setup():
    return make_eval_setup("decoder")


def evaluate(eval_setup, batch_size=4, **kw):
    setup, params, split = eval_setup
    return evaluation.evaluate(setup, params, split, seq_len=16, batch_size=batch_size, max_windows=0,
                               token_bytes=np.ones(VOCAB, np.int64), **kw)


def test_evaluation_scores_within_documents(eval_setup):
    """Each window's pieces of documents are scored as if alone at a row's start, and no target
    follows an input of another document: every target of the split but the documents' first."""
    setup, params, split = eval_setup
    doc_ends = np.cumsum(DOC_LENGTHS).astype(np.int64)
    ev = evaluate(eval_setup, doc_ends=doc_ends)
    n = len(split)
    assert ev["tokens"] == ev["bytes"] == n - len(DOC_LENGTHS)
    pieces = []  # each window's runs of one document's tokens
    for w in evaluation.windows(n, seq_len=16).index:
        positions = np.arange(w * 16, min(w * 16 + 17, n))
        doc = packing.document_index(positions, doc_ends)
        pieces += [split[positions[doc == d]].astype(np.int32) for d in np.unique(doc)]
    # Left-aligned in rows of the plain causal path: a piece's logits do not see what follows it.
    tokens = np.zeros((len(pieces), 17), np.int32)
    weights = np.zeros((len(pieces), 16), np.float32)
    for i, piece in enumerate(pieces):
        tokens[i, :len(piece)], weights[i, :len(piece) - 1] = piece, 1
    logits = jax.jit(setup.model.apply)({"params": params}, tokens[:, :-1])
    total = float(jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]) * weights))
    assert weights.sum() == ev["tokens"]
    np.testing.assert_allclose(ev["loss"], total / weights.sum(), rtol=1e-5)
    # One window a batch: window 3 takes the plain path, the others cross a boundary.
    one = evaluate(eval_setup, batch_size=1, doc_ends=doc_ends)
    assert one["tokens"] == ev["tokens"]
    np.testing.assert_allclose(one["loss"], ev["loss"], rtol=1e-6)


def test_evaluation_of_one_document_is_the_plain_one(eval_setup):
    """Bitwise: windows within one document take the plain path (the last one's tail past the
    split's end is never attended by the decoder)."""
    n = len(eval_setup[2])
    assert evaluate(eval_setup, doc_ends=np.array([n], np.int64)) == evaluate(eval_setup)


def test_encoder_evaluation_masks_the_same_positions_within_documents():
    """The encoder's masked positions are its inputs: within the split (65 tokens: no window
    reaches past its end) documents change what they attend to, not which positions count."""
    es = make_eval_setup("encoder")
    plain, docs = evaluate(es), evaluate(es, doc_ends=np.cumsum(DOC_LENGTHS).astype(np.int64))
    assert docs["masked_tokens"] == plain["masked_tokens"] and docs["masked_loss"] != plain["masked_loss"]
    assert evaluate(es, doc_ends=np.array([len(es[2])], np.int64)) == plain
    # A split that ends inside its last window: the plain path attends to the padding after it.
    short = (*es[:2], es[2][:60])
    ones, plain = evaluate(short, doc_ends=np.array([60], np.int64)), evaluate(short)
    assert ones["masked_tokens"] == plain["masked_tokens"] and ones["masked_loss"] != plain["masked_loss"]
