"""How lmjax sets up a process: environment settings, malloc tunables, XLA flags, the compile
cache, hardware peaks and what gets recorded about the machine.

`setup_command_process()` is the one entry for command-line processes (`lmjax ...` and the
benchmarks). `import lmjax` never calls it: a notebook's process is left as it is.
"""

from __future__ import annotations

import gc


def setup_command_process(*, compile_cache: bool = True) -> None:
    """Call first thing in a command-line process, before JAX is imported. compile_cache=False
    leaves JAX's persistent compile cache off (benchmarks that time compilation)."""
    from lmjax.process.hugepages import reexec_with_hugepages

    reexec_with_hugepages()  # first: glibc reads its tunables at process start, JAX not loaded yet
    # Start-up creates a few million long-lived objects (JAX's modules, the traced programs), and
    # with the default thresholds the collector rescans them over and over: launch to first step
    # 2.44 -> 2.14 s (median of 12, speedrun config; 2.06 s with the collector off).
    gc.set_threshold(100_000, 50, 100)
    from lmjax.process.xla_flags import add_default_xla_flags

    add_default_xla_flags()  # before any JAX backend starts
    if compile_cache:
        from lmjax.process.compile_cache import enable_compilation_cache

        enable_compilation_cache()
