"""The benchmark harness runs end to end, and the GPU benchmark config compiles ahead of time."""

import importlib.util
import itertools
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest

from lmjax import config as config_lib
from lmjax.errors import ConfigError
from lmjax.training import sharding
from lmjax.training.steps import make_setup, mesh_context

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `benchmarks` is a folder of the checkout, not an installed package
    sys.path.insert(0, str(REPO))
from benchmarks import cli, harness, records  # noqa: E402


def load_config_file(path: Path, arg=None):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_harness_smoke(tmp_path):
    """End to end on a tiny model, the optional measurements included: the data iterator on
    tinyshakespeare (a small corpus, so the per-session token cache builds in about a second)
    and one round of checkpointing every 3 steps. Figures are checked for sanity, never speed."""
    results_md = tmp_path / "RESULTS.md"
    rec = harness.main([
        "--config", str(REPO / "configs" / "default.py"),
        "--config.model.num_layers=2", "--config.model.width=64",
        "--config.train.seq_len=32", "--config.train.batch_size=8",
        "--config.data.corpus=tinyshakespeare",
        "--steps", "3", "--warmup", "1", "--sample_tokens", "8",
        "--checkpoint_every", "3", "--checkpoint_rounds", "1",
        "--num_devices", "1", "--no_append", "--out", str(tmp_path),
        "--results_md", str(results_md),
    ])
    files = list(tmp_path.glob("*-default.json"))
    assert len(files) == 1 and str(files[0]) == rec["json_path"]
    saved = json.loads(files[0].read_text())
    f = saved["figures"]
    assert f["tokens_per_s"] > 0
    assert math.isfinite(f["step_time_s"]["median"]) and f["step_time_s"]["median"] > 0
    assert f["time_to_first_step_s"] > 0 and math.isfinite(f["final_loss"])
    assert f["tokens_per_step"] == 8 * 32 and f["params"] > 0
    assert f["attention_kernel"] == "einsum"  # what config.model.attention_impl='auto' is on CPU
    assert f["sampling"]["1"]["tokens_per_s"] > 0 and f["sampling"]["8"]["tokens_per_s"] > 0
    assert saved["config"]["model"]["num_layers"] == 2 and saved["device"]["count"] == 1
    assert saved["overrides"][0] == "--config.model.num_layers=2"
    # Provenance: the CPU by name, its vector extensions and cores; the code and the versions.
    cpu = saved["host"]["cpu"]
    assert cpu["model"] and isinstance(cpu["vector_extensions"], list) and cpu["cores"] >= 1
    assert set(saved["code"]) == {"commit", "dirty"} and saved["versions"]["jax"] == jax.__version__
    assert saved["host"]["device_count"] == 1 and "load_avg_1m_end" in saved["host"]
    # The input pipeline on the real corpus (byte tokens of tinyshakespeare).
    assert _positive(f["data_tokens_per_s"]) and _positive(f["data_to_train_ratio"])
    d = f["data_iterator"]
    assert d["batches"] >= 1 and _positive(d["seconds"]) and d["tokenizer"] == "byte"
    assert _positive(d["train_batch_s_median"]) and _positive(d["transfer_s_median"])
    assert f["data_prepare_s"] >= 0 and d["train_tokens"] > 32
    # Checkpointing: one round of 3 steps with a save against 3 without.
    c = f["checkpoint"]
    assert (c["every"], c["rounds"], len(c["save_blocking_s"])) == (3, 1, 1)
    assert all(_positive(x) for x in (c["seconds_with"], c["seconds_without"], c["first_save_s"],
                                       *c["save_blocking_s"], c["checkpoint_bytes"]))
    # The overhead is the timed rounds' arithmetic (with saves against without), whatever its sign.
    assert (c["seconds_with"], c["seconds_without"]) == (sum(c["round_seconds_with"]),
                                                         sum(c["round_seconds_without"]))
    assert f["checkpoint_overhead"] == pytest.approx(c["seconds_with"] / c["seconds_without"] - 1)
    assert not results_md.exists()  # --no_append
    # The row format renders from the record, the new figures in the last two cells.
    row = records.results_row(saved)
    assert row.count("|") == records.RESULTS_HEADER.rstrip().splitlines()[-1].count("|")
    assert row.endswith("x | " + f"{f['checkpoint_overhead']:+.1%} (every 3) |")
    assert f"| 1 x cpu ({cpu['model']}) |" in row
    records.append_row(results_md, row)
    text = results_md.read_text()
    assert text.startswith("# Benchmark results") and "`default` `--config.model.num_layers=2`" in text


