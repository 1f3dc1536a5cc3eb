"""Huge pages for malloc in lmjax's command-line processes (lmjax/training/hugepages.py)."""

import os
import subprocess
import sys

from lmjax.training.hugepages import TUNABLE, hugepage_environ

MADVISE = dict(glibc=(2, 36), thp_mode="madvise")


def test_adds_the_tunable_where_it_helps():
    assert hugepage_environ({"A": "1"}, **MADVISE) == {"A": "1", "GLIBC_TUNABLES": TUNABLE}
    kept = hugepage_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, **MADVISE)
    assert kept["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{TUNABLE}"


def test_leaves_the_process_alone_otherwise():
    assert hugepage_environ({"LMJAX_HUGEPAGES": "0"}, **MADVISE) is None
    assert hugepage_environ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, **MADVISE) is None
    assert hugepage_environ({}, glibc=(2, 31), thp_mode="madvise") is None  # no such tunable
    assert hugepage_environ({}, glibc=(2, 36), thp_mode="always") is None  # already huge
    assert hugepage_environ({}, glibc=(2, 36), thp_mode="never") is None  # cannot be


def test_reexec_keeps_arguments_and_sets_the_variable():
    code = ("import os, sys; from lmjax.training.hugepages import reexec_with_hugepages; "
            "reexec_with_hugepages(); print(sys.argv[1:], os.environ.get('GLIBC_TUNABLES', ''))")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LMJAX_HUGEPAGES")}
    out = subprocess.run([sys.executable, "-c", code, "a b", "--x=1"], env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    # On this machine's kernel and libc the decision is hugepage_environ's; either way the
    # arguments arrive intact.
    expect = TUNABLE if hugepage_environ(env) is not None else ""
    assert out == f"['a b', '--x=1'] {expect}"
