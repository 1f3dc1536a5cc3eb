"""Corpora: find the files, read them, split train/val deterministically, fingerprint them.

Three kinds of corpus name:
- 'stdlib': every `.py` file of this Python's standard library (not site-packages), split by file.
- 'tinyshakespeare': `<data_dir or $LMJAX_DATA_DIR>/tinyshakespeare/input.txt`, split by position.
- anything else: a file, a directory (every file under it) or a glob pattern. One file is split by
  position, several files by file.

Split rules (`val_fraction` defaults to 0.1):
- by position: train is `text[:int(n * (1 - val_fraction))]`, val the rest; for tinyshakespeare with the
  default this is exactly nanoGPT's `text[:int(n * 0.9)]`.
- by file: a file goes to val when `int(sha256(relpath)[:8], 16) / 2**32 < val_fraction`, so adding a file
  never moves another. Both splits are forced non-empty (last file to val / first file to train).
  The files of a split are joined with FILE_SEPARATOR ("\\n") between them, in sorted relative-path order.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import sysconfig

from lmjax.errors import DataError
from lmjax.process.settings import Settings

NAMED = ("stdlib", "tinyshakespeare")
FILE_SEPARATOR = "\n"
_FINGERPRINT_VERSION = "lmjax-corpus-v1"


@dataclasses.dataclass(frozen=True)
class Corpus:
    name: str  # 'stdlib', 'tinyshakespeare', or the path/glob given
    train: str
    val: str
    fingerprint: str  # sha256 over every file's relative name and bytes, plus the split rule
    num_files: int  # files read (for stdlib: including the skipped ones)
    num_skipped: int = 0  # stdlib only: files that are not UTF-8 and were left out


def load_corpus(name: str, *, data_dir: str = "", val_fraction: float = 0.1) -> Corpus:
    """Read corpus `name` and split it into train and val text."""
    files, rule = _find_files(name, data_dir)
    contents = [(rel, _read(path)) for rel, path in files]
    texts, skipped = [], 0
    for (rel, path), (_, data) in zip(files, contents):
        try:
            texts.append((rel, data.decode("utf-8")))
        except UnicodeDecodeError as e:
            if name == "stdlib":  # a few stdlib test files are deliberately in other encodings
                skipped += 1
                continue
            raise DataError(
                f"corpus file {path} is not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
                "convert it with iconv or remove it from the glob"
            ) from None
    if not any(text for _, text in texts):
        raise DataError(
            f"corpus {name!r} has no text ({len(files)} file(s), all empty); point config.data.corpus at text files"
        )
    if rule == "position":
        text = texts[0][1]
        cut = int(len(text) * (1 - val_fraction))
        train, val = text[:cut], text[cut:]
    else:
        in_val = [is_val_file(rel, val_fraction) for rel, _ in texts]
        if all(in_val):
            in_val[0] = False
        if not any(in_val):
            in_val[-1] = True
        train = FILE_SEPARATOR.join(t for (_, t), v in zip(texts, in_val) if not v)
        val = FILE_SEPARATOR.join(t for (_, t), v in zip(texts, in_val) if v)
    for split, text in (("train", train), ("val", val)):
        if not text:
            raise DataError(
                f"corpus {name!r} leaves the {split} split empty (val_fraction={val_fraction}); "
                "use a bigger corpus or change config.data.val_fraction"
            )
    return Corpus(name, train, val, _fingerprint(contents, rule, val_fraction), len(files), skipped)


def corpus_fingerprint(name: str, *, data_dir: str = "", val_fraction: float = 0.1) -> str:
    """The corpus fingerprint without decoding or splitting (reads and hashes the files)."""
    files, rule = _find_files(name, data_dir)
    return _fingerprint([(rel, _read(path)) for rel, path in files], rule, val_fraction)


def is_val_file(relpath: str, val_fraction: float) -> bool:
    digest = hashlib.sha256(relpath.encode("utf-8")).hexdigest()
    return int(digest[:8], 16) / 2**32 < val_fraction


def _fingerprint(contents: list[tuple[str, bytes]], rule: str, val_fraction: float) -> str:
    h = hashlib.sha256(f"{_FINGERPRINT_VERSION} split={rule} val_fraction={val_fraction!r}\n".encode())
    for rel, data in contents:
        # Length-prefixed, so no two different file lists hash the same stream.
        h.update(rel.encode("utf-8") + b"\0" + len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _find_files(name: str, data_dir: str) -> tuple[list[tuple[str, str]], str]:
    """[(relative path, path)] sorted by relative path, and the split rule ('file' or 'position')."""
    if name == "stdlib":
        return _stdlib_files(), "file"
    if name == "tinyshakespeare":
        root = data_dir or Settings.read().data_dir
        if not root:
            raise DataError(
                "corpus 'tinyshakespeare' needs its data directory: set LMJAX_DATA_DIR "
                "(e.g. LMJAX_DATA_DIR=../shared/data) or config.data.data_dir"
            )
        path = os.path.join(os.path.expanduser(root), "tinyshakespeare", "input.txt")
        if not os.path.isfile(path):
            raise DataError(
                f"corpus 'tinyshakespeare' not found at {path}; download "
                "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt there"
            )
        return [("input.txt", path)], "position"
    path = os.path.expanduser(name)
    if os.path.isfile(path):
        return [(os.path.basename(path), path)], "position"
    if os.path.isdir(path):
        paths = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
        root = path
    else:
        paths = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
        root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]) if paths else ""
    if not paths:
        raise DataError(
            f"corpus {name!r} matched no files; pass an existing path or glob, or one of "
            f"{', '.join(map(repr, NAMED))}"
        )
    files = sorted((os.path.relpath(os.path.abspath(p), root).replace(os.sep, "/"), p) for p in paths)
    return files, "position" if len(files) == 1 else "file"


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


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()

