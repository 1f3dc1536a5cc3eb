"""Training and sampling throughput of one config, on synthetic data.

    python -m benchmarks.harness --config configs/NAME.py[:ARG] [--config.KEY=VAL ...]
        [--steps 30] [--warmup 5] [--sample_tokens 128] [--out benchmarks/results] [--no_append]
        [--nodata_iterator] [--checkpoint_every N [--checkpoint_rounds 3]]

Training batches are random token ids [batch_size, seq_len + 1] drawn once on the host
(vocabulary `config.data.vocab_size`, or 256 when the config derives its vocabulary from a
tokenizer) and placed on the mesh once, so the training figures are those of the model and
optimiser; the data pipeline is timed on its own. Measured:

- time to first step: make_mesh + make_setup + init_state + the first train_step (compile
  included), synchronised with block_until_ready;
- steady-state step time: median (and p10/p90) of `--steps` steps after `--warmup` more, each
  synchronised; tokens/s, model FLOP/s (`flops_per_token * tokens/s`) and MFU against
  `hardware.peak_flops()`;
- peak device memory (`memory_stats()['peak_bytes_in_use']`; None on CPU);
- sampling tokens/s with the KV cache (`lmjax.models.generate`), batch 1 and 8, after a warm-up call;
- the input pipeline (unless --nodata_iterator): tokens/s of `lmjax.data.train_batch` on the
  config's real corpus plus the host-to-device transfer, and its ratio to the training tokens/s;
- checkpointing (with --checkpoint_every N > 0): the extra wall time of N train steps with one
  asynchronous checkpoint, as `train()` saves it, over the same N steps without.

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
DATA_MIN_SECONDS = 1.0  # the data iterator is timed for this long ...
DATA_MAX_BATCHES = 1000  # ... or this many batches, whichever comes first
PLACEHOLDER_TOKENIZER = {"kind": "byte"}  # saved with checkpoints when no corpus was loaded

# Notes on the columns added after the first rows were written; `append_row` adds them (and the
# columns) to an older RESULTS.md whose table lacks them.
NEW_COLUMN_NOTES = """\
- **data x train**: tokens/s of the input pipeline (`lmjax.data.train_batch` on the config's real
  corpus, then the synchronised host-to-device transfer) over the training tokens/s; `-`: not
  measured (`--nodata_iterator`, or a row older than the column).
- **ckpt overhead**: extra wall time of N train steps with one asynchronous checkpoint (as
  `lmjax train` saves) over the same N steps without, summed over interleaved rounds: (with -
  without) / without, N = `--checkpoint_every` (shown); `-`: not measured (the default).
"""

RESULTS_HEADER = """\
# Benchmark results

Rows are appended by `python -m benchmarks.harness` (see `benchmarks/README.md`); the full record
of each run (versions, resolved config, percentiles) is the JSON file under `benchmarks/results/`.
Training data is synthetic (random token ids placed on the device once), so the training figures
are those of the model and optimiser; the input pipeline is measured on its own (**data x train**).

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
  remat recompute) over the device peak (`lmjax.process.hardware.peak_flops`: datasheet dense
  bf16 on accelerators; on CPU, the measured float32 2048^3 matmul rate of the machine).
- **first step s**: make_mesh + make_setup + parameter init + first train step, compile included.
- **peak mem**: peak device memory (`memory_stats()['peak_bytes_in_use']`), or `-` where the
  backend reports none (CPU).
- **sample tok/s**: new tokens per second from `lmjax.models.generate` (KV cache, prompt of 8
  tokens, `n` new tokens, prefill included), at batch 1 / batch 8.
""" + NEW_COLUMN_NOTES + """
| date | device | config | params | tokens/step | step ms | tokens/s | MFU | first step s | peak mem | sample tok/s (B=1 / B=8) | data x train | ckpt overhead |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
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
    flags.DEFINE_boolean("data_iterator", True, "Also time the input pipeline on the config's real "
                         "corpus (train_batch + host-to-device transfer).", flag_values=fv)
    flags.DEFINE_integer("checkpoint_every", 0, "Also measure the cost of an asynchronous checkpoint "
                         "every N steps (0: skip).", flag_values=fv)
    flags.DEFINE_integer("checkpoint_rounds", 3, "Rounds of N steps with a checkpoint, each paired "
                         "with N steps without.", flag_values=fv)


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
    if fv.checkpoint_every < 0 or fv.checkpoint_rounds < 1:
        raise ConfigError("--checkpoint_every must be >= 0 and --checkpoint_rounds >= 1")
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


def load_corpus_tokens(config):
    """The config's real dataset, as `train()` loads it (`prepare(config.data)`), and the seconds it
    took: building the token cache on first use (tokenizer training included) is a one-time cost,
    recorded apart so it is never mistaken for the per-batch cost."""
    from lmjax.data import prepare

    t = time.perf_counter()
    data = prepare(config.data)
    dt_s = time.perf_counter() - t
    _log(f"corpus {config.data.corpus!r}: {len(data.train):,} train tokens "
         f"({data.tokenizer.kind} vocab {data.tokenizer.vocab_size}) loaded in {dt_s:.2f} s")
    return data, dt_s


