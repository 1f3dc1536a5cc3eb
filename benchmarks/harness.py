"""Training and sampling throughput of one config, on synthetic data.

    python -m benchmarks.harness --config configs/NAME.py[:ARG] [--config.KEY=VAL ...]
        [--steps 30] [--warmup 5] [--sample_tokens 128] [--out benchmarks/results] [--no_append]

Batches are random token ids [batch_size, seq_len + 1] drawn once on the host (vocabulary
`config.data.vocab_size`, or 256 when the config derives its vocabulary from a tokenizer) and
placed on the mesh once, so the figures are those of the model and optimiser, not of the data
pipeline. Measured:

- time to first step: make_mesh + make_setup + init_state + the first train_step (compile
  included), synchronised with block_until_ready;
- steady-state step time: median (and p10/p90) of `--steps` steps after `--warmup` more, each
  synchronised; tokens/s, model FLOP/s (`flops_per_token * tokens/s`) and MFU against
  `hardware.peak_flops()`;
- peak device memory (`memory_stats()['peak_bytes_in_use']`; None on CPU);
- sampling tokens/s with the KV cache (`lmjax.models.generate`), batch 1 and 8, after a warm-up call.

Writes `<out>/<UTC timestamp>-<config stem>.json`, appends a row to benchmarks/RESULTS.md
(unless --no_append) and prints the JSON record as the last line of stdout.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import socket
import sys
import time
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from lmjax import config as config_lib
from lmjax.cli.main import check_overrides
from lmjax.errors import ConfigError, LmjaxError

REPO = Path(__file__).resolve().parents[1]
RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"
SYNTHETIC_VOCAB = 256  # when config.data.vocab_size is 0 (byte/char tokenizers derive theirs)
SAMPLE_BATCHES = (1, 8)
SAMPLE_PROMPT_LEN = 8

RESULTS_HEADER = """\
# Benchmark results

Rows are appended by `python -m benchmarks.harness` (see `benchmarks/README.md`); the full record
of each run (versions, resolved config, percentiles) is the JSON file under `benchmarks/results/`.
Data is synthetic (random token ids placed on the device once), so these figures are those of the
model and optimiser, not of the input pipeline.

Columns:
- **date**: UTC time of the run.
- **device**: device count x `device_kind` (`cpu` is the whole host, one JAX device).
- **config**: config file (and `:ARG`) plus command-line overrides.
- **params**: parameter count, embeddings included (tied embeddings counted once).
- **tokens/step**: `batch_size * seq_len` (global).
- **step ms**: median wall time of one synchronised train step (forward, backward, AdamW update)
  over the timed steps, after warm-up.
- **tokens/s**: tokens/step / median step time.
- **MFU**: model FLOP/s (`lmjax.models.flops_per_token` x tokens/s: 6N + 6VD + attention, no
  remat recompute) over the device peak (`lmjax.training.hardware.peak_flops`: datasheet dense
  bf16 on accelerators; on CPU, the measured float32 2048^3 matmul rate of the machine).
- **first step s**: make_mesh + make_setup + parameter init + first train step, compile included.
- **peak mem**: peak device memory (`memory_stats()['peak_bytes_in_use']`), or `-` where the
  backend reports none (CPU).
- **sample tok/s**: new tokens per second from `lmjax.models.generate` (KV cache, prompt of 8
  tokens, `n` new tokens, prefill included), at batch 1 / batch 8.

