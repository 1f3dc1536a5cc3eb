"""Every model family through the same train / eval / sample path: sharded training follows the
single-device curve, resume is exact, `lmjax.load` samples and scores, FLOPs and parameters come
from the family's own formulas, and keys of another family are refused."""

import json

import jax
import numpy as np
import pytest

import lmjax
from lmjax import config as config_lib
from lmjax.data import prepare
from lmjax.errors import ConfigError, LmjaxError
from lmjax.models import families
from lmjax.training.loop import train
from lmjax.workdir import Workdir
from lm_testing import greedy_by_forward

NEURAL = ["lstm", "mlp"]  # the decoder's own tests are in test_training.py


def family_config(family: str, **model):
    c = config_lib.base_config()
    c.data.corpus = "tinyshakespeare"
    c.data.val_fraction = 0.02  # 22 KB: the final evaluation scores all of it
    c.data.tokenizer = "byte"
    c.model.family = family
    c.model.num_layers, c.model.width, c.model.dropout = 2, 64, 0.1
    c.model.update(model)
    c.train.update(steps=6, batch_size=16, seq_len=32, lr=3e-3, warmup_steps=2, log_every=1,
                   eval_every=6, eval_batches=2, checkpoint_every=1000)
    c.sample.prompt = ""
    return c


def losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in rows if "loss" in r])


def assert_sharded_and_resumed_runs_match(c, one, sharded, resumed):
    """`c` (one device) was trained in `one`: on a data 4 x fsdp 2 mesh the losses match within
    float32 reduction order; stopped at step 3 and started again, they are bitwise the same."""
    c8 = config_lib.base_config()
    c8.update(c.to_dict())  # a copy, on the 8 devices
    c8.mesh.update(data=4, fsdp=2, tensor=1)
    train(c8, sharded, progress=False)
    np.testing.assert_allclose(losses(sharded), losses(one), rtol=1e-5)
    train(c, resumed, progress=False, devices=jax.devices()[:1], stop_at=3)
    train(c, resumed, progress=False, devices=jax.devices()[:1])
    np.testing.assert_array_equal(losses(resumed), losses(one))


def test_every_neural_family_has_a_module():
    assert set(families.MODULES) == set(config_lib.NEURAL)


@pytest.mark.parametrize("family", NEURAL)
def test_family_trains_sharded_like_one_device_and_resumes_exactly(family, tmp_path):
    one, sharded, resumed = tmp_path / "one", tmp_path / "sharded", tmp_path / "resumed"
    c = family_config(family)
    c.mesh.update(data=1, fsdp=1, tensor=1)
    final = train(c, one, progress=False, devices=jax.devices()[:1])
    assert losses(one)[-1] < losses(one)[0]  # it learns
    info = json.loads((one / "run.json").read_text())
    cfg = config_lib.resolve(c).model.replace(vocab_size=257)  # 256 bytes + end of document
    assert info["params"] == families.param_count(cfg)
    assert info["flops_per_token"] == families.flops_per_token(cfg, 32)
    assert info["attention_impl"] is None
    assert 0 < final["val_bits_per_byte"] < 8

    assert_sharded_and_resumed_runs_match(c, one, sharded, resumed)
    by_position = Workdir(one).position_losses()
    assert [r["step"] for r in by_position] == [6] and len(by_position[0]["loss_by_position"]) == 32
    assert Workdir(resumed).position_losses() == by_position

    run = lmjax.load(one)
    assert run.config.model.family == family
    assert run.generate("ROMEO:", max_new_tokens=10, temperature=0.0) == greedy_by_forward(run, "ROMEO:", 10)
    scores = run.score("To be, or not to be")
    assert scores.logprobs.shape == (len("To be, or not to be") - 1,) and np.all(scores.logprobs <= 0)
    ev = run.evaluate()  # the whole split, as training's final evaluation
    assert ev["loss"] == pytest.approx(final["val_loss"], rel=1e-5)


