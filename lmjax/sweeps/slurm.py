"""Submitting a sweep to SLURM with submitit (or to submitit's local executor, for tests).

Each job runs exactly what the local runner runs (`lmjax train` for one run, in a subprocess,
appending to <workdir>/train.log) and records the same result.json / failed.json, so
`lmjax sweep ... --status` and the skip / resume logic work the same for both. Jobs hold the
run's sweep.lock while they train, so a local sweep never trains a run a job is training.

On SLURM's pre-timeout signal or a preemption, submitit calls `TrainJob.checkpoint`: it sends the
run SIGTERM (lmjax checkpoints and exits 0) and requeues the job, which resumes the run.

A run may span several nodes (`nodes`, `tasks_per_node`: one task per GPU by default): submitit
starts the job's function in every task; each task starts `lmjax train`, which finds itself in a
SLURM step of several tasks and joins them into one JAX job (`lmjax.process.distributed`). Task 0
holds the run's lock and records its result; the other tasks only train.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import submitit

from lmjax.sweeps import trainlog
from lmjax.sweeps.runner import finish_run, prepare, train_command
from lmjax.sweeps.slots import Slot, available_cpus, child_env
from lmjax.sweeps.spec import SweepError, SweepRun, runs_folder
from lmjax.workdir import LOG, Workdir


class TrainJob(submitit.helpers.Checkpointable):
    """The picklable job: train one run to completion (or until preempted)."""

    def __init__(self, config_path: str, arg: str | None):
        self.config_path = str(Path(config_path).resolve())
        self.arg = arg
        self._proc: subprocess.Popen | None = None
        self._interrupted = False

    def __getstate__(self):
        return {"config_path": self.config_path, "arg": self.arg}

    def __setstate__(self, state):
        self.__init__(state["config_path"], state["arg"])

    def __call__(self, run: SweepRun) -> str:
        rank = int(os.environ.get("SLURM_PROCID") or 0)
        if rank > 0:  # another task of a multi-node run: train alongside task 0, record nothing
            return self._train_worker(run)
        if run.status() == "done":
            return "done"
        lock_fd = Workdir(run.workdir).try_lock()
        if lock_fd is None:
            return "running"  # another job or sweep is training it
        try:
            if run.status(check_lock=False) == "done":  # finished while we queued
                return "done"
            return self._train(run, lock_fd)
        finally:
            os.close(lock_fd)

    def _train(self, run: SweepRun, lock_fd: int) -> str:
        cmd = train_command(run, self.config_path, self.arg)
        # the job's allocation (cgroup, CUDA_VISIBLE_DEVICES) already is this run's slice
        slot = Slot(index=0, cpus=None, threads=len(available_cpus()))
        wd = prepare(run)
        job = os.environ.get("SLURM_JOB_ID") or f"local pid {os.getpid()}"
        started = time.time()
        with open(wd.file(LOG), "a") as log:
            trainlog.write_header(log, f"job {job}", cmd)
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=child_env(run, slot),
                                          pass_fds=(lock_fd,))
        while self._proc.poll() is None:  # poll, not wait(): checkpoint() may run meanwhile
            time.sleep(0.5)
        return finish_run(run, self._proc.returncode, interrupted=self._interrupted,
                          elapsed=time.time() - started)

    def _train_worker(self, run: SweepRun) -> str:
        cmd = train_command(run, self.config_path, self.arg)
        slot = Slot(index=0, cpus=None, threads=len(available_cpus()))
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=child_env(run, slot))
        while self._proc.poll() is None:
            time.sleep(0.5)
        return "worker done" if self._proc.returncode == 0 else f"worker exit {self._proc.returncode}"

    def checkpoint(self, run: SweepRun) -> submitit.helpers.DelayedSubmission:
        """Pre-timeout / preemption: let the run checkpoint, then requeue the same job."""
        self._interrupted = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            deadline = time.time() + 80  # submitit's signal comes 90 s before the time limit
            while proc.poll() is None and time.time() < deadline:
                time.sleep(0.5)
        return submitit.helpers.DelayedSubmission(TrainJob(self.config_path, self.arg), run)


def parse_time(text: str | int) -> int:
    """A SLURM time limit -> minutes: 'M', 'M:S', 'H:M:S', 'D-H', 'D-H:M', 'D-H:M:S' (or an int)."""
    if isinstance(text, int):
        return text
    s = str(text).strip()
    try:
        days = 0
        if "-" in s:
            d, s = s.split("-", 1)
            days = int(d)
            h, m, sec = ([int(x) for x in s.split(":")] + [0, 0])[:3]
        else:
            parts = [int(x) for x in s.split(":")]
            if len(parts) > 3:
                raise ValueError
            h, m, sec = {1: (0, *parts, 0), 2: (0, *parts), 3: tuple(parts)}[len(parts)]
    except ValueError:
        raise SweepError(f"--slurm_time={text!r}: use minutes, H:MM:SS or D-HH:MM:SS") from None
    return days * 1440 + h * 60 + m + (1 if sec else 0)


def submit(runs: list[SweepRun], *, config_path, arg: str | None, executor: str = "slurm",
           array: bool = True, folder: str | Path | None = None, timeout_min: int = 240,
           gpus_per_run: int = 0, cpus_per_run: int | None = None, partition: str | None = None,
           nodes: int = 1, tasks_per_node: int | None = None,
           array_parallelism: int | None = None, slurm_kwargs: dict[str, Any] | None = None,
           retry_failed: bool = True) -> tuple[list, list[SweepRun]]:
    """Submit the runs that are not done (and not running elsewhere) as one job array, or one
    job per run. `executor`: 'slurm' or 'local' (submitit's LocalExecutor, for tests).
    Returns (jobs, the runs they train), in the same order."""
    if executor not in ("slurm", "local"):
        raise SweepError(f"executor must be 'slurm' or 'local', got {executor!r}")
    skip = {"done", "running"} | (set() if retry_failed else {"failed"})
    todo = [r for r in runs if r.status() not in skip]
    folder = Path(folder) if folder else runs_folder(config_path, arg) / "_submitit"
    if not todo:
        return [], []
    try:
        ex = submitit.AutoExecutor(folder=str(folder), cluster=executor)
    except RuntimeError as e:  # e.g. no srun/sbatch here
        raise SweepError(f"cannot submit to {executor}: {str(e).splitlines()[0]} "
                         "(--slurm_local runs the jobs on this machine through submitit)") from e
    if nodes < 1 or (tasks_per_node is not None and tasks_per_node < 1):
        raise SweepError(f"--slurm_nodes and --slurm_tasks_per_node must be positive, got {nodes}, {tasks_per_node}")
    tasks = tasks_per_node or (gpus_per_run if nodes > 1 and gpus_per_run else 1)
    params: dict[str, Any] = {"timeout_min": int(timeout_min), "nodes": int(nodes), "tasks_per_node": int(tasks),
                              "name": f"lmjax-{Path(config_path).resolve().parent.name}-{arg or 'default'}"}
    if gpus_per_run:
        params["gpus_per_node"] = int(gpus_per_run)
    if cpus_per_run:
        params["cpus_per_task"] = int(cpus_per_run)
    if executor == "slurm":
        if partition:
            params["slurm_partition"] = partition
        if array_parallelism:
            params["slurm_array_parallelism"] = int(array_parallelism)
        params.update({k if k.startswith("slurm_") or k in _GENERIC else f"slurm_{k}": v
                       for k, v in (slurm_kwargs or {}).items()})
    try:
        ex.update_parameters(**params)
    except (ValueError, TypeError, NameError) as e:
        raise SweepError(f"submitit rejected the job parameters: {str(e).splitlines()[0]}") from e
    job_fn = TrainJob(str(config_path), arg)
    if array:
        jobs = ex.map_array(job_fn, todo)
    else:
        jobs = [ex.submit(job_fn, r) for r in todo]
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "jobs.jsonl"
    with open(record, "a") as f:
        for job, run in zip(jobs, todo):
            f.write(json.dumps({"run": run.name, "job_id": job.job_id, "executor": executor,
                                "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
    return jobs, todo


_GENERIC = {"mem_gb", "timeout_min", "gpus_per_node", "cpus_per_task", "nodes", "tasks_per_node",
            "name", "stderr_to_stdout"}


def wait(jobs: list, runs: list[SweepRun]) -> dict[str, str]:
    """Block until every job ends; run name -> status (from the workdir, as everywhere)."""
    for job in jobs:
        try:
            job.result()
        except Exception:  # noqa: BLE001 - the workdir tells what happened
            pass
    return {r.name: r.status() for r in runs}


__all__ = ["TrainJob", "parse_time", "submit", "wait"]