| date | device | config | params | tokens/step | step ms | tokens/s | MFU | first step s | peak mem | sample tok/s (B=1 / B=8) |
|---|---|---|---|---|---|---|---|---|---|---|
"""


def _define_flags(fv: flags.FlagValues) -> None:
    config_flags.DEFINE_config_file(
        "config", None, "Config file (configs/NAME.py[:ARG]).", flag_values=fv, lock_config=False)
    flags.DEFINE_integer("steps", 30, "Timed train steps.", flag_values=fv)
    flags.DEFINE_integer("warmup", 5, "Untimed train steps after the first one.", flag_values=fv)
    flags.DEFINE_integer("sample_tokens", 128, "New tokens per sampling call (capped by seq_len - 8; "
                         "0 skips sampling).", flag_values=fv)
    flags.DEFINE_string("out", str(REPO / "benchmarks" / "results"), "Folder for the JSON record.",
                        flag_values=fv)
    flags.DEFINE_boolean("no_append", False, "Do not append a row to benchmarks/RESULTS.md.",
                         flag_values=fv)
    flags.DEFINE_string("results_md", str(RESULTS_MD), "The markdown table rows are appended to.",
                        flag_values=fv)
    flags.DEFINE_integer("num_devices", 0, "Use the first N devices (0: all).", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of the synthetic batch and of the parameters.", flag_values=fv)


def parse(argv: list[str]) -> flags.FlagValues:
    """Flags as `lmjax train` parses them (lmjax/cli/main.py): config_flags reads the
    --config.KEY overrides from sys.argv, so sys.argv is swapped for the parse."""
    check_overrides(argv)
    fv = flags.FlagValues()
    full_argv = ["benchmarks.harness"] + list(argv)
    saved, sys.argv = sys.argv, full_argv
    try:
        _define_flags(fv)
        fv(full_argv)
        if fv.config is None:
            raise ConfigError("no config: pass --config configs/NAME.py")
        fv.config.to_dict()  # loading errors surface here (a failed load is a lazy error object)
    except flags.Error as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        msg = lines[0]
        if "Traceback" in str(e):  # an exception inside get_config: name it, not the traceback
            msg = f"{lines[0]} {lines[-1].strip()}"
        raise ConfigError(msg) from e
    except (OSError, AttributeError, KeyError, ValueError) as e:
        raise ConfigError(f"cannot load config: {str(e).splitlines()[0]}") from e
    finally:
        sys.argv = saved
    if fv.steps < 1 or fv.warmup < 0 or fv.sample_tokens < 0 or fv.num_devices < 0:
        raise ConfigError("--steps must be >= 1; --warmup, --sample_tokens and --num_devices >= 0")
    return fv


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _finite(x):
    return x if x is None or math.isfinite(x) else None


def _versions() -> dict:
    import flax
    import jax
    import jaxlib
    import numpy as np
    import optax

    return {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__}


def build_train_step(setup, config):
    """The jitted train step as make_setup builds it, as a bare `jax.jit` object (for `.lower()`
    / AOT compilation); trace, lower and call it inside `steps.mesh_context(setup.mesh)`."""
    import jax

    from lmjax.training import sharding
    from lmjax.training.steps import make_train_step

    return jax.jit(
        make_train_step(setup.model, setup.optimizer, config.train),
        in_shardings=(setup.state_shardings, sharding.batch_sharding(setup.mesh)),
        out_shardings=(setup.state_shardings, sharding.replicated(setup.mesh)),
        donate_argnums=0,
    )


def abstract_batch(config, mesh):
    """ShapeDtypeStruct of a global batch [batch_size, seq_len + 1] int32, sharded over the batch axes."""
    import jax
    import jax.numpy as jnp

    from lmjax.training import sharding

    shape = (config.train.batch_size, config.train.seq_len + 1)
    return jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding.batch_sharding(mesh))


def peak_memory(devices) -> int | None:
    peaks = []
    for d in devices:
        try:
            stats = d.memory_stats()
        except Exception:  # noqa: BLE001 - backends without the query
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def run_benchmark(config, *, steps: int, warmup: int, sample_tokens: int, devices=None,
                  seed: int = 0) -> dict:
    """All the figures for one resolved config (see the module docstring)."""
    import jax
    import numpy as np

    from lmjax.models import flops_per_token, generate, param_count
    from lmjax.training import hardware, sharding
    from lmjax.training.steps import make_setup

    devices = list(jax.devices() if devices is None else devices)
    tc = config.train
    vocab = config.data.vocab_size if config.data.vocab_size > 0 else SYNTHETIC_VOCAB
    host_batch = np.random.default_rng(seed).integers(
        0, vocab, size=(tc.batch_size, tc.seq_len + 1), dtype=np.int32)

    t0 = time.perf_counter()
    mesh = sharding.make_mesh(config.mesh, devices)
    sharding.check_batch(tc.batch_size, tc.grad_accum, mesh, jax.process_count())
    setup = make_setup(config, vocab_size=vocab, mesh=mesh)
    batch = sharding.global_batch(host_batch, mesh)
    state = jax.block_until_ready(setup.init_state(jax.random.key(seed)))
    t_init = time.perf_counter()
    state, metrics = jax.block_until_ready(setup.train_step(state, batch))
    t_first = time.perf_counter()
    _log(f"first step after {t_first - t0:.2f} s (setup + init {t_init - t0:.2f} s), "
         f"loss {float(metrics['loss']):.3f}")

    for _ in range(warmup):
        state, metrics = jax.block_until_ready(setup.train_step(state, batch))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, metrics = jax.block_until_ready(setup.train_step(state, batch))
        times.append(time.perf_counter() - t)
    times_np = np.asarray(times)
    step_s = float(np.median(times_np))
    loss = float(metrics["loss"])

    model_cfg = setup.model_cfg
    tokens_per_step = tc.batch_size * tc.seq_len
    tok_s = tokens_per_step / step_s
    flops_tok = flops_per_token(model_cfg, tc.seq_len)
    peak = hardware.peak_flops(devices)
    matmul_now = None
    if devices[0].platform == "cpu":
        # The CPU peak is measured once and cached; a figure taken on a loaded machine would skew
        # every MFU after it, so measure again now and say when they disagree.
        matmul_now = hardware.measure_cpu_matmul_flops()
        if abs(matmul_now / peak - 1) > 0.25:
            _log(f"warning: f32 matmul now {matmul_now / 1e9:.0f} GFLOP/s vs cached CPU peak "
                 f"{peak / 1e9:.0f} GFLOP/s ({hardware.cache_dir() / 'cpu_peak_flops.json'}): "
                 "the machine is loaded now, or the cached figure was taken under load")
    mem = peak_memory(devices)
    _log(f"step {step_s * 1e3:.2f} ms median over {steps} (p10 {np.percentile(times_np, 10) * 1e3:.2f}, "
         f"p90 {np.percentile(times_np, 90) * 1e3:.2f}), {tok_s:,.0f} tokens/s, "
         f"MFU {tok_s * flops_tok / peak:.1%}")

    sampling = {}
    n_new = min(sample_tokens, tc.seq_len - SAMPLE_PROMPT_LEN)
    if n_new > 0:
        for b in SAMPLE_BATCHES:
            prompts = [[1] * SAMPLE_PROMPT_LEN] * b
            generate(model_cfg, state.params, prompts, max_new_tokens=n_new)  # compile + warm up
            t = time.perf_counter()
            generate(model_cfg, state.params, prompts, max_new_tokens=n_new)  # returns host arrays
            dt_s = time.perf_counter() - t
            sampling[str(b)] = {"batch": b, "new_tokens": n_new, "seconds": dt_s,
                                "tokens_per_s": b * n_new / dt_s}
            _log(f"sampling batch {b}: {n_new} new tokens in {dt_s * 1e3:.1f} ms, "
                 f"{b * n_new / dt_s:,.0f} tokens/s")
    mem_after = peak_memory(devices)

    return {
        "vocab_size": vocab,
        "synthetic_data": True,
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "params": param_count(model_cfg),
        "params_non_embedding": param_count(model_cfg, embeddings=False),
        "tokens_per_step": tokens_per_step,
        "flops_per_token": flops_tok,
        "time_to_first_step_s": t_first - t0,
        "setup_and_init_s": t_init - t0,
        "first_step_s": t_first - t_init,
        "steps_timed": steps,
        "warmup_steps": warmup,
        "step_time_s": {"median": step_s, "p10": float(np.percentile(times_np, 10)),
                        "p90": float(np.percentile(times_np, 90)), "mean": float(times_np.mean()),
                        "min": float(times_np.min()), "max": float(times_np.max())},
        "tokens_per_s": tok_s,
        "model_flops_per_s": tok_s * flops_tok,
        "peak_flops": _finite(peak),
        "cpu_matmul_flops_now": matmul_now,
        "mfu": _finite(tok_s * flops_tok / peak),
        "peak_memory_bytes_train": mem,
        "peak_memory_bytes": mem_after,
        "final_loss": _finite(loss),
        "sampling": sampling,
    }


def _config_label(fv, argv: list[str]) -> tuple[str, str, list[str]]:
    """(stem, 'file[:arg]', overrides) of the --config flag and the --config.KEY=VAL arguments."""
    filename = fv["config"].config_filename or ""
    stem = Path(filename).stem or "config"
    raw = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if raw is None and "--config" in argv and argv.index("--config") + 1 < len(argv):
        raw = argv[argv.index("--config") + 1]
    arg = raw.split(":", 1)[1] if raw and ":" in raw else ""
    overrides = []
    for i, a in enumerate(argv):
        if a.startswith("--config."):
            if "=" not in a and i + 1 < len(argv):
                a = f"{a}={argv[i + 1]}"
            overrides.append(a)
    return stem, f"{stem}{':' + arg if arg else ''}", overrides


def _fmt_bytes(n) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def results_row(rec: dict) -> str:
    f = rec["figures"]
    config = f"`{rec['config_name']}`" + (" " + " ".join(f"`{o}`" for o in rec["overrides"])
                                          if rec["overrides"] else "")
    mfu = "-" if f["mfu"] is None else f"{f['mfu']:.1%}"
    samp = " / ".join(f"{f['sampling'][str(b)]['tokens_per_s']:,.0f}" for b in SAMPLE_BATCHES
                      if str(b) in f["sampling"]) or "-"
    if f["sampling"]:
        samp += f" (n={next(iter(f['sampling'].values()))['new_tokens']})"
    return (f"| {rec['date'][:16].replace('T', ' ')} | {rec['device']['count']} x {rec['device']['kind']} "
            f"| {config} | {f['params'] / 1e6:.2f}M | {f['tokens_per_step']:,} "
            f"| {f['step_time_s']['median'] * 1e3:,.1f} | {f['tokens_per_s']:,.0f} | {mfu} "
            f"| {f['time_to_first_step_s']:.1f} | {_fmt_bytes(f['peak_memory_bytes'])} | {samp} |")


def append_row(path: Path, row: str) -> None:
    """Add the row at the end of the results table (the one whose header starts `| date |`);
    notes and other tables below it stay where they are."""
    text = path.read_text() if path.exists() else RESULTS_HEADER
    lines = text.splitlines()
    header = next((i for i, line in enumerate(lines) if line.startswith("| date |")), None)
    if header is None:  # no results table yet: start one at the end
        lines += ["", *RESULTS_HEADER.rstrip("\n").splitlines()[-2:]]
        header = len(lines) - 2
    at = header
    while at + 1 < len(lines) and lines[at + 1].startswith("|"):
        at += 1
    lines.insert(at + 1, row)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark for the flags in `argv` (without the program name); returns the record."""
    argv = sys.argv[1:] if argv is None else list(argv)
    fv = parse(argv)
    config = config_lib.resolve(fv.config)
    stem, config_name, overrides = _config_label(fv, argv)

    import jax

    devices = jax.devices()[: fv.num_devices] if fv.num_devices else jax.devices()
    d0 = devices[0]
    if d0.platform == "cpu" and len(devices) > 1:
        _log(f"warning: {len(devices)} CPU devices (fake devices from XLA_FLAGS?); CPU timings "
             "are only meaningful on one device")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if d0.platform == "cpu" and load is not None and load > 1:
        _log(f"warning: load average {load:.2f} > 1: other processes share the CPU; "
             "repeat when the machine is quiet before reporting these figures")
    now = dt.datetime.now(dt.timezone.utc)
    _log(f"{config_name} {' '.join(overrides)} on {len(devices)} x {d0.device_kind}")
    figures = run_benchmark(config, steps=fv.steps, warmup=fv.warmup, sample_tokens=fv.sample_tokens,
                            devices=devices, seed=fv.seed)
    rec = {
        "date": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "config_name": config_name,
        "config_file": fv["config"].config_filename,
        "overrides": overrides,
        "argv": argv,
        "device": {"kind": d0.device_kind, "count": len(devices), "platform": d0.platform,
                   "total_count": jax.device_count(), "process_count": jax.process_count()},
        "host": {"hostname": socket.gethostname(), "cpu_count": os.cpu_count(),
                 "machine": platform.machine(), "processor": platform.processor(),
                 "load_avg_1m_start": load,
                 "load_avg_1m_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "versions": _versions(),
        "config": config.to_dict(),
        "figures": figures,
    }
    out = Path(fv.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{now.strftime('%Y%m%dT%H%M%SZ')}-{stem}.json"
    path.write_text(json.dumps(rec, indent=2) + "\n")
    rec["json_path"] = str(path)
    if not fv.no_append:
        append_row(Path(fv.results_md), results_row(rec))
        _log(f"appended a row to {fv.results_md}")
    _log(f"wrote {path}")
    print(json.dumps(rec))
    return rec


if __name__ == "__main__":
    try:
        main()
    except LmjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
