"""Tokenizers: byte, char and sentencepiece (BPE or unigram), all lossless and JSON-serialisable,
and 'hf', a Hugging Face tokenizer.json (what `lmjax import` brings in with a public checkpoint).

`to_json()` is self-contained (the sentencepiece model travels as base64), so a checkpoint or token
cache that stores it can rebuild the exact tokenizer with `tokenizer_from_json`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json

import numpy as np
import sentencepiece as spm

from lmjax.errors import DataError

MAX_TRAIN_LINES = 200_000  # sentencepiece trains on at most this many lines of the train text
UNK_CHAR = "\ufffd"  # what the char tokenizer's <unk> id decodes to


class Tokenizer:
    """Maps text to 1-D int32 ids and back; `decode(encode(text)) == text` for every text
    (char: for text whose characters were seen in training)."""

    kind: str
    vocab_size: int

    def encode(self, text: str) -> np.ndarray:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def to_json(self) -> dict:
        raise NotImplementedError

    def token_bytes(self) -> np.ndarray:
        """int64 [vocab_size]: the UTF-8 bytes each id stands for (0 for ids that stand for no
        text), so that bits per byte divide by the bytes actually scored."""
        if not hasattr(self, "_token_bytes"):
            self._token_bytes = np.asarray(self._token_bytes_list(), np.int64)
        return self._token_bytes

    def _token_bytes_list(self) -> list[int]:
        raise NotImplementedError

    @property
    def fingerprint(self) -> str:
        if not hasattr(self, "_fingerprint"):
            blob = json.dumps(self.to_json(), sort_keys=True, ensure_ascii=True).encode()
            self._fingerprint = hashlib.sha256(blob).hexdigest()
        return self._fingerprint

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes; vocabulary 256."""

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        # errors='replace': sampled ids may end inside a multi-byte character.
        return np.asarray(ids, dtype=np.uint8).tobytes().decode("utf-8", errors="replace")

    def to_json(self) -> dict:
        return {"kind": "byte"}

    def _token_bytes_list(self) -> list[int]:
        return [1] * 256


