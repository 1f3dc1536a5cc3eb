"""Running a sweep on this machine: one run at a time or N at once, each in its own process.

A run's state lives in its workdir, never in a separate database (see lmjax.workdir): done
(result.json for the same resolved config) is skipped, stale (result.json for another config)
runs again, running (another process holds sweep.lock: another sweep, a SLURM job, or a run still
checkpointing after its sweep was killed) is waited for, failed (failed.json) is retried by
default, partial (checkpoints or logged steps) resumes from its latest checkpoint, pending starts.

Each run is `python -m lmjax.cli.main train --config=FILE:ARG --config.KEY=VALUE ... --workdir=W`
with stdout and stderr appended to <workdir>/train.log (lmjax.sweeps.trainlog). Ctrl-C or SIGTERM
on the sweep forwards one SIGTERM to every running run (each finishes its step, checkpoints and
exits 0), waits for them and leaves them `partial`; a second signal interrupts them at once. Runs
start in their own session, so a terminal's Ctrl-C reaches them only through the sweep, and on
Linux they get SIGTERM if the sweep itself is killed (SIGKILL), so they checkpoint rather than
run on (lmjax.sweeps.launch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from lmjax.formatting import duration, fixed
from lmjax.sweeps import launch, trainlog
from lmjax.sweeps.display import Display, status_table
from lmjax.sweeps.slots import Slot, child_env, make_slots
from lmjax.sweeps.spec import SweepRun, format_value
from lmjax.workdir import FAILED, LOG, RESULT, Workdir


class SweepResult(dict):
    """run name -> final status; `interrupted` is True when a signal stopped the sweep."""

    interrupted: bool = False


# --- starting a run and recording how it ended --------------------------------------------------

def config_spec(config_path, arg: str | None) -> str:
    path = str(Path(config_path).resolve())
    return path if arg is None else f"{path}:{arg}"


def train_command(run: SweepRun, config_path, arg: str | None) -> list[str]:
    return [sys.executable, "-m", "lmjax.cli.main", "train", f"--config={config_spec(config_path, arg)}",
            *[f"--config.{k}={format_value(v)}" for k, v in run.overrides.items()],
            f"--workdir={run.workdir}", "--progress=false"]


def prepare(run: SweepRun) -> Workdir:
    """The run's workdir, cleared of what the attempt about to start replaces: failed.json, and
    a result.json (only runs that are not done start, so it is stale: kept as result.stale.json)."""
    wd = Workdir(run.workdir).create()
    wd.file(FAILED).unlink(missing_ok=True)
    if wd.file(RESULT).exists():
        os.replace(wd.file(RESULT), wd.file("result.stale.json"))
    return wd


def start_run(run: SweepRun, *, config_path, arg, slot: Slot | None, lock_fd: int,
              new_session: bool = True) -> subprocess.Popen:
    """Start `lmjax train` for `run` (appending to train.log); the process inherits the lock."""
    wd = prepare(run)
    cmd = train_command(run, config_path, arg)
    with open(wd.file(LOG), "a") as log:
        trainlog.write_header(log, f"pid {os.getpid()}" + (f" ({slot.describe()})" if slot else ""), cmd)
        full = launch.command(cmd, cpus=slot.cpus if slot else None,
                              parent_pid=os.getpid() if new_session else None)
        return subprocess.Popen(full, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env(run, slot), pass_fds=(lock_fd,),
                                start_new_session=new_session)


def finish_run(run: SweepRun, returncode: int, *, interrupted: bool, elapsed: float) -> str:
    """Record how the run's process ended (result.json or failed.json); returns its status."""
    wd = Workdir(run.workdir)
    final = trainlog.final_line(wd.file(LOG))
    now = time.time()
    if returncode == 0 and final is not None and not final.get("preempted"):
        wd.write_result({"name": run.name, "overrides": run.overrides, "config_hash": run.config_hash,
                         "returncode": 0, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                         "started_unix": now - elapsed, "finished_unix": now, "elapsed": elapsed, **final})
        return "done"
    if interrupted or (returncode == 0 and final is not None):
        return run.status(check_lock=False)  # partial, or pending when it logged nothing yet
    wd.write_failed({"name": run.name, "overrides": run.overrides, "returncode": returncode,
                     "error": trainlog.error_line(wd.file(LOG)) or f"exit status {returncode}",
                     "log": str(wd.file(LOG)), "failed": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "elapsed": elapsed})
    return "failed"


