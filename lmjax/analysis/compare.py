"""Differences between variants at equal size, against both kinds of noise.

    python -m lmjax.analysis.compare experiments/NAME --baseline VARIANT [--variants A,B,...]

Reads the report's results.csv (`lmjax report` writes it) and prints two markdown tables: each
completed run's final validation loss as mean ± sd over its seeds [evaluation standard error],
by size and variant, and each variant's difference from the baseline at the same size in nats
and in standard errors of the difference, sqrt(sd1^2/k1 + sd2^2/k2 + se1^2 + se2^2): the seeds'
spread of two k-seed means plus both evaluations' own noise (counted as independent, which
overstates it: both runs score the same windows). **Bold**: more than 3 standard errors.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("baseline", None, "The variant the others are compared with.", required=True)
flags.DEFINE_list("variants", [], "Only these variants (default: all).")


def load(experiment_dir) -> pd.DataFrame:
    df = pd.read_csv(Path(experiment_dir) / "report" / "results.csv")
    df = df[df["status"] == "done"].copy()
    df["size"] = df["run"].str.extract(r"size-([^_]+)$", expand=False)
    return df


def _z(a, b) -> tuple[float, float]:
    diff = b.val_loss - a.val_loss
    var = sum((r.val_loss_sd if math.isfinite(r.val_loss_sd) else 0.0) ** 2 / max(r.seeds, 1)
              + (r.val_loss_se if math.isfinite(r.val_loss_se) else 0.0) ** 2 for r in (a, b))
    return diff, diff / math.sqrt(var) if var > 0 else math.inf


def tables(df: pd.DataFrame, baseline: str, variants: list[str] | None = None) -> str:
    """The two tables, over the sizes where any of `variants` (default: all) has a completed run;
    a run's size is its name's `size-X` label."""
    size_key = "size"
    if variants:
        df = df[df["variant"].isin([baseline, *variants])]
    variants = [baseline] + sorted(v for v in df["variant"].unique() if v != baseline)
    sizes = list(dict.fromkeys(df.sort_values("params_non_embedding")[size_key]))
    cell = {(r[size_key], r["variant"]): r for _, r in df.iterrows()}
    loss = ["| size | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
    diffs = ["| size | " + " | ".join(f"{v} - {baseline}" for v in variants[1:]) + " |",
             "|---" * len(variants) + "|"]
    for s in sizes:
        row, drow = [], []
        for v in variants:
            r = cell.get((s, v))
            sd = f" ± {r.val_loss_sd:.3f}" if r is not None and math.isfinite(r.val_loss_sd) else ""
            row.append("" if r is None else f"{r.val_loss:.4f}{sd} [{r.val_loss_se:.4f}]")
            if v != baseline:
                b = cell.get((s, baseline))
                if r is None or b is None:
                    drow.append("")
                else:
                    d, z = _z(b, r)
                    text = f"{d:+.3f} ({abs(z):.1f})"
                    drow.append(f"**{text}**" if abs(z) > 3 else text)
        loss.append(f"| {s} | " + " | ".join(row) + " |")
        diffs.append(f"| {s} | " + " | ".join(drow) + " |")
    return "\n".join(loss) + "\n\n" + "\n".join(diffs) + "\n"


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("give one experiment folder")
    sys.stdout.write(tables(load(argv[1]), FLAGS.baseline, FLAGS.variants))


if __name__ == "__main__":
    app.run(main)
