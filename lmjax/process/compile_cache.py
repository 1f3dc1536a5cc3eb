"""JAX's persistent compilation cache, so the second start of a config skips XLA compilation.

`lmjax train/eval/sample` turn it on (before anything compiles); library users call
`enable_compilation_cache()` themselves. The cache lives in <LMJAX_CACHE_DIR or
~/.cache/lmjax>/xla; LMJAX_COMPILE_CACHE=0 turns it off, and a directory the user already gave
JAX (JAX_COMPILATION_CACHE_DIR) is left as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from lmjax.process.settings import Settings


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> Path | None:
    """Point JAX's persistent cache at `directory` (default <cache dir>/xla); returns it, or None
    when LMJAX_COMPILE_CACHE turns it off."""
    settings = Settings.read()
    if not settings.compile_cache:
        return None
    if jax.config.jax_compilation_cache_dir and directory is None:
        return Path(jax.config.jax_compilation_cache_dir)
    path = Path(directory) if directory is not None else settings.cache_dir / "xla"
    jax.config.update("jax_compilation_cache_dir", str(path))
    # JAX only stores programs that took >= 1 s to compile by default; on CPU most of a small
    # model's start-up is many sub-second compiles (init, train step, eval step).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path
