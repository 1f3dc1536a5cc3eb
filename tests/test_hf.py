"""Hugging Face interop (lmjax/hf), checked in `transformers` itself on CPU in float32: exported
runs give transformers' logits and greedy tokens, random transformers models import exactly,
export then import is bitwise, and what neither layout expresses is refused with one line."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import lmjax  # noqa: E402
from lmjax import config as config_lib  # noqa: E402
from lmjax.errors import ConfigError, LmjaxError  # noqa: E402
from lmjax.hf.convert import export_run, import_dir  # noqa: E402
from lmjax.hf.layouts import ConversionError, layout_for  # noqa: E402
from lmjax.hf.tokenizer import save_hf_tokenizer  # noqa: E402
from lmjax.data.tokenizers import ByteTokenizer  # noqa: E402
from lmjax.data import prepare  # noqa: E402
from lmjax.models.decode import generate  # noqa: E402
from lmjax.training.finetune import finetune  # noqa: E402
from lmjax.training.loop import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEQ = 64
ATOL = 1e-4

# One run per layout and attention, each written by another topology, tokenizer and corpus.
RUNS = {
    "gpt2": dict(model=dict(positions="learned", norm="layernorm", bias=True, norm_eps=1e-5),
                 data=dict(corpus="tinyshakespeare", val_fraction=0.02, tokenizer="char"),
                 mesh=dict(data=2, fsdp=2, tensor=2)),
    "llama_mha_scanned": dict(model=dict(mlp="swiglu", scan_layers=True, rope_theta=500.0),
                              data=dict(corpus="stdlib", val_fraction=0.01, tokenizer="byte"), mesh=dict(data=8)),
    "llama_gqa": dict(model=dict(mlp="swiglu", mlp_width=80, attention="gqa", num_kv_heads=2,
                                 tie_embeddings=False, bias=True),
                      data=dict(corpus="tinyshakespeare", val_fraction=0.02, tokenizer="sentencepiece",
                                vocab_size=400),
                      mesh=dict(data=2, fsdp=4)),
}


def run_config(name, **train_kw):
    spec = RUNS[name]
    c = config_lib.base_config()
    c.data.update(spec["data"])
    c.model.update(num_layers=2, num_heads=4, width=64, **spec["model"])
    c.train.update({**dict(steps=4, batch_size=8, seq_len=SEQ, eval_every=4, eval_batches=1,
                           checkpoint_every=4, warmup_steps=1, lr=1e-2), **train_kw})
    c.mesh.update(spec["mesh"])
    return c


@pytest.fixture(scope="module", params=list(RUNS))
def exported(request, tmp_path_factory):
    """(run name, workdir, export dir) of a trained run (4 steps at a high lr: far from init)."""
    root = tmp_path_factory.mktemp(request.param)
    train(run_config(request.param), root / "run", progress=False)
    export_run(root / "run", root / "hf")
    return request.param, root / "run", root / "hf"


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids))).logits.numpy()


def test_export_logits_greedy_tokens_and_tokenizer_match_transformers(exported):
    name, workdir, out = exported
    run = lmjax.load(workdir)
    model = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert type(model).__name__ == ("GPT2LMHeadModel" if name == "gpt2" else "LlamaForCausalLM")
    ids = np.random.default_rng(0).integers(0, run.model_cfg.vocab_size, (3, SEQ))
    ours, theirs = run.logits(ids), hf_logits(model, ids)
    assert np.abs(ours - theirs).max() < ATOL

    prompt = ids[0, :16]
    greedy = generate(run.model_cfg, run.params, [prompt], max_new_tokens=32, temperature=0.0)[0]
    with torch.no_grad():
        hf_greedy = model.generate(torch.tensor(prompt[None]), do_sample=False, max_new_tokens=32,
                                   min_new_tokens=32)[0, 16:].numpy()
    np.testing.assert_array_equal(greedy, hf_greedy)

    tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    val = prepare(run.config.data).sources[0].val
    paragraph = run.tokenizer.decode(val.tokens[:val.doc_ends[0] - 1])[:3000]  # of the first document
    assert tokenizer.encode(paragraph, add_special_tokens=False) == run.tokenizer.encode(paragraph).tolist()
    assert len(tokenizer) == run.tokenizer.vocab_size


def test_export_then_import_is_bitwise(exported, tmp_path):
    name, workdir, out = exported
    import_dir(out, tmp_path / "back")
    a, b = lmjax.load(workdir), lmjax.load(tmp_path / "back")
    assert jax.tree.structure(a.params) == jax.tree.structure(b.params)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))
    assert b.config.to_dict() == a.config.to_dict()  # the run's config came back with it (lmjax.json)
    assert b.tokenizer.fingerprint == a.tokenizer.fingerprint
    assert b.step == 0


@pytest.mark.parametrize("exported", ["gpt2"], indirect=True)  # one run is enough
def test_import_overrides_apply_over_lmjax_json(exported, tmp_path):
    name, workdir, out = exported
    import_dir(out, tmp_path / "w", overrides={"data": {"val_fraction": 0.2}, "train": {"steps": 9}})
    saved = json.loads((tmp_path / "w" / "config.json").read_text())
    assert saved["data"]["val_fraction"] == 0.2 and saved["train"]["steps"] == 9
    assert saved["data"]["tokenizer"] == "char"  # the exported run's tokenizer, from lmjax.json


@pytest.mark.parametrize("exported", ["llama_gqa"], indirect=True)  # one run is enough
def test_sharded_bfloat16_export_loads(exported, tmp_path):
    name, workdir, _ = exported
    export_run(workdir, tmp_path / "hf", max_shard_size=40_000, dtype="bfloat16")
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True,
                                                              dtype=torch.float32)
    run = lmjax.load(workdir)
    ids = np.arange(SEQ)[None] % run.model_cfg.vocab_size
    assert np.abs(run.logits(ids) - hf_logits(model, ids)).max() < 0.05  # bfloat16 weights


HF_CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=48, vocab_size=300,
                                            bos_token_id=None, eos_token_id=None),
    "llama_gqa": lambda: transformers.LlamaConfig(
        hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=300, max_position_embeddings=48, rms_norm_eps=1e-5,
        rope_theta=1000.0, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None),
}


@pytest.fixture(scope="module", params=list(HF_CONFIGS))
def hf_dir(request, tmp_path_factory):
    """A transformers model from a random config, saved with save_pretrained, with a byte-level
    tokenizer.json (256 ids; the model's 300 rows include padding)."""
    out = tmp_path_factory.mktemp("hf") / request.param
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(HF_CONFIGS[request.param]())
    with torch.no_grad():  # nonzero biases and norms, so a swapped tensor shows in the logits
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out)
    save_hf_tokenizer(ByteTokenizer(), out)
    return out, model.eval()


