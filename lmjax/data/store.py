"""Token stores: a corpus tokenized once into shards, built in parallel, resumable, never half-read.

    <root>/stores/<key>/              one corpus under one tokenizer (key: the corpus's name, the
                                      read options and the tokenizer's fingerprint; no file is read)
        tokenizer.json                the tokenizer (self-contained JSON)
        plan.json                     the pieces and the files they read (name, size, mtime): written
                                      first, so a resumed build knows it reads the same corpus
        shards/NNNNN.{train,val}.bin  piece NNNNN's token ids, raw little-endian uint16 (vocabulary
                                      <= 65536) or uint32, its documents end to end, each followed by
                                      the end-of-document id
        shards/NNNNN.{train,val}.ends its documents' end offsets in that file, little-endian int64
        shards/NNNNN.json             the piece's ledger entry (counts, sha256 of what it read and of
                                      what it wrote): written after its shards, by rename
        manifest.json                 every entry, the totals and the fingerprints: written last, by
                                      rename; a store without it is never read

Every file appears under its final name only when complete (written under a temporary name,
then renamed). A build resumes from the pieces whose entries exist, and each piece's shards are
a function of the piece alone, so the finished store is bitwise the same whether it was
interrupted or not, and whatever the number of workers, processes or Ray tasks that built it.

Opening a store reads its manifest and stats the corpus's files (no corpus byte is read): a file
added, removed, or whose size or mtime changed is re-hashed, and refused with one line naming it
when its bytes differ from what was tokenized.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

from lmjax.data import packing
from lmjax.data import sources as src
from lmjax.data.tokenizers import Tokenizer, tokenizer_from_json
from lmjax.errors import DataError

FORMAT_VERSION = 2
BATCH_DOCS, BATCH_CHARS = 1024, 4 << 20  # documents encoded per tokenizer call, at most
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when the ids fit, else uint32 (config.MAX_VOCAB keeps them within int32)."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32).newbyteorder("<")


# ---------------------------------------------------------------------------- reading

class Tokens:
    """A split's token ids: its shards end to end, read as one 1-D array.

    Supports len(), integer-array indexing (gathers only the positions asked for), slicing (a
    view) and np.asarray (reads everything). Shards given as whole-file memory maps are gathered
    from with pread, a row of the index at a time, not through the map: on a kernel whose page
    cache holds large folios (ext4 on Linux 6.x), one fault maps up to 2 MB, and training's random
    windows left a 0.3 GB store's train shards resident after 50 steps (RSS grew with the corpus)."""

    def __init__(self, arrays: list[np.ndarray], dtype, files: list | None = None):
        keep = [i for i, a in enumerate(arrays) if len(a)]
        self.arrays = [arrays[i] for i in keep]
        self.dtype = np.dtype(dtype)
        self.starts = np.cumsum([0] + [len(a) for a in self.arrays]).astype(np.int64)
        # per array: (file, its first token's index in the file), or None to gather through the array
        self.files = [files[i] for i in keep] if files is not None else [_whole_file(a) for a in self.arrays]
        self._fds: dict[str, int] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("Tokens slices take step 1")
            arrays, files = self._range(start, max(start, stop))
            view = Tokens(arrays, self.dtype, files)
            view._fds = self._fds
            return view
        index = np.asarray(key).astype(np.int64)
        if index.ndim == 0:
            return self[index.reshape(1)][0]
        index = np.where(index < 0, index + len(self), index)
        rows = index.reshape(-1, index.shape[-1]) if index.size else index.reshape(0, 1)
        out = np.empty(rows.shape, self.dtype)
        for r, row in enumerate(rows):
            lo, hi = int(row.min()), int(row.max()) + 1
            if hi - lo <= 2 * len(row) + 4096:  # a window, or near one: read its span
                out[r] = self._read(lo, hi)[row - lo]
            else:
                out[r] = self._gather(row)
        return out.reshape(index.shape)

    def _gather(self, flat: np.ndarray) -> np.ndarray:
        which = np.searchsorted(self.starts, flat, side="right") - 1
        out = np.empty(flat.shape, self.dtype)
        for k in np.unique(which):
            chosen = which == k
            out[chosen] = self.arrays[k][flat[chosen] - self.starts[k]]
        return out

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop), read from the files (pread) or the arrays."""
        arrays, files = self._range(start, stop)
        parts = []
        for a, f in zip(arrays, files):
            if f is None:
                parts.append(np.asarray(a))
                continue
            path, first = f
            if path not in self._fds:
                self._fds[path] = os.open(path, os.O_RDONLY)
            size = self.dtype.itemsize
            parts.append(np.frombuffer(os.pread(self._fds[path], len(a) * size, first * size), self.dtype))
        return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, self.dtype)

    def _range(self, start: int, stop: int) -> tuple[list[np.ndarray], list]:
        arrays, files = [], []
        for a, f, s in zip(self.arrays, self.files, self.starts[:-1].tolist()):
            lo, hi = max(start - s, 0), min(stop - s, len(a))
            if lo < hi:
                arrays.append(a[lo:hi])
                files.append(None if f is None else (f[0], f[1] + lo))
        return arrays, files

    def __array__(self, dtype=None, copy=None):
        whole = np.concatenate(self.arrays) if self.arrays else np.zeros(0, self.dtype)
        return whole if dtype is None else whole.astype(dtype)


def _whole_file(a: np.ndarray) -> tuple[str, int] | None:
    """(file, 0) for a memory map of a whole file of tokens, else None."""
    name = getattr(a, "filename", None)
    if not isinstance(a, np.memmap) or not name or a.offset or a.ndim != 1:
        return None
    return (name, 0) if os.path.getsize(name) == a.nbytes else None


@dataclasses.dataclass
class Split:
    tokens: Tokens
    bytes: int  # UTF-8 bytes of its documents
    documents: int
    read_ends: Callable[[], np.ndarray]  # -> doc_ends

    plans: dict = dataclasses.field(default_factory=dict, repr=False)

    @functools.cached_property
    def doc_ends(self) -> np.ndarray:
        """int64: every document's end offset in the split (read on first use: O(documents))."""
        return self.read_ends()

    def row_plan(self, row_len: int) -> packing.RowPlan:
        """documents packing's rows (lmjax/data/packing.py), computed on first use."""
        if row_len not in self.plans:
            self.plans[row_len] = packing.plan_rows(self.doc_ends, row_len)
        return self.plans[row_len]

    def part(self, which: str, token_bytes: np.ndarray) -> Split:
        """The first half of the tokens ('tune'), the rest ('test'), or all; a document the cut
        crosses ends (or starts) there."""
        if which == "all":
            return self
        half = len(self.tokens) // 2
        lo, hi = (0, half) if which == "tune" else (half, len(self.tokens))

        def read_ends():
            ends = self.doc_ends
            inside = ends[(ends > lo) & (ends < hi)] - lo
            return np.append(inside, hi - lo).astype(np.int64)

        tokens = self.tokens[lo:hi]
        return Split(tokens, int(token_bytes[np.asarray(tokens)].sum()), -1, read_ends)


