"""`lmjax report experiments/NAME`: a sweep's runs -> results table, power-law fits and plots.

An experiment folder holds `config.py` and one workdir per run under `runs/<arg>/<run name>/`
(`config.json`, `run.json`, `metrics.jsonl` as `lmjax train` writes them), plus `result.json`
(the final metrics of `lmjax train`) when the run completed or `failed.json` when it failed.

Definitions used throughout (the table, the fits and the plots):

- tokens: training tokens seen = last step * train.batch_size * train.seq_len.
- compute C: training FLOPs = run.json's flops_per_token (6N + unembedding + attention, see
  `lmjax.models.flops_per_token`) * tokens. `compute_6nd` is Kaplan's 6 * N * D with N the
  non-embedding parameters (`params_non_embedding`) and D = tokens, for comparison.
- final val_loss / val_bits_per_byte: the last eval row of metrics.jsonl (result.json's if the
  log has none).
- status, as `lmjax sweep` derives it from the workdir: `done` (result.json, not preempted),
  `failed` (failed.json and no result.json), `partial` (logged steps or checkpoints but no
  result, or a preempted result: interrupted, or still running), `pending` (nothing yet).
  A result.json that the sweep would call stale (written for an older version of the sweep's
  config) cannot be told apart here: rerun `lmjax sweep` first.
- variant: config.model.attention; `gqa-kv<K>` for grouped-query attention with K kv heads;
  `window<W>` for multi-head attention with a W-token sliding window (`<attention>-window<W>`
  for other kinds). Runs without config.json take it from the sweep's recorded `overrides`.

Fits (`fits.md`, `fits.json`) are per variant (per `arg/variant` when several args are
reported together) over the final points of the `done` runs only: see `fits.fit_variant` for
the few-points policy. The frontier is `fits.compute_optimal_frontier` over every eval point
of every run that is not failed.

Output is deterministic for the same inputs: a fixed bootstrap seed, sorted rows, paths
relative to the experiment folder, and PNGs without a timestamp.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd

from lmjax.analysis import fits as fits_lib
from lmjax.errors import LmjaxError

RUN_FILES = ("config.json", "run.json", "metrics.jsonl", "result.json", "failed.json")
RESULT_COLUMNS = [
    "arg", "run", "variant", "status", "attention", "num_kv_heads", "window", "num_layers",
    "width", "params", "params_non_embedding", "steps", "batch_size", "seq_len", "final_step",
    "tokens", "flops_per_token", "compute", "compute_6nd", "val_loss", "val_bits_per_byte",
    "val_perplexity", "wall_time", "tokens_per_s", "mfu", "error", "workdir",
]
CURVE_COLUMNS = ["arg", "run", "variant", "status", "step", "tokens", "compute", "val_loss",
                 "val_bits_per_byte", "val_perplexity"]
SEED = 0  # the bootstrap's: reruns give the same intervals
CI = 0.9


class NoRunsError(LmjaxError):
    """The experiment folder has no run workdirs (yet)."""


# --------------------------------------------------------------------------------------------
# Collecting runs


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_metrics(path: Path) -> list[dict]:
    rows = []
    try:
        text = path.read_text()
    except OSError:
        return rows
    for line in text.splitlines():
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line torn by a kill mid-write
            if isinstance(row, dict) and "step" in row:
                rows.append(row)
    return rows


def _num(v) -> float:
    """JSON value -> float; 'nan'/'inf' strings (how lmjax logs non-finite values) and missing
    values -> nan/inf/nan."""
    if isinstance(v, bool) or v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _get(d: dict | None, dotted: str, default=None):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def variant_label(config: dict | None) -> str:
    """A run's variant from its config.json: `mha`, `mqa`, `linear`, `gqa-kv2` (grouped-query
    with 2 kv heads), `window32` (multi-head with a 32-token sliding window), `gqa-kv2-window32`
    (any other attention with a window); `unknown` without a model config."""
    model = _get(config, "model")
    if not isinstance(model, dict) or "attention" not in model:
        return "unknown"
    label = str(model.get("attention") or "mha")
    if label == "gqa":
        kv = model.get("num_kv_heads") or model.get("num_heads")
        label = f"gqa-kv{kv}" if kv else "gqa"
    window = model.get("window") or 0
    if isinstance(window, (int, float)) and window > 0:
        label = f"window{window}" if label == "mha" else f"{label}-window{window}"
    return label


def _config_from_overrides(overrides) -> dict | None:
    """The nested config that a sweep's `overrides` (dotted key -> value, recorded in
    result.json / failed.json) describe: a stand-in for a run that never wrote config.json."""
    if not isinstance(overrides, dict) or not overrides:
        return None
    out: dict = {}
    for key, value in overrides.items():
        *parents, leaf = str(key).split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def find_runs(experiment_dir, arg: str | None = None) -> list[tuple[str, str, Path]]:
    """(arg, run name, workdir) for every run folder under <experiment>/runs/<arg>/, sorted.

    Raises LmjaxError when the folder does not exist, NoRunsError when it holds no runs.
    """
    exp = Path(experiment_dir)
    if not exp.is_dir():
        raise LmjaxError(f"experiment folder {exp} does not exist; run `lmjax sweep --config "
                         f"{exp}/config.py:{arg or 'ARG'}` first")
    runs_dir = exp / "runs"
    hint = f"run `lmjax sweep --config {exp}/config.py:{arg or 'ARG'}` first"
    args = sorted(p.name for p in runs_dir.iterdir() if _is_run_dir(p)) if runs_dir.is_dir() else []
    if arg is not None:
        if arg not in args:
            found = f" (it has runs for: {', '.join(args)})" if args else ""
            raise NoRunsError(f"no runs for arg {arg!r} in {exp}: {runs_dir / arg} does not exist{found}; {hint}")
        args = [arg]
    out = []
    for a in args:
        for d in sorted((runs_dir / a).iterdir()):
            if _is_run_dir(d):
                out.append((a, d.name, d))
    if not out:
        raise NoRunsError(f"no runs in {exp} (no run folders under {runs_dir}/{arg or '<arg>'}/); {hint}")
    return out


def _is_run_dir(p: Path) -> bool:
    # `_submitit/` (the SLURM launcher's folder) and hidden folders are not runs.
    return p.is_dir() and not p.name.startswith((".", "_"))


def _status(workdir: Path, result, metrics: list[dict], steps) -> str:
    """As `lmjax sweep` derives it: result.json wins (the sweep deletes failed.json when it
    starts a run again), then failed.json; logged steps or checkpoints mean partial (or
    still running)."""
    if isinstance(result, dict):
        step = _num(result.get("step"))
        if result.get("preempted") or (steps and math.isfinite(step) and step < steps):
            return "partial"
        return "done"
    if (workdir / "failed.json").exists():
        return "failed"
    ckpts = workdir / "checkpoints"
    if metrics or (ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())):
        return "partial"
    return "pending"


def _error_line(failed) -> str:
    if failed is None:
        return ""
    if isinstance(failed, dict):
        for k in ("error", "message", "reason", "stderr"):
            if failed.get(k):
                text = str(failed[k]).strip().splitlines()
                return (text[-1] if k == "stderr" else text[0])[:300] if text else ""
    return json.dumps(failed, sort_keys=True)[:300]


def _load_run(exp: Path, arg: str, name: str, workdir: Path) -> tuple[dict, list[dict]]:
    info = _read_json(workdir / "run.json") or {}
    result = _read_json(workdir / "result.json")
    failed = _read_json(workdir / "failed.json") if (workdir / "failed.json").exists() else None
    config = _read_json(workdir / "config.json") or _config_from_overrides(
        (result or {}).get("overrides") if isinstance(result, dict) else None) or _config_from_overrides(
        failed.get("overrides") if isinstance(failed, dict) else None)
    metrics = _read_metrics(workdir / "metrics.jsonl")
    steps = _get(config, "train.steps")
    batch, seq = _get(config, "train.batch_size"), _get(config, "train.seq_len")
    tokens_per_step = batch * seq if batch and seq else math.nan
    flops_tok = _num(info.get("flops_per_token"))
    variant = variant_label(config)
    status = _status(workdir, result, metrics, steps)

    evals = sorted((r for r in metrics if "val_loss" in r), key=lambda r: int(r["step"]))
    curve = []
    for r in evals:
        step = int(r["step"])
        tokens = step * tokens_per_step
        curve.append({"arg": arg, "run": name, "variant": variant, "status": status, "step": step,
                      "tokens": tokens, "compute": flops_tok * tokens, "val_loss": _num(r.get("val_loss")),
                      "val_bits_per_byte": _num(r.get("val_bits_per_byte")),
                      "val_perplexity": _num(r.get("val_perplexity"))})

    final_step = _num(result.get("step")) if isinstance(result, dict) else math.nan
    if not math.isfinite(final_step) and metrics:
        final_step = float(max(int(r["step"]) for r in metrics))
    last_eval = evals[-1] if evals else (result if isinstance(result, dict) else {})
    train_rows = [r for r in metrics if "tokens_per_s" in r]

    def median(key):
        vals = [v for v in (_num(r.get(key)) for r in train_rows) if math.isfinite(v)]
        return statistics.median(vals) if vals else math.nan

    tokens = final_step * tokens_per_step
    n_ne = _num(info.get("params_non_embedding"))
    row = {
        "arg": arg, "run": name, "variant": variant, "status": status,
        "attention": _get(config, "model.attention"),
        "num_kv_heads": (_get(config, "model.num_kv_heads") or _get(config, "model.num_heads")),
        "window": _get(config, "model.window"),
        "num_layers": _get(config, "model.num_layers"), "width": _get(config, "model.width"),
        "params": _num(info.get("params")), "params_non_embedding": n_ne,
        "steps": steps, "batch_size": batch, "seq_len": seq, "final_step": final_step,
        "tokens": tokens, "flops_per_token": flops_tok, "compute": flops_tok * tokens,
        "compute_6nd": 6.0 * n_ne * tokens,
        "val_loss": _num(last_eval.get("val_loss")),
        "val_bits_per_byte": _num(last_eval.get("val_bits_per_byte")),
        "val_perplexity": _num(last_eval.get("val_perplexity")),
        "wall_time": _wall_time(result),
        "tokens_per_s": median("tokens_per_s"), "mfu": median("mfu"),
        "error": _error_line(failed) if status == "failed" else "",
        "workdir": workdir.relative_to(exp).as_posix(),
    }
    return row, curve


def _wall_time(result) -> float:
    """`lmjax train`'s wall_time; else the sweep's `elapsed` (which includes process start)."""
    if not isinstance(result, dict):
        return math.nan
    t = _num(result.get("wall_time"))
    return t if math.isfinite(t) else _num(result.get("elapsed"))


def _scan(experiment_dir, arg: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    exp = Path(experiment_dir)
    rows, curve_rows = [], []
    for a, name, workdir in find_runs(exp, arg):
        row, curve = _load_run(exp, a, name, workdir)
        rows.append(row)
        curve_rows += curve
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    for col in ("num_kv_heads", "window", "num_layers", "width", "steps", "batch_size", "seq_len"):
        df[col] = df[col].astype("Int64")
    df = df.sort_values(["variant", "params", "tokens", "arg", "run"], na_position="last",
                        kind="mergesort").reset_index(drop=True)
    cv = pd.DataFrame(curve_rows, columns=CURVE_COLUMNS)
    cv = cv.sort_values(["variant", "arg", "run", "step"], kind="mergesort").reset_index(drop=True)
    return df, cv


def collect(experiment_dir, *, arg: str | None = None) -> pd.DataFrame:
    """One row per run (columns `RESULT_COLUMNS`), sorted by variant, then params, then tokens.
    Missing files give NaN/None cells, not errors; NoRunsError when there are no runs."""
    return _scan(experiment_dir, arg)[0]


def curves(experiment_dir, *, arg: str | None = None) -> pd.DataFrame:
    """Every run's eval curve, long format (columns `CURVE_COLUMNS`): one row per eval of
    each run, with step, tokens = step * batch_size * seq_len, compute = flops_per_token *
    tokens, and val_loss / val_bits_per_byte / val_perplexity."""
    return _scan(experiment_dir, arg)[1]


# --------------------------------------------------------------------------------------------
# Fits and frontier


def _groups(df: pd.DataFrame) -> pd.Series:
    """The fit/plot group of each row: the variant, or `arg/variant` when several args."""
    if df["arg"].nunique() > 1:
        return df["arg"].astype(str) + "/" + df["variant"].astype(str)
    return df["variant"].astype(str)


def fit_points(df: pd.DataFrame) -> pd.DataFrame:
    """The rows the fits use: `done` runs with finite positive compute and val_loss."""
    ok = (df["status"] == "done") & np.isfinite(df["compute"].astype(float)) \
        & np.isfinite(df["val_loss"].astype(float)) & (df["compute"] > 0) & (df["val_loss"] > 0)
    return df[ok]


def fit_all(df: pd.DataFrame, *, bootstrap_n: int = 1000, seed: int = SEED, ci: float = CI) -> dict:
    """group -> `fits.fit_variant(...)` dict (plus `runs`: the runs fitted), for every group
    with at least one run; groups without completed runs report 'insufficient points'."""
    groups = _groups(df)
    pts = fit_points(df)
    out = {}
    for g in sorted(groups.unique()):
        sub = pts[groups[pts.index] == g]
        if not len(sub) and g.endswith("unknown"):
            continue  # runs without a config.json yet (pending, or failed before starting)
        res = fits_lib.fit_variant(sub["compute"].to_numpy(float), sub["val_loss"].to_numpy(float),
                                   bootstrap_n=bootstrap_n, seed=seed, ci=ci)
        res["runs"] = sub["run"].tolist()
        out[g] = res
    return out


def frontier(df: pd.DataFrame, cv: pd.DataFrame) -> list[dict]:
    """`fits.compute_optimal_frontier` over every eval point of every run that did not fail."""
    groups = dict(zip(zip(df["arg"], df["run"]), _groups(df)))
    ok = cv[cv["status"] != "failed"]
    pts = [{"compute": r.compute, "loss": r.val_loss, "variant": groups[(r.arg, r.run)], "run": r.run,
            "arg": r.arg, "step": int(r.step), "tokens": r.tokens}
           for r in ok.itertuples(index=False)]
    return fits_lib.compute_optimal_frontier(pts)


# --------------------------------------------------------------------------------------------
# Text output


def _si(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)) or pd.isna(v):
        return ""
    v = float(v)
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.{digits}g}{unit}"
    return f"{v:.{digits}g}"


def _sci(v) -> str:
    if v is None or pd.isna(v) or not math.isfinite(float(v)):
        return ""
    mant, exp = f"{float(v):.3e}".split("e")
    return f"{mant}e{int(exp)}"


def _fmt(v, spec: str) -> str:
    if v is None or pd.isna(v) or not math.isfinite(float(v)):
        return ""
    return format(float(v), spec)


def _duration(v) -> str:
    if v is None or pd.isna(v) or not math.isfinite(float(v)):
        return ""
    s = float(v)
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(round(s), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def markdown_table(df: pd.DataFrame) -> str:
    """The results table as markdown, in `df`'s order (collect's: variant, then params)."""
    from tabulate import tabulate

    several = df["arg"].nunique() > 1
    headers = (["arg"] if several else []) + [
        "run", "variant", "layers x width", "params", "non-emb params", "tokens", "compute (FLOPs)",
        "6ND", "val loss", "val bits/byte", "wall time", "tokens/s", "status"]
    rows = []
    for r in df.itertuples(index=False):
        shape = f"{r.num_layers} x {r.width}" if not (pd.isna(r.num_layers) or pd.isna(r.width)) else ""
        rows.append(([r.arg] if several else []) + [
            r.run, r.variant, shape, _si(r.params), _si(r.params_non_embedding), _si(r.tokens),
            _sci(r.compute), _sci(r.compute_6nd), _fmt(r.val_loss, ".4f"), _fmt(r.val_bits_per_byte, ".4f"),
            _duration(r.wall_time), _fmt(r.tokens_per_s, ",.0f"), r.status])
    text = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    failed = df[df["status"] == "failed"]
    if len(failed):
        text += "\n\nFailed runs:\n" + "".join(
            f"- {r.workdir}: {r.error or 'see failed.json'}\n" for r in failed.itertuples(index=False))
    return text.rstrip("\n") + "\n"


def _interval(fit: dict, k: str, spec: str) -> str:
    if k == "E" and fit.get("E_fixed"):
        return "fixed"
    lo, hi = fit["intervals"][k]
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return ""
    return f"[{format(lo, spec)}, {format(hi, spec)}]"


def fits_markdown(fitted: dict, front: list[dict], *, bootstrap_n: int, seed: int = SEED, ci: float = CI) -> str:
    from tabulate import tabulate

    intervals = (f"{ci:.0%} percentile bootstrap, {bootstrap_n} resamples of the runs, seed {seed}"
                 if bootstrap_n > 0 else "none (--bootstrap 0)")
    head = (f"Power-law fits L(C) = E + A * C^-alpha, C = training FLOPs (flops_per_token * tokens), "
            f"over the final val_loss of each completed (`done`) run: points = completed runs; least "
            f"squares on log L. Intervals: {intervals}.\n\n")
    rows = []
    for g, f in fitted.items():
        if f["alpha"] is None:
            rows.append([g, f["n"], f["status"], "", "", "", "", "", "", "", f["note"]])
            continue
        rows.append([g, f["n"], f["status"], f"{f['E']:.4g}", _interval(f, "E", ".4g"), f"{f['A']:.4g}",
                     _interval(f, "A", ".4g"), f"{f['alpha']:.4f}", _interval(f, "alpha", ".4f"),
                     f"{f['rmse_log']:.2e}", f["note"]])
    table = tabulate(rows, headers=["variant", "points", "status", "E", f"E {ci:.0%}", "A", f"A {ci:.0%}",
                                    "alpha", f"alpha {ci:.0%}", "rmse(log L)", "note"],
                     tablefmt="github", disable_numparse=True)
    text = head + table + "\n"
    text += ("\nCompute-optimal frontier (for each budget C, the lowest val_loss any run reached with at "
             "most C training FLOPs, over all eval points of all non-failed runs). It is held by:\n\n")
    if not front:
        return text + "(no eval points)\n"
    segs = _segments(front)
    text += tabulate([[_sci(s["from"]), _sci(s["to"]) if s["to"] is not None else "and above", s["variant"],
                       ", ".join(s["runs"]), f"{s['loss_hi']:.4f} -> {s['loss_lo']:.4f}"] for s in segs],
                     headers=["from C", "to C", "variant", "runs", "val loss"], tablefmt="github",
                     disable_numparse=True)
    return text + "\n"


def _segments(front: list[dict]) -> list[dict]:
    """Consecutive frontier points held by the same variant, merged."""
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


# --------------------------------------------------------------------------------------------
# Plots (matplotlib's Agg canvas directly: no pyplot, no display, no global backend switch)


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


def _colors(groups: list[str]) -> dict:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {g: cmap(i % 10) for i, g in enumerate(groups)}


MARKERS = {"done": "o", "partial": "s", "pending": "s"}


def _no_data(ax) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def plot_loss_vs_compute(df, cv, fitted, path: Path, title: str) -> None:
    fig, ax = _figure(f"{title}: validation loss vs training compute")
    groups = _groups(df)
    colors = _colors(sorted(groups.unique()))
    key = dict(zip(zip(df["arg"], df["run"]), groups))
    any_data = False
    # Failed runs are left out of the plots (they are in the table): their last losses are
    # often what made them fail.
    for (a, run), c in cv[cv["status"] != "failed"].groupby(["arg", "run"], sort=True):
        c = c[np.isfinite(c["compute"]) & np.isfinite(c["val_loss"]) & (c["compute"] > 0)]
        if len(c):
            ax.plot(c["compute"], c["val_loss"], color=colors[key[(a, run)]], alpha=0.25, lw=1)
            any_data = True
    for g in sorted(groups.unique()):
        sub = df[(groups == g) & (df["status"] != "failed") & np.isfinite(df["compute"])
                 & np.isfinite(df["val_loss"]) & (df["compute"] > 0)]
        if g not in fitted and not len(sub):
            continue
        for status, s in sub.groupby("status", sort=True):
            ax.scatter(s["compute"], s["val_loss"], marker=MARKERS.get(status, "o"), s=36, zorder=3,
                       color=colors[g], facecolors=colors[g] if status == "done" else "none")
            any_data = True
        f = fitted.get(g)
        label = g
        if f and f["alpha"] is not None and len(sub):
            lo, hi = float(sub["compute"].min()), float(sub["compute"].max())
            xs = np.logspace(math.log10(lo) - 0.3, math.log10(hi) + 0.3, 200)
            law = fits_lib.PowerLaw(f["E"], f["A"], f["alpha"])
            iv = _interval(f, "alpha", ".3f")
            label = f"{g}: E={f['E']:.3g}, alpha={f['alpha']:.3f}" + (f" {iv}" if iv else "") + \
                    (" (E fixed)" if f["E_fixed"] else "")
            ax.plot(xs, law(xs), color=colors[g], lw=1.8, label=label)
        else:
            ax.plot([], [], color=colors[g], marker="o", ls="", label=f"{g} ({f['status'] if f else 'no fit'})")
    if not any_data:
        _no_data(ax)
    ax.set_xscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("validation loss (nats/token)")
    _status_legend(ax)
    _save(fig, path)


def _status_legend(ax) -> None:
    from matplotlib.lines import Line2D

    first = ax.legend(loc="upper right", fontsize=8, title="fit L = E + A C^-alpha", title_fontsize=8)
    handles = [Line2D([], [], color="gray", marker="o", ls="", label="done (final)"),
               Line2D([], [], color="gray", marker="s", mfc="none", ls="", label="partial (last eval)"),
               Line2D([], [], color="gray", alpha=0.4, label="eval curves")]
    ax.legend(handles=handles, loc="lower left", fontsize=8)
    ax.add_artist(first)


def plot_loss_vs_params(df, path: Path, title: str) -> None:
    fig, ax = _figure(f"{title}: final validation loss vs parameters")
    groups = _groups(df)
    colors = _colors(sorted(groups.unique()))
    n = df["params_non_embedding"].where(np.isfinite(df["params_non_embedding"].astype(float)), df["params"])
    any_data = False
    for g in sorted(groups.unique()):
        m = (groups == g) & np.isfinite(n.astype(float)) & np.isfinite(df["val_loss"].astype(float)) \
            & (df["status"] != "failed")
        sub = df[m].assign(n=n[m])
        if not len(sub):
            continue
        any_data = True
        # A line through the completed runs with the same token budget (an iso-token curve).
        for _, t in sub[sub["status"] == "done"].groupby("tokens", sort=True):
            if len(t) > 1:
                t = t.sort_values("n")
                ax.plot(t["n"], t["val_loss"], color=colors[g], alpha=0.6, lw=1)
        for status, s in sub.groupby("status", sort=True):
            ax.scatter(s["n"], s["val_loss"], color=colors[g], marker=MARKERS.get(status, "o"), s=36,
                       facecolors=colors[g] if status == "done" else "none", zorder=3)
        ax.plot([], [], color=colors[g], marker="o", label=g)
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
    groups = _groups(df)
    colors = _colors(sorted(groups.unique()))
    for (_, _), c in cv[cv["status"] != "failed"].groupby(["arg", "run"], sort=True):
        c = c[np.isfinite(c["compute"]) & np.isfinite(c["val_loss"]) & (c["compute"] > 0)]
        if len(c):
            ax.plot(c["compute"], c["val_loss"], color="0.6", alpha=0.5, lw=1)
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
        for s in _segments(front):
            ax.annotate(s["variant"], (s["from"], s["loss_hi"]), textcoords="offset points", xytext=(4, 6),
                        fontsize=7, color=colors.get(s["variant"], "black"))
        ax.legend(fontsize=8)
    else:
        _no_data(ax)
    ax.set_xscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("validation loss (nats/token)")
    _save(fig, path)


# --------------------------------------------------------------------------------------------


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
    loss_vs_params.png, frontier.png.

    Returns {"out": folder, "files": {name: path}, "results": DataFrame, "curves": DataFrame,
    "fits": {variant: fit dict}, "frontier": [points], "results_md": str, "fits_md": str}.
    Raises NoRunsError (an LmjaxError) when the folder has no runs.
    """
    exp = Path(experiment_dir)
    df, cv = _scan(exp, arg)
    out = Path(out) if out is not None else exp / "report"
    out.mkdir(parents=True, exist_ok=True)
    title = exp.resolve().name + (f" ({arg})" if arg else "")

    fitted = fit_all(df, bootstrap_n=bootstrap_n)
    front = frontier(df, cv)
    results_md = markdown_table(df)
    fits_md = fits_markdown(fitted, front, bootstrap_n=bootstrap_n)

    files = {name: out / name for name in (
        "results.csv", "results.md", "fits.md", "fits.json", "frontier.csv",
        "loss_vs_compute.png", "loss_vs_params.png", "frontier.png")}
    df.to_csv(files["results.csv"], index=False, float_format="%.10g")
    files["results.md"].write_text(results_md)
    files["fits.md"].write_text(fits_md)
    files["fits.json"].write_text(json.dumps(_jsonable({
        "model": "L(C) = E + A * C^-alpha", "compute": "flops_per_token * tokens (training FLOPs)",
        "points": "final val_loss of runs with status done", "ci": CI, "bootstrap_n": bootstrap_n,
        "seed": SEED, "variants": fitted}), indent=2) + "\n")
    pd.DataFrame(front, columns=["compute", "loss", "variant", "run", "arg", "step", "tokens"]).to_csv(
        files["frontier.csv"], index=False, float_format="%.10g")
    plot_loss_vs_compute(df, cv, fitted, files["loss_vs_compute.png"], title)
    plot_loss_vs_params(df, files["loss_vs_params.png"], title)
    plot_frontier(df, cv, front, files["frontier.png"], title)
    return {"out": out, "files": files, "results": df, "curves": cv, "fits": fitted, "frontier": front,
            "results_md": results_md, "fits_md": fits_md}
