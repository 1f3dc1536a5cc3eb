"""The data pipeline: corpora, tokenizers, cached token datasets and batches."""

from lmjax.data.corpus import Corpus, corpus_fingerprint, load_corpus
from lmjax.data.dataset import (
    Dataset,
    cache_root,
    local_rows,
    prepare,
    train_batch,
)
from lmjax.data.tokenizers import Tokenizer, build_tokenizer, tokenizer_from_json

__all__ = [
    "Corpus",
    "Dataset",
    "Tokenizer",
    "build_tokenizer",
    "cache_root",
    "corpus_fingerprint",
    "load_corpus",
    "local_rows",
    "prepare",
    "tokenizer_from_json",
    "train_batch",
]
