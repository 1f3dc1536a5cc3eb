"""`lmjax finetune`: tasks, the classifier, the backbone it starts from, and bad inputs."""

import json

import jax
import numpy as np
import pytest

import lmjax
from lmjax import config as config_lib
from lmjax.cli.main import main as cli_main
from lmjax.data.tasks import STDLIB_GROUPS, load_task
from lmjax.data.tokenizers import ByteTokenizer, CharTokenizer
from lmjax.errors import ConfigError, DataError
from lmjax.training.finetune import classification_metrics, finetune
from lmjax.training.loop import train
from lmjax.workdir import CHECKPOINTS

SEQ = 32


def pretrain(workdir, family="decoder", mesh=None, **data):
    # The stdlib task holds out the files the pretraining corpus held out (val_fraction 0.1, the
    # least that holds out every group's files), so the final evaluation scores 2.9M tokens: a batch
    # of 64 makes its batches of 1,024 windows (of 128 at a batch of 8).
    c = config_lib.base_config()
    c.data.update(corpus="stdlib", tokenizer="byte", **data)
    c.model.update(family=family, num_layers=1, num_heads=2, width=16)
    c.train.update(steps=3, batch_size=64, seq_len=SEQ, eval_every=3, eval_batches=1, checkpoint_every=3)
    c.mesh.update(mesh or {})
    train(c, workdir, progress=False)
    return workdir


@pytest.fixture(scope="module")
def decoder_run(tmp_path_factory):
    # Written by 8 devices (data 4 x fsdp 2): fine-tuning restores it onto one whatever wrote it.
    return pretrain(tmp_path_factory.mktemp("pre") / "decoder", mesh={"data": 4, "fsdp": 2})


def ft(init, **kw):
    return {"finetune": {"init": str(init), "steps": 2, "batch_size": 8, "eval_every": 2,
                         "max_per_label": 40, **kw}}


def leaves_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_stdlib_modules_task_is_split_like_the_corpus():
    task = load_task("stdlib-modules", ByteTokenizer(), length=64, max_per_label=50)
    assert task.labels == STDLIB_GROUPS and len(STDLIB_GROUPS) >= 8
    assert np.bincount(task.train.labels).min() >= 10 and np.bincount(task.val.labels).min() >= 1
    assert task.train.tokens.shape[1] == 64 and (task.train.lengths == 64).all()
    # No held-out snippet occurs in the training snippets (they come from other files).
    train = {t.tobytes() for t in task.train.tokens}
    assert not any(t.tobytes() in train for t in task.val.tokens)


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_jsonl_and_tsv_tasks(tmp_path):
    rows = [{"text": f"text number {i} " * (i % 5 + 1), "label": ["a", "b", "c"][i % 3]} for i in range(60)]
    jl = write(tmp_path / "t.jsonl", [json.dumps(r) for r in rows])
    tsv = write(tmp_path / "t.tsv", [f"{r['text']}\t{r['label']}" for r in rows])
    for path in (jl, tsv):
        task = load_task(path, ByteTokenizer(), length=16)
        assert task.labels == ("a", "b", "c")
        assert len(task.train) + len(task.val) == 60 and len(task.val) > 0
        assert (task.train.lengths <= 16).all() and (task.train.lengths >= 1).all()


@pytest.mark.parametrize("lines, message", [
    (['{"text": "x", "label": "a"}', "not json"], r"t.jsonl:2: not a JSON object"),
    (['{"text": "", "label": "a"}'], r"t.jsonl:1: empty text"),
    (['{"txt": "x", "label": "a"}'], r't.jsonl:1: each line must be \{"text": ..., "label": ...\}'),
    ([json.dumps({"text": f"t{i}", "label": "only"}) for i in range(30)], r"one label \('only'\)"),
])
def test_bad_task_files_get_one_line(tmp_path, lines, message):
    with pytest.raises(DataError, match=message):
        load_task(write(tmp_path / "t.jsonl", lines), ByteTokenizer(), length=16)


def test_bad_task_names_and_tsv_lines(tmp_path):
    with pytest.raises(DataError, match=r"t.tsv:2: no tab"):
        load_task(write(tmp_path / "t.tsv", ["x\ta", "no tab here"]), ByteTokenizer(), length=8)
    with pytest.raises(DataError, match="neither 'stdlib-modules' nor a .jsonl/.tsv file"):
        load_task("imdb", ByteTokenizer(), length=8)
    # A label held out but never trained on: pick texts so that the only 'z' is held out.
    texts = [f"row {i}" for i in range(200)]
    held = [t for t in texts if load_task.__globals__["_text_in_val"](t, 0.1)]
    rows = [f"{t}\t{'z' if t == held[0] else ('a' if i % 2 else 'b')}" for i, t in enumerate(texts)]
    with pytest.raises(DataError, match="label 'z' is only in held-out examples"):
        load_task(write(tmp_path / "z.tsv", rows), ByteTokenizer(), length=8)


