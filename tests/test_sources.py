"""Corpora: finding files, every input format, the split by document, pieces, bad records."""

from __future__ import annotations

import gzip
import json
import os
import sysconfig
from pathlib import Path

import pytest

from lmjax.data import sources as src
from lmjax.errors import DataError

DATA_DIR = os.environ["LMJAX_DATA_DIR"]
OPTS = src.ReadOptions()


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def read_all(name: str, opts: src.ReadOptions = OPTS, piece_bytes: int = src.PIECE_BYTES):
    """(train texts, val texts, keys, counts) of a corpus, piece by piece."""
    corpus = src.find_corpus(name)
    train, val, keys, counts = [], [], [], {}
    for piece in src.plan_pieces(corpus, piece_bytes):
        for key, text, in_val in src.documents(corpus, piece, opts, counts):
            (val if in_val else train).append(text)
            keys.append(key)
    return train, val, keys, counts


def records(n: int, start: int = 0) -> list[dict]:
    return [{"text": f"document {i}: " + "words " * (i % 7 + 1), "id": i} for i in range(start, start + n)]


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def test_tinyshakespeare_split_matches_nanogpt():
    text = Path(DATA_DIR, "tinyshakespeare", "input.txt").read_text(encoding="utf-8")
    train, val, _, _ = read_all("tinyshakespeare")
    n = len(text)
    assert train == [text[: int(n * 0.9)]] and val == [text[int(n * 0.9):]]


def test_stdlib_split_by_file():
    """The stdlib is split by a hash of each file's path, as before token stores: the same files."""
    root = sysconfig.get_paths()["stdlib"]
    corpus = src.find_corpus("stdlib")
    train, val, keys, counts = read_all("stdlib")
    expect = {"train": [], "val": []}
    skipped = 0
    for f in corpus.files:
        assert "site-packages" not in f.rel and f.rel.endswith(".py")
        try:
            text = Path(root, f.rel).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            skipped += 1
            continue
        if text:
            expect["val" if src.is_val(f.rel, 0.1) else "train"].append(text)
    assert (train, val) == (expect["train"], expect["val"])
    assert counts["skipped_files"] == skipped and 0.05 < len(val) / (len(train) + len(val)) < 0.15
    assert len(set(keys)) == len(keys)


def test_text_files_dir_and_glob(tmp_path):
    texts = {f"part{i}.txt": f"file {i} " + "text " * (i + 1) for i in range(6)}
    for name, text in texts.items():
        write(tmp_path / "corpus" / "sub" / name, text)
    write(tmp_path / "corpus" / "notes.md", "markdown")
    one = src.find_corpus(str(tmp_path / "corpus" / "sub" / "part3.txt"))
    assert one.split == "position" and [f.rel for f in one.files] == ["part3.txt"]
    by_glob = src.find_corpus(str(tmp_path / "corpus" / "**" / "*.txt"))
    assert [f.rel for f in by_glob.files] == sorted(texts)  # glob-relative names
    train, val, _, _ = read_all(str(tmp_path / "corpus" / "**" / "*.txt"), src.ReadOptions(val_fraction=0.5))
    sides = src.forced_text_sides(by_glob, 0.5)
    assert train == [texts[f.rel] for i, f in enumerate(by_glob.files) if not sides[i]]
    assert val == [texts[f.rel] for i, f in enumerate(by_glob.files) if sides[i]]
    by_dir = src.find_corpus(str(tmp_path / "corpus"))
    assert len(by_dir.files) == 7 and "notes.md" in [f.rel for f in by_dir.files]


def test_two_files_always_give_two_splits(tmp_path):
    write(tmp_path / "a.txt", "first file")
    write(tmp_path / "b.txt", "second file")
    for val_fraction in (1e-9, 1 - 1e-9):  # the hash rule puts both files in one split
        train, val, _, _ = read_all(str(tmp_path / "*.txt"), src.ReadOptions(val_fraction=val_fraction))
        assert (train, val) == (["first file"], ["second file"])


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_jsonl_records_are_documents(tmp_path, suffix):
    rows = records(300)
    data = jsonl(rows)
    if suffix == ".jsonl.gz":
        data = gzip.compress(data)
    elif suffix == ".jsonl.zst":
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    write(tmp_path / f"part{suffix}", data)
    train, val, keys, counts = read_all(str(tmp_path / f"part{suffix}"))
    assert sorted(train + val) == sorted(r["text"] for r in rows)
    assert 10 < len(val) < 60 and counts["bad_records"] == 0
    offsets = [int(k.split("\0")[1]) for k in keys]  # a record's key: its file and its line's byte offset
    plain = jsonl(rows)
    assert all(plain[o:].startswith(b'{"text"') and (o == 0 or plain[o - 1:o] == b"\n") for o in offsets)


