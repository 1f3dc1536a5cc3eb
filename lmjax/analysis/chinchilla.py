"""Compute-optimal allocation from (parameters N, tokens D, loss L) points: Chinchilla's
approaches 2 and 3 (Hoffmann et al. 2022), with bootstrap intervals.

- Approach 2 (`isoflop_minima`, `approach2`): points of one compute budget (within `BUDGET_RTOL`)
  get a parabola in log N; its vertex is that budget's N_opt, and D_opt = C / (k N_opt) with k the
  budget's C / (N D) (6 when FLOPs are 6ND). Least squares on log-log then give N_opt = G C^a and
  D_opt = H C^b.
- Approach 3 (`approach3`): L(N, D) = E + A / N^alpha + B / D^beta, fitted as Hoffmann's
  Appendix D.2 does: the Huber loss (delta 1e-3) of log L against
  LSE(log A - alpha log N, log B - beta log D, log E), minimised by L-BFGS from the best starts
  of their grid (alpha, beta in 0..2, log E in -1..1, log A, log B in 0..25). Its frontier:
  N_opt = G3 (C/6)^a3 with a3 = beta / (alpha + beta), b3 = alpha / (alpha + beta).
- Intervals (`fit`): a percentile bootstrap that resamples runs within each budget (a run: one
  (N, D); a budget keeps its size) and, for runs of several seeds, the seeds of each run, then
  refits both approaches. Resamples where a fit fails (a budget's parabola opening downward) are
  counted out (`bootstrap_valid`). Besiroglu et al. (2024) show what intervals without this
  resampling understate.

`lmjax fit --points FILE.csv` (columns params, tokens, loss; optional flops, seed) prints the
fits and one final JSON line. Everything is float64 numpy/scipy and deterministic given the seed.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

from lmjax.errors import LmjaxError

BUDGET_RTOL = 0.05  # points whose compute is within 5% of a budget's smallest are that budget
HUBER_DELTA = 1e-3
MIN_SIZES = 3  # a budget's parabola needs three sizes
MIN_BUDGETS = 2
MIN_POINTS_3 = 6  # five parameters in approach 3
SURFACE = ("E", "A", "B", "alpha", "beta")
USAGE = "usage: lmjax fit --points FILE.csv [--bootstrap N] [--ci 0.95] [--seed S]"


@dataclasses.dataclass(frozen=True)
class Points:
    N: np.ndarray
    D: np.ndarray
    L: np.ndarray
    C: np.ndarray  # training FLOPs: the file's `flops`, else 6ND

    def take(self, index) -> Points:
        return Points(self.N[index], self.D[index], self.L[index], self.C[index])


def points(N, D, L, C=None) -> Points:
    """Rows of the same (N, D) are one run's seeds (`_runs`)."""
    N, D, L = (np.asarray(v, np.float64).reshape(-1) for v in (N, D, L))
    C = 6 * N * D if C is None else np.asarray(C, np.float64).reshape(-1)
    if not (len(N) == len(D) == len(L) == len(C)):
        raise LmjaxError("params, tokens, loss and flops need one value per point")
    if not all(np.isfinite(v).all() and (v > 0).all() for v in (N, D, L, C)):
        raise LmjaxError("params, tokens, loss and flops must be finite and positive")
    return Points(N, D, L, C)


