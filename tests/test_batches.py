"""Batches: pure functions of (seed, step, process); windows, packed documents and mixtures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from lmjax.config import DataConfig
from lmjax.data import batches, packing, prepare, train_batch
from lmjax.data.store import Tokens
from lmjax.errors import DataError

DATA_DIR = os.environ["LMJAX_DATA_DIR"]


@pytest.fixture
def counting_tokens(tmp_path) -> Tokens:
    """A split of two shards whose token at position i is i, so windows reveal where they came from."""
    np.arange(30_000, dtype=np.uint16).tofile(tmp_path / "a.bin")
    np.arange(30_000, 50_000, dtype=np.uint16).tofile(tmp_path / "b.bin")
    return Tokens([np.memmap(tmp_path / n, dtype=np.uint16, mode="r") for n in ("a.bin", "b.bin")], np.uint16)


def test_tokens_read_across_shards(counting_tokens):
    t = counting_tokens
    assert len(t) == 50_000 and t[29_999] == 29_999 and t[30_000] == 30_000
    positions = np.array([[29_998, 29_999, 30_000, 30_001], [0, 1, 49_998, 49_999]])
    assert np.array_equal(t[positions], positions)
    view = t[29_000:31_000]
    assert isinstance(view, Tokens) and np.array_equal(np.asarray(view), np.arange(29_000, 31_000))
    assert np.array_equal(np.asarray(t[45_000:]), np.arange(45_000, 50_000))


def _mapped_kb(path) -> int:
    """Resident KB of this process's memory maps of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads /proc/self/smaps (Linux)")
def test_windows_are_read_without_faulting_in_the_map(tmp_path):
    """Random windows come from pread, not the memory map: with the map, each window faults in
    at least a page (on ext4 with large folios up to 2 MB), and a run's resident memory grows
    with the corpus."""
    path = tmp_path / "big.bin"
    np.arange(1 << 22, dtype=np.uint32).astype(np.uint16).tofile(path)  # 8 MB
    tokens = Tokens([np.memmap(path, dtype=np.uint16, mode="r")], np.uint16)
    starts = np.random.default_rng(0).integers(0, len(tokens) - 129, size=256)
    positions = starts[:, None] + np.arange(129)
    assert np.array_equal(tokens[positions], (positions % (1 << 16)).astype(np.uint16))
    assert _mapped_kb(path) < 64  # 256 windows through the map: >= 1 MB


def test_train_batch_is_a_pure_function_of_seed_and_step(counting_tokens):
    args = dict(batch_size=8, seq_len=32)
    batch = train_batch(counting_tokens, seed=0, step=5, **args)
    assert batch.shape == (8, 33) and batch.dtype == np.int32
    assert np.array_equal(batch, train_batch(counting_tokens, seed=0, step=5, **args))
    assert not np.array_equal(batch, train_batch(counting_tokens, seed=0, step=6, **args))
    assert not np.array_equal(batch, train_batch(counting_tokens, seed=1, step=5, **args))
    assert np.array_equal(batch[:, 1:], batch[:, :-1] + 1)  # targets are the inputs shifted by one
    starts = np.random.default_rng([0, 5]).integers(0, len(counting_tokens) - 32, size=8)
    assert np.array_equal(batch[:, 0], starts)


