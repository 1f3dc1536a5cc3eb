"""Test-wide setup: 8 fake CPU devices (set before JAX starts) and a private cache dir; the
PyTorch interpreter the benchmarks' tests give as --torch_python."""

import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("LMJAX_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# Modules whose tests share a trained run (or a launched job) through a module-scoped fixture.
# Under pytest-xdist's default `--dist load`, tests are handed out one by one, and every worker
# that gets one of these tests trains the fixture's run again; each module here goes to one
# worker instead, whole (the others are still handed out one by one). This replaces
# `--dist loadgroup`, whose xdist_group marks pytest-xdist 3.8 cannot apply under pytest 9
# (it renames `item._nodeid`, which pytest 9 no longer reads).
ONE_WORKER_MODULES = {f"tests/{name}.py" for name in (
    "test_cli", "test_fault_tolerance", "test_finetune", "test_hf", "test_launch", "test_replicas",
    "test_training")}


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "load":  # another --dist given: as asked
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesWhole(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER_MODULES else nodeid

    return ModulesWhole(config, log)


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Token caches, the CPU peak figure and compiled programs go to one folder per test run
    unless the caller sets LMJAX_CACHE_DIR. The pytest-xdist workers share it, as concurrent
    `lmjax` processes share ~/.cache/lmjax (a token cache is built under a temporary name and
    renamed into place), and so do the `lmjax` commands the tests start, which read it from the
    environment. This process keeps its compiled programs in <cache>/xla too, as `lmjax`
    commands do: the tests compile the same tiny models' steps many times over, and a program
    read back from the cache is the executable compiled before (measured on test_training.py:
    291 of 581 compilations read back, 30% less CPU time)."""
    if not os.environ.get("LMJAX_CACHE_DIR"):
        root = tmp_path_factory.getbasetemp()
        if os.environ.get("PYTEST_XDIST_WORKER"):
            root = root.parent  # the run's folder, above each worker's own
        (root / "lmjax-cache").mkdir(exist_ok=True)
        os.environ["LMJAX_CACHE_DIR"] = str(root / "lmjax-cache")
    from lmjax.process.compile_cache import enable_compilation_cache

    enable_compilation_cache()
    yield


@pytest.fixture
def torch_python(tmp_path):
    """(script, log): a PyTorch interpreter for a benchmark's --torch_python, this one (the hf
    extra installs torch) behind a script that appends the GLIBC_TUNABLES each child starts with
    to `log` and runs the child (nanogpt_reference.py, kernel_classes_torch.py) on one thread:
    the tests' runs are tiny, and two PyTorch threads spinning against the other pytest worker
    on a 2-core machine cost seconds of CPU per step."""
    pytest.importorskip("torch")
    script, log = tmp_path / "torch_python", tmp_path / "torch_python.log"
    script.write_text(f'#!/bin/sh\necho "$GLIBC_TUNABLES" >> {shlex.quote(str(log))}\n'
                      f'exec {shlex.quote(sys.executable)} "$@" --threads 1\n')
    script.chmod(0o755)
    return script, log
