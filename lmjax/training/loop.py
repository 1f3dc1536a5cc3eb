"""`train(config, workdir)`: the loop around the pure step — data, logging, eval, checkpoints."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from lmjax import config as config_lib
from lmjax.checkpointing import Checkpointer
from lmjax.data import Dataset, batches, prepare
from lmjax.errors import CheckpointError, ConfigError, LmjaxError
from lmjax.models import flops_per_token, param_count
from lmjax.models.attention import kernel_for
from lmjax.process import hardware
from lmjax.process.provenance import provenance
from lmjax.process.distributed import job_info
from lmjax.training import evaluation, sharding
from lmjax.training.metrics import MetricsWriter
from lmjax.training.resume import check_tokenizer, check_workdir
from lmjax.training.steps import Setup, make_setup
from lmjax.workdir import Workdir


def step_batch(data: Dataset, tc, step: int) -> np.ndarray:
    """This process's rows of step `step`'s batch [B, L+1]; with replicas, replica k's own rows
    (those of seed + k, as its separate run would draw them) stacked into [K, B, L+1]."""
    rows = [batches.batch(data, seed=tc.seed + k, step=step, batch_size=tc.batch_size, seq_len=tc.seq_len,
                          process_index=jax.process_index(), process_count=jax.process_count())
            for k in range(tc.replicas)]
    return rows[0] if tc.replicas == 1 else jax.tree.map(lambda *r: np.stack(r), *rows)


class NonFiniteError(LmjaxError):
    """Training met NaN/Inf and the config's policy says halt."""


class Preemption:
    """SIGTERM/SIGINT ask the loop to finish its step, checkpoint and leave (exit 0).

    A second signal interrupts at once. On several hosts, JAX's preemption sync point makes
    every host stop at the same step (it needs jax.distributed).
    """

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            # In a job of several processes SIGTERM stays with JAX's preemption notifier (installed
            # by jax.distributed.initialize), which the sync point below reads.
            signals = (signal.SIGINT,) if jax.process_count() > 1 else (signal.SIGTERM, signal.SIGINT)
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested


def prepare_job(data_cfg) -> Dataset:
    """`prepare`, with a missing token store built by every process of the job, each its share
    of the pieces (lmjax/data/store.py)."""
    from lmjax.process.distributed import store_job

    return prepare(data_cfg, job=store_job())


