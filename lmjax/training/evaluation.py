"""Validation loss: its one definition, used by training's `val_*`, `lmjax eval`, `run.evaluate()`,
the n-gram family, sweeps and reports.

The split's n tokens are cut into windows of `seq_len` targets with stride s = seq_len - overlap:
window w holds tokens [w*s, w*s + seq_len + 1) and scores its targets, except (past window 0) its
first `overlap` ones, which the window before scored (`overlap` > 0 only for models of a fixed
context, the MLP LM: every scored target then gets its full context). The windows of the whole
split score each of the targets 1..n-1 exactly once.

Documents (config.data.packing='documents'; `evaluate(..., doc_ends=...)`): each window also
carries its tokens' segment ids (lmjax/data/packing.py), so the model attends within documents
and restarts positions at each one, and a next-token target counts only within its input's
document: the first token of each document is not a target, so a whole-split evaluation scores
every target except those. The encoder scores its masked positions as before (within documents).
A batch whose windows each lie within one document takes the plain path: the same figures, and
bitwise those of an evaluation without doc_ends (the per-row mask is rounded differently by XLA).

A budget of m windows takes m of them spread evenly over the split (first and last included), so
a periodic evaluation reads text from everywhere, not the first files. Which windows are scored
depends on (n, seq_len, overlap, m) alone: not on the batch size, the device count or the process
count. Batches are the chosen windows in order, B at a time, the last padded with unscored rows.

Every evaluation reports what it scored and how noisy it is:
    loss           summed target losses / targets (nats per token)
    loss_se        standard error of that ratio over the scored windows
    tokens, bytes  targets scored, and the UTF-8 bytes they stand for (the tokenizer's per-id lengths)
    bits_per_byte  summed losses / ln 2 / bytes
    perplexity     exp(loss)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator

import jax
import numpy as np

from lmjax.data import local_rows, packing
from lmjax.errors import DataError


EVAL_LOGITS_BYTES = 1 << 27  # float32 logits of one evaluation batch, all replicas: ~128 MB


def batch_rows(train_batch: int, seq_len: int, vocab_size: int, replicas: int = 1) -> int:
    """Rows of an evaluation batch: a whole number of training batches (so the mesh and the
    processes divide it), up to 16 of them while their float32 logits stay within
    EVAL_LOGITS_BYTES: a whole-split evaluation of a small model is bound by per-batch overhead
    (16 x fewer dispatches: ~10x faster for the experiments' models). The figures do not depend on it."""
    per_batch = train_batch * seq_len * vocab_size * 4 * replicas
    return train_batch * int(min(max(EVAL_LOGITS_BYTES // max(per_batch, 1), 1), 16))


@dataclasses.dataclass(frozen=True)
class Windows:
    """Which windows of a split of `n` tokens an evaluation scores."""

    n: int
    seq_len: int
    overlap: int
    index: np.ndarray  # int64 [m]: the scored windows, ascending

    @property
    def stride(self) -> int:
        return self.seq_len - self.overlap


def num_windows(n: int, seq_len: int, overlap: int = 0) -> int:
    """Windows of the whole split: window 0 scores targets 1..seq_len, each later one `stride` more."""
    return 1 + max(0, -(-(n - 1 - seq_len) // (seq_len - overlap)))


def windows(n: int, *, seq_len: int, overlap: int = 0, max_windows: int = 0) -> Windows:
    """The windows an evaluation scores: all of them (max_windows 0, or at least their number), or
    `max_windows` spread evenly over the split, first and last included."""
    if not 0 <= overlap < seq_len:
        raise DataError(f"an evaluation overlap of {overlap} needs 0 <= overlap < seq_len={seq_len}")
    if n < 2:
        raise DataError(f"the evaluation split has {n} tokens, too few to predict any; use a bigger corpus")
    total = num_windows(n, seq_len, overlap)
    if max_windows <= 0 or max_windows >= total:
        index = np.arange(total, dtype=np.int64)
    else:  # m < total, so the rounded points are distinct
        index = np.round(np.linspace(0, total - 1, max_windows)).astype(np.int64)
    return Windows(n, seq_len, overlap, index)


def window_positions(index: np.ndarray, win: Windows) -> np.ndarray:
    """int64 [B, L+1]: the split positions of windows `index` (padding rows, -1: window 0's)."""
    return np.maximum(index, 0)[:, None] * win.stride + np.arange(win.seq_len + 1)


def batches(tokens: np.ndarray, win: Windows, *, batch_size: int, process_index: int = 0,
            process_count: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """This process's rows of each global batch of `win`'s windows: (tokens int32 [B_local, L+1],
    weights float32 [B_local, L], window index int32 [B_local]). Weights are 1 on the targets a
    window scores, 0 on its overlap and on padding (rows past the last window: index -1)."""
    rows = local_rows(batch_size, process_index, process_count)
    L, n = win.seq_len, win.n
    count = len(win.index)
    for first in range(0, count, batch_size):
        index = np.full(batch_size, -1, np.int64)
        chosen = win.index[first:first + batch_size]
        index[:len(chosen)] = chosen
        index = index[rows]
        positions = window_positions(index, win)
        real = (positions < n) & (index[:, None] >= 0)
        batch = np.where(real, np.asarray(tokens[np.minimum(positions, n - 1)], dtype=np.int32), 0)
        scored = real[:, 1:] & ((index[:, None] == 0) | (np.arange(L) >= win.overlap))
        yield batch.astype(np.int32), scored.astype(np.float32), index.astype(np.int32)


@dataclasses.dataclass
class Sums:
    """Per-window sums of one model's evaluation (rows of unscored padding left out)."""

    loss: np.ndarray  # float64 [m]: summed target losses
    count: np.ndarray  # [m]: targets scored
    correct: np.ndarray  # [m]: top-1 hits
    bytes: int  # UTF-8 bytes of all scored targets
    loss_L: np.ndarray  # [L]: summed losses at each position of the window
    count_L: np.ndarray  # [L]


def summary(s: Sums, *, family: str, overlap: int) -> dict:
    """The figures of one model's evaluation (see the module docstring)."""
    total, count = float(s.loss.sum()), float(s.count.sum())
    loss = total / max(count, 1.0)
    by_position = [float(a) / float(c) if c > 0 else None for a, c in zip(s.loss_L, s.count_L)]
    # With a sliding window only the split's first window scores its first `overlap` positions:
    # too few to mean anything, and every other target had its full context anyway.
    by_position[:overlap] = [None] * overlap
    se = ratio_se(s.loss, s.count)
    if family == "encoder":
        return {"masked_loss": loss, "masked_loss_se": se, "masked_accuracy": float(s.correct.sum()) / max(count, 1.0),
                "masked_tokens": int(count), "loss_by_position": by_position}
    nbytes = int(s.bytes)
    return {
        "loss": loss,
        "loss_se": se,
        "perplexity": math.exp(min(loss, 700.0)),
        "bits_per_byte": total / max(nbytes, 1) / math.log(2),
        "tokens": int(count),
        "bytes": nbytes,
        "loss_by_position": by_position,
    }


def ratio_se(sums: np.ndarray, counts: np.ndarray) -> float:
    """Standard error of sum(sums) / sum(counts) over the windows (the ratio estimator's), with
    windows that scored nothing left out; nan with fewer than two."""
    keep = np.asarray(counts) > 0
    y, c = np.asarray(sums, np.float64)[keep], np.asarray(counts, np.float64)[keep]
    m = y.size
    if m < 2:
        return math.nan
    r = y.sum() / c.sum()
    return float(math.sqrt(m / (m - 1) * np.sum((y - r * c) ** 2)) / c.sum())


def combine_replicas(per_replica: list[dict]) -> dict:
    """One dict of figures for K replicas: each float is their mean, with the K values under
    `<name>_replicas`; counts are the same for all; per-position lists are averaged."""
    out = {}
    for name, first in per_replica[0].items():
        values = [d[name] for d in per_replica]
        if isinstance(first, float):
            out[name] = float(np.mean(values))
            out[f"{name}_replicas"] = values
        elif isinstance(first, list):
            out[name] = [None if any(v is None for v in col) else float(np.mean(col)) for col in zip(*values)]
        else:
            out[name] = first
    return out


def evaluate(setup, params, tokens: np.ndarray, *, seq_len: int, batch_size: int, max_windows: int,
             token_bytes: np.ndarray, doc_ends: np.ndarray | None = None) -> dict:
    """Validation figures of a neural model (a training Setup's jitted eval_step) over the windows
    `windows(len(tokens), max_windows=...)` picks; for the encoder, the masked-LM loss and accuracy
    over masks fixed per window. With replicas, each figure is the replicas' mean and
    `<name>_replicas` lists them. doc_ends (int64, ascending: the split's document ends): score
    within documents (module docstring)."""
    from lmjax.models import eval_overlap
    from lmjax.training import sharding

    overlap = eval_overlap(setup.model_cfg)
    win = windows(len(tokens), seq_len=seq_len, overlap=overlap, max_windows=max_windows)
    # A mesh of this process's devices alone (lmjax.load in each process of a job) evaluates every row here.
    alone = {d.process_index for d in setup.mesh.devices.flat} == {jax.process_index()}
    procs = dict(process_index=0, process_count=1) if alone else dict(
        process_index=jax.process_index(), process_count=jax.process_count())
    put = functools.partial(sharding.global_batch, mesh=setup.mesh, sharding=setup.eval_batch_sharding)
    out, nbytes = [], 0
    for i, (batch, weights, index) in enumerate(batches(tokens, win, batch_size=batch_size, **procs)):
        chosen = win.index[i * batch_size:(i + 1) * batch_size]  # the global batch's: all processes agree
        packed = doc_ends is not None and _crosses_documents(win, chosen, doc_ends, setup.model_cfg.family)
        if packed:
            batch, weights = _within_documents(batch, weights, index, win, doc_ends, setup.model_cfg.family)
        # One batch in flight at a time: independent multi-device programs queued together can
        # reach their all-reduces in different orders on different devices (XLA:CPU deadlocked
        # on a whole-split eval over 8 devices).
        out.append(jax.block_until_ready(setup.eval_step(params, put(batch), put(weights), put(index))))
        nbytes += _local_bytes(batch["tokens"] if packed else batch, weights, token_bytes)
    loss_B, count_B, correct_B, loss_L, count_L = zip(*jax.device_get(out))
    rows = len(win.index)  # the rest are padding
    per_row = [np.concatenate(x, axis=-1)[..., :rows] for x in (loss_B, count_B, correct_B)]
    per_position = [np.sum(x, axis=0) for x in (loss_L, count_L)]
    nbytes = nbytes if alone else _sum_over_processes(nbytes)

    def one(k):
        pick = (lambda x: x[k]) if setup.replicas > 1 else (lambda x: x)
        sums = Sums(*(pick(x).astype(np.float64) for x in per_row), nbytes, *(pick(x) for x in per_position))
        return summary(sums, family=setup.model_cfg.family, overlap=overlap)

    if setup.replicas == 1:
        return one(0)
    return combine_replicas([one(k) for k in range(setup.replicas)])


def _crosses_documents(win: Windows, chosen: np.ndarray, doc_ends, family: str) -> bool:
    """Whether windows `chosen` reach over a document boundary where it matters: the decoder's
    inputs and targets (what follows the split's end is never attended), the encoder's inputs,
    which attend both ways (the plain path's padding past the split's end counts too)."""
    first = chosen * win.stride
    if family == "encoder":
        last = first + win.seq_len - 1
        if np.any(last >= win.n):
            return True
    else:
        last = np.minimum(first + win.seq_len, win.n - 1)
    return bool(np.any(packing.document_index(first, doc_ends) != packing.document_index(last, doc_ends)))


def _within_documents(tokens, weights, index, win: Windows, doc_ends, family: str):
    """A batch of windows as packed rows {"tokens", "segments"} (padding rows: segment 0), and
    its weights where next-token targets stay within their input's document (the encoder's
    masked positions are its inputs: the objective keeps them where segments > 0)."""
    stop_B = np.where(index >= 0, win.n, 0)
    segments = packing.segment_ids(window_positions(index, win), doc_ends, stop_B)
    if family != "encoder":
        weights = weights * packing.target_weights(segments)
    return {"tokens": tokens, "segments": segments}, weights


def _local_bytes(batch: np.ndarray, weights: np.ndarray, token_bytes: np.ndarray) -> int:
    """UTF-8 bytes of the targets this process's rows score."""
    return int((token_bytes[batch[:, 1:]] * weights).sum())


def _sum_over_processes(local: int) -> int:
    from jax.experimental import multihost_utils

    return int(np.sum(multihost_utils.process_allgather(np.int64(local))))


def evaluate_ngram(model, tokens: np.ndarray, *, seq_len: int, max_windows: int, token_bytes: np.ndarray) -> dict:
    """The same figures for an n-gram model, over the same windows (its context may reach back
    across a window's start: at most order - 1 tokens, for the first targets of each window)."""
    win = windows(len(tokens), seq_len=seq_len, max_windows=max_windows)
    logp = model.logprobs(np.asarray(tokens))  # [n-1]: target t + 1
    targets = win.index[:, None] * win.stride + np.arange(seq_len)  # [m, L]: index into logp
    real = targets < logp.size
    safe = np.minimum(targets, logp.size - 1)
    loss_mL = np.where(real, -logp[safe], 0.0)
    ids = np.asarray(tokens[safe + 1], dtype=np.int64)
    sums = Sums(loss_mL.sum(axis=1), real.sum(axis=1), np.zeros(len(win.index)),
                int((token_bytes[ids] * real).sum()), loss_mL.sum(axis=0), real.sum(axis=0))
    return summary(sums, family="ngram", overlap=0)


def evaluate_data(setup, params, data, *, max_windows: int, seq_len: int, batch_size: int) -> dict:
    """The validation figures of `data` (a Dataset): its one source's, or for a mixture each
    source's under `<name>/<source>` (loss/web, bits_per_byte/web, ...) and, under the plain names,
    all sources' windows pooled (the loss over all their targets, the bytes summed, standard errors
    of independent sources combined). Documents packing scores within documents."""
    token_bytes = data.tokenizer.token_bytes()
    kw = dict(seq_len=seq_len, max_windows=max_windows, token_bytes=token_bytes)
    per_source = {}
    for source in data.sources:
        doc_kw = {"doc_ends": source.val.doc_ends} if data.packing == "documents" else {}
        if setup is None:  # an n-gram model
            per_source[source.name] = evaluate_ngram(params, source.val.tokens, **kw)
        else:
            per_source[source.name] = evaluate(setup, params, source.val.tokens, batch_size=batch_size, **kw,
                                               **doc_kw)
    if not data.mixture:
        return next(iter(per_source.values()))
    return pooled(per_source)


def pooled(per_source: dict[str, dict]) -> dict:
    """One evaluation's figures per source, and pooled over the sources (see evaluate_data)."""
    out = {f"{k}/{name}": v for name, ev in per_source.items() for k, v in ev.items()
           if k != "loss_by_position" and not k.endswith("_replicas")}
    evs = list(per_source.values())
    if "masked_loss" in evs[0]:
        tokens = np.array([e["masked_tokens"] for e in evs], np.float64)
        loss = float(np.dot([e["masked_loss"] for e in evs], tokens) / tokens.sum())
        se = float(np.sqrt(np.sum((np.array([e["masked_loss_se"] for e in evs]) * tokens) ** 2)) / tokens.sum())
        acc = float(np.dot([e["masked_accuracy"] for e in evs], tokens) / tokens.sum())
        return {"masked_loss": loss, "masked_loss_se": se, "masked_accuracy": acc,
                "masked_tokens": int(tokens.sum()), **out, "loss_by_position": evs[0]["loss_by_position"]}
    tokens = np.array([e["tokens"] for e in evs], np.float64)
    total = float(np.dot([e["loss"] for e in evs], tokens))
    nbytes = int(sum(e["bytes"] for e in evs))
    loss = total / tokens.sum()
    se = float(np.sqrt(np.sum((np.array([e["loss_se"] for e in evs]) * tokens) ** 2)) / tokens.sum())
    by_position = [None if any(e["loss_by_position"][i] is None for e in evs) else
                   float(np.mean([e["loss_by_position"][i] for e in evs])) for i in range(len(evs[0]["loss_by_position"]))]
    return {"loss": loss, "loss_se": se, "perplexity": math.exp(min(loss, 700.0)),
            "bits_per_byte": total / max(nbytes, 1) / math.log(2), "tokens": int(tokens.sum()), "bytes": nbytes,
            **out, "loss_by_position": by_position}
