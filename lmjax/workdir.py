"""A run's workdir: the files in it, its status, and reading them back.

One place knows the layout, so the training loop, `lmjax.load`, the local and SLURM sweeps and
the report agree on it:

    config.json     the resolved config (written by `lmjax train` at every start)
    run.json        fingerprints, sizes, mesh, code commit, versions, host, process settings
    metrics.jsonl   one JSON object per logged step
    loss_by_position.jsonl  per evaluation: {"step", "loss_by_position": mean loss at each
                    position of the evaluation window}
    tensorboard/    TensorBoard event files
    checkpoints/    orbax step folders
    result.json     final metrics, written by a sweep when `lmjax train` finished (not preempted)
    failed.json     how a sweep's run failed (exit status, error line)
    train.log       a sweep's run: stdout and stderr of every attempt
    sweep.lock      held (flock) by the process training the run for a sweep

Status, derived from those files and nothing else (see `Workdir.status`):
    done     result.json, for the expected config (every key, defaults included), and not short of its steps
    stale    result.json written for another config than the sweep now declares
    running  another process holds sweep.lock (only when asked to look at the lock)
    failed   failed.json (and no result.json)
    partial  checkpoints or logged steps, no result: interrupted, preempted or still running
    pending  nothing yet

Every write goes through here and fails with one WorkdirError line (an LmjaxError) naming the
path and the fix, never a traceback.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import time
from pathlib import Path

from lmjax import config as config_lib
from lmjax.errors import LmjaxError

CONFIG = "config.json"
RUN_INFO = "run.json"
METRICS = "metrics.jsonl"
POSITIONS = "loss_by_position.jsonl"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
RESULT = "result.json"
FAILED = "failed.json"
LOG = "train.log"
LOCK = "sweep.lock"

STATUSES = ("done", "stale", "running", "failed", "partial", "pending")


def config_hash(config: dict) -> str:
    """sha256 of every key of a resolved config (`Config.to_dict()`): a finished run is stale for
    a sweep that now declares any other value, a changed schema default included."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


class WorkdirError(LmjaxError):
    """A workdir (or a file in it) that cannot be created or written."""


def read_json(path: Path):
    """The JSON value in `path`, or None when it is missing or unreadable (a torn write)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, obj, *, indent: int = 2) -> None:
    """Write `obj` to `path` atomically (a temporary file renamed into place)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=indent, default=str))
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise cannot_write(path, e) from e


def cannot_write(path: Path, e: OSError) -> WorkdirError:
    return WorkdirError(f"cannot write {path} ({e.strerror or type(e).__name__}); "
                        "choose a --workdir you can write to, or free disk space")


