"""The report's plots: loss vs compute (with the fits), loss vs parameters, and the
compute-optimal frontier.

matplotlib's Agg canvas directly: no pyplot, no display, no global backend switch. Completed
(`done`) runs are filled markers; partial and stale runs hollow squares (their last eval);
failed runs are left out (they are in the table: their last losses are often what made them
fail). PNGs carry no timestamp, so the same inputs give the same bytes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lmjax.analysis import fits as fits_lib
from lmjax.analysis.fitting import groups, segments
from lmjax.analysis.tables import interval

MARKERS = {"done": "o", "partial": "s", "pending": "s", "stale": "s"}


def _figure(title: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    return fig, ax


def _save(fig, path: Path) -> None:
    fig.savefig(path, format="png", metadata={"Software": None})


def _colors(names: list[str]) -> dict:
    """A distinct colour per name: tab10 up to 10 names, tab20 up to 20 (no two names share one),
    then the 20 again."""
    from matplotlib import colormaps

    cmap, n = (colormaps["tab10"], 10) if len(names) <= 10 else (colormaps["tab20"], 20)
    return {g: cmap(i % n) for i, g in enumerate(names)}


def _no_data(ax) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def _scatter_by_status(ax, sub, x: str, color) -> None:
    """One marker per run: filled for done, hollow for the rest; a bar of +-1 sd over its seeds
    for a run of several (config.train.replicas)."""
    for status, s in sub.groupby("status", sort=True):
        ax.scatter(s[x], s["val_loss"], marker=MARKERS.get(status, "o"), s=36, zorder=3,
                   color=color, facecolors=color if status == "done" else "none")
    sd = sub["val_loss_sd"].astype(float) if "val_loss_sd" in sub else None
    if sd is not None and np.isfinite(sd).any():
        ax.errorbar(sub[x], sub["val_loss"], yerr=sd.fillna(0.0), fmt="none", ecolor=color, elinewidth=1,
                    capsize=2, zorder=2)


def _eval_curves(ax, cv, color_of) -> bool:
    """Every non-failed run's eval curve, in `color_of((arg, run))`; whether any was drawn."""
    drawn = False
    for (a, run), c in cv[cv["status"] != "failed"].groupby(["arg", "run"], sort=True):
        c = c[np.isfinite(c["compute"]) & np.isfinite(c["val_loss"]) & (c["compute"] > 0)]
        if len(c):
            color, alpha = color_of((a, run))
            ax.plot(c["compute"], c["val_loss"], color=color, alpha=alpha, lw=1)
            drawn = True
    return drawn


def _fit_line(ax, g: str, f: dict | None, sub, color) -> None:
    """The group's fitted law over its points' compute range (a decade-and-a-bit wider), or a
    legend entry saying why there is none."""
    if f and f["alpha"] is not None and len(sub):
        lo, hi = float(sub["compute"].min()), float(sub["compute"].max())
        xs = np.logspace(math.log10(lo) - 0.3, math.log10(hi) + 0.3, 200)
        law = fits_lib.PowerLaw(f["E"], f["A"], f["alpha"])
        iv = interval(f, "alpha", ".3f")
        label = f"{g}: E={f['E']:.3g}, alpha={f['alpha']:.3f}" + (f" {iv}" if iv else "") + \
                (" (E fixed)" if f["E_fixed"] else "")
        ax.plot(xs, law(xs), color=color, lw=1.8, label=label)
    else:
        ax.plot([], [], color=color, marker="o", ls="", label=f"{g} ({f['status'] if f else 'no fit'})")


def plot_loss_vs_compute(df, cv, fitted, path: Path, title: str) -> None:
    fig, ax = _figure(f"{title}: validation loss vs training compute")
    group = groups(df)
    colors = _colors(sorted(group.unique()))
    key = dict(zip(zip(df["arg"], df["run"]), group))
    any_data = _eval_curves(ax, cv, lambda k: (colors[key[k]], 0.25))
    for g in sorted(group.unique()):
        sub = df[(group == g) & (df["status"] != "failed") & np.isfinite(df["compute"])
                 & np.isfinite(df["val_loss"]) & (df["compute"] > 0)]
        if g not in fitted and not len(sub):
            continue
        _scatter_by_status(ax, sub, "compute", colors[g])
        any_data = any_data or bool(len(sub))
        _fit_line(ax, g, fitted.get(g), sub, colors[g])
    any_data = _count_based_references(ax, df, group) or any_data
    if not any_data:
        _no_data(ax)
    ax.set_xscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("validation loss (nats/token)")
    _status_legend(ax, stale=bool((df["status"] == "stale").any()))
    _save(fig, path)


def _status_legend(ax, *, stale: bool = False) -> None:
    from matplotlib.lines import Line2D

    first = ax.legend(loc="upper right", fontsize=8, title="fit L = E + A C^-alpha", title_fontsize=8)
    hollow = "partial or stale (last eval)" if stale else "partial (last eval)"
    handles = [Line2D([], [], color="gray", marker="o", ls="", label="done (final)"),
               Line2D([], [], color="gray", marker="s", mfc="none", ls="", label=hollow),
               Line2D([], [], color="gray", alpha=0.4, label="eval curves")]
    ax.legend(handles=handles, loc="lower left", fontsize=8)
    ax.add_artist(first)


