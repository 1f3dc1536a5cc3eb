"""Peak FLOP/s of the device, for MFU.

Accelerators: datasheet dense bf16 figures (the same yardstick MaxText and nanoGPT use).
CPU: there is no datasheet, so the rate of a jitted float32 matmul is measured once on this
machine and cached; MFU on CPU is relative to what XLA's best kernel reaches here.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp

from lmjax.process.provenance import cpu
from lmjax.process.settings import Settings

# Substring of jax's device_kind -> dense bf16 FLOP/s per chip. Order matters: first match wins.
PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 125e12),
    ("L4", 121e12),
    ("V100", 125e12),
    ("TPU v6", 918e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("TPU v3", 123e12),
)


def measure_cpu_matmul_flops(n: int = 2048, reps: int = 5) -> float:
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / sorted(times)[len(times) // 2]


def cpu_peak_flops() -> float:
    """Measured float32 matmul rate of this machine, cached per CPU model and core count."""
    host = cpu()  # keyed by CPU model: sessions land on different hosts (AMD EPYC, Intel Xeon)
    key = f"{host['model']}-{host['cores']}"
    path = Settings.read().cache_dir / "cpu_peak_flops.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if key not in cached:
        cached[key] = measure_cpu_matmul_flops()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached))
        os.replace(tmp, path)
    return cached[key]


def peak_flops(devices=None) -> float:
    """Peak FLOP/s of the devices together (CPU: the machine, however many fake devices)."""
    devices = devices or jax.devices()
    kind = devices[0].device_kind
    if devices[0].platform == "cpu":
        return cpu_peak_flops()
    for name, flops in PEAK_FLOPS:
        if name.lower() in kind.lower():
            return flops * len(devices)
    return float("nan")  # unknown accelerator: MFU is reported as NaN rather than guessed
