"""The report's text: the results table (results.md), who produced the runs, and the fits and
frontier (fits.md), as GitHub markdown. Numbers are formatted by `lmjax.formatting`."""

from __future__ import annotations

import math

import pandas as pd

from lmjax.analysis.fitting import CI, SEED, segments
from lmjax.formatting import duration, fixed, sci, si

# A "Produced by" line names its runs up to this many, and counts them beyond.
MAX_NAMED_RUNS = 6


def markdown_table(df: pd.DataFrame) -> str:
    """The results table as markdown, in `df`'s order (collect's: variant, then params), then
    the failed runs' errors."""
    from tabulate import tabulate

    several = df["arg"].nunique() > 1
    headers = (["arg"] if several else []) + [
        "run", "variant", "layers x width", "params", "non-emb params", "tokens", "compute (FLOPs)",
        "6ND", "val loss", "eval se", "val bytes scored", "val bits/byte", "wall time", "tokens/s", "status"]
    seeded = bool((df["seeds"].fillna(1) > 1).any())
    if seeded:  # runs of several replicas: their mean, the seeds' standard deviation and count
        headers[headers.index("val loss")] = "val loss (mean ± sd of seeds)"
        headers.insert(headers.index("eval se"), "seeds")
    rows = []
    for r in df.itertuples(index=False):
        shape = f"{r.num_layers} x {r.width}" if not (pd.isna(r.num_layers) or pd.isna(r.width)) else ""
        loss = fixed(r.val_loss, ".4f")
        if seeded and math.isfinite(r.val_loss_sd):
            loss += f" ± {r.val_loss_sd:.4f}"
        rows.append(([r.arg] if several else []) + [
            r.run, r.variant, shape, si(r.params), si(r.params_non_embedding), si(r.tokens),
            sci(r.compute), sci(r.compute_6nd), loss] + ([str(r.seeds) if not pd.isna(r.seeds) else ""] if seeded else []) + [
            fixed(r.val_loss_se, ".4f"), _scored(r.val_bytes, r.val_coverage), fixed(r.val_bits_per_byte, ".4f"),
            duration(r.wall_time), fixed(r.tokens_per_s, ",.0f"), r.status])
    text = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    failed = df[df["status"] == "failed"]
    if len(failed):
        text += "\n\nFailed runs:\n" + "".join(
            f"- {r.workdir}: {r.error or 'see failed.json'}\n" for r in failed.itertuples(index=False))
    return text.rstrip("\n") + "\n"


def _scored(nbytes, coverage) -> str:
    """The bytes a final evaluation scored, and the share of the split's targets (all: "whole split")."""
    if pd.isna(nbytes):
        return ""
    share = "whole split" if coverage >= 1 - 1e-9 else (f"{coverage:.1%} of the split" if math.isfinite(coverage) else "")
    return f"{si(nbytes)}" + (f" ({share})" if share else "")


def produced_by(df: pd.DataFrame, provenance: dict) -> str:
    """"Produced by": one line per distinct (commit, host, jax version) naming its runs (or
    counting them), in `df`'s order; "" when no run's run.json records its provenance.

    `provenance`: (arg, run) -> `runs.provenance(...)` (None for an older run.json)."""
    if not any(p is not None for p in provenance.values()):
        return ""
    several = df["arg"].nunique() > 1
    lines: dict[tuple, list[str]] = {}
    for r in df.itertuples(index=False):
        if (r.arg, r.run) not in provenance:
            continue  # no run.json: the run did not start
        p = provenance[(r.arg, r.run)]
        key = (p["code_commit"], p["host"], p["jax"]) if p is not None else None
        lines.setdefault(key, []).append(f"{r.arg}/{r.run}" if several else r.run)
    text = "\nProduced by:\n\n"
    for key, runs in sorted(lines.items(), key=lambda kv: (kv[0] is None, kv[0] or ())):
        if key is None:
            what = "not recorded (run.json from an older lmjax)"
        else:
            commit, host, jax = key
            sha, plus, dirty = commit.partition("+")
            what = ", ".join([f"commit {sha[:12] + plus + dirty if sha else 'unknown'}",
                              host or "unknown host", f"jax {jax or 'unknown'}"])
        names = ", ".join(runs) if len(runs) <= MAX_NAMED_RUNS else f"{len(runs)} runs"
        text += f"- {what}: {names}\n"
    return text


def interval(fit: dict, k: str, spec: str) -> str:
    """`[lo, hi]` of a fit parameter's bootstrap interval; "fixed" for a fixed E, "" for none."""
    if k == "E" and fit.get("E_fixed"):
        return "fixed"
    lo, hi = fit["intervals"][k]
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return ""
    return f"[{format(lo, spec)}, {format(hi, spec)}]"


def fits_markdown(fitted: dict, front: list[dict], *, bootstrap_n: int, seed: int = SEED, ci: float = CI) -> str:
    """fits.md: the per-group fits table, then which variant holds the frontier where."""
    from tabulate import tabulate

    seeded = any(f.get("seeds") for f in fitted.values())
    of = "of the runs and, within each run, of its seeds" if seeded else "of the runs"
    if any(f.get("eval_se") for f in fitted.values()):
        of += ", each point moved by a normal draw of its evaluation's standard error"
    intervals = (f"{ci:.0%} percentile bootstrap, {bootstrap_n} resamples {of}, seed {seed}"
                 if bootstrap_n > 0 else "none (--bootstrap 0)")
    head = (f"Power-law fits L(C) = E + A * C^-alpha, C = training FLOPs (flops_per_token * tokens), "
            f"over the final val_loss of each completed (`done`) run (the mean of its seeds): points = "
            f"completed runs; least "
            f"squares on log L. Intervals: {intervals}.\n\n")
    rows = []
    for g, f in fitted.items():
        if f["alpha"] is None:
            rows.append([g, f["n"], f["status"], "", "", "", "", "", "", "", f["note"]])
            continue
        rows.append([g, f["n"], f["status"], f"{f['E']:.4g}", interval(f, "E", ".4g"), f"{f['A']:.4g}",
                     interval(f, "A", ".4g"), f"{f['alpha']:.4f}", interval(f, "alpha", ".4f"),
                     f"{f['rmse_log']:.2e}", f["note"]])
    table = tabulate(rows, headers=["variant", "points", "status", "E", f"E {ci:.0%}", "A", f"A {ci:.0%}",
                                    "alpha", f"alpha {ci:.0%}", "rmse(log L)", "note"],
                     tablefmt="github", disable_numparse=True)
    text = head + table + "\n"
    text += ("\nCompute-optimal frontier (for each budget C, the lowest val_loss any run reached with at "
             "most C training FLOPs, over all eval points of all non-failed runs). It is held by:\n\n")
    if not front:
        return text + "(no eval points)\n"
    text += tabulate([[sci(s["from"]), sci(s["to"]) if s["to"] is not None else "and above", s["variant"],
                       ", ".join(s["runs"]), f"{s['loss_hi']:.4f} -> {s['loss_lo']:.4f}"]
                      for s in segments(front)],
                     headers=["from C", "to C", "variant", "runs", "val loss"], tablefmt="github",
                     disable_numparse=True)
    return text + "\n"
