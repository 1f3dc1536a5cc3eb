"""Second start of a config: wall clock from launching `lmjax train` to its first step.

    python -m benchmarks.second_start --config configs/speedrun_cpu.py [--config.KEY=VAL ...]
        [--repeats 10] [--label "what this row changes"] [--no_append]

Starts `lmjax train` once to fill the compilation cache (the user's, as `lmjax train` uses it),
then `--repeats` more times, each in a fresh workdir, as a researcher rerunning a config would.
Each start is timed from launch to the moment its first metrics row (written when the first
step's loss is on the host) appears in metrics.jsonl; the process is then stopped. The row also
gives the run's own `time_to_first_step`, counted from `train()`'s start, so the difference is
the interpreter's start and imports. Appends a row to the "Second start" table of
benchmarks/RESULTS.md and writes a JSON record under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.speedrun import REPO, add_record_flags, lmjax_command, parse_with_overrides, save_record

TABLE_TITLE = "## Second start: launch to first step with the compilation cache warm"
TABLE_HEADER = """\
Wall clock from launching `lmjax train` (the console script) to its first metrics row, in a
fresh workdir, after one start that filled the compilation cache; median of the starts listed.
`from train()` is the run's own `time_to_first_step`. Written by `python -m benchmarks.second_start`.
Goal (issue 5): <= 2 s.

| date | host | label | config | launch to first step (s) | median s | from train() median s |
|---|---|---|---|---|---|---|
"""


def start_once(config: str, overrides: list[str], workdir: Path, timeout: float = 600) -> dict:
    cmd = [*lmjax_command(), "train", f"--config={config}", *overrides, f"--workdir={workdir}",
           "--noprogress", "--config.sample.prompt="]
    metrics = workdir / "metrics.jsonl"
    stderr = tempfile.TemporaryFile("w+")  # a file, not a pipe nobody drains while we wait
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    try:
        while not (metrics.exists() and metrics.stat().st_size > 0):
            if proc.poll() is not None:
                stderr.seek(0)
                sys.exit(f"error: lmjax train exited ({proc.returncode}) before its first step: "
                         f"{stderr.read().strip().splitlines()[-1:]}")
            if time.perf_counter() - t > timeout:
                sys.exit(f"error: no first step after {timeout:.0f} s")
            time.sleep(0.005)
        wall = time.perf_counter() - t
    finally:
        proc.kill()
        proc.wait()
        stderr.close()
    first = json.loads(metrics.read_text().splitlines()[0])
    return {"launch_to_first_step_s": wall, "time_to_first_step_s": first["time_to_first_step"]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--repeats", type=int, default=10)
    add_record_flags(p)
    args, overrides = parse_with_overrides(p, argv)
    load = os.getloadavg()[0]
    starts = []
    with tempfile.TemporaryDirectory(prefix="lmjax-second-start-") as tmp:
        for i in range(args.repeats + 1):  # the first start fills the cache; it is not counted
            workdir = Path(tmp) / "run"
            shutil.rmtree(workdir, ignore_errors=True)
            s = start_once(args.config, overrides, workdir)
            print(f"[second_start] start {i}{' (fills the cache)' if i == 0 else ''}: "
                  f"{s['launch_to_first_step_s']:.2f} s", file=sys.stderr)
            if i:
                starts.append(s)
    return save_record(
        {"config": args.config, "overrides": overrides, "label": args.label, "starts": starts,
         "median_launch_to_first_step_s": statistics.median(s["launch_to_first_step_s"] for s in starts),
         "median_time_to_first_step_s": statistics.median(s["time_to_first_step_s"] for s in starts)},
        "second-start", args, load, row, TABLE_TITLE, TABLE_HEADER)


def row(rec: dict) -> str:
    config = f"`{Path(rec['config']).stem}`" + "".join(f" `{o}`" for o in rec["overrides"])
    walls = " / ".join(f"{s['launch_to_first_step_s']:.2f}" for s in rec["starts"])
    return (f"| {rec['date'][:16].replace('T', ' ')} | {rec['host']['cpu_count']} x cpu "
            f"| {rec['label'] or '-'} | {config} | {walls} | {rec['median_launch_to_first_step_s']:.2f} "
            f"| {rec['median_time_to_first_step_s']:.2f} |")


if __name__ == "__main__":
    main()
