"""The config schema: one definition per key, and the errors it gives."""

import dataclasses

import ml_collections
import pytest

from lmjax import config as config_lib
from lmjax.errors import ConfigError


def test_every_key_has_a_default_help_and_type():
    c = config_lib.base_config()
    for name, cls in config_lib.SECTIONS.items():
        for f in config_lib.keys(cls):
            assert f.metadata["help"], f"config.{name}.{f.name} has no help"
            assert type(c[name][f.name]) is type(f.default)
    assert sorted(config_lib.flat_keys()) == sorted(config_lib.flat_keys(c))


def test_resolve_round_trips_and_fills_the_model_dimensions():
    c = config_lib.base_config()
    c.model.size = "nano"
    c.train.seq_len = 64
    cfg = config_lib.resolve(c)
    assert (cfg.model.num_layers, cfg.model.num_heads, cfg.model.width) == config_lib.SIZES["nano"]
    assert cfg.model.max_len == 64 and cfg.model.vocab_size == 0
    assert config_lib.resolve(cfg.to_dict()) == cfg
    assert config_lib.resolve(cfg) is cfg
    assert "vocab_size" not in cfg.to_dict()["model"]  # derived, not a key
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.width = 3


@pytest.mark.parametrize("section, key, value, match", [
    ("model", "widht", 3, "unknown config key 'config.model.widht'; did you mean 'config.model.width'"),
    ("train", "steps", "ten", "config.train.steps must be int, got str"),
    ("train", "lr", True, "config.train.lr must be float"),
    ("model", "attention", "flash", "config.model.attention='flash' is not one of"),
    ("model", "size", "huge", "config.model.size='huge' is not one of"),
    ("model", "num_layers", 0, "config.model.num_layers must be positive, got 0"),
    ("train", "loss_chunk", 3, "must be 0 \\(off\\) or divide config.train.seq_len=128"),
    ("mesh", "fsdp", 0, "config.mesh sizes must be positive or -1"),
    ("data", "val_fraction", 0.0, "config.data.val_fraction must be in \\(0, 1\\)"),
])
def test_bad_values_name_the_key(section, key, value, match):
    d = config_lib.base_config().to_dict()
    d[section][key] = value
    with pytest.raises(ConfigError, match=match):
        config_lib.resolve(ml_collections.ConfigDict(d))


def test_ints_are_accepted_for_floats():
    d = config_lib.base_config().to_dict()
    d["train"]["lr"] = 1
    assert config_lib.resolve(d).train.lr == 1.0 and isinstance(config_lib.resolve(d).train.lr, float)


def test_identity_keys():
    keys = config_lib.identity_keys()
    assert "model.width" in keys and "data.corpus" in keys and "train.seq_len" in keys
    assert "model.attention_impl" not in keys  # which kernel ran does not change the parameters
    assert "train.lr" not in keys
    assert "data.val_part" not in keys  # what is evaluated: a run continues under another half


def test_keys_of_a_family_name_it():
    """Keys that only some families use name them, so other families refuse them; the keys every
    family shares (family itself) name none."""
    by_name = {f.name: f for f in config_lib.keys(config_lib.ModelConfig)}
    assert by_name["attention"].metadata["families"] == config_lib.TRANSFORMERS
    assert by_name["width"].metadata["families"] == config_lib.NEURAL
    assert by_name["order"].metadata["families"] == ("ngram",)
    assert by_name["family"].metadata["families"] is None
    assert config_lib.resolve({"model": {"family": "decoder", "attention": "gqa", "num_kv_heads": 2}})


def test_resume_is_refused_only_for_keys_that_change_what_is_computed(tmp_path):
    """Where the corpora, caches and tokenizer.json lie, and remat (a memory setting), never
    block a resume (a tokenizer's contents are checked against the checkpoint's instead)."""
    from lmjax.training.resume import check_workdir
    from lmjax.workdir import Workdir

    c = config_lib.base_config()
    c.data.update(tokenizer="hf", tokenizer_path="/old/tokenizer.json", data_dir="/old/data",
                  cache_dir="/old/cache")
    saved = config_lib.resolve(c).to_dict()
    wd = Workdir(tmp_path).create()
    wd.write_config(saved)
    moved = {**saved, "data": {**saved["data"], "tokenizer_path": "/new/tokenizer.json",
                               "data_dir": "/new/data", "cache_dir": "/new/cache"},
             "model": {**saved["model"], "remat": True}}
    check_workdir(wd, moved, force=False)
    wider = {**saved, "model": {**saved["model"], "width": 512}}
    with pytest.raises(ConfigError, match="config.model.width: 256 -> 512"):
        check_workdir(wd, wider, force=False)


def test_readme_config_table_lists_every_key():
    """README.md's table of config keys names every key of the schema, in its section's row (a
    key named only inside parentheses, among allowed values, or as a family does not count)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    lines = readme[readme.index("| section | keys |"):].splitlines()[2:]
    rows = {}
    for line in lines[:lines.index("")] if "" in lines else lines:
        _, section, keys, _ = line.split("|")
        keys = re.sub(r"\([^()]*\)", "", keys)  # allowed values and notes
        rows[section.strip().strip("`")] = re.sub(r"`\w+` only:", "", keys)  # family names
    missing = [dotted for dotted in config_lib.flat_keys()
               for section, k in [dotted.split(".")] if f"`{k}`" not in rows.get(section, "")]
    assert not missing, f"README.md's config table lacks {missing}"
