"""lmjax tokenizers as Hugging Face fast tokenizers that give the same ids.

`to_hf_tokenizer(tok).encode(text).ids == tok.encode(text).tolist()` and its decode equals `tok.decode`, for
byte, char, bpe and sentencepiece BPE, including a literal "▁" in the text (sentencepiece pieces are stored with
real spaces in place of "▁", so a literal one falls back to its UTF-8 bytes, as lmjax encodes it).
Not exact: sentencepiece unigram picks between equal-scoring segmentations (e.g. the order of whitespace
pieces in a long indent) by the rounding of its float32 Viterbi sums, which Hugging Face's float64 Viterbi
does not reproduce, so about 1 id in 10^4 of Python source differs (both optimal; the text still round-trips).
"""

from __future__ import annotations

import os

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lmjax.data.tokenizers import (UNK_CHAR, BpeTokenizer, ByteTokenizer, CharTokenizer, HfTokenizer,
                                   SentencePieceTokenizer)
from lmjax.data.tokenizers import Tokenizer as LmTokenizer

BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]  # the names byte_fallback looks up
CHAR_UNK = "<unk>"
# The end-of-document id's name where the vocabulary has none (byte, char, bpe): GPT-2's. As an added
# special token Hugging Face also matches it in text, as it does GPT-2's; lmjax spells such text out.
EOD_TOKEN = "<|endoftext|>"
# Sentencepiece decodes its <unk> id as " ⁇ "; as a token name it cannot be matched from text either (see
# _sentencepiece), and it decodes the same way.
SP_UNK = " \u2047 "
# Words as sentencepiece splits them (a new word at the start of each run of spaces), with every digit
# alone (split_digits: no piece holds a digit and anything else) and a literal "▁" alone (lmjax encodes it
# as bytes, between separately encoded segments).
SP_WORDS = r"\p{Nd}|\u2581| *[^ \u2581\p{Nd}]+| +"


def to_hf_tokenizer(tok: LmTokenizer) -> Tokenizer:
    """A `tokenizers.Tokenizer` that encodes (adding no special tokens) and decodes exactly like `tok`
    (text that spells the end-of-document token's name aside), the end-of-document id its one
    special token (`eod_token`)."""
    hf = _hf_tokenizer(tok)
    name = eod_token(tok)
    if name is not None:  # a new token takes the next id, eod_id; a piece of the vocabulary keeps its own
        hf.add_special_tokens([AddedToken(name, special=True, normalized=False)])
        assert hf.token_to_id(name) == tok.eod_id
    return hf


def eod_token(tok: LmTokenizer) -> str | None:
    """The name of tok's end-of-document id in its Hugging Face tokenizer."""
    if tok.eod_id is None:
        return None
    if isinstance(tok, SentencePieceTokenizer):
        return tok.sp.id_to_piece(tok.eod_id)
    if isinstance(tok, HfTokenizer) and not isinstance(tok, BpeTokenizer):
        return tok.tok.id_to_token(tok.eod_id)
    return EOD_TOKEN


def _hf_tokenizer(tok: LmTokenizer) -> Tokenizer:
    if isinstance(tok, ByteTokenizer):
        # No characters in the vocabulary, only the 256 byte tokens (id == byte), so every character
        # falls back to its UTF-8 bytes.
        hf = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(BYTE_TOKENS)}, merges=[], byte_fallback=True))
        hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
        return hf
    if isinstance(tok, CharTokenizer):
        # One symbol per code point and no merges; each unseen character is its own <unk>.
        vocab = {c: i for i, c in enumerate(tok.chars)} | {CHAR_UNK: tok.unk_id}
        hf = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=CHAR_UNK, fuse_unk=False))
        hf.decoder = decoders.Sequence([decoders.Replace(CHAR_UNK, UNK_CHAR), decoders.Fuse()])
        return hf
    if isinstance(tok, SentencePieceTokenizer):
        return _sentencepiece(tok)
    if isinstance(tok, HfTokenizer):  # bpe's, or an imported run's own tokenizer.json
        return Tokenizer.from_str(tok.tokenizer_json)
    raise TypeError(f"no Hugging Face conversion for {type(tok).__name__}")


def _sentencepiece(tok: SentencePieceTokenizer) -> Tokenizer:
    sp = tok.sp
    ids = range(sp.get_piece_size())
    names = [sp.id_to_piece(i).replace("\u2581", " ") for i in ids]
    names[sp.unk_id()] = SP_UNK
    special = {i for i in ids if sp.is_unknown(i) or sp.is_byte(i) or sp.is_control(i) or sp.is_unused(i)}
    normal = {names[i]: i for i in ids if i not in special}
    if tok.model_type == "unigram":
        # Hugging Face puts every name in its lattice: byte names hold a digit and SP_UNK ends in a space,
        # so no pre-tokenized word can match them. Special pieces score 0, above every normal piece, so the
        # unknown-character penalty (lowest score - 10) is sentencepiece's.
        model = models.Unigram([(n, sp.get_score(i)) for i, n in zip(ids, names)], unk_id=sp.unk_id(),
                               byte_fallback=True)
    else:
        # Sentencepiece BPE merges any adjacent pair whose concatenation is a piece, highest score first:
        # list every split of every piece, ranked by the piece's score.
        ranked = sorted((-sp.get_score(i), i, n[:k], n[k:]) for n, i in normal.items() for k in range(1, len(n))
                        if n[:k] in normal and n[k:] in normal)
        model = models.BPE(vocab={n: i for i, n in enumerate(names)}, merges=[(a, b) for _, _, a, b in ranked],
                           unk_token=SP_UNK, fuse_unk=True, byte_fallback=True)
    hf = Tokenizer(model)
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(SP_WORDS), behavior="isolated")
    hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    return hf


def save_hf_tokenizer(tok: LmTokenizer, out_dir: str | os.PathLike) -> None:
    """Write tokenizer.json and tokenizer_config.json to `out_dir`, loadable offline with
    `transformers.AutoTokenizer.from_pretrained(out_dir)`; its one special token is the end-of-document
    id (`eos_token`), so `len(...) == tok.vocab_size`."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=to_hf_tokenizer(tok),
        eos_token=eod_token(tok),
        # Decode must give the text back: a clean-up would turn " ." into "." (off by default, but say so).
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(out_dir))
