"""Declaring a sweep and expanding it into named runs.

A sweep lives next to its base config: the config file defines `get_config(arg)` as usual and
`get_sweep(arg)`, which returns a list of override dicts (dotted config key -> value), usually
built with the combinators here:

    from lmjax.sweeps import chain, product, zip_

    def get_sweep(arg):
        return product(attention=["mha", "mqa"], width=[64, 128])   # 4 runs
        # product({"model.attention": [...]}, zip_(num_layers=[2, 4], width=[64, 128]))
        # chain(sweep_a, sweep_b): the runs of both

An axis is `key=[values]`. Keys are dotted config keys (`"model.width"`, passed in a dict) or, as
keyword arguments, a key's last part when that is unique in the schema (`width`, `attention`,
`steps`) or the dotted key with `__` for dots (`train__seed`). An axis may also be a dict of
labelled bundles, `size={"s64": {"model.num_layers": 2, "model.width": 64}, ...}`: each label is
one point that sets several keys, and the run name shows `size-s64`.

Seeds: set `config.train.replicas = K` in `get_config` rather than sweeping `train.seed`: each
run then trains seeds seed..seed+K-1 in one program (faster than K runs at small sizes), and
`lmjax report` shows each point's mean and spread and carries the seed noise into the fits.

Run names come from the points' labels, in axis order: `attention-gqa_size-s64`. Keys added with
`derive(sweep, fn)` (values computed from the other overrides, e.g. steps from a token budget)
are applied but do not appear in the name. `expand(config_path, arg)` returns one `SweepRun` per
point (name, overrides, workdir, resolved config and its hash), validating every run's resolved
config before anything starts, so a typo or a bad value fails at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import itertools
import re
from pathlib import Path
from typing import Any, Callable, Iterable

import ml_collections

from lmjax import config as config_lib
from lmjax.errors import ConfigError
from lmjax.workdir import Workdir, config_hash

SCALARS = (bool, int, float, str)


class SweepError(ConfigError):
    """A sweep that cannot be expanded: bad file, unknown key, bad value, duplicate run names."""


class Point(dict):
    """One run's overrides (a plain dict: dotted config key -> value) plus the labels that name it.

    `labels` is a tuple of (axis, label) pairs; a plain dict without labels is named by all its
    items."""

    def __init__(self, overrides: dict | None = None, labels: Iterable[tuple[str, str]] | None = None):
        super().__init__(overrides or {})
        self.labels: tuple[tuple[str, str], ...] = (
            tuple(labels) if labels is not None else tuple(_auto_labels(self))
        )

    def __repr__(self) -> str:
        return f"Point({dict(self)!r}, labels={self.labels!r})"

    def __reduce__(self):  # picklable with its labels (submitit pickles runs)
        return (Point, (dict(self), self.labels))


Sweep = list  # a list of Point (or plain dict)


@dataclasses.dataclass
class SweepRun:
    """One run of a sweep: its name, the overrides applied to the base config, its workdir.
    (Not `lmjax.Run`, which is a finished run loaded for a notebook.)"""

    name: str
    overrides: dict[str, Any]
    workdir: Path
    config: Any = None  # the resolved ConfigDict (set by `expand`)
    config_hash: str = ""  # of the resolved config (lmjax.workdir.config_hash): set by `expand`

    @property
    def steps(self) -> int:
        return int(self.config.train.steps) if self.config is not None else 0

    def status(self, *, check_lock: bool = True) -> str:
        """The run's status from its workdir (see lmjax.workdir); check_lock=False when this
        process holds the run's lock itself."""
        return Workdir(self.workdir).status(self.config_hash, check_lock=check_lock)


# --- keys ---------------------------------------------------------------------------------------

def check_key(key: str) -> str:
    try:
        return config_lib.check_key(key, where=" in the sweep")
    except ConfigError as e:
        raise SweepError(str(e)) from None


