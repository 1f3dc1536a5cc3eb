"""Where documents come from: a corpus name becomes files, the files pieces, a piece documents.

A corpus (config.data.corpus) is
- 'stdlib': every `.py` file of this Python's standard library (not site-packages);
- 'tinyshakespeare': `<data_dir or $LMJAX_DATA_DIR>/tinyshakespeare/input.txt`;
- a file, a folder (every file under it) or a glob. By suffix, a file is read as
  `.jsonl`, `.jsonl.gz`, `.jsonl.zst`: one JSON object per line, its `text_key` field a document;
  `.parquet`: one document per row of the `text_key` column (pyarrow, in row batches);
  a Hugging Face `datasets` folder (save_to_disk: `state.json` beside `.arrow` files): per row;
  anything else: UTF-8 text, the whole file one document.

Split (`val_fraction` f): a lone text file (tinyshakespeare) by position, train = text[:int(n * (1 - f))]
as nanoGPT; everything else by document: a document goes to val when the first 32 bits of
sha256(its key) / 2^32 < f, its key being the file's relative path for a text file, and
"<relative path>\\0<position>" for a record (position: the line's byte offset, or the row index),
so adding files or records never moves another document. A text corpus whose hash puts every file
on one side moves its first file to train or its last to val.

Pieces are the units of work of a token store: text files grouped in sorted order up to
PIECE_BYTES, a plain .jsonl file cut into PIECE_BYTES byte ranges (a piece reads the lines that
start in its range), any other file whole. The plan depends on the files' names and sizes only.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import io
import json
import os
import re
import sysconfig
from collections.abc import Iterator

from lmjax.errors import ConfigError, DataError
from lmjax.process.settings import Settings

NAMED = ("stdlib", "tinyshakespeare")
PIECE_BYTES = 64 << 20
RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
ROW_BATCH = 4096  # parquet / arrow rows read at a time
HASH_BLOCK = 1 << 20


@dataclasses.dataclass(frozen=True)
class SourceFile:
    rel: str  # the name recorded in a store's manifest
    path: str
    size: int
    mtime_ns: int
    kind: str  # 'text', 'jsonl', 'parquet', 'arrow'

    def stat(self) -> dict:
        return {"size": self.size, "mtime_ns": self.mtime_ns}


@dataclasses.dataclass(frozen=True)
class Corpus:
    name: str
    files: tuple[SourceFile, ...]  # sorted by rel
    split: str  # 'position' (one text file) or 'document'


@dataclasses.dataclass(frozen=True)
class Piece:
    index: int
    files: tuple[int, ...]  # indices into Corpus.files
    start: int = 0  # a plain .jsonl's byte range; 0, -1: the whole file(s)
    stop: int = -1

    def to_json(self) -> dict:
        return {"index": self.index, "files": list(self.files), "start": self.start, "stop": self.stop}


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    text_key: str = "text"
    bad_records: str = "error"
    val_fraction: float = 0.1


def find_corpus(name: str, data_dir: str = "") -> Corpus:
    """The corpus's files with their sizes and modification times (no file is read)."""
    pairs = _find(name, data_dir)
    files = tuple(_source_file(rel, path) for rel, path in pairs)
    lone_text = len(files) == 1 and files[0].kind == "text"
    return Corpus(name, files, "position" if lone_text else "document")


def plan_pieces(corpus: Corpus, piece_bytes: int = PIECE_BYTES) -> list[Piece]:
    """The corpus's pieces (module docstring), numbered in order. The tokens of a store do not
    depend on `piece_bytes`, only how its shards cut them."""
    pieces: list[Piece] = []
    group, group_bytes = [], 0

    def close_group():
        nonlocal group, group_bytes
        if group:
            pieces.append(Piece(len(pieces), tuple(group)))
        group, group_bytes = [], 0

    for i, f in enumerate(corpus.files):
        if f.kind == "text":
            if group and group_bytes + f.size > piece_bytes:
                close_group()
            group.append(i)
            group_bytes += f.size
            continue
        close_group()
        if f.kind == "jsonl" and f.rel.endswith(".jsonl") and f.size > piece_bytes:
            for start in range(0, f.size, piece_bytes):
                pieces.append(Piece(len(pieces), (i,), start, min(start + piece_bytes, f.size)))
        else:
            pieces.append(Piece(len(pieces), (i,)))
    close_group()
    return pieces


