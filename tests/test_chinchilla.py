"""Chinchilla approaches 2 and 3 (lmjax/analysis/chinchilla.py) and `lmjax fit --points`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmjax.analysis import chinchilla as ch
from lmjax.cli.main import main as lmjax_main

# Hoffmann et al.'s fitted law (their eq. 10): its frontier has a = beta / (alpha + beta) = 0.4516
TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
A_TRUE = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])


def law(N, D):
    return TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]


def isoflop_grid(noise: float, seeds: int = 1, budgets=(1e18, 1e19, 1e20, 1e21), rng_seed: int = 1):
    """7 sizes per budget spanning 100x around the law's optimum, C = 6ND, log-normal noise."""
    rng = np.random.default_rng(rng_seed)
    s = TRUE["alpha"] + TRUE["beta"]
    G = (TRUE["alpha"] * TRUE["A"] / (TRUE["beta"] * TRUE["B"])) ** (1 / s)
    rows = []
    for C in budgets:
        for f in np.logspace(-1, 1, 7):
            N = G * (C / 6) ** A_TRUE * f
            D = C / (6 * N)
            for seed in range(seeds):
                rows.append((N, D, law(N, D) * np.exp(noise * rng.standard_normal()), seed))
    N, D, L, _ = map(np.array, zip(*rows))
    return ch.points(N, D, L)


def test_noise_free_points_give_the_law_back():
    p = isoflop_grid(0.0)
    f3 = ch.approach3(p)
    for k, v in TRUE.items():
        assert f3[k] == pytest.approx(v, rel=1e-3), k
    assert f3["a3"] == pytest.approx(A_TRUE, abs=1e-4)
    f2 = ch.approach2(p)
    assert f2["a"] == pytest.approx(A_TRUE, abs=0.01) and f2["a"] + f2["b"] == pytest.approx(1, abs=1e-9)


def test_intervals_cover_the_truth_and_resample_seeds():
    p = isoflop_grid(0.005, seeds=2)
    res = ch.fit(p, bootstrap_n=40, seed=0, ci=0.95)
    assert res["points"] == 56 and res["runs"] == 28 and res["budgets"] == 4
    assert res["bootstrap_valid"] >= 38
    for k, v in {**TRUE, "a": A_TRUE, "a3": A_TRUE}.items():
        lo, hi = res[f"{k}_ci"]
        assert lo <= v <= hi, (k, lo, v, hi)
        assert lo < res[k] < hi and hi - lo < 0.5 * abs(v), k  # an interval, and an informative one
    # seeds' noise widens the intervals: the same runs without it (their mean losses) resample less
    quiet = ch.fit(ch._means(p, ch._runs(p)), bootstrap_n=40, seed=0, ci=0.95)
    width = lambda r, k: r[f"{k}_ci"][1] - r[f"{k}_ci"][0]
    assert width(res, "a") > width(quiet, "a")


def test_a_resample_keeps_each_budgets_runs():
    p = isoflop_grid(0.01, seeds=3)
    q = ch._resample(p, ch._runs(p), np.random.default_rng(0))
    assert len(q.L) == 28
    assert np.bincount(ch.budgets(q.C)).tolist() == [7, 7, 7, 7]


def test_budgets_group_compute_within_five_percent():
    assert ch.budgets(np.array([1.0, 1.04, 2.0, 2.09, 1.02, 2.2])).tolist() == [0, 0, 1, 1, 0, 2]


def write_csv(path, p, columns=("params", "tokens", "loss", "seed")):
    # seed is read as a label only: rows of one (params, tokens) are that run's seeds
    values = {"params": p.N, "tokens": p.D, "loss": p.L, "seed": np.zeros(len(p.L), int), "flops": p.C}
    lines = [",".join(columns)] + [",".join(str(values[c][i]) for c in columns) for i in range(len(p.L))]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_lmjax_fit_prints_the_fits_as_its_final_json_line(tmp_path, capsys):
    path = write_csv(tmp_path / "runs.csv", isoflop_grid(0.005, seeds=2))
    assert lmjax_main(["fit", f"--points={path}", "--bootstrap=10"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for k in ("E", "A", "B", "alpha", "beta", "a", "b"):
        assert isinstance(out[k], float) and len(out[f"{k}_ci"]) == 2, k
    assert out["alpha"] == pytest.approx(TRUE["alpha"], rel=0.05) and out["a"] == pytest.approx(A_TRUE, abs=0.03)
    assert out["ci"] == 0.95 and out["bootstrap_n"] == 10


@pytest.mark.parametrize("columns, rows, message", [
    (("params", "loss"), None, "lacks the column(s) tokens"),
    (("params", "tokens", "loss"), 4, "4 points: the parametric fit needs at least 6"),
    (("params", "tokens", "loss"), "one budget", "approach 2 needs 2"),
    (("params", "tokens", "loss"), "not a number", "line 3: loss='x' is not a number"),
])
def test_lmjax_fit_refuses_bad_points_with_one_line(tmp_path, capsys, columns, rows, message):
    p = isoflop_grid(0.0)
    if isinstance(rows, int):
        p = p.take(np.arange(rows))
    elif rows == "one budget":
        p = p.take(np.arange(7))
    path = write_csv(tmp_path / "runs.csv", p, columns)
    if rows == "not a number":
        lines = path.read_text().splitlines()
        lines[2] = ",".join(lines[2].split(",")[:2] + ["x"])
        path.write_text("\n".join(lines) + "\n")
    assert lmjax_main(["fit", f"--points={path}", "--bootstrap=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