def test_import_random_transformers_model(hf_dir, tmp_path):
    out, model = hf_dir
    import_dir(out, tmp_path / "run", overrides={"data": {"corpus": "tinyshakespeare"}})
    run = lmjax.load(tmp_path / "run")
    assert run.config.data.tokenizer == "hf" and run.model_cfg.vocab_size == 300
    ids = np.random.default_rng(1).integers(0, 300, (2, 48))
    assert np.abs(run.logits(ids) - hf_logits(model, ids)).max() < ATOL
    assert run.tokenizer.encode("héllo\n") .tolist() == list("héllo\n".encode())


def lmjax_cli(capsys, *args):
    """(exit status, stdout, stderr) of the command line's own entry point, run in this process."""
    from lmjax.cli.main import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
@pytest.mark.parametrize("hf_dir", ["llama_gqa"], indirect=True)  # one layout through the CLI is enough
def test_cli_import_then_eval_sample_train_then_finetune_export(hf_dir, tmp_path, capsys):
    """Through the command line's own entry point, in this process (no start-up per command)."""
    def cli(*args):
        code, out, err = lmjax_cli(capsys, *args)
        assert code == 0, err
        return out

    out, model = hf_dir
    w = tmp_path / "run"
    p = cli("import", "--from", str(out), "--workdir", str(w), "--config.data.corpus=tinyshakespeare",
            "--config.train.steps=2", "--config.train.batch_size=8", "--config.train.eval_batches=1",
            "--config.train.checkpoint_every=2")
    assert json.loads(p.splitlines()[-1])["layout"] == "llama"
    p = cli("eval", "--workdir", str(w), "--batches", "1")
    assert json.loads(p.splitlines()[-1])["step"] == 0
    # `lmjax sample`'s decoding gives transformers' greedy tokens (top-2 logit gaps here: >= 0.013).
    # Token ids, not text: this random model's bytes do not decode to readable UTF-8.
    run = lmjax.load(w)
    prompt = run.tokenizer.encode("To be")
    with torch.no_grad():
        hf_greedy = model.generate(torch.tensor(prompt[None]), do_sample=False, max_new_tokens=8,
                                   min_new_tokens=8)[0, len(prompt):].numpy()
    greedy = generate(run.model_cfg, run.params, [prompt], max_new_tokens=8, temperature=0.0)[0]
    np.testing.assert_array_equal(greedy, hf_greedy)
    cli("train", "--config", f"{REPO / 'configs' / 'workdir.py'}:{w}", "--workdir", str(w), "--progress=false")
    assert lmjax.load(w).step == 2  # continued pretraining from the imported step 0
    # Fine-tuned on a small labelled file (the stdlib task, tested in test_finetune.py, would spend
    # seconds tokenizing stdlib files with this run's tokenizer.json).
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"text": f"text number {i} " * (i % 5 + 1), "label": "abc"[i % 3]}) + "\n"
                            for i in range(60)))
    finetune({"finetune": {"init": str(w), "task": str(task), "steps": 1, "batch_size": 4}}, tmp_path / "cls")
    assert lmjax.load(tmp_path / "cls").labels == ("a", "b", "c")
    export_run(w, tmp_path / "again")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "again", local_files_only=True)
    ids = np.arange(48)[None]
    assert np.abs(lmjax.load(w).logits(ids) - hf_logits(again, ids)).max() < ATOL


