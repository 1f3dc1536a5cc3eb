"""A sweep's <workdir>/train.log: every attempt's stdout and stderr, each after a header line
the sweep (or its SLURM job) writes, and what the latest attempt printed last."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import TextIO

from lmjax.workdir import tail_text

HEADER = "=== lmjax sweep"


def write_header(log: TextIO, who: str, cmd: list[str]) -> None:
    """Start an attempt: `=== lmjax sweep <time> <who>: <command>`."""
    log.write(f"{HEADER} {time.strftime('%Y-%m-%d %H:%M:%S')} {who}: {' '.join(cmd)}\n")
    log.flush()


def headers(log_path: Path) -> list[str]:
    """The header line of every attempt, oldest first."""
    try:
        return [ln for ln in Path(log_path).read_text().splitlines() if ln.startswith(HEADER)]
    except OSError:
        return []


def attempt_lines(log_path: Path, nbytes: int = 256 * 1024) -> list[str]:
    """The lines of train.log written by the latest attempt (after the sweep's last header)."""
    lines = tail_lines(log_path, nbytes)
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


def tail_lines(path: Path, nbytes: int) -> list[str]:
    """The whole lines in the last `nbytes` of a file ([] when it cannot be read)."""
    return tail_text(path, nbytes).splitlines()


__all__ = ["HEADER", "attempt_lines", "error_line", "final_line", "headers", "tail_lines", "write_header"]
