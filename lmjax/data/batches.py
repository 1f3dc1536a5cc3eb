"""Training batches: pure functions of (seed, step, process), so a resumed run replays exactly the
data of an uninterrupted one and every process of a job agrees on the global batch, reading only
its own rows from the memory-mapped shards.

- `concat` (config.data.packing): each row is a window of seq_len + 1 tokens at a start drawn
  from default_rng([seed, step]) over the split's documents end to end.
- `documents`: each row is one of the split's packed rows (lmjax/data/packing.py), drawn the same
  way, padded to seq_len + 1, with its segment ids: {"tokens": [B, L+1], "segments": [B, L+1]}.
- a mixture: source i takes rows[i] of the B rows (its weight's share, largest remainders: within
  one row of weight x B), drawn from default_rng([seed, step, i]); the rows are the sources' in order.
"""

from __future__ import annotations

import numpy as np

from lmjax.data import packing
from lmjax.errors import DataError


def local_rows(batch_size: int, process_index: int, process_count: int) -> slice:
    if process_count <= 0 or batch_size % process_count:
        raise DataError(
            f"batch_size {batch_size} is not divisible by the {process_count} processes; "
            "make config.train.batch_size a multiple of the process count"
        )
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index {process_index} is outside [0, {process_count})")
    rows = batch_size // process_count
    return slice(process_index * rows, (process_index + 1) * rows)


def train_batch(
    tokens, *, seed: int, step: int, batch_size: int, seq_len: int,
    process_index: int = 0, process_count: int = 1,
) -> np.ndarray:
    """This process's rows of the global batch for `step`: int32 [batch_size // process_count, seq_len + 1].

    Inputs are `[:, :-1]` and targets `[:, 1:]`. The global batch's window starts come from
    `default_rng([seed, step])`, so the batch depends on nothing but the arguments.
    """
    rows = local_rows(batch_size, process_index, process_count)
    starts = window_starts(tokens, np.random.default_rng([seed, step]), batch_size, seq_len)
    positions = starts[rows, None] + np.arange(seq_len + 1)
    return np.asarray(tokens[positions], dtype=np.int32)  # reads only this process's windows


def window_starts(tokens, rng, count: int, seq_len: int) -> np.ndarray:
    if len(tokens) < seq_len + 1:
        raise DataError(
            f"the train split has {len(tokens)} tokens, fewer than seq_len+1={seq_len + 1}; "
            "lower config.train.seq_len or use a bigger corpus"
        )
    return rng.integers(0, len(tokens) - seq_len, size=count)


def document_rows(split, rows_B: np.ndarray, seq_len: int) -> dict:
    """Packed rows `rows_B` of `split`: {"tokens", "segments"}, int32 [B, seq_len + 1]."""
    start_B, end_B = split.row_plan(seq_len + 1).rows(rows_B)
    positions = start_B[:, None] + np.arange(seq_len + 1)
    real = positions < end_B[:, None]
    n = len(split.tokens)
    tokens = np.where(real, np.asarray(split.tokens[np.minimum(positions, n - 1)], np.int32), 0)
    return {"tokens": tokens.astype(np.int32),
            "segments": packing.segment_ids(positions, split.doc_ends, end_B)}


def source_rows(weights: list[float], batch_size: int) -> list[int]:
    """Rows of a batch per source: floor(w x B), the rest to the largest remainders (ties: first)."""
    exact = np.asarray(weights, np.float64) * batch_size
    rows = np.floor(exact).astype(int)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - rows[i]), i))
    for i in order[: batch_size - rows.sum()]:
        rows[i] += 1
    return rows.tolist()


def batch(data, *, seed: int, step: int, batch_size: int, seq_len: int, process_index: int = 0,
          process_count: int = 1):
    """This process's rows of step `step`'s batch of `data` (a Dataset): int32 [B_local, L+1], or
    for documents packing {"tokens", "segments"} of that shape."""
    if len(data.sources) == 1 and data.packing == "concat":  # the common case, as it always was
        return train_batch(data.train, seed=seed, step=step, batch_size=batch_size, seq_len=seq_len,
                           process_index=process_index, process_count=process_count)
    counts = source_rows([s.weight for s in data.sources], batch_size) if data.mixture else [batch_size]
    which, picks = [], []  # per global row: its source, and its window start or packed row
    for i, (source, count) in enumerate(zip(data.sources, counts)):
        rng = np.random.default_rng([seed, step, i] if data.mixture else [seed, step])
        if data.packing == "documents":
            picks.append(rng.integers(0, source.train.row_plan(seq_len + 1).num_rows, size=count))
        else:
            picks.append(window_starts(source.train.tokens, rng, count, seq_len))
        which.append(np.full(count, i))
    local = local_rows(batch_size, process_index, process_count)
    which, picks = np.concatenate(which)[local], np.concatenate(picks)[local]
    out = {"tokens": np.zeros((len(which), seq_len + 1), np.int32)}
    if data.packing == "documents":
        out["segments"] = np.zeros_like(out["tokens"])
    for i in np.unique(which):  # only this process's rows are read
        mine, split = which == i, data.sources[i].train
        if data.packing == "documents":
            for k, v in document_rows(split, picks[mine], seq_len).items():
                out[k][mine] = v
        else:
            out["tokens"][mine] = split.tokens[picks[mine][:, None] + np.arange(seq_len + 1)]
    return out if data.packing == "documents" else out["tokens"]
