"""One framework's timing of the attention core's two forward batched matmuls, in this process:
the child that benchmarks/attention_dots.py starts once per round and framework.

    python benchmarks/dot_timings.py jax|torch B H T D CALLS

Prints one JSON line: the median microseconds per call of the scores `q @ k^T` ([B, H, T, D] x
[B, H, T, D] -> [B, H, T, T]) and the mix `p @ v` ([B, H, T, T] x [B, H, T, D]). JAX runs lmjax's
einsums in a process set up as `lmjax` commands set theirs up (`setup_command_process`: malloc
tunables and XLA flags; no compile cache); PyTorch runs its `@` with 2 threads, float32, under
its own interpreter (the venv of benchmarks/nanogpt_reference.py), which has none of lmjax's
dependencies: hence argparse here, and nothing imported but the standard library and the
framework being timed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def _median_us(fn, calls: int) -> float:
    for _ in range(max(calls // 10, 3)):
        fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def time_jax(shape: tuple[int, ...], calls: int) -> dict:
    from lmjax.process import setup_command_process

    setup_command_process(compile_cache=False)  # may re-execute this process; before JAX starts
    import jax
    import jax.numpy as jnp

    b, h, t, d = shape
    q_BHTD, k_BHTD = (jax.random.normal(jax.random.key(i), (b, h, t, d)) for i in (0, 1))
    p_BHTT = jax.random.normal(jax.random.key(2), (b, h, t, t))
    scores = jax.jit(lambda q, k: jnp.einsum("bhqd,bhkd->bhqk", q, k))
    mix = jax.jit(lambda p, v: jnp.einsum("bhqk,bhkd->bhqd", p, v))
    return {"qk_us": _median_us(lambda: scores(q_BHTD, k_BHTD).block_until_ready(), calls),
            "pv_us": _median_us(lambda: mix(p_BHTT, k_BHTD).block_until_ready(), calls),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}


def time_torch(shape: tuple[int, ...], calls: int) -> dict:
    import torch

    torch.set_num_threads(2)  # as benchmarks/nanogpt_reference.py
    b, h, t, d = shape
    q, k, p = torch.randn(b, h, t, d), torch.randn(b, h, t, d), torch.randn(b, h, t, t)
    return {"qk_us": _median_us(lambda: q @ k.transpose(-1, -2), calls),
            "pv_us": _median_us(lambda: p @ k, calls), "torch": torch.__version__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("framework", choices=("jax", "torch"))
    p.add_argument("shape", type=int, nargs=4, metavar="B H T D")
    p.add_argument("calls", type=int)
    args = p.parse_args()
    timings = (time_jax if args.framework == "jax" else time_torch)(tuple(args.shape), args.calls)
    print(json.dumps(timings))


if __name__ == "__main__":
    main()