def read_points(path: str) -> Points:
    """The points of a CSV file (columns params, tokens, loss; optional flops, and seed, which
    names the rows of one (params, tokens) as that run's seeds and is otherwise not read)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise LmjaxError(f"cannot read --points {path}: {e.strerror}") from None
    have = set(rows[0]) if rows else set()
    missing = [c for c in ("params", "tokens", "loss") if c not in have]
    if missing:
        raise LmjaxError(f"--points {path} lacks the column(s) {', '.join(missing)}; it needs params, tokens, "
                         "loss (optional: flops, seed), one row per run")
    cols = {}
    for c in ("params", "tokens", "loss", "flops"):
        if c in have:
            try:
                cols[c] = [float(r[c]) for r in rows]
            except (TypeError, ValueError):
                bad = next(i for i, r in enumerate(rows) if not _is_float(r[c]))
                raise LmjaxError(f"--points {path} line {bad + 2}: {c}={rows[bad][c]!r} is not a number") from None
    return points(cols["params"], cols["tokens"], cols["loss"], cols.get("flops"))


def _is_float(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def budgets(C: np.ndarray, rtol: float = BUDGET_RTOL) -> np.ndarray:
    """Each point's budget (0, 1, ... by compute): a budget starts at the smallest compute not
    yet taken and holds the points within (1 + rtol) of it."""
    order = np.argsort(C, kind="stable")
    out, label, first = np.empty(len(C), np.int64), -1, -np.inf
    for i in order:
        if C[i] > first * (1 + rtol):
            label, first = label + 1, C[i]
        out[i] = label
    return out


# ---------------------------------------------------------------------------- approach 2

def isoflop_minima(p: Points) -> list[dict]:
    """Per budget with MIN_SIZES sizes or more: the vertex of the parabola of L in log N
    ({C, N_opt, D_opt, loss_opt}); None for a budget whose parabola has no minimum inside its sizes."""
    out = []
    label = budgets(p.C)
    for b in range(label.max() + 1):
        sub = p.take(label == b)
        x = np.log(sub.N)
        if len(np.unique(x)) < MIN_SIZES:
            continue
        c2, c1, c0 = np.polyfit(x, sub.L, 2)
        C = float(np.exp(np.log(sub.C).mean()))
        vertex = -c1 / (2 * c2) if c2 > 0 else np.nan
        if not x.min() <= vertex <= x.max():
            out.append(None)
            continue
        N_opt = float(np.exp(vertex))
        k = float(np.exp(np.mean(np.log(sub.C / (sub.N * sub.D)))))
        out.append({"C": C, "N_opt": N_opt, "D_opt": C / (k * N_opt), "loss_opt": float(c0 + c1 * vertex + c2 * vertex**2)})
    return out


def approach2(p: Points) -> dict | None:
    """{a, G, b, H}: N_opt = G C^a, D_opt = H C^b over the budgets' minima; None when fewer than
    MIN_BUDGETS budgets have one."""
    minima = isoflop_minima(p)
    if len(minima) < MIN_BUDGETS or any(m is None for m in minima):
        return None
    logC = np.log([m["C"] for m in minima])
    a, logG = np.polyfit(logC, np.log([m["N_opt"] for m in minima]), 1)
    b, logH = np.polyfit(logC, np.log([m["D_opt"] for m in minima]), 1)
    return {"a": float(a), "G": float(np.exp(logG)), "b": float(b), "H": float(np.exp(logH))}


# ---------------------------------------------------------------------------- approach 3

def _grid() -> np.ndarray:
    """Hoffmann et al.'s starts: theta = (log A, log B, log E, alpha, beta)."""
    g = np.meshgrid(np.arange(0, 30, 5.0), np.arange(0, 30, 5.0), np.arange(-1, 1.5, 0.5),
                    np.arange(0, 2.5, 0.5), np.arange(0, 2.5, 0.5), indexing="ij")
    return np.stack([v.reshape(-1) for v in g], axis=1)


GRID = _grid()  # 4,500 starts


def _terms(theta, x, y):
    """[..., n, 3]: log A - alpha log N, log B - beta log D, log E, for theta [..., 5]."""
    a, b, e, alpha, beta = np.moveaxis(theta[..., None], -2, 0)
    return np.stack([a - alpha * x, b - beta * y, np.broadcast_to(e, np.broadcast_shapes(e.shape, x.shape))], -1)


def _huber(r):
    d = HUBER_DELTA
    return np.where(np.abs(r) <= d, 0.5 * r**2, d * (np.abs(r) - 0.5 * d))