def ended(run: SweepRun, status: str, returncode: int, elapsed: float) -> str:
    """The line shown when a run's process ends with `status`."""
    wd = Workdir(run.workdir)
    if status == "done":
        res = wd.result() or {}
        return (f"step {res.get('step')}, loss {fixed(res.get('loss'), empty='-')}, "
                f"val loss {fixed(res.get('val_loss'), empty='-')}, {duration(elapsed)}")
    if status == "failed":
        return f"exit {returncode}: {(wd.failed() or {}).get('error', '')} (log: {wd.file(LOG)})"
    if status == "partial":
        steps = wd.checkpoint_steps()
        return f"checkpoint at step {steps[-1]}" if steps else "no checkpoint yet: starts again at step 0"
    return ""


# --- the sweep ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Active:
    """A run whose process is running."""

    run: SweepRun
    proc: subprocess.Popen
    slot: Slot
    lock_fd: int
    started: float
    start_step: int  # the checkpoint it resumed from (0: from the start)
    signals_sent: int = 0


class _Loop:
    """One `run_sweep`: the runs still to start, free slots, running processes, statuses."""

    def __init__(self, runs: list[SweepRun], display: Display, *, config_path, arg: str | None,
                 slots: list[Slot], retry_failed: bool):
        self.runs, self.display, self.config_path, self.arg = runs, display, config_path, arg
        self.statuses = {r.name: r.status() for r in runs}
        skip = {"done"} | (set() if retry_failed else {"failed"})
        self.queue = [r for r in runs if self.statuses[r.name] not in skip]
        self.free = slots
        self.active: dict[str, Active] = {}
        self.elapsed: dict[str, float] = {}
        self.signals, self.signal_name, self.told = 0, "", False

    def set_status(self, name: str, new: str, detail: str = "") -> None:
        old = self.statuses[name]
        if old != new:
            self.statuses[name] = new
            self.display.event(name, old, new, detail)
            self.display.update(self.statuses, self.active, self.elapsed, force=True)

    def note_signal(self, signum, frame) -> None:  # only note it: the loop forwards it (and prints)
        self.signals += 1
        self.signal_name = self.signal_name or signal.Signals(signum).name

    def start_ready(self) -> None:
        """Start runs while slots are free; runs locked by another process wait their turn."""
        i = 0
        while self.free and i < len(self.queue) and not self.signals:
            run = self.queue[i]
            lock_fd = Workdir(run.workdir).try_lock()
            if lock_fd is None:
                self.set_status(run.name, "running", "in another process: waiting for it")
                i += 1
                continue
            self.queue.pop(i)
            self.start(run, lock_fd)

    def start(self, run: SweepRun, lock_fd: int) -> None:
        if run.status(check_lock=False) == "done":  # finished elsewhere while we waited
            os.close(lock_fd)
            self.set_status(run.name, "done", "finished by another process")
            return
        slot = self.free.pop(0)
        try:
            proc = start_run(run, config_path=self.config_path, arg=self.arg, slot=slot, lock_fd=lock_fd)
        except OSError as e:
            os.close(lock_fd)
            self.free.insert(0, slot)
            Workdir(run.workdir).write_failed({"name": run.name, "returncode": None,
                                               "error": f"cannot start: {e}"})
            self.set_status(run.name, "failed", f"cannot start: {e}")
            return
        resume = max(Workdir(run.workdir).checkpoint_steps(), default=0)
        self.active[run.name] = Active(run, proc, slot, lock_fd, time.time(), resume)
        self.set_status(run.name, "running", (f"resuming from step {resume}" if resume else "starting")
                        + (f" ({slot.describe()})" if slot.pinned else ""))

    def reap(self) -> None:
        """Record the runs whose processes ended, and free their slots."""
        for name, a in list(self.active.items()):
            rc = a.proc.poll()
            if rc is None:
                continue
            el = self.elapsed[name] = time.time() - a.started
            status = finish_run(a.run, rc, interrupted=bool(self.signals), elapsed=el)
            os.close(a.lock_fd)
            del self.active[name]
            self.free = sorted(self.free + [a.slot], key=lambda s: s.index)
            self.set_status(name, status, ended(a.run, status, rc, el))

    def forward_signals(self) -> None:
        """One SIGTERM to every running run per signal received (at most two)."""
        for a in self.active.values():
            while a.signals_sent < min(self.signals, 2):
                a.signals_sent += 1
                with contextlib.suppress(ProcessLookupError):
                    a.proc.send_signal(signal.SIGTERM)
        if self.signals and not self.told:
            self.told = True
            self.display.message(f"{self.signal_name}: stopping; {len(self.active)} running run(s) "
                                 "checkpoint and exit (signal again to interrupt them at once)")

    def run(self, poll_s: float) -> None:
        while (self.queue and not self.signals) or self.active:
            self.start_ready()
            self.reap()
            self.forward_signals()
            self.display.update(self.statuses, self.active, self.elapsed)
            if self.active or self.queue:
                time.sleep(poll_s)

    def stop_all(self) -> None:
        """After an exception inside the loop: stop the runs rather than leave orphans."""
        for a in self.active.values():
            with contextlib.suppress(ProcessLookupError):
                a.proc.send_signal(signal.SIGTERM)
            a.proc.wait()
            os.close(a.lock_fd)
        self.active.clear()

    def result(self) -> SweepResult:
        for run in self.runs:
            if self.statuses[run.name] == "running":  # never started: locked elsewhere when we stopped
                self.statuses[run.name] = run.status()
        result = SweepResult(self.statuses)
        result.interrupted = bool(self.signals)
        return result


