"""Wall clock of `lmjax train` from process start to its final full-split validation loss.

    python -m benchmarks.speedrun --config configs/speedrun_cpu.py [--config.KEY=VAL ...]
        [--repeats 3] [--label "what this row changes"] [--target 1.88] [--no_append]

Runs `lmjax train` (the console script) `--repeats` times as a user would (a fresh workdir each
time, the user's compilation cache as it is), timing each process from launch to exit: imports,
data loading, compile, training, the final evaluation and the last checkpoint are all inside.
The run's own last line of JSON gives its validation loss (full split when the config sets
config.train.eval_batches=0). Appends a row (median wall clock, every run's loss) to the
"CPU speedrun" table of benchmarks/RESULTS.md and writes a JSON record under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TABLE_TITLE = "## CPU speedrun: `lmjax train` to tinyshakespeare char val loss <= 1.88"
TABLE_HEADER = """\
Wall clock from launching `lmjax train` to its exit (imports, data, compile, training, final
full-split evaluation, last checkpoint), median of the runs listed; written by
`python -m benchmarks.speedrun` (see benchmarks/README.md). Goal: <= 35 s at val loss <= 1.88
(nanoGPT's baby budget: ~70 s here).

| date | host | label | config | runs (s) | median s | val loss | val loss <= target |
|---|---|---|---|---|---|---|---|
"""


def run_json(cmd: list[str], env: dict | None = None) -> dict:
    """Run `cmd` in the repository and return the JSON object on its last stdout line; exit with
    its last stderr line if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[:3])} failed ({proc.returncode}): "
                 f"{proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def lmjax_command() -> list[str]:
    """The `lmjax` console script beside this interpreter, as a user runs it, or its equivalent."""
    script = Path(sys.executable).parent / "lmjax"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from lmjax.cli import entry; entry()"]


def run_once(config: str, overrides: list[str], workdir: Path) -> dict:
    cmd = [*lmjax_command(), "train", f"--config={config}", *overrides,
           f"--workdir={workdir}", "--noprogress", "--config.sample.prompt="]
    t = time.perf_counter()
    final = run_json(cmd)
    wall = time.perf_counter() - t
    return {"wall_s": wall, "val_loss": final["val_loss"], "steps": final["step"],
            "time_to_first_step_s": final["time_to_first_step"], "train_wall_s": final["wall_time"]}


def append(path: Path, row: str, title: str = TABLE_TITLE, header: str = TABLE_HEADER) -> None:
    """Add `row` at the end of the table under the section `title`, creating the section (title,
    then `header`: notes and the table's header rows) at the end of the file if it is missing."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if title not in text:
        text = text.rstrip("\n") + f"\n\n{title}\n\n{header}"
    lines = text.splitlines()
    at = lines.index(title)
    while not lines[at].startswith("|---"):
        at += 1
    while at + 1 < len(lines) and lines[at + 1].startswith("|"):
        at += 1
    lines.insert(at + 1, row)
    path.write_text("\n".join(lines) + "\n")


def add_record_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a benchmark that writes a JSON record and a RESULTS.md row (see save_record)."""
    p.add_argument("--label", default="")
    p.add_argument("--no_append", action="store_true")
    p.add_argument("--results_md", default=str(REPO / "benchmarks" / "RESULTS.md"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder of the JSON record")


def parse_with_overrides(p: argparse.ArgumentParser, argv) -> tuple[argparse.Namespace, list[str]]:
    """The benchmark's own flags, and the --config.KEY=VAL overrides it passes to `lmjax train`."""
    args, overrides = p.parse_known_args(argv)
    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad:
        p.error(f"unknown arguments {bad}; config overrides look like --config.train.lr=3e-3")
    return args, overrides


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--target", type=float, default=1.88)
    add_record_flags(p)
    p.add_argument("--append_records", nargs="*", default=None, metavar="JSON",
                   help="only append rows for these earlier records (labels from --label, ';'-separated)")
    args, overrides = parse_with_overrides(p, argv)
    if args.append_records is not None:
        append_records(args.append_records, args.results_md, args.label.split(";") if args.label else [])
        return {}
    if not args.config:
        p.error("--config is required, e.g. --config configs/speedrun_cpu.py")
    load = os.getloadavg()[0]
    if load > 1:
        print(f"[speedrun] warning: load average {load:.2f} > 1 on this host", file=sys.stderr)
    runs = []
    with tempfile.TemporaryDirectory(prefix="lmjax-speedrun-") as tmp:
        for i in range(args.repeats):
            runs.append(run_once(args.config, overrides, Path(tmp) / f"run{i}"))
            print(f"[speedrun] run {i + 1}: {runs[-1]['wall_s']:.1f} s, val loss "
                  f"{runs[-1]['val_loss']:.4f}", file=sys.stderr)
    walls = [r["wall_s"] for r in runs]
    losses = [r["val_loss"] for r in runs]
    return save_record({"config": args.config, "overrides": overrides, "label": args.label, "runs": runs,
                        "median_wall_s": statistics.median(walls), "target": args.target,
                        "target_met": max(losses) <= args.target}, "speedrun", args, load, row)


def save_record(fields: dict, kind: str, args, load: float, row_of, title: str = TABLE_TITLE,
                header: str = TABLE_HEADER) -> dict:
    """Date and host added to `fields`: written to <args.out>/<date>-<kind>.json, its row appended to
    the table under `title` in args.results_md (unless args.no_append), and printed."""
    now = dt.datetime.now(dt.timezone.utc)
    rec = {"date": now.isoformat(timespec="seconds").replace("+00:00", "Z"), **fields,
           "host": {"cpu_count": os.cpu_count(), "machine": platform.machine(),
                    "load_avg_1m_start": load, "load_avg_1m_end": os.getloadavg()[0]}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{now.strftime('%Y%m%dT%H%M%SZ')}-{kind}.json").write_text(json.dumps(rec, indent=2) + "\n")
    if not args.no_append:
        append(Path(args.results_md), row_of(rec), title, header)
    print(json.dumps(rec))
    return rec


def row(rec: dict) -> str:
    config = f"`{Path(rec['config']).stem}`" + "".join(f" `{o}`" for o in rec["overrides"])
    walls = " / ".join(f"{r['wall_s']:.1f}" for r in rec["runs"])
    losses = " / ".join(f"{r['val_loss']:.3f}" for r in rec["runs"])
    return (f"| {rec['date'][:16].replace('T', ' ')} | {rec['host']['cpu_count']} x cpu "
            f"| {rec['label'] or '-'} | {config} | {walls} | {rec['median_wall_s']:.1f} | {losses} "
            f"| {'yes' if rec['target_met'] else 'no'} |")


def append_records(paths: list[str], results_md: str, labels: list[str]) -> None:
    """Rows for records written earlier (e.g. with --no_append while exploring), in order."""
    for path, label in zip(paths, labels + [""] * len(paths)):
        rec = json.loads(Path(path).read_text())
        rec["label"] = label or rec["label"]
        append(Path(results_md), row(rec))


if __name__ == "__main__":
    main()
