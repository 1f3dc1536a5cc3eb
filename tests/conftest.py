"""Test-wide setup: 8 fake CPU devices (set before JAX starts) and a private cache dir."""

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("LMJAX_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    # Token caches and the CPU peak figure go to a per-session folder unless set by the caller.
    if not os.environ.get("LMJAX_CACHE_DIR"):
        os.environ["LMJAX_CACHE_DIR"] = str(tmp_path_factory.mktemp("lmjax-cache"))
    yield
