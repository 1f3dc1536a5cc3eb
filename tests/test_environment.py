"""Setting up: `make test` without the corpus says what is missing in one line, and the committed
lock pins every dependency of lmjax and its dev and hf extras at a version pyproject.toml allows."""

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_test_without_the_corpus_says_what_is_missing(tmp_path):
    # PYTHON=false: were anything installed before the check, it would fail another way.
    p = subprocess.run(["make", "-s", "test", f"LMJAX_DATA_DIR={tmp_path}", f"VENV={tmp_path}/venv",
                        "PYTHON=false"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and not p.stdout
    (line,) = p.stderr.strip().splitlines()
    assert f"{tmp_path}/tinyshakespeare/input.txt, which is missing" in line and "LMJAX_DATA_DIR" in line
    assert not (tmp_path / "venv").exists()


def test_lock_pins_every_dependency_at_an_allowed_version():
    lock = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pin = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][A-Za-z0-9.]*)", line.strip())
            assert pin, f"constraints.txt: {line!r} is not NAME==VERSION (without a local label: +cpu)"
            lock[_name(pin[1])] = pin[2]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for spec in project["dependencies"] + extras["dev"] + extras["hf"]:
        req = Requirement(spec)
        assert _name(req.name) in lock, f"{req.name} is not in constraints.txt: run `make lock`"
        assert req.specifier.contains(lock[_name(req.name)]), (spec, lock[_name(req.name)])
    makefile = (REPO / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "pip install" in line and "-e '." in line]
    assert installs and all("-c $(LOCK)" in line for line in installs)
