"""`prepare(config.data)`: the tokenizer and the token store of each source, built once.

    <root>/tokenizers/<key>/tokenizer.json   a trained tokenizer (char, sentencepiece, bpe), keyed
                                             by its settings and its sources (names, weights, read
                                             options): trained on their training documents once
    <root>/stores/<key>/                     each source's token store (lmjax/data/store.py)

<root> is config.data.cache_dir, else $LMJAX_CACHE_DIR, else ~/.cache/lmjax. A corpus is one
source; config.data.mixture names several, which share one tokenizer.

Training a tokenizer reads the training documents once, in parallel: char collects their
characters; sentencepiece and bpe train on at most config.data.tokenizer_train_bytes of them,
the documents with the smallest sample hash (lmjax/data/sources.py `doc_hash`), i.e. a uniform
sample over all of them that does not depend on how the work was split (a mixture gives each
source its weight's share). Two reads find them: hashes and sizes, then the chosen texts.

`config.data.val_part` is applied here, once, as a view of each source's val split (so it stays
out of the store's key): every evaluation scores the same tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time

import numpy as np

from lmjax.config import TRAINED_TOKENIZERS, DataConfig
from lmjax.data import sources as src
from lmjax.data import store as store_lib
from lmjax.data.store import Job, Split, Store
from lmjax.data.tokenizers import ByteTokenizer, Tokenizer, build_tokenizer, tokenizer_from_json
from lmjax.errors import DataError
from lmjax.process.settings import Settings

TOKENIZER_VERSION = 1


@dataclasses.dataclass
class Source:
    name: str  # val_loss/<name> in a mixture
    weight: float
    store: Store
    val: Split  # the store's val split, or the half config.data.val_part picks

    @property
    def train(self) -> Split:
        return self.store.train


@dataclasses.dataclass
class Dataset:
    sources: list[Source]
    tokenizer: Tokenizer
    packing: str = "concat"

    @property
    def mixture(self) -> bool:
        return len(self.sources) > 1

    def _one(self) -> Source:
        if self.mixture:
            raise DataError("this needs one corpus; config.data.mixture names several")
        return self.sources[0]

    @property
    def train(self) -> store_lib.Tokens:
        return self._one().train.tokens

    @property
    def val(self) -> store_lib.Tokens:
        return self._one().val.tokens

    @property
    def val_bytes(self) -> int:
        return self._one().val.bytes

    @property
    def train_bytes(self) -> int:
        return sum(s.train.bytes for s in self.sources)

    @property
    def train_tokens(self) -> int:
        return sum(len(s.train.tokens) for s in self.sources)

    @property
    def val_tokens(self) -> int:
        return sum(len(s.val.tokens) for s in self.sources)

    @property
    def corpus_fingerprint(self) -> str:
        if not self.mixture:
            return self.sources[0].store.corpus_fingerprint
        parts = [[s.name, s.weight, s.store.corpus_fingerprint] for s in self.sources]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    @property
    def cache_dir(self) -> str:
        return self.sources[0].store.folder


def cache_root(data_cfg: DataConfig) -> str:
    """config.data.cache_dir, else $LMJAX_CACHE_DIR, else ~/.cache/lmjax."""
    return os.path.expanduser(data_cfg.cache_dir or str(Settings.read().cache_dir))


def default_workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def mixture_sources(data_cfg: DataConfig) -> list[src.MixtureSource]:
    if data_cfg.mixture:
        return src.parse_mixture(data_cfg.mixture)
    return [src.MixtureSource(data_cfg.corpus, data_cfg.corpus, 1.0)]


def read_options(data_cfg: DataConfig) -> src.ReadOptions:
    return src.ReadOptions(data_cfg.text_key, data_cfg.bad_records, data_cfg.val_fraction)


def prepare(data_cfg: DataConfig, *, workers: int = 0, job: Job = Job(), ray_address: str = "",
            rebuild: bool = False, tokenizer: Tokenizer | None = None, progress: bool = True,
            log=None) -> Dataset:
    """The dataset config.data describes: its stores built where missing (by `workers` processes,
    default the cores; the processes of `job` sharing the pieces; or Ray tasks at `ray_address`),
    then opened. `rebuild` sets the existing tokenizer and stores aside and builds them again.
    `tokenizer`: tokenize with this one instead (a run's own, from its checkpoint). `progress`:
    a line on stderr as each tenth of a store's pieces is built."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    workers = workers or default_workers()
    mix = mixture_sources(data_cfg)
    opts = read_options(data_cfg)
    corpora = [src.find_corpus(s.corpus, data_cfg.data_dir) for s in mix]
    root = cache_root(data_cfg)
    os.makedirs(root, exist_ok=True)
    store_lib.check_shared(root, job)  # the processes of a job build the stores together
    kw = dict(workers=workers, job=job, ray_address=ray_address)
    tokenizer = tokenizer or _tokenizer(data_cfg, mix, corpora, opts, root, rebuild, log, **kw)
    out = []
    for s, corpus in zip(mix, corpora):
        folder = os.path.join(root, "stores", store_key(corpus, opts, tokenizer))
        if rebuild and job.index == 0:
            store_lib.set_aside(folder)
        job.barrier("lmjax: store set aside")
        if not os.path.exists(os.path.join(folder, "manifest.json")):
            pieces = len(src.plan_pieces(corpus))
            log(f"lmjax: tokenizing {corpus.name} ({len(corpus.files):,} files, {pieces} pieces) into {folder}"
                f" with {'Ray at ' + ray_address if ray_address else f'{min(workers, pieces)} worker(s)'}"
                + (f" in each of {job.count} processes" if job.count > 1 else ""))
            store_lib.build_store(folder, corpus, opts, tokenizer, **kw,
                                  progress=_pieces_done(log, corpus.name) if progress and pieces > 1 else None)
        store = store_lib.open_store(folder, corpus)
        out.append(Source(s.name, s.weight, store, store.val.part(data_cfg.val_part, tokenizer.token_bytes())))
    return Dataset(out, tokenizer, data_cfg.packing)


def _pieces_done(log, name: str):
    t0, shown = time.perf_counter(), [0]

    def report(done: int, total: int) -> None:
        if done == total or done * 10 // total > shown[0]:
            shown[0] = done * 10 // total
            log(f"lmjax: {name}: {done}/{total} pieces in {time.perf_counter() - t0:.1f} s")

    return report


def corpus_identity(corpus: src.Corpus) -> str:
    """What names a corpus in store keys: its name, with a path made absolute."""
    if corpus.name in src.NAMED:
        return f"{corpus.name}:{os.path.dirname(corpus.files[0].path) if corpus.name == 'tinyshakespeare' else ''}"
    return os.path.abspath(os.path.expanduser(corpus.name))


def store_key(corpus: src.Corpus, opts: src.ReadOptions, tokenizer: Tokenizer) -> str:
    blob = json.dumps([store_lib.FORMAT_VERSION, corpus_identity(corpus), dataclasses.asdict(opts),
                       tokenizer.fingerprint])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


# ---------------------------------------------------------------------------- tokenizers

def _tokenizer(data_cfg, mix, corpora, opts, root, rebuild, log, *, workers, job, ray_address) -> Tokenizer:
    kind = data_cfg.tokenizer
    if kind == "byte":
        return ByteTokenizer()
    if kind == "hf":
        return build_tokenizer("hf", vocab_size=data_cfg.vocab_size, path=data_cfg.tokenizer_path)
    settings = {"kind": kind, "vocab_size": data_cfg.vocab_size if kind in TRAINED_TOKENIZERS else 0,
                "sp_model_type": data_cfg.sp_model_type if kind == "sentencepiece" else "",
                "train_bytes": data_cfg.tokenizer_train_bytes if kind in TRAINED_TOKENIZERS else 0}
    blob = json.dumps([TOKENIZER_VERSION, settings, dataclasses.asdict(opts),
                       [[corpus_identity(c), s.weight] for s, c in zip(mix, corpora)]])
    folder = os.path.join(root, "tokenizers", hashlib.sha256(blob.encode()).hexdigest()[:20])
    path = os.path.join(folder, "tokenizer.json")
    if rebuild and job.index == 0:
        store_lib.set_aside(folder)
    if job.index == 0 and not os.path.exists(path):
        t0 = time.perf_counter()
        log(f"lmjax: training a {kind} tokenizer on {' + '.join(c.name for c in corpora)}")
        tok = train_tokenizer(settings, mix, corpora, opts, workers=workers, ray_address=ray_address)
        os.makedirs(folder, exist_ok=True)
        store_lib.write_json(path, tok.to_json())
        log(f"lmjax: {kind} tokenizer of {tok.vocab_size:,} ids trained in {time.perf_counter() - t0:.1f} s")
    job.barrier("lmjax: tokenizer trained")
    with open(path) as f:
        return tokenizer_from_json(json.load(f))


def train_tokenizer(settings: dict, mix, corpora, opts: src.ReadOptions, *, workers: int,
                    ray_address: str = "") -> Tokenizer:
    """The tokenizer `settings` describe, learned from the sources' training documents."""
    kind = settings["kind"]
    if kind == "char":
        work = [(c, p, opts) for c in corpora for p in src.plan_pieces(c)]
        chars = store_lib.run_pieces(_piece_chars, work, workers=workers, ray_address=ray_address)
        return build_tokenizer("char", ["".join(sorted(set().union(*chars)))])
    sample = []
    for s, corpus in zip(mix, corpora):
        budget = s.weight * settings["train_bytes"]
        last = _sample_cut(corpus, budget, opts, workers=workers, ray_address=ray_address)
        work = [(corpus, p, last, opts) for p in src.plan_pieces(corpus)]
        found = [d for part in store_lib.run_pieces(_piece_sample, work, workers=workers,
                                                    ray_address=ray_address) for d in part]
        found.sort(key=lambda d: d[0])
        taken = 0
        for _, text in found:
            data = text.encode("utf-8")
            if taken + len(data) > budget:  # the first lines of the one that does not fit, and stop
                head = data[:int(budget - taken)].decode("utf-8", "ignore")
                sample.append(head[:head.rfind("\n") + 1] or head)
                break
            sample.append(text)
            taken += len(data)
    if not any(sample):
        raise DataError(f"the tokenizer's sample is empty (config.data.tokenizer_train_bytes="
                        f"{settings['train_bytes']:,}); raise it")
    return build_tokenizer(kind, sample, vocab_size=settings["vocab_size"], sp_model_type=settings["sp_model_type"])


def _sample_cut(corpus: src.Corpus, budget: float, opts: src.ReadOptions, **kw) -> float:
    """The sample hash of the last training document the tokenizer's sample takes (in whole or in
    part): a first read returns only each document's hash and size, so the texts kept in memory
    are the sample's alone (a sampling rate guessed from file sizes kept 1.5 GB of a 10 GB corpus)."""
    parts = store_lib.run_pieces(_piece_sizes, [(corpus, p, opts) for p in src.plan_pieces(corpus)], **kw)
    u = np.concatenate([p[0] for p in parts] + [np.zeros(0)])
    order = np.argsort(u, kind="stable")
    within = np.cumsum(np.concatenate([p[1] for p in parts] + [np.zeros(0, np.int64)])[order])
    k = int(np.searchsorted(within, budget, side="right"))  # documents that fit whole
    return float(u[order[min(k, len(u) - 1)]]) if len(u) else -1.0


def _piece_sizes(work) -> tuple[np.ndarray, np.ndarray]:
    corpus, piece, opts = work
    u, size = [], []
    for key, text, val in src.documents(corpus, piece, opts):
        if not val:
            u.append(src.doc_hash(key)[1])
            size.append(len(text.encode("utf-8")))
    return np.asarray(u, np.float64), np.asarray(size, np.int64)


def _piece_chars(work) -> set:
    corpus, piece, opts = work
    return set().union(*(set(text) for _, text, val in src.documents(corpus, piece, opts) if not val))


def _piece_sample(work) -> list[tuple[float, str]]:
    corpus, piece, last, opts = work
    out = []
    for key, text, val in src.documents(corpus, piece, opts):
        u = src.doc_hash(key)[1]
        if not val and u <= last:
            out.append((u, text))
    return out


def summary(data: Dataset, seconds: float) -> dict:
    """`lmjax prepare`'s final line: each store, its tokens, documents and bytes per split, and
    the build's time and speed (`built`: seconds spent building in this call; 0 when the stores existed)."""
    stores = []
    for s in data.sources:
        m = s.store.manifest
        stores.append({"name": s.name, "store": s.store.folder, "corpus": m["corpus"], "weight": s.weight,
                       **{f"{split}_{k}": m[split][k] for split in ("train", "val")
                          for k in ("tokens", "documents", "bytes")},
                       "bad_records": m["bad_records"], "empty_documents": m["empty_documents"],
                       "build_seconds": m["build_seconds"], "workers": m["workers"]})
    tokens = sum(s["train_tokens"] + s["val_tokens"] for s in stores)
    out = {"store": stores[0]["store"] if len(stores) == 1 else [s["store"] for s in stores],
           "tokenizer": data.tokenizer.kind, "vocab_size": data.tokenizer.vocab_size,
           "train_tokens": data.train_tokens, "val_tokens": data.val_tokens,
           "train_documents": sum(s["train_documents"] for s in stores),
           "val_documents": sum(s["val_documents"] for s in stores),
           "bytes": sum(s["train_bytes"] + s["val_bytes"] for s in stores),
           "seconds": seconds, "tokens_per_s": tokens / seconds if seconds > 0 else None}
    return out | ({"sources": stores} if len(stores) > 1 else {})