@contextlib.contextmanager
def _noting_signals(handler):
    """SIGINT and SIGTERM go to `handler` inside the block (only in the main thread)."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def run_sweep(runs: list[SweepRun], *, config_path, arg: str | None, parallel: int = 1,
              threads_per_run: int | None = None, table: bool = True, retry_failed: bool = True,
              out: TextIO | None = None, poll_s: float = 0.2, refresh_s: float = 2.0) -> SweepResult:
    """Run every run that is not done (failed runs again unless retry_failed=False), `parallel`
    at a time. Returns run name -> status; `.interrupted` when SIGINT/SIGTERM stopped it."""
    out = out or sys.stdout
    display = Display(runs, out, live=table, refresh_s=refresh_s)
    loop = _Loop(runs, display, config_path=config_path, arg=arg, retry_failed=retry_failed,
                 slots=make_slots(parallel, threads_per_run))
    done = sum(st == "done" for st in loop.statuses.values())
    failed = sum(st == "failed" for st in loop.statuses.values())
    display.message(f"sweep: {len(runs)} runs; {done} done (skipped)"
                    + ("" if retry_failed else f", {failed} failed (skipped: --noretry_failed)")
                    + f"; {len(loop.queue)} to run, {parallel} at a time")
    try:
        with _noting_signals(loop.note_signal):
            loop.run(poll_s)
    finally:
        loop.stop_all()
    result = loop.result()
    display.clear()
    out.write(display.table(result, {}, loop.elapsed) + "\n" + display.summary(result)
              + ("; interrupted: run the same command to finish the rest" if result.interrupted else "")
              + "\n")
    for r in runs:
        if result[r.name] == "failed":
            wd = Workdir(r.workdir)
            out.write(f"failed: {r.name}: {(wd.failed() or {}).get('error', '')} "
                      f"(log: {wd.file(LOG)}; the next sweep retries it)\n")
    out.flush()
    return result


def status_report(runs: list[SweepRun]) -> str:
    """Every run's status and progress (`lmjax sweep --status`)."""
    return status_table(runs, {r.name: r.status() for r in runs})


__all__ = ["Active", "SweepResult", "finish_run", "run_sweep", "start_run", "status_report", "train_command"]