def _count_based_references(ax, df, group) -> bool:
    """Runs trained by counting, not gradient steps (n-grams: 0 training FLOPs, and stored counts
    instead of weights) have no place on a log axis of compute, nor beside weight counts: each
    done one is a dotted horizontal line at its loss."""
    refs = df[(df["status"] == "done") & (df["compute"].astype(float) == 0)
              & np.isfinite(df["val_loss"].astype(float))]
    for (_, row), shade in zip(refs.sort_values("val_loss").iterrows(), np.linspace(0.2, 0.6, len(refs))):
        ax.axhline(row["val_loss"], color=str(shade), ls=":", lw=1)
        ax.annotate(f"{group[row.name]} {row['val_loss']:.3f}", (1.0, row["val_loss"]),
                    xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize=7, color=str(shade))
    return bool(len(refs))


def plot_loss_vs_params(df, path: Path, title: str) -> None:
    fig, ax = _figure(f"{title}: final validation loss vs parameters")
    group = groups(df)
    colors = _colors(sorted(group.unique()))
    n = df["params_non_embedding"].where(np.isfinite(df["params_non_embedding"].astype(float)), df["params"])
    any_data = False
    for g in sorted(group.unique()):
        m = (group == g) & np.isfinite(n.astype(float)) & np.isfinite(df["val_loss"].astype(float)) \
            & (df["status"] != "failed") & (n.astype(float) > 0) & (df["compute"].astype(float) != 0)
        sub = df[m].assign(n=n[m])
        if not len(sub):
            continue
        any_data = True
        # A line through the completed runs with the same token budget (an iso-token curve).
        for _, t in sub[sub["status"] == "done"].groupby("tokens", sort=True):
            if len(t) > 1:
                t = t.sort_values("n")
                ax.plot(t["n"], t["val_loss"], color=colors[g], alpha=0.6, lw=1)
        _scatter_by_status(ax, sub, "n", colors[g])
        ax.plot([], [], color=colors[g], marker="o", label=g)
    any_data = _count_based_references(ax, df, group) or any_data
    if not any_data:
        _no_data(ax)
    else:
        ax.legend(fontsize=8, title="lines join runs of equal tokens", title_fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("final validation loss (nats/token)")
    _save(fig, path)


def plot_frontier(df, cv, front: list[dict], path: Path, title: str) -> None:
    fig, ax = _figure(f"{title}: compute-optimal frontier")
    colors = _colors(sorted(groups(df).unique()))
    _eval_curves(ax, cv, lambda k: ("0.6", 0.5))
    if front:
        xs = [p["compute"] for p in front]
        ys = [p["loss"] for p in front]
        last_x = max(xs[-1], float(np.nanmax(cv["compute"])) if len(cv) else xs[-1])
        ax.step(xs + [last_x], ys + [ys[-1]], where="post", color="black", lw=1.5,
                label="frontier: best loss at <= C")
        for g in sorted({p["variant"] for p in front}):
            pts = [p for p in front if p["variant"] == g]
            ax.scatter([p["compute"] for p in pts], [p["loss"] for p in pts], color=colors.get(g, "black"),
                       s=40, zorder=3, label=f"held by {g}")
        for s in segments(front):
            ax.annotate(s["variant"], (s["from"], s["loss_hi"]), textcoords="offset points", xytext=(4, 6),
                        fontsize=7, color=colors.get(s["variant"], "black"))
        ax.legend(fontsize=8)
    else:
        _no_data(ax)
    ax.set_xscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("validation loss (nats/token)")
    _save(fig, path)


def plot_loss_vs_position(positions, path: Path, title: str) -> None:
    """Validation loss against position in the context for each variant's largest run (most
    non-embedding parameters; loss_by_position.csv has every run), averaged over log-spaced
    bins of positions since one evaluation's per-position means are noisy: where a family stops
    using more context."""
    fig, ax = _figure(f"{title}: validation loss vs position in the context")
    groups = sorted(positions["variant"].unique())
    colors = _colors(groups)
    for g in groups:
        runs = positions[positions["variant"] == g]
        largest = runs.sort_values("params_non_embedding", kind="stable").iloc[-1][["arg", "run"]]
        c = runs[(runs["arg"] == largest["arg"]) & (runs["run"] == largest["run"])].sort_values("position")
        x, y = _log_bins(c["position"].to_numpy() + 1, c["loss"].to_numpy(float))
        n = c["params_non_embedding"].iloc[0]
        ax.plot(x, y, color=colors[g], lw=1.4, marker=".", ms=3,
                label=f"{g} ({c['run'].iloc[0]}" + (f", {n:,.0f} params)" if np.isfinite(n) else ")"))
    ax.set_xscale("log")
    ax.set_xlabel("position in the context (tokens seen, 1 = the first)")
    ax.set_ylabel("validation loss (nats/token), log-spaced bins")
    ax.legend(fontsize=7, title="each variant's largest run", title_fontsize=8)
    _save(fig, path)


def _log_bins(x, y, bins: int = 24):
    """Mean position and mean loss in log-spaced bins of position (1, 2, 3, ..., then wider)."""
    edges = np.unique(np.round(np.logspace(0, np.log10(max(x.max(), 1)) + 1e-9, bins)).astype(int))
    edges = np.append(edges, x.max() + 1)
    xs, ys = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (x >= lo) & (x < hi)
        if m.any():
            xs.append(x[m].mean())
            ys.append(y[m].mean())
    return np.asarray(xs), np.asarray(ys)
