"""Second start of a config: wall clock from launching `lmjax train` to its first step.

    python -m benchmarks.second_start --config configs/speedrun_cpu.py [--config.KEY=VAL ...]
        [--repeats 10] [--label "what this row changes"] [--no_append]

Starts `lmjax train` once to fill the compilation cache (the user's, as `lmjax train` uses it),
then `--repeats` more times, each in a fresh workdir, as a researcher rerunning a config would.
Each start is timed from launch to the moment its first metrics row (written when the first
step's loss is on the host) appears in metrics.jsonl; the process is then stopped. The row also
gives the run's own `time_to_first_step`, counted from `train()`'s start, so the difference is
the interpreter's start and imports. Appends a row to the "Second start" table of
benchmarks/RESULTS.md and writes a JSON record under benchmarks/results/. This process runs no
JAX and leaves itself as it is (no `setup_command_process`), so each start pays its own set-up
(re-execution with the malloc tunables included), as a user's does.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import flags

from benchmarks import cli, records


def start_once(config: str, overrides: list[str], workdir: Path, timeout: float = 600) -> dict:
    metrics = workdir / "metrics.jsonl"
    stderr = tempfile.TemporaryFile("w+")  # a file, not a pipe nobody drains while we wait
    t = time.perf_counter()
    proc = subprocess.Popen(cli.lmjax_train(config, overrides, workdir), cwd=cli.REPO,
                            stdout=subprocess.DEVNULL, stderr=stderr, text=True)
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


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("repeats", 10, "Timed starts, after the one that fills the cache.",
                         flag_values=fv)
    records.define_flags(fv)


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    fv = cli.parse("benchmarks.second_start", __doc__, argv, _define_flags, config="required")
    config, overrides = fv["config"].config_filename, cli.config_overrides(argv)
    load = records.load_avg()
    starts = []
    with tempfile.TemporaryDirectory(prefix="lmjax-second-start-") as tmp:
        for i in range(fv.repeats + 1):  # the first start fills the cache; it is not counted
            workdir = Path(tmp) / "run"
            shutil.rmtree(workdir, ignore_errors=True)
            s = start_once(config, overrides, workdir)
            print(f"[second_start] start {i}{' (fills the cache)' if i == 0 else ''}: "
                  f"{s['launch_to_first_step_s']:.2f} s", file=sys.stderr)
            if i:
                starts.append(s)
    fields = {"config": config, "overrides": overrides, "label": fv.label, "starts": starts,
              "median_launch_to_first_step_s": statistics.median(s["launch_to_first_step_s"] for s in starts),
              "median_time_to_first_step_s": statistics.median(s["time_to_first_step_s"] for s in starts)}
    return records.save_record(fields, "second-start", fv, records.SECOND_START, load=load)


if __name__ == "__main__":
    cli.run(main)
