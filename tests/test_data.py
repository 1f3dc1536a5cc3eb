"""Tests of the data pipeline: corpora, tokenizers, the token cache, and batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from lmjax.data import (
    build_tokenizer,
    corpus_fingerprint,
    load_corpus,
    prepare,
    tokenizer_from_json,
    train_batch,
)
from lmjax.data import corpus as corpus_lib
from lmjax.data import dataset as dataset_lib
from lmjax.config import DataConfig
from lmjax.errors import ConfigError, DataError

DATA_DIR = os.environ.get("LMJAX_DATA_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
REPO = Path(__file__).resolve().parents[1]
TRICKY = (
    "def f(x):\n\tif x:\t\treturn  x   # two, three spaces\n\n\n"
    "    indented after blank lines\r\nCRLF line\r\n"
    "emoji 😀🎉👩‍💻 CJK 漢字かな한국어 accents éàü ß\n"
    " leading space, trailing spaces   \n"
    "a literal ▁ (U+2581), a NUL \x00, zero width \u200b, digits 1234567890\n\n"
)


@pytest.fixture(scope="module")
def stdlib():
    return load_corpus("stdlib")


@pytest.fixture(scope="module")
def shakespeare():
    return load_corpus("tinyshakespeare", data_dir=DATA_DIR)


@pytest.fixture(scope="module")
def stdlib_sample(stdlib):
    return stdlib.train[:2_000_000]


def data_cfg(**overrides) -> DataConfig:
    return DataConfig(**{"data_dir": DATA_DIR, **overrides})


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


# ---------------------------------------------------------------- tokenizers


def assert_round_trip(tokenizer, text: str) -> np.ndarray:
    ids = tokenizer.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert ids.size == 0 or (ids.min() >= 0 and ids.max() < tokenizer.vocab_size)
    assert tokenizer.decode(ids) == text
    return ids


def test_byte_round_trip(shakespeare, stdlib_sample):
    tokenizer = build_tokenizer("byte", "")
    assert tokenizer.vocab_size == 256
    for text in (shakespeare.train, TRICKY, stdlib_sample, ""):
        ids = assert_round_trip(tokenizer, text)
        assert ids.size == len(text.encode("utf-8"))
    assert tokenizer.decode(list(TRICKY.encode())) == TRICKY  # plain lists decode too


def test_char_round_trip(shakespeare, stdlib):
    tokenizer = build_tokenizer("char", shakespeare.train)
    assert tokenizer.vocab_size == len(set(shakespeare.train)) + 1
    assert_round_trip(tokenizer, shakespeare.train)
    assert_round_trip(tokenizer, shakespeare.val)
    ids = tokenizer.encode("ab€c")  # '€' never occurs in tinyshakespeare
    assert ids[2] == tokenizer.vocab_size - 1
    assert tokenizer.decode(ids) == "ab\ufffdc"

    code_tokenizer = build_tokenizer("char", stdlib.train)
    assert_round_trip(code_tokenizer, stdlib.train)
    restored = tokenizer_from_json(json.loads(json.dumps(code_tokenizer.to_json())))
    assert restored.fingerprint == code_tokenizer.fingerprint
    assert np.array_equal(restored.encode(TRICKY), code_tokenizer.encode(TRICKY))


@pytest.fixture(scope="module")
def sp_tokenizers(shakespeare, stdlib):
    """sentencepiece tokenizers for each model type, trained on prose and on code."""
    sources = {"shakespeare": shakespeare.train[:300_000], "stdlib": stdlib.train[:300_000]}
    return {
        (model_type, source): build_tokenizer("sentencepiece", text, vocab_size=1000, sp_model_type=model_type)
        for model_type in ("bpe", "unigram")
        for source, text in sources.items()
    }


@pytest.mark.parametrize("source", ["shakespeare", "stdlib"])
@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_round_trip(sp_tokenizers, model_type, source, shakespeare, stdlib_sample):
    tokenizer = sp_tokenizers[model_type, source]
    assert tokenizer.kind == "sentencepiece" and tokenizer.vocab_size == 1000
    for text in (TRICKY, shakespeare.train + shakespeare.val, stdlib_sample, "", "\n", "▁", "\n\n▁▁ \n"):
        assert_round_trip(tokenizer, text)
    # It actually compresses (not all byte fallback) on the text it was trained on.
    own = shakespeare.val if source == "shakespeare" else stdlib_sample
    assert len(own.encode()) / tokenizer.encode(own).size > 2.0
    # Chunked encoding gives the ids of one sentencepiece call on the whole text (for unigram up to
    # near-ties in the Viterbi scores, which sum in float from the start of each call).
    chunked, whole = tokenizer.encode(shakespeare.val), np.array(tokenizer.sp.encode(shakespeare.val))
    if model_type == "bpe":
        assert np.array_equal(chunked, whole)
    else:
        assert len(chunked) == len(whole) and np.mean(chunked != whole) < 1e-3


def test_sentencepiece_json_round_trip(sp_tokenizers):
    tokenizer = sp_tokenizers["bpe", "stdlib"]
    blob = json.loads(json.dumps(tokenizer.to_json()))
    restored = tokenizer_from_json(blob)
    assert restored.fingerprint == tokenizer.fingerprint and restored.vocab_size == tokenizer.vocab_size
    assert np.array_equal(restored.encode(TRICKY), tokenizer.encode(TRICKY))
    other = sp_tokenizers["unigram", "stdlib"]
    assert other.fingerprint != tokenizer.fingerprint


def test_sentencepiece_training_is_deterministic_across_processes(shakespeare):
    """Line sampling must not depend on the process (sentencepiece's own shuffle does)."""
    here = build_tokenizer("sentencepiece", shakespeare.train, vocab_size=500, seed=3, max_lines=3000).fingerprint
    script = (
        "import sys; from lmjax.data import tokenizers as t, load_corpus; "
        "c = load_corpus('tinyshakespeare', data_dir=sys.argv[1]); "
        "print(t.build_tokenizer('sentencepiece', c.train, vocab_size=500, seed=3, max_lines=3000).fingerprint)"
    )
    there = subprocess.run([sys.executable, "-c", script, DATA_DIR], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.strip()
    assert here == there
    assert build_tokenizer("sentencepiece", shakespeare.train, vocab_size=500, seed=4,
                           max_lines=3000).fingerprint != here


def test_tokenizer_errors():
    text = "hello world\n" * 50
    with pytest.raises(DataError, match=r"vocab_size 50000 is too large .*lower config.data.vocab_size"):
        build_tokenizer("sentencepiece", text, vocab_size=50000)
    with pytest.raises(DataError, match=r"vocab_size 100 is too small .*raise config.data.vocab_size"):
        build_tokenizer("sentencepiece", text, vocab_size=100)
    # Names and bounds of config.data are checked once, by the schema.
    for bad, match in [(dict(tokenizer="bytes"), "config.data.tokenizer='bytes' is not one of"),
                       (dict(tokenizer="sentencepiece"), "needs config.data.vocab_size > 0"),
                       (dict(tokenizer="sentencepiece", vocab_size=300, sp_model_type="wordpiece"),
                        "config.data.sp_model_type='wordpiece'"),
                       (dict(val_fraction=1.5), r"val_fraction must be in \(0, 1\)"),
                       (dict(val_part="train"), "config.data.val_part='train' is not one of 'all', 'tune', 'test'"),
                       (dict(tokenizer="sentencepiece", vocab_size=2**31 + 1), "too large for the token cache")]:
        with pytest.raises(ConfigError, match=match):
            DataConfig(**bad)


# ---------------------------------------------------------------- corpora


def test_tinyshakespeare_split_matches_nanogpt(shakespeare):
    text = Path(DATA_DIR, "tinyshakespeare", "input.txt").read_text(encoding="utf-8")
    n = len(text)
    assert shakespeare.train == text[: int(n * 0.9)]
    assert shakespeare.val == text[int(n * 0.9):]
    assert shakespeare.num_files == 1


def test_stdlib_split_by_file(stdlib):
    root = sysconfig.get_paths()["stdlib"]
    train_texts, val_texts, train_files, val_files, skipped = [], [], set(), set(), 0
    for rel, path in corpus_lib._stdlib_files():
        assert "site-packages" not in rel and rel.endswith(".py")
        try:
            text = Path(root, rel).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            skipped += 1
            continue
        in_val = corpus_lib.is_val_file(rel, 0.1)
        (val_texts if in_val else train_texts).append(text)
        (val_files if in_val else train_files).add(rel)
    assert train_files and val_files and not train_files & val_files
    assert 0.05 < len(val_files) / (len(val_files) + len(train_files)) < 0.15
    assert stdlib.train == "\n".join(train_texts)
    assert stdlib.val == "\n".join(val_texts)
    assert stdlib.num_skipped == skipped
    assert stdlib.num_files == len(train_files) + len(val_files) + skipped
    assert corpus_fingerprint("stdlib") == stdlib.fingerprint
    assert corpus_fingerprint("stdlib", val_fraction=0.2) != stdlib.fingerprint


def test_user_corpus_file_dir_and_glob(tmp_path):
    texts = {f"part{i}.txt": f"file {i} " + "text " * (i + 1) for i in range(6)}
    for name, text in texts.items():
        write(tmp_path / "corpus" / "sub" / name, text)
    write(tmp_path / "corpus" / "notes.md", "markdown")

    one = load_corpus(str(tmp_path / "corpus" / "sub" / "part3.txt"), val_fraction=0.25)
    cut = int(len(texts["part3.txt"]) * 0.75)
    assert (one.train, one.val, one.num_files) == (texts["part3.txt"][:cut], texts["part3.txt"][cut:], 1)

    by_glob = load_corpus(str(tmp_path / "corpus" / "**" / "*.txt"), val_fraction=0.5)
    names = sorted(texts)
    in_val = [corpus_lib.is_val_file(name, 0.5) for name in names]  # glob-relative names are the base names
    if all(in_val):
        in_val[0] = False
    if not any(in_val):
        in_val[-1] = True
    assert by_glob.train == "\n".join(texts[n] for n, v in zip(names, in_val) if not v)
    assert by_glob.val == "\n".join(texts[n] for n, v in zip(names, in_val) if v)
    assert by_glob.num_files == 6

    by_dir = load_corpus(str(tmp_path / "corpus"), val_fraction=0.5)
    assert by_dir.num_files == 7 and "markdown" in by_dir.train + by_dir.val
    assert by_dir.fingerprint != by_glob.fingerprint


def test_two_files_always_give_two_splits(tmp_path):
    write(tmp_path / "a.txt", "first file")
    write(tmp_path / "b.txt", "second file")
    for val_fraction in (1e-9, 1 - 1e-9):  # the hash rule puts both files in one split
        corpus = load_corpus(str(tmp_path / "*.txt"), val_fraction=val_fraction)
        assert (corpus.train, corpus.val) == ("first file", "second file")


def test_corpus_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="matched no files; pass an existing path or glob"):
        load_corpus(str(tmp_path / "missing" / "*.txt"))
    write(tmp_path / "empty" / "a.txt", "")
    write(tmp_path / "empty" / "b.txt", "")
    with pytest.raises(DataError, match="has no text"):
        load_corpus(str(tmp_path / "empty"))
    write(tmp_path / "mixed" / "good.txt", "fine text")
    bad = write(tmp_path / "mixed" / "bad.txt", b"abc\xff\xfedef")
    with pytest.raises(DataError, match=rf"corpus file {bad} is not UTF-8 \(byte 0xff at offset 3\); convert it"):
        load_corpus(str(tmp_path / "mixed" / "*.txt"))
    write(tmp_path / "tiny.txt", "x")
    with pytest.raises(DataError, match="leaves the train split empty"):
        load_corpus(str(tmp_path / "tiny.txt"))

    monkeypatch.delenv("LMJAX_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="needs its data directory: set LMJAX_DATA_DIR"):
        load_corpus("tinyshakespeare")
    with pytest.raises(DataError, match=f"not found at {tmp_path}/tinyshakespeare/input.txt"):
        load_corpus("tinyshakespeare", data_dir=str(tmp_path))
    monkeypatch.setenv("LMJAX_DATA_DIR", DATA_DIR)
    assert corpus_fingerprint("tinyshakespeare") == corpus_fingerprint("tinyshakespeare", data_dir=DATA_DIR)


# ---------------------------------------------------------------- cache


@pytest.mark.parametrize("kind, vocab_size", [("byte", 0), ("char", 0), ("sentencepiece", 400)])
def test_prepare_builds_then_reuses_cache(tmp_path, monkeypatch, kind, vocab_size):
    text = Path(DATA_DIR, "tinyshakespeare", "input.txt").read_text(encoding="utf-8")[:100_000]
    write(tmp_path / "small.txt", text)
    cfg = data_cfg(corpus=str(tmp_path / "small.txt"), tokenizer=kind, vocab_size=vocab_size,
                   cache_dir=str(tmp_path / "cache"))
    first = prepare(cfg)
    corpus = load_corpus(cfg.corpus)
    assert first.cache_dir.startswith(str(tmp_path / "cache" / "tokens"))
    assert sorted(os.listdir(first.cache_dir)) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]
    assert isinstance(first.train, np.memmap) and first.train.dtype == np.uint16
    assert first.tokenizer.decode(first.train) == corpus.train
    assert first.tokenizer.decode(first.val) == corpus.val
    assert (first.train_bytes, first.val_bytes) == (len(corpus.train.encode()), len(corpus.val.encode()))
    assert first.corpus_fingerprint == corpus.fingerprint

    def must_not_run(*args, **kwargs):
        raise AssertionError("the cache was not reused")

    monkeypatch.setattr(dataset_lib, "build_tokenizer", must_not_run)
    monkeypatch.setattr(dataset_lib, "load_corpus", must_not_run)
    second = prepare(cfg)
    assert second.cache_dir == first.cache_dir
    assert np.array_equal(second.train, first.train) and np.array_equal(second.val, first.val)
    assert second.tokenizer.fingerprint == first.tokenizer.fingerprint


def test_cache_key_follows_settings(tmp_path):
    write(tmp_path / "small.txt", Path(DATA_DIR, "tinyshakespeare", "input.txt").read_text()[:50_000])
    base = dict(corpus=str(tmp_path / "small.txt"), cache_dir=str(tmp_path / "cache"))
    folders = {
        name: prepare(data_cfg(**base, **settings)).cache_dir
        for name, settings in {
            "byte": dict(tokenizer="byte"),
            "byte, unused vocab_size": dict(tokenizer="byte", vocab_size=123, sp_model_type="unigram"),
            "char": dict(tokenizer="char"),
            "bpe 400": dict(tokenizer="sentencepiece", vocab_size=400),
            "bpe 420": dict(tokenizer="sentencepiece", vocab_size=420),
            "unigram 400": dict(tokenizer="sentencepiece", vocab_size=400, sp_model_type="unigram"),
            "byte, val 0.2": dict(tokenizer="byte", val_fraction=0.2),
        }.items()
    }
    assert folders["byte"] == folders["byte, unused vocab_size"]
    del folders["byte, unused vocab_size"]
    assert len(set(folders.values())) == len(folders)


def test_val_parts_partition_the_split(tmp_path):
    """'tune' and 'test' are the validation split's two halves, in order, disjoint; views of one
    cache (val_part is not in its key), with the bytes their tokens stand for."""
    write(tmp_path / "small.txt", Path(DATA_DIR, "tinyshakespeare", "input.txt").read_text()[:50_001])
    base = dict(corpus=str(tmp_path / "small.txt"), tokenizer="char", cache_dir=str(tmp_path / "cache"))
    parts = {part: prepare(data_cfg(**base, val_part=part)) for part in ("all", "tune", "test")}
    whole, tune, test = (parts[p].val for p in ("all", "tune", "test"))
    assert len(tune) == len(whole) // 2 and len(tune) + len(test) == len(whole)
    assert np.array_equal(np.concatenate([tune, test]), whole)
    assert len({d.cache_dir for d in parts.values()}) == 1
    assert parts["tune"].val_bytes + parts["test"].val_bytes == parts["all"].val_bytes
    assert parts["all"].tokenizer.decode(test) == load_corpus(base["corpus"]).val[len(tune):]


def test_cache_root(monkeypatch):
    monkeypatch.setenv("LMJAX_CACHE_DIR", "/env/cache")
    assert dataset_lib.cache_root(data_cfg(cache_dir="/cfg/cache")) == "/cfg/cache"
    assert dataset_lib.cache_root(data_cfg()) == "/env/cache"
    monkeypatch.delenv("LMJAX_CACHE_DIR")
    assert dataset_lib.cache_root(data_cfg()) == os.path.expanduser("~/.cache/lmjax")


def test_losing_the_publish_race_keeps_the_winner(tmp_path):
    write(tmp_path / "small.txt", "some text for the race " * 100)
    dataset = prepare(data_cfg(corpus=str(tmp_path / "small.txt"), cache_dir=str(tmp_path / "cache")))
    loser = tmp_path / "cache" / "tokens" / ".loser.tmp"
    write(loser / "meta.json", "{}")
    dataset_lib._publish(str(loser), dataset.cache_dir)
    assert not loser.exists()
    assert json.loads(Path(dataset.cache_dir, "meta.json").read_text())["train_tokens"] == len(dataset.train)


def test_token_dtype():
    assert dataset_lib.token_dtype(256) == np.uint16
    assert dataset_lib.token_dtype(65536) == np.uint16
    assert dataset_lib.token_dtype(65537) == np.uint32
    assert dataset_lib.token_dtype(2**31) == np.uint32


# ---------------------------------------------------------------- batches


@pytest.fixture
def counting_tokens(tmp_path) -> np.memmap:
    """A memmapped split whose token at position i is i, so windows reveal where they came from."""
    np.arange(50_000, dtype=np.uint16).tofile(tmp_path / "tokens.bin")
    return np.memmap(tmp_path / "tokens.bin", dtype=np.uint16, mode="r")


def test_train_batch_is_a_pure_function_of_seed_and_step(counting_tokens):
    args = dict(batch_size=8, seq_len=32)
    batch = train_batch(counting_tokens, seed=0, step=5, **args)
    assert batch.shape == (8, 33) and batch.dtype == np.int32
    assert np.array_equal(batch, train_batch(counting_tokens, seed=0, step=5, **args))
    assert not np.array_equal(batch, train_batch(counting_tokens, seed=0, step=6, **args))
    assert not np.array_equal(batch, train_batch(counting_tokens, seed=1, step=5, **args))
    assert np.array_equal(batch[:, 1:], batch[:, :-1] + 1)  # targets are the inputs shifted by one
    assert batch.min() >= 0 and batch.max() < len(counting_tokens)
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
