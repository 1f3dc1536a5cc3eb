"""Sweeps: expansion and naming, the dry run, and skip / resume / failure isolation with tiny real
runs (`lmjax train` subprocesses, one CPU device each), parallel runs, and the SLURM submission
path through submitit's local executor."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax  # noqa: F401  (imported before the compile-cache variables below are set)
import pytest

from lmjax import config as config_lib
from lmjax.formatting import sci, si
from lmjax.sweeps import SweepError, chain, derive, expand, product, run_name, zip_
from lmjax.sweeps import cli, display, launch, runner, slots, slurm, trainlog
from lmjax.sweeps.budget import estimate
from lmjax.sweeps.spec import SweepRun
from lmjax.workdir import Workdir

REPO = Path(__file__).resolve().parents[1]
ATTENTION_VARIANTS = REPO / "experiments" / "attention_variants" / "config.py"

TINY_CONFIG = '''
from pathlib import Path

from lmjax.config import base_config
from lmjax.sweeps import Point, chain, product

HERE = Path(__file__).resolve().parent


def get_config(arg=None):
    c = base_config()
    c.data.corpus = str(HERE / "corpus.txt")
    c.data.tokenizer = "byte"
    c.model.update(num_layers=2, num_heads=2, width=32)
    c.train.update(steps=6, batch_size=4, seq_len=16, warmup_steps=2, log_every=1,
                   eval_every=100000, eval_batches=1, checkpoint_every=100000)
    c.sample.prompt = ""
    return c


def get_sweep(arg=None):
    if arg == "basic":  # two good runs and one that fails at run time (its corpus is missing)
        return chain(product({"train.seed": [0, 1]}),
                     product(corpus={"missing": str(HERE / "missing.txt")}))
    if arg == "long":  # a run long enough to interrupt, then a short one
        return [Point({"train.steps": 3000, "train.log_every": 20}, labels=[("run", "long")]),
                Point({"train.seed": 1}, labels=[("run", "short")])]
    if arg == "slurm":
        return product({"train.seed": [3, 4]})
    if arg == "dup":
        return chain(product({"train.seed": [0]}), product({"train.seed": [0]}))
    if arg == "typo":
        return [{"model.widht": 64}]
    if arg == "badvalue":
        return product({"model.num_heads": [3]})  # does not divide width 32
    raise ValueError(arg)
'''


@pytest.fixture(autouse=True)
def _fast_children(monkeypatch, tmp_path_factory):
    """Runs in these tests share a persistent XLA compilation cache (same shapes: ~3x faster
    start). Set for child processes only: JAX in this process was imported above."""
    cache = tmp_path_factory.getbasetemp() / "sweep-jax-cache"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(cache))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


@pytest.fixture
def tiny(tmp_path):
    text = (("First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
             "All:\nSpeak, speak.\n\n") * 200)
    (tmp_path / "corpus.txt").write_text(text)
    (tmp_path / "config.py").write_text(TINY_CONFIG)
    return tmp_path / "config.py"


def by_name(runs):
    return {r.name: r for r in runs}


def headers(run_dir: Path) -> list[str]:
    return trainlog.headers(run_dir / "train.log")


# --- expansion ----------------------------------------------------------------------------------

def test_product_zip_chain_sizes_and_names():
    p = product({"model.attention": ["mha", "mqa"]}, width=[64, 128, 256])
    assert len(p) == 6
    assert p[0] == {"model.attention": "mha", "model.width": 64}
    assert [run_name(x) for x in p[:3]] == ["attention-mha_width-64", "attention-mha_width-128",
                                           "attention-mha_width-256"]
    z = zip_(num_layers=[2, 4], width=[64, 128])
    assert z == [{"model.num_layers": 2, "model.width": 64}, {"model.num_layers": 4, "model.width": 128}]
    nested = product({"train.lr": [1e-3, 3e-3]}, zip_(num_layers=[2, 4], width=[64, 128]))
    assert len(nested) == 4
    assert run_name(nested[-1]) == "lr-0.003_num_layers-4_width-128"
    both = chain(p, z)
    assert len(both) == 8 and both[6] == z[0]
    # a plain dict is named by its items; values are made filesystem-safe
    assert run_name({"data.corpus": "/data/a b.txt", "train.seed": 1}) == "corpus-data-a-b.txt_seed-1"
    assert run_name({}) == "base"
    assert run_name({"model.tie_embeddings": False, "train.lr": 0.5}) == "tie_embeddings-false_lr-0.5"
    with pytest.raises(SweepError, match="equal length"):
        zip_(num_layers=[2, 4], width=[64])
    with pytest.raises(SweepError, match="set by two axes"):
        product(width=[64], size={"a": {"model.width": 128}})


def test_bundles_derive_and_key_errors():
    sizes = product(size={"s": {"model.num_layers": 2, "model.width": 64},
                          "m": {"model.num_layers": 4, "model.width": 128}})
    assert [run_name(x) for x in sizes] == ["size-s", "size-m"]
    d = derive(sizes, lambda p: {"train.steps": p["model.width"] * 10})
    assert d[1] == {"model.num_layers": 4, "model.width": 128, "train.steps": 1280}
    assert run_name(d[1]) == "size-m"  # derived keys stay out of names
    with pytest.raises(SweepError, match=r"did you mean 'config\.model\.width'"):
        product({"model.widht": [64]})
    with pytest.raises(SweepError, match="did you mean 'model.width'"):
        product(widht=[64])
    with pytest.raises(SweepError, match="ambiguous"):
        product(seed=[0, 1])
    assert product(train__seed=[0])[0] == {"train.seed": 0}
    with pytest.raises(SweepError, match="bool, int, float or str"):
        product({"train.steps": [[1, 2]]})


def test_expand_rejects_duplicates_typos_and_bad_values(tiny):
    with pytest.raises(SweepError, match="two runs of the sweep are both named 'seed-0'"):
        expand(tiny, "dup")
    with pytest.raises(SweepError, match=r"unknown config key 'config\.model\.widht'.*'config\.model\.width'"):
        expand(tiny, "typo")
    with pytest.raises(SweepError, match="run 'num_heads-3'.*does not divide"):
        expand(tiny, "badvalue")
    runs = expand(tiny, "basic")
    assert [r.name for r in runs] == ["seed-0", "seed-1", "corpus-missing"]
    assert runs[0].workdir == tiny.parent / "runs" / "basic" / "seed-0"
    assert runs[1].config.train.seed == 1 and runs[1].steps == 6
    assert runs[0].config_hash != runs[1].config_hash


def test_a_changed_schema_default_makes_finished_runs_stale(tiny, monkeypatch):
    """The hash covers every resolved key: a run finished under an older default of
    model.norm_eps is stale once the default changes, though no sweep file changed. A key added
    to the schema since (missing from the run's config.json) keeps it done."""
    import dataclasses

    field = {f.name: f for f in dataclasses.fields(config_lib.ModelConfig)}["norm_eps"]
    monkeypatch.setattr(field, "default", 1e-5)  # the schema of an earlier version
    (run, *_) = expand(tiny, "basic")
    assert run.config.model.norm_eps == 1e-5
    wd = Workdir(run.workdir).create()  # finished, as runner.finish_run and `lmjax train` leave it
    wd.write_config(run.config.to_dict())
    wd.write_result({"config_hash": run.config_hash, "step": run.steps})
    assert run.status() == "done"
    monkeypatch.undo()
    (now, *_) = expand(tiny, "basic")
    assert now.name == run.name and now.config.model.norm_eps == 1e-6
    assert now.status() == "stale"
    # config.json of a run trained before model.attention_impl existed, result.json of an old hash
    saved = now.config.to_dict()
    del saved["model"]["attention_impl"]
    wd.write_config(saved)
    wd.write_result({"config_hash": "0123456789abcdef", "step": now.steps})
    assert now.status() == "done"


def test_cli_bad_input_is_one_error_line(tiny, tmp_path, capsys):
    (tmp_path / "nosweep.py").write_text("from lmjax.config import base_config\n"
                                         "def get_config(arg=None):\n    return base_config()\n")
    cases = [
        ([f"--config={tmp_path}/absent.py:x"], "does not exist"),
        ([f"--config={tmp_path}/nosweep.py:x"], "defines no get_sweep"),
        ([f"--config={tiny}:typo"], "did you mean 'config.model.width'"),
        ([f"--config={tiny}:dup"], "both named 'seed-0'"),
        ([f"--config={tiny}:basic", "--only=nomatch"], "matches none"),
        ([f"--config={tiny}:basic", "--parallel=0"], "parallel"),
        ([], "--config is required"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and message in err[0], (argv, err)


def test_attention_variants_cpu_expands_to_20_budgeted_runs():
    runs = expand(ATTENTION_VARIANTS, "cpu")
    assert len(runs) >= 20
    names = [r.name for r in runs]
    assert len(set(names)) == len(names)
    for variant in ("mha", "mqa", "gqa", "window", "linear"):
        assert sum(n.startswith(f"attention-{variant}_") for n in names) >= 4
    folder = ATTENTION_VARIANTS.parent / "runs" / "cpu"
    for r in runs:
        assert r.workdir == folder / r.name
        config_lib.resolve(r.config)  # every run's config is valid
        e = estimate(r.config)
        per_step = r.config.train.batch_size * r.config.train.seq_len
        # fixed budget: 20 tokens per non-embedding parameter, rounded up to whole steps, for
        # each of the run's 3 seeds (estimate counts all replicas' tokens)
        assert r.config.train.replicas == 3
        tokens = e["tokens"] // 3
        assert 20 * e["params_non_embedding"] <= tokens < 20 * e["params_non_embedding"] + per_step
    gqa = by_name(runs)["attention-gqa_size-L2-W64"].config.model
    assert (gqa.attention, gqa.num_kv_heads) == ("gqa", 2)
    window = by_name(runs)["attention-window_size-L2-W64"].config.model
    assert (window.attention, window.window) == ("mha", 32)


def test_dry_run_lists_runs_with_params_flops_and_time(capsys):
    assert cli.main([f"--config={ATTENTION_VARIANTS}:cpu", "--dry-run"]) == 0
    out = capsys.readouterr().out
    runs = expand(ATTENTION_VARIANTS, "cpu")
    lines = out.splitlines()
    for r in runs:
        row = next(ln for ln in lines if ln.startswith(r.name + " "))
        e = estimate(r.config)
        assert si(e["params"], 4) in row and sci(e["flops"]) in row and f" {r.steps} " in row
        assert re.search(r"(\d+\.\d s|\d+m\d\ds|\d+h\d\dm)$", row), row  # estimated time
    assert re.search(rf"^{len(runs)} runs, [\d.e]+ training FLOPs", out, re.M)
    assert "estimated" in out and "assumed MFU" in out and "TOTAL" in out


# --- status, slots --------------------------------------------------------------------------------

def test_status_is_derived_from_the_workdir(tmp_path):
    run = SweepRun(name="r", overrides={}, workdir=tmp_path / "r", config_hash="abc")
    wd = Workdir(run.workdir)
    assert run.status() == "pending"
    wd.create()
    (run.workdir / "metrics.jsonl").write_text('{"step": 3, "loss": 2.5}\n')
    assert run.status() == "partial"  # logged steps, no checkpoint yet: partial too
    assert display.progress(run) == {"step": 3, "loss": 2.5}
    (run.workdir / "checkpoints" / "5").mkdir(parents=True)
    assert run.status() == "partial"
    (run.workdir / "failed.json").write_text("{}")
    assert run.status() == "failed"
    fd = wd.try_lock()
    assert run.status() == "running" and wd.try_lock() is None
    assert run.status(check_lock=False) == "failed"  # the lock is our own
    os.close(fd)
    (run.workdir / "result.json").write_text(json.dumps({"config_hash": "other"}))
    assert run.status() == "stale"
    (run.workdir / "result.json").write_text(json.dumps({"config_hash": "abc"}))
    assert run.status() == "done"
    assert re.search(r"^r +done +3/0 +2\.5 ", runner.status_report([run]), re.M)


def test_slots_split_cpus_and_gpus_and_set_the_child_env(monkeypatch):
    two = slots.make_slots(2, cpus=[0, 1], gpus=[])
    assert [s.cpus for s in two] == [[0], [1]] and [s.threads for s in two] == [1, 1]
    assert slots.make_slots(1, cpus=[0, 1], gpus=[])[0].cpus is None  # one run: not pinned
    four = slots.make_slots(2, cpus=[0, 1, 2, 3], gpus=["0", "1", "2", "3"])
    assert [s.cpus for s in four] == [[0, 1], [2, 3]] and [s.gpus for s in four] == [["0", "1"], ["2", "3"]]
    shared = slots.make_slots(4, cpus=[0, 1, 2, 3], gpus=["0", "1"])
    assert [s.gpus for s in shared] == [["0"], ["1"], ["0"], ["1"]] and shared[0].gpu_share == 2
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_dump_to=/x")
    run = SweepRun(name="r", overrides={}, workdir=Path("/tmp/r"),
                   config=config_lib.resolve(config_lib.base_config()))
    env = slots.child_env(run, two[1])
    assert env["XLA_FLAGS"] == "--xla_dump_to=/x --xla_force_host_platform_device_count=1"
    assert env["OMP_NUM_THREADS"] == "1"
    assert env.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")  # no GPU slice
    env = slots.child_env(run, shared[1])
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and float(env["XLA_PYTHON_CLIENT_MEM_FRACTION"]) == pytest.approx(0.45)


def test_launch_pins_the_run_and_follows_its_parent():
    """`python -m lmjax.sweeps.launch`: the run's process pins itself, then becomes the command."""
    show = [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"]
    assert launch.command(show, cpus=None, parent_pid=None) == show
    cmd = launch.command(show, cpus=[0], parent_pid=os.getpid())
    assert cmd[:3] == [sys.executable, "-m", "lmjax.sweeps.launch"] and cmd[-len(show):] == show
    assert launch.parse(cmd[3:]) == ([0], os.getpid(), show)
    if hasattr(os, "sched_setaffinity"):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert (out.returncode, out.stdout.strip()) == (0, "[0]"), out.stderr
    # a parent that is not ours (the sweep died before the run started): the run never starts
    other = launch.command(show, cpus=None, parent_pid=1 if os.getpid() != 1 else 2)
    assert subprocess.run(other, capture_output=True, timeout=60).returncode == 128 + signal.SIGTERM
    bad = subprocess.run([sys.executable, "-m", "lmjax.sweeps.launch", "--cpus=0"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: no command after --")


# --- real runs ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_parallel_sweep_isolates_failure_then_skips_done_and_retries_failed(tiny):
    runs = expand(tiny, "basic")
    out = io.StringIO()
    result = runner.run_sweep(runs, config_path=tiny, arg="basic", parallel=2, out=out, poll_s=0.05)
    assert dict(result) == {"seed-0": "done", "seed-1": "done", "corpus-missing": "failed"}, out.getvalue()
    assert not result.interrupted
    r0, r1, bad = (r.workdir for r in runs)
    res = [json.loads((w / "result.json").read_text()) for w in (r0, r1)]
    assert [x["step"] for x in res] == [6, 6] and all(x["val_loss"] > 0 for x in res)
    assert res[0]["config_hash"] == runs[0].config_hash
    # the two good runs ran at the same time, each pinned to its own core
    assert max(x["started_unix"] for x in res) < min(x["finished_unix"] for x in res)
    cpus = {re.search(r"\(cpus ([\d,]+)\)", headers(w)[0]).group(1) for w in (r0, r1)}
    assert len(cpus) == min(2, len(slots.available_cpus())), cpus
    failed = json.loads((bad / "failed.json").read_text())
    assert failed["returncode"] == 2 and "missing.txt" in failed["error"] and failed["error"].startswith("error:")
    assert "failed: corpus-missing" in out.getvalue()
    assert cli.main([f"--config={tiny}:basic", "--status"]) == 0

    # again: the done runs are skipped (nothing of theirs touched), the failed one is retried
    before = {w: ((w / "result.json").stat().st_mtime_ns, (w / "train.log").stat().st_size) for w in (r0, r1)}
    out = io.StringIO()
    result = runner.run_sweep(expand(tiny, "basic"), config_path=tiny, arg="basic", out=out, poll_s=0.05)
    assert dict(result) == {"seed-0": "done", "seed-1": "done", "corpus-missing": "failed"}
    assert "2 done (skipped)" in out.getvalue()
    assert before == {w: ((w / "result.json").stat().st_mtime_ns, (w / "train.log").stat().st_size)
                      for w in (r0, r1)}
    assert len(headers(bad)) == 2  # retried once more
    # --noretry_failed leaves it alone
    runner.run_sweep(expand(tiny, "basic"), config_path=tiny, arg="basic", out=io.StringIO(),
                     retry_failed=False)
    assert len(headers(bad)) == 2


def _logged_step(workdir: Path) -> int:
    return display.progress(SweepRun(name="x", overrides={}, workdir=workdir)).get("step", 0)


@pytest.mark.slow
def test_interrupted_sweep_finishes_only_the_missing_runs(tiny):
    cmd = [sys.executable, "-m", "lmjax.sweeps.cli", f"--config={tiny}:long"]
    long_dir, short_dir = (tiny.parent / "runs" / "long" / n for n in ("run-long", "run-short"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while _logged_step(long_dir) < 40 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out
    assert "SIGINT: stopping" in out and "interrupted" in out
    assert Workdir(long_dir).has_checkpoints() and not (long_dir / "result.json").exists()
    assert not (long_dir / "failed.json").exists()
    stopped_at = _logged_step(long_dir)
    assert 40 <= stopped_at < 3000
    assert not (short_dir / "train.log").exists()  # never started

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"run-long: partial -> running\s+resuming", done.stdout)
    log = (long_dir / "train.log").read_text()
    resumed = int(re.search(r"resuming at step (\d+)", log).group(1))
    assert resumed == stopped_at and len(headers(long_dir)) == 2
    assert json.loads((long_dir / "result.json").read_text())["step"] == 3000
    assert json.loads((short_dir / "result.json").read_text())["step"] == 6


@pytest.mark.slow
def test_slurm_submission_with_submitit_local_executor(tiny):
    runs = expand(tiny, "slurm")
    jobs, todo = slurm.submit(runs, config_path=tiny, arg="slurm", executor="local", array=True,
                              timeout_min=10)
    assert len(jobs) == 2 and [r.name for r in todo] == ["seed-3", "seed-4"]
    assert slurm.wait(jobs, todo) == {"seed-3": "done", "seed-4": "done"}
    for r in runs:
        res = json.loads((r.workdir / "result.json").read_text())
        assert res["step"] == 6 and res["config_hash"] == r.config_hash
        assert "job local pid" in headers(r.workdir)[0]
    assert (tiny.parent / "runs" / "slurm" / "_submitit" / "jobs.jsonl").exists()
    # the local runner sees them as done, and a second submission has nothing to do
    assert runner.run_sweep(runs, config_path=tiny, arg="slurm", out=io.StringIO()) == {
        "seed-3": "done", "seed-4": "done"}
    assert slurm.submit(runs, config_path=tiny, arg="slurm", executor="local") == ([], [])


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """sbatch and srun on PATH that run nothing: sbatch keeps the script as <bin>/job.sh and
    answers job 4242. Returns the folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\ncp "$1" "$(dirname "$0")/job.sh"\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_slurm_job_array_script(tiny, fake_sbatch, capsys):
    """The sbatch script submitit writes for the sweep (sbatch and srun faked: nothing runs)."""
    bin_dir = fake_sbatch
    argv = [f"--config={tiny}:slurm", "--slurm", "--slurm_partition=gpu", "--slurm_gpus_per_run=1",
            "--slurm_time=1:30:00", "--slurm_parallelism=1", "--slurm_param=slurm_account=abc"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "seed-3: job 4242_0" in out and "seed-4: job 4242_1" in out
    script = (bin_dir / "job.sh").read_text()
    for line in ("--array=0-1%1", "--partition=gpu", "--gpus-per-node=1", "--time=90", "--account=abc",
                 "--signal=USR2@90"):
        assert f"#SBATCH {line}" in script
    jobs = [json.loads(ln) for ln in (tiny.parent / "runs" / "slurm" / "_submitit" / "jobs.jsonl").read_text().splitlines()]
    assert [(j["run"], j["job_id"]) for j in jobs] == [("seed-3", "4242_0"), ("seed-4", "4242_1")]
    assert cli.main([f"--config={tiny}:slurm", "--slurm", "--noslurm_array"]) == 0  # one job per run
    assert capsys.readouterr().out.count("job 4242") == 2
    assert "--array" not in (bin_dir / "job.sh").read_text()


def test_slurm_runs_spanning_several_nodes(tiny, fake_sbatch, monkeypatch, capsys):
    """--slurm_nodes 2 with 4 GPUs per node: one task per GPU in the script; every task's
    `lmjax train` finds a SLURM step of 8 tasks (JAX joins them); tasks other than 0 train
    without taking the run's lock or writing its result."""
    from lmjax.process.distributed import cluster_kwargs

    bin_dir = fake_sbatch
    assert cli.main([f"--config={tiny}:slurm", "--slurm", "--slurm_nodes=2", "--slurm_gpus_per_run=4"]) == 0
    script = (bin_dir / "job.sh").read_text()
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4"):
        assert f"#SBATCH {line}" in script
    assert "srun" in script
    capsys.readouterr()

    run = expand(tiny, "slurm")[0]
    task = {"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "8", "SLURM_PROCID": "5",
            "SLURM_LOCALID": "1", "SLURM_STEP_NODELIST": "gpu[1-2]"}
    env = slots.child_env(run, None, base={**os.environ, **task})
    assert cluster_kwargs(env) == {}  # JAX's SLURM detection takes it from here
    assert cluster_kwargs(slots.child_env(run, None, base={**task, "SLURM_NTASKS": "1"})) is None
    for k, v in task.items():  # a worker task of the run, here without a real SLURM step
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("SLURM_NTASKS", "1")  # so this one `lmjax train` runs alone
    assert slurm.TrainJob(str(tiny), "slurm")(run) == "worker done"
    wd = Workdir(run.workdir)
    assert wd.result() is None and not wd.file("sweep.lock").exists()