def test_harness_flags():
    config = str(REPO / "configs" / "default.py")
    fv = harness.parse(["--config", config])
    assert (fv.data_iterator, fv.checkpoint_every, fv.checkpoint_rounds) == (True, 0, 3)
    assert not harness.parse(["--config", config, "--nodata_iterator"]).data_iterator
    for bad in (["--checkpoint_every", "-1"], ["--checkpoint_every", "5", "--checkpoint_rounds", "0"]):
        with pytest.raises(ConfigError):
            harness.parse(["--config", config, *bad])


OLD_TABLE = """\
# Benchmark results

Columns:
- **date**: UTC time of the run.
- **sample tok/s**: at batch 1 / batch 8.

| date | device | config | params | tokens/step | step ms | tokens/s | MFU | first step s | peak mem | sample tok/s (B=1 / B=8) |
|---|---|---|---|---|---|---|---|---|---|---|
| 2026-11-23 02:26 | 1 x cpu | `shakespeare_char` | 0.82M | 768 | 51.0 | 15,060 | 40.1% | 5.3 | - | 4,942 / 10,605 (n=56) |

**Reference**: a note below the table.
"""


def test_append_row_widens_an_older_table(tmp_path):
    """A RESULTS.md written before the data/checkpoint columns gets today's header row and the
    notes on the new columns; its old rows stay as they were (markdown shows their missing cells
    empty), new rows go into the same table, and a record without the new figures shows '-'."""
    path = tmp_path / "RESULTS.md"
    path.write_text(OLD_TABLE)
    new_row = "| 2026-12-01 00:00 | 1 x cpu | `default` | 1 | 2 | 3 | 4 | 5 | 6 | - | - | 900x | +1.0% (every 100) |"
    records.append_row(path, new_row)
    records.append_row(path, new_row)  # a second append neither re-widens nor repeats the notes
    lines = path.read_text().splitlines()
    new_header, new_rule = records.RESULTS_HEADER.rstrip().splitlines()[-2:]
    h = lines.index(new_header)
    assert lines[h + 1] == new_rule
    assert lines[h + 2] == OLD_TABLE.splitlines()[-3]  # the old row, untouched
    assert lines[h + 3] == lines[h + 4] == new_row
    assert lines[h + 5:] == ["", "**Reference**: a note below the table."]
    notes = records.NEW_COLUMN_NOTES.rstrip().splitlines()
    assert lines[h - 1] == "" and lines[h - 1 - len(notes):h - 1] == notes
    assert lines[h - 2 - len(notes)] == "- **sample tok/s**: at batch 1 / batch 8."
    assert sum(line.startswith("| date |") for line in lines) == 1
    # Old records (no data/checkpoint figures) still render, with '-' in the new cells.
    rec = {"date": "2026-11-23T02:26:00Z", "device": {"count": 1, "kind": "cpu"},
           "config_name": "default", "overrides": [],
           "figures": {"mfu": None, "sampling": {}, "params": 1e6, "tokens_per_step": 256,
                       "step_time_s": {"median": 0.01}, "tokens_per_s": 25600.0,
                       "time_to_first_step_s": 1.0, "peak_memory_bytes": None}}
    assert records.results_row(rec).endswith("| - | - | - |")


