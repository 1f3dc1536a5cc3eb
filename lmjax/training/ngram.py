"""`lmjax train` for config.model.family='ngram': counting, not gradient steps.

The counts are a pure function of the train split, so a run killed at any moment and started
again counts again and ends bitwise the same. The model is saved as one orbax checkpoint (its
arrays, the config and the tokenizer) at step 1, evaluated on the validation split like every
other family, and logged to metrics.jsonl / run.json the same way.
"""

from __future__ import annotations

import os
import time

import numpy as np

from lmjax import config as config_lib
from lmjax.checkpointing import Checkpointer
from lmjax.data import Dataset, prepare
from lmjax.errors import ConfigError
from lmjax.models.ngram import NgramModel, count, key_space_error
from lmjax.process.provenance import provenance
from lmjax.training.evaluation import evaluate_data
from lmjax.training.resume import check_tokenizer, check_workdir
from lmjax.training.metrics import MetricsWriter
from lmjax.workdir import Workdir

STEP = config_lib.COUNTED_STEP  # the one "step" of a counted model: its checkpoint and its logged row


def train_ngram(config, workdir: str | os.PathLike, *, force: bool = False, print_fn=print) -> dict:
    """Count (or find counted) the n-gram model of `config` in `workdir`; the final metrics."""
    t_start = time.perf_counter()
    config = config_lib.resolve(config)
    tc, order = config.train, config.model.order
    data = prepare(config.data)
    too_big = key_space_error(order, data.tokenizer.vocab_size)
    if too_big:
        raise ConfigError(f"config.model.order={order}: {too_big}")
    wd = Workdir(workdir).create()
    check_workdir(wd, config.to_dict(), force)
    ckpt = Checkpointer(workdir, keep=tc.keep_checkpoints)
    if ckpt.latest_step() == STEP:
        check_tokenizer(ckpt, STEP, data, force)
        model = NgramModel.from_arrays(order, data.tokenizer.vocab_size, ckpt.restore_state(STEP))
        counted = False
    else:
        model = count(np.asarray(data.train), order=order, vocab_size=data.tokenizer.vocab_size)
        counted = True
    count_time = time.perf_counter() - t_start
    wd.truncate_metrics(0)
    wd.write_config(config.to_dict())
    wd.write_run_info(ngram_run_info(config, data, model))
    print_fn(f"lmjax: {order}-gram model, {model.num_ngrams:,} n-grams from {len(data.train):,} train "
             f"tokens of {config.data.corpus} ({data.tokenizer.kind} vocab {data.tokenizer.vocab_size})"
             + ("" if counted else ", loaded from its checkpoint"))
    ev = evaluate_data(None, model, data, seq_len=tc.seq_len, max_windows=0, batch_size=0)  # the whole split
    wd.append_position_losses(STEP, ev.pop("loss_by_position"))
    val = {f"val_{k}": v for k, v in ev.items()}
    writer = MetricsWriter(wd)
    try:
        writer.write(STEP, {"count_time": count_time, "tokens": len(data.train), **val})
    finally:
        writer.close()
    if counted:
        ckpt.save(STEP, model.arrays(), config=config.to_dict(), tokenizer=data.tokenizer.to_json())
    ckpt.close()
    return {**val, "step": STEP, "preempted": False, "count_time": count_time,
            "wall_time": time.perf_counter() - t_start}


def ngram_run_info(config, data: Dataset, model: NgramModel) -> dict:
    """run.json for a counted model: what it is, and the code and machine behind it."""
    return {
        "corpus": config.data.corpus,
        "corpus_fingerprint": data.corpus_fingerprint,
        "tokenizer_fingerprint": data.tokenizer.fingerprint,
        "vocab_size": data.tokenizer.vocab_size,
        "params": model.num_ngrams,  # stored n-grams: the model's size
        "params_non_embedding": model.num_ngrams,
        "flops_per_token": 0.0,  # counting, no matmuls
        "train_tokens": len(data.train),
        "val_tokens": len(data.val),
        "attention_impl": None,
        "processes": 1,
        **provenance(),
    }
