"""The benchmark harness runs end to end, and the GPU benchmark config compiles ahead of time."""

import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from lmjax import config as config_lib
from lmjax.training import sharding
from lmjax.training.steps import make_setup, mesh_context

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `benchmarks` is a folder of the checkout, not an installed package
    sys.path.insert(0, str(REPO))
from benchmarks import harness  # noqa: E402


def load_config_file(path: Path, arg=None):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_harness_smoke(tmp_path):
    results_md = tmp_path / "RESULTS.md"
    rec = harness.main([
        "--config", str(REPO / "configs" / "default.py"),
        "--config.model.num_layers=2", "--config.model.width=64",
        "--config.train.seq_len=32", "--config.train.batch_size=8",
        "--steps", "3", "--warmup", "1", "--sample_tokens", "8",
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
    assert f["sampling"]["1"]["tokens_per_s"] > 0 and f["sampling"]["8"]["tokens_per_s"] > 0
    assert saved["config"]["model"]["num_layers"] == 2 and saved["device"]["count"] == 1
    assert saved["overrides"][0] == "--config.model.num_layers=2"
    assert not results_md.exists()  # --no_append
    # The row format renders from the record.
    harness.append_row(results_md, harness.results_row(saved))
    text = results_md.read_text()
    assert text.startswith("# Benchmark results") and "`default` `--config.model.num_layers=2`" in text


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
    step = harness.build_train_step(setup, config)
    with mesh_context(mesh):
        lowered = step.lower(setup.abstract_state, harness.abstract_batch(config, mesh))
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
