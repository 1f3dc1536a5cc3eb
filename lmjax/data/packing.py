"""How documents become rows: segment ids for windows over a split, and `documents` packing.

A split is its documents' tokens end to end, each document ending with the tokenizer's
end-of-document id; `doc_ends` (int64, ascending) holds where each document ends (exclusive), so
document i covers [doc_ends[i-1], doc_ends[i]).

Segment ids number the documents within one row 1, 2, ... from the row's first token; 0 marks
padding. A model given segment ids attends only within a segment and restarts positions at each
segment's start; a target counts only when it is in its input's segment (`target_weights`), so
nothing is predicted across a document boundary.

`documents` packing (config.data.packing) cuts a split into rows of R = seq_len + 1 tokens by next
fit in document order: a document longer than R fills whole rows from its start, and its tail,
like every shorter document, goes into the current row if it fits there, else starts the next
row (the rest of the current one is padding). Each row is therefore one contiguous range
[start, end) of the split, and the plan (`RowPlan`) is a pure function of (doc_ends, R), kept as
runs of equal rows (a long document's whole rows are one run), so it takes memory per document,
not per row.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np


def document_index(positions: np.ndarray, doc_ends: np.ndarray) -> np.ndarray:
    """The document each token position belongs to (int64, same shape)."""
    return np.searchsorted(doc_ends, positions, side="right")


def segment_ids(positions_BL: np.ndarray, doc_ends: np.ndarray, stop_B: np.ndarray | int) -> np.ndarray:
    """int32 [B, L]: segment ids of rows of consecutive positions (row b's positions ascending),
    counted from each row's first document; 0 at positions >= stop_B[b] (padding)."""
    doc_BL = document_index(positions_BL, doc_ends)
    seg_BL = doc_BL - doc_BL[:, :1] + 1
    stop_B1 = np.broadcast_to(np.asarray(stop_B), positions_BL.shape[:1])[:, None]
    return np.where(positions_BL < stop_B1, seg_BL, 0).astype(np.int32)


def target_weights(segments_BL1: np.ndarray) -> np.ndarray:
    """float32 [B, L]: 1 where target t+1 is a real token of input t's segment (numpy or jax)."""
    inputs, targets = segments_BL1[..., :-1], segments_BL1[..., 1:]
    return ((inputs == targets) & (targets > 0)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class RowPlan:
    """Rows as runs: run k is count[k] rows of size[k] tokens, from first[k] on."""

    first: np.ndarray  # int64 [runs]
    size: np.ndarray
    count: np.ndarray
    row_len: int

    @property
    def num_rows(self) -> int:
        return int(self.count.sum())

    @functools.cached_property
    def _before(self) -> np.ndarray:
        return np.cumsum(self.count) - self.count  # rows ahead of each run

    def rows(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) of rows `index`."""
        before = self._before
        k = np.searchsorted(before, index, side="right") - 1
        starts = self.first[k] + (index - before[k]) * self.size[k]
        return starts, starts + self.size[k]

    def all_rows(self) -> tuple[np.ndarray, np.ndarray]:
        return self.rows(np.arange(self.num_rows))

    @property
    def padding_fraction(self) -> float:
        """Share of the row slots that are padding."""
        return float(1.0 - (self.size * self.count).sum() / max(self.num_rows * self.row_len, 1))


def plan_rows(doc_ends: np.ndarray, row_len: int) -> RowPlan:
    """The rows of `documents` packing (module docstring): one pass over the documents in Python
    (next fit is sequential)."""
    doc_ends = np.asarray(doc_ends, np.int64)
    lengths = np.diff(doc_ends, prepend=0)
    whole = np.maximum(0, -(-(lengths - row_len) // row_len))  # rows filled from each start
    tails = (doc_ends - lengths + whole * row_len).tolist()  # where each document's packed part starts
    first, size, count = [], [], []
    open_start = open_end = 0  # the open row [open_start, open_end), empty when equal
    for tail, end, n in zip(tails, doc_ends.tolist(), whole.tolist()):
        if n or open_end - open_start + end - tail > row_len:  # whole rows first, or it does not fit
            if open_end > open_start:
                first.append(open_start), size.append(open_end - open_start), count.append(1)
            if n:
                first.append(tail - n * row_len), size.append(row_len), count.append(n)
            open_start = tail
        elif open_end == open_start:
            open_start = tail
        open_end = end
    if open_end > open_start:
        first.append(open_start), size.append(open_end - open_start), count.append(1)
    as_array = functools.partial(np.asarray, dtype=np.int64)
    return RowPlan(as_array(first), as_array(size), as_array(count), row_len)
