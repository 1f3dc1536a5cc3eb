"""`lmjax prepare` in a job of several processes (launch/local.sh): each process builds its share of
the pieces, the store equals one process's bitwise, and a store folder the processes do not
share is refused with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_store import jsonl_corpus, lmjax, prepare_args, store_files

REPO = Path(__file__).resolve().parents[1]


def launch(n: int, port: int, logs: Path, *cmd: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run(["bash", "launch/local.sh", "-n", str(n), "-d", "1", "-p", str(port), "-l", str(logs),
                           "--", *cmd], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def test_two_processes_prepare_one_store(tmp_path):
    args = prepare_args(jsonl_corpus(tmp_path / "c", 6, 300), "bpe", "--workers=1")
    one = lmjax(*args, f"--config.data.cache_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr
    port = 21000 + os.getpid() % 20000
    two = launch(2, port, tmp_path / "logs", sys.executable, "-m", "lmjax", *args,
                 f"--config.data.cache_dir={tmp_path / 'two'}")
    logs = [(tmp_path / "logs" / f"process-{k}.log").read_text() for k in (0, 1)]
    assert two.returncode == 0, two.stderr + logs[0][-2000:] + logs[1][-2000:]
    assert "in each of 2 processes" in logs[0] + logs[1]
    assert sum(line.startswith("{") for line in two.stdout.splitlines()) == 1  # process 0 reports
    stores = [json.loads(r.stdout.splitlines()[-1])["store"] for r in (one, two)]
    assert store_files(stores[0]) == store_files(stores[1])

    # Each process with its own folder (each host's own disk, say): refused by each, in one line.
    own = " ".join([sys.executable, "-m", "lmjax", *args, f"--config.data.cache_dir={tmp_path}/own-$JAX_PROCESS_ID"])
    apart = launch(2, port + 1, tmp_path / "logs-apart", "sh", "-c", own)
    assert apart.returncode != 0
    for k in (0, 1):
        log = (tmp_path / "logs-apart" / f"process-{k}.log").read_text()
        errors = [line for line in log.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "is not on storage every process shares" in errors[0], log[-2000:]
