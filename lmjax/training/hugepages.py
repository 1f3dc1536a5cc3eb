"""Transparent huge pages for glibc's malloc in lmjax's command-line processes.

Why: XLA:CPU takes every step's temporary buffers fresh from malloc, and on Linux the large ones
are new mmaps whose 4 KiB pages fault in one at a time; on the 2-core VM a 100 MB elementwise
op took 38 ms with a fresh output against 4 ms in place. With `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`
malloc asks for transparent huge pages (madvise) and the same op takes 15 ms; the nanoGPT
default-shape train step went from 10.6-11.0 to 8.5-9.1 s and the baby shape's from 52-59 to
41-49 ms (benchmarks/RESULTS.md, "CPU levers measured").

glibc reads its tunables only at process start, so `lmjax` re-executes itself once with the
tunable added, before JAX is imported (~0.1 s). It does so only where it can help: Linux with
glibc >= 2.35 and the kernel's THP mode 'madvise' ('always' already has them, 'never' cannot).
LMJAX_HUGEPAGES=0 turns it off; a GLIBC_TUNABLES that already names glibc.malloc.hugetlb is kept.
Library users (notebooks) can start their process with the variable set themselves.
"""

from __future__ import annotations

import os
import sys

from lmjax.training.env import switched_off

TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


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
    thp_mode = _thp_mode() if thp_mode is None else thp_mode
    if (switched_off("LMJAX_HUGEPAGES", environ) or "glibc.malloc.hugetlb" in tunables
            or sys.platform != "linux" or glibc is None or glibc < (2, 35) or thp_mode != "madvise"):
        return None
    environ["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
    return environ


def reexec_with_hugepages() -> None:
    """Re-execute this process (same interpreter and arguments) with the tunable set, where it
    helps; otherwise return. Call it first thing, before JAX or any thread starts."""
    environ = hugepage_environ()
    if environ is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        # argv[0] as the full interpreter path: a bare 'python3' would be looked up on PATH again.
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
