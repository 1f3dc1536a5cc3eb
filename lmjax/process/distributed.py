"""Joining a multi-process JAX job: one process per host (or per GPU), one global mesh.

`lmjax train/eval/sample` call `join_cluster()` before any other JAX call. It starts JAX's
distributed runtime (`jax.distributed.initialize`) when the environment names a job of several
processes, and does nothing on a single host:

- explicit: JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and
  JAX_PROCESS_ID, all three (launch/local.sh and the Kubernetes manifest set them; JAX itself
  reads only the first outside a detected cluster);
- a SLURM step of more than one task (SLURM_STEP_ID, SLURM_NTASKS > 1): JAX's SLURM detection;
- a multi-host TPU slice (TPU_WORKER_HOSTNAMES lists more than one worker): JAX's TPU detection.
`--distributed` forces the call (for a cluster JAX detects that is not listed above).
A process that dies is noticed by the others through the coordinator's heartbeat within
HEARTBEAT_S seconds (JAX's default is 100).
"""

from __future__ import annotations

import os

from lmjax.errors import ConfigError

EXPLICIT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
HEARTBEAT_S = 10


def cluster_kwargs(environ=None) -> dict | None:
    """The arguments of jax.distributed.initialize for this environment ({} lets JAX detect the
    cluster), or None when the environment names no multi-process job."""
    env = os.environ if environ is None else environ
    if any(env.get(k) for k in EXPLICIT):
        missing = [k for k in EXPLICIT if not env.get(k)]
        if missing:
            raise ConfigError(f"a multi-process job needs {', '.join(EXPLICIT)} together; "
                              f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} unset")
        try:
            n, i = int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"])
        except ValueError:
            raise ConfigError("JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers, got "
                              f"{env['JAX_NUM_PROCESSES']!r} and {env['JAX_PROCESS_ID']!r}") from None
        if not 0 <= i < n:
            raise ConfigError(f"JAX_PROCESS_ID={i} must be in [0, JAX_NUM_PROCESSES={n})")
        return {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"], "num_processes": n, "process_id": i}
    if env.get("SLURM_STEP_ID") is not None and int(env.get("SLURM_NTASKS") or 1) > 1:
        return {}
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]) > 1:
        return {}
    return None


def join_cluster(*, force: bool = False, environ=None) -> dict | None:
    """Start JAX's distributed runtime when the environment (or `force`) says so; returns what
    run.json records about the job, or None for a single process."""
    kwargs = cluster_kwargs(environ)
    if kwargs is None and not force:
        return None
    import jax

    try:
        jax.distributed.initialize(**(kwargs or {}), heartbeat_timeout_seconds=HEARTBEAT_S)
    except (ValueError, RuntimeError) as e:  # e.g. --distributed where JAX detects no cluster
        raise ConfigError(f"cannot join the multi-process job ({str(e).splitlines()[0]}); set "
                          f"{', '.join(EXPLICIT)}, or run inside a SLURM step or TPU slice") from None
    return job_info(kwargs or {})


def job_info(kwargs: dict | None = None) -> dict:
    """Process count and index, local and global devices, and the coordinator."""
    import jax

    return {"processes": jax.process_count(), "process_index": jax.process_index(),
            "local_devices": jax.local_device_count(), "global_devices": jax.device_count(),
            "coordinator": (kwargs or {}).get("coordinator_address")
            or os.environ.get("JAX_COORDINATOR_ADDRESS")}


def store_job():
    """The processes of this JAX job as a token store's builders (lmjax.data.Job): barriers and
    gathers through JAX's distributed runtime; one process: the trivial job."""
    import jax

    from lmjax.data.store import Job

    if jax.process_count() == 1:
        return Job()
    import numpy as np
    from jax.experimental import multihost_utils

    return Job(index=jax.process_index(), count=jax.process_count(),
               barrier=multihost_utils.sync_global_devices,
               all_ok=lambda ok: [bool(x) for x in np.ravel(multihost_utils.process_allgather(np.int32(ok)))],
               token=lambda: int(multihost_utils.broadcast_one_to_all(
                   np.int32(int.from_bytes(os.urandom(3), "little")))))
