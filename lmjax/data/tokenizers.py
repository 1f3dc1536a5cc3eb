"""Tokenizers: byte, char, sentencepiece (BPE or unigram) and bpe (byte-level BPE trained by
Hugging Face `tokenizers`), all lossless and JSON-serialisable, and 'hf', a Hugging Face
tokenizer.json (what `lmjax import` brings in with a public checkpoint).

Every tokenizer has an end-of-document id, `eod_id`, which a token store appends after each
document; no text encodes to it (it is a control id, not a string), and it decodes to nothing.
Byte: 256 (vocabulary 257); char: after <unk>; sentencepiece: its </s> control piece; bpe: the
id after the learned vocabulary; hf: the tokenizer's own end-of-text token when it has one of
EOD_NAMES, else one id past its vocabulary. Tokenizers restored from JSON written before
end-of-document ids existed keep their vocabulary and have eod_id None.

`to_json()` is self-contained (the sentencepiece model travels as base64), so a checkpoint or token
store that holds it can rebuild the exact tokenizer with `tokenizer_from_json`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os

import numpy as np
import sentencepiece as spm

from lmjax.errors import DataError

UNK_CHAR = "\ufffd"  # what the char tokenizer's <unk> id decodes to
EOD_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")  # hf: end-of-text tokens, in preference


class Tokenizer:
    """Maps text to 1-D int32 ids and back; `decode(encode(text)) == text` for every text
    (char: for text whose characters were seen in training)."""

    kind: str
    vocab_size: int
    eod_id: int | None = None

    def encode(self, text: str) -> np.ndarray:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def encode_documents(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids of the documents end to end, each followed by eod_id; int64 lengths, eod included).
        A tokenizer without one (restored from old JSON) puts nothing between them."""
        parts = self.encode_batch(texts)
        eod = np.array([] if self.eod_id is None else [self.eod_id], np.int32)
        lengths = np.fromiter((p.size + eod.size for p in parts), np.int64, len(parts))
        ids = np.concatenate([x for p in parts for x in (p, eod)]) if parts else np.zeros(0, np.int32)
        return ids.astype(np.int32, copy=False), lengths

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
    """UTF-8 bytes, then the end-of-document id 256; vocabulary 257 (256 without it: eod=False)."""

    kind = "byte"

    def __init__(self, eod: bool = True):
        self.eod_id = 256 if eod else None
        self.vocab_size = 257 if eod else 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        # errors='replace': sampled ids may end inside a multi-byte character.
        ids = np.asarray(ids).reshape(-1)
        return ids[ids < 256].astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def to_json(self) -> dict:
        return {"kind": "byte", "eod_id": self.eod_id} if self.eod_id is not None else {"kind": "byte"}

    def _token_bytes_list(self) -> list[int]:
        return [1] * 256 + [0] * (self.vocab_size - 256)


class CharTokenizer(Tokenizer):
    """One id per character of the training documents (sorted by code point), then <unk>, then the
    end-of-document id."""

    kind = "char"

    def __init__(self, chars: str, eod: bool = True):
        self.chars = "".join(sorted(set(chars)))
        self.codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        self.unk_id = len(self.chars)
        self.eod_id = len(self.chars) + 1 if eod else None
        self.vocab_size = len(self.chars) + 1 + eod

    @classmethod
    def train(cls, texts) -> CharTokenizer:
        chars = set().union(*map(set, [texts] if isinstance(texts, str) else texts))
        if not chars:
            raise DataError("the char tokenizer needs a non-empty train text; use a bigger corpus")
        return cls("".join(chars))

    def encode(self, text: str) -> np.ndarray:
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self.codepoints, codepoints).astype(np.int32)
        ids_in_range = np.minimum(ids, len(self.chars) - 1)
        known = self.codepoints[ids_in_range] == codepoints
        return np.where(known, ids, self.unk_id).astype(np.int32)

    def decode(self, ids) -> str:
        table = np.append(self.codepoints, np.uint32(ord(UNK_CHAR)))
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        return table[ids[ids <= self.unk_id]].tobytes().decode("utf-32-le")

    def to_json(self) -> dict:
        return {"kind": "char", "chars": self.chars, **({"eod_id": self.eod_id} if self.eod_id is not None else {})}

    def _token_bytes_list(self) -> list[int]:
        # <unk> stands for a character the train split lacks: counted as one byte (its own is unknown).
        return [len(c.encode("utf-8")) for c in self.chars] + [1] + [0] * (self.eod_id is not None)


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
        self.eod_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None  # </s>: a control piece
        # sentencepiece decodes a literal U+2581 ("▁") as a space, so encode it as its UTF-8 bytes.
        self.meta_space_ids = [self.sp.piece_to_id(f"<0x{b:02X}>") for b in "\u2581".encode()]

    def encode(self, text: str) -> np.ndarray:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """One sentencepiece call for all the texts' segments (its batch encode)."""
        plans, flat = [], []
        for text in texts:
            segments: list[str | None] = []  # None stands for a literal "▁"
            for i, part in enumerate(text.split("\u2581")):
                if i:
                    segments.append(None)
                segments += _chunks(part, self.CHUNK_CHARS)
            plans.append(segments)
            flat += [s for s in segments if s is not None]
        # sentencepiece encodes a batch on every core by default; a store's workers run one each
        # (TOKENIZERS_PARALLELISM=false, as for HF tokenizers), or two workers on 2 cores ran 1.03x one.
        threads = 1 if os.environ.get("TOKENIZERS_PARALLELISM") == "false" else -1
        encoded = iter(self.sp.encode(flat, return_type="numpy", num_threads=threads))
        meta_space = np.array(self.meta_space_ids, dtype=np.int32)
        return [np.concatenate([meta_space if s is None else next(encoded) for s in segments]).astype(np.int32)
                for segments in plans]

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
    def train(cls, texts, *, vocab_size: int, model_type: str, seed: int = 0) -> SentencePieceTokenizer:
        """On the lines of `texts` (a text or a list of documents: the store's sample); vocab_size
        and model_type as config.data checks them (> 0; 'bpe' or 'unigram')."""
        lines = [line for text in ([texts] if isinstance(texts, str) else texts)
                 for line in text.split("\n") if line]
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
                unk_id=0, bos_id=-1, eos_id=1, pad_id=-1,  # eos: the end-of-document id
                input_sentence_size=0,  # all of `lines`
                shuffle_input_sentence=False,
                max_sentence_length=1 << 16,
                train_extremely_large_corpus=False,
                num_threads=2,
                minloglevel=3,
            )
        except RuntimeError as e:
            raise _sp_error(e, vocab_size, model_type) from None
        return cls(model.getvalue(), model_type)


