"""What a sweep's run process does before it becomes `lmjax train`:

    python -m lmjax.sweeps.launch [--cpus=0,1] [--parent=PID] -- COMMAND ARG...

It pins itself to its CPU cores (`--cpus`), and on Linux asks for SIGTERM when the sweep
(`--parent`) dies, even by SIGKILL, so the run checkpoints and leaves instead of training on
unsupervised; then it execs COMMAND, which keeps both settings. This is done in the child rather
than in a `preexec_fn`, which would fork a possibly multithreaded parent (JAX) and run Python
there.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
USAGE = "usage: python -m lmjax.sweeps.launch [--cpus=0,1] [--parent=PID] -- COMMAND ARG..."


def command(cmd: list[str], *, cpus: list[int] | None, parent_pid: int | None) -> list[str]:
    """`cmd`, run through this module when it needs pinning or the parent-death signal."""
    if cpus is None and parent_pid is None:
        return list(cmd)
    opts = [f"--cpus={','.join(map(str, cpus))}"] if cpus is not None else []
    opts += [f"--parent={parent_pid}"] if parent_pid is not None else []
    return [sys.executable, "-m", "lmjax.sweeps.launch", *opts, "--", *cmd]


def parse(argv: list[str]) -> tuple[list[int] | None, int | None, list[str]]:
    """(cpus, parent pid, command) from this module's arguments; ValueError when malformed."""
    if "--" not in argv:
        raise ValueError("no command after --")
    split = argv.index("--")
    opts, cmd = argv[:split], argv[split + 1:]
    if not cmd:
        raise ValueError("no command after --")
    cpus, parent = None, None
    for opt in opts:
        name, _, value = opt.partition("=")
        if name == "--cpus":
            cpus = [int(c) for c in value.split(",") if c]
        elif name == "--parent":
            parent = int(value)
        else:
            raise ValueError(f"unknown option {opt!r}")
    return cpus, parent, cmd


def pin(cpus: list[int]) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)


def follow_parent(parent_pid: int) -> bool:
    """Ask for SIGTERM when the parent dies (Linux); False if it has died already."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass
    return os.getppid() == parent_pid  # it may have died before prctl: no signal would come


def main(argv: list[str] | None = None) -> int:
    try:
        cpus, parent, cmd = parse(sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        print(f"error: {e}; {USAGE}", file=sys.stderr)
        return 2
    if cpus is not None:
        pin(cpus)
    if parent is not None and not follow_parent(parent):
        return 128 + signal.SIGTERM  # as if the SIGTERM had come
    os.execv(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
