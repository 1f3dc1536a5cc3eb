"""lmjax's train step against nanoGPT's PyTorch step, interleaved on the same host in the same hour.

    python -m benchmarks.vs_nanogpt --shape baby --rounds 3 [--torch_python /tmp/torchvenv/bin/python]
    python -m benchmarks.vs_nanogpt --shape default --rounds 2 --torch_hugepages

Each round runs the harness (`benchmarks.harness`, as `lmjax` runs: its XLA flags and malloc tunables)
and then `benchmarks/nanogpt_reference.py` in the torch venv, each in a fresh process, so a drift
of the host's speed hits both sides alike. With --torch_hugepages each round also runs PyTorch
under the same `GLIBC_TUNABLES` lmjax gives itself, so no one can say lmjax won on the allocator.
Writes `benchmarks/results/<date>-vs_nanogpt-<shape>.json` and a row of the "CPU throughput
against nanoGPT" table in RESULTS.md: the ratio is nanoGPT's median step time over lmjax's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.speedrun import REPO, append, run_json
from lmjax.process.hugepages import TUNABLES

TABLE_TITLE = "## CPU throughput against nanoGPT, same hour"
TABLE_HEADER = """\
Rounds of `python -m benchmarks.vs_nanogpt` (see benchmarks/README.md): each round one harness run
of lmjax (synthetic batches, as `lmjax train` runs) and one of nanoGPT's PyTorch step
(`benchmarks/nanogpt_reference.py`, PyTorch CPU eager, float32, 2 threads), back to back. ms are
medians of the timed steps per round; **ratio** = median nanoGPT ms / median lmjax ms (> 1: lmjax
faster). Goal: >= 1.3 on the baby shape, >= 1.15 on the default shape. The "+ huge pages" column runs
PyTorch under lmjax's own GLIBC_TUNABLES: huge pages only until 08:15, huge pages and freed memory
kept from 10:55 on.

| date | shape | lmjax ms per round | nanoGPT ms per round | nanoGPT + huge pages ms | ratio | ratio vs nanoGPT + huge pages |
|---|---|---|---|---|---|---|
"""
SHAPES = {  # harness arguments, reference arguments
    "baby": (["--config", "configs/shakespeare_char.py", "--steps", "100", "--warmup", "10"],
             ["--shape", "baby", "--steps", "100", "--warmup", "10"]),
    "default": (["--config", "configs/shakespeare_char.py", "--config.model.num_layers=6",
                 "--config.model.num_heads=6", "--config.model.width=384",
                 "--config.train.seq_len=256", "--config.train.batch_size=64",
                 "--steps", "5", "--warmup", "1"],
                ["--shape", "default", "--steps", "5", "--warmup", "1"]),
}


def lmjax_ms(shape: str) -> float:
    with tempfile.TemporaryDirectory(prefix="lmjax-vs-") as tmp:
        rec = run_json([sys.executable, "-m", "benchmarks.harness", *SHAPES[shape][0],
                         "--sample_tokens", "0", "--nodata_iterator", "--no_append", "--out", tmp],
                        dict(os.environ))
    return rec["figures"]["step_time_s"]["median"] * 1e3


def torch_ms(shape: str, python: str, hugepages: bool) -> float:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if hugepages:
        env["GLIBC_TUNABLES"] = ":".join(TUNABLES)
    return run_json([python, "benchmarks/nanogpt_reference.py", *SHAPES[shape][1]], env)["step_ms_median"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=SHAPES, default="baby")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--torch_python", default="/tmp/torchvenv/bin/python")
    p.add_argument("--torch_hugepages", action="store_true")
    p.add_argument("--no_append", action="store_true")
    p.add_argument("--results_md", default=str(REPO / "benchmarks" / "RESULTS.md"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if not Path(args.torch_python).exists():
        p.error(f"no PyTorch interpreter at {args.torch_python}; see benchmarks/README.md")
    rounds = []
    for i in range(args.rounds):
        r = {"lmjax_ms": lmjax_ms(args.shape),
             "torch_ms": torch_ms(args.shape, args.torch_python, hugepages=False)}
        if args.torch_hugepages:
            r["torch_hugepages_ms"] = torch_ms(args.shape, args.torch_python, hugepages=True)
        rounds.append(r)
        print(f"[vs_nanogpt] round {i + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()),
              file=sys.stderr)
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    now = dt.datetime.now(dt.timezone.utc)
    rec = {"date": now.isoformat(timespec="seconds").replace("+00:00", "Z"), "shape": args.shape,
           "rounds": rounds, "median_ms": med, "ratio": med["torch_ms"] / med["lmjax_ms"],
           "ratio_vs_torch_hugepages": (med["torch_hugepages_ms"] / med["lmjax_ms"]
                                        if "torch_hugepages_ms" in med else None),
           "host": {"cpu_count": os.cpu_count(), "machine": platform.machine(),
                    "load_avg_1m_end": os.getloadavg()[0]}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{now.strftime('%Y%m%dT%H%M%SZ')}-vs_nanogpt-{args.shape}.json").write_text(
        json.dumps(rec, indent=2) + "\n")
    if not args.no_append:
        append(Path(args.results_md), row(rec), TABLE_TITLE, TABLE_HEADER)
    print(json.dumps(rec))
    return rec


def row(rec: dict) -> str:
    def cells(key):
        return " / ".join(f"{r[key]:,.1f}" for r in rec["rounds"]) if key in rec["rounds"][0] else "-"
    vs_hp = rec["ratio_vs_torch_hugepages"]
    return (f"| {rec['date'][:16].replace('T', ' ')} | {rec['shape']} | {cells('lmjax_ms')} "
            f"| {cells('torch_ms')} | {cells('torch_hugepages_ms')} | **{rec['ratio']:.2f}x** "
            f"| {f'{vs_hp:.2f}x' if vs_hp else '-'} |")


if __name__ == "__main__":
    main()
