"""The attention core's batched matmuls alone, JAX against PyTorch, on this host.

    python -m benchmarks.attention_dots [--shape baby|default] [--calls 300] [--rounds 3]
        [--torch_python /tmp/torchvenv/bin/python] [--out benchmarks/results]

Why: in the profile of the baby train step (B=12, H=4, T=64, D=32) the 24 batched dots of the
attention core take ~8.5 of ~40 ms of kernels at 25-45 GFLOP/s, against ~166 GFLOP/s for the
step's 2-D dots. This times the forward pair in isolation: scores `q @ k^T` ([B, H, T, D] x
[B, H, T, D] -> [B, H, T, T]) and `p @ v` ([B, H, T, T] x [B, H, T, D]), as lmjax's einsums (with the
XLA flags `lmjax` sets) and as PyTorch's `@` (2 threads, float32), in alternating rounds of fresh
processes. Prints one JSON line (median microseconds per call per round, GFLOP/s) and writes it to
`<out>/<UTC timestamp>-attention_dots-<shape>.json`. The PyTorch side needs only torch (see
benchmarks/nanogpt_reference.py for its venv), so this file imports neither numpy nor jax there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {"baby": (12, 4, 64, 32), "default": (64, 6, 256, 64)}  # B, H, T, D as in vs_nanogpt
REPO = Path(__file__).resolve().parents[1]


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
    from lmjax.training.xla_flags import add_default_xla_flags

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


def _in_fresh_process(python: str, framework: str, shape: str, calls: int) -> dict[str, float]:
    cmd = [python, str(Path(__file__).resolve()), "--framework", framework, "--shape", shape,
           "--calls", str(calls), "--rounds", "0"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if proc.returncode != 0:
        sys.exit(f"error: {framework} timing failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=SHAPES, default="baby")
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3, help="0: time --framework once in this process")
    p.add_argument("--framework", choices=("jax", "torch"), default="jax")
    p.add_argument("--torch_python", default="", help="a PyTorch interpreter; empty: JAX only")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    shape = SHAPES[args.shape]
    if args.rounds == 0:  # a child: one framework, one line of JSON
        timings = (time_jax if args.framework == "jax" else time_torch)(shape, args.calls)
        print(json.dumps(timings))
        return timings
    if args.torch_python and not Path(args.torch_python).exists():
        p.error(f"no PyTorch interpreter at {args.torch_python}; see benchmarks/nanogpt_reference.py")
    sides = {"jax": sys.executable, **({"torch": args.torch_python} if args.torch_python else {})}
    rounds = [{side: _in_fresh_process(python, side, args.shape, args.calls)
               for side, python in sides.items()} for _ in range(args.rounds)]
    b, h, t, d = shape
    flop = 2 * b * h * t * t * d  # each of the two dots
    record = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "shape": args.shape, "B_H_T_D": shape, "calls": args.calls, "rounds": rounds,
              "median_us": {}, "gflops": {}}
    for side in sides:
        for dot in ("qk_us", "pv_us"):
            us = statistics.median(r[side][dot] for r in rounds)
            record["median_us"][f"{side}_{dot}"] = round(us, 1)
            record["gflops"][f"{side}_{dot[:2]}"] = round(flop / us / 1e3, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = record["date"].replace("-", "").replace(":", "")
    (out / f"{stamp}-attention_dots-{args.shape}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
