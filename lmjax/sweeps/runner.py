"""Running a sweep on this machine: one run at a time or N at once, each in its own process.

A run's state lives in its workdir, never in a separate database:

    done     <workdir>/result.json exists (the final metrics; written when `lmjax train` exits 0
             without being preempted) and was written for the same resolved config
    stale    result.json exists but for another config (the sweep changed): runs again
    running  another process holds <workdir>/sweep.lock (another sweep, a SLURM job, or a run
             still checkpointing after its sweep was killed): waited for
    failed   <workdir>/failed.json exists (exit status, error line); retried by default
    partial  checkpoints exist: `lmjax train` resumes from the latest
    pending  nothing yet

Each run is `python -m lmjax.cli.main train --config=FILE:ARG --config.KEY=VALUE ... --workdir=W`
with stdout and stderr appended to <workdir>/train.log. Ctrl-C or SIGTERM on the sweep forwards
one SIGTERM to every running run (each finishes its step, checkpoints and exits 0), waits for
them and leaves them `partial`; a second signal interrupts them at once. Runs start in their own
session, so a terminal's Ctrl-C reaches them only through the sweep, and on Linux they get
SIGTERM if the sweep itself is killed (SIGKILL), so they checkpoint rather than run on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from tabulate import tabulate

from lmjax.sweeps.spec import Run, _fmt, estimate

RESULT = "result.json"
FAILED = "failed.json"
LOCK = "sweep.lock"
LOG = "train.log"

# Dry-run time estimate: FLOPs / (peak FLOP/s x MFU) + a fixed start-up per run (interpreter,
# JAX, data, compilation: 8-15 s measured on the 2-core CPU). CPU peak is lmjax's measured float32
# matmul rate (hardware.cpu_peak_flops, cached on first use). The attention_variants:cpu sizes
# (1-3 layers, width 32-96) reached 0.07-0.19 of that peak on the 2-core machine (measured in
# run.json/metrics: tiny matrices leave XLA's CPU kernels far from their peak), hence 0.15.
ASSUMED_MFU_CPU = 0.15
ASSUMED_MFU_ACCELERATOR = 0.35
STARTUP_S = 15.0


class SweepResult(dict):
    """run name -> final status; `interrupted` is True when a signal stopped the sweep."""

    interrupted: bool = False


# --- status, derived from the workdir -----------------------------------------------------------

def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def has_checkpoints(workdir: Path) -> bool:
    ckpts = Path(workdir) / "checkpoints"
    try:
        return any(p.name.isdigit() for p in ckpts.iterdir())
    except OSError:
        return False


def locked_elsewhere(workdir: Path) -> bool:
    path = Path(workdir) / LOCK
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


def try_lock(workdir: Path) -> int | None:
    """An fd holding an exclusive lock on <workdir>/sweep.lock, or None if another process holds it.
    The fd is passed to the run's process, so the lock lasts as long as the run does."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(workdir) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def run_status(run: Run, *, check_lock: bool = True) -> str:
    """The run's status from its workdir (check_lock=False: we hold its lock ourselves)."""
    wd = Path(run.workdir)
    locked = check_lock and locked_elsewhere(wd)
    result = read_json(wd / RESULT)
    if result is not None:
        if not run.config_hash or result.get("config_hash") == run.config_hash:
            return "done"
        if not locked:
            return "stale"
    if locked:
        return "running"
    if (wd / FAILED).exists():
        return "failed"
    if has_checkpoints(wd):
        return "partial"
    return "pending"


# --- the train command and its environment ------------------------------------------------------

def config_spec(config_path, arg: str | None) -> str:
    path = str(Path(config_path).resolve())
    return path if arg is None else f"{path}:{arg}"


def train_command(run: Run, config_path, arg: str | None) -> list[str]:
    return [sys.executable, "-m", "lmjax.cli.main", "train", f"--config={config_spec(config_path, arg)}",
            *[f"--config.{k}={_fmt(v)}" for k, v in run.overrides.items()],
            f"--workdir={run.workdir}", "--progress=false"]


def devices_per_run(run: Run) -> int:
    """CPU devices a run's mesh needs: data (1 when -1) x fsdp x tensor."""
    if run.config is None:
        return 1
    m = run.config.mesh
    return max(1, m.data if m.data > 0 else 1) * max(1, m.fsdp) * max(1, m.tensor)


