"""What a sweep shows while it runs: a live table on a terminal (redrawn in place), elsewhere one
line per status change; and the table of every run's status and progress (`--status`)."""

from __future__ import annotations

import io
import shutil
import time
from typing import TYPE_CHECKING, Any, TextIO

from tabulate import tabulate

from lmjax.formatting import duration, fixed
from lmjax.sweeps.spec import SweepRun
from lmjax.workdir import Workdir

if TYPE_CHECKING:
    from lmjax.sweeps.runner import Active

COLUMNS = ["run", "status", "step", "loss", "val loss", "elapsed", "ETA"]
# the live table, when cut to the terminal's height, keeps runs in this order
RANK = {"running": 0, "failed": 1, "partial": 2, "stale": 2, "pending": 3, "done": 4}


def progress(run: SweepRun) -> dict[str, Any]:
    """step, loss, val_loss, step_time logged so far (metrics.jsonl): the last value of each."""
    out: dict[str, Any] = {}
    for row in Workdir(run.workdir).metrics(tail_bytes=32 * 1024):
        out["step"] = max(out.get("step", 0), int(row["step"]))
        out.update({k: row[k] for k in ("loss", "val_loss", "step_time") if k in row})
    return out


def _loss(v) -> str:
    return fixed(v, ".4f", empty="-")


def _time(seconds) -> str:
    return duration(seconds, empty="-")


def row(run: SweepRun, status: str, active: Active | None, elapsed: float | None) -> list:
    """One run's line: status, step/steps, loss, val loss, elapsed, ETA."""
    p = progress(run)
    step, eta = p.get("step", 0), None
    if status == "done":
        res = Workdir(run.workdir).result() or {}
        p.update({k: res[k] for k in ("loss", "val_loss") if k in res})
        step, elapsed = res.get("step", step), res.get("elapsed")
    elif active is not None:
        elapsed = time.time() - active.started
        if step > active.start_step and p.get("step_time"):
            eta = (run.steps - step) * float(p["step_time"])
    if active is not None and status == "running" and active.slot.pinned:
        status = f"running ({active.slot.describe()})"
    return [run.name, status, f"{step}/{run.steps}", _loss(p.get("loss")), _loss(p.get("val_loss")),
            _time(elapsed), _time(eta)]


def summary(statuses: dict[str, str], elapsed: float | None = None) -> str:
    """`3 runs: 2 done, 1 failed; elapsed 1m05s`."""
    counts: dict[str, int] = {}
    for st in statuses.values():
        counts[st] = counts.get(st, 0) + 1
    return (f"{len(statuses)} runs: " + ", ".join(f"{n} {st}" for st, n in sorted(counts.items()))
            + (f"; elapsed {_time(elapsed)}" if elapsed is not None else ""))


def status_table(runs: list[SweepRun], statuses: dict[str, str]) -> str:
    """Every run's status and progress, and the counts (what `lmjax sweep --status` prints)."""
    rows = [row(r, statuses[r.name], None, None) for r in runs]
    return tabulate(rows, headers=COLUMNS) + "\n" + summary(statuses)


class Display:
    """A live table on a terminal (redrawn every `refresh_s`); elsewhere one line per status
    change, so logs stay readable."""

    def __init__(self, runs: list[SweepRun], out: TextIO, live: bool, refresh_s: float = 2.0):
        self.runs, self.out, self.refresh_s = runs, out, refresh_s
        self.live = live and _isatty(out)
        self.lines = 0  # lines of the table on screen now
        self.last = 0.0
        self.t0 = time.time()

    def rows(self, statuses: dict, active: dict[str, Active], elapsed: dict[str, float]) -> list[list]:
        return [row(r, statuses[r.name], active.get(r.name), elapsed.get(r.name)) for r in self.runs]

    def table(self, statuses, active, elapsed) -> str:
        return tabulate(self.rows(statuses, active, elapsed), headers=COLUMNS)

    def summary(self, statuses: dict) -> str:
        return summary(statuses, time.time() - self.t0)

    def live_table(self, statuses, active, elapsed) -> str:
        """The table, cut to the terminal's height: running, failed, partial runs first."""
        rows = self.rows(statuses, active, elapsed)
        room = max(3, shutil.get_terminal_size((100, 40)).lines - 5)
        if len(rows) > room:
            order = sorted(range(len(rows)), key=lambda i: (RANK.get(rows[i][1].split(" ")[0], 3), i))
            keep = sorted(order[:room - 1])
            hidden = len(rows) - len(keep)
            rows = [rows[i] for i in keep] + [[f"... {hidden} more"] + [""] * (len(COLUMNS) - 1)]
        return tabulate(rows, headers=COLUMNS)

    def update(self, statuses, active, elapsed, force: bool = False) -> None:
        """Redraw the live table (at most every `refresh_s` unless `force`)."""
        if not self.live or (not force and time.time() - self.last < self.refresh_s):
            return
        text = self.live_table(statuses, active, elapsed) + "\n" + self.summary(statuses) + "\n"
        self.clear()
        self.out.write(text)
        self.out.flush()
        self.lines, self.last = text.count("\n"), time.time()

    def event(self, name: str, old: str, new: str, detail: str = "") -> None:
        """A run's status changed: one line, unless the live table shows it."""
        if self.live:
            return
        self.out.write(f"[{time.strftime('%H:%M:%S')}] {name}: {old} -> {new}{'  ' + detail if detail else ''}\n")
        self.out.flush()

    def clear(self) -> None:
        """Erase the live table (it is drawn again on the next update)."""
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


__all__ = ["Display", "progress", "row", "status_table", "summary"]
