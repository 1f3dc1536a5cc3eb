"""lmjax.analysis: power-law fits on synthetic data with known exponents, the compute-optimal
frontier on constructed points, and `lmjax report` end to end on a hand-written experiment."""

import csv
import json
import math

import numpy as np
import pytest

from lmjax.analysis import fits
from lmjax.analysis.cli import main
from lmjax.analysis.fits import PowerLaw, bootstrap, compute_optimal_frontier, fit_power_law, frontier_at

# ---------------------------------------------------------------------------------------------
# Fits


@pytest.mark.parametrize("law", [PowerLaw(1.7, 30.0, 0.12), PowerLaw(1.7, 1e4, 0.3),
                                 PowerLaw(0.5, 2e3, 0.2), PowerLaw(2.5, 5.0, 0.08)])
@pytest.mark.parametrize("C", [np.logspace(12, 16, 8), np.logspace(12, 16, 4), np.logspace(15, 19, 6)],
                         ids=["8pts", "4pts", "higherC"])
def test_noiseless_fit_recovers_parameters(law, C):
    p = fit_power_law(C, law(C))
    assert p.E == pytest.approx(law.E, rel=1e-3)
    assert p.A == pytest.approx(law.A, rel=1e-3)
    assert p.alpha == pytest.approx(law.alpha, rel=1e-3)
    assert not p.E_fixed and p.n == C.size and p.rmse_log < 1e-6


def test_fixed_E_fits_a_pure_power_law():
    C = np.logspace(10, 14, 3)
    p = fit_power_law(C, 40.0 * C ** -0.07, E=0.0)
    assert (p.E, p.E_fixed) == (0.0, True)
    assert p.A == pytest.approx(40.0, rel=1e-6) and p.alpha == pytest.approx(0.07, rel=1e-6)


def noisy(law, C, seed, sigma=0.02):
    """2% multiplicative (log-normal) noise."""
    return law(C) * np.exp(sigma * np.random.default_rng(seed).standard_normal(C.size))


# With 2% noise E and alpha trade off strongly over 4 decades of C: +-0.03 on alpha needs many
# points. Measured over 200 seeds: 8 points fail +-0.03 in ~45% of seeds, 30 in ~25%, 100 in 9%,
# 200 in 3.5% (and the 90% interval covered the true alpha in 49 of 50 seeds).
C_NOISY = np.logspace(12, 16, 200)
LAW_1 = PowerLaw(1.7, 30.0, 0.12)
LAW_2 = PowerLaw(1.7, 1e4, 0.3)  # same loss range over C_NOISY, a different exponent


def test_noisy_fit_recovers_alpha_and_interval_covers_truth():
    L = noisy(LAW_1, C_NOISY, seed=0)
    p = fit_power_law(C_NOISY, L)
    assert abs(p.alpha - 0.12) < 0.03
    assert 0.015 < p.rmse_log < 0.025  # the residual is the noise
    iv = bootstrap(C_NOISY, L, n=1000, seed=0, ci=0.9)
    assert iv.n_valid == 1000
    lo, hi = iv["alpha"]
    assert lo < 0.12 < hi
    assert lo < p.alpha < hi and hi - lo < 0.1
    assert iv["E"][0] < 1.7 < iv["E"][1]


def test_noisy_alpha_is_within_tolerance_for_most_seeds():
    # Not a lucky seed: the +-0.03 recovery holds for the large majority of noise draws.
    errors = [fit_power_law(C_NOISY, noisy(LAW_1, C_NOISY, seed=s)).alpha - 0.12 for s in range(1, 21)]
    assert np.mean(np.abs(errors) < 0.03) >= 0.85
    assert abs(np.mean(errors)) < 0.015  # no gross bias