def _objective(theta, x, y, logL):
    """The Huber loss summed over points, over delta^2 (the minimiser is the same; unscaled, its
    values of ~1e-5 stop L-BFGS-B at its starting point), and its gradient."""
    t = _terms(theta, x, y)
    m = t.max(axis=-1, keepdims=True)
    e = np.exp(t - m)
    total = e.sum(axis=-1)
    r = m[:, 0] + np.log(total) - logL
    w = e / total[:, None]
    g = np.clip(r, -HUBER_DELTA, HUBER_DELTA) / HUBER_DELTA**2  # d huber / d r
    grad = np.stack([(g * w[:, 0]).sum(), (g * w[:, 1]).sum(), (g * w[:, 2]).sum(),
                     -(g * w[:, 0] * x).sum(), -(g * w[:, 1] * y).sum()])
    return float(_huber(r).sum()) / HUBER_DELTA**2, grad


def approach3(p: Points, *, starts: int = 16, init: np.ndarray | None = None) -> dict:
    """{E, A, B, alpha, beta, a3, b3, G3, H3}: the Huber fit of L(N, D) from the `starts` best
    grid points (and `init`, a previous optimum, when given)."""
    x, y, logL = np.log(p.N), np.log(p.D), np.log(p.L)
    best = np.zeros((0, 5))
    if starts:
        r = logsumexp(_terms(GRID, x, y), axis=-1) - logL  # [4500, n]
        best = GRID[np.argsort(_huber(r).sum(axis=1))[:starts]]
    if init is not None:
        best = np.vstack([init, best])
    fits = [minimize(_objective, t0, args=(x, y, logL), jac=True, method="L-BFGS-B",
                     options={"maxiter": 2000, "gtol": 1e-9}) for t0 in best]
    theta = min(fits, key=lambda f: f.fun).x
    logA, logB, logE, alpha, beta = (float(v) for v in theta)
    out = {"E": np.exp(logE), "A": np.exp(logA), "B": np.exp(logB), "alpha": alpha, "beta": beta, "theta": theta}
    if alpha > 0 and beta > 0:  # the frontier of L at C = 6ND (Hoffmann et al., eq. 4)
        s = alpha + beta
        G = (alpha * out["A"] / (beta * out["B"])) ** (1 / s)
        out |= {"a3": beta / s, "b3": alpha / s, "G3": G, "H3": 1 / G}
    return out


# ---------------------------------------------------------------------------- both, with intervals

def check(p: Points) -> None:
    if len(p.L) < MIN_POINTS_3:
        raise LmjaxError(f"{len(p.L)} points: the parametric fit needs at least {MIN_POINTS_3} (five parameters)")
    if approach2(p) is None:
        minima = isoflop_minima(p)
        raise LmjaxError(
            f"the points give {sum(m is not None for m in minima)} isoFLOP minima ({len(minima)} budgets of "
            f"{MIN_SIZES}+ sizes within {BUDGET_RTOL:.0%} compute, {sum(m is None for m in minima)} without a "
            f"minimum inside their sizes); approach 2 needs {MIN_BUDGETS}: add budgets or sizes around each optimum")


def _runs(p: Points) -> list[np.ndarray]:
    """The rows of each run (one (N, D)); several rows are its seeds."""
    keys = {}
    for i, key in enumerate(zip(p.N.tolist(), p.D.tolist())):
        keys.setdefault(key, []).append(i)
    return [np.asarray(v) for v in keys.values()]


def _resample(p: Points, runs: list[np.ndarray], rng) -> Points:
    """Runs drawn with replacement within each budget, each run's seeds drawn with replacement
    and averaged."""
    rows = []
    first = np.array([r[0] for r in runs])
    label = budgets(p.C)[first]
    for b in np.unique(label):
        mine = np.flatnonzero(label == b)
        for k in rng.choice(mine, size=len(mine)):
            rows.append(rng.choice(runs[k], size=len(runs[k])))
    L = np.array([p.L[r].mean() for r in rows])
    head = np.array([r[0] for r in rows])
    return Points(p.N[head], p.D[head], L, p.C[head])


def _means(p: Points, runs: list[np.ndarray]) -> Points:
    head = np.array([r[0] for r in runs])
    return Points(p.N[head], p.D[head], np.array([p.L[r].mean() for r in runs]), p.C[head])


