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
[start, end) of the split, and the plan is those two arrays: a pure function of (doc_ends, R).
"""

from __future__ import annotations

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


def plan_rows(doc_ends: np.ndarray, row_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends), int64 [num_rows]: the rows of `documents` packing (module docstring)."""
    starts, ends = [], []
    row_start, row_end = 0, 0  # the open row: [row_start, row_end), empty when equal
    doc_start = 0
    for doc_end in doc_ends.tolist():
        s = doc_start
        while doc_end - s > row_len:  # whole rows from a long document's start
            if row_end > row_start:
                starts.append(row_start), ends.append(row_end)
            starts.append(s), ends.append(s + row_len)
            s += row_len
            row_start = row_end = s
        if row_end - row_start + doc_end - s > row_len:  # does not fit: close the open row
            starts.append(row_start), ends.append(row_end)
            row_start = s
        elif row_end == row_start:
            row_start = s
        row_end = doc_end
        doc_start = doc_end
    if row_end > row_start:
        starts.append(row_start), ends.append(row_end)
    return np.asarray(starts, np.int64), np.asarray(ends, np.int64)


def padding_fraction(starts: np.ndarray, ends: np.ndarray, row_len: int) -> float:
    """Share of the plan's row slots that are padding."""
    return float(1.0 - (ends - starts).sum() / max(len(starts) * row_len, 1))
