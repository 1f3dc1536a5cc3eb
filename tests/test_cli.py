"""The `lmjax` command end to end: train, resume, eval, sample, and clear errors for bad input."""

import json
import os
import subprocess
import sys

import pytest

from lmjax.cli.main import main

TINY = [
    "--config.data.corpus=tinyshakespeare", "--config.data.val_fraction=0.02", "--config.data.tokenizer=char",
    "--config.model.num_layers=2", "--config.model.num_heads=2", "--config.model.width=64",
    "--config.train.steps=30", "--config.train.batch_size=8", "--config.train.seq_len=32",
    "--config.train.eval_every=30", "--config.train.eval_batches=4", "--config.train.log_every=10",
    "--config.train.checkpoint_every=20", "--progress=false",
]


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cli") / "run"
    # A subprocess, as a user runs it, on one device; the tests below resume it on eight.
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    proc = subprocess.run([sys.executable, "-m", "lmjax.cli.main", "train", *TINY, f"--workdir={workdir}"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return workdir, proc


def test_train_writes_run(trained):
    workdir, proc = trained
    final = json.loads(proc.stdout.strip().splitlines()[-1])
    assert final["step"] == 30
    assert final["val_loss"] < 4.0  # chars: uniform over 65 is 4.17 nats
    assert (workdir / "metrics.jsonl").exists()
    assert list((workdir / "tensorboard").iterdir())
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["20", "30"]
    info = json.loads((workdir / "run.json").read_text())
    assert len(info["corpus_fingerprint"]) == 64


def test_train_again_continues(trained, capsys):
    workdir, _ = trained
    code, out, err = run_cli(["train", *TINY, "--config.train.steps=40", f"--workdir={workdir}"], capsys)
    assert code == 0, err
    assert "resuming at step 30" in out
    assert json.loads(out.strip().splitlines()[-1])["step"] == 40


def test_eval_prints_json(trained, capsys):
    workdir, _ = trained
    code, out, err = run_cli(["eval", f"--workdir={workdir}", "--batches=2"], capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert {"step", "loss", "perplexity", "bits_per_byte"} <= set(result)
    assert abs(result["perplexity"] - 2.718281828 ** result["loss"]) < 1e-3 * result["perplexity"]


def test_sample_several_prompts(trained, capsys):
    workdir, _ = trained
    code, out, err = run_cli(["sample", f"--workdir={workdir}", "--prompt=ROMEO:", "--prompt=To be",
                              "--max_new_tokens=20", "--seed=1"], capsys)
    assert code == 0, err
    assert out.count("--- prompt:") == 2 and "ROMEO:" in out


@pytest.mark.parametrize("args, message", [
    (["--config.model.widht=3"], "did you mean 'config.model.width'"),
    (["--config.model.num_layers=abc"], "config.model.num_layers"),
    (["--config.model.num_heads=3"], "does not divide config.model.width"),
    (["--config.model.num_kv_heads=3"], "config.model.num_kv_heads=3 does not divide"),
    (["--config.model.attention=flash"], "config.model.attention='flash' is not one of"),
    (["--config.train.loss_chunk=5"], "config.train.loss_chunk=5 must be 0 (off) or divide"),
    (["--config.mesh.data=3"], "does not match the 8 available devices"),
    (["--config.train.batch_size=12", "--config.mesh.data=8"], "not divisible by the 8 data-parallel"),
    (["--config.data.corpus=/no/such/corpus.txt"], "matched no files"),
    (["--config=configs/no_such.py"], "cannot load config"),
    (["--config", "configs/no_such.py"], "No such file or directory: 'configs/no_such.py'"),
])
def test_bad_config_fails_with_one_line(args, message, capsys, tmp_path):
    # --config must precede the overrides; every other bad value overrides TINY's.
    argv = args + TINY if args[0] == "--config" or args[0].startswith("--config=") else TINY + args
    code, out, err = run_cli(["train", *argv, f"--workdir={tmp_path}"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]
    assert not (tmp_path / "checkpoints").exists()


def test_workdir_of_another_config_is_refused(trained, capsys):
    workdir, _ = trained
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    code, _, err = run_cli(["train", *TINY, "--config.model.width=128", f"--workdir={workdir}"], capsys)
    assert code == 2 and "holds a run of another config" in err and "--force" in err
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before


def test_eval_without_run_fails(tmp_path, capsys):
    code, _, err = run_cli(["eval", f"--workdir={tmp_path}"], capsys)
    assert code == 2 and "holds no checkpoints" in err


def test_second_start_compiles_nothing(tmp_path):
    """`lmjax train` keeps its compiled programs in <LMJAX_CACHE_DIR>/xla: a second start of the
    same config reads every one of them back (no new cache entries) and gives the same losses;
    LMJAX_COMPILE_CACHE=0 turns the cache off."""
    args = [a for a in TINY if not a.startswith("--config.train.steps")] + ["--config.train.steps=2"]
    env = {**os.environ, "LMJAX_CACHE_DIR": str(tmp_path / "cache"),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}

    def train(name, **extra):
        proc = subprocess.run([sys.executable, "-m", "lmjax.cli.main", "train", *args,
                               f"--workdir={tmp_path / name}"], capture_output=True, text=True,
                              env={**env, **extra}, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    xla = tmp_path / "cache" / "xla"
    first = train("a")
    entries = sorted(p.name for p in xla.iterdir())
    assert any("train_step" in e for e in entries), entries
    second = train("b")
    assert sorted(p.name for p in xla.iterdir()) == entries  # every program came from the cache
    assert second["loss"] == first["loss"] and second["val_loss"] == first["val_loss"]
    train("c", LMJAX_CACHE_DIR=str(tmp_path / "off"), LMJAX_COMPILE_CACHE="0")
    assert not (tmp_path / "off" / "xla").exists()


def test_console_script_reexecutes_before_heavy_imports():
    # The `lmjax` script's first process only decides on the malloc tunables and re-executes:
    # importing its entry module must not load the libraries the second process loads anyway.
    code = "import sys, lmjax.cli; print(sorted({'jax', 'absl', 'ml_collections', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def _flags_of(command):
    from absl import flags

    from lmjax.cli.main import DELEGATED, command_flags

    if command not in DELEGATED:
        return command_flags(command)
    import importlib

    fv = flags.FlagValues()
    importlib.import_module(DELEGATED[command])._define(fv)
    return fv


@pytest.mark.parametrize("command", ["train", "eval", "sample", "finetune", "export", "import", "sweep", "report", "fit"])
def test_command_help_lists_its_flags(command, capsys):
    from lmjax.cli.main import COMMANDS

    assert command in COMMANDS
    code, out, err = run_cli([command, "--config.model.widht=3", "--help"], capsys)  # help wins
    assert code == 0 and not err, err
    for name in _flags_of(command):
        if name != "config" or command in ("train", "sweep"):  # import's and finetune's: its keys
            assert f"--{name}:" in out or f"--[no]{name}:" in out, name
    if command in ("train", "import"):
        assert "--config.model.width=256:" in out and "--config.train.muon_ns_steps=5:" in out
    if command == "finetune":
        assert "--config.finetune.steps=300:" in out


def test_sweep_usage_names_every_flag():
    from lmjax.sweeps import cli

    usage = cli.__doc__.split("Exit status")[0]
    for name in _flags_of("sweep"):
        assert f"--{name}" in usage or f"--no{name}" in usage or f"--{name.replace('_', '-')}" in usage, name


def test_family_switched_on_the_command_line_resets_the_config_files_keys(tmp_path, capsys):
    """configs/shakespeare_char.py sets width for the neural families: --config.model.family=ngram
    resets it with one note line; the same key set on the command line is refused."""
    base = ["train", "--config", "configs/shakespeare_char.py", "--config.model.family=ngram",
            "--progress=false"]
    code, out, err = run_cli([*base, f"--workdir={tmp_path / 'a'}"], capsys)
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and notes[0].endswith("reset to their defaults: config.model.width"), err
    assert json.loads((tmp_path / "a" / "config.json").read_text())["model"]["width"] == 256
    code, out, err = run_cli([*base, "--config.model.width=256", f"--workdir={tmp_path / 'b'}"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        "error: config.model.width applies to the decoder, encoder, lstm, gru, rnn and mlp families, not "
        "config.model.family='ngram'; leave it at its default (256) or choose another family"]


def test_readme_train_examples_run_on_one_device(monkeypatch):
    """Every `lmjax train` command in README.md resolves, and its mesh and batch fit one device."""
    import shlex
    from pathlib import Path

    import jax

    from lmjax import config as config_lib
    from lmjax.cli.main import parse
    from lmjax.training import sharding

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)  # the examples name configs/ relative to the checkout
    commands = [shlex.split(line, comments=True) for line in (repo / "README.md").read_text().splitlines()
                if line.startswith("lmjax train")]
    assert len(commands) >= 3
    for argv in commands:
        config = config_lib.resolve(parse("train", argv[2:]).config)
        mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
        sharding.check_batch(config.train.batch_size, config.train.grad_accum, mesh, 1, config.train.replicas)


def test_training_does_not_import_torch(tmp_path):
    # tensorboardX imports PyTorch whenever it is installed (1.2 s per training process); the
    # metrics writer keeps it out, and its events are still written.
    pytest.importorskip("torch")
    code = ("import sys; from lmjax.training.metrics import _summary_writer; "
            "w = _summary_writer()(sys.argv[1]); w.add_scalar('x', 1.0, 0); w.close(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False" and any(p.name.startswith("events.") for p in tmp_path.iterdir())
