"""Training and sampling throughput of one config, on synthetic data.

    python -m benchmarks.harness --config configs/NAME.py[:ARG] [--config.KEY=VAL ...]
        [--steps 30] [--warmup 5] [--sample_tokens 128] [--out benchmarks/results] [--no_append]
        [--nodata_iterator] [--checkpoint_every N [--checkpoint_rounds 3]]

Training batches are random token ids [batch_size, seq_len + 1] drawn once on the host
(vocabulary `config.data.vocab_size`, or 256 when the config derives its vocabulary from a
tokenizer) and placed on the mesh once, so the training figures are those of the model and
optimiser; the data pipeline is timed on its own. With config.train.replicas = K > 1 the batch is
[K, batch_size, seq_len + 1] and tokens/s counts every replica's tokens. Measured:

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

Run as a program, the process is set up as `lmjax` commands set theirs up
(`lmjax.process.setup_command_process`: malloc tunables, XLA flags), except that the persistent
compile cache stays off, since compilation is timed. Writes `<out>/<UTC timestamp>-<config
stem>.json`, appends a row to benchmarks/RESULTS.md (unless --no_append) and prints the JSON
record as the last line of stdout (benchmarks/records.py).
"""

from __future__ import annotations

import datetime as dt
import math
import sys
import time
from pathlib import Path

from absl import flags

from benchmarks import cli, records
from lmjax import config as config_lib
from lmjax.errors import ConfigError

