"""Fault injection through the real command line, in subprocesses (`pytest -m fault`).

Each test names the guarantee it proves; README.md's "Fault tolerance" section points here.
"""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from lmjax import config as config_lib
from lmjax.checkpointing import Checkpointer
from lmjax.cli.main import main as cli_main
from lmjax.process.hugepages import ANNOUNCEMENT
from lmjax.training import sharding
from lmjax.training.steps import make_setup

pytestmark = pytest.mark.fault

TINY = [
    # 2% held out (22 KB): every run's final evaluation scores the whole validation split.
    "--config.data.corpus=tinyshakespeare", "--config.data.val_fraction=0.02", "--config.data.tokenizer=byte",
    "--config.model.num_layers=2", "--config.model.width=64",  # 4 heads: the default
    "--config.model.dropout=0.1", "--config.train.batch_size=8", "--config.train.seq_len=32",
    "--config.train.lr=3e-3", "--config.train.warmup_steps=2", "--config.train.log_every=1",
    "--config.train.eval_every=100000", "--config.train.eval_batches=1", "--config.sample.prompt=",
    "--progress=false",
]


def command(*args):
    return [sys.executable, "-m", "lmjax.cli.main", *args]


def env(devices=1):
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def cli(*args, devices=1, timeout=300, **kw):
    return subprocess.run(command(*args), capture_output=True, text=True, env=env(devices),
                          timeout=timeout, **kw)


def in_process(capsys, *args):
    """(exit status, stdout, stderr) of the command line's own entry point run in this process (8
    devices): for guarantees about what a command does, not about a process that dies."""
    code = cli_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(stderr: str) -> list[str]:
    """stderr's lines, less lmjax's notes on its own work (`lmjax: ...`: the re-execution with malloc
    tunables, ANNOUNCEMENT, and building a token store)."""
    return [ln for ln in stderr.strip().splitlines() if not ln.startswith(("lmjax: ", ANNOUNCEMENT))]


def logged_steps(workdir):
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def losses(workdir):
    return {r["step"]: r["loss"] for r in logged_steps(workdir) if "loss" in r}


def full_state(workdir):
    """The latest checkpoint's whole TrainState (params, AdamW moments, step) on one device."""
    workdir = Path(workdir)
    cfg = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    cfg.mesh.update(data=1, fsdp=1, tensor=1)
    cfg = config_lib.resolve(cfg)
    vocab = json.loads((workdir / "run.json").read_text())["vocab_size"]
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    setup = make_setup(cfg, vocab_size=vocab, mesh=mesh)
    ckpt = Checkpointer(workdir, read_only=True)
    state = ckpt.restore_state(ckpt.latest_step(), setup.abstract_state)
    ckpt.close()
    return jax.device_get(state)


