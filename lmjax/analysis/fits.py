"""Scaling-law fits: L(C) = E + A * C^-alpha, bootstrap intervals, the compute-optimal frontier.

Everything here is float64 numpy/scipy and deterministic (the bootstrap takes a seed).

Fitting. `fit_power_law` minimises the squared residuals of log L (a multiplicative-noise
model: a 2% error weighs the same at every compute) with `scipy.optimize.least_squares`
(trust-region reflective, analytic Jacobian) under the bounds 0 <= E < min(L), A > 0,
0 < alpha <= 2. Internally compute is measured in units of its geometric mean, so A is
well conditioned; the returned A is in the caller's units. The starting point comes from a
grid over E in [0, min L): for each E, a straight-line fit of log(L - E) on log C gives A and
alpha, and the grid point with the smallest log-space error starts the solver.

Few points. A free (E, A, alpha) fit needs at least three distinct compute values and is only
trusted from `MIN_POINTS_FREE_E` = 4 points; `fit_variant` (what `lmjax report` uses) fits with
E fixed at 0 (a pure power law, L = A * C^-alpha) from 2 or 3 points and says so in its
`note`, and reports 'insufficient points' below 2.

Frontier. `compute_optimal_frontier` is the running minimum (the Pareto front), not the lower
convex hull: for each compute budget C, the lowest loss that any run reached having spent at
most C FLOPs, over every point of every run's eval curve, with the run (and its variant and
step) that reached it. See its docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

PARAMS = ("E", "A", "alpha")
ALPHA_MAX = 2.0
ALPHA_MIN = 1e-9  # alpha is in (0, 2]; least_squares needs closed bounds
MIN_POINTS_FREE_E = 4  # fit_variant: fewer points than this fix E at 0
MIN_POINTS = 2  # fit_variant: fewer points than this are 'insufficient points'
_E_GRID = 96


@dataclass(frozen=True)
class PowerLaw:
    """L(C) = E + A * C^-alpha. `E_fixed`: E was given, not fitted. `n`: points fitted.
    `rmse_log`: root-mean-square residual of log L (about the relative error of the fit)."""

    E: float
    A: float
    alpha: float
    E_fixed: bool = False
    n: int = 0
    rmse_log: float = float("nan")

    def __call__(self, C):
        C = np.asarray(C, dtype=np.float64)
        # A * C^-alpha computed in log space: A can be astronomically large for tiny alpha*log C.
        return self.E + np.exp(math.log(self.A) - self.alpha * np.log(C))

    def as_dict(self) -> dict:
        return {"E": self.E, "A": self.A, "alpha": self.alpha, "E_fixed": self.E_fixed,
                "n": self.n, "rmse_log": self.rmse_log}


def _arrays(C, L) -> tuple[np.ndarray, np.ndarray]:
    C = np.asarray(C, dtype=np.float64).ravel()
    L = np.asarray(L, dtype=np.float64).ravel()
    if C.shape != L.shape:
        raise ValueError(f"C and L differ in length ({C.size} vs {L.size})")
    if not (np.all(np.isfinite(C)) and np.all(np.isfinite(L))):
        raise ValueError("C and L must be finite")
    if np.any(C <= 0) or np.any(L <= 0):
        raise ValueError("C and L must be positive")
    return C, L


def _residuals(theta, x, y, E_fixed):
    E, b, alpha = (E_fixed, *theta) if E_fixed is not None else theta
    return np.log(E + np.exp(b - alpha * x)) - y


def _jacobian(theta, x, y, E_fixed):
    E, b, alpha = (E_fixed, *theta) if E_fixed is not None else theta
    P = np.exp(b - alpha * x)
    M = E + P
    cols = [P / M, -x * P / M]
    if E_fixed is None:
        cols.insert(0, 1.0 / M)
    return np.stack(cols, axis=1)


def _grid_start(x, y, L, E_fixed) -> np.ndarray:
    """(E, b, alpha) from straight-line fits of log(L - E) on x over a grid of E."""
    Lmin = float(L.min())
    Es = np.array([E_fixed]) if E_fixed is not None else Lmin * np.linspace(0.0, 0.995, _E_GRID)
    Y = np.log(L[None, :] - Es[:, None])  # (G, n)
    xc = x - x.mean()
    slope = (Y - Y.mean(axis=1, keepdims=True)) @ xc / max(float(xc @ xc), 1e-300)
    alpha = np.clip(-slope, 1e-3, ALPHA_MAX)
    b = Y.mean(axis=1) + alpha * x.mean()
    pred = np.log(Es[:, None] + np.exp(b[:, None] - alpha[:, None] * x[None, :]))
    sse = np.sum((pred - y[None, :]) ** 2, axis=1)
    i = int(np.nanargmin(sse))
    return np.array([Es[i], b[i], alpha[i]])


def fit_power_law(C, L, *, E: float | None = None) -> PowerLaw:
    """Fit L(C) = E + A * C^-alpha by least squares on log L.

    `E=None` fits E in [0, min L) (needs >= 3 distinct C); a number fixes E (needs >= 2
    distinct C; E=0 is a straight line in log-log). Raises ValueError on unusable input.
    """
    C, L = _arrays(C, L)
    distinct = np.unique(C).size
    need = 3 if E is None else 2
    if distinct < need:
        raise ValueError(f"{'a free-E' if E is None else 'a fixed-E'} fit needs >= {need} distinct "
                         f"compute values, got {distinct}")
    Lmin = float(L.min())
    if E is not None and not 0 <= E < Lmin:
        raise ValueError(f"E={E} must be in [0, min L={Lmin})")
    logC0 = float(np.mean(np.log(C)))
    x = np.log(C) - logC0
    y = np.log(L)
    start = _grid_start(x, y, L, E)
    E_hi = Lmin * (1.0 - 1e-9)
    if E is None:
        start[0] = min(start[0], E_hi * (1 - 1e-6))
        lb, ub = [0.0, -np.inf, ALPHA_MIN], [E_hi, np.inf, ALPHA_MAX]
        theta0 = start
    else:
        lb, ub = [-np.inf, ALPHA_MIN], [np.inf, ALPHA_MAX]
        theta0 = start[1:]
    theta0 = np.clip(theta0, np.array(lb) + 1e-12, np.array(ub) - 1e-12)
    res = least_squares(_residuals, theta0, jac=_jacobian, bounds=(lb, ub), args=(x, y, E),
                        method="trf", x_scale="jac", ftol=1e-12, xtol=1e-12, gtol=1e-12, max_nfev=2000)
    E_fit, b, alpha = (E, *res.x) if E is not None else res.x
    rmse = float(np.sqrt(np.mean(res.fun ** 2)))
    # Back to the caller's units: A * C^-alpha = exp(b) * (C / C0)^-alpha.
    return PowerLaw(E=float(E_fit), A=float(math.exp(b + alpha * logC0)), alpha=float(alpha),
                    E_fixed=E is not None, n=int(C.size), rmse_log=rmse)


class Intervals(dict):
    """`bootstrap`'s answer: a dict param -> (lo, hi), with `n` resamples drawn, `n_valid`
    that gave a fit (degenerate resamples are skipped) and the coverage `ci`."""

    def __init__(self, items, *, n: int, n_valid: int, ci: float):
        super().__init__(items)
        self.n, self.n_valid, self.ci = n, n_valid, ci


def bootstrap(C, L, n: int = 1000, seed: int = 0, ci: float = 0.9, *, E: float | None = None,
              seeds=None, se=None) -> Intervals:
    """Percentile bootstrap intervals for (E, A, alpha): resample the points with replacement
    `n` times (numpy default_rng(seed)), refit each, and take the (1-ci)/2 and (1+ci)/2
    quantiles. A resample is degenerate, and skipped, when it has fewer distinct compute values
    than the fit needs (3 with E free, 2 with E fixed) or its fit fails. With E fixed its
    interval is (E, E). (nan, nan) when no resample could be fitted.

    `seeds`: for each point, the losses of its seeds (L is their mean; None or fewer than two
    values: the point has one seed). Each resampled point then also resamples its seeds, with
    replacement, and takes their mean: the intervals carry seed-to-seed noise as well as the
    choice of points (a two-level bootstrap).

    `se`: for each point, the standard error of its evaluation (over the validation windows it
    scored; None or nan: none). Each resampled point then also moves by a normal draw of that
    size, so the intervals carry evaluation noise too (one draw per point: its seeds were scored
    on the same windows)."""
    C, L = _arrays(C, L)
    need = 3 if E is None else 2
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, C.size, size=(n, C.size))
    noisy = [np.asarray(s, float) if s is not None and len(s) > 1 else None for s in seeds or [None] * C.size]
    eval_se = None if se is None else np.nan_to_num(np.asarray([np.nan if v is None else v for v in se], float))
    if eval_se is not None and not np.any(eval_se > 0):
        eval_se = None
    samples = []
    for row in idx:
        if np.unique(C[row]).size < need:
            continue
        L_row = L[row] if not any(s is not None for s in noisy) else np.array(
            [L[i] if noisy[i] is None else rng.choice(noisy[i], noisy[i].size).mean() for i in row])
        if eval_se is not None:
            L_row = L_row + rng.normal(0.0, eval_se[row])
        try:
            p = fit_power_law(C[row], L_row, E=E)
        except (ValueError, FloatingPointError, OverflowError):
            continue
        if all(math.isfinite(v) for v in (p.E, p.A, p.alpha)):
            samples.append((p.E, p.A, p.alpha))
    q = ((1 - ci) / 2 * 100, (1 + ci) / 2 * 100)
    if samples:
        arr = np.array(samples)
        out = {k: tuple(float(v) for v in np.percentile(arr[:, j], q)) for j, k in enumerate(PARAMS)}
    else:
        out = {k: (float("nan"), float("nan")) for k in PARAMS}
    return Intervals(out, n=n, n_valid=len(samples), ci=ci)


def fit_variant(C, L, *, bootstrap_n: int = 1000, seed: int = 0, ci: float = 0.9, seeds=None, se=None) -> dict:
    """The report's per-variant fit, with the few-points policy made explicit:

    - n >= 4 points: E, A and alpha all fitted;
    - n = 2 or 3 (or < 3 distinct compute values): E fixed at 0, L = A * C^-alpha;
    - n < 2: no fit, note 'insufficient points'.

    Bootstrap intervals need more points than free parameters (an exact interpolation has no
    spread to resample): with 2 points and E fixed the intervals are None, and the note says so.

    `seeds`: each point's per-seed losses (see `bootstrap`), for runs of several replicas; `se`:
    each point's evaluation standard error (see `bootstrap`).

    Returns a JSON-ready dict: n, status ('fit', 'E fixed at 0', 'insufficient points'),
    note, E/A/alpha (None without a fit), intervals {param: [lo, hi]}, ci, bootstrap_n,
    bootstrap_valid, rmse_log.
    """
    C, L = _arrays(C, L)
    distinct = np.unique(C).size
    out = {"n": int(C.size), "ci": ci, "bootstrap_n": int(bootstrap_n), "bootstrap_valid": 0,
           "E": None, "A": None, "alpha": None, "E_fixed": None, "rmse_log": None,
           "intervals": {k: [None, None] for k in PARAMS}}
    if C.size < MIN_POINTS or distinct < 2:
        return {**out, "status": "insufficient points",
                "note": f"insufficient points: {C.size} point(s), {distinct} distinct compute value(s); "
                        f"a fit needs >= {MIN_POINTS} (>= {MIN_POINTS_FREE_E} to fit E)"}
    if C.size >= MIN_POINTS_FREE_E and distinct >= 3:
        E, status, note = None, "fit", "E, A, alpha fitted"
    else:
        E, status = 0.0, "E fixed at 0"
        note = (f"E fixed at 0 (pure power law): {C.size} points, {distinct} distinct compute values; "
                f"fitting E needs >= {MIN_POINTS_FREE_E} points and 3 distinct compute values")
    p = fit_power_law(C, L, E=E)
    free = 3 if E is None else 2
    iv = None
    if C.size <= free:  # as many parameters as points: every resample refits the same exact curve
        note += f"; no interval: {C.size} points determine the {free} parameters exactly"
    elif bootstrap_n > 0:
        iv = bootstrap(C, L, n=bootstrap_n, seed=seed, ci=ci, E=E, seeds=seeds, se=se)
    return {**out, "status": status, "note": note, "E": p.E, "A": p.A, "alpha": p.alpha,
            "E_fixed": p.E_fixed, "rmse_log": p.rmse_log,
            "bootstrap_valid": iv.n_valid if iv is not None else 0,
            "intervals": {k: list(iv[k]) if iv is not None else [None, None] for k in PARAMS}}


def compute_optimal_frontier(points, *, compute: str = "compute", loss: str = "loss") -> list[dict]:
    """The compute-optimal frontier as a running minimum (Pareto front) of loss over compute.

    `points`: an iterable of mappings (or a pandas DataFrame) with a `compute` and a `loss`
    key, e.g. one per eval point of every run (`run`, `variant`, `step`, ... are carried
    along). Non-finite points are ignored.

    Definition: frontier(C) = min{ loss(p) : compute(p) <= C } over all points p. Returned are
    the points where frontier(C) strictly improves, sorted by compute (so loss strictly
    decreases): each is (compute, loss, and whatever else the point held: the run that
    attains the frontier from that budget up to the next returned point). This is not the
    lower convex hull: a point below the chord of its neighbours still counts. Ties in loss
    keep the point with less compute; ties in compute keep the lower loss, then the first given.
    """
    if hasattr(points, "to_dict"):
        points = points.to_dict("records")
    rows = []
    for i, p in enumerate(points):
        c, l = _as_float(p.get(compute)), _as_float(p.get(loss))
        if math.isfinite(c) and math.isfinite(l):
            rows.append((c, l, i, dict(p)))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    front, best = [], math.inf
    for c, l, _, p in rows:
        if l < best:
            best = l
            front.append({**p, compute: c, loss: l})
    return front


def frontier_at(frontier: list[dict], budget: float, *, compute: str = "compute") -> dict | None:
    """The frontier point in force at `budget`: the best point with compute <= budget (None
    when every point needs more compute than that)."""
    best = None
    for p in frontier:  # sorted by compute, loss decreasing
        if p[compute] <= budget:
            best = p
        else:
            break
    return best


def _as_float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")