def test_gpt2_small_compiles_ahead_of_time():
    """configs/gpt2_small.py, unshrunk (12 layers, width 768, batch 16 x 1024 tokens, vocabulary
    50304, bfloat16 compute), traces, lowers and compiles from abstract inputs alone - no
    parameter or batch is allocated - on a 1-device CPU mesh. About 6 s on 2 cores."""
    config = load_config_file(REPO / "configs" / "gpt2_small.py")
    config.mesh.data = config.mesh.fsdp = config.mesh.tensor = 1
    config = config_lib.resolve(config)
    assert (config.model.num_layers, config.model.width, config.train.batch_size) == (12, 768, 16)
    assert (config.train.seq_len, config.data.vocab_size, config.model.dtype) == (1024, 50304, "bfloat16")

    t0 = time.perf_counter()
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    setup = make_setup(config, vocab_size=config.data.vocab_size, mesh=mesh)  # eval_shape only
    step = setup.jit_train_step
    with mesh_context(mesh):
        lowered = step.lower(setup.abstract_state, harness.abstract_batch(setup))
        t_lower = time.perf_counter()
        compiled = lowered.compile()
    t_compile = time.perf_counter()
    print(f"gpt2_small: lower {t_lower - t0:.1f} s, compile {t_compile - t_lower:.1f} s")

    assert "bf16" in lowered.as_text()  # bfloat16 compute made it into the program
    state_out, metrics_out = compiled.out_info
    assert metrics_out["loss"].shape == () and metrics_out["loss"].dtype == jnp.float32
    params_out = jax.tree.leaves(state_out.params)
    assert any(x.shape == (50304, 768) for x in params_out)  # the (tied) embedding
    assert all(x.dtype == jnp.float32 for x in params_out)  # parameters stay float32


def test_speedrun_smoke(tmp_path):
    """The speedrun script runs `lmjax train` as a subprocess, reads its final validation loss (on
    the config's val_part), scores the other half with `lmjax eval` (--eval_parts) and appends one
    row per record (no timing asserted). 3 steps cannot reach a loss of 2 (a character model
    starts near ln 65 = 4.2): the record and its row say the target was missed."""
    from benchmarks import speedrun

    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\nintro\n")
    rec = speedrun.main([
        "--config", "configs/speedrun_cpu.py", "--repeats", "1", "--label", "smoke",
        "--results_md", str(md), "--out", str(tmp_path / "out"), "--target", "2",
        "--config.train.steps=3", "--config.model.width=32", "--config.train.batch_size=8",
        "--config.data.val_part=tune", "--eval_parts=test"])
    (run,) = rec["runs"]
    assert run["steps"] == 3 and 2 < run["val_loss"] < 10 and rec["median_wall_s"] == run["wall_s"] > 0
    assert rec["target"] == 2 and rec["target_met"] is False and rec["val_part"] == "tune"
    assert 2 < run["val_loss_by_part"]["test"] < 10 and run["val_loss_by_part"]["test"] != run["val_loss"]
    text = md.read_text()
    assert records.SPEEDRUN.title in text and text.count("| smoke |") == 1
    (row,) = [line for line in text.splitlines() if "| smoke |" in line]
    assert f"| {run['val_loss']:.3f} (tune); test {run['val_loss_by_part']['test']:.3f} |" in row
    assert row.endswith("| no |")
    (record,) = (tmp_path / "out").iterdir()
    speedrun.main(["--append_records", str(record), "--label", "again", "--results_md", str(md)])
    rows = [line for line in md.read_text().splitlines() if line.startswith("| 20")]
    assert [r.split(" | ")[2] for r in rows] == ["smoke", "again"]


def test_second_start_smoke(tmp_path, monkeypatch):
    """Starts `lmjax train` twice (the first fills a fresh cache), stops each at its first step,
    and appends one row (no timing asserted)."""
    from benchmarks import second_start

    monkeypatch.setenv("LMJAX_CACHE_DIR", str(tmp_path / "cache"))
    md = tmp_path / "RESULTS.md"
    rec = second_start.main([
        "--config", "configs/speedrun_cpu.py", "--repeats", "1", "--label", "smoke",
        "--results_md", str(md), "--out", str(tmp_path / "out"), "--config.model.width=32",
        "--config.train.batch_size=8"])
    (start,) = rec["starts"]
    assert 0 < start["time_to_first_step_s"] < start["launch_to_first_step_s"]  # train() is inside
    assert any((tmp_path / "cache" / "xla").glob("jit_train_step-*"))
    assert records.SECOND_START.title in md.read_text() and md.read_text().count("| smoke |") == 1