def measure_data_iterator(data, config, mesh) -> dict:
    """Tokens/s of the input pipeline as `train()` drives it: `train_batch` (random windows
    gathered from the memory-mapped split) plus `global_batch` (the host-to-device transfer),
    synchronised, for DATA_MIN_SECONDS or DATA_MAX_BATCHES batches. The data must keep far ahead of
    the train step, or the accelerator waits on the host; this is the margin it has."""
    import jax
    import numpy as np

    from lmjax.data import train_batch
    from lmjax.training import sharding

    tc = config.train

    def one(step: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        local = train_batch(data.train, seed=tc.seed, step=step, batch_size=tc.batch_size,
                            seq_len=tc.seq_len, process_index=0, process_count=1)
        t1 = time.perf_counter()
        jax.block_until_ready(sharding.global_batch(local, mesh))
        return t1 - t0, time.perf_counter() - t1

    one(0)  # warm-up: first touch of the memory map, first transfer
    host, transfer = [], []
    start = time.perf_counter()
    while time.perf_counter() - start < DATA_MIN_SECONDS and len(host) < DATA_MAX_BATCHES:
        h, x = one(len(host) + 1)
        host.append(h)
        transfer.append(x)
    total = float(np.sum(host) + np.sum(transfer))
    tok_s = len(host) * tc.batch_size * tc.seq_len / total
    _log(f"data iterator: {len(host)} batches, {total / len(host) * 1e3:.3f} ms/batch "
         f"(train_batch {np.median(host) * 1e3:.3f} ms, transfer {np.median(transfer) * 1e3:.3f} ms "
         f"median), {tok_s:,.0f} tokens/s")
    return {"batches": len(host), "seconds": total, "tokens_per_s": tok_s,
            "batch_s_median": float(np.median(np.add(host, transfer))),
            "train_batch_s_median": float(np.median(host)),
            "transfer_s_median": float(np.median(transfer)),
            "train_tokens": len(data.train), "tokenizer": data.tokenizer.kind,
            "vocab_size": data.tokenizer.vocab_size}


def _run_steps(setup, state, batch, n: int):
    """n train steps dispatched back to back, as `train()` does, synchronised once at the end."""
    import jax

    for _ in range(n):
        state, _ = setup.train_step(state, batch)
    return jax.block_until_ready(state)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure_checkpoint_overhead(setup, state, batch, config, *, every: int, rounds: int,
                                tokenizer: dict):
    """How much slower training runs when it saves a checkpoint every `every` steps, as `train()`
    does (`Checkpointer(workdir, keep=...)`, asynchronous `save`), in a temporary workdir.

    Each round times `every` steps with one save against `every` steps without, interleaved
    (ABAB) so a change of machine load hits both alike. A with-save round is: save, the steps
    (during which orbax writes in the background), then wait for the write - one period of
    `train()` in steady state, where the next save waits for the last one; the wait is counted,
    and no write spills into the next without-save round. One untimed save first pays orbax's
    one-time start-up. Returns (the updated state, the figures)."""
    import tempfile

    from lmjax.checkpointing import Checkpointer

    cfg = config.to_dict()
    with tempfile.TemporaryDirectory(prefix="lmjax-bench-ckpt-") as workdir:
        ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints)
        try:
            t = time.perf_counter()
            ckpt.save(0, state, config=cfg, tokenizer=tokenizer)
            ckpt.wait()
            first_save_s = time.perf_counter() - t
            with_s, without_s, blocking = [], [], []
            for r in range(1, rounds + 1):
                t = time.perf_counter()
                ckpt.save(r * every, state, config=cfg, tokenizer=tokenizer)
                blocking.append(time.perf_counter() - t)
                state = _run_steps(setup, state, batch, every)
                ckpt.wait()
                with_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                state = _run_steps(setup, state, batch, every)
                without_s.append(time.perf_counter() - t)
            size = _dir_bytes(ckpt.directory / str(ckpt.latest_step()))
        finally:
            ckpt.close()
    overhead = (sum(with_s) - sum(without_s)) / sum(without_s)
    _log(f"checkpoint every {every} steps: {sum(with_s):.3f} s with vs {sum(without_s):.3f} s "
         f"without over {rounds} round(s), overhead {overhead:+.1%}; save() blocked "
         f"{max(blocking) * 1e3:.1f} ms at most; {_fmt_bytes(size)} per checkpoint")
    return state, {
        "every": every, "rounds": rounds, "keep": int(config.train.keep_checkpoints),
        "seconds_with": sum(with_s), "seconds_without": sum(without_s),
        "round_seconds_with": with_s, "round_seconds_without": without_s,
        "save_blocking_s": blocking, "first_save_s": first_save_s, "checkpoint_bytes": size,
        "overhead": overhead,
    }


