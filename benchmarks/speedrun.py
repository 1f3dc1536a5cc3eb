"""Wall clock of `lmjax train` from process start to its final full-split validation loss.

    python -m benchmarks.speedrun --config configs/speedrun_cpu.py [--config.KEY=VAL ...]
        [--repeats 3] [--label "what this row changes"] [--target 1.88] [--no_append]
        [--eval_parts test,all]
    python -m benchmarks.speedrun --append_records JSON [--append_records JSON ...] [--label "a;b"]

Runs `lmjax train` (the console script) `--repeats` times as a user would (a fresh workdir each
time, the user's compilation cache as it is), timing each process from launch to exit: imports,
data loading, compile, training, the final evaluation and the last checkpoint are all inside.
The run's own last line of JSON gives its validation loss (full split when the config sets
config.train.eval_batches=0), on the validation tokens config.data.val_part names (`all`, or the
split's `tune` or `test` half); `--eval_parts` scores the final checkpoint on other parts too,
with `lmjax eval` after the timed process (untimed). Appends a row (median wall clock, every run's loss) to the
"CPU speedrun" table of benchmarks/RESULTS.md and writes a JSON record under benchmarks/results/.
This process runs no JAX and leaves itself as it is (no `setup_command_process`): each `lmjax
train` sets itself up, re-execution with the malloc tunables included, as for a user.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from absl import flags

from benchmarks import cli, records
from lmjax.config import DataConfig
from lmjax.errors import ConfigError


def run_once(config: str, overrides: list[str], workdir: Path, eval_parts: list[str]) -> dict:
    t = time.perf_counter()
    final = cli.run_json(cli.lmjax_train(config, overrides, workdir))
    wall = time.perf_counter() - t
    by_part = {part: cli.run_json(cli.lmjax_eval(workdir, part))["loss"] for part in eval_parts}
    return {"wall_s": wall, "val_loss": final["val_loss"], "steps": final["step"],
            "time_to_first_step_s": final["time_to_first_step"], "train_wall_s": final["wall_time"],
            "val_loss_by_part": by_part}


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("repeats", 3, "Runs of `lmjax train`.", flag_values=fv)
    flags.DEFINE_float("target", 1.88, "The validation loss every run must reach.", flag_values=fv)
    flags.DEFINE_list("eval_parts", [], "After each run, its validation loss on these parts too "
                      "(all, tune, test; see config.data.val_part), untimed.", flag_values=fv)
    records.define_flags(fv)
    flags.DEFINE_multi_string("append_records", None, "Only append rows for these earlier records "
                              "(labels from --label, ';'-separated); repeat for several.", flag_values=fv)


def append_records(paths: list[str], results_md: str, labels: list[str]) -> None:
    """Rows for records written earlier (e.g. with --no_append while exploring), in order."""
    for path, label in zip(paths, labels + [""] * len(paths)):
        rec = json.loads(Path(path).read_text())
        rec["label"] = label or rec["label"]
        records.SPEEDRUN.add(Path(results_md), rec)


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    fv = cli.parse("benchmarks.speedrun", __doc__, argv, _define_flags, config="optional")
    if fv.append_records:
        append_records(fv.append_records, fv.results_md, fv.label.split(";") if fv.label else [])
        return {}
    if fv.config is None:
        raise ConfigError("--config is required, e.g. --config configs/speedrun_cpu.py")
    config, overrides = fv["config"].config_filename, cli.config_overrides(argv)
    for part in fv.eval_parts:  # checked before anything runs, by the key's own schema
        DataConfig(val_part=part)
    load = records.load_avg()
    if load is not None and load > 1:
        print(f"[speedrun] warning: load average {load:.2f} > 1 on this host", file=sys.stderr)
    runs = []
    with tempfile.TemporaryDirectory(prefix="lmjax-speedrun-") as tmp:
        for i in range(fv.repeats):
            runs.append(run_once(config, overrides, Path(tmp) / f"run{i}", fv.eval_parts))
            print(f"[speedrun] run {i + 1}: {runs[-1]['wall_s']:.1f} s, val loss "
                  f"{runs[-1]['val_loss']:.4f}", file=sys.stderr)
    losses = [r["val_loss"] for r in runs]
    fields = {"config": config, "overrides": overrides, "label": fv.label, "runs": runs,
              "val_part": fv.config.data.val_part,
              "median_wall_s": statistics.median(r["wall_s"] for r in runs), "target": fv.target,
              "target_met": max(losses) <= fv.target}
    return records.save_record(fields, "speedrun", fv, records.SPEEDRUN, load=load)


if __name__ == "__main__":
    cli.run(main)