def test_a_tokenizer_trained_on_other_text_is_refused():
    shakespeare = CharTokenizer.train("First Citizen: Before we proceed any further, hear me speak.")
    with pytest.raises(DataError, match="char tokenizer maps .* to <unk>: it was trained on other text"):
        load_task("stdlib-modules", shakespeare, length=32, max_per_label=5)


def test_classification_metrics_by_hand():
    # true: a a b b c; predicted: a b b b a -> F1 a = 2*1/(2+2)=0.5, b = 2*2/(2+3)=0.8, c = 0
    m = classification_metrics(np.array([0, 1, 1, 1, 0]), np.array([0, 0, 1, 1, 2]), 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_backbone_starts_as_pretrained_and_probe_keeps_it(decoder_run, tmp_path):
    pre = lmjax.load(decoder_run)
    finetune(ft(decoder_run, steps=0), tmp_path / "zero")
    zero = lmjax.load(tmp_path / "zero")
    assert leaves_equal(zero.params["backbone"], pre.params)
    finetune(ft(decoder_run, steps=3, freeze_backbone=True), tmp_path / "probe")
    probe = lmjax.load(tmp_path / "probe")
    assert leaves_equal(probe.params["backbone"], pre.params)
    assert not leaves_equal(probe.params["head"], zero.params["head"])
    finetune(ft(decoder_run, steps=3), tmp_path / "full")
    assert not leaves_equal(lmjax.load(tmp_path / "full").params["backbone"], pre.params)
    finetune(ft(decoder_run, steps=0, random_init=True), tmp_path / "fresh")
    assert not leaves_equal(lmjax.load(tmp_path / "fresh").params["backbone"], pre.params)


def test_encoder_finetunes_with_first_token_pooling_and_classifies(tmp_path):
    pre = pretrain(tmp_path / "encoder", family="encoder")
    final = finetune(ft(pre, steps=2), tmp_path / "cls")
    assert set(final) >= {"accuracy", "macro_f1", "confusion_matrix", "labels"}
    assert json.loads((tmp_path / "cls" / "run.json").read_text())["pooling"] == "first"
    run = lmjax.load(tmp_path / "cls")
    out = run.classify(["import asyncio", "from email import message"])
    assert [o["label"] in STDLIB_GROUPS for o in out] == [True, True]
    assert sum(out[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    ev = run.evaluate()
    assert ev["accuracy"] == pytest.approx(final["accuracy"]) and ev["confusion_matrix"] == final["confusion_matrix"]


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_cli_finetune_eval_and_bad_inputs(decoder_run, tmp_path, capsys):
    """Through the command line's own entry point, in this process: no start-up per command."""
    def cli(*args):
        code = cli_main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    out = tmp_path / "cls"
    code, stdout, err = cli("finetune", "--init", str(decoder_run), "--task", "stdlib-modules", "--workdir", str(out),
                            "--config.finetune.steps=2", "--config.finetune.max_per_label=20",
                            "--config.finetune.batch_size=4")
    assert code == 0, err
    assert json.loads(stdout.splitlines()[-1])["step"] == 2
    code, stdout, err = cli("eval", "--workdir", str(out))
    assert code == 0, err
    last = json.loads(stdout.splitlines()[-1])
    assert {"accuracy", "macro_f1", "confusion_matrix", "labels"} <= set(last)
    assert "true \\ predicted" in stdout and (out / "confusion_matrix.png").stat().st_size > 1000
    code, _, err = cli("sample", "--workdir", str(out), "--prompt", "x")
    assert code == 2 and "use run.classify" in error_lines(err)[0]
    saved = sorted(p.name for p in (out / CHECKPOINTS).iterdir())
    one_label = write(tmp_path / "one.jsonl", [json.dumps({"text": f"t{i}", "label": "x"}) for i in range(20)])
    for args, message in [
        (["--init", str(tmp_path / "nothing")], "holds no checkpoints"),
        (["--init", str(decoder_run), "--task", one_label], "one label ('x')"),
        (["--init", str(decoder_run)], f"workdir {out} already holds a run"),
        (["--init", str(decoder_run), "--config.model.width=8"], "takes config.finetune keys only"),
    ]:
        code, _, err = cli("finetune", *args, "--workdir", str(out))
        assert code == 2 and len(error_lines(err)) == 1 and message in err, err
    assert sorted(p.name for p in (out / CHECKPOINTS).iterdir()) == saved  # nothing touched


def test_finetune_needs_init():
    with pytest.raises(ConfigError, match="--init is required"):
        finetune({"finetune": {}}, "/tmp/unused")