@pytest.mark.parametrize("process_count", [2, 4])
def test_train_batch_shards_rebuild_the_global_batch(counting_tokens, process_count):
    args = dict(seed=7, step=3, batch_size=8, seq_len=16)
    whole = train_batch(counting_tokens, **args)
    shards = [train_batch(counting_tokens, **args, process_index=p, process_count=process_count)
              for p in range(process_count)]
    assert all(shard.shape == (8 // process_count, 17) for shard in shards)
    assert np.array_equal(np.concatenate(shards), whole)


def test_train_batch_edges_and_errors():
    tokens = np.arange(17, dtype=np.uint16)
    batch = train_batch(tokens, seed=0, step=0, batch_size=4, seq_len=16)
    assert np.array_equal(batch, np.tile(np.arange(17), (4, 1)))  # the only window that fits
    with pytest.raises(DataError, match=r"train split has 17 tokens, fewer than seq_len\+1=18; lower config.train.seq_len"):
        train_batch(tokens, seed=0, step=0, batch_size=4, seq_len=17)
    with pytest.raises(DataError, match="batch_size 6 is not divisible by the 4 processes"):
        train_batch(tokens, seed=0, step=0, batch_size=6, seq_len=8, process_count=4)


def test_row_plan_packs_whole_documents_and_long_tails():
    doc_ends = np.array([3, 5, 15, 16, 20])  # lengths 3, 2, 10, 1, 4
    plan = packing.plan_rows(doc_ends, 4)
    starts, ends = plan.all_rows()
    assert list(zip(starts.tolist(), ends.tolist())) == [(0, 3), (3, 5), (5, 9), (9, 13), (13, 16), (16, 20)]
    assert plan.padding_fraction == pytest.approx(1 - 20 / 24) and len(plan.first) == 5  # one run of 2 rows
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, 500)
    doc_ends = np.cumsum(lengths)
    for row_len in (7, 64, 257):
        plan = packing.plan_rows(doc_ends, row_len)
        starts, ends = plan.all_rows()
        picked = np.array([0, plan.num_rows - 1, plan.num_rows // 2])
        assert np.array_equal(np.stack(plan.rows(picked)), np.stack([starts[picked], ends[picked]]))
        assert starts[0] == 0 and ends[-1] == doc_ends[-1] and np.all(starts[1:] == ends[:-1])  # every token once
        assert np.all(ends - starts <= row_len) and np.all(ends > starts)
        # A row starts where a document starts, or inside one longer than a row; a document that
        # fits in a row is never cut.
        doc_starts = np.concatenate([[0], doc_ends[:-1]])
        starts_in_doc = ~np.isin(starts, doc_starts)
        assert np.all(lengths[np.searchsorted(doc_ends, starts[starts_in_doc], side="right")] > row_len)
        row_of = lambda p: np.searchsorted(starts, p, side="right") - 1  # noqa: E731
        fits = lengths <= row_len
        assert np.array_equal(row_of(doc_starts[fits]), row_of(doc_ends[fits] - 1))


def write_jsonl(path: Path, n: int, start: int = 0, word: str = "lorem") -> Path:
    with open(path, "w") as f:
        for i in range(start, start + n):
            f.write(json.dumps({"text": f"{word} {i} " * (i % 17 + 1)}) + "\n")
    return path


def test_documents_batches_keep_documents_apart(tmp_path):
    write_jsonl(tmp_path / "c.jsonl", 400)
    data = prepare(DataConfig(corpus=str(tmp_path / "c.jsonl"), packing="documents", cache_dir=str(tmp_path)))
    split = data.sources[0].train
    eod = data.tokenizer.eod_id
    args = dict(seed=3, step=11, batch_size=8, seq_len=64)
    b = batches.batch(data, **args)
    assert set(b) == {"tokens", "segments"} and b["tokens"].shape == b["segments"].shape == (8, 65)
    assert all(np.array_equal(b[k], batches.batch(data, **args)[k]) for k in b)  # a pure function
    parts = [batches.batch(data, **args, process_index=p, process_count=2) for p in (0, 1)]
    assert all(np.array_equal(np.concatenate([p[k] for p in parts]), b[k]) for k in b)
    plan = split.row_plan(65)
    starts, ends = plan.all_rows()
    rows = np.random.default_rng([3, 11]).integers(0, len(starts), 8)  # rows drawn as windows are
    for tokens, segments, r in zip(b["tokens"], b["segments"], rows):
        n = ends[r] - starts[r]
        assert np.all(segments[:n] > 0) and np.all(segments[n:] == 0) and np.all(tokens[n:] == 0)
        assert np.array_equal(tokens[:n], split.tokens[starts[r] + np.arange(n)])  # one packed row
        assert np.all(np.diff(segments[:n]) >= 0) and segments[0] == 1
        doc = np.searchsorted(split.doc_ends, starts[r] + np.arange(n), side="right")
        assert np.array_equal(segments[:n], doc - doc[0] + 1)  # a segment per document
        for s in np.unique(segments[:n])[:-1]:  # every segment but the last ends with eod
            assert tokens[:n][segments[:n] == s][-1] == eod
    assert 0 < plan.padding_fraction < 0.5 and np.all(np.diff(starts) > 0)


def test_mixture_rows_follow_the_weights(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", 300, word="alpha")
    b = write_jsonl(tmp_path / "b.jsonl", 300, word="beta")
    data = prepare(DataConfig(mixture=f"{a}:0.7,{b}:0.3", cache_dir=str(tmp_path)))
    assert batches.source_rows([0.7, 0.3], 10) == [7, 3] and batches.source_rows([0.7, 0.3], 16) == [11, 5]
    assert batches.source_rows([1 / 3] * 3, 16) == [6, 5, 5]
    for B in (1, 3, 10, 16):
        rows = batches.source_rows([0.7, 0.3], B)
        assert sum(rows) == B and all(abs(r - w * B) < 1 for r, w in zip(rows, [0.7, 0.3]))
    batch = batches.batch(data, seed=0, step=4, batch_size=16, seq_len=32)
    words = [data.tokenizer.decode(row) for row in batch]
    assert [("alpha" in w, "beta" in w) for w in words] == [(True, False)] * 11 + [(False, True)] * 5
    halves = [batches.batch(data, seed=0, step=4, batch_size=16, seq_len=32, process_index=p, process_count=2)
              for p in (0, 1)]
    assert np.array_equal(np.concatenate(halves), batch)
    assert not np.array_equal(batch, batches.batch(data, seed=0, step=5, batch_size=16, seq_len=32))
