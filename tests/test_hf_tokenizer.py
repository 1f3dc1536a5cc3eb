"""Hugging Face exports of lmjax tokenizers give lmjax's ids and decode back to the text."""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it: loading must not need the network

import pytest

pytest.importorskip("transformers")

from transformers import AutoTokenizer  # noqa: E402

from lmjax.data.tokenizers import BpeTokenizer, ByteTokenizer, CharTokenizer, SentencePieceTokenizer  # noqa: E402
from lmjax.hf.tokenizer import save_hf_tokenizer, to_hf_tokenizer  # noqa: E402

KINDS = ("byte", "char", "bpe", "unigram", "byte-level-bpe")  # bpe, unigram: sentencepiece's
ODD = (
    "spaces  runs   of    them\t\ttabs \t mixed, digits 12345 x²y ٣٤, héllo — 你好 🙂\n\n  \n"
    "a literal ▁ and ▁▁x ab▁cd, names of pieces <unk> <0x41> ⁇ ▅, NUL \x00, CRLF\r\n"
    "e\u0301 combining, \ufffd, trailing  . 's   "
)


def _stdlib_source(*modules) -> str:
    return "\n".join(Path(m.__file__).read_text(encoding="utf-8") for m in modules)


@pytest.fixture(scope="module")
def corpora():
    shakespeare = Path(os.environ["LMJAX_DATA_DIR"], "tinyshakespeare", "input.txt").read_text(encoding="utf-8")
    stdlib = _stdlib_source(argparse) + "\n" + "\n".join(
        p.read_text(encoding="utf-8") for p in sorted(Path(json.__file__).parent.glob("*.py")))
    return {"shakespeare": shakespeare, "stdlib": stdlib}


@pytest.fixture(scope="module")
def texts(corpora):
    """A paragraph of each corpus left out of training, and odd text."""
    return {"shakespeare": corpora["shakespeare"][-4000:], "stdlib": corpora["stdlib"][-4000:], "odd": ODD}


@pytest.fixture(scope="module")
def tokenizers(corpora):
    train = corpora["shakespeare"][:200_000] + corpora["stdlib"][:-4000]
    return {
        "byte": ByteTokenizer(),
        "char": CharTokenizer.train(corpora["shakespeare"][:-4000]),
        "bpe": SentencePieceTokenizer.train(train, vocab_size=512, model_type="bpe", seed=0),
        "unigram": SentencePieceTokenizer.train(train, vocab_size=1000, model_type="unigram", seed=0),
        "byte-level-bpe": BpeTokenizer.train(train, vocab_size=512),
    }


def assert_same_ids(tok, kind, text, ids):
    want = tok.encode(text).tolist()
    if kind != "unigram" or ids == want:
        assert ids == want
        return
    # Unigram may break ties differently (see lmjax/hf/tokenizer.py): its segmentation must score as well as
    # sentencepiece's own, and use nearly the same ids (a multiset, as a tie may only reorder pieces).
    def score(seq):
        return sum(tok.sp.get_score(i) for i in seq)
    assert score(ids) >= score(want) - 1e-3
    a, b = Counter(ids), Counter(want)
    assert sum(((a - b) + (b - a)).values()) <= len(want) // 1000


@pytest.mark.parametrize("kind", KINDS)
def test_hf_tokenizer_matches(tokenizers, texts, kind):
    tok = tokenizers[kind]
    hf = to_hf_tokenizer(tok)
    assert hf.get_vocab_size() == tok.vocab_size
    for name, text in texts.items():
        ids = hf.encode(text).ids
        assert_same_ids(tok, kind, text, ids)
        assert hf.decode(ids) == tok.decode(ids)
        if kind != "char" or name == "shakespeare":  # char: other text has characters it never saw
            assert hf.decode(ids) == text
    # Documents end in the end-of-document id, its one special token, which decodes to nothing.
    ids, _ = tok.encode_documents([texts["shakespeare"], texts["stdlib"]])
    assert hf.decode(ids.tolist()) == tok.decode(ids) and hf.id_to_token(tok.eod_id) is not None


def test_unigram_ties_on_long_text(tokenizers, corpora):
    # 150K characters of Python, where sentencepiece's float32 sums do break some ties another way.
    tok = tokenizers["unigram"]
    text = corpora["stdlib"]
    ids = to_hf_tokenizer(tok).encode(text).ids
    assert_same_ids(tok, "unigram", text, ids)
    assert tok.decode(ids) == text


def test_char_unseen_characters_are_unk(tokenizers):
    tok = tokenizers["char"]
    hf = to_hf_tokenizer(tok)
    text = "a€b 🙂\n👩‍💻c"  # none of the odd characters occur in tinyshakespeare
    ids = hf.encode(text).ids
    assert ids == tok.encode(text).tolist()
    assert ids.count(tok.unk_id) == 5  # the emoji ZWJ sequence is 3 code points
    assert hf.decode(ids) == tok.decode(ids) == "a\ufffdb \ufffd\n\ufffd\ufffd\ufffdc"


@pytest.mark.parametrize("kind", KINDS)
def test_saved_tokenizer_loads_with_auto_tokenizer(tokenizers, texts, kind, tmp_path):
    tok = tokenizers[kind]
    save_hf_tokenizer(tok, tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(loaded) == tok.vocab_size
    assert loaded.all_special_ids == [tok.eod_id] == [loaded.eos_token_id]  # the end-of-document id alone
    for name, text in texts.items():
        ids = loaded.encode(text, add_special_tokens=False)
        assert_same_ids(tok, kind, text, ids)
        assert loaded(text)["input_ids"] == ids
        if kind != "char" or name == "shakespeare":
            assert loaded.decode(ids) == text