def check_shared_workdir(wd: Workdir) -> None:
    """In a job of several processes, every process must see the same workdir (orbax writes one
    checkpoint there together): process 0 leaves a file named by a token it broadcasts, and a
    process that cannot see it (each host's own /tmp, say) stops with one line."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    token = int(multihost_utils.broadcast_one_to_all(np.int32(np.random.default_rng().integers(2**31 - 1))))
    probe = wd.file(f".lmjax-job-{token}")
    if jax.process_index() == 0:
        probe.touch()
    multihost_utils.sync_global_devices("lmjax: workdir probe written")
    seen = probe.exists()
    everyone = multihost_utils.process_allgather(np.int32(seen))
    multihost_utils.sync_global_devices("lmjax: workdir probe read")
    if jax.process_index() == 0:
        probe.unlink(missing_ok=True)
    if not np.all(everyone):
        lost = [i for i, ok in enumerate(np.ravel(everyone)) if not ok]
        raise ConfigError(f"--workdir {wd.path} is not the same storage for every process (process(es) "
                          f"{', '.join(map(str, lost))} cannot see process 0's files there); put it on a "
                          "filesystem every host mounts, or a gs:// path")


def run_info(config, data: Dataset, setup: Setup) -> dict:
    """run.json: what the run is (fingerprints, sizes, mesh), what changes its numerics or speed
    (the attention kernel that runs, process settings), and the code and machine behind it."""
    model, mesh = setup.model_cfg, setup.mesh
    return {
        "corpus": config.data.corpus,
        "corpus_fingerprint": data.corpus_fingerprint,
        "tokenizer_fingerprint": data.tokenizer.fingerprint,
        "vocab_size": data.tokenizer.vocab_size,
        "params": param_count(model),
        "params_non_embedding": param_count(model, embeddings=False),
        "flops_per_token": flops_per_token(model, config.train.seq_len),
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "mesh": dict(mesh.shape),
        "train_tokens": data.train_tokens,
        "val_tokens": data.val_tokens,
        "attention_impl": kernel_for(model, mesh.devices.flat[0]),
        **job_info(),
        **provenance(jax.devices()),
    }


def train(config, workdir: str | os.PathLike, *, progress: bool = True, force: bool = False,
          devices=None, stop_at: int | None = None, print_fn=print) -> dict:
    """Train (or continue training) the run in `workdir`. Returns the final metrics.

    `devices`: the devices to build the mesh from (default: all). `stop_at`: leave after this
    step with a checkpoint, as a preempted job would (the schedule still spans train.steps).
    The returned dict has `preempted: True` when a signal stopped the run early.
    """
    t_start = time.perf_counter()
    config = config_lib.resolve(config)
    if config.model.family == "ngram":  # counted, not trained by steps
        from lmjax.training.ngram import train_ngram

        return train_ngram(config, workdir, force=force, print_fn=print_fn)
    tc = config.train
    workdir = Path(workdir)
    main = jax.process_index() == 0

    # What fails without data first: a bad mesh or a workdir of another config refuses at once.
    mesh = sharding.make_mesh(config.mesh, devices)
    sharding.check_batch(tc.batch_size, tc.grad_accum, mesh, jax.process_count(), tc.replicas)
    cfg_dict = config.to_dict()
    wd = Workdir(workdir).create()
    check_shared_workdir(wd)
    check_workdir(wd, cfg_dict, force)
    data = prepare_job(config.data)
    setup = make_setup(config, vocab_size=data.tokenizer.vocab_size, mesh=mesh)
    ckpt = Checkpointer(workdir, keep=tc.keep_checkpoints)
    start = ckpt.latest_step()
    if start is None:
        state, start = setup.init_state(tc.seed), 0
    else:
        check_tokenizer(ckpt, start, data, force)
        state = ckpt.restore_state(start, setup.abstract_state)
    info = run_info(config, data, setup)
    flops_tok, peak = info["flops_per_token"], hardware.peak_flops()
    if main:
        wd.truncate_metrics(start)
        wd.write_config(cfg_dict)
        wd.write_run_info(info)
        print_fn(
            f"lmjax: {info['params'] / 1e6:.2f}M params, {config.data.corpus} "
            f"({data.train_tokens:,} train tokens, {data.tokenizer.kind} vocab {data.tokenizer.vocab_size}), "
            f"mesh {info['mesh']} on {info['devices']}, "
            + (f"{info['processes']} processes x {info['local_devices']} devices (coordinator "
               f"{info['coordinator']}), " if info["processes"] > 1 else "")
            + (f"resuming at step {start}" if start else "starting at step 0")
        )

    writer = MetricsWriter(wd, enabled=main)
    tokens_per_step = tc.batch_size * tc.seq_len
    eval_kw = dict(batch_size=evaluation.batch_rows(tc.batch_size, tc.seq_len, setup.model_cfg.vocab_size, tc.replicas),
                   seq_len=tc.seq_len)
    bar = tqdm(total=tc.steps, initial=start, disable=not (progress and main), unit="step",
               dynamic_ncols=True)
    tok_json = data.tokenizer.to_json()
    last = tc.steps if stop_at is None else min(stop_at, tc.steps)
    saved_step = start  # the newest checkpoint known to hold a finite state
    pending: list[tuple[int, dict]] = []
    run = {"final": {}, "t_interval": time.perf_counter(), "first_step_time": None, "bad_streak": 0,
           "save_failed": False}

    def flush(done: int) -> None:
        """Fetch the pending steps' metrics: log them, and apply the non-finite policy."""
        if not pending:
            return
        rows = jax.device_get([m for _, m in pending])
        steps = [s for s, _ in pending]
        pending.clear()
        elapsed = time.perf_counter() - run["t_interval"]
        for s, r in zip(steps, rows):
            if np.all(r["finite"]):  # every replica's
                run["bad_streak"] = 0
                continue
            run["bad_streak"] += 1
            if tc.nonfinite == "halt" or run["bad_streak"] >= tc.max_nonfinite:
                why = ("config.train.nonfinite='halt'" if tc.nonfinite == "halt"
                       else f"{run['bad_streak']} non-finite steps in a row")
                raise NonFiniteError(
                    f"non-finite loss or gradients at step {s + 1} (loss={np.asarray(r['loss']).tolist()}; "
                    f"{why}); the update was not applied. Last good checkpoint: "
                    + (f"step {saved_step} in {ckpt.directory}" if saved_step else "none yet")
                    + ". Lower config.train.lr, or set config.train.nonfinite='skip'"
                )
        # Every replica trains tokens_per_step tokens a step: tokens/s counts them all, `tokens`
        # is one model's (the C of a scaling law).
        tok_s = len(rows) * tokens_per_step * tc.replicas / elapsed
        good = [r for r in rows if np.all(r["finite"])]
        losses = np.asarray([r["loss"] for r in good], np.float64).reshape(len(good), tc.replicas)
        grad_norm = np.asarray(rows[-1]["grad_norm"], np.float64).reshape(tc.replicas)
        row = {
            "loss": float(losses.mean()) if good else float("nan"),
            "grad_norm": float(grad_norm.mean()),
            "lr": float(np.ravel(rows[-1]["lr"])[0]),
            "skipped_steps": int(np.sum(rows[-1]["skipped_steps"])),
            "step_time": elapsed / len(rows),
            "tokens_per_s": tok_s,
            "model_flops_per_s": tok_s * flops_tok,
            "mfu": tok_s * flops_tok / peak,
            "tokens": done * tokens_per_step,
        }
        if tc.replicas > 1:
            row["loss_replicas"] = losses.mean(axis=0).tolist() if good else [float("nan")] * tc.replicas
            row["grad_norm_replicas"] = grad_norm.tolist()
        if run["first_step_time"] is None:  # the first step's time is compile time, not speed
            run["first_step_time"] = time.perf_counter() - t_start
            row = {**{k: v for k, v in row.items() if k.startswith(("loss", "grad_norm", "lr"))},
                   "time_to_first_step": run["first_step_time"]}
        writer.write(done, row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{tok_s:,.0f}", mfu=f"{tok_s * flops_tok / peak:.0%}")
        run["final"].update(row)
        run["t_interval"] = time.perf_counter()

    def save(done: int) -> None:
        nonlocal saved_step
        flush(done)  # never checkpoint a state whose steps were not checked
        try:
            ckpt.save(done, state, config=cfg_dict, tokenizer=tok_json)
        except (OSError, RuntimeError, ValueError) as e:
            run["save_failed"] = True
            raise _save_error(done, e, ckpt) from e
        saved_step = done
        run["t_interval"] = time.perf_counter()

    preempted = False
    try:
        with Preemption() as preemption:
            for step in range(start, last):
                state, metrics = setup.train_step(state, setup.put_batch(step_batch(data, tc, step)))
                pending.append((step, metrics))
                done = step + 1
                bar.update(1)
                if run["first_step_time"] is None or done % tc.log_every == 0 or done == last:
                    flush(done)
                if done % tc.eval_every == 0 or done == tc.steps:
                    # The final evaluation scores the whole split; periodic ones a spread-out budget.
                    budget = 0 if done == tc.steps else tc.eval_batches * tc.batch_size
                    ev = evaluation.evaluate_data(setup, state.params, data, max_windows=budget, **eval_kw)
                    by_position = ev.pop("loss_by_position")
                    if main:
                        wd.append_position_losses(done, by_position)
                    writer.write(done, {f"val_{k}": v for k, v in ev.items()})
                    run["final"].update({f"val_{k}": v for k, v in ev.items()})
                    bar.write(f"step {done}: " + ", ".join(
                        f"val {k.replace('_', ' ')} {v:.4f}" for k, v in ev.items() if isinstance(v, float)))
                    run["t_interval"] = time.perf_counter()
                if preemption.should_stop(done) and done < last:
                    save(done)
                    preempted = True
                    bar.write(f"preempted: checkpoint saved at step {done}; run the same command to continue")
                    break
                if done % tc.checkpoint_every == 0 or done == last:
                    save(done)
        try:
            ckpt.close()  # waits for the last asynchronous save
        except (OSError, RuntimeError, ValueError) as e:
            run["save_failed"] = True
            raise _save_error(saved_step, e, ckpt) from e
    finally:
        bar.close()
        writer.close()
        if not run["save_failed"]:  # else the manager is broken; closing it only adds noise
            with contextlib.suppress(Exception):
                ckpt.close()  # lets a good save still in flight finish
    return {**run["final"], "step": int(np.ravel(jax.device_get(state.step))[0]), "preempted": preempted,
            "time_to_first_step": run["first_step_time"], "wall_time": time.perf_counter() - t_start}


def _save_error(step: int, e: Exception, ckpt: Checkpointer) -> CheckpointError:
    kept = [s for s in ckpt.all_steps() if s != step]
    reason = (str(e).splitlines() or [type(e).__name__])[0]
    reason = reason[reason.rfind("Failed to write"):] if "Failed to write" in reason else reason[:300]
    return CheckpointError(
        f"saving a checkpoint (at or before step {step}) to {ckpt.directory} failed ({reason}); "
        f"complete checkpoints {kept or 'none'} are intact. Free disk space, then run the same "
        "command to continue"
    )
