"""Tokenizers: lossless round trips, end-of-document ids, JSON round trips, training errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from lmjax.config import DataConfig
from lmjax.data import build_tokenizer, tokenizer_from_json
from lmjax.data.tokenizers import ByteTokenizer, CharTokenizer
from lmjax.errors import ConfigError, DataError

DATA_DIR = os.environ["LMJAX_DATA_DIR"]
REPO = Path(__file__).resolve().parents[1]
TRICKY = (
    "def f(x):\n\tif x:\t\treturn  x   # two, three spaces\n\n\n"
    "    indented after blank lines\r\nCRLF line\r\n"
    "emoji 😀🎉👩‍💻 CJK 漢字かな한국어 accents éàü ß\n"
    " leading space, trailing spaces   \n"
    "a literal ▁ (U+2581), a NUL \x00, zero width \u200b, digits 1234567890\n\n"
    "names of special tokens as text: <|endoftext|> </s> <unk> <0x41>\n"
)


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return Path(DATA_DIR, "tinyshakespeare", "input.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def code() -> list[str]:
    """Some stdlib modules, one document each."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [p.read_text(encoding="utf-8") for p in sorted(root.glob("[a-f]*.py"))[:40]]


@pytest.fixture(scope="module")
def trained(shakespeare, code):
    """Each trained kind, on prose and on code."""
    out = {}
    for source, docs in {"shakespeare": [shakespeare[:300_000]], "code": code}.items():
        out["sentencepiece-bpe", source] = build_tokenizer("sentencepiece", docs, vocab_size=1000)
        out["sentencepiece-unigram", source] = build_tokenizer("sentencepiece", docs, vocab_size=1000,
                                                              sp_model_type="unigram")
        out["bpe", source] = build_tokenizer("bpe", docs, vocab_size=1000)
    return out


def assert_round_trip(tokenizer, text: str) -> np.ndarray:
    ids = tokenizer.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert ids.size == 0 or (ids.min() >= 0 and ids.max() < tokenizer.vocab_size)
    assert tokenizer.eod_id not in ids  # no text encodes to the end-of-document id
    assert tokenizer.decode(ids) == text
    assert tokenizer.token_bytes()[ids].sum() == len(text.encode("utf-8"))  # bits per byte divide by these
    return ids


def assert_documents(tokenizer, texts: list[str]) -> None:
    """encode_documents: each document's ids, then eod_id; decoding drops the eod ids."""
    ids, lengths = tokenizer.encode_documents(texts)
    ends = np.cumsum(lengths)
    assert ids.dtype == np.int32 and ends[-1] == ids.size
    assert np.array_equal(ids[ends - 1], np.full(len(texts), tokenizer.eod_id))
    starts = np.concatenate([[0], ends[:-1]])
    for text, a, b in zip(texts, starts, ends):
        assert np.array_equal(ids[a:b - 1], tokenizer.encode(text))
    assert tokenizer.decode(ids) == "".join(texts)
    assert tokenizer.token_bytes()[tokenizer.eod_id] == 0


def test_byte(shakespeare):
    tokenizer = build_tokenizer("byte")
    assert (tokenizer.vocab_size, tokenizer.eod_id) == (257, 256)
    for text in (shakespeare[:100_000], TRICKY, ""):
        ids = assert_round_trip(tokenizer, text)
        assert ids.size == len(text.encode("utf-8"))
    assert tokenizer.decode(list(TRICKY.encode())) == TRICKY  # plain lists decode too
    assert_documents(tokenizer, [TRICKY, "", "abc"])


def test_char(shakespeare, code):
    tokenizer = build_tokenizer("char", [shakespeare])
    assert tokenizer.vocab_size == len(set(shakespeare)) + 2  # its characters, <unk>, end of document
    assert (tokenizer.unk_id, tokenizer.eod_id) == (len(set(shakespeare)), len(set(shakespeare)) + 1)
    assert_round_trip(tokenizer, shakespeare)
    ids = tokenizer.encode("ab€c")  # '€' never occurs in tinyshakespeare
    assert ids[2] == tokenizer.unk_id and tokenizer.decode(ids) == "ab\ufffdc"
    code_tokenizer = build_tokenizer("char", code + [TRICKY])
    assert_round_trip(code_tokenizer, TRICKY)
    assert_documents(code_tokenizer, code[:3])


@pytest.mark.parametrize("source", ["shakespeare", "code"])
@pytest.mark.parametrize("kind", ["sentencepiece-bpe", "sentencepiece-unigram", "bpe"])
def test_trained_round_trip_and_compress(trained, kind, source, shakespeare, code):
    tokenizer = trained[kind, source]
    assert tokenizer.vocab_size == 1000 and 0 <= tokenizer.eod_id < 1000
    for text in (TRICKY, shakespeare[-20_000:], code[0], "", "\n", "▁", "\n\n▁▁ \n"):
        assert_round_trip(tokenizer, text)
    assert_documents(tokenizer, [TRICKY, code[1], ""])
    own = shakespeare[-20_000:] if source == "shakespeare" else code[-1]
    assert len(own.encode()) / tokenizer.encode(own).size > 2.0  # it compresses, not all bytes
    batch = tokenizer.encode_batch([TRICKY, own])
    assert np.array_equal(batch[0], tokenizer.encode(TRICKY)) and np.array_equal(batch[1], tokenizer.encode(own))