class CharTokenizer(Tokenizer):
    """One id per character of the training text (sorted by code point), plus <unk> as the last id."""

    kind = "char"

    def __init__(self, chars: str):
        self.chars = "".join(sorted(set(chars)))
        self.codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        self.unk_id = len(self.chars)
        self.vocab_size = len(self.chars) + 1

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        if not text:
            raise DataError("the char tokenizer needs a non-empty train text; use a bigger corpus")
        return cls("".join(set(text)))

    def encode(self, text: str) -> np.ndarray:
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self.codepoints, codepoints).astype(np.int32)
        ids_in_range = np.minimum(ids, len(self.chars) - 1)
        known = self.codepoints[ids_in_range] == codepoints
        return np.where(known, ids, self.unk_id).astype(np.int32)

    def decode(self, ids) -> str:
        table = np.append(self.codepoints, np.uint32(ord(UNK_CHAR)))
        return table[np.asarray(ids, dtype=np.int64)].tobytes().decode("utf-32-le")

    def to_json(self) -> dict:
        return {"kind": "char", "chars": self.chars}

    def _token_bytes_list(self) -> list[int]:
        # <unk> stands for a character the train split lacks: counted as one byte (its own is unknown).
        return [len(c.encode("utf-8")) for c in self.chars] + [1]


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model trained losslessly: identity normalisation, no whitespace cleanup, no dummy
    prefix, byte fallback for characters outside the vocabulary (this includes "\\n", which becomes
    <0x0A>, since training sees one line at a time)."""

    kind = "sentencepiece"
    # Encode in ~16K-character pieces, batched: sentencepiece's BPE encoder slows down on long inputs
    # (measured: 8 MB of stdlib in 1.4 s as 16K pieces, 3.3 s as 1M pieces).
    CHUNK_CHARS = 1 << 14

    def __init__(self, model_proto: bytes, model_type: str):
        self.model_proto = model_proto
        self.model_type = model_type
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self.sp.get_piece_size()
        # sentencepiece decodes a literal U+2581 ("▁") as a space, so encode it as its UTF-8 bytes.
        self.meta_space_ids = [self.sp.piece_to_id(f"<0x{b:02X}>") for b in "\u2581".encode()]

    def encode(self, text: str) -> np.ndarray:
        segments: list[str | None] = []  # None stands for a literal "▁"
        for i, part in enumerate(text.split("\u2581")):
            if i:
                segments.append(None)
            segments += _chunks(part, self.CHUNK_CHARS)
        encoded = iter(self.sp.encode([s for s in segments if s is not None], return_type="numpy"))
        meta_space = np.array(self.meta_space_ids, dtype=np.int32)
        return np.concatenate([meta_space if s is None else next(encoded) for s in segments]).astype(np.int32)

    def decode(self, ids) -> str:
        return self.sp.decode(np.asarray(ids).reshape(-1).tolist())

    def _token_bytes_list(self) -> list[int]:
        sp = self.sp
        return [1 if sp.is_byte(i) else 0 if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)
                else len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8")) for i in range(self.vocab_size)]

    def to_json(self) -> dict:
        return {
            "kind": "sentencepiece",
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "model_proto": base64.b64encode(self.model_proto).decode("ascii"),
        }

    @classmethod
    def train(cls, text: str, *, vocab_size: int, model_type: str, seed: int,
              max_lines: int = MAX_TRAIN_LINES) -> SentencePieceTokenizer:
        """vocab_size and model_type as config.data checks them (> 0; 'bpe' or 'unigram')."""
        # Train on a seeded sample of lines, so the 31 MB stdlib takes seconds. We sample here because
        # sentencepiece's own shuffle_input_sentence differs between processes even with a fixed seed.
        lines = [line for line in text.split("\n") if line]
        if len(lines) > max_lines:
            keep = np.sort(np.random.default_rng(seed).choice(len(lines), max_lines, replace=False))
            lines = [lines[i] for i in keep]
        spm.set_random_generator_seed(seed)
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines),
                model_writer=model,
                model_type=model_type,
                vocab_size=vocab_size,
                # Lossless: no normalisation, keep every space, bytes for unseen characters.
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                byte_fallback=True,
                split_digits=True,
                allow_whitespace_only_pieces=True,
                unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
                input_sentence_size=0,  # all of `lines`
                shuffle_input_sentence=False,
                max_sentence_length=1 << 16,
                train_extremely_large_corpus=False,
                num_threads=2,
                minloglevel=3,
            )
        except RuntimeError as e:
            says = str(e).split("] ")[-1].strip().splitlines()[0]
            if "too high" in says:
                fix = f"vocab_size {vocab_size} is too large for this corpus"
                action = "lower config.data.vocab_size"
            elif "smaller than required" in says:
                fix = f"vocab_size {vocab_size} is too small for this corpus"
                action = "raise config.data.vocab_size"
            else:
                fix = f"sentencepiece could not train a {model_type} vocabulary of {vocab_size}"
                action = "change config.data.vocab_size or the corpus"
            raise DataError(f"{fix} (sentencepiece says: {says}); {action}") from None
        return cls(model.getvalue(), model_type)


class HfTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` tokenizer (its tokenizer.json), encoding without special tokens.
    `vocab_size` may exceed the tokenizer's own: a model's embedding is often padded (ids the
    tokenizer never produces). Needs the hf extra; nothing else in lmjax imports `tokenizers`."""

    kind = "hf"

    def __init__(self, tokenizer_json: str, vocab_size: int = 0):
        try:
            import tokenizers
        except ImportError:
            raise DataError("config.data.tokenizer='hf' needs the Hugging Face extra: "
                            "pip install 'lmjax[hf]'") from None
        self.tokenizer_json = tokenizer_json
        self.tok = tokenizers.Tokenizer.from_str(tokenizer_json)
        self.vocab_size = max(vocab_size, self.tok.get_vocab_size(with_added_tokens=True))

    @classmethod
    def from_file(cls, path: str, vocab_size: int = 0) -> HfTokenizer:
        try:
            with open(path, encoding="utf-8") as f:
                return cls(f.read(), vocab_size)
        except OSError as e:
            raise DataError(f"cannot read config.data.tokenizer_path {path!r} ({e.strerror}); point it "
                            "at a Hugging Face tokenizer.json") from None
        except Exception as e:  # tokenizers raises its own exception type for a malformed file
            raise DataError(f"config.data.tokenizer_path {path!r} is not a readable tokenizer.json "
                            f"({str(e).splitlines()[0]}); point it at a Hugging Face tokenizer.json") from None

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def decode(self, ids) -> str:
        return self.tok.decode(np.asarray(ids).reshape(-1).tolist(), skip_special_tokens=False)

    def to_json(self) -> dict:
        return {"kind": "hf", "vocab_size": self.vocab_size, "tokenizer_json": self.tokenizer_json}

    def _token_bytes_list(self) -> list[int]:
        # Byte-level BPE (GPT-2) spells each byte as one character of its alphabet; sentencepiece-style
        # vocabularies (LLaMA) spell a space as U+2581 and a fallback byte as <0xNN>. Special tokens: 0.
        byte_level = "ByteLevel" in json.dumps(json.loads(self.tokenizer_json).get("decoder"))
        special = {t.content for t in self.tok.get_added_tokens_decoder().values() if t.special}
        out = []
        for i in range(self.vocab_size):
            piece = self.tok.id_to_token(i)
            if piece is None or piece in special:
                out.append(0)
            elif byte_level:
                out.append(len(piece))
            elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                out.append(1)
            else:
                out.append(len(piece.replace("\u2581", " ").encode("utf-8")))
        return out


