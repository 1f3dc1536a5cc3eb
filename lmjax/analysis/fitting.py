"""Which runs the report fits, and how: per-group power-law fits and the compute-optimal frontier
of an experiment's runs (`lmjax.analysis.runs`); the fitting itself is `lmjax.analysis.fits`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lmjax.analysis import fits as fits_lib

SEED = 0  # the bootstrap's: reruns give the same intervals
CI = 0.9


def groups(df: pd.DataFrame) -> pd.Series:
    """The fit/plot group of each row: the variant, or `arg/variant` when several args."""
    if df["arg"].nunique() > 1:
        return df["arg"].astype(str) + "/" + df["variant"].astype(str)
    return df["variant"].astype(str)


def fit_points(df: pd.DataFrame) -> pd.DataFrame:
    """The rows the fits use: `done` runs (not partial, stale or failed) with finite positive
    compute and val_loss."""
    ok = (df["status"] == "done") & np.isfinite(df["compute"].astype(float)) \
        & np.isfinite(df["val_loss"].astype(float)) & (df["compute"] > 0) & (df["val_loss"] > 0)
    return df[ok]


def fit_all(df: pd.DataFrame, *, bootstrap_n: int = 1000, seed: int = SEED, ci: float = CI) -> dict:
    """group -> `fits.fit_variant(...)` dict (plus `runs`: the runs fitted), for every group
    with at least one run; groups without completed runs report 'insufficient points'."""
    group = groups(df)
    pts = fit_points(df)
    out = {}
    counted = set(group[df["compute"].astype(float) == 0])  # n-grams: no training FLOPs to fit on
    for g in sorted(group.unique()):
        sub = pts[group[pts.index] == g]
        if not len(sub) and (g.endswith("unknown") or g in counted):
            continue  # runs without a config.json yet (pending, or failed before starting)
        seeds = _seeds(sub)
        se = sub["val_loss_se"].to_numpy(float) if "val_loss_se" in sub else None
        res = fits_lib.fit_variant(sub["compute"].to_numpy(float), sub["val_loss"].to_numpy(float),
                                   bootstrap_n=bootstrap_n, seed=seed, ci=ci, seeds=seeds, se=se)
        res["runs"] = sub["run"].tolist()
        if seeds is not None:  # seeds per run, as the bootstrap resampled them
            res["seeds"] = [len(s) if s else 1 for s in seeds]
        if se is not None and np.isfinite(se).any():  # and the evaluation noise it added
            res["eval_se"] = [float(v) for v in se]
        out[g] = res
    return out


def _seeds(sub: pd.DataFrame):
    """Each run's per-seed losses for the bootstrap, or None when every run has one seed."""
    if "val_loss_seeds" not in sub or not sub["val_loss_seeds"].map(lambda s: isinstance(s, list)).any():
        return None
    return [s if isinstance(s, list) else None for s in sub["val_loss_seeds"]]


def frontier(df: pd.DataFrame, cv: pd.DataFrame) -> list[dict]:
    """`fits.compute_optimal_frontier` over every eval point of every trained run that did not
    fail (a counted n-gram, at 0 FLOPs, would hold the whole axis)."""
    group = dict(zip(zip(df["arg"], df["run"]), groups(df)))
    ok = cv[(cv["status"] != "failed") & (cv["compute"] > 0)]  # counted models spend no FLOPs
    pts = [{"compute": r.compute, "loss": r.val_loss, "variant": group[(r.arg, r.run)], "run": r.run,
            "arg": r.arg, "step": int(r.step), "tokens": r.tokens}
           for r in ok.itertuples(index=False)]
    return fits_lib.compute_optimal_frontier(pts)


def segments(front: list[dict]) -> list[dict]:
    """Consecutive frontier points held by the same variant, merged: {"variant", "from", "to"
    (the next segment's start, None for the last), "runs", "loss_hi", "loss_lo"}."""
    segs = []
    for i, p in enumerate(front):
        nxt = front[i + 1]["compute"] if i + 1 < len(front) else None
        if segs and segs[-1]["variant"] == p["variant"]:
            s = segs[-1]
            s["to"], s["loss_lo"] = nxt, p["loss"]
            if p["run"] not in s["runs"]:
                s["runs"].append(p["run"])
        else:
            segs.append({"variant": p["variant"], "from": p["compute"], "to": nxt, "runs": [p["run"]],
                         "loss_hi": p["loss"], "loss_lo": p["loss"]})
    return segs