def forced_text_sides(corpus: Corpus, val_fraction: float) -> dict[int, bool]:
    """For a corpus of text files: file index -> goes to val, with both sides non-empty."""
    in_val = {i: is_val(f.rel, val_fraction) for i, f in enumerate(corpus.files) if f.kind == "text"}
    if in_val and len(in_val) == len(corpus.files):
        first, last = min(in_val), max(in_val)
        if all(in_val.values()):
            in_val[first] = False
        if not any(in_val.values()):
            in_val[last] = True
    return in_val


def is_val(key: str, val_fraction: float) -> bool:
    return doc_hash(key)[0] < val_fraction


def doc_hash(key: str) -> tuple[float, float]:
    """Two independent uniforms in [0, 1) from a document's key: (split, tokenizer sample)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") / 2**32, int.from_bytes(digest[4:8], "big") / 2**32


def documents(corpus: Corpus, piece: Piece, opts: ReadOptions,
              counts: dict | None = None) -> Iterator[tuple[str, str, bool]]:
    """The piece's documents in order: (key, text, goes to val). Empty documents are left out;
    `counts` (if given) gains 'bad_records', 'empty_documents' and 'skipped_files'."""
    counts = counts if counts is not None else {}
    for name in ("bad_records", "empty_documents", "skipped_files"):
        counts.setdefault(name, 0)
    if corpus.split == "position":
        yield from _position_split(corpus.files[0], opts.val_fraction)
        return
    sides = forced_text_sides(corpus, opts.val_fraction)
    for i in piece.files:
        f = corpus.files[i]
        if f.kind == "text":
            text = _text_file(corpus, f, counts)
            if text is None:
                continue
            if text:
                yield f.rel, text, sides[i]
            else:
                counts["empty_documents"] += 1
            continue
        for key, text in _records(f, piece, opts, counts):
            if text:
                yield key, text, is_val(key, opts.val_fraction)
            else:
                counts["empty_documents"] += 1


def piece_sha256(corpus: Corpus, piece: Piece) -> str:
    """sha256 of the bytes the piece reads (its files, or its byte range of one)."""
    h = hashlib.sha256()
    for i in piece.files:
        f = corpus.files[i]
        h.update(f.rel.encode("utf-8") + b"\0")
        with open(f.path, "rb") as fh:
            fh.seek(piece.start)
            left = (piece.stop if piece.stop >= 0 else f.size) - piece.start
            while left > 0:
                block = fh.read(min(HASH_BLOCK, left))
                if not block:
                    break
                h.update(block)
                left -= len(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------ readers

def _position_split(f: SourceFile, val_fraction: float) -> Iterator[tuple[str, str, bool]]:
    text = _decode(f, _read_bytes(f.path))
    cut = int(len(text) * (1 - val_fraction))
    for key, part, val in ((f"{f.rel}\0train", text[:cut], False), (f"{f.rel}\0val", text[cut:], True)):
        if not part:
            side = "val" if val else "train"
            raise DataError(f"corpus file {f.path} leaves the {side} split empty (val_fraction={val_fraction}); "
                            "use a bigger file or change config.data.val_fraction")
        yield key, part, val


def _text_file(corpus: Corpus, f: SourceFile, counts: dict) -> str | None:
    data = _read_bytes(f.path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if corpus.name == "stdlib":  # a few stdlib test files are deliberately in other encodings
            counts["skipped_files"] += 1
            return None
        raise DataError(f"corpus file {f.path} is not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
                        "convert it with iconv or remove it from the corpus") from None


def _decode(f: SourceFile, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"corpus file {f.path} is not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
                        "convert it with iconv or remove it from the corpus") from None


def _records(f: SourceFile, piece: Piece, opts: ReadOptions, counts: dict) -> Iterator[tuple[str, str]]:
    if f.kind == "jsonl":
        yield from _jsonl(f, piece, opts, counts)
    else:
        yield from _table(f, opts, counts)


def _bad(f: SourceFile, where: str, why: str, opts: ReadOptions, counts: dict) -> None:
    if opts.bad_records == "skip":
        counts["bad_records"] += 1
        return
    raise DataError(f"{f.path}, {where}: {why}; fix the record, or set config.data.bad_records='skip' "
                    "to leave such records out (they are counted in the store's manifest)")


def _open_text_stream(f: SourceFile):
    if f.rel.endswith(".gz"):
        return gzip.open(f.path, "rb")
    if f.rel.endswith(".zst"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(f.path, "rb"), closefd=True),
                                 buffer_size=1 << 20)
    return open(f.path, "rb", buffering=1 << 20)


def _jsonl(f: SourceFile, piece: Piece, opts: ReadOptions, counts: dict) -> Iterator[tuple[str, str]]:
    stop = piece.stop if piece.stop >= 0 else None
    with _open_text_stream(f) as fh:
        offset, line_no = 0, 0
        if piece.start:
            fh.seek(piece.start - 1)
            if fh.read(1) != b"\n":
                fh.readline()  # the line that began before this piece is the previous piece's
            offset = fh.tell()
            line_no = None  # counted only for an error message
        while stop is None or offset < stop:
            line = fh.readline()
            if not line:
                break
            here, offset = offset, offset + len(line)
            if line_no is not None:
                line_no += 1
            if not line.strip():
                continue
            text, why = _record_text(line, opts.text_key)
            if why:
                at = f"line {_line_number(f, here) if line_no is None else line_no}"
                _bad(f, at, why, opts, counts)
                continue
            yield f"{f.rel}\0{here}", text


def _record_text(line: bytes, text_key: str) -> tuple[str, str]:
    try:
        record = json.loads(line)
    except UnicodeDecodeError:
        return "", "not UTF-8"
    except ValueError as e:
        return "", f"not JSON ({str(e).splitlines()[0]})"
    if not isinstance(record, dict) or text_key not in record:
        return "", f"no {text_key!r} field (config.data.text_key)"
    text = record[text_key]
    if not isinstance(text, str):
        return "", f"its {text_key!r} field is {type(text).__name__}, not a string"
    return text, ""


def _line_number(f: SourceFile, offset: int) -> int:
    """1-based line of the byte at `offset` of a plain file (only for an error message)."""
    with open(f.path, "rb") as fh:
        return fh.read(offset).count(b"\n") + 1


def _table(f: SourceFile, opts: ReadOptions, counts: dict) -> Iterator[tuple[str, str]]:
    row = 0
    for batch in _row_batches(f, opts.text_key):
        column = batch.column(opts.text_key)
        for text in column.to_pylist():
            if not isinstance(text, str):
                _bad(f, f"row {row}", f"its {opts.text_key!r} value is {type(text).__name__}, not a string",
                     opts, counts)
            else:
                yield f"{f.rel}\0{row}", text
            row += 1


def _row_batches(f: SourceFile, text_key: str):
    import pyarrow as pa

    if f.kind == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(f.path)
        _check_column(f, pf.schema_arrow.names, text_key)
        yield from pf.iter_batches(batch_size=ROW_BATCH, columns=[text_key])
        return
    with pa.memory_map(f.path) as source:  # a datasets .arrow file: an Arrow IPC stream
        reader = pa.ipc.open_stream(source)
        _check_column(f, reader.schema.names, text_key)
        for batch in reader:
            yield batch.select([text_key])


def _check_column(f: SourceFile, names: list[str], text_key: str) -> None:
    if text_key not in names:
        raise DataError(f"{f.path} has no column {text_key!r} (it has {', '.join(map(repr, names))}); "
                        "set config.data.text_key to the text column")


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


# ------------------------------------------------------------------------------ finding files

def _kind(rel: str) -> str:
    if rel.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst")):
        return "jsonl"
    if rel.endswith(".parquet"):
        return "parquet"
    if rel.endswith(".arrow"):
        return "arrow"
    return "text"


def _source_file(rel: str, path: str) -> SourceFile:
    st = os.stat(path)
    return SourceFile(rel, path, st.st_size, st.st_mtime_ns, _kind(rel))


def _find(name: str, data_dir: str) -> list[tuple[str, str]]:
    """[(relative path, path)] sorted by relative path."""
    if name == "stdlib":
        return _stdlib_files()
    if name == "tinyshakespeare":
        return [("input.txt", _tinyshakespeare(data_dir))]
    path = os.path.expanduser(name)
    if os.path.isfile(path):
        return [(os.path.basename(path), path)]
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "dataset_dict.json")):
        splits = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
        raise DataError(f"{path} is a datasets DatasetDict (splits {', '.join(splits)}); point config.data.corpus "
                        f"at one split's folder, e.g. {os.path.join(path, splits[0] if splits else 'train')}")
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "state.json")):
        return _datasets_files(path)
    if os.path.isdir(path):
        paths = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
        root = path
    else:
        paths = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
        root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]) if paths else ""
    if not paths:
        raise DataError(f"corpus {name!r} matched no files; pass an existing path or glob, or one of "
                        f"{', '.join(map(repr, NAMED))}")
    return sorted((os.path.relpath(os.path.abspath(p), root).replace(os.sep, "/"), p) for p in paths)


def _tinyshakespeare(data_dir: str) -> str:
    root = data_dir or Settings.read().data_dir
    if not root:
        raise DataError("corpus 'tinyshakespeare' needs its data directory: set LMJAX_DATA_DIR "
                        "(e.g. LMJAX_DATA_DIR=../shared/data) or config.data.data_dir")
    path = os.path.join(os.path.expanduser(root), "tinyshakespeare", "input.txt")
    if not os.path.isfile(path):
        raise DataError(f"corpus 'tinyshakespeare' not found at {path}; download "
                        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt there")
    return path


def _datasets_files(path: str) -> list[tuple[str, str]]:
    """The .arrow files of a datasets folder written by save_to_disk, in its state.json's order."""
    try:
        with open(os.path.join(path, "state.json")) as fh:
            names = [d["filename"] for d in json.load(fh)["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}/state.json is not a datasets save_to_disk state ({e}); point "
                        "config.data.corpus at a folder written by Dataset.save_to_disk") from None
    # Zero-padded shard names sort in their order; keep the state's order by prefixing it.
    return [(f"{k:05d}-{n}", os.path.join(path, n)) for k, n in enumerate(names)]


def _stdlib_files() -> list[tuple[str, str]]:
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for d, dirs, names in os.walk(root):
        dirs[:] = [x for x in dirs if x not in ("site-packages", "dist-packages")]
        for f in names:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                files.append((os.path.relpath(path, root).replace(os.sep, "/"), path))
    return sorted(files)


# ------------------------------------------------------------------------------ mixtures

@dataclasses.dataclass(frozen=True)
class MixtureSource:
    name: str  # the label of val_loss/<name>
    corpus: str  # what config.data.corpus would say
    weight: float  # share of each batch's rows (normalised)


def parse_mixture(spec: str) -> list[MixtureSource]:
    """'SOURCE:W,SOURCE:W' or 'NAME=SOURCE:W,...' -> sources with weights summing to 1."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    out = []
    for part in parts:
        corpus, sep, weight = part.rpartition(":")
        try:
            w = float(weight) if sep else float("nan")
        except ValueError:
            w = float("nan")
        if not corpus or not w > 0:
            raise ConfigError(f"config.data.mixture part {part!r} is not SOURCE:WEIGHT with a positive "
                              "weight, e.g. 'stdlib:0.7,/data/web/*.jsonl.zst:0.3'")
        name, eq, rest = corpus.partition("=")
        if eq and re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            corpus = rest
        else:
            name = _label(corpus)
        out.append(MixtureSource(name, corpus, w))
    if len(out) < 2:
        raise ConfigError(f"config.data.mixture={spec!r} names {len(out)} source(s); a mixture needs at least "
                          "two (for one corpus set config.data.corpus)")
    names = [s.name for s in out]
    if len(set(names)) < len(names):
        raise ConfigError(f"config.data.mixture sources share a name ({', '.join(names)}); name them "
                          "apart, e.g. 'code=stdlib:0.5,web=/data/web/*.jsonl:0.5'")
    total = sum(s.weight for s in out)
    return [dataclasses.replace(s, weight=s.weight / total) for s in out]


def _label(corpus: str) -> str:
    """A short name for val_loss/<name>: the named corpus, else the path's last plain component."""
    parts = [p for p in re.split(r"[/\\]", corpus) if p and not any(c in p for c in "*?[")]
    stem = parts[-1] if parts else corpus
    stem = re.sub(r"(\.jsonl|\.json|\.parquet|\.txt)?(\.gz|\.zst)?$", "", stem)
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "source"
