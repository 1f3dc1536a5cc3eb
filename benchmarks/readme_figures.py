"""README.md's results figures: one `lmjax train` run, its final validation figures in a record.

    python -m benchmarks.readme_figures --config configs/NAME.py[:ARG] [--config.KEY=VAL ...]

Runs `lmjax train` once, as a user would, in a fresh workdir, and writes
benchmarks/results/<date>-readme-<config>.json: the command, the run's config, parameter count
(stored n-grams for an n-gram model), train and validation tokens, steps, and the final
validation loss (nats/token) and bits per byte over the whole validation split (the command gets
`--config.train.eval_batches=0` when the config evaluates fewer batches), with the date, the
code's commit, the versions and the host (`benchmarks.records`). No timings: these figures are a
function of the config, the code and the corpus, not of the machine's load.

README.md's tables whose last column is `record` show these records: each row names its record,
and every other cell is what `cell()` renders from it (`mismatches()` lists the cells that differ;
tests/test_readme_figures.py checks README.md with it).
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable

from absl import flags

from benchmarks import cli, records

RESULTS = "benchmarks/results"  # where the records are, relative to the repository


def command(config: str, overrides: list[str]) -> str:
    """The command a reader types to reproduce a record (its workdir left out)."""
    return " ".join(["lmjax train --config", config, *overrides])


def measure(config: str, overrides: list[str], workdir: Path) -> dict:
    """One `lmjax train` run in `workdir`; the record's fields."""
    final = cli.run_json(cli.lmjax_train(config, overrides, workdir))
    run = json.loads((workdir / "run.json").read_text())
    return {"config": config, "overrides": overrides, "command": command(config, overrides),
            "run_config": json.loads((workdir / "config.json").read_text()),
            "params": run["params"], "train_tokens": run["train_tokens"],
            "val_tokens": run["val_tokens"], "steps": final["step"], "val_loss": final["val_loss"],
            "val_bits_per_byte": final["val_bits_per_byte"]}


def _define_flags(fv: flags.FlagValues) -> None:
    records.define_flags(fv, label=False, rows=False)


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    fv = cli.parse("benchmarks.readme_figures", __doc__, argv, _define_flags, config="required")
    config, overrides = fv["config"].config_filename, cli.config_overrides(argv)
    if fv.config.train.eval_batches != 0:  # the figures are of the whole validation split
        overrides.append("--config.train.eval_batches=0")
    with tempfile.TemporaryDirectory(prefix="lmjax-readme-") as tmp:
        fields = measure(config, overrides, Path(tmp) / "run")
    kind = "readme-" + cli.config_name(fv)[1].replace(":", "-")
    return records.save_record(fields, kind, fv, None, load=records.load_avg())


# ---- README.md's record tables ----

def _model(rec: dict) -> dict:
    return rec["run_config"]["model"]


# The columns a record table may have: header -> the cell rendered from the record (`path`: its
# path relative to the repository).
CELLS: dict[str, Callable[[dict, str], str]] = {
    "command": lambda rec, path: f"`{rec['command']}`",
    "layers x width": lambda rec, path: f"{_model(rec)['num_layers']} x {_model(rec)['width']}",
    "params": lambda rec, path: f"{rec['params'] / 1e6:.2f}M",
    "n-grams": lambda rec, path: f"{rec['params']:,}",
    "val loss (nats/token)": lambda rec, path: f"{rec['val_loss']:.3f}",
    "val bits/byte": lambda rec, path: f"{rec['val_bits_per_byte']:.2f}",
    "record": lambda rec, path: f"[`{Path(path).name}`]({path})",
}

_LINK = re.compile(r"\]\(([^)]+\.json)\)")


def record_tables(text: str) -> list[list[list[str]]]:
    """The markdown tables of `text` whose last header cell is `record`: each a list of rows
    (the header first, the |---| rule left out), each row a list of stripped cells."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
        else:
            if block and block[0][-1] == "record":
                tables.append([block[0], *block[2:]])
            block = []
    return tables


def mismatches(text: str, repo: Path) -> list[str]:
    """Every cell of `text`'s record tables that differs from what its row's record gives
    (bold ignored), as 'record: header: shown != recorded'; a row without a record, a missing
    record or a column `CELLS` does not know is listed too."""
    out = []
    for header, *rows in record_tables(text):
        out += [f"unknown column {h!r} (known: {sorted(CELLS)})" for h in header if h not in CELLS]
        for row in rows:
            link = _LINK.search(row[-1])
            if link is None or not (repo / link.group(1)).is_file():
                out.append(f"row {row}: no record at {link.group(1) if link else '(no link)'}")
                continue
            rec = json.loads((repo / link.group(1)).read_text())
            for h, shown in zip(header, row):
                want = CELLS[h](rec, link.group(1)) if h in CELLS else shown
                if shown.replace("**", "") != want:
                    out.append(f"{link.group(1)}: {h}: {shown!r} != {want!r}")
    return out


if __name__ == "__main__":
    cli.run(main)