def _sp_error(e: RuntimeError, vocab_size: int, model_type: str) -> DataError:
    says = str(e).split("] ")[-1].strip().splitlines()[0]
    if "too high" in says:
        fix, action = f"vocab_size {vocab_size} is too large for this corpus", "lower config.data.vocab_size"
    elif "smaller than required" in says:
        fix, action = f"vocab_size {vocab_size} is too small for this corpus", "raise config.data.vocab_size"
    else:
        fix = f"sentencepiece could not train a {model_type} vocabulary of {vocab_size}"
        action = "change config.data.vocab_size or the corpus"
    return DataError(f"{fix} (sentencepiece says: {says}); {action}")


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
        own = self.tok.get_vocab_size(with_added_tokens=True)
        named = [self.tok.token_to_id(n) for n in EOD_NAMES if self.tok.token_to_id(n) is not None]
        self.eod_id = named[0] if named else own  # else one id past the tokenizer's own
        self.vocab_size = max(vocab_size, own, self.eod_id + 1)

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

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int32) for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        ids = [i for i in np.asarray(ids).reshape(-1).tolist() if i != self.eod_id]
        return self.tok.decode(ids, skip_special_tokens=False)

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


class BpeTokenizer(HfTokenizer):
    """Byte-level BPE (GPT-2's byte alphabet, no prefix space, no normaliser: lossless on any
    UTF-8), trained by `tokenizers`' own BpeTrainer. The end-of-document id is one past the learned
    vocabulary and has no string, so no text encodes to it."""

    kind = "bpe"

    def __init__(self, tokenizer_json: str):
        super().__init__(tokenizer_json)
        self.eod_id = self.tok.get_vocab_size(with_added_tokens=True)
        self.vocab_size = self.eod_id + 1

    @classmethod
    def train(cls, texts, *, vocab_size: int) -> BpeTokenizer:
        from tokenizers import Tokenizer as HfTok, decoders, models, pre_tokenizers, trainers

        tok = HfTok(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size - 1 < len(alphabet):
            raise DataError(f"vocab_size {vocab_size} is too small for byte-level BPE (its {len(alphabet)} "
                            f"byte symbols plus the end-of-document id); raise config.data.vocab_size to at "
                            f"least {len(alphabet) + 1}")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, initial_alphabet=alphabet, special_tokens=[],
                                      show_progress=False)
        tok.train_from_iterator([texts] if isinstance(texts, str) else texts, trainer)
        return cls(tok.to_str())

    def to_json(self) -> dict:
        return {"kind": "bpe", "tokenizer_json": self.tokenizer_json}

    def _token_bytes_list(self) -> list[int]:
        return [len(self.tok.id_to_token(i)) for i in range(self.eod_id)] + [0]


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


def build_tokenizer(kind: str, train_texts="", *, vocab_size: int = 0, sp_model_type: str = "bpe",
                    seed: int = 0, path: str = "") -> Tokenizer:
    """A tokenizer of `kind` (one of config.TOKENIZERS): byte ignores the text; char learns the
    characters of `train_texts` (a text or a list of documents); sentencepiece and bpe train on
    them (a token store passes its bounded sample); hf reads `path`."""
    if kind == "hf":
        return HfTokenizer.from_file(path, vocab_size)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer.train(train_texts)
    if kind == "sentencepiece":
        return SentencePieceTokenizer.train(train_texts, vocab_size=vocab_size, model_type=sp_model_type, seed=seed)
    if kind == "bpe":
        return BpeTokenizer.train(train_texts, vocab_size=vocab_size)
    raise ValueError(f"unknown tokenizer {kind!r} (config.data.tokenizer is checked against TOKENIZERS)")


def tokenizer_from_json(d: dict) -> Tokenizer:
    """Rebuild a tokenizer from `Tokenizer.to_json()`."""
    kind = d.get("kind")
    if kind == "byte":
        return ByteTokenizer(eod="eod_id" in d)
    if kind == "char":
        return CharTokenizer(d["chars"], eod="eod_id" in d)
    if kind == "sentencepiece":
        return SentencePieceTokenizer(base64.b64decode(d["model_proto"]), d["model_type"])
    if kind == "bpe":
        return BpeTokenizer(d["tokenizer_json"])
    if kind == "hf":
        return HfTokenizer(d["tokenizer_json"], d["vocab_size"])
    raise DataError(f"unknown tokenizer kind {kind!r} in saved tokenizer JSON; it was written by another lmjax version")