def _concat_ends(ends: list[str], lengths: list[int]) -> np.ndarray:
    """The shards' document ends (files) as one array of offsets into the split."""
    offsets = np.cumsum([0] + lengths[:-1]).astype(np.int64)
    parts = [np.fromfile(e, dtype="<i8").astype(np.int64) + o for e, o in zip(ends, offsets)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


@dataclasses.dataclass
class Store:
    folder: str
    manifest: dict
    tokenizer: Tokenizer
    train: Split
    val: Split

    @property
    def corpus_fingerprint(self) -> str:
        return self.manifest["corpus_fingerprint"]


def open_store(folder: str, corpus: src.Corpus | None = None) -> Store:
    """The finished store in `folder`; with `corpus` (its files as they are now), refuse it when
    a file was added, removed or changed since the store was built."""
    with open(os.path.join(folder, "manifest.json")) as f:
        manifest = json.load(f)
    if corpus is not None:
        check_files(folder, manifest, corpus)
    with open(os.path.join(folder, "tokenizer.json")) as f:
        tokenizer = tokenizer_from_json(json.load(f))
    dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
    _allow_open_files(4 * len(manifest["pieces"]))  # each memory map holds a file descriptor, each pread one
    splits = {}
    for split in SPLITS:
        arrays, ends = [], []
        for entry in manifest["pieces"]:
            n, name = entry[split]["tokens"], _shard(folder, entry["piece"]["index"], split)
            if n == 0:
                continue
            if os.path.getsize(name + ".bin") != n * dtype.itemsize:
                raise DataError(f"token store shard {name}.bin has the wrong size; run `lmjax prepare "
                                "--rebuild` with the same config to build the store again")
            arrays.append(np.memmap(name + ".bin", dtype=dtype, mode="r"))
            ends.append(name + ".ends")
        total = manifest[split]
        read_ends = functools.partial(_concat_ends, ends, [len(a) for a in arrays])
        splits[split] = Split(Tokens(arrays, dtype), total["bytes"], total["documents"], read_ends)
    return Store(folder, manifest, tokenizer, splits["train"], splits["val"])


def _allow_open_files(n: int) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 1024
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))