@pytest.mark.parametrize("key, changes", [
    ("positions", dict(positions="alibi")), ("positions", dict(positions="sinusoidal")),
    ("attention", dict(attention="linear")), ("window", dict(window=8)),
    ("family", dict(family="encoder")),
    ("mlp", dict(positions="learned", norm="layernorm", bias=True)),  # GPT-2's MLP is GELU
    ("bias", dict(positions="learned", norm="layernorm", mlp="gelu")),
    ("attention", dict(positions="learned", norm="layernorm", mlp="gelu", bias=True, attention="gqa",
                       num_kv_heads=2)),
    ("norm", dict(norm="layernorm")),
    ("mlp", dict(mlp="gelu")),  # lmjax's default config: rotary positions with a GELU MLP
])
def test_layout_refuses_what_neither_layout_has(key, changes):
    m = config_lib.ModelConfig(**{"num_heads": 4, "width": 64, "mlp": "swiglu", **changes})
    with pytest.raises(ConfigError, match=f"config.model.{key}="):
        layout_for(m)


def test_cli_export_refusal_is_one_line_and_writes_nothing(tmp_path, capsys):
    c = run_config("gpt2")
    c.model.positions = "sinusoidal"
    # Refused from the workdir's config.json, before any checkpoint is read.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(config_lib.resolve(c).to_dict()))
    code, _, err = lmjax_cli(capsys, "export", "--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "hf"))
    assert code == 2 and error_lines(err) == [
        "error: config.model.positions='sinusoidal' cannot be exported: GPT-2 has learned positions and "
        "LLaMA rotary ones ('learned' or 'rope')"]
    assert not (tmp_path / "hf").exists()


def test_import_refusals(tmp_path, hf_dir, capsys):
    out, _ = hf_dir
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((out / "config.json").read_text())
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConversionError, match="pytorch_model.bin .*safetensors"):
        import_dir(tmp_path / "bin", tmp_path / "w1")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConversionError, match="model_type 'bert'"):
        import_dir(tmp_path / "bert", tmp_path / "w2")
    with pytest.raises(LmjaxError, match="config.model.num_layers is fixed"):
        import_dir(out, tmp_path / "w3", overrides={"model": {"num_layers": 3}})
    with pytest.raises(ConfigError, match="replicas=2: an import is one model"):
        import_dir(out, tmp_path / "w5", overrides={"train": {"replicas": 2}})
    assert not (tmp_path / "w5").exists()
    code, _, err = lmjax_cli(capsys, "import", "--from", str(tmp_path / "nothing"), "--workdir", str(tmp_path / "w4"))
    assert code == 2 and len(error_lines(err)) == 1 and "config.json" in err


