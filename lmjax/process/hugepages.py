"""Huge pages, and freed memory kept, for glibc's malloc in lmjax's command-line processes.

Why: XLA:CPU takes every step's temporary buffers fresh from malloc (one 40 MB block for the
baby shape's train step, 4.2 GB for nanoGPT's default shape), and glibc hands them back to the
kernel at the end of the step, so every step faults all of that memory in again, zero-filled.
Two sets of tunables, measured on the 2-core VM (benchmarks/RESULTS.md, "CPU levers measured"):
- `glibc.malloc.hugetlb=1`: transparent huge pages (madvise), 2 MiB per fault instead of 4 KiB.
  A fresh 100 MB elementwise output: 38 -> 15 ms (4 ms in place); default-shape step 10.6-11.0
  -> 8.5-9.1 s, baby 52-59 -> 41-49 ms.
- KEEP_FREED: one arena, no mmap, no trimming, so freed blocks stay mapped and the next step
  reuses them. One arena because glibc serves a block too big for a thread's arena with a fresh
  mmap whatever mmap_max says. Default shape: page faults per step 3,400-6,000 -> 0, system time
  1.7-2.3 -> 0.09-0.19 s, step 9.3 / 9.9 / 9.6 -> 9.1 / 8.4 / 8.8 s (runs alternated); baby:
  100-600 -> 0 faults, 7-14 -> 2-4 ms of system time, step 44.1 / 41.9 -> 41.0 / 40.6 ms.
  (With several arenas the baby step was 3-7 ms faster still, but the default shape's 4.2 GB
  block went back to a fresh mmap per step.) The cost: the process keeps its peak heap until it
  exits, which a training run reaches in its first step anyway.

glibc reads its tunables only at process start, so `lmjax` re-executes itself once with them
added, before JAX is imported (~0.1 s). Only on Linux with glibc >= 2.26; huge pages only with glibc
>= 2.35 and the kernel's THP mode 'madvise' ('always' already has them, 'never' cannot). A
tunable the user's GLIBC_TUNABLES already names is left as it is; LMJAX_HUGEPAGES=0 adds none.
Library users (notebooks) can start their process with the variable set themselves
(`GLIBC_TUNABLES` = ":".join(TUNABLES)).
"""

from __future__ import annotations

import os
import sys

from lmjax.process.settings import Settings

HUGEPAGES = "glibc.malloc.hugetlb=1"
KEEP_FREED = ("glibc.malloc.arena_max=1", "glibc.malloc.mmap_max=0",
              "glibc.malloc.trim_threshold=1099511627776")  # 1 TiB: never trim
TUNABLES = (HUGEPAGES, *KEEP_FREED)
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
# The one line a re-executing process prints on stderr (before the new image starts).
ANNOUNCEMENT = "lmjax: re-executing with GLIBC_TUNABLES="


def _glibc_version() -> tuple[int, int] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
        return tuple(int(v) for v in version.split(".")[:2]) if name == "glibc" else None
    except (AttributeError, ValueError, OSError):  # not glibc, or not a POSIX system
        return None


def _thp_mode(path: str = THP_MODE_FILE) -> str | None:
    try:
        text = open(path).read()  # "always [madvise] never"
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text else None


def hugepage_environ(environ=None, glibc=None, thp_mode=None) -> dict | None:
    """The environment to re-execute with, or None when nothing should change."""
    environ = dict(os.environ if environ is None else environ)
    tunables = environ.get("GLIBC_TUNABLES", "")
    glibc = _glibc_version() if glibc is None else glibc
    if (not Settings.read(environ).hugepages or sys.platform != "linux" or glibc is None
            or glibc < (2, 26)):  # tunables came with 2.26
        return None
    thp_mode = _thp_mode() if thp_mode is None else thp_mode
    wanted = TUNABLES if glibc >= (2, 35) and thp_mode == "madvise" else KEEP_FREED
    named = {t.split("=")[0] for t in tunables.split(":") if t}
    add = [t for t in wanted if t.split("=")[0] not in named]
    if not add:
        return None
    environ["GLIBC_TUNABLES"] = ":".join(filter(None, [tunables, *add]))
    return environ


def reexec_with_hugepages() -> None:
    """Re-execute this process (same interpreter and arguments) with the tunables set, where they
    help; otherwise return. Call it first thing, before JAX or any thread starts."""
    environ = hugepage_environ()
    if environ is not None:
        print(f"{ANNOUNCEMENT}{environ['GLIBC_TUNABLES']} (LMJAX_HUGEPAGES=0 skips this)",
              file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # argv[0] as the full interpreter path: a bare 'python3' would be looked up on PATH again.
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