def resolve_key(name: str) -> str:
    """A keyword-argument axis name -> a dotted config key (`width` -> `model.width`)."""
    if "." in name or "__" in name:
        return check_key(name.replace("__", "."))
    valid = config_lib.flat_keys()
    matches = [k for k in valid if k.rsplit(".", 1)[-1] == name]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise SweepError(
            f"sweep axis '{name}' is ambiguous ({', '.join(matches)}); pass the dotted key in a "
            f"dict, e.g. product({{'{matches[0]}': [...]}}), or write {matches[0].replace('.', '__')}=[...]"
        )
    raise SweepError(
        f"unknown config key '{name}' in the sweep; did you mean "
        f"'{config_lib.nearest_key(name, valid)}'?"
    )


# --- combinators --------------------------------------------------------------------------------

def format_value(value: Any) -> str:
    """A value as a run name and a `--config.KEY=VALUE` flag write it: true, 0.003, gqa."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _auto_labels(overrides: dict) -> list[tuple[str, str]]:
    leaves = [k.rsplit(".", 1)[-1] for k in overrides]
    return [(k.rsplit(".", 1)[-1] if leaves.count(k.rsplit(".", 1)[-1]) == 1 else k, format_value(v))
            for k, v in overrides.items()]


def _as_point(p) -> Point:
    if isinstance(p, Point):
        return p
    if isinstance(p, dict):
        return Point(p)
    raise SweepError(f"a sweep is a list of override dicts; got an element {p!r}")


def axis(name: str, values, *, keyword: bool = False) -> list[Point]:
    """One axis as a sweep. `values`: a list of values for config key `name`, or a dict of
    label -> value (for key `name`) or label -> {key: value, ...} (a bundle; `name` is a label)."""
    if isinstance(values, dict):
        points = []
        for label, v in values.items():
            if isinstance(v, dict):
                overrides = {check_key(k): _check_value(k, x) for k, x in v.items()}
            else:
                key = resolve_key(name) if keyword else check_key(name)
                overrides = {key: _check_value(key, v)}
            points.append(Point(overrides, labels=[(name.replace("__", "."), str(label))]))
        return points
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise SweepError(f"sweep axis '{name}' needs a list of values, got {values!r}")
    key = resolve_key(name) if keyword else check_key(name)
    short = name.replace("__", ".") if keyword else key.rsplit(".", 1)[-1]
    return [Point({key: _check_value(key, v)}, labels=[(short, format_value(v))]) for v in values]


def _check_value(key: str, value):
    if not isinstance(value, SCALARS):
        raise SweepError(f"config.{key}: sweep values must be bool, int, float or str, got {value!r}")
    return value


def _factors(args, kwargs) -> list[list[Point]]:
    factors = []
    for a in args:
        if isinstance(a, dict) and not isinstance(a, Point):
            factors += [axis(k, v) for k, v in a.items()]
        elif isinstance(a, (list, tuple)):
            factors.append([_as_point(p) for p in a])
        else:
            raise SweepError(f"product/zip_ take sweeps (lists) or dicts of axes; got {a!r}")
    factors += [axis(k, v, keyword=True) for k, v in kwargs.items()]
    return factors


def _merge(points: Iterable[Point]) -> Point:
    out, labels = {}, []
    for p in points:
        for k, v in p.items():
            if k in out and out[k] != v:
                raise SweepError(f"config.{k} is set by two axes of one sweep ({out[k]!r} and {v!r})")
            out[k] = v
        labels += p.labels
    return Point(out, labels=labels)


def product(*sweeps, **axes) -> list[Point]:
    """Every combination of the axes/sweeps (the first varies slowest)."""
    factors = _factors(sweeps, axes)
    return [_merge(combo) for combo in itertools.product(*factors)]


def zip_(*sweeps, **axes) -> list[Point]:
    """The axes/sweeps side by side (all of the same length)."""
    factors = _factors(sweeps, axes)
    lengths = {len(f) for f in factors}
    if len(lengths) > 1:
        raise SweepError(f"zip_ needs axes of equal length, got lengths {sorted(len(f) for f in factors)}")
    return [_merge(combo) for combo in zip(*factors)]


def chain(*sweeps) -> list[Point]:
    """The runs of each sweep, one after the other."""
    out = []
    for s in sweeps:
        out += [_as_point(p) for p in (s if isinstance(s, (list, tuple)) else [s])]
    return out


def derive(sweep, fn: Callable[[dict], dict]) -> list[Point]:
    """Add overrides computed from each point (`fn(point) -> {key: value}`), left out of names."""
    out = []
    for p in map(_as_point, sweep):
        extra = fn(dict(p)) or {}
        merged = dict(p)
        for k, v in extra.items():
            merged[check_key(k)] = _check_value(k, v)
        out.append(Point(merged, labels=p.labels))
    return out


# --- names --------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def _safe(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-._") or "none"


def run_name(point) -> str:
    """`attention=gqa, size=s64` -> `attention-gqa_size-s64` (filesystem-safe, deterministic)."""
    point = _as_point(point)
    name = "_".join(f"{_safe(k.rsplit('.', 1)[-1] if '.' in k else k)}-{_safe(v)}"
                    for k, v in point.labels) or "base"
    if len(name) > 120:  # keep paths short: a readable prefix and a digest of the rest
        name = name[:100].rstrip("_-") + "~" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return name


# --- expansion ----------------------------------------------------------------------------------

def parse_config_arg(spec: str) -> tuple[Path, str | None]:
    """`experiments/x/config.py:cpu` -> (path, 'cpu'); no `:ARG` -> (path, None)."""
    path, sep, arg = spec.partition(".py:")
    if sep:
        return Path(path + ".py"), arg
    return Path(spec), None


def load_module(config_path: str | Path):
    path = Path(config_path)
    if not path.is_file():
        raise SweepError(f"config file {path} does not exist; pass --config experiments/NAME/config.py:ARG")
    name = f"lmjax_sweep_config_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise SweepError(f"cannot load {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    return module


def _call(fn, arg):
    return fn() if arg is None else fn(arg)


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(config.to_dict())
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            node = node[p]
        try:
            node[leaf] = value
        except (TypeError, ValueError) as e:
            raise SweepError(f"config.{key}={value!r}: {str(e).splitlines()[0]}") from e
    return c


def runs_folder(config_path: str | Path, arg: str | None) -> Path:
    """`<experiment>/runs/<arg>/`: the experiment folder is the config file's parent."""
    return Path(config_path).resolve().parent / "runs" / _safe(arg or "default")