def check_files(folder: str, manifest: dict, corpus: src.Corpus) -> None:
    """One line naming the first file that is not what the store was built from."""
    then = {f["rel"]: f for f in manifest["files"]}
    now = {f.rel: f for f in corpus.files}
    fix = (f"run `lmjax prepare --rebuild` with the same config to tokenize it again (the store is "
           f"{folder})")
    for rel in sorted(set(then) ^ set(now)):
        what = "is new" if rel in now else "is gone"
        raise DataError(f"corpus file {rel} {what} since the token store was built; {fix}")
    changed = [rel for rel in sorted(now) if now[rel].stat() != {k: then[rel][k] for k in ("size", "mtime_ns")}]
    if not changed:
        return
    for entry in manifest["pieces"]:  # the same names, so corpus.files has the plan's order
        piece = _piece(entry["piece"])
        touched = [corpus.files[i] for i in piece.files if corpus.files[i].rel in changed]
        if touched and src.piece_sha256(corpus, piece) != entry["sha256"]:
            raise DataError(f"corpus file {touched[0].path} changed since the token store was built; {fix}")


# ---------------------------------------------------------------------------- building

@dataclasses.dataclass(frozen=True)
class Job:
    """The processes that build a store together (a multi-process training job): each builds the
    pieces whose index is its own modulo `count`; `barrier(name)` waits for all of them and
    `all_ok(flag)` returns every process's flag. One process: the defaults."""

    index: int = 0
    count: int = 1
    barrier: Callable[[str], None] = lambda name: None
    all_ok: Callable[[bool], list[bool]] = lambda ok: [ok]
    token: Callable[[], int] = lambda: int.from_bytes(os.urandom(4), "little")


def build_store(folder: str, corpus: src.Corpus, opts: src.ReadOptions, tokenizer: Tokenizer, *,
                workers: int = 1, job: Job = Job(), ray_address: str = "", progress=None,
                piece_bytes: int = src.PIECE_BYTES) -> dict:
    """Build (or finish building) the store in `folder`; returns its manifest."""
    t0 = time.perf_counter()
    if job.index == 0:
        _start(folder, corpus, src.plan_pieces(corpus, piece_bytes), tokenizer)
    job.barrier("lmjax: token store started")
    pieces = _check_plan(folder, corpus)  # a resumed build keeps its first plan
    todo = [p for p in pieces if p.index % job.count == job.index and not _done(folder, p)]
    tok_json = json.dumps(tokenizer.to_json())
    try:
        run_pieces(functools.partial(build_piece, folder, corpus, opts, tok_json), todo, workers=workers,
                   ray_address=ray_address, progress=progress)
    except OSError as e:
        done = sum(_done(folder, p) for p in pieces)
        raise DataError(f"writing the token store {folder} failed ({e.strerror or e}); free disk space, then "
                        f"run the same command to continue ({done} of {len(pieces)} pieces are finished and "
                        "kept)") from None
    job.barrier("lmjax: token store pieces built")
    if job.index == 0:
        manifest = _finish(folder, corpus, pieces, opts, tokenizer, time.perf_counter() - t0, workers)
    job.barrier("lmjax: token store finished")
    with open(os.path.join(folder, "manifest.json")) as f:
        return manifest if job.index == 0 else json.load(f)


def run_pieces(fn, pieces: list, *, workers: int, ray_address: str = "", progress=None) -> list:
    """[fn(p) for p in pieces]: in this process (workers 1), a pool of `workers` processes, or as
    Ray tasks on the cluster at `ray_address`."""
    if not pieces:
        return []
    if ray_address:
        return _ray_map(fn, pieces, ray_address)
    if workers <= 1 or len(pieces) == 1:
        out = []
        for p in pieces:
            out.append(fn(p))
            progress and progress(len(out), len(pieces))
        return out
    # spawn: the caller may hold JAX's threads, which fork would copy mid-flight.
    with ProcessPoolExecutor(min(workers, len(pieces)), mp_context=get_context("spawn"),
                             initializer=_worker_init) as pool:
        out = []
        for r in pool.map(fn, pieces):
            out.append(r)
            progress and progress(len(out), len(pieces))
        return out


def _worker_init() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process: the pool is the parallelism


