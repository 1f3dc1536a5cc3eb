"""Where documents come from: a corpus name becomes files, files become pieces, pieces documents.

(Being written: the readers. parse_mixture is final.)
"""

from __future__ import annotations

import dataclasses
import re

from lmjax.errors import ConfigError


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