@dataclasses.dataclass
class Slot:
    """What one concurrently running run gets: CPU cores (None: all, no pinning), GPUs (None:
    whatever the sweep sees) and a thread count for OpenMP/BLAS."""

    index: int
    cpus: list[int] | None
    threads: int
    gpus: list[str] | None = None
    gpu_share: int = 1  # runs sharing each GPU

    def describe(self) -> str:
        parts = [f"cpus {','.join(map(str, self.cpus))}" if self.cpus is not None
                 else f"all {self.threads} cpus"]
        if self.gpus is not None:
            parts.append(f"gpus {','.join(self.gpus)}")
        return ", ".join(parts)


def available_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def visible_gpus() -> list[str]:
    """GPU ids this process may use, without initialising any GPU runtime here."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()] if out.returncode == 0 else []


def make_slots(parallel: int, threads_per_run: int | None = None, *, cpus: list[int] | None = None,
               gpus: list[str] | None = None) -> list[Slot]:
    """Split the machine between `parallel` runs: disjoint CPU cores (wrapping round when there
    are more runs than cores) and, with several GPUs, disjoint CUDA_VISIBLE_DEVICES slices.
    One run with no `threads_per_run` is not pinned at all."""
    cpus = available_cpus() if cpus is None else cpus
    gpus = visible_gpus() if gpus is None else gpus
    parallel = max(1, parallel)
    slots = []
    pin = parallel > 1 or bool(threads_per_run)
    n = min(len(cpus), threads_per_run or max(1, len(cpus) // parallel))
    for i in range(parallel):
        slot = Slot(index=i, cpus=None, threads=len(cpus))
        if pin:
            slot.cpus = sorted({cpus[(i * n + j) % len(cpus)] for j in range(n)})
            slot.threads = n
        if gpus and parallel > 1:
            g = max(1, len(gpus) // parallel)
            slot.gpus = [gpus[(i * g + j) % len(gpus)] for j in range(g)]
            slot.gpu_share = math.ceil(parallel / len(gpus)) if parallel > len(gpus) else 1
        slots.append(slot)
    return slots


def child_env(run: Run, slot: Slot | None, base: dict | None = None) -> dict[str, str]:
    """The run's environment: its own CPU device count (XLA_FLAGS), thread counts, GPU slice."""
    env = dict(os.environ if base is None else base)
    xla = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
    xla.append(f"--xla_force_host_platform_device_count={devices_per_run(run)}")
    env["XLA_FLAGS"] = " ".join(xla)
    env["PYTHONUNBUFFERED"] = "1"
    env["LMJAX_SWEEP_RUN"] = run.name
    if slot is not None and slot.cpus is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(slot.threads)
    if slot is not None and slot.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(slot.gpus)
        if slot.gpu_share > 1:  # several runs per GPU: split its memory instead of preallocating 75%
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / slot.gpu_share:.3f}"
    return env


# A few lines run in the child before it becomes `lmjax train` (execv keeps both settings): pin
# it to its cores, and on Linux ask for SIGTERM when the sweep dies (even by SIGKILL), so the run
# checkpoints and leaves instead of training on unsupervised. Done in the child rather than in a
# preexec_fn, which would fork a possibly multithreaded parent (JAX) and run Python there.
LAUNCHER = """
import ctypes, json, os, signal, sys
opts, cmd = json.loads(sys.argv[1]), sys.argv[2:]
if opts["cpus"] is not None and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, opts["cpus"])
if opts["parent"] and sys.platform.startswith("linux"):
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != opts["parent"]:
        sys.exit(143)
os.execv(cmd[0], cmd)
"""


def launch_command(cmd: list[str], *, cpus: list[int] | None, parent_pid: int | None) -> list[str]:
    if cpus is None and parent_pid is None:
        return cmd
    return [sys.executable, "-c", LAUNCHER, json.dumps({"cpus": cpus, "parent": parent_pid}), *cmd]


