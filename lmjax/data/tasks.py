"""Classification tasks for `lmjax finetune`: labelled texts as padded token windows.

- 'stdlib-modules' (built in, no download): which of STDLIB_GROUPS a snippet of standard-library
  source comes from. Each file is tokenized with the pretrained run's tokenizer and cut into
  non-overlapping snippets of `length` tokens (the pretrained context; 128 bytes for a byte-level
  run with seq_len 128). A file's snippets are held out exactly when the language-model corpus
  puts that file in its validation split (`sources.is_val`, same hash, same val_fraction), so
  no held-out snippet was in pretraining's training split. Per label at most `max_per_label`
  training snippets and a fifth of that held out, drawn evenly over the label's files.
- a user's file: `.jsonl` (one `{"text": ..., "label": ...}` per line) or `.tsv` (`text<TAB>label`
  per line; the last tab splits). An example is held out when the sha256 of its text falls under
  val_fraction (as corpus files are split), so the split does not depend on the file's order.
  Texts are truncated to `length` tokens.
Bad input (a malformed line, an empty text, one label only, a held-out label never seen in
training) is a DataError naming the file and line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from lmjax.config import STDLIB_TASK
from lmjax.data.sources import _stdlib_files, is_val
from lmjax.errors import DataError

# Top-level stdlib packages present in Python 3.11-3.13, each with held-out files under the
# default val_fraction (0.1).
STDLIB_GROUPS = ("asyncio", "ctypes", "email", "encodings", "idlelib", "importlib", "multiprocessing",
                 "test", "tkinter", "unittest", "xml")
FILE_SUFFIXES = (".jsonl", ".tsv")
MAX_UNKNOWN = 0.01  # share of <unk> tokens above which the tokenizer does not fit the task


@dataclasses.dataclass(frozen=True)
class Examples:
    tokens: np.ndarray  # int32 [N, length], 0 past each example's end
    lengths: np.ndarray  # int32 [N], >= 1
    labels: np.ndarray  # int32 [N], indices into Task.labels

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    labels: tuple[str, ...]
    train: Examples
    val: Examples


def load_task(task: str, tokenizer, *, length: int, val_fraction: float = 0.1,
              max_per_label: int = 2000) -> Task:
    """The task `task` ('stdlib-modules' or a .jsonl/.tsv path) tokenized by `tokenizer`."""
    if task == STDLIB_TASK:
        return _stdlib_modules(tokenizer, length=length, val_fraction=val_fraction,
                               max_per_label=max_per_label)
    path = Path(task).expanduser()
    if path.suffix not in FILE_SUFFIXES:
        raise DataError(f"config.finetune.task={task!r} is neither {STDLIB_TASK!r} nor a .jsonl/.tsv "
                        "file of labelled texts")
    if not path.is_file():
        raise DataError(f"task file {path} does not exist; pass a .jsonl or .tsv file of labelled texts")
    rows = _read_labelled(path)
    held_out = [_text_in_val(text, val_fraction) for text, _, _ in rows]
    if all(held_out) or not any(held_out):  # both splits non-empty, as corpora are
        held_out[0 if all(held_out) else -1] = not held_out[0 if all(held_out) else -1]
    train = [r for r, v in zip(rows, held_out) if not v]
    val = [r for r, v in zip(rows, held_out) if v]
    labels = tuple(sorted({label for _, label, _ in train}))
    if len(labels) < 2:
        raise DataError(f"{path}: the training examples have one label ({labels[0]!r}); "
                        "classification needs at least two")
    index = {label: i for i, label in enumerate(labels)}
    for _, label, line in val:
        if label not in index:
            raise DataError(f"{path}:{line}: label {label!r} is only in held-out examples, never in "
                            "training ones; add training examples of it or remove it")

    def examples(split):
        ids = [np.asarray(tokenizer.encode(text), np.int32)[:length] for text, _, _ in split]
        _check_coverage(ids, tokenizer, str(path))
        return padded(ids, [index[label] for _, label, _ in split], length)

    return Task(str(path), labels, examples(train), examples(val))


def check_labels(task: Task, labels: tuple[str, ...]) -> None:
    """A fine-tuned run's labels (from its checkpoint) must be the task's."""
    if tuple(labels) != task.labels:
        unknown = sorted(set(task.labels) - set(labels))
        raise DataError(f"task {task.name} has labels the fine-tuned run was not trained on "
                        f"({', '.join(map(repr, unknown[:5])) or 'another order'}); evaluate it on the "
                        "task it was fine-tuned on")


def _check_coverage(ids: list[np.ndarray], tokenizer, task: str) -> None:
    """A tokenizer trained on other text (a char vocabulary from Shakespeare for Python source)
    maps much of the task to <unk>: refuse it rather than fine-tune on unknowns."""
    unk = getattr(tokenizer, "unk_id", None)
    total = sum(len(x) for x in ids)
    if unk is None or not total:
        return
    share = sum(int((x == unk).sum()) for x in ids) / total
    if share > MAX_UNKNOWN:
        raise DataError(f"the pretrained run's {tokenizer.kind} tokenizer maps {share:.0%} of {task}'s "
                        "tokens to <unk>: it was trained on other text; fine-tune a run whose tokenizer "
                        "covers the task (e.g. a byte-level one)")


def _text_in_val(text: str, val_fraction: float) -> bool:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) / 2**32 < val_fraction


def _read_labelled(path: Path) -> list[tuple[str, str, int]]:
    """[(text, label, line number)] of a .jsonl or .tsv file."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: not a JSON object ({e.msg}); each line must be "
                                    '{"text": ..., "label": ...}') from None
                if not isinstance(row, dict) or "text" not in row or "label" not in row:
                    raise DataError(f'{path}:{n}: each line must be {{"text": ..., "label": ...}}')
                text, label = row["text"], row["label"]
                if not isinstance(text, str) or isinstance(label, (dict, list)) or label is None:
                    raise DataError(f"{path}:{n}: text must be a string and label a string or number")
            else:
                if "\t" not in line:
                    raise DataError(f"{path}:{n}: no tab; each line must be text<TAB>label")
                text, label = line.rsplit("\t", 1)
            if not text.strip():
                raise DataError(f"{path}:{n}: empty text; remove the line or give it text")
            label = str(label).strip()
            if not label:
                raise DataError(f"{path}:{n}: empty label")
            rows.append((text, label, n))
    if not rows:
        raise DataError(f"{path} holds no labelled texts")
    return rows