def test_plain_jsonl_byte_ranges_give_the_same_documents(tmp_path):
    """A plain .jsonl is cut into byte ranges (pieces); each line is read by exactly one of them."""
    write(tmp_path / "big.jsonl", jsonl(records(2000)))
    whole = read_all(str(tmp_path / "big.jsonl"))
    corpus = src.find_corpus(str(tmp_path / "big.jsonl"))
    for piece_bytes in (1000, 4096, 7777):
        pieces = src.plan_pieces(corpus, piece_bytes)
        assert len(pieces) > 5 and pieces[0].start == 0 and pieces[-1].stop == corpus.files[0].size
        assert read_all(str(tmp_path / "big.jsonl"), piece_bytes=piece_bytes) == whole


def test_adding_a_file_moves_no_document(tmp_path):
    write(tmp_path / "a.jsonl", jsonl(records(400)))
    before_train, before_val, _, _ = read_all(str(tmp_path / "*.jsonl"))
    write(tmp_path / "b.jsonl", jsonl(records(400, start=400)))
    after_train, after_val, _, _ = read_all(str(tmp_path / "*.jsonl"))
    assert after_train[:len(before_train)] == before_train and after_val[:len(before_val)] == before_val


def test_parquet_and_datasets_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = records(500)
    pq.write_table(pa.table({"content": [r["text"] for r in rows], "id": [r["id"] for r in rows]}),
                   tmp_path / "t.parquet", row_group_size=64)
    train, val, keys, _ = read_all(str(tmp_path / "t.parquet"), src.ReadOptions(text_key="content"))
    assert sorted(train + val) == sorted(r["text"] for r in rows)
    assert sorted(int(k.split("\0")[1]) for k in keys) == list(range(500))  # key: the row index
    with pytest.raises(DataError, match=r"t.parquet has no column 'text' \(it has 'content', 'id'\); set "
                                        "config.data.text_key"):
        read_all(str(tmp_path / "t.parquet"))

    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": [r["text"] for r in rows]})
    ds.save_to_disk(str(tmp_path / "hf"), num_shards=3)
    corpus = src.find_corpus(str(tmp_path / "hf"))
    assert len(corpus.files) == 3 and all(f.kind == "arrow" for f in corpus.files)
    train2, val2, _, _ = read_all(str(tmp_path / "hf"))
    assert sorted(train2 + val2) == sorted(r["text"] for r in rows)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"is a datasets DatasetDict \(splits train\); point config.data.corpus "
                                        r"at one split's folder"):
        src.find_corpus(str(tmp_path / "dd"))


def test_bad_records_name_file_and_line_or_are_skipped(tmp_path):
    good = jsonl(records(3))
    cases = {
        "not JSON": (b"{not json\n", r"line 4: not JSON \(Expecting property name .*\)"),
        "no text": (b'{"body": "x"}\n', r"line 4: no 'text' field \(config.data.text_key\)"),
        "not a string": (b'{"text": 3}\n', "line 4: its 'text' field is int, not a string"),
        "not UTF-8": (b'{"text": "\xff\xfe"}\n', "line 4: not UTF-8"),
    }
    for name, (bad, message) in cases.items():
        path = write(tmp_path / name.replace(" ", "_") / "x.jsonl", good + bad + good)
        with pytest.raises(DataError, match=rf"{path}, {message}; fix the record, or set "
                                            r"config.data.bad_records='skip'"):
            read_all(str(path))
        train, val, _, counts = read_all(str(path), src.ReadOptions(bad_records="skip"))
        assert len(train + val) == 6 and counts["bad_records"] == 1
    # in a later byte range of a plain file the line number is still the file's
    path = write(tmp_path / "late.jsonl", jsonl(records(200)) + b"{oops\n")
    with pytest.raises(DataError, match="late.jsonl, line 201: not JSON"):
        read_all(str(path), piece_bytes=500)


def test_corpus_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="matched no files; pass an existing path or glob"):
        src.find_corpus(str(tmp_path / "missing" / "*.txt"))
    write(tmp_path / "mixed" / "good.txt", "fine text")
    bad = write(tmp_path / "mixed" / "bad.txt", b"abc\xff\xfedef")
    with pytest.raises(DataError, match=rf"corpus file {bad} is not UTF-8 \(byte 0xff at offset 3\); convert it"):
        read_all(str(tmp_path / "mixed" / "*.txt"))
    write(tmp_path / "tiny.txt", "x")
    with pytest.raises(DataError, match="leaves the train split empty"):
        read_all(str(tmp_path / "tiny.txt"))
    monkeypatch.delenv("LMJAX_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="needs its data directory: set LMJAX_DATA_DIR"):
        src.find_corpus("tinyshakespeare")
    with pytest.raises(DataError, match=f"not found at {tmp_path}/tinyshakespeare/input.txt"):
        src.find_corpus("tinyshakespeare", data_dir=str(tmp_path))


def test_mixture_names():
    mix = src.parse_mixture("stdlib:0.7, /data/web/*.jsonl.zst:0.3")
    assert [(m.name, m.corpus) for m in mix] == [("stdlib", "stdlib"), ("web", "/data/web/*.jsonl.zst")]
    assert [m.weight for m in mix] == pytest.approx([0.7, 0.3])
    named = src.parse_mixture("code=stdlib:1,prose=tinyshakespeare:3")
    assert [(m.name, m.weight) for m in named] == [("code", 0.25), ("prose", 0.75)]