def test_elman_rnn_trains_sharded_resumes_and_samples(tmp_path):
    """The lstm's path above, shortened, for a second cell of the same module (models/recurrent.py;
    the gru's differs from both only in its cell, tested in test_recurrent.py): the run records
    the cell's own counts, trains sharded as on one device, resumes bitwise, and a loaded run
    samples through the decode cache."""
    family = "rnn"
    one, sharded, resumed = tmp_path / "one", tmp_path / "sharded", tmp_path / "resumed"
    c = family_config(family, num_layers=1, width=32)
    c.mesh.update(data=1, fsdp=1, tensor=1)
    train(c, one, progress=False, devices=jax.devices()[:1])
    assert losses(one)[-1] < losses(one)[0]
    info = json.loads((one / "run.json").read_text())
    cfg = config_lib.resolve(c).model.replace(vocab_size=257)  # 256 bytes + end of document
    assert info["flops_per_token"] == families.flops_per_token(cfg, 32)
    assert_sharded_and_resumed_runs_match(c, one, sharded, resumed)
    run = lmjax.load(one)
    assert run.config.model.family == family
    assert info["params"] == sum(x.size for x in jax.tree.leaves(run.params))  # the stored tree
    assert len(run.generate("ROMEO:", max_new_tokens=5, temperature=0.0).encode("utf-8", "replace")) >= 1


@pytest.mark.parametrize("family, key, value", [
    ("lstm", "attention", "gqa"),
    ("lstm", "num_kv_heads", 2),
    ("mlp", "positions", "learned"),
    ("decoder", "context", 4),
    ("lstm", "direct", True),
    ("gru", "window", 8),
    ("rnn", "context", 4),
    ("mlp", "unroll", 8),
    ("mlp", "order", 5),
])
def test_keys_of_another_family_are_refused(family, key, value):
    c = family_config(family, **{key: value})
    with pytest.raises(ConfigError, match=f"config.model.{key} applies to the .* not config.model.family='{family}'"):
        config_lib.resolve(c)


def test_neural_keys_are_refused_for_ngram():
    c = config_lib.base_config()
    c.model.family, c.model.width = "ngram", 64
    with pytest.raises(ConfigError, match="config.model.width applies to the decoder, encoder, lstm, gru, rnn and mlp "
                                          "families, not config.model.family='ngram'"):
        config_lib.resolve(c)


def test_mlp_direct_with_chunked_loss_is_refused():
    c = family_config("mlp", direct=True)
    c.train.loss_chunk = 8
    with pytest.raises(ConfigError, match="loss_chunk .* direct"):
        config_lib.resolve(c)


def test_ngram_counts_evaluates_samples_and_resumes(tmp_path):
    c = config_lib.base_config()
    c.data.corpus, c.data.tokenizer = "tinyshakespeare", "byte"
    c.model.family, c.model.order = "ngram", 3
    c.train.update(batch_size=8, seq_len=64, eval_batches=4)
    lines = []
    final = train(c, tmp_path, progress=False, print_fn=lines.append)
    assert final["step"] == 1 and 0 < final["val_bits_per_byte"] < 8
    assert "3-gram model" in lines[0]
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["params"] > 0 and info["flops_per_token"] == 0.0 and info["code"]["commit"]
    # A second start finds the counted model (resume: counting again would give the same).
    again = train(c, tmp_path, progress=False, print_fn=lines.append)
    assert "loaded from its checkpoint" in lines[-1] and again["val_loss"] == final["val_loss"]

    run = lmjax.load(tmp_path)
    assert run.evaluate()["loss"] == pytest.approx(final["val_loss"], rel=1e-9)
    text = run.generate("ROMEO:", max_new_tokens=20, temperature=0.0)
    assert len(text.encode("utf-8", errors="replace")) >= 1
    logprobs = run.score("To be, or not to be").logprobs
    assert logprobs.shape == (len("To be, or not to be") - 1,) and np.all(logprobs < 0)

    c.model.order = 4  # another model in the same workdir is refused
    with pytest.raises(ConfigError, match="holds a run of another config"):
        train(c, tmp_path, progress=False)