def _ray_map(fn, pieces: list, address: str) -> list:
    try:
        import ray
    except ImportError:
        raise DataError("lmjax prepare --ray needs Ray: pip install 'lmjax[ray]'") from None
    _check_reachable(address)  # ray.init itself retries an unreachable address for minutes
    try:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise DataError(f"cannot reach the Ray cluster at {address} ({str(e).splitlines()[0]}); start one "
                        "with `ray start --head` or pass its address (host:port)") from None
    task = ray.remote(num_cpus=1)(_apply)
    return ray.get([task.remote(fn, p) for p in pieces])


def _check_reachable(address: str) -> None:
    import socket

    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=10).close()
    except (OSError, ValueError) as e:
        raise DataError(f"cannot reach the Ray cluster at {address} ({getattr(e, 'strerror', None) or e}); start "
                        "one with `ray start --head` and pass its address (host:port)") from None


def _apply(fn, item):
    return fn(item)


def check_shared(folder: str, job: Job) -> None:
    """Every process of the job must see the same folder of stores (they write shards together)."""
    if job.count == 1:
        return
    probe = os.path.join(folder, f".probe-{job.token()}")
    if job.index == 0:
        open(probe, "w").close()
    job.barrier("lmjax: store probe written")
    seen = job.all_ok(os.path.exists(probe))
    job.barrier("lmjax: store probe read")
    if job.index == 0 and os.path.exists(probe):
        os.remove(probe)
    if not all(seen):
        lost = [i for i, ok in enumerate(seen) if not ok]
        raise DataError(f"the token stores' folder {folder} is not on storage every process shares (process(es) "
                        f"{', '.join(map(str, lost))} cannot see process 0's files there); set "
                        "config.data.cache_dir or LMJAX_CACHE_DIR to a filesystem every host mounts")


def _start(folder: str, corpus: src.Corpus, pieces: list, tokenizer: Tokenizer) -> None:
    os.makedirs(os.path.join(folder, "shards"), exist_ok=True)
    _clear_dead_temporaries(os.path.join(folder, "shards"))
    if not os.path.exists(os.path.join(folder, "tokenizer.json")):
        write_json(os.path.join(folder, "tokenizer.json"), tokenizer.to_json())
    if not os.path.exists(os.path.join(folder, "plan.json")):
        write_json(os.path.join(folder, "plan.json"), _plan_json(corpus, pieces))


