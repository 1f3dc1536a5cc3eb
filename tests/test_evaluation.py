"""Tests of lmjax/training/evaluation.py: which windows are scored, and that every route to a
validation loss (training's final eval, `lmjax eval`, `run.evaluate()`, any batch size or mesh)
gives the same figure."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import lmjax
from lmjax.config import base_config
from lmjax.data import build_tokenizer, prepare
from lmjax.errors import DataError
from lmjax.training import evaluation, sharding
from lmjax.training.evaluation import batches, num_windows, windows
from lmjax.training.loop import train
from lmjax.training.steps import make_setup


def _scored(n_tokens, *, seq_len, overlap=0, max_windows=0, batch_size=4, process_count=1):
    """(input, target, position in the window) of every scored target, over all processes' rows."""
    tokens = np.arange(n_tokens, dtype=np.uint16)
    win = windows(n_tokens, seq_len=seq_len, overlap=overlap, max_windows=max_windows)
    pairs, index = [], []
    for p in range(process_count):
        for batch, weights, idx in batches(tokens, win, batch_size=batch_size, process_index=p,
                                           process_count=process_count):
            assert batch.dtype == np.int32 and weights.dtype == np.float32 and idx.dtype == np.int32
            assert batch.shape[1:] == (seq_len + 1,) and weights.shape[1:] == (seq_len,)
            real = weights == 1
            cols = np.broadcast_to(np.arange(seq_len), real.shape)[real]  # the target's place in its window
            pairs.append(np.stack([batch[:, :-1][real], batch[:, 1:][real], cols], axis=1))
            index.append(idx[idx >= 0])
    return np.concatenate(pairs), np.sort(np.concatenate(index)), win


@pytest.mark.parametrize("n_tokens, seq_len, overlap", [(1000, 16, 0), (1001, 16, 0), (993, 10, 0), (17, 16, 0),
                                                       (9, 16, 0), (1000, 16, 7), (17, 16, 15), (500, 8, 7)])
@pytest.mark.parametrize("batch_size, process_count", [(4, 1), (6, 3), (1, 1)])
def test_whole_split_scores_every_target_exactly_once(n_tokens, seq_len, overlap, batch_size, process_count):
    pairs, index, win = _scored(n_tokens, seq_len=seq_len, overlap=overlap, batch_size=batch_size,
                                process_count=process_count)
    assert np.array_equal(np.sort(pairs[:, 1]), np.arange(1, n_tokens))  # each target once
    assert np.array_equal(pairs[:, 1], pairs[:, 0] + 1)  # with its true input
    assert np.array_equal(index, np.arange(num_windows(n_tokens, seq_len, overlap)))
    # every target past the split's first `overlap` has `overlap` previous tokens in its window
    assert np.all((pairs[:, 2] >= overlap) | (pairs[:, 1] <= overlap))


def test_windows_refuse_bad_overlap_and_tiny_split():
    with pytest.raises(DataError, match="overlap of 16 needs 0 <= overlap < seq_len=16"):
        windows(100, seq_len=16, overlap=16)
    with pytest.raises(DataError, match="has 1 tokens, too few"):
        windows(1, seq_len=16)


def test_budget_windows_spread_over_start_middle_and_end():
    n, L = 100_000, 128
    total = num_windows(n, L)
    win = windows(n, seq_len=L, max_windows=40)
    assert len(win.index) == 40 == len(np.unique(win.index))
    assert win.index[0] == 0 and win.index[-1] == total - 1  # the start and the end
    assert np.any(np.abs(win.index - total // 2) <= total / 40)  # and the middle
    assert np.all(np.diff(win.index) <= math.ceil(total / 39))  # no long gap anywhere
    assert np.array_equal(windows(n, seq_len=L, max_windows=10**6).index, np.arange(total))


@pytest.mark.parametrize("batch_size, process_count", [(4, 1), (12, 1), (48, 2), (64, 4)])
def test_budget_windows_do_not_depend_on_batching(batch_size, process_count):
    reference, ref_index, _ = _scored(30_000, seq_len=64, max_windows=50, batch_size=8)
    pairs, index, _ = _scored(30_000, seq_len=64, max_windows=50, batch_size=batch_size,
                              process_count=process_count)
    assert np.array_equal(index, ref_index)
    assert np.array_equal(np.sort(pairs[:, 1]), np.sort(reference[:, 1]))


def test_ratio_se_matches_the_bootstrap():
    rng = np.random.default_rng(0)
    counts = rng.integers(50, 129, 400).astype(float)
    sums = counts * rng.normal(2.0, 0.3, 400)
    boots = [sums[i].sum() / counts[i].sum() for i in rng.integers(0, 400, (4000, 400))]
    assert evaluation.ratio_se(sums, counts) == pytest.approx(np.std(boots), rel=0.08)
    assert math.isnan(evaluation.ratio_se(sums[:1], counts[:1]))


@pytest.mark.parametrize("kind", ["byte", "char", "sentencepiece"])
def test_token_bytes_add_up_to_the_text(kind):
    text = "def f(x):\n    return x  # é, 漢字, 😀 and a literal \u2581\n" * 30
    tok = build_tokenizer(kind, text, vocab_size=300, sp_model_type="bpe")
    ids = tok.encode(text)
    assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))