def test_hf_tokenizer_keys_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="tokenizer_path goes with config.data.tokenizer='hf'"):
        config_lib.DataConfig(tokenizer="hf")
    with pytest.raises(ConfigError, match="tokenizer_path goes with"):
        config_lib.DataConfig(tokenizer_path=str(tmp_path / "tokenizer.json"))
    from lmjax.data.tokenizers import HfTokenizer
    from lmjax.errors import DataError

    with pytest.raises(DataError, match="cannot read config.data.tokenizer_path .*No such file"):
        HfTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="is not a readable tokenizer.json"):
        HfTokenizer.from_file(str(tmp_path / "bad.json"))


def test_cli_import_overrides_at_their_schema_default_apply(hf_dir, tmp_path, capsys):
    """An override equal to the schema default is still the user's: the LLaMA import's context
    (48, from config.json) becomes 128, and no other key is taken from the command line."""
    from lmjax.cli.main import main

    out, _ = hf_dir
    if "llama" not in out.name:
        pytest.skip("one layout is enough")
    assert config_lib.TrainConfig().seq_len == 128 and config_lib.DataConfig().corpus == "stdlib"
    code = main(["import", "--from", str(out), "--workdir", str(tmp_path / "w"),
                 "--config.train.seq_len=128", "--config.data.corpus=stdlib"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "w" / "config.json").read_text())
    assert saved["train"]["seq_len"] == 128 and saved["data"]["corpus"] == "stdlib"
    assert saved["data"]["tokenizer"] == "hf"  # the directory's tokenizer.json: not overridden


def test_import_without_tokenizer_json_takes_the_given_tokenizer(tmp_path):
    """A research checkpoint saved with `save_pretrained` alone: its tokenizer is named with
    config.data.tokenizer (here byte, for a 256-row model); without it, one line says how."""
    torch.manual_seed(0)
    config = HF_CONFIGS["llama_gqa"]()
    config.vocab_size = 256
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(tmp_path / "hf")
    with pytest.raises(ConversionError, match="no tokenizer.json; .*--config.data.tokenizer=byte") as e:
        import_dir(tmp_path / "hf", tmp_path / "w1")
    assert "AutoTokenizer" not in str(e.value)
    import_dir(tmp_path / "hf", tmp_path / "w2", overrides={"data": {"tokenizer": "byte"}})
    run = lmjax.load(tmp_path / "w2")
    assert run.tokenizer.kind == "byte" and run.model_cfg.vocab_size == 256
    ids = np.random.default_rng(1).integers(0, 256, (1, 16))
    assert np.abs(run.logits(ids) - hf_logits(model.eval(), ids)).max() < ATOL