def _clear_dead_temporaries(shards: str) -> None:
    """Remove the temporary files of writers that died (SIGKILL) on this host: `*.tmp-<pid>`."""
    for name in os.listdir(shards):
        pid = name.rpartition(".tmp-")[2]
        if ".tmp-" in name and pid.isdigit() and not _alive(int(pid)):
            os.remove(os.path.join(shards, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _plan_json(corpus: src.Corpus, pieces: list) -> dict:
    return {"corpus": corpus.name, "split": corpus.split,
            "files": [{"rel": f.rel, **f.stat()} for f in corpus.files],
            "pieces": [p.to_json() for p in pieces]}


def _check_plan(folder: str, corpus: src.Corpus) -> list[src.Piece]:
    """The build's pieces; a resumed build must read the corpus its finished pieces read."""
    with open(os.path.join(folder, "plan.json")) as f:
        plan = json.load(f)
    then = plan["files"]
    now = [{"rel": f.rel, **f.stat()} for f in corpus.files]
    if then != now:
        rel = next((a.get("rel") for a, b in zip(then + [{}] * len(now), now + [{}] * len(then)) if a != b), "?")
        raise DataError(f"corpus file {rel} changed while its token store was being built; run "
                        f"`lmjax prepare --rebuild` with the same config to start the store again ({folder})")
    return [_piece(p) for p in plan["pieces"]]


def _shard(folder: str, index: int, split: str) -> str:
    return os.path.join(folder, "shards", f"{index:05d}.{split}")


def _entry_path(folder: str, index: int) -> str:
    return os.path.join(folder, "shards", f"{index:05d}.json")


def _done(folder: str, piece: src.Piece) -> bool:
    return os.path.exists(_entry_path(folder, piece.index))


def _piece(d: dict) -> src.Piece:
    return src.Piece(d["index"], tuple(d["files"]), d["start"], d["stop"])


@functools.lru_cache(maxsize=4)
def _tokenizer(tok_json: str) -> Tokenizer:
    return tokenizer_from_json(json.loads(tok_json))


class _ShardWriter:
    """One split's shard of one piece, streamed to a temporary file with its checksum."""

    def __init__(self, name: str, dtype):
        self.name, self.dtype = name, dtype
        self.tmp = f"{name}.bin.tmp-{os.getpid()}"
        self.file = open(self.tmp, "wb")
        self.sha = hashlib.sha256()
        self.ends: list[np.ndarray] = []
        self.tokens = self.documents = self.bytes = 0

    def add(self, ids: np.ndarray, lengths: np.ndarray, nbytes: int) -> None:
        data = ids.astype(self.dtype, copy=False).tobytes()
        self.file.write(data)
        self.sha.update(data)
        self.ends.append(self.tokens + np.cumsum(lengths))
        self.tokens += int(ids.size)
        self.documents += int(lengths.size)
        self.bytes += nbytes

    def close(self) -> dict:
        self.file.close()
        ends = np.concatenate(self.ends) if self.ends else np.zeros(0, np.int64)
        write_bytes(self.name + ".ends", ends.astype("<i8").tobytes())
        os.replace(self.tmp, self.name + ".bin")
        return {"tokens": self.tokens, "documents": self.documents, "bytes": self.bytes,
                "sha256": self.sha.hexdigest()}

    def discard(self) -> None:
        self.file.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


def build_piece(folder: str, corpus: src.Corpus, opts: src.ReadOptions, tok_json: str, piece: src.Piece) -> dict:
    """Tokenize one piece into its shards and write its ledger entry; returns the entry."""
    tokenizer = _tokenizer(tok_json)
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {s: _ShardWriter(_shard(folder, piece.index, s), dtype) for s in SPLITS}
    counts: dict = {}
    try:
        batch = {s: [] for s in SPLITS}
        size = {s: 0 for s in SPLITS}

        def flush(split):
            texts = batch[split]
            if texts:
                ids, lengths = tokenizer.encode_documents(texts)
                writers[split].add(ids, lengths, sum(len(t.encode("utf-8")) for t in texts))
            batch[split], size[split] = [], 0

        for _, text, val in src.documents(corpus, piece, opts, counts):
            split = "val" if val else "train"
            batch[split].append(text)
            size[split] += len(text)
            if len(batch[split]) >= BATCH_DOCS or size[split] >= BATCH_CHARS:
                flush(split)
        for split in SPLITS:
            flush(split)
        entry = {"piece": piece.to_json(), "sha256": src.piece_sha256(corpus, piece), **counts}
        entry |= {s: w.close() for s, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.discard()
        raise
    write_json(_entry_path(folder, piece.index), entry)
    return entry


def _finish(folder, corpus, pieces, opts, tokenizer, seconds, workers) -> dict:
    entries = []
    for p in pieces:
        with open(_entry_path(folder, p.index)) as f:
            entries.append(json.load(f))
    totals = {s: {k: sum(e[s][k] for e in entries) for k in ("tokens", "documents", "bytes")} for s in SPLITS}
    for split, total in totals.items():
        if not total["tokens"]:
            raise DataError(f"corpus {corpus.name!r} leaves the {split} split empty ({totals['train']['documents']} "
                            f"train / {totals['val']['documents']} val documents, val_fraction={opts.val_fraction}); "
                            "use a bigger corpus or change config.data.val_fraction")
    fingerprint = hashlib.sha256(json.dumps(
        ["lmjax-corpus-v2", corpus.split, opts.val_fraction, opts.text_key, opts.bad_records,
         [e["sha256"] for e in entries]]).encode()).hexdigest()
    manifest = {
        "format_version": FORMAT_VERSION, "corpus": corpus.name, "corpus_fingerprint": fingerprint,
        "split": corpus.split, "options": dataclasses.asdict(opts),
        "tokenizer": tokenizer.kind, "tokenizer_fingerprint": tokenizer.fingerprint,
        "vocab_size": tokenizer.vocab_size, "eod_id": tokenizer.eod_id,
        "dtype": token_dtype(tokenizer.vocab_size).name,
        "files": [{"rel": f.rel, **f.stat()} for f in corpus.files],
        **totals,
        **{k: sum(e.get(k, 0) for e in entries) for k in ("bad_records", "empty_documents", "skipped_files")},
        "build_seconds": seconds, "workers": workers,
        "pieces": entries,
    }
    write_json(os.path.join(folder, "manifest.json"), manifest)
    return manifest


def set_aside(folder: str) -> str | None:
    """Rename a store folder out of the way (`--rebuild`): nothing is deleted."""
    if not os.path.exists(folder):
        return None
    aside = f"{folder}.replaced-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    os.rename(folder, aside)
    return aside


def write_json(path: str, obj) -> None:
    write_bytes(path, json.dumps(obj, indent=1).encode())


def write_bytes(path: str, data: bytes) -> None:
    """Write `path` under a temporary name and rename it: readers see all of it or nothing."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
