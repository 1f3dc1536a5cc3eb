"""Sharing this machine between a sweep's concurrent runs: CPU cores, GPUs, and each run's
environment (its own CPU device count, thread counts and GPU slice)."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import subprocess

from lmjax.sweeps.spec import SweepRun


@dataclasses.dataclass
class Slot:
    """What one concurrently running run gets: CPU cores (None: all, no pinning), GPUs (None:
    whatever the sweep sees) and a thread count for OpenMP/BLAS."""

    index: int
    cpus: list[int] | None
    threads: int
    gpus: list[str] | None = None
    gpu_share: int = 1  # runs sharing each GPU

    @property
    def pinned(self) -> bool:
        """Whether the run gets a part of the machine rather than all of it."""
        return bool(self.cpus) or bool(self.gpus)

    def describe(self) -> str:
        parts = [f"cpus {','.join(map(str, self.cpus))}" if self.cpus is not None
                 else f"all {self.threads} cpus"]
        if self.gpus is not None:
            parts.append(f"gpus {','.join(self.gpus)}")
        return ", ".join(parts)


def available_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def visible_gpus() -> list[str]:
    """GPU ids this process may use, without initialising any GPU runtime here."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()]


def make_slots(parallel: int, threads_per_run: int | None = None, *, cpus: list[int] | None = None,
               gpus: list[str] | None = None) -> list[Slot]:
    """Split the machine between `parallel` runs: disjoint CPU cores (wrapping round when there
    are more runs than cores) and, with several GPUs, disjoint CUDA_VISIBLE_DEVICES slices.
    One run with no `threads_per_run` is not pinned at all."""
    cpus = available_cpus() if cpus is None else cpus
    gpus = visible_gpus() if gpus is None else gpus
    parallel = max(1, parallel)
    slots = []
    pin = parallel > 1 or bool(threads_per_run)
    n = min(len(cpus), threads_per_run or max(1, len(cpus) // parallel))
    for i in range(parallel):
        slot = Slot(index=i, cpus=None, threads=len(cpus))
        if pin:
            slot.cpus = sorted({cpus[(i * n + j) % len(cpus)] for j in range(n)})
            slot.threads = n
        if gpus and parallel > 1:
            g = max(1, len(gpus) // parallel)
            slot.gpus = [gpus[(i * g + j) % len(gpus)] for j in range(g)]
            slot.gpu_share = math.ceil(parallel / len(gpus)) if parallel > len(gpus) else 1
        slots.append(slot)
    return slots


def devices_per_run(run: SweepRun) -> int:
    """CPU devices a run's mesh needs: data (1 when -1) x fsdp x tensor."""
    if run.config is None:
        return 1
    m = run.config.mesh
    return max(1, m.data if m.data > 0 else 1) * max(1, m.fsdp) * max(1, m.tensor)


def child_env(run: SweepRun, slot: Slot | None, base: dict | None = None) -> dict[str, str]:
    """The run's environment: its own CPU device count (XLA_FLAGS), thread counts, GPU slice."""
    env = dict(os.environ if base is None else base)
    xla = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
    xla.append(f"--xla_force_host_platform_device_count={devices_per_run(run)}")
    env["XLA_FLAGS"] = " ".join(xla)
    env["PYTHONUNBUFFERED"] = "1"
    if slot is not None and slot.cpus is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(slot.threads)
    if slot is not None and slot.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(slot.gpus)
        if slot.gpu_share > 1:  # several runs per GPU: split its memory instead of preallocating 75%
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / slot.gpu_share:.3f}"
    return env


__all__ = ["Slot", "available_cpus", "child_env", "devices_per_run", "make_slots", "visible_gpus"]
