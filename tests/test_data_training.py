"""Training on the data issue 23 added, through `lmjax train`'s entry point: a mixture of JSONL
sources (validation per source), and documents packing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import lmjax
from lmjax.cli.main import main

TINY = ["--config.model.num_layers=1", "--config.model.num_heads=2", "--config.model.width=32",
        "--config.train.batch_size=8", "--config.train.seq_len=32", "--config.train.steps=6",
        "--config.train.eval_every=3", "--config.train.eval_batches=2", "--config.train.log_every=3",
        "--config.train.checkpoint_every=6", "--config.sample.prompt=", "--progress=false",
        "--config.mesh.data=-1"]


def write_jsonl(path: Path, n: int, word: str) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"text": f"{word} {i}: " + f"{word} " * (i % 11 + 1)}) + "\n")
    return path


def rows(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_mixture_reports_each_source_and_all(tmp_path, capsys):
    a = write_jsonl(tmp_path / "alpha.jsonl", 400, "alpha")
    b = write_jsonl(tmp_path / "beta.jsonl", 400, "beta")
    workdir = tmp_path / "run"
    code = main(["train", *TINY, f"--config.data.mixture=a={a}:3,b={b}:1", f"--config.data.cache_dir={tmp_path}",
                 f"--workdir={workdir}"])
    assert code == 0, capsys.readouterr().err
    final = [r for r in rows(workdir) if "val_loss" in r][-1]
    for name in ("a", "b"):
        assert final[f"val_loss/{name}"] > 0 and final[f"val_bytes/{name}"] > 0
    # the pooled loss is the token-weighted mean of the sources', its bytes their sum
    tokens = np.array([final["val_tokens/a"], final["val_tokens/b"]], float)
    pooled = (final["val_loss/a"] * tokens[0] + final["val_loss/b"] * tokens[1]) / tokens.sum()
    assert final["val_loss"] == pytest.approx(pooled, rel=1e-9)
    assert final["val_bytes"] == final["val_bytes/a"] + final["val_bytes/b"]
    assert final["val_tokens"] == tokens.sum()
    info = json.loads((workdir / "run.json").read_text())
    run = lmjax.load(workdir)
    assert info["train_tokens"] == sum(len(s.train.tokens) for s in lmjax.data.prepare(run.config.data).sources)
    ev = run.evaluate()  # the same pooled figure through lmjax.load
    assert ev["loss"] == pytest.approx(final["val_loss"], rel=1e-5)
    assert ev["loss/a"] == pytest.approx(final["val_loss/a"], rel=1e-5)


def test_documents_packing_trains_resumes_and_evaluates_alike(tmp_path, capsys):
    """packing='documents' through lmjax train: a run stopped at step 3 and started again ends
    bitwise where one run straight through does (its batches are a function of (seed, step)),
    and its final evaluation (within documents) equals run.evaluate()."""
    import jax

    from lmjax.training.loop import train

    corpus = write_jsonl(tmp_path / "docs.jsonl", 500, "gamma")
    args = ["train", *TINY, f"--config.data.corpus={corpus}", "--config.data.packing=documents",
            f"--config.data.cache_dir={tmp_path}"]
    assert main([*args, f"--workdir={tmp_path / 'straight'}"]) == 0, capsys.readouterr().err
    run = lmjax.load(tmp_path / "straight")
    assert run.config.data.packing == "documents"
    train(run.config, tmp_path / "resumed", progress=False, stop_at=3, print_fn=lambda *a: None)
    train(run.config, tmp_path / "resumed", progress=False, print_fn=lambda *a: None)
    resumed = lmjax.load(tmp_path / "resumed")
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), run.params, resumed.params)
    assert all(jax.tree.leaves(same))
    final, final_resumed = ([r for r in rows(tmp_path / w) if "val_loss" in r][-1] for w in ("straight", "resumed"))
    assert final["step"] == final_resumed["step"] == 6 and final["val_loss"] == final_resumed["val_loss"]
    assert run.evaluate()["loss"] == pytest.approx(final["val_loss"], rel=1e-5)