def test_two_families_with_different_alpha_are_distinguishable():
    L1, L2 = noisy(LAW_1, C_NOISY, seed=0), noisy(LAW_2, C_NOISY, seed=1)
    iv1, iv2 = bootstrap(C_NOISY, L1, n=200), bootstrap(C_NOISY, L2, n=200)
    assert iv2["alpha"][0] < 0.3 < iv2["alpha"][1]
    assert iv1["alpha"][1] < iv2["alpha"][0]  # disjoint 90% intervals
    assert abs(fit_power_law(C_NOISY, L2).alpha - 0.3) < 0.03


def test_bootstrap_is_deterministic_and_skips_degenerate_resamples():
    C = np.array([1e12, 1e12, 1e13, 1e14])
    L = LAW_1(C)
    a, b = bootstrap(C, L, n=200, seed=3), bootstrap(C, L, n=200, seed=3)
    assert dict(a) == dict(b) and a.n_valid == b.n_valid
    # Resamples with < 3 distinct compute values cannot fit E, so some are skipped.
    assert 0 < a.n_valid < 200
    assert a["alpha"][0] == pytest.approx(0.12, rel=1e-4) and a["alpha"][1] == pytest.approx(0.12, rel=1e-4)
    assert bootstrap(C, L, n=50, seed=0, E=1.0)["E"] == (1.0, 1.0)


def test_fit_variant_few_points_policy():
    C = np.logspace(12, 16, 6)
    L = LAW_1(C)
    full = fits.fit_variant(C, L, bootstrap_n=20)
    assert full["status"] == "fit" and full["alpha"] == pytest.approx(0.12, rel=1e-3) and full["n"] == 6
    three = fits.fit_variant(C[:3], L[:3], bootstrap_n=20)
    assert three["status"] == "E fixed at 0" and three["E"] == 0.0 and three["E_fixed"]
    assert "E fixed at 0" in three["note"] and "3 points" in three["note"]
    lo, hi = three["intervals"]["alpha"]  # 3 points, 2 parameters: an interval exists
    assert lo <= three["alpha"] <= hi and three["bootstrap_valid"] > 0
    two = fits.fit_variant(C[:2], L[:2], bootstrap_n=20)
    assert two["status"] == "E fixed at 0" and two["intervals"]["alpha"] == [None, None]
    one = fits.fit_variant(C[:1], L[:1], bootstrap_n=20)
    assert one["status"] == "insufficient points" and one["alpha"] is None
    assert "insufficient points" in one["note"]
    same_c = fits.fit_variant([1e12] * 4, L[:4], bootstrap_n=20)
    assert same_c["status"] == "insufficient points"


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError):
        fit_power_law([1e12, 1e13], [3.0, 2.0])  # free E needs 3 distinct C
    with pytest.raises(ValueError):
        fit_power_law([1e12, 1e13, 1e14], [3.0, -2.0, 1.0])
    with pytest.raises(ValueError):
        fit_power_law([1e12, 1e13, 1e14], [3.0, 2.5, 2.0], E=2.0)  # E must be < min L


# ---------------------------------------------------------------------------------------------
# Frontier


def test_frontier_picks_the_best_run_at_each_budget():
    pts = [
        {"run": "a", "compute": 1, "loss": 5.0}, {"run": "a", "compute": 10, "loss": 4.0},
        {"run": "a", "compute": 100, "loss": 3.5},
        {"run": "b", "compute": 5, "loss": 4.5}, {"run": "b", "compute": 50, "loss": 3.0},
        {"run": "b", "compute": 500, "loss": 2.9},
        {"run": "c", "compute": 20, "loss": 3.9}, {"run": "c", "compute": 200, "loss": 3.2},
        {"run": "d", "compute": 30, "loss": float("nan")},  # ignored
        {"run": "e", "compute": 50, "loss": 3.0},  # ties b at the same compute: b (first) keeps it
    ]
    front = compute_optimal_frontier(pts)
    assert [(p["run"], p["compute"]) for p in front] == [("a", 1), ("b", 5), ("a", 10), ("c", 20), ("b", 50),
                                                         ("b", 500)]
    assert all(x["loss"] > y["loss"] for x, y in zip(front, front[1:]))
    expect = {0.5: None, 1: "a", 4.9: "a", 5: "b", 10: "a", 19: "a", 20: "c", 49: "c", 50: "b", 100: "b",
              200: "b", 499: "b", 1e9: "b"}
    for budget, run in expect.items():
        p = frontier_at(front, budget)
        assert (p["run"] if p else None) == run, budget
    # Running minimum, not the convex hull: c at 20 is kept though it lies above the a(10)-b(50) chord.
    assert any(p["run"] == "c" for p in front)