SYNTHETIC_VOCAB = 256  # when config.data.vocab_size is 0 (byte/char tokenizers derive theirs)
SAMPLE_BATCHES = (1, 8)
SAMPLE_PROMPT_LEN = 8
DATA_MIN_SECONDS = 1.0  # the data iterator is timed for this long ...
DATA_MAX_BATCHES = 1000  # ... or this many batches, whichever comes first
PLACEHOLDER_TOKENIZER = {"kind": "byte"}  # saved with checkpoints when no corpus was loaded


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("steps", 30, "Timed train steps.", flag_values=fv)
    flags.DEFINE_integer("warmup", 5, "Untimed train steps after the first one.", flag_values=fv)
    flags.DEFINE_integer("sample_tokens", 128, "New tokens per sampling call (capped by seq_len - 8; "
                         "0 skips sampling).", flag_values=fv)
    records.define_flags(fv, label=False)
    flags.DEFINE_integer("num_devices", 0, "Use the first N devices (0: all).", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of the synthetic batch and of the parameters.", flag_values=fv)
    flags.DEFINE_boolean("data_iterator", True, "Also time the input pipeline on the config's real "
                         "corpus (train_batch + host-to-device transfer).", flag_values=fv)
    flags.DEFINE_integer("checkpoint_every", 0, "Also measure the cost of an asynchronous checkpoint "
                         "every N steps (0: skip).", flag_values=fv)
    flags.DEFINE_integer("checkpoint_rounds", 3, "Rounds of N steps with a checkpoint, each paired "
                         "with N steps without.", flag_values=fv)


def parse(argv: list[str]) -> flags.FlagValues:
    """The flags, and the config as `lmjax train` loads it (benchmarks/cli.py)."""
    fv = cli.parse("benchmarks.harness", __doc__, argv, _define_flags, config="required")
    if fv.steps < 1 or fv.warmup < 0 or fv.sample_tokens < 0 or fv.num_devices < 0:
        raise ConfigError("--steps must be >= 1; --warmup, --sample_tokens and --num_devices >= 0")
    if fv.checkpoint_every < 0 or fv.checkpoint_rounds < 1:
        raise ConfigError("--checkpoint_every must be >= 0 and --checkpoint_rounds >= 1")
    return fv


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _finite(x):
    return x if x is None or math.isfinite(x) else None

def abstract_batch(setup):
    """ShapeDtypeStruct of a Setup's global train batch (int32, sharded as the step takes it)."""
    import jax
    import jax.numpy as jnp

    return jax.ShapeDtypeStruct(setup.batch_shape, jnp.int32, sharding=setup.batch_sharding)


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
    _log(f"corpus {config.data.corpus!r}: {data.train_tokens:,} train tokens "
         f"({data.tokenizer.kind} vocab {data.tokenizer.vocab_size}) loaded in {dt_s:.2f} s")
    return data, dt_s


def measure_data_iterator(data, config, mesh) -> dict:
    """Tokens/s of the input pipeline as `train()` drives it: `batches.batch` (random windows, or
    packed rows, gathered from the memory-mapped shards) plus `global_batch` (the host-to-device transfer),
    synchronised, for DATA_MIN_SECONDS or DATA_MAX_BATCHES batches. The data must keep far ahead of
    the train step, or the accelerator waits on the host; this is the margin it has."""
    import jax
    import numpy as np

    from lmjax.data import batches
    from lmjax.training import sharding

    tc = config.train

    def one(step: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        local = batches.batch(data, seed=tc.seed, step=step, batch_size=tc.batch_size, seq_len=tc.seq_len)
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
            "train_tokens": data.train_tokens, "tokenizer": data.tokenizer.kind, "packing": data.packing,
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
         f"{max(blocking) * 1e3:.1f} ms at most; {records.fmt_bytes(size)} per checkpoint")
    return state, {
        "every": every, "rounds": rounds, "keep": int(config.train.keep_checkpoints),
        "seconds_with": sum(with_s), "seconds_without": sum(without_s),
        "round_seconds_with": with_s, "round_seconds_without": without_s,
        "save_blocking_s": blocking, "first_save_s": first_save_s, "checkpoint_bytes": size,
        "overhead": overhead,
    }




def _first_step(config, devices, vocab: int, seed: int):
    """make_mesh + make_setup + init + the first train step, compile included, on a synthetic
    batch. Returns (mesh, setup, batch, state, seconds to init, seconds to the first step)."""
    import jax
    import numpy as np

    from lmjax.training import sharding
    from lmjax.training.steps import make_setup

    tc = config.train
    t0 = time.perf_counter()
    mesh = sharding.make_mesh(config.mesh, devices)
    sharding.check_batch(tc.batch_size, tc.grad_accum, mesh, jax.process_count(), tc.replicas)
    setup = make_setup(config, vocab_size=vocab, mesh=mesh)
    batch = setup.put_batch(np.random.default_rng(seed).integers(0, vocab, size=setup.batch_shape,
                                                                 dtype=np.int32))
    state = jax.block_until_ready(setup.init_state(seed))
    t_init = time.perf_counter()
    state, metrics = jax.block_until_ready(setup.train_step(state, batch))
    t_first = time.perf_counter()
    _log(f"first step after {t_first - t0:.2f} s (setup + init {t_init - t0:.2f} s), "
         f"loss {float(np.mean(metrics['loss'])):.3f}")
    return mesh, setup, batch, state, t_init - t0, t_first - t0


def _time_steps(setup, state, batch, *, warmup: int, steps: int):
    """`warmup` untimed steps, then `steps` timed ones, each synchronised. Returns (state, the
    step times as an array, the last step's loss)."""
    import jax
    import numpy as np

    for _ in range(warmup):
        state, metrics = jax.block_until_ready(setup.train_step(state, batch))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, metrics = jax.block_until_ready(setup.train_step(state, batch))
        times.append(time.perf_counter() - t)
    return state, np.asarray(times), float(np.mean(metrics["loss"]))


def _cpu_matmul_now(devices, peak: float) -> float | None:
    """On CPU, the f32 matmul rate measured now (None elsewhere). The CPU peak is measured once
    and cached; a figure taken on a loaded machine would skew every MFU after it, so measure
    again now and say when they disagree."""
    from lmjax.process import hardware
    from lmjax.process.settings import Settings

    if devices[0].platform != "cpu":
        return None
    now = hardware.measure_cpu_matmul_flops()
    if abs(now / peak - 1) > 0.25:
        _log(f"warning: f32 matmul now {now / 1e9:.0f} GFLOP/s vs cached CPU peak "
             f"{peak / 1e9:.0f} GFLOP/s ({Settings.read().cache_dir / 'cpu_peak_flops.json'}): "
             "the machine is loaded now, or the cached figure was taken under load")
    return now


def measure_sampling(model_cfg, params, n_new: int) -> dict:
    """New tokens/s of `generate` (KV cache) at each of SAMPLE_BATCHES, after a warm-up call."""
    from lmjax.models import generate

    sampling = {}
    for b in SAMPLE_BATCHES if n_new > 0 else ():
        prompts = [[1] * SAMPLE_PROMPT_LEN] * b
        generate(model_cfg, params, prompts, max_new_tokens=n_new)  # compile + warm up
        t = time.perf_counter()
        generate(model_cfg, params, prompts, max_new_tokens=n_new)  # returns host arrays
        dt_s = time.perf_counter() - t
        sampling[str(b)] = {"batch": b, "new_tokens": n_new, "seconds": dt_s,
                            "tokens_per_s": b * n_new / dt_s}
        _log(f"sampling batch {b}: {n_new} new tokens in {dt_s * 1e3:.1f} ms, "
             f"{b * n_new / dt_s:,.0f} tokens/s")
    return sampling


def run_benchmark(config, *, steps: int, warmup: int, sample_tokens: int, devices=None,
                  seed: int = 0, data_iterator: bool = False, checkpoint_every: int = 0,
                  checkpoint_rounds: int = 3) -> dict:
    """All the figures for one resolved config (see the module docstring)."""
    import jax
    import numpy as np

    from lmjax.models import flops_per_token, param_count
    from lmjax.models.attention import kernel_for
    from lmjax.process import hardware

    # Before any compile, so a corpus that cannot be loaded fails the run at once.
    data, prepare_s = load_corpus_tokens(config) if data_iterator else (None, None)
    devices = list(jax.devices() if devices is None else devices)
    tc = config.train
    vocab = config.data.vocab_size if config.data.vocab_size > 0 else SYNTHETIC_VOCAB
    mesh, setup, batch, state, init_s, first_s = _first_step(config, devices, vocab, seed)
    state, times, loss = _time_steps(setup, state, batch, warmup=warmup, steps=steps)
    step_s = float(np.median(times))
    model_cfg = setup.model_cfg
    tokens_per_step = tc.batch_size * tc.seq_len * tc.replicas  # every replica's
    tok_s = tokens_per_step / step_s
    flops_tok = flops_per_token(model_cfg, tc.seq_len)
    peak = hardware.peak_flops(devices)
    matmul_now = _cpu_matmul_now(devices, peak)
    mem = peak_memory(devices)
    p10, p90 = (float(np.percentile(times, q)) for q in (10, 90))
    _log(f"step {step_s * 1e3:.2f} ms median over {steps} (p10 {p10 * 1e3:.2f}, p90 {p90 * 1e3:.2f}), "
         f"{tok_s:,.0f} tokens/s, MFU {tok_s * flops_tok / peak:.1%}")
    if model_cfg.family not in config_lib.CAUSAL:  # the encoder fills masks; it does not sample
        sample_tokens = 0
    params = state.params if tc.replicas == 1 else jax.tree.map(lambda x: x[0], state.params)
    sampling = measure_sampling(model_cfg, params, min(sample_tokens, tc.seq_len - SAMPLE_PROMPT_LEN))
    mem_after = peak_memory(devices)
    data_fig = measure_data_iterator(data, config, mesh) if data is not None else None
    ckpt_fig = None
    if checkpoint_every > 0:
        tokenizer = data.tokenizer.to_json() if data is not None else PLACEHOLDER_TOKENIZER
        state, ckpt_fig = measure_checkpoint_overhead(setup, state, batch, config, every=checkpoint_every,
                                                      rounds=checkpoint_rounds, tokenizer=tokenizer)
    return {
        "vocab_size": vocab, "synthetic_data": True, "attention_kernel": kernel_for(model_cfg, devices[0]),
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "params": param_count(model_cfg), "params_non_embedding": param_count(model_cfg, embeddings=False),
        "tokens_per_step": tokens_per_step, "flops_per_token": flops_tok,
        "time_to_first_step_s": first_s, "setup_and_init_s": init_s, "first_step_s": first_s - init_s,
        "steps_timed": steps, "warmup_steps": warmup,
        "step_time_s": {"median": step_s, "p10": p10, "p90": p90, "mean": float(times.mean()),
                        "min": float(times.min()), "max": float(times.max())},
        "tokens_per_s": tok_s, "model_flops_per_s": tok_s * flops_tok,
        "peak_flops": _finite(peak), "cpu_matmul_flops_now": matmul_now,
        "mfu": _finite(tok_s * flops_tok / peak),
        "peak_memory_bytes_train": mem, "peak_memory_bytes": mem_after,
        "final_loss": _finite(loss), "sampling": sampling,
        # None where not measured (--nodata_iterator; --checkpoint_every 0)
        "data_tokens_per_s": None if data_fig is None else data_fig["tokens_per_s"],
        "data_to_train_ratio": None if data_fig is None else data_fig["tokens_per_s"] / tok_s,
        "data_prepare_s": prepare_s, "data_iterator": data_fig,
        "checkpoint_overhead": None if ckpt_fig is None else ckpt_fig["overhead"],
        "checkpoint": ckpt_fig,
    }


def _devices(num_devices: int):
    """The first `num_devices` devices (0: all), with warnings where CPU timings mislead."""
    import jax

    devices = jax.devices()[:num_devices] if num_devices else jax.devices()
    if devices[0].platform == "cpu" and len(devices) > 1:
        _log(f"warning: {len(devices)} CPU devices (fake devices from XLA_FLAGS?); CPU timings "
             "are only meaningful on one device")
    load = records.load_avg()
    if devices[0].platform == "cpu" and load is not None and load > 1:
        _log(f"warning: load average {load:.2f} > 1: other processes share the CPU; "
             "repeat when the machine is quiet before reporting these figures")
    return devices, load


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark for the flags in `argv` (without the program name); returns the record.
    In-process (tests) the process is left as it is; `python -m benchmarks.harness` sets it up."""
    argv = sys.argv[1:] if argv is None else list(argv)
    fv = parse(argv)
    config = config_lib.resolve(fv.config)
    stem, config_name = cli.config_name(fv)
    overrides = cli.config_overrides(argv)

    import jax

    devices, load = _devices(fv.num_devices)
    d0 = devices[0]
    now = dt.datetime.now(dt.timezone.utc)
    _log(f"{config_name} {' '.join(overrides)} on {len(devices)} x {d0.device_kind}")
    figures = run_benchmark(config, steps=fv.steps, warmup=fv.warmup, sample_tokens=fv.sample_tokens,
                            devices=devices, seed=fv.seed, data_iterator=fv.data_iterator,
                            checkpoint_every=fv.checkpoint_every,
                            checkpoint_rounds=fv.checkpoint_rounds)
    fields = {
        "config_name": config_name, "config_file": fv["config"].config_filename,
        "overrides": overrides, "argv": argv,
        "device": {"kind": d0.device_kind, "count": len(devices), "platform": d0.platform,
                   "total_count": jax.device_count(), "process_count": jax.process_count()},
        "config": config.to_dict(), "figures": figures,
    }
    return records.save_record(fields, stem, fv, records.HARNESS, load=load, devices=devices, now=now)


if __name__ == "__main__":
    from lmjax.process import setup_command_process

    setup_command_process(compile_cache=False)  # as `lmjax` runs; compilation is timed: no cache
    cli.run(main)
