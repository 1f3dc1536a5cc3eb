"""Malloc tunables for lmjax's command-line processes (lmjax/process/hugepages.py)."""

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lmjax.process.hugepages import (ANNOUNCEMENT, HUGEPAGES, KEEP_FREED, THP_MODE_FILE, TUNABLES,
                                     hugepage_environ)

MADVISE = dict(glibc=(2, 36), thp_mode="madvise")
ALL = ":".join(TUNABLES)


def test_adds_the_tunables_where_they_help():
    assert hugepage_environ({"A": "1"}, **MADVISE) == {"A": "1", "GLIBC_TUNABLES": ALL}
    # No transparent huge pages to ask for: freed memory is still kept.
    assert hugepage_environ({}, glibc=(2, 31), thp_mode="madvise")["GLIBC_TUNABLES"] == ":".join(KEEP_FREED)
    assert hugepage_environ({}, glibc=(2, 36), thp_mode="always")["GLIBC_TUNABLES"] == ":".join(KEEP_FREED)


def test_keeps_what_the_user_set():
    mine = hugepage_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}, **MADVISE)["GLIBC_TUNABLES"]
    assert mine.split(":") == ["glibc.malloc.arena_max=4", HUGEPAGES, *KEEP_FREED[1:]]
    assert hugepage_environ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, **MADVISE)[
        "GLIBC_TUNABLES"] == ":".join(["glibc.malloc.hugetlb=0", *KEEP_FREED])


def test_leaves_the_process_alone_otherwise():
    assert hugepage_environ({"LMJAX_HUGEPAGES": "0"}, **MADVISE) is None
    assert hugepage_environ({"GLIBC_TUNABLES": ALL}, **MADVISE) is None  # already re-executed
    assert hugepage_environ({}, glibc=(2, 17), thp_mode="madvise") is None  # no tunables yet


def _clean_env():
    return {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LMJAX_HUGEPAGES")}


REEXEC = ("import os, sys; from lmjax.process.hugepages import reexec_with_hugepages; "
          "reexec_with_hugepages(); print(sys.argv[1:], os.environ.get('GLIBC_TUNABLES', ''))")


def _launch(code: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], env=env, check=True,
                          capture_output=True, text=True)


def _announcements(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(ANNOUNCEMENT)]


def this_machines_tunables() -> str:
    """What a command on this machine should run with, read here without hugepages.py: glibc's
    version from platform.libc_ver(), the THP mode from sysfs; the rules of the docstring (2.26
    for the tunables; huge pages from 2.35 under 'madvise')."""
    libc, version = platform.libc_ver()
    if sys.platform != "linux" or libc != "glibc" or tuple(map(int, version.split(".")[:2])) < (2, 26):
        return ""
    try:
        mode = re.search(r"\[(\w+)\]", Path(THP_MODE_FILE).read_text()).group(1)
    except (OSError, AttributeError):
        mode = None
    huge = tuple(map(int, version.split(".")[:2])) >= (2, 35) and mode == "madvise"
    return ":".join(TUNABLES if huge else KEEP_FREED)


def test_reexec_keeps_arguments_sets_the_variable_and_says_so_once():
    proc = _launch(REEXEC, _clean_env(), "a b", "--x=1")
    tunables = this_machines_tunables()
    assert proc.stdout.strip() == f"['a b', '--x=1'] {tunables}"  # the arguments arrive intact
    # One line on stderr per launch, naming the tunables: the re-executed image runs the same
    # call again, finds them set, and stays quiet.
    assert _announcements(proc.stderr) == ([f"{ANNOUNCEMENT}{tunables} (LMJAX_HUGEPAGES=0 skips this)"]
                                           if tunables else [])


def test_setup_command_process_announces_once():
    code = ("import os; from lmjax.process import setup_command_process; "
            "setup_command_process(compile_cache=False); print(os.environ.get('GLIBC_TUNABLES', ''))")
    proc = _launch(code, _clean_env())
    tunables = this_machines_tunables()
    assert proc.stdout.strip() == tunables
    assert len(_announcements(proc.stderr)) == (1 if tunables else 0)


def test_no_reexec_when_switched_off_or_already_set():
    off = _launch(REEXEC, {**_clean_env(), "LMJAX_HUGEPAGES": "0"})
    assert off.stdout == "[] \n" and ANNOUNCEMENT not in off.stderr
    already = _launch(REEXEC, {**_clean_env(), "GLIBC_TUNABLES": ALL})
    assert already.stdout.strip() == f"[] {ALL}" and ANNOUNCEMENT not in already.stderr


def test_importing_lmjax_leaves_the_process_alone():
    """`import lmjax` (a notebook) neither sets GLIBC_TUNABLES nor re-executes: only a command's
    setup_command_process() does."""
    code = "import lmjax, lmjax.process, os; print(os.environ.get('GLIBC_TUNABLES', ''))"
    proc = _launch(code, _clean_env())
    assert proc.stdout == "\n" and ANNOUNCEMENT not in proc.stderr


FAULTS = """
import json, resource, statistics, jax, jax.numpy as jnp
f = jax.jit(lambda x: x * 2.0 + 1.0)
x = jnp.ones((4096, 4096), jnp.float32)  # 64 MiB: above glibc's largest mmap threshold
for _ in range(10):  # until the heap has grown to its steady size
    f(x).block_until_ready()
faults = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()  # a fresh 64 MiB output each call, freed at once
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(statistics.median(faults)))
"""


@pytest.mark.skipif(not this_machines_tunables(), reason="not Linux with glibc >= 2.26")
def test_freed_memory_is_reused_without_page_faults():
    def faults_per_call(tunables):
        env = {**_clean_env(), "JAX_PLATFORMS": "cpu", **({"GLIBC_TUNABLES": tunables} if tunables else {})}
        return json.loads(subprocess.run([sys.executable, "-c", FAULTS], env=env, check=True,
                                         capture_output=True, text=True).stdout.strip().splitlines()[-1])
    # The median call: on a loaded machine the runtime may now and then free an output only after
    # the next call's is allocated, and the heap grows once more (one call faults; CI saw 1 in 10).
    plain, kept = faults_per_call(""), faults_per_call(":".join(KEEP_FREED))
    assert plain > 1000  # 64 MiB of 4 KiB pages faulted in again on every call
    assert kept < 50, (plain, kept)