def _config(batch_size, corpus):
    c = base_config()
    c.data.corpus, c.data.tokenizer = str(corpus), "char"
    c.model.update(num_layers=1, num_heads=2, width=32)
    c.train.update(steps=3, batch_size=batch_size, seq_len=32, warmup_steps=1, eval_every=3, eval_batches=1,
                   log_every=1, checkpoint_every=3)
    c.sample.prompt = ""
    return c


def test_every_route_gives_the_same_validation_loss(tmp_path):
    """Training's final val_loss (on 4 devices, data=2 x fsdp=2) = `lmjax eval` = run.evaluate()
    = evaluate() at batch sizes 12, 48 and 64 on one device, to 1e-6; and it covers the whole
    split."""
    workdir, corpus = tmp_path / "run", tmp_path / "shakespeare.txt"
    corpus.write_text((Path(os.environ["LMJAX_DATA_DIR"]) / "tinyshakespeare" / "input.txt").read_text()[:60_000])
    cfg = _config(12, corpus)
    cfg.mesh.fsdp = 2
    four = jax.devices()[:4]
    final = train(cfg, workdir, progress=False, devices=four, print_fn=lambda *a: None)
    data = prepare(lmjax.config.resolve(cfg).data)
    # every target of the split; the last is the document's end-of-document id, which stands for no byte
    assert final["val_tokens"] == len(data.val) - 1 == final["val_bytes"] + 1
    cli = subprocess.run([sys.executable, "-m", "lmjax", "eval", "--workdir", str(workdir)],
                         capture_output=True, text=True, check=True)
    from_cli = json.loads(cli.stdout.strip().splitlines()[-1])
    run = lmjax.load(workdir)
    from_run = run.evaluate()
    losses = {"train": final["val_loss"], "cli": from_cli["loss"], "run": from_run["loss"]}
    one = make_setup(run.config, vocab_size=run.tokenizer.vocab_size,
                     mesh=sharding.make_mesh(lmjax.config.MeshConfig(data=1), four[:1]))
    for b in (12, 48, 64):
        ev = evaluation.evaluate(one, run.params, data.val, seq_len=32, batch_size=b, max_windows=0,
                                 token_bytes=data.tokenizer.token_bytes())
        losses[f"batch {b}"] = ev["loss"]
        # the standard error sums per-window float32 losses, reduced in another order on 4 devices
        assert ev["tokens"] == final["val_tokens"] and ev["loss_se"] == pytest.approx(final["val_loss_se"], rel=1e-5)
    assert max(losses.values()) - min(losses.values()) < 1e-6, losses
    assert from_cli["bits_per_byte"] == pytest.approx(final["val_bits_per_byte"], abs=1e-6)
    # a budget is spread over the split too, and the same through both routes
    assert run.evaluate(batches=2)["tokens"] == pytest.approx(2 * 12 * 32, abs=32)


def test_every_route_scores_the_chosen_half(tmp_path, capsys):
    """config.data.val_part='tune': training's val_*, `lmjax eval` and run.evaluate() score the
    first half of the split alone; `lmjax eval --val_part test` and run.evaluate(val_part='test')
    the second; a bad part is one error line."""
    from lmjax.cli.main import main

    workdir, corpus = tmp_path / "run", tmp_path / "shakespeare.txt"
    corpus.write_text((Path(os.environ["LMJAX_DATA_DIR"]) / "tinyshakespeare" / "input.txt").read_text()[:20_000])
    cfg = _config(4, corpus)
    cfg.data.val_part, cfg.train.eval_batches = "tune", 0
    final = train(cfg, workdir, progress=False, devices=jax.devices()[:1], print_fn=lambda *a: None)
    data_cfg = lmjax.config.resolve(cfg).data
    half = {part: prepare(dataclasses.replace(data_cfg, val_part=part)).val for part in ("tune", "test")}
    run = lmjax.load(workdir)

    def cli(*flags):
        code = main(["eval", f"--workdir={workdir}", *flags])
        out, err = capsys.readouterr()
        return code, (json.loads(out.strip().splitlines()[-1]) if code == 0 else err)

    code, ev = cli()
    assert code == 0 and final["val_tokens"] == ev["tokens"] == len(half["tune"]) - 1
    assert ev["loss"] == pytest.approx(final["val_loss"], abs=1e-6)
    assert run.evaluate()["loss"] == pytest.approx(final["val_loss"], abs=1e-6)
    code, ev = cli("--val_part=test")
    assert code == 0 and ev["tokens"] == len(half["test"]) - 1
    assert run.evaluate(val_part="test")["loss"] == pytest.approx(ev["loss"], abs=1e-6) != final["val_loss"]
    code, err = cli("--val_part=train")
    assert code == 2 and err.strip().splitlines() == [
        "error: config.data.val_part='train' is not one of 'all', 'tune', 'test' (did you mean 'tune'?)"]