def run_benchmark(config, *, steps: int, warmup: int, sample_tokens: int, devices=None,
                  seed: int = 0, data_iterator: bool = False, checkpoint_every: int = 0,
                  checkpoint_rounds: int = 3) -> dict:
    """All the figures for one resolved config (see the module docstring)."""
    import jax
    import numpy as np

    from lmjax.models import flops_per_token, generate, param_count
    from lmjax.process import hardware
from lmjax.training import sharding
    from lmjax.training.steps import make_setup

    # Before any compile, so a corpus that cannot be loaded fails the run at once.
    data, prepare_s = load_corpus_tokens(config) if data_iterator else (None, None)
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

    data_fig = measure_data_iterator(data, config, mesh) if data is not None else None
    ckpt_fig = None
    if checkpoint_every > 0:
        tokenizer = data.tokenizer.to_json() if data is not None else PLACEHOLDER_TOKENIZER
        state, ckpt_fig = measure_checkpoint_overhead(setup, state, batch, config, every=checkpoint_every,
                                                      rounds=checkpoint_rounds, tokenizer=tokenizer)

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
        # None where not measured (--nodata_iterator; --checkpoint_every 0)
        "data_tokens_per_s": None if data_fig is None else data_fig["tokens_per_s"],
        "data_to_train_ratio": None if data_fig is None else data_fig["tokens_per_s"] / tok_s,
        "data_prepare_s": prepare_s,
        "data_iterator": data_fig,
        "checkpoint_overhead": None if ckpt_fig is None else ckpt_fig["overhead"],
        "checkpoint": ckpt_fig,
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
    ratio = f.get("data_to_train_ratio")  # .get: records written before these figures existed
    data = "-" if ratio is None else f"{ratio:,.0f}x"
    ckpt = ("-" if f.get("checkpoint_overhead") is None
            else f"{f['checkpoint_overhead']:+.1%} (every {f['checkpoint']['every']})")
    return (f"| {rec['date'][:16].replace('T', ' ')} | {rec['device']['count']} x {rec['device']['kind']} "
            f"| {config} | {f['params'] / 1e6:.2f}M | {f['tokens_per_step']:,} "
            f"| {f['step_time_s']['median'] * 1e3:,.1f} | {f['tokens_per_s']:,.0f} | {mfu} "
            f"| {f['time_to_first_step_s']:.1f} | {_fmt_bytes(f['peak_memory_bytes'])} | {samp} "
            f"| {data} | {ckpt} |")


def _widen_table(lines: list[str], header: int) -> int:
    """Give a results table written before the last columns existed today's header row (and the
    notes on the new columns, above the table). Its rows keep their cells: markdown shows a row's
    missing trailing cells empty, whereas cells beyond the header's would be dropped. Returns
    the header's index after the notes were inserted."""
    new_header, new_rule = RESULTS_HEADER.rstrip("\n").splitlines()[-2:]
    old = lines[header].rstrip()
    if old == new_header or not new_header.startswith(old) or header + 1 >= len(lines):
        return header  # current, or hand-edited: leave it alone
    lines[header], lines[header + 1] = new_header, new_rule
    if NEW_COLUMN_NOTES.splitlines()[0] not in lines:
        at = header - 1 if header > 0 and not lines[header - 1].strip() else header
        lines[at:at] = NEW_COLUMN_NOTES.rstrip("\n").splitlines()
        header += len(NEW_COLUMN_NOTES.rstrip("\n").splitlines())
    return header


def append_row(path: Path, row: str) -> None:
    """Add the row at the end of the results table (the one whose header starts `| date |`),
    widening an older table to today's columns first; notes and other tables below it stay
    where they are."""
    text = path.read_text() if path.exists() else RESULTS_HEADER
    lines = text.splitlines()
    header = next((i for i, line in enumerate(lines) if line.startswith("| date |")), None)
    if header is None:  # no results table yet: start one at the end
        lines += ["", *RESULTS_HEADER.rstrip("\n").splitlines()[-2:]]
        header = len(lines) - 2
    header = _widen_table(lines, header)
    at = header
    while at + 1 < len(lines) and lines[at + 1].startswith("|"):
        at += 1
    lines.insert(at + 1, row)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark for the flags in `argv` (without the program name); returns the record."""
    argv = sys.argv[1:] if argv is None else list(argv)
    from lmjax.process.xla_flags import add_default_xla_flags

    add_default_xla_flags()  # as `lmjax train` runs (before the backend starts; no-op after)
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
                            devices=devices, seed=fv.seed, data_iterator=fv.data_iterator,
                            checkpoint_every=fv.checkpoint_every,
                            checkpoint_rounds=fv.checkpoint_rounds)
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
                 "xla_flags": os.environ.get("XLA_FLAGS", ""),
                 "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
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
    from lmjax.process.hugepages import reexec_with_hugepages

    reexec_with_hugepages()  # as the `lmjax` command does (a no-op under LMJAX_HUGEPAGES=0)
    try:
        main()
    except LmjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
