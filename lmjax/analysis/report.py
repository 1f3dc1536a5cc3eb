"""`lmjax report experiments/NAME`: a sweep's runs -> results table, power-law fits and plots.

An experiment folder holds `config.py` and one workdir per run under `runs/<arg>/<run name>/`
(`config.json`, `run.json`, `metrics.jsonl` as `lmjax train` writes them), plus `result.json`
(the final metrics of `lmjax train`) when the run completed or `failed.json` when it failed.

The work is split by job: `runs` reads the runs into tables, `fitting` picks the points and
fits each group, `tables` writes the markdown, `plots` the PNGs; `write_report` here runs them
and writes the files.

Definitions used throughout (the table, the fits and the plots):

- tokens: training tokens seen = last step * train.batch_size * train.seq_len.
- compute C: training FLOPs = run.json's flops_per_token (6N + unembedding + attention, see
  `lmjax.models.flops_per_token`) * tokens. `compute_6nd` is Kaplan's 6 * N * D with N the
  non-embedding parameters (`params_non_embedding`) and D = tokens, for comparison.
- final val_loss / val_bits_per_byte: the last eval row of metrics.jsonl (result.json's if the
  log has none).
- status: `lmjax.workdir.Workdir.status`, the same definition `lmjax sweep` uses: `done`
  (result.json for the config the sweep now declares, not preempted, not short of
  train.steps), `stale` (a result.json written for another config than the sweep's config.py
  now declares for that run), `failed` (failed.json and no result.json), `partial` (logged steps
  or checkpoints but no result, or a preempted or short result: interrupted, or still running),
  `pending` (nothing yet). The expected config of each run comes from expanding
  `<experiment>/config.py` for each arg under runs/; runs that are not in the sweep now, and
  the runs of an arg whose sweep does not expand (a note says so), cannot be stale.
- variant: config.model.attention; `gqa-kv<K>` for grouped-query attention with K kv heads;
  `window<W>` for multi-head attention with a W-token sliding window (`<attention>-window<W>`
  for other kinds). Runs without config.json take it from the sweep's recorded `overrides`.
- provenance: when run.json records the code commit, library versions and host
  (`lmjax.process.provenance`), results.csv gains `code_commit` and `host` columns and
  results.md a "Produced by" section; for older runs both files are as before.

Fits (`fits.md`, `fits.json`) are per variant (per `arg/variant` when several args are
reported together) over the final points of the `done` runs only (not partial, stale or
failed): see `fits.fit_variant` for the few-points policy. The frontier is
`fits.compute_optimal_frontier` over every eval point of every run that is not failed. In the
plots partial and stale runs are hollow markers, failed runs are left out.

Output is deterministic for the same inputs: a fixed bootstrap seed, sorted rows, paths
relative to the experiment folder, and PNGs without a timestamp.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from lmjax.analysis import plots, tables
from lmjax.analysis.runs import position_losses, scan
from lmjax.analysis.fitting import CI, SEED, fit_all, frontier

FILES = ("results.csv", "results.md", "fits.md", "fits.json", "frontier.csv",
         "loss_vs_compute.png", "loss_vs_params.png", "frontier.png")
FRONTIER_COLUMNS = ["compute", "loss", "variant", "run", "arg", "step", "tokens"]


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    return v


def write_report(experiment_dir, *, arg: str | None = None, out=None, bootstrap_n: int = 1000) -> dict:
    """Collect the runs, fit, plot, and write into <experiment>/report/ (or `out`):

    results.csv, results.md, fits.md, fits.json, frontier.csv, loss_vs_compute.png,
    loss_vs_params.png, frontier.png; and loss_by_position.csv, loss_vs_position.png when runs
    recorded their loss by position.

    Returns {"out": folder, "files": {name: path}, "results": DataFrame, "curves": DataFrame,
    "fits": {variant: fit dict}, "frontier": [points], "results_md": str, "fits_md": str,
    "notes": [lines for the reader, e.g. a sweep that could not be expanded]}.
    Raises NoRunsError (an LmjaxError) when the folder has no runs.
    """
    exp = Path(experiment_dir)
    runs = scan(exp, arg)
    df, cv = runs.results, runs.curves
    out = Path(out) if out is not None else exp / "report"
    out.mkdir(parents=True, exist_ok=True)
    title = exp.resolve().name + (f" ({arg})" if arg else "")

    fitted = fit_all(df, bootstrap_n=bootstrap_n)
    front = frontier(df, cv)
    results_md = tables.markdown_table(df) + tables.produced_by(df, runs.provenance)
    fits_md = tables.fits_markdown(fitted, front, bootstrap_n=bootstrap_n)

    files = {name: out / name for name in FILES}
    df.to_csv(files["results.csv"], index=False, float_format="%.10g")
    files["results.md"].write_text(results_md)
    files["fits.md"].write_text(fits_md)
    files["fits.json"].write_text(json.dumps(_jsonable({
        "model": "L(C) = E + A * C^-alpha", "compute": "flops_per_token * tokens (training FLOPs)",
        "points": "final val_loss of runs with status done", "ci": CI, "bootstrap_n": bootstrap_n,
        "seed": SEED, "variants": fitted}), indent=2) + "\n")
    pd.DataFrame(front, columns=FRONTIER_COLUMNS).to_csv(files["frontier.csv"], index=False, float_format="%.10g")
    plots.plot_loss_vs_compute(df, cv, fitted, files["loss_vs_compute.png"], title)
    plots.plot_loss_vs_params(df, files["loss_vs_params.png"], title)
    plots.plot_frontier(df, cv, front, files["frontier.png"], title)
    positions = position_losses(df, exp)
    if len(positions):  # runs that recorded loss by position (older ones did not)
        files["loss_by_position.csv"] = out / "loss_by_position.csv"
        files["loss_vs_position.png"] = out / "loss_vs_position.png"
        positions.to_csv(files["loss_by_position.csv"], index=False, float_format="%.10g")
        plots.plot_loss_vs_position(positions, files["loss_vs_position.png"], title)
    return {"out": out, "files": files, "results": df, "curves": cv, "fits": fitted, "frontier": front,
            "results_md": results_md, "fits_md": fits_md, "notes": runs.notes}