def _chunks(text: str, size: int) -> list[str]:
    """Cut `text` just after a newline roughly every `size` characters (a hard cut if a line is longer).
    No piece contains a newline, so the chunks encode to the ids of the whole text (for unigram, up to
    float near-ties in the Viterbi scores); any cut is lossless either way."""
    chunks, start = [], 0
    while len(text) - start > size:
        cut = text.find("\n", start + size)
        cut = start + size if cut < 0 else cut + 1
        chunks.append(text[start:cut])
        start = cut
    chunks.append(text[start:])
    return chunks


def build_tokenizer(
    kind: str, train_text: str, *, vocab_size: int = 0, sp_model_type: str = "bpe", seed: int = 0,
    max_lines: int = MAX_TRAIN_LINES, path: str = "",
) -> Tokenizer:
    """Build a tokenizer of `kind` (one of config.TOKENIZERS) from the training text (byte ignores
    the text); sentencepiece trains on at most `max_lines` lines of it; hf reads `path`."""
    if kind == "hf":
        return HfTokenizer.from_file(path, vocab_size)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer.train(train_text)
    if kind == "sentencepiece":
        return SentencePieceTokenizer.train(train_text, vocab_size=vocab_size, model_type=sp_model_type,
                                            seed=seed, max_lines=max_lines)
    raise ValueError(f"unknown tokenizer {kind!r} (config.data.tokenizer is checked against TOKENIZERS)")


def tokenizer_from_json(d: dict) -> Tokenizer:
    """Rebuild a tokenizer from `Tokenizer.to_json()`."""
    kind = d.get("kind")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer(d["chars"])
    if kind == "sentencepiece":
        return SentencePieceTokenizer(base64.b64decode(d["model_proto"]), d["model_type"])
    if kind == "hf":
        return HfTokenizer(d["tokenizer_json"], d["vocab_size"])
    raise DataError(f"unknown tokenizer kind {kind!r} in saved tokenizer JSON; it was written by another lmjax version")