# ---------------------------------------------------------------------------------------------
# Report end to end on a hand-written experiment folder

TRUE = {"mha": PowerLaw(1.5, 1.0 * 1e11 ** 0.15, 0.15), "gqa": PowerLaw(1.6, 1.2 * 1e11 ** 0.1, 0.1),
        # Two runs only (E fixed at 0); below mha at small compute, so it holds the frontier there.
        "mqa": PowerLaw(0.0, 8.45, 0.05)}
SIZES = [(2, 64, 100), (4, 128, 200), (4, 256, 300), (6, 384, 400)]  # layers, width, steps
BATCH, SEQ, VOCAB = 8, 64, 256


def _flops(layers, width):
    return float(6 * layers * 12 * width * width + 6 * VOCAB * width + 6 * layers * SEQ * width)


def write_run(root, name, *, attention, layers, width, steps, law, status="done", kv=0):
    wd = root / name
    wd.mkdir(parents=True)
    cfg = {"model": {"attention": attention, "num_layers": layers, "num_heads": 4, "num_kv_heads": kv,
                     "width": width, "window": 0},
           "train": {"steps": steps, "batch_size": BATCH, "seq_len": SEQ, "eval_every": steps // 4}}
    (wd / "config.json").write_text(json.dumps(cfg))
    fpt = _flops(layers, width)
    n_ne = 12 * layers * width * width
    (wd / "run.json").write_text(json.dumps({"params": n_ne + VOCAB * width, "params_non_embedding": n_ne,
                                             "flops_per_token": fpt, "devices": "1 x cpu", "corpus": "stdlib"}))
    last = steps if status == "done" else steps // 2
    rows = []
    for step in range(5, last + 1, 5):
        rows.append({"step": step, "loss": 3.0, "tokens": step * BATCH * SEQ, "tokens_per_s": 1000.0 + step,
                     "mfu": 0.1})
        if step % (steps // 4) == 0:
            c = fpt * step * BATCH * SEQ
            val = float(law(c)) * (1 + 0.1 * (1 - step / steps))  # above the law, on it at the end
            if status == "failed":
                val = 9.0  # would wreck the fit if it were used
            rows.append({"step": step, "val_loss": val, "val_perplexity": math.exp(val),
                         "val_bits_per_byte": val / math.log(2), "val_tokens": 4096})
    (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = {"model.attention": attention, "model.num_layers": layers, "model.width": width}
    if status == "done":  # as `lmjax sweep` writes it: its fields, then train's final metrics
        (wd / "result.json").write_text(json.dumps({
            "name": name, "overrides": overrides, "config_hash": "0123", "returncode": 0,
            "elapsed": steps * 0.1 + 12, "step": steps, "loss": 3.0, "val_loss": rows[-1]["val_loss"],
            "preempted": False, "time_to_first_step": 4.0, "wall_time": steps * 0.1}))
    if status == "failed":
        write_failed(wd, overrides)
    return wd


def write_failed(wd, overrides, error="error: non-finite loss or gradients at step 50 (loss=nan)"):
    wd.mkdir(parents=True, exist_ok=True)
    (wd / "failed.json").write_text(json.dumps({"name": wd.name, "overrides": overrides, "returncode": 2,
                                                "error": error, "log": str(wd / "train.log")}))


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    exp = tmp_path_factory.mktemp("report") / "experiments" / "attn"
    runs = exp / "runs" / "cpu"
    (exp).mkdir(parents=True)
    (exp / "config.py").write_text("def get_config(arg): ...\n")
    for layers, width, steps in SIZES:
        write_run(runs, f"mha_L{layers}_W{width}", attention="mha", layers=layers, width=width, steps=steps,
                  law=TRUE["mha"])
        write_run(runs, f"gqa_L{layers}_W{width}", attention="gqa", kv=2, layers=layers, width=width,
                  steps=steps, law=TRUE["gqa"])
    for layers, width, steps in SIZES[:2]:
        write_run(runs, f"mqa_L{layers}_W{width}", attention="mqa", layers=layers, width=width, steps=steps,
                  law=TRUE["mqa"])
    write_run(runs, "gqa_L6_W512", attention="gqa", kv=2, layers=6, width=512, steps=400, law=TRUE["gqa"],
              status="failed")
    write_run(runs, "mha_L6_W512", attention="mha", layers=6, width=512, steps=400, law=TRUE["mha"],
              status="partial")
    (runs / "mha_L8_W512").mkdir()  # created by the sweep, not started
    # Failed before writing config.json: the variant comes from the sweep's recorded overrides.
    write_failed(runs / "mqa_L6_W512", {"model.attention": "mqa", "model.num_kv_heads": 1,
                                        "model.num_layers": 6, "model.width": 512}, error="Killed")
    (runs / "_submitit").mkdir()  # the SLURM launcher's folder: not a run
    return exp


def _png_ok(path, min_kb=10):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert len(data) > min_kb * 1024, (path, len(data))


REPORT_FILES = {"results.csv", "results.md", "fits.md", "fits.json", "frontier.csv", "loss_vs_compute.png",
                "loss_vs_params.png", "frontier.png"}


@pytest.fixture(scope="module")
def report(experiment):
    from lmjax.analysis.report import write_report

    return write_report(experiment, bootstrap_n=100)


def test_report_end_to_end(experiment, report):
    from lmjax.analysis.runs import RESULT_COLUMNS

    res = report
    out = experiment / "report"
    assert res["out"] == out
    assert {p.name for p in out.iterdir()} == REPORT_FILES
    for png in ("loss_vs_compute.png", "loss_vs_params.png", "frontier.png"):
        _png_ok(out / png)

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0].keys()) == RESULT_COLUMNS
    assert len(rows) == 14
    by_run = {r["run"]: r for r in rows}
    status = {r["run"]: r["status"] for r in rows}
    assert sum(s == "done" for s in status.values()) == 10
    assert status["gqa_L6_W512"] == "failed" and "non-finite loss" in by_run["gqa_L6_W512"]["error"]
    assert status["mqa_L6_W512"] == "failed" and by_run["mqa_L6_W512"]["variant"] == "mqa"
    assert by_run["mqa_L6_W512"]["error"] == "Killed" and by_run["mqa_L6_W512"]["val_loss"] == ""
    assert status["mha_L6_W512"] == "partial" and status["mha_L8_W512"] == "pending"
    assert {r["variant"] for r in rows} == {"mha", "mqa", "gqa-kv2", "unknown"}  # pending: no config.json yet
    # Sorted by variant, then params.
    keys = [(r["variant"], float(r["params"]) if r["params"] else math.inf) for r in rows]
    assert keys == sorted(keys)
    r = by_run["mha_L4_W256"]
    tokens = 300 * BATCH * SEQ
    assert float(r["tokens"]) == tokens
    assert float(r["compute"]) == pytest.approx(_flops(4, 256) * tokens, rel=1e-9)
    assert float(r["compute_6nd"]) == pytest.approx(6 * 12 * 4 * 256 * 256 * tokens, rel=1e-9)
    assert float(r["val_loss"]) == pytest.approx(float(TRUE["mha"](_flops(4, 256) * tokens)), rel=1e-9)
    assert float(r["wall_time"]) == 30.0 and float(r["tokens_per_s"]) == 1152.5  # median of 1005, 1010, ..., 1300
    assert (r["num_layers"], r["width"], r["status"]) == ("4", "256", "done")

    # The fits recover each variant's law from its 4 completed runs; the failed and partial runs
    # are not among the points.
    fj = json.loads((out / "fits.json").read_text())["variants"]
    assert set(fj) == {"mha", "mqa", "gqa-kv2"}  # not the pending run without a config
    for variant, law in (("mha", TRUE["mha"]), ("gqa-kv2", TRUE["gqa"])):
        f = fj[variant]
        assert f["n"] == 4 and f["status"] == "fit"
        assert f["alpha"] == pytest.approx(law.alpha, rel=1e-3) and f["E"] == pytest.approx(law.E, rel=1e-3)
        assert len(f["intervals"]["alpha"]) == 2
    assert "gqa_L6_W512" not in fj["gqa-kv2"]["runs"] and "mha_L6_W512" not in fj["mha"]["runs"]
    # Fewer than 4 points: E fixed at 0, said so.
    f = fj["mqa"]
    assert (f["n"], f["status"], f["E"], f["E_fixed"]) == (2, "E fixed at 0", 0.0, True)
    assert f["alpha"] == pytest.approx(0.05, rel=1e-6) and f["A"] == pytest.approx(8.45, rel=1e-6)
    assert f["runs"] == ["mqa_L2_W64", "mqa_L4_W128"]
    assert f["intervals"]["alpha"] == [None, None] and "no interval" in f["note"]  # 2 points, 2 parameters

    md = (out / "results.md").read_text()
    assert md.count("\n| ") >= 14 and "failed" in md and "gqa_L6_W512" in md
    assert "alpha" in (out / "fits.md").read_text()

    # Frontier: the best loss at the largest budget is the best final point of any non-failed run.
    front = res["frontier"]
    df = res["results"]
    best = df[df["status"] != "failed"].sort_values("val_loss").iloc[0]
    assert front[-1]["run"] == best["run"] and front[-1]["loss"] == pytest.approx(best["val_loss"])
    assert all(p["run"] != "gqa_L6_W512" for p in front)
    small = float(df.loc[df["run"] == "mqa_L2_W64", "compute"].iloc[0])  # = mha_L2_W64's compute
    assert frontier_at(front, small)["run"] == "mqa_L2_W64"
    assert frontier_at(front, 1e30)["variant"] == "mha"
    fcsv = list(csv.DictReader(open(out / "frontier.csv")))
    assert [r["run"] for r in fcsv] == [p["run"] for p in front]
    assert "| mqa" in (out / "fits.md").read_text().split("frontier")[-1]


def test_variant_labels():
    from lmjax.analysis.runs import variant_label

    def label(**model):
        return variant_label({"model": {"num_heads": 4, "num_kv_heads": 0, "window": 0, **model}})

    assert label(attention="mha") == "mha"
    assert label(attention="mqa", num_kv_heads=1) == "mqa"
    assert label(attention="gqa", num_kv_heads=2) == "gqa-kv2"
    assert label(attention="gqa") == "gqa-kv4"  # 0 kv heads means num_heads
    assert label(attention="mha", window=32) == "window32"
    assert label(attention="gqa", num_kv_heads=2, window=32) == "gqa-kv2-window32"
    assert label(attention="linear") == "linear"
    for family in ("lstm", "gru", "rnn"):  # a recurrent family's variant is its depth
        assert variant_label({"model": {"family": family, "num_layers": 2}}) == f"{family}-2l"
    assert variant_label(None) == "unknown"


def test_curves(experiment):
    from lmjax.analysis.runs import CURVE_COLUMNS, curves

    cv = curves(experiment, arg="cpu")
    assert list(cv.columns) == CURVE_COLUMNS
    c = cv[cv["run"] == "mha_L2_W64"]
    assert c["step"].tolist() == [25, 50, 75, 100]
    assert c["tokens"].tolist() == [s * BATCH * SEQ for s in (25, 50, 75, 100)]
    assert np.allclose(c["compute"], _flops(2, 64) * c["tokens"])
    assert c["val_loss"].is_monotonic_decreasing


def test_cli_prints_table_and_writes_the_same_report(experiment, report, tmp_path, capsys):
    assert main([str(experiment), "--out", str(tmp_path / "r"), "--bootstrap", "100"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| run") and "mha_L4_W256" in out and "alpha" in out and "frontier" in out
    # Deterministic: a second report of the same runs is byte-identical, plots included.
    for name in REPORT_FILES:
        assert (tmp_path / "r" / name).read_bytes() == (report["out"] / name).read_bytes(), name


@pytest.mark.parametrize("make", ["empty", "missing", "wrong_arg"])
def test_cli_no_runs_is_one_error_line(make, tmp_path, experiment, capsys):
    if make == "empty":
        folder = tmp_path / "experiments" / "empty"
        (folder / "runs").mkdir(parents=True)
        (folder / "config.py").write_text("")
        argv = [str(folder)]
    elif make == "missing":
        folder = tmp_path / "experiments" / "nope"
        argv = [str(folder)]
    else:
        folder = experiment
        argv = [str(folder), "--arg", "gpu"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(folder) in lines[0] and f"lmjax sweep --config {folder}/config.py:" in lines[0]
    assert captured.out == ""
    if make == "wrong_arg":
        assert "cpu" in lines[0]  # names the args that do exist


def test_public_names():
    import lmjax.analysis
    from lmjax.analysis import report, runs

    assert lmjax.analysis.collect is runs.collect and lmjax.analysis.curves is runs.curves
    assert lmjax.analysis.write_report is report.write_report


def test_cli_help_and_bad_flags(capsys):
    assert main(["--help"]) == 0
    assert "usage: lmjax report experiments/NAME" in capsys.readouterr().out
    for argv in (["--bootstrap", "-1", "x"], ["--nope", "x"], [], ["a", "b"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), (argv, err)


# ---------------------------------------------------------------------------------------------
# Stale runs and provenance: a sweep config that expands, and result.json files that carry its
# config hashes (or, for one run, an older config's)

SWEEP_PY = """
from lmjax.config import base_config
from lmjax.sweeps import zip_


def get_config(arg=None):
    c = base_config()
    c.train.update(batch_size=8, seq_len=64)
    return c


def get_sweep(arg=None):
    return zip_(num_layers=[2, 4, 4, 6], width=[64, 128, 256, 384], steps=[100, 200, 300, 400])
"""
STALE_HASH = "feedfacefeedface"
PROVENANCE = {"code": {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": True},
              "versions": {"python": "3.12.3", "jax": "0.4.38", "jaxlib": "0.4.38", "flax": "0.10.2",
                           "optax": "0.2.4", "orbax-checkpoint": "0.11.0"},
              "host": {"cpu": {"model": "Test CPU 9000", "vector_extensions": ["avx2"], "cores": 2},
                       "platform": "cpu", "device_kind": "cpu", "device_count": 1}}


@pytest.fixture(scope="module")
def stale_report(tmp_path_factory):
    from lmjax.analysis.report import write_report
    from lmjax.sweeps.spec import expand

    exp = tmp_path_factory.mktemp("stale") / "experiments" / "sizes"
    exp.mkdir(parents=True)
    (exp / "config.py").write_text(SWEEP_PY)
    sweep = expand(exp / "config.py", "cpu")
    assert len(sweep) == 4
    runs = exp / "runs" / "cpu"
    for i, run in enumerate(sweep):
        layers, width, steps = SIZES[i]
        wd = write_run(runs, run.name, attention="mha", layers=layers, width=width, steps=steps, law=TRUE["mha"])
        result = json.loads((wd / "result.json").read_text())
        # The largest run's result was written for an older version of the sweep's config.
        result["config_hash"] = STALE_HASH if i == len(sweep) - 1 else run.config_hash
        (wd / "result.json").write_text(json.dumps(result))
        if i:  # the first run's run.json predates provenance
            info = json.loads((wd / "run.json").read_text())
            (wd / "run.json").write_text(json.dumps({**info, **PROVENANCE}))
    # A run the sweep no longer declares: no expected hash, so its result counts as done.
    write_run(runs, "retired_L2_W96", attention="mha", layers=2, width=96, steps=100, law=TRUE["mha"])
    res = write_report(exp, bootstrap_n=20)
    return exp, sweep, res


def test_stale_run_is_marked_and_left_out_of_the_fits(stale_report):
    exp, sweep, res = stale_report
    stale, current = sweep[-1].name, [r.name for r in sweep[:-1]]
    out = res["out"]
    assert res["notes"] == []
    rows = {r["run"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert rows[stale]["status"] == "stale"
    assert all(rows[name]["status"] == "done" for name in current)
    assert rows["retired_L2_W96"]["status"] == "done"
    table = {line.split("|")[1].strip(): line.split("|")[-2].strip()
             for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")}
    assert table[stale] == "stale" and table[current[0]] == "done"
    fitted = json.loads((out / "fits.json").read_text())["variants"]["mha"]
    assert stale not in fitted["runs"] and fitted["n"] == 4
    assert sorted(fitted["runs"]) == sorted(current + ["retired_L2_W96"])
    cv = res["curves"]
    assert set(cv.loc[cv["run"] == stale, "status"]) == {"stale"}


def test_provenance_columns_and_produced_by(stale_report):
    exp, sweep, res = stale_report
    out = res["out"]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    from lmjax.analysis.runs import PROVENANCE_COLUMNS, RESULT_COLUMNS

    assert list(rows[0].keys()) == RESULT_COLUMNS + PROVENANCE_COLUMNS
    by_run = {r["run"]: r for r in rows}
    assert by_run[sweep[1].name]["code_commit"] == PROVENANCE["code"]["commit"] + "+dirty"
    assert by_run[sweep[1].name]["host"] == "Test CPU 9000 / cpu"
    assert by_run[sweep[0].name]["code_commit"] == "" and by_run[sweep[0].name]["host"] == ""
    md = (out / "results.md").read_text()
    table, _, produced = md.partition("\nProduced by:\n\n")
    assert table.count("\n| ") >= 5
    lines = produced.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("- commit 0123456789ab+dirty, Test CPU 9000 / cpu, jax 0.4.38: ")
    assert set(lines[0].split(": ", 1)[1].split(", ")) == {r.name for r in sweep[1:]}
    assert lines[1].startswith("- not recorded") and lines[1].endswith(
        ": " + ", ".join(sorted([sweep[0].name, "retired_L2_W96"], key=lambda n: float(by_run[n]["params"]))))


# ---------------------------------------------------------------------------------------------
# Runs of several seeds (config.train.replicas)


def test_bootstrap_with_seed_noise_widens_the_interval():
    C = np.logspace(12, 16, 6)
    L = PowerLaw(0.0, 30.0, 0.12)(C)  # a pure power law: the E=0 fit goes through every point
    rng = np.random.default_rng(0)
    # Three seeds per point, 3% apart, centred on the law: the means are the law itself.
    seeds = [list(l * (1 + 0.03 * (x - x.mean()) / x.std())) for l, x in
             ((l, rng.standard_normal(3)) for l in L)]
    np.testing.assert_allclose([np.mean(s) for s in seeds], L)
    plain = bootstrap(C, L, n=300, seed=0, E=0.0)
    noisy_iv = bootstrap(C, L, n=300, seed=0, E=0.0, seeds=seeds)
    width = lambda iv: iv["alpha"][1] - iv["alpha"][0]  # noqa: E731
    assert width(plain) < 1e-6 < 0.005 < width(noisy_iv)  # exact points: no spread without seeds
    assert dict(noisy_iv) == dict(bootstrap(C, L, n=300, seed=0, E=0.0, seeds=seeds))
    # Runs of one seed (None, or a single value) resample as before.
    assert dict(bootstrap(C, L, n=50, seed=1, seeds=[None] * C.size)) == dict(bootstrap(C, L, n=50, seed=1))


def test_bootstrap_with_evaluation_noise_widens_the_interval():
    C = np.logspace(12, 16, 6)
    L = PowerLaw(0.0, 30.0, 0.12)(C)
    plain = bootstrap(C, L, n=300, seed=0, E=0.0)
    width = lambda iv: iv["alpha"][1] - iv["alpha"][0]  # noqa: E731
    small, large = (bootstrap(C, L, n=300, seed=0, E=0.0, se=[se] * C.size) for se in (0.003, 0.03))
    assert width(plain) < 1e-6 < width(small) < width(large)
    assert 0.005 < width(large)
    # nan or None (a run that recorded no standard error) adds nothing
    assert dict(bootstrap(C, L, n=50, seed=1, se=[None] * C.size)) == dict(bootstrap(C, L, n=50, seed=1))


def test_report_of_seeded_runs(tmp_path):
    from lmjax.analysis.report import write_report

    exp = tmp_path / "experiments" / "seeded"
    runs = exp / "runs" / "cpu"
    exp.mkdir(parents=True)
    for layers, width, steps in SIZES:
        wd = write_run(runs, f"mha_L{layers}_W{width}", attention="mha", layers=layers, width=width,
                       steps=steps, law=TRUE["mha"])
        rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
        mean = rows[-1]["val_loss"]
        rows[-1]["val_loss_replicas"] = [mean - 0.01, mean, mean + 0.01]
        rows[-1].update(val_loss_se=0.002, val_tokens=9_999, val_bytes=12_345)
        (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = write_report(exp, bootstrap_n=100)
    df = out["results"]
    assert list(df["seeds"]) == [3] * 4
    np.testing.assert_allclose(df["val_loss_sd"], 0.01)
    assert "val loss (mean ± sd of seeds)" in out["results_md"] and "± 0.0100" in out["results_md"]
    assert out["fits"]["mha"]["seeds"] == [3] * 4
    assert "within each run, of its seeds" in out["fits_md"]
    # the evaluation's own noise: in the table, and in the bootstrap
    np.testing.assert_allclose(df["val_loss_se"], 0.002)
    assert out["fits"]["mha"]["eval_se"] == [0.002] * 4 and "standard error" in out["fits_md"]
    assert "| 0.0020    | 12.3k " in out["results_md"]
    assert "val_loss_seeds" in (exp / "report" / "results.csv").read_text().splitlines()[0]


def test_compare_counts_seed_and_evaluation_noise():
    import pandas as pd

    from lmjax.analysis.compare import tables

    df = pd.DataFrame([
        dict(run="a_size-S", variant="mha", val_loss=2.00, val_loss_sd=0.03, seeds=3, val_loss_se=0.004,
             params_non_embedding=10, size="S"),
        dict(run="b_size-S", variant="mqa", val_loss=2.05, val_loss_sd=0.03, seeds=3, val_loss_se=0.004,
             params_non_embedding=10, size="S"),
        dict(run="c_size-S", variant="gqa", val_loss=2.20, val_loss_sd=0.0, seeds=3, val_loss_se=0.004,
             params_non_embedding=10, size="S"),
    ])
    text = tables(df, "mha")
    # +0.05 / sqrt(2 * 0.03^2 / 3 + 2 * 0.004^2) = 2.0: within the noise, not bold
    assert "| +0.050 (2.0) |" in text.replace("| **", "| ").split("\n\n")[1] and "**+0.050" not in text
    assert "**+0.200 (11.0)**" in text  # 0.2 / sqrt(0.03^2 / 3 + 2 * 0.004^2)
    assert "| 2.0500 ± 0.030 [0.0040] |" in text


def test_plot_colours_are_distinct_up_to_twenty_variants():
    from lmjax.analysis.plots import _colors

    for n in (3, 10, 14, 20):
        colors = _colors([f"v{i}" for i in range(n)])
        assert len(set(colors.values())) == n
