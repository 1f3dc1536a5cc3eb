"""XLA flags that lmjax's command-line processes add before JAX starts a backend.

- CPU: YNNPACK dot fusions off (`--xla_cpu_experimental_ynn_fusion_type=`, Eigen's dots instead):
  on the 2-core CPU the nanoGPT default shape's train step went from 14.8 to 11.0 s and the baby
  shape's from 58-63 to 55-56 ms (benchmarks/RESULTS.md, "CPU levers measured").
- GPU: Triton gemm fusions off (`--xla_gpu_enable_triton_gemm=false`, cuBLAS for every matmul):
  XLA autotunes each Triton gemm fusion at compile time; on an H100 GPT-2 small's scanned train
  step reached its first step in 13.1 s instead of 56.7 s, and ran at 57.5 ms instead of 58.8
  (benchmarks/RESULTS.md, "GPU").
Each flag only affects its own backend. A flag the installed jaxlib does not know aborts XLA at
start-up, so they are only added for the jaxlib versions they were checked on; a user's own value
of a flag is kept, and LMJAX_XLA_DEFAULTS=0 adds nothing.
"""

from __future__ import annotations

import os

from lmjax.process.settings import Settings

DEFAULT_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=", "--xla_gpu_enable_triton_gemm=false")
CHECKED_JAXLIB = ((0, 10), (0, 12))  # [first, last) minor versions known to accept the flags


def _jaxlib_version() -> tuple[int, int]:
    from jaxlib import version

    major, minor = version.__version__.split(".")[:2]
    return int(major), int(minor)


def add_default_xla_flags(environ=None, jaxlib_version: tuple[int, int] | None = None) -> str:
    """Append DEFAULT_FLAGS to environ['XLA_FLAGS'] (default os.environ) where they are missing;
    returns the new value. Takes effect only before JAX initialises its first backend."""
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS", "")
    version = jaxlib_version or _jaxlib_version()
    if (not Settings.read(environ).xla_defaults
            or not CHECKED_JAXLIB[0] <= version < CHECKED_JAXLIB[1]):
        return flags
    for flag in DEFAULT_FLAGS:
        if flag.split("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    environ["XLA_FLAGS"] = flags
    return flags