def test_vs_nanogpt_rounds_and_row(tmp_path, torch_python):
    """The same-hour comparison on a tiny lmjax shape against nanogpt_reference.py itself under
    PyTorch (nanoGPT's baby shape, one step): a real harness run and two PyTorch runs per round,
    the second under lmjax's GLIBC_TUNABLES and the first without; ratio = theirs / ours, one row
    in its own section (no timing asserted)."""
    from benchmarks import vs_nanogpt

    python, tunables = torch_python
    tiny = ["--config", "configs/shakespeare_char.py", "--config.model.num_layers=1",
            "--config.model.width=32", "--config.train.batch_size=8", "--config.train.seq_len=16",
            "--steps", "3", "--warmup", "1"]
    reference = ["--shape", "baby", "--steps", "1", "--warmup", "0"]
    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n")
    rec = vs_nanogpt.main(["--rounds", "1", "--torch_python", str(python), "--torch_hugepages",
                           "--results_md", str(md), "--out", str(tmp_path / "out")],
                          shapes={"baby": (tiny, reference)})
    (r,) = rec["rounds"]
    assert tunables.read_text().splitlines() == ["", vs_nanogpt.TORCH_TUNABLES]
    assert all(_positive(r[k]) for k in ("lmjax_ms", "torch_ms", "torch_hugepages_ms"))
    assert rec["median_ms"] == r  # one round
    assert rec["ratio"] == pytest.approx(r["torch_ms"] / r["lmjax_ms"])
    assert rec["ratio_vs_torch_hugepages"] == pytest.approx(r["torch_hugepages_ms"] / r["lmjax_ms"])
    text = md.read_text()
    assert records.VS_NANOGPT.title in text and text.count("| baby |") == 1
    assert f"**{rec['ratio']:.2f}x**" in text and len(list((tmp_path / "out").iterdir())) == 1


def test_attention_dots_rounds_and_gflops(tmp_path):
    """The batched-dot micro-benchmark runs each side in a fresh process per round, PyTorch's
    under this interpreter; GFLOP/s = 2*B*H*T*T*D / time; the record and a row are written."""
    torch = pytest.importorskip("torch")
    from benchmarks import attention_dots

    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n")
    rec = attention_dots.main(["--calls", "3", "--rounds", "1", "--torch_python", sys.executable,
                               "--out", str(tmp_path), "--results_md", str(md)])
    (r,) = rec["rounds"]
    assert r["torch"]["torch"] == torch.__version__ and "glibc_tunables" in r["jax"]
    flop = 2 * 12 * 4 * 64 * 64 * 32  # the baby shape's (B, H, T, D)
    for side, dot in itertools.product(("jax", "torch"), ("qk", "pv")):
        us = rec["median_us"][f"{side}_{dot}_us"]
        assert us == round(r[side][f"{dot}_us"], 1) and us > 0
        assert rec["gflops"][f"{side}_{dot}"] == round(flop / us / 1e3, 1)
    assert len(list(tmp_path.glob("*-attention_dots-baby.json"))) == 1
    text = md.read_text()
    assert records.ATTENTION_DOTS.title in text and text.count("| baby (12, 4, 64, 32) |") == 1
    m = rec["median_us"]
    assert f"| {m['torch_qk_us']:.1f} / {m['torch_pv_us']:.1f} |" in text


