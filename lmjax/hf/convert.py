"""`lmjax export` and `lmjax import`: a decoder run to and from a Hugging Face directory.

    export_run(workdir, out)  ->  out/config.json, model.safetensors (or shards and
                                  model.safetensors.index.json), generation_config.json,
                                  tokenizer.json and tokenizer_config.json, lmjax.json
    import_dir(src, workdir)  ->  workdir/config.json and a step-0 checkpoint (parameters and a
                                  fresh optimizer state), so eval, sample, train (continue
                                  pretraining), finetune and lmjax.load work on it

lmjax.json (the run's config and tokenizer) makes export then import exact, tokenizer included;
a directory without it brings its tokenizer.json in as config.data.tokenizer='hf'. A
config.data.tokenizer given as an override is used instead (the only way for a directory with
neither, e.g. one written by `save_pretrained` alone).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from lmjax import config as config_lib
from lmjax.errors import ConfigError
from lmjax.hf.layouts import ConversionError, from_hf, hf_config, layout_for, model_keys, to_hf
from lmjax.workdir import Workdir, read_json, write_json

LMJAX_JSON = "lmjax.json"
INDEX = "model.safetensors.index.json"
# Longest context an imported rotary model gets by default (its KV cache is allocated at this
# length); config.train.seq_len overrides it.
IMPORT_MAX_SEQ_LEN = 4096
EXPORT_DTYPES = ("float32", "bfloat16")
TOKENIZER_KEYS = ("tokenizer", "vocab_size", "sp_model_type", "tokenizer_path")  # of config.data


def need_extra(command: str) -> None:
    """A one-line error when the hf extra is missing (export needs safetensors, huggingface_hub
    and transformers' tokenizer classes; import needs safetensors)."""
    import importlib.util

    missing = [m for m in ("safetensors", "huggingface_hub", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"{command} needs the Hugging Face extra ({', '.join(missing)} missing): "
                          "pip install 'lmjax[hf]'")


def export_run(workdir: str | os.PathLike, out: str | os.PathLike, *, step: int | None = None,
               max_shard_size: str | int = "5GB", dtype: str = "float32", replica: int | None = None) -> dict:
    """Write the run in `workdir` (latest checkpoint, or `step`; of a run of several replicas,
    `replica`, default 0) as a Hugging Face directory `out` (which must not exist yet, or be
    empty). Returns {'layout', 'files', 'params'}."""
    need_extra("lmjax export")
    import lmjax
    from huggingface_hub import split_state_dict_into_shards_factory
    from safetensors.numpy import save_file

    from lmjax.hf.tokenizer import save_hf_tokenizer

    if dtype not in EXPORT_DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not one of {', '.join(EXPORT_DTYPES)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} already exists and is not an empty folder; choose a new one")
    saved = Workdir(workdir).config()
    if saved is not None and "finetune" not in saved:  # refuse before restoring anything
        layout_for(config_lib.resolve(saved).model)
    run = lmjax.load(workdir, step, replica=replica)
    if run.finetune is not None:
        raise ConfigError(f"{workdir} is a classifier fine-tuned by `lmjax finetune`; export its pretrained "
                          f"run ({run.finetune.init}) instead")
    m = run.model_cfg
    layout = layout_for(m)
    tensors = to_hf(m, run.params, layout)
    if dtype == "bfloat16":
        import ml_dtypes

        tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        split = split_state_dict_into_shards_factory(
            tensors, get_storage_size=lambda a: a.nbytes, max_shard_size=max_shard_size,
            filename_pattern="model{suffix}.safetensors")
        for filename, names in split.filename_to_tensors.items():
            save_file({n: tensors[n] for n in names}, str(tmp / filename), metadata={"format": "pt"})
        if split.is_sharded:
            write_json(tmp / INDEX, {"metadata": split.metadata, "weight_map": split.tensor_to_filename})
        write_json(tmp / "config.json", {**hf_config(m, layout), "torch_dtype": dtype})
        s = run.config.sample
        write_json(tmp / "generation_config.json", {
            "do_sample": s.temperature > 0, "temperature": s.temperature or 1.0, "top_k": s.top_k,
            "top_p": s.top_p, "bos_token_id": None, "eos_token_id": None, "pad_token_id": None})
        save_hf_tokenizer(run.tokenizer, tmp)
        write_json(tmp / LMJAX_JSON, {"workdir": str(workdir), "step": run.step, "layout": layout,
                                      "config": run.config.to_dict(), "tokenizer": run.tokenizer.to_json()})
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"layout": layout, "step": run.step, "files": sorted(p.name for p in out.iterdir()),
            "params": int(sum(v.size for v in tensors.values()))}


def _check_same_model(src: Path, hf: dict, m, layout: str) -> None:
    """lmjax.json describes the model config.json does (else someone edited one of them)."""
    m = m.replace(vocab_size=hf["vocab_size"])
    for field, value in hf_config(m, layout).items():
        if field in hf and field not in ("torch_dtype", "architectures") and hf[field] != value:
            raise ConversionError(f"{src}/config.json has {field}={hf[field]!r} but its {LMJAX_JSON} implies "
                                  f"{value!r}; delete {LMJAX_JSON} to import from config.json alone")


class _Tensors:
    """The tensors of a Hugging Face directory's safetensors file(s), read lazily by name. GPT-2
    checkpoints saved from the bare model lack the 'transformer.' prefix; both spellings work."""

    def __init__(self, src: Path):
        from safetensors import safe_open

        if (src / INDEX).exists():
            weight_map = read_json(src / INDEX)["weight_map"]
        elif (src / "model.safetensors").exists():
            weight_map = None
        else:
            pickled = sorted(p.name for p in src.glob("pytorch_model*.bin"))
            if pickled:
                raise ConversionError(
                    f"{src} holds {pickled[0]} (a PyTorch pickle), which lmjax does not read; convert it "
                    "to safetensors: python -c \"import sys, transformers as t; "
                    "t.AutoModelForCausalLM.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[1])\" "
                    f"{src}")
            raise ConversionError(f"{src} has no model.safetensors (nor {INDEX}); point --from at a "
                                  "Hugging Face model directory")
        files = sorted(set(weight_map.values())) if weight_map else ["model.safetensors"]
        self.files = {f: safe_open(str(src / f), framework="numpy") for f in files}
        self.where = {k: f for f, h in self.files.items() for k in h.keys()}

    def _name(self, name: str) -> str | None:
        for candidate in (name, name.removeprefix("transformer.")):
            if candidate in self.where:
                return candidate
        return None

    def __contains__(self, name: str) -> bool:
        return self._name(name) is not None

    def __getitem__(self, name: str) -> np.ndarray:
        key = self._name(name)
        return self.files[self.where[key]].get_tensor(key)


def _import_tokenizer(src: Path, workdir: Path, vocab_size: int, lmjax_json: dict | None,
                      chosen: dict | None):
    """(tokenizer, config.data keys): the one `chosen` describes (config.data, when the user set
    config.data.tokenizer); else lmjax's own when the directory came from `lmjax export`; else
    its tokenizer.json, copied into the workdir."""
    from lmjax.data import build_tokenizer, prepare
    from lmjax.data.tokenizers import ByteTokenizer, HfTokenizer, tokenizer_from_json

    if chosen is not None:  # built as `lmjax train` builds it; only byte and hf need no corpus
        keys = {"vocab_size": chosen["vocab_size"] or vocab_size} if chosen["tokenizer"] == "hf" else {}
        d = config_lib.DataConfig(**{**chosen, **keys})
        if d.tokenizer == "byte" and vocab_size == 256:  # bytes alone: no end-of-document id
            return ByteTokenizer(eod=False), keys
        if d.tokenizer in ("byte", "hf"):
            return build_tokenizer(d.tokenizer, "", vocab_size=d.vocab_size, path=d.tokenizer_path), keys
        return prepare(d).tokenizer, keys
    if lmjax_json is not None:  # the keys that fix the tokenizer; the rest of config.data is the user's
        data = lmjax_json["config"]["data"]
        return tokenizer_from_json(lmjax_json["tokenizer"]), {k: data[k] for k in TOKENIZER_KEYS if k in data}
    if not (src / "tokenizer.json").exists():
        raise ConversionError(
            f"{src} has no tokenizer.json; name the tokenizer its model was trained with: "
            "--config.data.tokenizer=byte (256 ids, or 257 with lmjax's end-of-document id), or --config.data.tokenizer=hf "
            "--config.data.tokenizer_path=PATH/tokenizer.json (char and sentencepiece are rebuilt "
            "from config.data.corpus)")
    path = workdir.resolve() / "tokenizer.json"
    tokenizer = HfTokenizer.from_file(str(src / "tokenizer.json"), vocab_size)
    if tokenizer.vocab_size > vocab_size:
        raise ConversionError(f"{src}/tokenizer.json has {tokenizer.vocab_size} tokens, more than the "
                              f"model's vocab_size {vocab_size}")
    return tokenizer, {"tokenizer": "hf", "tokenizer_path": str(path), "vocab_size": vocab_size}


def import_dir(src: str | os.PathLike, workdir: str | os.PathLike, *, overrides: dict | None = None) -> dict:
    """A Hugging Face GPT-2 or LLaMA directory -> a new lmjax workdir holding a step-0 checkpoint.

    `overrides`: {'train': {'steps': 200}, 'data': {'corpus': ...}, ...}, applied last; model keys
    that config.json fixes may not change. Returns {'layout', 'params', 'seq_len', 'tokenizer'}."""
    import jax
    import jax.numpy as jnp

    from lmjax.checkpointing import Checkpointer
    from lmjax.run import _one_device_mesh
    from lmjax.training.steps import TrainState, make_setup

    need_extra("lmjax import")
    src, workdir = Path(src), Path(workdir)
    if not (src / "config.json").is_file():
        raise ConversionError(f"{src} has no config.json; point --from at a Hugging Face model directory")
    wd = Workdir(workdir)
    if wd.has_checkpoints() or wd.config() is not None:
        raise ConfigError(f"--workdir {workdir} already holds a run; import into a new folder")
    hf = read_json(src / "config.json")
    layout, keys, n_ctx = model_keys(hf)
    tensors = _Tensors(src)
    lmjax_json = read_json(src / LMJAX_JSON) if (src / LMJAX_JSON).exists() else None

    c = config_lib.base_config()
    if lmjax_json is not None:  # the exported run's own config (tokenizer, corpus, schedule), exactly
        for section, values in lmjax_json["config"].items():
            c[section].update(values)
        _check_same_model(src, hf, config_lib.resolve(c).model, layout)
    else:
        c.train.seq_len = n_ctx if keys["positions"] == "learned" else min(n_ctx, IMPORT_MAX_SEQ_LEN)
        c.model.update({"family": "decoder", **keys})
    overrides = overrides or {}
    for section, values in overrides.items():
        for k, v in values.items():
            config_lib.check_key(f"{section}.{k}")
            if section == "model" and k in keys and v != c.model[k]:
                raise ConfigError(f"config.model.{k} is fixed by {src}/config.json ({c.model[k]!r}); leave it out")
            c[section][k] = v
    if keys["positions"] == "learned" and c.train.seq_len != n_ctx:
        raise ConfigError(f"config.train.seq_len={c.train.seq_len}: the GPT-2 layout's position table has "
                          f"n_positions={n_ctx} rows, so the context must be {n_ctx}")
    if c.train.replicas != 1:  # one set of weights comes in: there is nothing to replicate
        raise ConfigError(f"config.train.replicas={c.train.replicas}: an import is one model; leave "
                          "replicas at 1 (several seeds start from random initialisations, not from weights)")

    workdir.mkdir(parents=True, exist_ok=True)
    chosen = c.data.to_dict() if "tokenizer" in overrides.get("data", {}) else None
    tokenizer, data_keys = _import_tokenizer(src, workdir, hf["vocab_size"], lmjax_json, chosen)
    c.data.update(data_keys)
    config = config_lib.resolve(c)
    setup = make_setup(config, vocab_size=tokenizer.vocab_size, mesh=_one_device_mesh())
    m = setup.model_cfg
    if m.vocab_size != hf["vocab_size"]:
        raise ConversionError(f"the tokenizer gives a vocabulary of {m.vocab_size}, config.json's "
                              f"vocab_size is {hf['vocab_size']}")
    params = from_hf(m, tensors, layout, setup.abstract_state.params)
    params = jax.device_put(params, setup.state_shardings.params)
    state = TrainState(step=jnp.array(0, jnp.int32), params=params, opt_state=setup.optimizer.init(params))
    if data_keys.get("tokenizer") == "hf":
        shutil.copyfile(src / "tokenizer.json", workdir / "tokenizer.json")
    cfg_dict = config.to_dict()
    wd.create().write_config(cfg_dict)
    ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints)
    ckpt.save(0, state, config=cfg_dict, tokenizer=tokenizer.to_json())
    ckpt.close()
    return {"layout": layout, "params": int(sum(x.size for x in jax.tree.leaves(params))),
            "seq_len": config.train.seq_len, "tokenizer": tokenizer.kind}
