"""Token datasets: a cached, memory-mapped token array per split, and batches drawn from it.

`prepare` tokenizes a corpus once and caches it under `<cache_root>/tokens/<key>/`:
    tokenizer.json  the tokenizer (self-contained JSON)
    train.bin       train token ids, raw little-endian uint16 (vocab <= 65536) or uint32
    val.bin         val token ids, same dtype
    meta.json       dtype, token and byte counts, fingerprints, vocab_size
The folder is written under a temporary name and renamed into place, so a reader never sees half of it.

`config.data.val_part` is applied here, once, as a view of the cached val split (so it stays out
of the cache key): every evaluation (training's val_*, `lmjax eval`, `run.evaluate()`) scores
the same tokens.

Batches are pure functions of their arguments, so resuming at step k replays exactly the data of an
uninterrupted run, and every process of a multi-host run agrees on the global batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np

from lmjax.config import DataConfig
from lmjax.data.corpus import corpus_fingerprint, load_corpus
from lmjax.data.tokenizers import Tokenizer, build_tokenizer, tokenizer_from_json
from lmjax.errors import DataError
from lmjax.process.settings import Settings

FORMAT_VERSION = 1


@dataclasses.dataclass
class Dataset:
    train: np.ndarray  # 1-D np.memmap of token ids
    val: np.ndarray
    tokenizer: Tokenizer
    corpus_fingerprint: str
    train_bytes: int  # UTF-8 bytes of the train text
    val_bytes: int  # UTF-8 bytes of the val text; of a half (val_part), the bytes its tokens stand for
    cache_dir: str  # the folder holding this dataset's cache


def cache_root(data_cfg: DataConfig) -> str:
    """config.data.cache_dir, else $LMJAX_CACHE_DIR, else ~/.cache/lmjax."""
    return os.path.expanduser(data_cfg.cache_dir or str(Settings.read().cache_dir))


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when the ids fit, else uint32 (config.MAX_VOCAB keeps them within int32)."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def prepare(data_cfg: DataConfig) -> Dataset:
    """Load (or build and cache) the tokenized train and val splits described by `config.data`."""
    corpus_name, data_dir, val_fraction = data_cfg.corpus, data_cfg.data_dir, data_cfg.val_fraction
    kind = data_cfg.tokenizer
    is_sp = kind == "sentencepiece"
    # Settings a tokenizer ignores stay out of the key, so changing them reuses the cache.
    vocab_size = data_cfg.vocab_size if kind in ("sentencepiece", "hf") else 0
    sp_model_type = data_cfg.sp_model_type if is_sp else ""
    built = {"kind": kind, "vocab_size": vocab_size, "sp_model_type": sp_model_type}
    fingerprint = corpus_fingerprint(corpus_name, data_dir=data_dir, val_fraction=val_fraction)
    key_parts = [FORMAT_VERSION, fingerprint, kind, vocab_size, sp_model_type]
    if kind == "hf":  # the file's contents, not its path, key the cache
        built["tokenizer"] = build_tokenizer(kind, "", vocab_size=vocab_size, path=data_cfg.tokenizer_path)
        key_parts.append(built["tokenizer"].fingerprint)
    key_blob = json.dumps(key_parts).encode()
    key = hashlib.sha256(key_blob).hexdigest()[:20]
    folder = os.path.join(cache_root(data_cfg), "tokens", key)
    if not os.path.exists(os.path.join(folder, "meta.json")):
        _build(folder, corpus_name, data_dir, val_fraction, **built)
    return _val_part(_load(folder), data_cfg.val_part)


def _val_part(data: Dataset, part: str) -> Dataset:
    """`data` with only the validation tokens config.data.val_part names: all of them, the first
    half ('tune': for choosing settings) or the rest ('test': for reporting them)."""
    if part == "all":
        return data
    half = len(data.val) // 2
    val = data.val[:half] if part == "tune" else data.val[half:]
    return dataclasses.replace(data, val=val, val_bytes=int(data.tokenizer.token_bytes()[val].sum()))


def _build(folder, corpus_name, data_dir, val_fraction, kind, vocab_size, sp_model_type,
           tokenizer: Tokenizer | None = None) -> None:
    corpus = load_corpus(corpus_name, data_dir=data_dir, val_fraction=val_fraction)
    tokenizer = tokenizer or build_tokenizer(kind, corpus.train, vocab_size=vocab_size,
                                             sp_model_type=sp_model_type)
    dtype = token_dtype(tokenizer.vocab_size)
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.tmp-", dir=parent)
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the published cache should be readable
        meta = {
            "format_version": FORMAT_VERSION,
            "corpus": corpus.name,
            "corpus_fingerprint": corpus.fingerprint,
            "num_files": corpus.num_files,
            "tokenizer": kind,
            "tokenizer_fingerprint": tokenizer.fingerprint,
            "vocab_size": tokenizer.vocab_size,
            "dtype": dtype.name,
        }
        for split, text in (("train", corpus.train), ("val", corpus.val)):
            ids = tokenizer.encode(text)
            if ids.size and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
                raise DataError(
                    f"tokenizer {kind!r} produced ids outside [0, {tokenizer.vocab_size}) for the {split} split; "
                    "this is a bug in lmjax, please report it"
                )
            ids.astype(dtype.newbyteorder("<")).tofile(os.path.join(tmp, f"{split}.bin"))
            meta[f"{split}_tokens"] = int(ids.size)
            meta[f"{split}_bytes"] = len(text.encode("utf-8"))
        with open(os.path.join(tmp, "tokenizer.json"), "w") as f:
            json.dump(tokenizer.to_json(), f)
        with open(os.path.join(tmp, "meta.json"), "w") as f:  # written last: its presence marks completeness
            json.dump(meta, f, indent=1)
        _publish(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: str, folder: str) -> None:
    """Atomically rename `tmp` to `folder`; if another process got there first, keep the winner's."""
    try:
        os.rename(tmp, folder)
    except OSError:
        if not os.path.exists(os.path.join(folder, "meta.json")):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _load(folder: str) -> Dataset:
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    with open(os.path.join(folder, "tokenizer.json")) as f:
        tokenizer = tokenizer_from_json(json.load(f))
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    splits = {}
    for split in ("train", "val"):
        path = os.path.join(folder, f"{split}.bin")
        if os.path.getsize(path) != meta[f"{split}_tokens"] * dtype.itemsize:
            raise DataError(f"token cache file {path} has the wrong size; delete the folder {folder} to rebuild it")
        splits[split] = np.memmap(path, dtype=dtype, mode="r")
    return Dataset(
        train=splits["train"],
        val=splits["val"],
        tokenizer=tokenizer,
        corpus_fingerprint=meta["corpus_fingerprint"],
        train_bytes=meta["train_bytes"],
        val_bytes=meta["val_bytes"],
        cache_dir=folder,
    )


