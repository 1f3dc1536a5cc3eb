"""What a reader needs to reproduce a result a year later: the code, the libraries, the machine.

`provenance()` goes into every run.json (and benchmark record): the git commit of the lmjax
checkout and whether its tree had uncommitted changes, the versions of Python and the JAX stack,
the host's CPU (model, vector extensions, cores) and the accelerator kind, and the process
settings that change numerics or speed (XLA flags, malloc tunables).
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint")
# The x86 / Arm vector extensions that decide CPU matmul speed, as /proc/cpuinfo names them.
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_vnni",
                "amx_bf16", "amx_tile", "asimd", "sve", "sve2")
CPUINFO = "/proc/cpuinfo"


def git_state(path: str | os.PathLike | None = None) -> dict:
    """{"commit": sha or None, "dirty": bool or None} of the checkout holding `path` (default:
    this package). None when lmjax is not a git checkout (an installed wheel) or git is missing."""
    root = Path(path) if path is not None else Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.lru_cache(maxsize=1)
def cpu(cpuinfo: str = CPUINFO) -> dict:
    """{"model", "vector_extensions", "cores"} of this host's CPU (model from /proc/cpuinfo on
    Linux, platform.processor() elsewhere)."""
    model, flags = "", set()
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model") and not model:
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model or platform.processor() or platform.machine(),
            "vector_extensions": [f for f in VECTOR_FLAGS if f in flags],
            "cores": os.cpu_count()}


def host(devices=None) -> dict:
    """The machine: CPU, and the accelerator kind and count when JAX runs on one."""
    out = {"hostname": platform.node(), "machine": platform.machine(), "cpu": cpu()}
    if devices:
        d0 = devices[0]
        out["platform"] = d0.platform
        out["device_kind"] = d0.device_kind
        out["device_count"] = len(devices)
    return out


def provenance(devices=None, environ=None) -> dict:
    """code, versions, host and the process settings, for run.json."""
    env = os.environ if environ is None else environ
    return {
        "code": git_state(),
        "versions": versions(),
        "host": host(devices),
        "process": {"argv": list(sys.argv), "xla_flags": env.get("XLA_FLAGS", ""),
                    "glibc_tunables": env.get("GLIBC_TUNABLES", "")},
    }
