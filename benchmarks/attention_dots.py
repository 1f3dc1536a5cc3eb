"""The attention core's batched matmuls alone, JAX against PyTorch, on this host.

    python -m benchmarks.attention_dots [--shape baby|default] [--calls 300] [--rounds 3]
        [--torch_python /tmp/torchvenv/bin/python] [--label ...] [--no_append]

Why: in the profile of the baby train step (B=12, H=4, T=64, D=32) the 24 batched dots of the
attention core take ~8.5 of ~40 ms of kernels at 25-45 GFLOP/s, against ~166 GFLOP/s for the
step's 2-D dots. This times the forward pair in isolation: scores `q @ k^T` ([B, H, T, D] x
[B, H, T, D] -> [B, H, T, T]) and `p @ v` ([B, H, T, T] x [B, H, T, D]), as lmjax's einsums (with the
XLA flags `lmjax` sets) and as PyTorch's `@` (2 threads, float32), in alternating rounds of fresh
processes. Writes a JSON record (median microseconds per call per round, GFLOP/s) under
benchmarks/results/ and a row of the "Attention core's batched matmuls" table of RESULTS.md. The
PyTorch side needs only torch (see benchmarks/nanogpt_reference.py for its venv), so this module
imports neither numpy nor jax there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks.speedrun import add_record_flags, run_json, save_record

SHAPES = {"baby": (12, 4, 64, 32), "default": (64, 6, 256, 64)}  # B, H, T, D as in vs_nanogpt
TABLE_TITLE = "## Attention core's batched matmuls alone, JAX against PyTorch"
TABLE_HEADER = """\
Written by `python -m benchmarks.attention_dots --torch_python ...` (see benchmarks/README.md):
median microseconds per call of the attention core's forward batched matmuls, each framework in
a fresh process per round, rounds alternated; `q @ k^T` and `p @ v` cost 2*B*H*T*T*D FLOPs each.

| date | host | shape (B, H, T, D) | JAX qk / pv us | PyTorch qk / pv us | JAX qk / pv GFLOP/s | PyTorch qk / pv GFLOP/s |
|---|---|---|---|---|---|---|
"""

def _median_us(fn, calls: int) -> float:
    for _ in range(max(calls // 10, 3)):
        fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def time_jax(shape: tuple[int, ...], calls: int) -> dict[str, float]:
    from lmjax.process.xla_flags import add_default_xla_flags

    add_default_xla_flags()  # before jax starts its backend, as the `lmjax` command does
    import jax
    import jax.numpy as jnp

    b, h, t, d = shape
    q_BHTD, k_BHTD = (jax.random.normal(jax.random.key(i), (b, h, t, d)) for i in (0, 1))
    p_BHTT = jax.random.normal(jax.random.key(2), (b, h, t, t))
    scores = jax.jit(lambda q, k: jnp.einsum("bhqd,bhkd->bhqk", q, k))
    mix = jax.jit(lambda p, v: jnp.einsum("bhqk,bhkd->bhqd", p, v))
    return {"qk_us": _median_us(lambda: scores(q_BHTD, k_BHTD).block_until_ready(), calls),
            "pv_us": _median_us(lambda: mix(p_BHTT, k_BHTD).block_until_ready(), calls)}


def time_torch(shape: tuple[int, ...], calls: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(2)  # as benchmarks/nanogpt_reference.py
    b, h, t, d = shape
    q, k, p = torch.randn(b, h, t, d), torch.randn(b, h, t, d), torch.randn(b, h, t, t)
    return {"qk_us": _median_us(lambda: q @ k.transpose(-1, -2), calls),
            "pv_us": _median_us(lambda: p @ k, calls)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=SHAPES, default="baby")
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3, help="0: time --framework once in this process")
    p.add_argument("--framework", choices=("jax", "torch"), default="jax")
    p.add_argument("--torch_python", default="", help="a PyTorch interpreter; empty: JAX only")
    add_record_flags(p)
    args = p.parse_args(argv)
    shape = SHAPES[args.shape]
    if args.rounds == 0:  # a child: one framework, one line of JSON
        timings = (time_jax if args.framework == "jax" else time_torch)(shape, args.calls)
        print(json.dumps(timings))
        return timings
    if args.torch_python and not Path(args.torch_python).exists():
        p.error(f"no PyTorch interpreter at {args.torch_python}; see benchmarks/nanogpt_reference.py")
    sides = {"jax": sys.executable, **({"torch": args.torch_python} if args.torch_python else {})}
    child = ["-m", "benchmarks.attention_dots", "--shape", args.shape, "--calls", str(args.calls),
             "--rounds", "0", "--framework"]
    load = os.getloadavg()[0]
    rounds = [{side: run_json([python, *child, side]) for side, python in sides.items()}
              for _ in range(args.rounds)]
    b, h, t, d = shape
    flop = 2 * b * h * t * t * d  # each of the two dots
    median_us = {f"{side}_{dot}": round(statistics.median(r[side][dot] for r in rounds), 1)
                 for side in sides for dot in ("qk_us", "pv_us")}
    gflops = {key[:-3]: round(flop / us / 1e3, 1) for key, us in median_us.items()}
    return save_record({"shape": args.shape, "B_H_T_D": shape, "calls": args.calls, "label": args.label,
                        "rounds": rounds, "median_us": median_us, "gflops": gflops},
                       f"attention_dots-{args.shape}", args, load, row, TABLE_TITLE, TABLE_HEADER)


def row(rec: dict) -> str:
    def pair(side: str, table: str, suffix: str) -> str:
        if f"{side}_qk{suffix}" not in rec[table]:
            return "-"
        return " / ".join(f"{rec[table][f'{side}_{dot}{suffix}']:.1f}" for dot in ("qk", "pv"))

    return (f"| {rec['date'][:16].replace('T', ' ')} | {rec['host']['cpu_count']} x cpu "
            f"| {rec['shape']} {tuple(rec['B_H_T_D'])} | {pair('jax', 'median_us', '_us')} "
            f"| {pair('torch', 'median_us', '_us')} | {pair('jax', 'gflops', '')} | {pair('torch', 'gflops', '')} |")


if __name__ == "__main__":
    main()
