"""`train(config, workdir)`: the loop around the pure step — data, logging, eval, checkpoints."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from lmjax import config as config_lib
from lmjax.checkpointing import Checkpointer
from lmjax.data import Dataset, eval_batches, prepare, train_batch
from lmjax.errors import ConfigError
from lmjax.models import flops_per_token, param_count
from lmjax.training import hardware, sharding
from lmjax.training.logging import MetricsWriter
from lmjax.training.steps import Setup, make_setup

# Config sections that fix the shapes of the parameters and of the token stream: a workdir's
# checkpoints can only continue under the same values.
RUN_IDENTITY = ("data", "model")


def evaluate(setup: Setup, params, tokens: np.ndarray, *, batch_size: int, seq_len: int,
             max_batches: int, tokens_per_byte: float) -> dict:
    """Held-out loss (nats/token), perplexity and bits per byte over `max_batches` (0: all)."""
    loss_sum, count = 0.0, 0.0
    sums = []
    for batch, weights in eval_batches(tokens, batch_size=batch_size, seq_len=seq_len,
                                       max_batches=max_batches, process_index=jax.process_index(),
                                       process_count=jax.process_count()):
        sums.append(setup.eval_step(params, sharding.global_batch(batch, setup.mesh),
                                    sharding.global_batch(weights, setup.mesh)))
    for s, c in jax.device_get(sums):
        loss_sum, count = loss_sum + float(s), count + float(c)
    loss = loss_sum / max(count, 1.0)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        # nats/token * tokens/byte / ln 2: comparable across tokenizers.
        "bits_per_byte": loss * tokens_per_byte / math.log(2),
        "tokens": int(count),
    }


def tokens_per_byte(data: Dataset) -> float:
    return len(data.val) / max(data.val_bytes, 1)


def check_workdir(workdir: Path, cfg: dict, force: bool) -> None:
    """Refuse to mix two configs' checkpoints in one workdir (unless --force)."""
    saved_path = workdir / "config.json"
    if not saved_path.exists():
        return
    saved = json.loads(saved_path.read_text())
    diffs = [
        f"config.{section}.{k}: {saved.get(section, {}).get(k)!r} -> {v!r}"
        for section in RUN_IDENTITY
        for k, v in cfg[section].items()
        if saved.get(section, {}).get(k) != v
    ]
    if cfg["train"]["seq_len"] != saved.get("train", {}).get("seq_len"):
        diffs.append(f"config.train.seq_len: {saved.get('train', {}).get('seq_len')} -> {cfg['train']['seq_len']}")
    if diffs and not force:
        raise ConfigError(
            f"workdir {workdir} holds a run of another config ({'; '.join(diffs[:3])}); "
            "use a new --workdir, or pass --force to set the old checkpoints aside and start over"
        )
    if diffs and force:
        ckpts = workdir / "checkpoints"
        if ckpts.exists():
            aside = workdir / f"checkpoints.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
            ckpts.rename(aside)  # set aside, never deleted: --force must not lose a run