def test_encoder_pretrains_sharded_like_one_device_resumes_and_fills(tmp_path):
    one, sharded, resumed = tmp_path / "one", tmp_path / "sharded", tmp_path / "resumed"
    c = family_config("encoder")
    c.mesh.update(data=1, fsdp=1, tensor=1)
    final = train(c, one, progress=False, devices=jax.devices()[:1])
    assert losses(one)[-1] < losses(one)[0]
    assert 0 < final["val_masked_accuracy"] <= 1 and final["val_masked_tokens"] > 0
    cfg = config_lib.resolve(c).model.replace(vocab_size=258)  # 256 bytes, end of document, [MASK]
    assert json.loads((one / "run.json").read_text())["params"] == families.param_count(cfg)

    assert_sharded_and_resumed_runs_match(c, one, sharded, resumed)

    run = lmjax.load(one)
    filled = run.fill("To be, or not to [MASK]e: the [MASK]", top_k=3)
    assert len(filled) == 2 and all(len(top) == 3 for top in filled)
    for top in filled:
        probs = [p for _, p in top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    ev = run.evaluate()  # the whole split, as training's final evaluation
    assert ev["masked_loss"] == pytest.approx(final["val_masked_loss"], rel=1e-5)
    with pytest.raises(LmjaxError, match="masked LM"):
        run.generate("ROMEO:", max_new_tokens=4)
    with pytest.raises(LmjaxError, match="masked LM"):
        run.score("To be")
    with pytest.raises(LmjaxError, match="no \\[MASK\\]"):
        run.fill("nothing to fill")


def test_encoder_sees_both_ways():
    from lmjax.models import build, init_params

    cfg = config_lib.resolve(family_config("encoder")).model.replace(vocab_size=257)
    params = init_params(cfg, jax.random.key(0))
    x = np.arange(32, dtype=np.int32)[None] % 200
    y = x.copy()
    y[0, 20] = 7
    a, b = (np.asarray(build(cfg).apply({"params": params}, t)) for t in (x, y))
    assert np.abs(a[0, :20] - b[0, :20]).max() > 1e-6  # earlier positions see the later token


def test_masks_follow_berts_recipe_and_not_the_device_count():
    from jax.sharding import NamedSharding, PartitionSpec as P

    from lmjax.training import objectives

    cfg = config_lib.resolve(family_config("encoder")).model.replace(vocab_size=257)
    objective = jax.jit(objectives.masked_lm(cfg))
    batch = np.random.default_rng(0).integers(0, 256, (64, 513)).astype(np.int32)
    key = objectives.train_key(0, 5)
    inputs, targets, weights = map(np.asarray, objective(batch, key))
    chosen = weights > 0
    assert abs(chosen.mean() - 0.15) < 0.01
    masked, kept = (inputs == 256)[chosen], (inputs == targets)[chosen]
    assert abs(masked.mean() - 0.8) < 0.02 and abs(kept.mean() - 0.1) < 0.02  # 10% random, 10% kept
    assert np.all(inputs[~chosen] == targets[~chosen]) and np.all(targets == batch[:, :-1])
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    spread = jax.device_put(batch, NamedSharding(mesh, P("data")))
    for a, b in zip(objective(spread, key), (inputs, targets, weights)):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert not np.array_equal(np.asarray(objective(batch, objectives.train_key(0, 6))[2]), weights)


def test_mlp_evaluates_with_a_sliding_window(tmp_path):
    """Every scored target gets its full context; the first context - 1 positions, scored only in
    the split's first window, are left out of the loss by position."""
    c = family_config("mlp", context=4, num_layers=1, width=16)
    c.train.update(steps=2, eval_every=2)
    train(c, tmp_path / "mlp", progress=False)
    run = lmjax.load(tmp_path / "mlp")
    ev = run.evaluate(batches=0)
    assert ev["tokens"] == len(prepare(run.config.data).val) - 1  # each target once, as for the others
    by_position = ev["loss_by_position"]
    assert by_position[:3] == [None] * 3 and all(x is not None for x in by_position[3:])