def test_sentencepiece_chunks_give_one_calls_ids(trained, shakespeare):
    """Chunked encoding gives the ids of one sentencepiece call on the whole text (for unigram up to
    near-ties in the Viterbi scores, which sum in float from the start of each call)."""
    text = shakespeare[-120_000:]
    for kind in ("sentencepiece-bpe", "sentencepiece-unigram"):
        tokenizer = trained[kind, "shakespeare"]
        chunked, whole = tokenizer.encode(text), np.array(tokenizer.sp.encode(text))
        if kind == "sentencepiece-bpe":
            assert np.array_equal(chunked, whole)
        else:
            assert len(chunked) == len(whole) and np.mean(chunked != whole) < 1e-3


def test_json_round_trip(trained, shakespeare):
    for tokenizer in [ByteTokenizer(), build_tokenizer("char", [shakespeare]), *trained.values()]:
        restored = tokenizer_from_json(json.loads(json.dumps(tokenizer.to_json())))
        assert (restored.kind, restored.fingerprint, restored.vocab_size, restored.eod_id) == \
            (tokenizer.kind, tokenizer.fingerprint, tokenizer.vocab_size, tokenizer.eod_id)
        assert np.array_equal(restored.encode(TRICKY), tokenizer.encode(TRICKY))
    assert len({t.fingerprint for t in trained.values()}) == len(trained)


def test_tokenizers_written_before_end_of_document_ids_keep_their_vocabulary():
    """Checkpoints from before end-of-document ids store {'kind': 'byte'} or chars alone."""
    old_byte = tokenizer_from_json({"kind": "byte"})
    assert (old_byte.vocab_size, old_byte.eod_id) == (256, None)
    old_char = tokenizer_from_json({"kind": "char", "chars": "abc"})
    assert (old_char.vocab_size, old_char.eod_id) == (4, None)
    assert old_char.decode(old_char.encode("abcz")) == "abc\ufffd"
    assert CharTokenizer("abc").vocab_size == 5


def test_training_is_deterministic_across_processes(shakespeare):
    """Training does not depend on the process (sentencepiece's own shuffle would)."""
    docs = [shakespeare[:100_000]]
    here = [build_tokenizer(kind, docs, vocab_size=500).fingerprint for kind in ("sentencepiece", "bpe")]
    script = (
        "import sys, pathlib; from lmjax.data import build_tokenizer; "
        "docs = [pathlib.Path(sys.argv[1]).read_text(encoding='utf-8')[:100_000]]; "
        "print(*[build_tokenizer(k, docs, vocab_size=500).fingerprint for k in ('sentencepiece', 'bpe')])"
    )
    there = subprocess.run([sys.executable, "-c", script, str(Path(DATA_DIR, "tinyshakespeare", "input.txt"))],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert here == there
    assert build_tokenizer("bpe", [shakespeare[:90_000]], vocab_size=500).fingerprint != here[1]


def test_tokenizer_errors():
    text = ["hello world\n" * 50]
    with pytest.raises(DataError, match=r"vocab_size 50000 is too large .*lower config.data.vocab_size"):
        build_tokenizer("sentencepiece", text, vocab_size=50000)
    with pytest.raises(DataError, match=r"vocab_size 100 is too small .*raise config.data.vocab_size"):
        build_tokenizer("sentencepiece", text, vocab_size=100)
    with pytest.raises(DataError, match=r"vocab_size 200 is too small for byte-level BPE .* at least 257"):
        build_tokenizer("bpe", text, vocab_size=200)
    with pytest.raises(DataError, match="needs a non-empty train text"):
        build_tokenizer("char", [""])
    # Names and bounds of config.data are checked once, by the schema.
    for bad, match in [(dict(tokenizer="bytes"), "config.data.tokenizer='bytes' is not one of"),
                       (dict(tokenizer="sentencepiece"), "needs config.data.vocab_size > 0"),
                       (dict(tokenizer="bpe"), "'bpe' needs config.data.vocab_size > 0"),
                       (dict(tokenizer="sentencepiece", vocab_size=300, sp_model_type="wordpiece"),
                        "config.data.sp_model_type='wordpiece'"),
                       (dict(val_fraction=1.5), r"val_fraction must be in \(0, 1\)"),
                       (dict(val_part="train"), "config.data.val_part='train' is not one of 'all', 'tune', 'test'"),
                       (dict(tokenizer_train_bytes=0), "tokenizer_train_bytes must be positive"),
                       (dict(bad_records="ignore"), "config.data.bad_records='ignore' is not one of"),
                       (dict(packing="pack"), "config.data.packing='pack' is not one of"),
                       (dict(mixture="stdlib"), "not SOURCE:WEIGHT"),
                       (dict(mixture="stdlib:1"), "a mixture needs at least two"),
                       (dict(mixture="stdlib:1,stdlib:1"), "share a name"),
                       (dict(tokenizer="sentencepiece", vocab_size=2**31 + 1), "too large for the token cache")]:
        with pytest.raises(ConfigError, match=match):
            DataConfig(**bad)