def test_benchmark_flags(tmp_path):
    """Every benchmark parses absl flags in a FlagValues of its own; --config.KEY=VAL overrides
    are checked (as `lmjax train` checks them) before anything runs, and a bad flag, value or
    stray argument is a ConfigError (exit status 2 under `cli.run`)."""
    from benchmarks import attention_dots, second_start, speedrun, vs_nanogpt

    assert cli.config_overrides(["--config", "c.py", "--config.a=1", "--config.b", "2",
                                 "--config.flag", "--steps", "3"]) == [
        "--config.a=1", "--config.b=2", "--config.flag"]
    fv = cli.parse("x", "", ["--config", "configs/gpt2_small.py:b32"], lambda fv: None,
                   config="optional")
    assert cli.config_name(fv) == ("gpt2_small", "gpt2_small:b32")
    out = ["--out", str(tmp_path), "--no_append"]
    for main, argv in [
        (speedrun.main, ["--config", "configs/speedrun_cpu.py", "--config.train.stepz=3"]),
        (speedrun.main, ["--repeats", "1"]),  # no config
        (speedrun.main, ["--config", "configs/speedrun_cpu.py", "--eval_parts=tune,train", "--repeats", "1",
                         "--config.train.steps=1"]),  # refused before it runs (a run fails after)
        (second_start.main, ["--repeats", "1"]),
        (attention_dots.main, ["--shape", "huge"]),
        (attention_dots.main, ["--config.train.steps=3"]),  # no config to override
        (attention_dots.main, ["baby"]),
        (vs_nanogpt.main, ["--torch_python", str(tmp_path / "none")]),
    ]:
        with pytest.raises(ConfigError):
            main(argv + out)
    assert not list(tmp_path.iterdir())


def test_nanogpt_trainpy_differences_two_runs_and_writes_a_row(tmp_path, monkeypatch, torch_python):
    """nanoGPT's train.py, run from a copy of a checkout, timed by differencing two iteration
    counts, against the rewrite (nanogpt_reference.py under PyTorch, 1 + 1 steps). No checkout here:
    a stand-in plays train.py and prepare.py. Its train.py logs `time {i}ms` at iteration i (5 s
    at iteration 0, which is not a step) and moves a clock the benchmark reads instead of the
    wall clock by 300 ms of start-up plus 2 ms per iteration, so the figures are known exactly:
    2 ms by differencing, a logged median of 225.5 ms (iterations 1..450 of the longer run)."""
    from benchmarks import nanogpt_trainpy

    python, _ = torch_python
    checkout = tmp_path / "nanoGPT"
    for name in ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py",
                 "data/shakespeare_char/prepare.py"):
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text("")
    clock = tmp_path / "clock_ms"
    clock.write_text("0")
    monkeypatch.setattr(nanogpt_trainpy, "time", SimpleNamespace(
        perf_counter=lambda: int(clock.read_text()) / 1e3))
    stand_in = tmp_path / "stand_in"
    stand_in.write_text(f"""#!/bin/sh
case "$1" in
  train.py)
    n=$(echo "$@" | sed -n 's/.*--max_iters=\\([0-9]*\\).*/\\1/p')
    echo "iter 0: loss 1.0000, time 5000.00ms, mfu 1.00%"
    i=1; while [ "$i" -le "$n" ]; do echo "iter $i: loss 1.0000, time $i.00ms, mfu 1.00%"; i=$((i + 1)); done
    echo $(($(cat {clock}) + 300 + 2 * n)) > {clock} ;;
  data/shakespeare_char/prepare.py) test -f data/shakespeare_char/input.txt ;;
  *) exec {python} "$@" --warmup 1 ;;
esac
""")
    stand_in.chmod(0o755)
    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n")
    rec = nanogpt_trainpy.main(["--nanogpt", str(checkout), "--torch_python", str(stand_in), "--iters", "450,50",
                                "--rounds", "1", "--reference_steps", "1", "--results_md", str(md),
                                "--out", str(tmp_path / "out")])
    (r,) = rec["rounds"]
    assert rec["iters"] == [50, 450] and r["wall_s"] == pytest.approx([0.4, 1.2])
    assert r["train_py_ms"] == pytest.approx(2.0) and r["train_py_logged_ms"] == 225.5
    assert r["rewrite_ms"] > 0 and rec["agreement"] == pytest.approx(r["rewrite_ms"] / 2.0)
    text = md.read_text()
    assert records.NANOGPT_TRAINPY.title in text and f"**{rec['agreement']:.2f}**" in text
    assert not (checkout / "data" / "shakespeare_char" / "input.txt").exists()  # the checkout is untouched