def local_rows(batch_size: int, process_index: int, process_count: int) -> slice:
    if process_count <= 0 or batch_size % process_count:
        raise DataError(
            f"batch_size {batch_size} is not divisible by the {process_count} processes; "
            "make config.train.batch_size a multiple of the process count"
        )
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index {process_index} is outside [0, {process_count})")
    rows = batch_size // process_count
    return slice(process_index * rows, (process_index + 1) * rows)


def train_batch(
    tokens: np.ndarray, *, seed: int, step: int, batch_size: int, seq_len: int,
    process_index: int = 0, process_count: int = 1,
) -> np.ndarray:
    """This process's rows of the global batch for `step`: int32 [batch_size // process_count, seq_len + 1].

    Inputs are `[:, :-1]` and targets `[:, 1:]`. The global batch's window starts come from
    `default_rng([seed, step])`, so the batch depends on nothing but the arguments.
    """
    rows = local_rows(batch_size, process_index, process_count)
    if len(tokens) < seq_len + 1:
        raise DataError(
            f"the train split has {len(tokens)} tokens, fewer than seq_len+1={seq_len + 1}; "
            "lower config.train.seq_len or use a bigger corpus"
        )
    starts = np.random.default_rng([seed, step]).integers(0, len(tokens) - seq_len, size=batch_size)
    positions = starts[rows, None] + np.arange(seq_len + 1)
    return np.asarray(tokens[positions], dtype=np.int32)  # reads only this process's windows