def expand(config_path: str | Path, arg: str | None = None) -> list[SweepRun]:
    """The runs of the sweep in `config_path` (`get_sweep(arg)`), each resolved and validated."""
    module = load_module(config_path)
    for fn in ("get_config", "get_sweep"):
        if not callable(getattr(module, fn, None)):
            raise SweepError(f"{config_path} defines no {fn}(arg); a sweep config needs get_config "
                             "and get_sweep (see lmjax/sweeps/spec.py)")
    try:
        base = _call(module.get_config, arg)
        sweep = _call(module.get_sweep, arg)
    except SweepError:
        raise
    except ConfigError as e:
        raise SweepError(str(e)) from e
    except Exception as e:
        raise SweepError(f"{config_path}: get_config/get_sweep({arg!r}) raised "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if isinstance(sweep, dict) and not isinstance(sweep, Point):
        sweep = product(sweep)
    if not isinstance(sweep, (list, tuple)) or not sweep:
        raise SweepError(f"{config_path}: get_sweep({arg!r}) must return a non-empty list of override dicts")
    folder = runs_folder(config_path, arg)
    runs, seen = [], {}
    for point in map(_as_point, sweep):
        for key in point:
            check_key(key)
            _check_value(key, point[key])
        name = run_name(point)
        if name in seen:
            raise SweepError(
                f"two runs of the sweep are both named '{name}' ({seen[name]} and {dict(point)}); "
                "give the axes distinct values or labels"
            )
        seen[name] = dict(point)
        try:
            resolved = config_lib.resolve(apply_overrides(base, point))  # every check of the schema
        except ConfigError as e:
            raise SweepError(f"run '{name}': {e}") from e
        runs.append(SweepRun(name=name, overrides=dict(point), workdir=folder / name, config=resolved,
                             config_hash=config_hash(resolved.to_dict())))
    return runs


__all__ = [
    "Point", "SweepError", "SweepRun", "apply_overrides", "axis", "chain", "config_hash",
    "derive", "expand", "format_value", "load_module", "parse_config_arg",
    "product", "run_name", "runs_folder", "zip_",
]