def assert_bitwise_equal(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def tree_digest(folder):
    """Hash of the complete checkpoints (step folders) under `folder`; a failed save's
    temporary folder does not count."""
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file() and p.relative_to(folder).parts[0].isdigit():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def metrics_file_id(workdir):
    """metrics.jsonl's inode, None when there is none. A run replaces the file as it starts
    (keeping the rows up to the step it resumes from), so a changed id means that the run
    started after this was read has started logging."""
    try:
        return (Path(workdir) / "metrics.jsonl").stat().st_ino
    except FileNotFoundError:
        return None


def wait_for_step(proc, workdir, step, timeout=240, earlier_file=None):
    """True once `proc` has logged a step >= `step`; False if it exits or `timeout` passes first.
    earlier_file: metrics_file_id(workdir) from before `proc` started, when an earlier run left
    rows there: they do not count, nor rows up to `proc`'s resume point (pass `step` past it)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (metrics_file_id(workdir) != earlier_file
                and any(r.get("step", 0) >= step for r in logged_steps(workdir))):
            return True
        time.sleep(0.02)
    return False


def checkpoint_steps(workdir):
    """The complete checkpoints' steps, in order (orbax writes a step under a temporary name)."""
    folder = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


# --- 1. exact resumption after SIGKILL; 2. torn checkpoints -----------------------------------

# Each family once, on one device or sharded over eight, one of them saving every step. Kills land
# at random steps 3 to steps - 5: saving every step, 16 steps keep 3 of 16 checkpoints and have a
# save in flight at every kill; saving every 4 steps, 24 leave checkpoints to resume from behind
# kills at steps 3-19 (the seeds' kills: 4 and 6; 3 and 9; 17 and 18).
@pytest.mark.parametrize("family, devices, checkpoint_every, steps", [
    ("decoder", 8, 1, 16), ("lstm", 1, 4, 24), ("encoder", 8, 4, 24),
])
def test_sigkill_at_random_moments_then_resume_is_bitwise(tmp_path, family, devices, checkpoint_every, steps):
    """Killed twice at random steps (with checkpoint_every=1 every kill lands while an
    asynchronous save is in flight), each time after the killed process trained a step of its
    own, the same command finishes with the uninterrupted run's exact parameters, optimizer
    state and losses (the encoder's masks included), and the last 3 checkpoints kept."""
    args = [*TINY, f"--config.train.steps={steps}", f"--config.train.checkpoint_every={checkpoint_every}",
            "--config.train.keep_checkpoints=3", f"--config.model.family={family}"]
    ref, work = tmp_path / "ref", tmp_path / "killed"
    proc = cli("train", *args, f"--workdir={ref}", devices=devices)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rng = random.Random(devices * 100 + checkpoint_every)
    for kill_at in sorted(rng.sample(range(3, steps - 4), 2)):
        resume_at = max(checkpoint_steps(work), default=0)
        earlier_file = metrics_file_id(work)
        p = subprocess.Popen(command("train", *args, f"--workdir={work}"), env=env(devices),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for_step(p, work, max(kill_at, resume_at + 1), earlier_file=earlier_file), \
            f"the run exited ({p.returncode}) before step {max(kill_at, resume_at + 1)}"
        time.sleep(rng.random() * 0.05)
        p.send_signal(signal.SIGKILL)
        assert p.wait() == -signal.SIGKILL  # killed, not exited on its own
    proc = cli("train", *args, f"--workdir={work}", devices=devices)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_bitwise_equal(full_state(work), full_state(ref))
    assert losses(work) == losses(ref)
    assert checkpoint_steps(work) == checkpoint_steps(ref) == [steps - 2 * checkpoint_every, steps - checkpoint_every,
                                                               steps]


def test_torn_checkpoint_is_ignored(tmp_path):
    """A half-written step folder (orbax's tmp name, as a kill mid-save leaves it) is skipped:
    the previous complete checkpoint is used and the run continues."""
    args = [*TINY, "--config.train.steps=12", "--config.train.checkpoint_every=4"]
    ref, work = tmp_path / "ref", tmp_path / "torn"
    assert cli("train", *args, f"--workdir={ref}").returncode == 0
    p = subprocess.Popen(command("train", *args, f"--workdir={work}"), env=env(1),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for_step(p, work, 6)
    p.send_signal(signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL
    # The kill may land before the step-4 save is final: then there is no complete checkpoint.
    complete = max(checkpoint_steps(work), default=0)
    torn = work / "checkpoints" / f"{complete + 4}.orbax-checkpoint-tmp"
    torn.mkdir(parents=True, exist_ok=True)
    (torn / "garbage").write_bytes(os.urandom(1000))
    proc = cli("train", *args, f"--workdir={work}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (f"resuming at step {complete}" if complete else "starting at step 0") in proc.stdout
    assert_bitwise_equal(full_state(work), full_state(ref))


# --- 3. preemption -------------------------------------------------------------------------------

def test_preemption_signal_checkpoints_and_exits_zero(tmp_path):
    """SIGTERM (a scheduler's preemption), then SIGINT (Ctrl-C) to the resumed run: each time the
    run saves the step it reached, exits 0 within seconds, and the next start resumes there."""
    args = [*TINY, "--config.train.steps=3000", "--config.train.checkpoint_every=1000"]
    step = 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        p = subprocess.Popen(command("train", *args, f"--workdir={tmp_path}"), env=env(1),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert wait_for_step(p, tmp_path, step + 5)
        p.send_signal(sig)
        t = time.time()
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err[-2000:]
        assert time.time() - t < 30
        assert (f"resuming at step {step}" if step else "starting at step 0") in out
        step = json.loads(out.strip().splitlines()[-1])["step"]
        assert 5 <= step < 3000 and f"preempted at step {step}" in err
        assert Checkpointer(tmp_path, read_only=True).latest_step() == step


# --- 4. non-finite values ------------------------------------------------------------------------

def test_nonfinite_halt_names_step_and_keeps_good_checkpoint(tmp_path, capsys):
    code, _, err = in_process(capsys, "train", *TINY, "--config.train.steps=4", "--config.train.checkpoint_every=4",
                              f"--workdir={tmp_path}")
    assert code == 0, err
    before = tree_digest(tmp_path / "checkpoints")
    # Same run, continued with an absurd learning rate: the loss goes NaN within a few steps.
    code, _, err = in_process(capsys, "train", *TINY, "--config.train.steps=40", "--config.train.checkpoint_every=1",
                              "--config.train.lr=1e12", f"--workdir={tmp_path}")
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: non-finite loss or gradients at step") and "Last good checkpoint" in line
    # Every checkpoint on disk is finite, and the one from the good run is untouched or kept.
    ckpt = Checkpointer(tmp_path, read_only=True)
    assert all(s >= 4 for s in ckpt.all_steps())
    state = full_state(tmp_path)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
    if ckpt.all_steps() == [4]:
        assert tree_digest(tmp_path / "checkpoints") == before


def test_nonfinite_skip_counts_then_halts(tmp_path, capsys):
    code, _, err = in_process(capsys, "train", *TINY, "--config.train.steps=40", "--config.train.lr=1e12",
                              "--config.train.nonfinite=skip", "--config.train.max_nonfinite=3",
                              "--config.train.warmup_steps=0", f"--workdir={tmp_path}")
    assert code == 2
    assert "3 non-finite steps in a row" in err.strip().splitlines()[-1]


# --- 5. bad input: one line, non-zero exit, no checkpoint touched ---------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    corpus = root / "corpus.txt"
    corpus.write_text("hello world, a small corpus for a char tokenizer.\n" * 400)
    workdir = root / "run"
    proc = cli("train", *TINY, "--config.train.steps=4", "--config.train.checkpoint_every=2",
               f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root, workdir


def _empty_corpus(root):
    (root / "empty.txt").write_text("")
    return [f"--config.data.corpus={root / 'empty.txt'}"]


def _non_utf8(root):
    (root / "bad").mkdir(exist_ok=True)
    (root / "bad" / "a.txt").write_text("fine text\n" * 100)
    (root / "bad" / "b.txt").write_bytes(b"caf\xe9 latin-1\n" * 100)
    return [f"--config.data.corpus={root / 'bad'}/*.txt"]


BAD_TRAIN = [
    ("unknown key", lambda r: ["--config.model.widht=3"], "did you mean 'config.model.width'"),
    ("wrong type", lambda r: ["--config.train.steps=ten"], "config.train.steps"),
    ("heads not dividing width", lambda r: ["--config.model.num_heads=3"], "does not divide config.model.width"),
    ("kv heads not dividing heads", lambda r: ["--config.model.num_kv_heads=3"], "does not divide config.model.num_heads"),
    ("batch vs data-parallel devices", lambda r: ["--config.train.batch_size=9"], "not divisible by the"),
    ("mesh vs device count", lambda r: ["--config.mesh.data=3"], "does not match the"),
    ("missing corpus", lambda r: [f"--config.data.corpus={r / 'nope.txt'}"], "matched no files"),
    ("empty corpus", _empty_corpus, "empty"),
    ("non-UTF-8 file", _non_utf8, "is not UTF-8"),
    ("vocab too large for token cache", lambda r: ["--config.data.tokenizer=sentencepiece",
                                                   "--config.data.vocab_size=4294967296"], "too large for the token cache"),
    ("model shape differs from checkpoint", lambda r: ["--config.model.width=128"], "holds a run of another config"),
    ("tokenizer differs from checkpoint", lambda r: ["--config.data.tokenizer=char"], "holds a run of another config"),
]


DATA_ERRORS = ("missing corpus", "empty corpus", "non-UTF-8 file")


@pytest.mark.parametrize("name, make_args, message", BAD_TRAIN, ids=[b[0] for b in BAD_TRAIN])
def test_bad_train_input(trained, capsys, name, make_args, message):
    """In this process (8 devices, so a batch of 9 cannot be split over the data-parallel axis):
    the command line's own entry point, without a start-up per case."""
    root, workdir = trained
    before = tree_digest(workdir / "checkpoints")
    # A bad corpus in the trained run's workdir is refused first as another config's run: its
    # own error shows in a new workdir.
    into = root / f"new-{name.replace(' ', '-')}" if name in DATA_ERRORS else workdir
    code = cli_main(["train", *TINY, "--config.train.steps=8", *make_args(root), f"--workdir={into}"])
    lines = error_lines(capsys.readouterr().err)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert tree_digest(workdir / "checkpoints") == before


@pytest.mark.parametrize("where", ["under /proc", "a file"])
def test_workdir_that_cannot_be_created(trained, tmp_path, capsys, where):
    """A workdir that cannot be created (or written) is one error line, not a traceback."""
    _, workdir = trained
    before = tree_digest(workdir / "checkpoints")
    if where == "a file":
        target = tmp_path / "taken"
        target.write_text("a file where the workdir should go")
    else:
        target = Path("/proc/lmjax-cannot-write")
    code, _, err = in_process(capsys, "train", *TINY, "--config.train.steps=2", f"--workdir={target}")
    lines = error_lines(err)
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot create workdir {target}"), err
    assert "--workdir" in lines[0]
    assert tree_digest(workdir / "checkpoints") == before


def test_corpus_changed_under_checkpoint_is_refused(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcdefgh\n" * 2000)
    args = [*TINY, "--config.data.tokenizer=char", f"--config.data.corpus={corpus}",
            "--config.train.steps=2", "--config.train.checkpoint_every=2"]
    code, _, err = in_process(capsys, "train", *args, f"--workdir={tmp_path / 'run'}")
    assert code == 0, err
    corpus.write_text("abcdefghijklmnop\n" * 2000)  # a different character set
    before = tree_digest(tmp_path / "run" / "checkpoints")
    code, _, err = in_process(capsys, "train", *args[:-2], "--config.train.steps=4", f"--workdir={tmp_path / 'run'}")
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1, err  # the token store notices the file first
    assert f"corpus file {corpus} changed since the token store was built; run `lmjax prepare --rebuild`" in lines[0]
    code, _, err = in_process(capsys, "prepare", *args[:-2], "--rebuild")  # tokenized again: another tokenizer
    assert code == 0, err
    code, _, err = in_process(capsys, "train", *args[:-2], "--config.train.steps=4", f"--workdir={tmp_path / 'run'}")
    assert code == 2 and "tokenizer built from config.data differs" in err
    assert tree_digest(tmp_path / "run" / "checkpoints") == before


def test_corrupt_checkpoint(trained, tmp_path):
    _, workdir = trained
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    latest = max(int(p.name) for p in (copy / "checkpoints").iterdir() if p.name.isdigit())
    for f in (copy / "checkpoints" / str(latest) / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(os.urandom(f.stat().st_size))
    before = tree_digest(copy / "checkpoints")
    proc = cli("train", *TINY, "--config.train.steps=8", f"--workdir={copy}")
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: checkpoint step") and "move" in line and "aside" in line
    assert tree_digest(copy / "checkpoints") == before


def test_workdir_of_another_config_needs_force(trained, tmp_path, capsys):
    _, workdir = trained
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    code, _, err = in_process(capsys, "train", *TINY, "--config.model.num_layers=3", "--config.train.steps=2",
                              f"--workdir={copy}", "--force")
    assert code == 0, err[-2000:]
    aside = [p for p in copy.iterdir() if p.name.startswith("checkpoints.replaced-")]
    assert len(aside) == 1 and any(p.name.isdigit() for p in aside[0].iterdir())


def test_prompt_longer_than_context(trained, capsys):
    _, workdir = trained
    code, _, err = in_process(capsys, "sample", f"--workdir={workdir}", "--prompt=" + "x" * 100, "--max_new_tokens=5")
    assert code == 2
    lines = error_lines(err)
    assert len(lines) == 1 and "exceeds the model's context of 32" in lines[0]


def test_full_disk_during_save(trained, tmp_path):
    """Simulated with RLIMIT_FSIZE: writes past 64 KB fail with EFBIG, as on a full disk."""
    _, workdir = trained
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    before = tree_digest(copy / "checkpoints")

    # Limit, then exec the CLI: no preexec_fn, since forking this multithreaded (JAX) test
    # process can deadlock. An ignored SIGXFSZ stays ignored across exec.
    limited = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000)); "
               "os.execv(sys.executable, [sys.executable, '-m', 'lmjax.cli.main', *sys.argv[1:]])")
    proc = subprocess.run([sys.executable, "-c", limited, "train", *TINY, "--config.train.steps=8",
                           "--config.train.checkpoint_every=2", f"--workdir={copy}"],
                          capture_output=True, text=True, env=env(1), timeout=300)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: saving a checkpoint") and "Free disk space" in line
    assert tree_digest(copy / "checkpoints") == before
    # Space is back: the same command continues from the intact checkpoint.
    proc = cli("train", *TINY, "--config.train.steps=8", "--config.train.checkpoint_every=2",
               f"--workdir={copy}")
    assert proc.returncode == 0 and "resuming at step 4" in proc.stdout