def start_run(run: Run, *, config_path, arg, slot: Slot | None, lock_fd: int,
              new_session: bool = True) -> subprocess.Popen:
    """Start `lmjax train` for `run` (appending to train.log); the process inherits the lock."""
    wd = Path(run.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    (wd / FAILED).unlink(missing_ok=True)
    if (wd / RESULT).exists():  # stale: written for another config
        os.replace(wd / RESULT, wd / "result.stale.json")
    cmd = train_command(run, config_path, arg)
    with open(wd / LOG, "a") as log:
        log.write(f"{HEADER} {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}"
                  f"{' (' + slot.describe() + ')' if slot else ''}: {' '.join(cmd)}\n")
        log.flush()
        full = launch_command(cmd, cpus=slot.cpus if slot else None,
                              parent_pid=os.getpid() if new_session else None)
        return subprocess.Popen(full, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env(run, slot), pass_fds=(lock_fd,),
                                start_new_session=new_session)


HEADER = "=== lmjax sweep"


def attempt_lines(log_path: Path, nbytes: int = 256 * 1024) -> list[str]:
    """The lines of train.log written by the latest attempt (after the sweep's last header)."""
    lines = _tail_lines(log_path, nbytes)
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(HEADER):
            return lines[i + 1:]
    return lines


def final_line(log_path: Path) -> dict | None:
    """The last JSON object `lmjax train` printed in the latest attempt (its final metrics)."""
    for line in reversed(attempt_lines(log_path)):
        line = line.strip()
        if line.startswith("{") and '"step"' in line:
            with contextlib.suppress(ValueError):
                return json.loads(line)
    return None


def error_line(log_path: Path) -> str:
    """The `error:` line of the latest attempt, else its last line (a traceback's last line)."""
    lines = [ln.strip() for ln in attempt_lines(log_path, 64 * 1024) if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error:"):
            return ln
    return lines[-1] if lines else ""


def _tail_lines(path: Path, nbytes: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - nbytes))
            data = f.read()
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[1:] if size > nbytes else lines


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def finish_run(run: Run, returncode: int, *, interrupted: bool, elapsed: float) -> str:
    """Record how the run's process ended; returns its status."""
    wd = Path(run.workdir)
    final = final_line(wd / LOG)
    if returncode == 0 and final is not None and not final.get("preempted"):
        _write_json(wd / RESULT, {"name": run.name, "overrides": run.overrides,
                                  "config_hash": run.config_hash, "returncode": 0,
                                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                  "started_unix": time.time() - elapsed, "finished_unix": time.time(),
                                  "elapsed": elapsed, **final})
        return "done"
    if interrupted or (returncode == 0 and final is not None):
        return "partial" if has_checkpoints(wd) else "pending"
    _write_json(wd / FAILED, {"name": run.name, "overrides": run.overrides, "returncode": returncode,
                              "error": error_line(wd / LOG) or f"exit status {returncode}",
                              "log": str(wd / LOG), "failed": time.strftime("%Y-%m-%dT%H:%M:%S"),
                              "elapsed": elapsed})
    return "failed"


# --- progress -----------------------------------------------------------------------------------

def progress(run: Run) -> dict:
    """step, loss, val_loss, step_time from the tail of metrics.jsonl (result.json when done)."""
    out: dict[str, Any] = {}
    for line in _tail_lines(Path(run.workdir) / "metrics.jsonl", 32 * 1024):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        out["step"] = max(out.get("step", 0), int(row.get("step", 0)))
        for k in ("loss", "val_loss", "step_time"):
            if k in row:
                out[k] = row[k]
    return out


def _num(v, fmt="{:.4f}") -> str:
    return fmt.format(v) if isinstance(v, (int, float)) and math.isfinite(v) else ("-" if v is None else str(v))


def fmt_duration(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclasses.dataclass
class _Active:
    run: Run
    proc: subprocess.Popen
    slot: Slot
    lock_fd: int
    started: float
    start_step: int
    signals_sent: int = 0


class Display:
    """A live table on a terminal (redrawn in place every `refresh_s`); elsewhere one line per
    status change, so logs stay readable."""

    def __init__(self, runs: list[Run], out: TextIO, live: bool, refresh_s: float = 2.0):
        self.runs, self.out, self.refresh_s = runs, out, refresh_s
        self.live = live and _isatty(out)
        self.lines = 0
        self.last = 0.0
        self.t0 = time.time()

    def rows(self, statuses: dict, active: dict[str, _Active], elapsed: dict[str, float]) -> list[list]:
        rows, now = [], time.time()
        for run in self.runs:
            st = statuses[run.name]
            p = progress(run)
            step, eta = p.get("step", 0), None
            a = active.get(run.name)
            if st == "done":
                res = read_json(Path(run.workdir) / RESULT) or {}
                p.update({k: res[k] for k in ("loss", "val_loss") if k in res})
                step = res.get("step", step)
                el = res.get("elapsed")
            elif a is not None:
                el = now - a.started
                if step > a.start_step and p.get("step_time"):
                    eta = (run.steps - step) * float(p["step_time"])
            else:
                el = elapsed.get(run.name)
            if a is not None and st == "running":
                st = f"running ({a.slot.describe()})" if a.slot.cpus or a.slot.gpus else "running"
            rows.append([run.name, st, f"{step}/{run.steps}", _num(p.get("loss")),
                         _num(p.get("val_loss")), fmt_duration(el), fmt_duration(eta)])
        return rows

    def table(self, statuses, active, elapsed) -> str:
        return tabulate(self.rows(statuses, active, elapsed),
                        headers=["run", "status", "step", "loss", "val loss", "elapsed", "ETA"])

    def summary(self, statuses: dict, elapsed: bool = True) -> str:
        counts: dict[str, int] = {}
        for st in statuses.values():
            counts[st] = counts.get(st, 0) + 1
        return (f"{len(statuses)} runs: " + ", ".join(f"{n} {st}" for st, n in sorted(counts.items()))
                + (f"; elapsed {fmt_duration(time.time() - self.t0)}" if elapsed else ""))

    def live_table(self, statuses, active, elapsed) -> str:
        """The table, cut to the terminal's height: running, failed, partial runs first."""
        rows = self.rows(statuses, active, elapsed)
        room = max(3, shutil.get_terminal_size((100, 40)).lines - 5)
        if len(rows) > room:
            rank = {"running": 0, "failed": 1, "partial": 2, "stale": 2, "pending": 3, "done": 4}
            order = sorted(range(len(rows)), key=lambda i: (rank.get(rows[i][1].split(" ")[0], 3), i))
            keep = sorted(order[:room - 1])
            hidden = len(rows) - len(keep)
            rows = [rows[i] for i in keep] + [[f"... {hidden} more", "", "", "", "", "", ""]]
        return tabulate(rows, headers=["run", "status", "step", "loss", "val loss", "elapsed", "ETA"])

    def update(self, statuses, active, elapsed, force: bool = False) -> None:
        if not self.live or (not force and time.time() - self.last < self.refresh_s):
            return
        self.last = time.time()
        text = self.live_table(statuses, active, elapsed) + "\n" + self.summary(statuses) + "\n"
        if self.lines:
            self.out.write(f"\x1b[{self.lines}F\x1b[J")
        self.out.write(text)
        self.out.flush()
        self.lines = text.count("\n")

    def event(self, name: str, old: str, new: str, detail: str = "") -> None:
        if self.live:
            return  # the table shows it
        self.out.write(f"[{time.strftime('%H:%M:%S')}] {name}: {old} -> {new}{'  ' + detail if detail else ''}\n")
        self.out.flush()

    def clear(self) -> None:
        if self.live and self.lines:
            self.out.write(f"\x1b[{self.lines}F\x1b[J")
            self.lines = 0
            self.last = 0.0

    def message(self, text: str) -> None:
        self.clear()  # the live table is redrawn below the message
        self.out.write(text + "\n")
        self.out.flush()


def _isatty(out) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


# --- the sweep ----------------------------------------------------------------------------------

def run_sweep(runs: list[Run], *, config_path, arg: str | None, parallel: int = 1,
              threads_per_run: int | None = None, dry_run: bool = False, table: bool = True,
              retry_failed: bool = True, out: TextIO | None = None, mfu: float | None = None,
              poll_s: float = 0.2, refresh_s: float = 2.0) -> SweepResult:
    """Run every run that is not done (failed runs again unless retry_failed=False), `parallel`
    at a time. Returns run name -> status; `.interrupted` when SIGINT/SIGTERM stopped it."""
    out = out or sys.stdout
    if dry_run:
        out.write(dry_run_report(runs, parallel=parallel, mfu=mfu) + "\n")
        out.flush()
        result = SweepResult({r.name: run_status(r) for r in runs})
        return result
    statuses = {r.name: run_status(r) for r in runs}
    display = Display(runs, out, live=table, refresh_s=refresh_s)
    skip = {"done"} | (set() if retry_failed else {"failed"})
    queue = [r for r in runs if statuses[r.name] not in skip]
    done = sum(statuses[r.name] == "done" for r in runs)
    display.message(
        f"sweep: {len(runs)} runs; {done} done (skipped)"
        + ("" if retry_failed else f", {sum(statuses[r.name] == 'failed' for r in runs)} failed (skipped: --noretry_failed)")
        + f"; {len(queue)} to run, {parallel} at a time"
    )
    free = make_slots(parallel, threads_per_run)
    active: dict[str, _Active] = {}
    elapsed: dict[str, float] = {}
    stop = {"signals": 0}
    result = SweepResult()

    def set_status(name: str, new: str, detail: str = "") -> None:
        old = statuses[name]
        if old != new:
            statuses[name] = new
            display.event(name, old, new, detail)
            display.update(statuses, active, elapsed, force=True)

    def on_signal(signum, frame):  # only note it: the main loop forwards it (and prints)
        stop["signals"] += 1
        stop.setdefault("name", signal.Signals(signum).name)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        while (queue and not stop["signals"]) or active:
            # start runs while slots are free; runs locked by another process wait their turn
            i = 0
            while free and i < len(queue) and not stop["signals"]:
                run = queue[i]
                lock_fd = try_lock(run.workdir)
                if lock_fd is None:
                    set_status(run.name, "running", "in another process: waiting for it")
                    i += 1
                    continue
                queue.pop(i)
                st = run_status(run, check_lock=False)
                if st == "done":  # finished elsewhere while we waited
                    os.close(lock_fd)
                    set_status(run.name, "done", "finished by another process")
                    continue
                slot = free.pop(0)
                try:
                    proc = start_run(run, config_path=config_path, arg=arg, slot=slot, lock_fd=lock_fd)
                except OSError as e:
                    os.close(lock_fd)
                    free.insert(0, slot)
                    _write_json(Path(run.workdir) / FAILED, {"name": run.name, "returncode": None,
                                                             "error": f"cannot start: {e}"})
                    set_status(run.name, "failed", f"cannot start: {e}")
                    continue
                active[run.name] = _Active(run, proc, slot, lock_fd, time.time(),
                                           progress(run).get("step", 0) if st == "partial" else 0)
                set_status(run.name, "running",
                           f"{'resuming' if st == 'partial' else 'starting'}"
                           + (f" ({slot.describe()})" if slot.cpus is not None or slot.gpus else ""))
            for name, a in list(active.items()):
                rc = a.proc.poll()
                if rc is None:
                    continue
                el = time.time() - a.started
                elapsed[name] = el
                st = finish_run(a.run, rc, interrupted=bool(stop["signals"]), elapsed=el)
                os.close(a.lock_fd)
                del active[name]
                free.append(a.slot)
                free.sort(key=lambda s: s.index)
                detail = ""
                if st == "done":
                    res = read_json(Path(a.run.workdir) / RESULT) or {}
                    detail = (f"step {res.get('step')}, loss {_num(res.get('loss'))}, "
                              f"val loss {_num(res.get('val_loss'))}, {fmt_duration(el)}")
                elif st == "failed":
                    err = (read_json(Path(a.run.workdir) / FAILED) or {}).get("error", "")
                    detail = f"exit {rc}: {err} (log: {Path(a.run.workdir) / LOG})"
                elif st == "partial":
                    detail = f"checkpoint at step {progress(a.run).get('step', '?')}"
                set_status(name, st, detail)
            for a in active.values():  # forward: one SIGTERM per signal received (at most two)
                while a.signals_sent < min(stop["signals"], 2):
                    a.signals_sent += 1
                    with contextlib.suppress(ProcessLookupError):
                        a.proc.send_signal(signal.SIGTERM)
            if stop["signals"] and not stop.get("told"):
                stop["told"] = True
                display.message(f"{stop['name']}: stopping; {len(active)} running run(s) checkpoint "
                                "and exit (signal again to interrupt them at once)")
            display.update(statuses, active, elapsed)
            if active or queue:
                time.sleep(poll_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for a in active.values():  # only on an exception inside the loop: do not leave orphans
            with contextlib.suppress(ProcessLookupError):
                a.proc.send_signal(signal.SIGTERM)
            a.proc.wait()
            os.close(a.lock_fd)
    for run in runs:
        if statuses[run.name] == "running":  # never started: locked elsewhere when we stopped
            statuses[run.name] = run_status(run)
    result.update(statuses)
    result.interrupted = bool(stop["signals"])
    display.clear()
    out.write(display.table(statuses, {}, elapsed) + "\n" + display.summary(statuses)
              + ("; interrupted: run the same command to finish the rest" if result.interrupted else "")
              + "\n")
    for r in runs:
        if statuses[r.name] == "failed":
            out.write(f"failed: {r.name}: {(read_json(Path(r.workdir) / FAILED) or {}).get('error', '')} "
                      f"(log: {Path(r.workdir) / LOG}; the next sweep retries it)\n")
    out.flush()
    return result


def status_report(runs: list[Run]) -> str:
    statuses = {r.name: run_status(r) for r in runs}
    d = Display(runs, io.StringIO(), live=False)
    elapsed = {}
    return d.table(statuses, {}, elapsed) + "\n" + d.summary(statuses, elapsed=False)


# --- dry run ------------------------------------------------------------------------------------

def fmt_count(n: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def flop_rate(mfu: float | None = None) -> tuple[float, float, str]:
    """(assumed FLOP/s of the whole machine, MFU, description)."""
    import jax

    from lmjax.process import hardware

    devices = jax.devices()
    peak = hardware.peak_flops(devices)
    cpu = devices[0].platform == "cpu"
    mfu = mfu or (ASSUMED_MFU_CPU if cpu else ASSUMED_MFU_ACCELERATOR)
    what = ("measured float32 matmul rate of this CPU" if cpu
            else f"datasheet bf16 peak of {len(devices)} x {devices[0].device_kind}")
    return peak * mfu, mfu, f"{peak / 1e12:.3g} TFLOP/s ({what}) x assumed MFU {mfu:g}"


def dry_run_report(runs: list[Run], *, parallel: int = 1, mfu: float | None = None) -> str:
    """The runs with parameters, tokens, training FLOPs and estimated time, and the totals."""
    rate, mfu, what = flop_rate(mfu)
    per_run_rate = rate / max(1, parallel)
    rows, totals = [], {"flops": 0.0, "tokens": 0, "time": 0.0, "todo_time": 0.0, "todo": 0}
    estimated_vocab = False
    for r in runs:
        e = estimate(r.config)
        st = run_status(r)
        m = r.config.model
        secs = STARTUP_S + e["flops"] / per_run_rate
        estimated_vocab |= not e["vocab_exact"]
        totals["flops"] += e["flops"]
        totals["tokens"] += e["tokens"]
        totals["time"] += secs
        if st != "done":
            totals["todo_time"] += secs
            totals["todo"] += 1
        kv = f"/{m.num_kv_heads}kv" if m.num_kv_heads else ""
        rows.append([r.name, st, f"{m.num_layers}x{m.width} h{m.num_heads}{kv}", fmt_count(e["params"]),
                     fmt_count(e["params_non_embedding"]), r.steps, fmt_count(e["tokens"]),
                     f"{e['flops']:.3g}", fmt_duration(secs)])
    p = max(1, parallel)
    rows.append(["TOTAL", f"{len(runs)} runs", "", "", "", "", fmt_count(totals["tokens"]),
                 f"{totals['flops']:.3g}", fmt_duration(totals["time"] / p)])
    text = tabulate(rows, headers=["run", "status", "layers x width", "params", "non-emb",
                                   "steps", "tokens", "train FLOPs", "est. time"])
    notes = [
        f"{len(runs)} runs, {totals['flops']:.3g} training FLOPs, {fmt_count(totals['tokens'])} tokens; "
        f"estimated {fmt_duration(totals['time'] / p)} in all ({totals['time'] / p / 3600:.2f} h) with "
        f"--parallel {p}; {totals['todo']} not done yet: {fmt_duration(totals['todo_time'] / p)}",
        f"estimate: FLOPs (6N + unembedding + attention per token, x steps x batch x seq) at "
        f"{what}, split over {p} concurrent run(s), plus {STARTUP_S:.0f} s start-up per run",
    ]
    if estimated_vocab:
        notes.append("char tokenizer without config.data.vocab_size: vocabulary estimated as 100 symbols")
    return text + "\n" + "\n".join(notes)


__all__ = [
    "SweepResult", "Slot", "child_env", "dry_run_report", "finish_run", "make_slots", "run_status",
    "run_sweep", "start_run", "status_report", "train_command", "try_lock",
]
