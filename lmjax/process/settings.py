"""Every LMJAX_* environment variable, read in this one place.

    LMJAX_DATA_DIR       where named corpora live (tinyshakespeare/input.txt); config.data.data_dir wins
    LMJAX_CACHE_DIR      token caches, the XLA compile cache, the CPU peak (default ~/.cache/lmjax);
                         config.data.cache_dir wins for token caches
    LMJAX_COMPILE_CACHE  0: no persistent XLA compile cache for `lmjax` commands
    LMJAX_XLA_DEFAULTS   0: keep XLA's own CPU flags (lmjax turns YNNPACK dot fusions off)
    LMJAX_HUGEPAGES      0: `lmjax` commands do not re-execute with glibc malloc tunables

Switches are on unless set to one of OFF. `Settings.read()` takes a snapshot of the environment
(os.environ by default); nothing here caches it, so a test passes its own mapping instead of
patching a module.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping

OFF = ("0", "false", "no", "off")


def _on(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "1").strip().lower() not in OFF


@dataclasses.dataclass(frozen=True)
class Settings:
    data_dir: str  # "" when unset
    cache_dir: Path
    compile_cache: bool
    xla_defaults: bool
    hugepages: bool

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            data_dir=env.get("LMJAX_DATA_DIR", ""),
            cache_dir=Path(os.path.expanduser(env.get("LMJAX_CACHE_DIR") or "~/.cache/lmjax")),
            compile_cache=_on(env, "LMJAX_COMPILE_CACHE"),
            xla_defaults=_on(env, "LMJAX_XLA_DEFAULTS"),
            hugepages=_on(env, "LMJAX_HUGEPAGES"),
        )