def padded(ids: list[np.ndarray], labels: list[int], length: int) -> Examples:
    """Token id arrays (each at most `length`) and their labels as Examples, 0 past each end."""
    tokens = np.zeros((len(ids), length), np.int32)
    lengths = np.zeros(len(ids), np.int32)
    for i, x in enumerate(ids):
        if len(x) == 0:
            raise DataError("a text encodes to no tokens; remove it")
        tokens[i, :len(x)] = x
        lengths[i] = len(x)
    return Examples(tokens, lengths, np.asarray(labels, np.int32))


def _stdlib_modules(tokenizer, *, length: int, val_fraction: float, max_per_label: int) -> Task:
    snippets = {(g, split): [] for g in STDLIB_GROUPS for split in ("train", "val")}
    for rel, path in _stdlib_files():
        group = rel.split("/", 1)[0]
        if group not in STDLIB_GROUPS or "/" not in rel:
            continue
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError:  # as the corpus does: a few test files are in other encodings
            continue
        ids = np.asarray(tokenizer.encode(text), np.int32)
        split = "val" if is_val(rel, val_fraction) else "train"
        snippets[group, split] += [ids[i:i + length] for i in range(0, len(ids) - length + 1, length)]
    caps = {"train": max_per_label, "val": max(1, max_per_label // 5)}
    out = {}
    for split, cap in caps.items():
        ids, labels = [], []
        for i, group in enumerate(STDLIB_GROUPS):
            have = snippets[group, split]
            if not have:
                raise DataError(f"{STDLIB_TASK}: this Python's stdlib has no {split} snippets of "
                                f"{group!r} at {length} tokens; lower the pretrained context or "
                                "use a task file")
            keep = np.unique(np.linspace(0, len(have) - 1, min(cap, len(have))).astype(int))
            ids += [have[k] for k in keep]
            labels += [i] * len(keep)
        _check_coverage(ids, tokenizer, STDLIB_TASK)
        out[split] = padded(ids, labels, length)
    return Task(STDLIB_TASK, STDLIB_GROUPS, out["train"], out["val"])
