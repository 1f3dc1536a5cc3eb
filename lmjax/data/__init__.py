"""The data pipeline: corpora and their documents, tokenizers, token stores, batches."""

from lmjax.data.batches import local_rows, train_batch
from lmjax.data.dataset import Dataset, cache_root, prepare
from lmjax.data.sources import Corpus, find_corpus
from lmjax.data.store import Job, Tokens, token_dtype
from lmjax.data.tokenizers import Tokenizer, build_tokenizer, tokenizer_from_json

__all__ = [
    "Corpus",
    "Dataset",
    "Job",
    "Tokenizer",
    "Tokens",
    "build_tokenizer",
    "cache_root",
    "find_corpus",
    "local_rows",
    "prepare",
    "token_dtype",
    "tokenizer_from_json",
    "train_batch",
]