def train(config, workdir: str | os.PathLike, *, progress: bool = True, force: bool = False,
          devices=None, stop_at: int | None = None, print_fn=print) -> dict:
    """Train (or continue training) the run in `workdir`. Returns the final metrics.

    `devices`: the devices to build the mesh from (default: all). `stop_at`: leave after this
    step with a checkpoint, as a preempted job would (the schedule still spans train.steps).
    """
    t_start = time.perf_counter()
    config = config_lib.resolve(config)
    tc = config.train
    workdir = Path(workdir)
    main = jax.process_index() == 0

    data = prepare(config.data)
    mesh = sharding.make_mesh(config.mesh, devices)
    sharding.check_batch(tc.batch_size, tc.grad_accum, mesh, jax.process_count())
    setup = make_setup(config, vocab_size=data.tokenizer.vocab_size, mesh=mesh)

    cfg_dict = config.to_dict()
    workdir.mkdir(parents=True, exist_ok=True)
    check_workdir(workdir, cfg_dict, force)
    ckpt = Checkpointer(workdir, keep=tc.keep_checkpoints)
    start = ckpt.latest_step()
    if start is None:
        state, start = setup.init_state(jax.random.key(tc.seed)), 0
    else:
        state = ckpt.restore_state(start, setup.abstract_state)
    n_params = param_count(setup.model_cfg)
    flops_tok = flops_per_token(setup.model_cfg, tc.seq_len)
    peak = hardware.peak_flops()
    if main:
        (workdir / "config.json").write_text(json.dumps(cfg_dict, indent=2))
        run_info = {
            "corpus": config.data.corpus,
            "corpus_fingerprint": data.corpus_fingerprint,
            "tokenizer_fingerprint": data.tokenizer.fingerprint,
            "vocab_size": data.tokenizer.vocab_size,
            "params": n_params,
            "params_non_embedding": param_count(setup.model_cfg, embeddings=False),
            "flops_per_token": flops_tok,
            "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
            "mesh": dict(mesh.shape),
            "train_tokens": len(data.train),
            "val_tokens": len(data.val),
        }
        (workdir / "run.json").write_text(json.dumps(run_info, indent=2))
        print_fn(
            f"lmjax: {n_params / 1e6:.2f}M params, {config.data.corpus} "
            f"({len(data.train):,} train tokens, {data.tokenizer.kind} vocab {data.tokenizer.vocab_size}), "
            f"mesh {dict(mesh.shape)} on {run_info['devices']}, "
            + (f"resuming at step {start}" if start else "starting at step 0")
        )

    writer = MetricsWriter(workdir, enabled=main)
    tokens_per_step = tc.batch_size * tc.seq_len
    eval_kw = dict(batch_size=tc.batch_size, seq_len=tc.seq_len, max_batches=tc.eval_batches,
                   tokens_per_byte=tokens_per_byte(data))
    bar = tqdm(total=tc.steps, initial=start, disable=not (progress and main), unit="step",
               dynamic_ncols=True)
    pending, t_interval, final = [], time.perf_counter(), {}
    first_step_time = None
    cfg_json = cfg_dict
    tok_json = data.tokenizer.to_json()
    last = tc.steps if stop_at is None else min(stop_at, tc.steps)
    try:
        for step in range(start, last):
            local = train_batch(data.train, seed=tc.seed, step=step, batch_size=tc.batch_size,
                                seq_len=tc.seq_len, process_index=jax.process_index(),
                                process_count=jax.process_count())
            state, metrics = setup.train_step(state, sharding.global_batch(local, mesh))
            pending.append(metrics)
            done = step + 1
            if first_step_time is None:
                jax.block_until_ready(metrics)
                first_step_time = time.perf_counter() - t_start
                t_interval, pending = time.perf_counter(), []
                writer.write(done, {"time_to_first_step": first_step_time, **jax.device_get(metrics)})
            elif done % tc.log_every == 0 or done == last:
                rows = jax.device_get(pending)
                elapsed = time.perf_counter() - t_interval
                tok_s = len(rows) * tokens_per_step / elapsed
                row = {
                    "loss": float(np.mean([r["loss"] for r in rows])),
                    "grad_norm": float(rows[-1]["grad_norm"]),
                    "lr": float(rows[-1]["lr"]),
                    "step_time": elapsed / len(rows),
                    "tokens_per_s": tok_s,
                    "model_flops_per_s": tok_s * flops_tok,
                    "mfu": tok_s * flops_tok / peak,
                    "tokens": done * tokens_per_step,
                }
                writer.write(done, row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{tok_s:,.0f}", mfu=f"{row['mfu']:.0%}")
                final.update(row)
                pending = []
                t_interval = time.perf_counter()
            bar.update(1)
            if done % tc.eval_every == 0 or done == tc.steps:
                ev = evaluate(setup, state.params, data.val, **eval_kw)
                writer.write(done, {f"val_{k}": v for k, v in ev.items()})
                final.update({f"val_{k}": v for k, v in ev.items()})
                bar.write(f"step {done}: val loss {ev['loss']:.4f}, bits/byte {ev['bits_per_byte']:.4f}")
                t_interval = time.perf_counter()
            if done % tc.checkpoint_every == 0 or done == last:
                ckpt.save(done, state, config=cfg_json, tokenizer=tok_json)
                t_interval = time.perf_counter()
    finally:
        bar.close()
        ckpt.close()
        writer.close()
    final.update({"step": int(jax.device_get(state.step)), "time_to_first_step": first_step_time,
                  "wall_time": time.perf_counter() - t_start})
    return final