def fit(p: Points, *, bootstrap_n: int = 1000, seed: int = 0, ci: float = 0.95) -> dict:
    """Approaches 2 and 3 on the runs' mean losses, each figure with a percentile interval
    `<name>_ci` over `bootstrap_n` resamples; `tokens_per_param`: D_opt / N_opt at the points'
    largest budget, by approach 2 (and `tokens_per_param3` by approach 3)."""
    check(p)
    runs = _runs(p)
    mean = _means(p, runs)
    C_max = float(p.C.max())

    def figures(q: Points, init=None) -> dict:
        f3 = approach3(q, starts=16 if init is None else 0, init=init)  # resamples start at the estimate
        f2 = approach2(q) or {}
        out = {k: f3[k] for k in (*SURFACE, "a3", "b3") if k in f3} | f2
        if f2:
            out["tokens_per_param"] = f2["H"] * C_max ** f2["b"] / (f2["G"] * C_max ** f2["a"])
        if "G3" in f3:
            out["tokens_per_param3"] = f3["H3"] * (C_max / 6) ** f3["b3"] / (f3["G3"] * (C_max / 6) ** f3["a3"])
        return out | {"theta": f3["theta"]}

    est = figures(mean)
    rng = np.random.default_rng(seed)
    draws = [figures(_resample(p, runs, rng), init=est["theta"]) for _ in range(bootstrap_n)]
    names = [k for k in est if k != "theta"]
    out = {"points": int(len(p.L)), "runs": len(runs), "budgets": int(budgets(p.C).max() + 1),
           "ci": ci, "bootstrap_n": bootstrap_n, "bootstrap_valid": sum("a" in d for d in draws),
           "tokens_per_param_at_flops": C_max, "huber_delta": HUBER_DELTA}
    for k in names:
        out[k] = float(est[k])
        values = np.array([d[k] for d in draws if k in d], np.float64)
        values = values[np.isfinite(values)]
        out[f"{k}_ci"] = ([float(v) for v in np.quantile(values, [(1 - ci) / 2, (1 + ci) / 2])]
                          if len(values) >= 2 else None)
    out["isoflop_minima"] = isoflop_minima(mean)
    return out


# ---------------------------------------------------------------------------- lmjax fit

def _define(fv) -> None:
    from absl import flags

    d = dict(flag_values=fv)
    flags.DEFINE_string("points", None, "CSV of runs: params, tokens, loss (optional flops, seed).", **d)
    flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for the intervals.", **d)
    flags.DEFINE_float("ci", 0.95, "Interval coverage.", **d)
    flags.DEFINE_integer("seed", 0, "The bootstrap's seed.", **d)
    flags.DEFINE_boolean("verbose", False, "Show tracebacks for errors.", **d)


def _parse(argv: list[str]):
    from lmjax.cli.main import parse_own_flags

    fv, rest = parse_own_flags("fit", _define, argv, USAGE)
    if rest:
        raise LmjaxError(f"unexpected argument {rest[0]!r}; {USAGE}")
    if not fv.points:
        raise LmjaxError(f"--points is required; {USAGE}")
    if fv.bootstrap < 0 or not 0 < fv.ci < 1:
        raise LmjaxError("--bootstrap must be >= 0 and --ci inside (0, 1)")
    return fv


def run(argv: list[str]) -> int:
    fv = _parse(argv)
    res = fit(read_points(fv.points), bootstrap_n=fv.bootstrap, seed=fv.seed, ci=fv.ci)
    for name in ("E", "A", "B", "alpha", "beta", "a", "b", "a3", "b3", "tokens_per_param", "tokens_per_param3"):
        iv = res.get(f"{name}_ci")
        print(f"{name:>17} = {res[name]:.4g}" + (f"  [{iv[0]:.4g}, {iv[1]:.4g}]" if iv else ""), file=sys.stderr)
    print(json.dumps(res))
    return 0


def main(argv: list[str] | None = None) -> int:
    from lmjax.cli.main import delegated_main

    return delegated_main(argv, define=_define, doc=f"{__doc__}\n{USAGE}\n", run=run)


if __name__ == "__main__":
    sys.exit(main())
