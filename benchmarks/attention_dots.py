"""The attention core's batched matmuls alone, JAX against PyTorch, on this host.

    python -m benchmarks.attention_dots [--shape baby|default] [--calls 300] [--rounds 3]
        [--torch_python /tmp/torchvenv/bin/python] [--label ...] [--no_append]

Why: in the profile of the baby train step (B=12, H=4, T=64, D=32) the 24 batched dots of the
attention core take ~8.5 of ~40 ms of kernels at 25-45 GFLOP/s, against ~166 GFLOP/s for the
step's 2-D dots. This times the forward pair in isolation: scores `q @ k^T` and `p @ v`, as
lmjax's einsums (in a process set up as `lmjax` sets its own up) and as PyTorch's `@` (2 threads,
float32), each in a fresh process per round (benchmarks/dot_timings.py), rounds alternated.
Writes a JSON record (median microseconds per call per round, GFLOP/s) under benchmarks/results/
and a row of the "Attention core's batched matmuls" table of RESULTS.md. This process runs no
JAX and leaves itself as it is, so the PyTorch child starts without lmjax's malloc tunables.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from absl import flags

from benchmarks import cli, records
from lmjax.errors import ConfigError

SHAPES = {"baby": (12, 4, 64, 32), "default": (64, 6, 256, 64)}  # B, H, T, D as in vs_nanogpt
CHILD = Path(__file__).with_name("dot_timings.py")


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_enum("shape", "baby", list(SHAPES), "Attention shape (B, H, T, D) of nanoGPT's "
                      "baby or default config.", flag_values=fv)
    flags.DEFINE_integer("calls", 300, "Timed calls per dot, per round.", flag_values=fv)
    flags.DEFINE_integer("rounds", 3, "Rounds, each a fresh process per framework.", flag_values=fv)
    flags.DEFINE_string("torch_python", "", "A PyTorch interpreter; empty: JAX only.", flag_values=fv)
    records.define_flags(fv)


def medians(rounds: list[dict], shape: tuple[int, ...]) -> tuple[dict, dict]:
    """Median microseconds per dot and side over the rounds, and the GFLOP/s they make."""
    b, h, t, d = shape
    flop = 2 * b * h * t * t * d  # each of the two dots
    median_us = {f"{side}_{dot}": round(statistics.median(r[side][dot] for r in rounds), 1)
                 for side in rounds[0] for dot in ("qk_us", "pv_us")}
    return median_us, {key[:-3]: round(flop / us / 1e3, 1) for key, us in median_us.items()}


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    fv = cli.parse("benchmarks.attention_dots", __doc__, argv, _define_flags)
    if fv.rounds < 1 or fv.calls < 1:
        raise ConfigError("--rounds and --calls must be >= 1")
    if fv.torch_python and not Path(fv.torch_python).exists():
        raise ConfigError(f"no PyTorch interpreter at {fv.torch_python}; see benchmarks/nanogpt_reference.py")
    shape = SHAPES[fv.shape]
    sides = {"jax": sys.executable, **({"torch": fv.torch_python} if fv.torch_python else {})}
    load = records.load_avg()
    rounds = [{side: cli.run_json([python, str(CHILD), side, *map(str, shape), str(fv.calls)])
               for side, python in sides.items()} for _ in range(fv.rounds)]
    median_us, gflops = medians(rounds, shape)
    fields = {"shape": fv.shape, "B_H_T_D": shape, "calls": fv.calls, "label": fv.label,
              "rounds": rounds, "median_us": median_us, "gflops": gflops}
    return records.save_record(fields, f"attention_dots-{fv.shape}", fv, records.ATTENTION_DOTS, load=load)


if __name__ == "__main__":
    cli.run(main)
