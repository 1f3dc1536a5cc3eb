"""A run's workdir: its status, reading metrics back, and writes that fail with one clear line."""

import json
import os

import pytest

from lmjax.workdir import Workdir, WorkdirError, read_metrics


def test_status_from_the_files(tmp_path):
    wd = Workdir(tmp_path / "run")
    assert wd.status() == "pending"
    wd.create()
    wd.file("metrics.jsonl").write_text('{"step": 3, "loss": 2.5}\n{"step": 4, "lo')  # torn last line
    assert wd.status() == "partial" and wd.metrics() == [{"step": 3, "loss": 2.5}]
    (wd.path / "checkpoints" / "4.orbax-checkpoint-tmp").mkdir(parents=True)
    assert wd.checkpoint_steps() == []  # a save in flight is no checkpoint
    (wd.path / "checkpoints" / "4").mkdir()
    assert wd.checkpoint_steps() == [4]
    wd.write_failed({"error": "error: boom"})
    assert wd.status() == "failed" and wd.failed()["error"] == "error: boom"
    wd.write_result({"step": 10, "config_hash": "abc"})
    assert wd.status() == "done"  # result.json wins over failed.json
    assert wd.status(config_hash="abc", steps=10) == "done"
    assert wd.status(config_hash="xyz") == "stale"
    assert wd.status(steps=20) == "partial"  # a result short of its steps
    wd.write_result({"step": 10, "preempted": True})
    assert wd.status() == "partial"


def test_status_running_while_another_process_holds_the_lock(tmp_path):
    wd = Workdir(tmp_path / "run")
    fd = wd.try_lock()
    assert fd is not None
    try:
        assert wd.try_lock() is None  # flock is per open file: a second open cannot take it
        assert wd.status(check_lock=True) == "running" and wd.status() == "pending"
    finally:
        os.close(fd)
    assert wd.status(check_lock=True) == "pending"


def test_metrics_tail_and_truncate(tmp_path):
    wd = Workdir(tmp_path).create()
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 201)]
    wd.file("metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert wd.metrics() == rows
    tail = read_metrics(wd.file("metrics.jsonl"), tail_bytes=200)
    assert tail and tail == rows[-len(tail):] and len(tail) < 10
    wd.truncate_metrics(50)
    assert [r["step"] for r in wd.metrics()] == list(range(1, 51))


def test_writes_fail_with_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WorkdirError, match=f"cannot create workdir {blocker / 'run'} .*--workdir"):
        Workdir(blocker / "run").create()
    with pytest.raises(WorkdirError, match="cannot write .*config.json"):
        Workdir(blocker).write_config({"a": 1})
    wd = Workdir(tmp_path / "ok").create()
    wd.write_config({"model": {"width": 8}})
    assert wd.config() == {"model": {"width": 8}}
    assert sorted(p.name for p in wd.path.iterdir()) == ["config.json"]  # no temporary file left