def tail_text(path: Path, nbytes: int | None = None) -> str:
    """The whole lines in the last `nbytes` of a text file (all of it when None; "" when it cannot
    be read): how logs and metrics are read while a run appends to them."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            cut = nbytes is not None and size > nbytes
            f.seek(size - nbytes if cut else 0)
            if cut:
                f.readline()  # the first line is cut
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def read_metrics(path: Path, tail_bytes: int | None = None) -> list[dict]:
    """The rows of a metrics.jsonl, in order; lines torn by a kill mid-write are skipped.
    tail_bytes: only the rows in the file's last that many bytes (a progress display's read)."""
    rows = []
    for line in tail_text(path, tail_bytes).splitlines():
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "step" in row:
                rows.append(row)
    return rows


def number(v) -> float:
    """A JSON value as a float: 'nan'/'inf' strings (how lmjax logs non-finite values) parse,
    anything missing or non-numeric is nan."""
    if isinstance(v, bool) or v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


class Workdir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Workdir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    # --- creating and writing ------------------------------------------------------------------

    def create(self) -> Workdir:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WorkdirError(f"cannot create workdir {self.path} ({e.strerror or type(e).__name__}); "
                               "pass a --workdir in a folder you can write to") from e
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise WorkdirError(f"workdir {self.path} is not writable; pass a --workdir in a folder "
                               "you can write to")
        return self

    def write_config(self, config: dict) -> None:
        write_json(self.file(CONFIG), config)

    def write_run_info(self, info: dict) -> None:
        write_json(self.file(RUN_INFO), info)

    def write_result(self, result: dict) -> None:
        write_json(self.file(RESULT), result)

    def write_failed(self, failed: dict) -> None:
        write_json(self.file(FAILED), failed)

    def open_metrics(self):
        """metrics.jsonl opened for appending."""
        try:
            return open(self.file(METRICS), "a")
        except OSError as e:
            raise cannot_write(self.file(METRICS), e) from e

    def append_position_losses(self, step: int, losses: list) -> None:
        try:
            with open(self.file(POSITIONS), "a") as f:
                f.write(json.dumps({"step": int(step), "loss_by_position": losses}) + "\n")
        except OSError as e:
            raise cannot_write(self.file(POSITIONS), e) from e

    def position_losses(self) -> list[dict]:
        """Every evaluation's loss by position, in order (rows past a resume point included)."""
        return read_metrics(self.file(POSITIONS))

    def truncate_metrics(self, step: int) -> None:
        """Drop logged rows past `step` (the checkpoint a run resumes from) from metrics.jsonl and
        loss_by_position.jsonl: they are logged again."""
        for path in (self.file(METRICS), self.file(POSITIONS)):
            if not path.exists():
                continue
            keep = []
            for line in path.read_text().splitlines():
                try:
                    if int(json.loads(line)["step"]) <= step:
                        keep.append(line)
                except (ValueError, KeyError, TypeError):
                    continue  # a torn line
            tmp = path.with_name(f".{path.name}.tmp")
            try:
                tmp.write_text("".join(line + "\n" for line in keep))
                os.replace(tmp, path)
            except OSError as e:
                raise cannot_write(path, e) from e

    # --- reading -------------------------------------------------------------------------------

    def config(self) -> dict | None:
        return read_json(self.file(CONFIG))

    def run_info(self) -> dict | None:
        return read_json(self.file(RUN_INFO))

    def result(self) -> dict | None:
        r = read_json(self.file(RESULT))
        return r if isinstance(r, dict) else None

    def failed(self) -> dict | None:
        if not self.file(FAILED).exists():
            return None
        f = read_json(self.file(FAILED))
        return f if isinstance(f, dict) else {"error": "failed.json is unreadable"}

    def metrics(self, tail_bytes: int | None = None) -> list[dict]:
        return read_metrics(self.file(METRICS), tail_bytes)

    def checkpoint_steps(self) -> list[int]:
        """Complete checkpoint steps on disk (orbax's in-flight `<step>.orbax-checkpoint-tmp`
        folders are not)."""
        try:
            return sorted(int(p.name) for p in self.file(CHECKPOINTS).iterdir() if p.name.isdigit())
        except OSError:
            return []

    def has_checkpoints(self) -> bool:
        return bool(self.checkpoint_steps())

    def set_checkpoints_aside(self) -> Path | None:
        """Rename checkpoints/ to checkpoints.replaced-<time> (--force starts over without ever
        deleting a run); the new name, or None when there were none."""
        ckpts = self.file(CHECKPOINTS)
        if not ckpts.exists():
            return None
        aside = self.file(f"{CHECKPOINTS}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        ckpts.rename(aside)
        return aside

    # --- status --------------------------------------------------------------------------------

    def status(self, config_hash: str = "", steps: int | None = None, *, check_lock: bool = False) -> str:
        """One of STATUSES. `config_hash`: the hash the sweep now declares for this run (a
        result.json recorded with another one is stale); `steps`: the run's length (a result
        short of it is partial); `check_lock`: report `running` when another process holds
        sweep.lock."""
        locked = check_lock and self.locked_elsewhere()
        result = self.result()
        if result is not None:
            if config_hash and result.get("config_hash") != config_hash and not self.ran(config_hash):
                return "running" if locked else "stale"
            step = number(result.get("step"))
            if result.get("preempted") or (steps and math.isfinite(step) and step < steps):
                return "running" if locked else "partial"
            return "done"
        if locked:
            return "running"
        if self.file(FAILED).exists():
            return "failed"
        if self.has_checkpoints() or self.metrics(tail_bytes=4096):  # any logged step
            return "partial"
        return "pending"

    def ran(self, declared_hash: str) -> bool:
        """Whether config.json (the config the run trained under), read with today's schema,
        hashes to `declared_hash`: a result.json recorded before keys were added to the schema
        (at defaults that keep what it computes) still counts as done."""
        saved = self.config()
        return saved is not None and config_hash(config_lib.fill_defaults(saved)) == declared_hash

    # --- the sweep's lock ----------------------------------------------------------------------

    def try_lock(self) -> int | None:
        """An fd holding an exclusive lock on sweep.lock, or None if another process holds it.
        Pass the fd to the run's process, so the lock lasts as long as the run does."""
        self.create()
        fd = os.open(self.file(LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    def locked_elsewhere(self) -> bool:
        path = self.file(LOCK)
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # closing releases a lock we just took
        return False
