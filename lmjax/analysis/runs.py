"""An experiment's runs as tables: one results row per run and every run's eval curve.

The run folders are `<experiment>/runs/<arg>/<run name>/`, read through `lmjax.workdir.Workdir`
(which owns the workdir's files and the run's status). The definitions of the columns are in
`lmjax.analysis.report`'s docstring.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

import pandas as pd

from lmjax.config import COUNTED_STEP, RECURRENT
from lmjax.errors import LmjaxError
from lmjax.workdir import Workdir, number

RESULT_COLUMNS = [
    "arg", "run", "variant", "status", "attention", "num_kv_heads", "window", "num_layers",
    "width", "params", "params_non_embedding", "steps", "batch_size", "seq_len", "final_step",
    "tokens", "flops_per_token", "compute", "compute_6nd", "val_loss", "val_loss_se", "seeds", "val_loss_sd",
    "val_loss_seeds", "val_bits_per_byte", "val_tokens", "val_bytes", "val_coverage",
    "val_perplexity", "wall_time", "tokens_per_s", "mfu", "error", "workdir",
]
# Added to the results only when at least one run's run.json records its provenance.
PROVENANCE_COLUMNS = ["code_commit", "host"]
CURVE_COLUMNS = ["arg", "run", "variant", "status", "step", "tokens", "compute", "val_loss",
                 "val_bits_per_byte", "val_perplexity"]
INT_COLUMNS = ("num_kv_heads", "window", "num_layers", "width", "steps", "batch_size", "seq_len", "seeds",
               "val_tokens", "val_bytes")


class NoRunsError(LmjaxError):
    """The experiment folder has no run workdirs (yet)."""


@dataclasses.dataclass
class Collected:
    """What `scan` read: the results (one row per run), the eval curves, each run's provenance
    ((arg, run) -> `provenance(...)`, None for a run.json without it; runs without a run.json
    are absent), and notes for the reader (sweeps that could not be expanded)."""

    results: pd.DataFrame
    curves: pd.DataFrame
    provenance: dict
    notes: list[str]


# --------------------------------------------------------------------------------------------
# Finding runs


def find_runs(experiment_dir, arg: str | None = None) -> list[tuple[str, str, Path]]:
    """(arg, run name, workdir) for every run folder under <experiment>/runs/<arg>/, sorted.

    Raises LmjaxError when the folder does not exist, NoRunsError when it holds no runs.
    """
    exp = Path(experiment_dir)
    if not exp.is_dir():
        raise LmjaxError(f"experiment folder {exp} does not exist; run `lmjax sweep --config "
                         f"{exp}/config.py:{arg or 'ARG'}` first")
    runs_dir = exp / "runs"
    hint = f"run `lmjax sweep --config {exp}/config.py:{arg or 'ARG'}` first"
    args = sorted(p.name for p in runs_dir.iterdir() if _is_run_dir(p)) if runs_dir.is_dir() else []
    if arg is not None:
        if arg not in args:
            found = f" (it has runs for: {', '.join(args)})" if args else ""
            raise NoRunsError(f"no runs for arg {arg!r} in {exp}: {runs_dir / arg} does not exist{found}; {hint}")
        args = [arg]
    out = []
    for a in args:
        for d in sorted((runs_dir / a).iterdir()):
            if _is_run_dir(d):
                out.append((a, d.name, d))
    if not out:
        raise NoRunsError(f"no runs in {exp} (no run folders under {runs_dir}/{arg or '<arg>'}/); {hint}")
    return out


def _is_run_dir(p: Path) -> bool:
    # `_submitit/` (the SLURM launcher's folder) and hidden folders are not runs.
    return p.is_dir() and not p.name.startswith((".", "_"))


def expected_hashes(experiment_dir, args, notes: list[str] | None = None) -> dict[str, dict[str, str]]:
    """arg -> {run name: config hash} of the sweep that <experiment>/config.py now declares,
    for each arg whose sweep expands (`lmjax.sweeps.spec.expand`). An arg whose expansion fails
    (an LmjaxError) is left out, with a line in `notes`; its runs cannot be found stale."""
    config = Path(experiment_dir) / "config.py"
    if not config.is_file():
        return {}
    from lmjax.sweeps.spec import expand, runs_folder

    out = {}
    for a in args:
        # A sweep expanded without an arg writes its runs to runs/default/.
        candidates = [a, None] if a == "default" else [a]
        error = None
        for candidate in candidates:
            try:
                runs = expand(config, candidate)
            except LmjaxError as e:
                error = error or e
                continue
            out[a] = {r.name: r.config_hash for r in runs if runs_folder(config, candidate).name == a}
            break
        else:
            if notes is not None:
                notes.append(f"cannot expand the sweep {config}:{a} ({str(error).splitlines()[0]}); "
                             "its runs are not checked for stale results")
    return out


# --------------------------------------------------------------------------------------------
# Reading one run


def _get(d: dict | None, dotted: str, default=None):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def variant_label(config: dict | None) -> str:
    """A run's variant from its config.json: `mha`, `mqa`, `linear`, `gqa-kv2` (grouped-query
    with 2 kv heads), `window32` (multi-head with a 32-token sliding window), `gqa-kv2-window32`
    (any other attention with a window); for the other families their name with what sets it
    apart (`lstm-2l`, `gru-1l`, `rnn-2l`: layers, `mlp-ctx8`: context, `ngram-o5`: order;
    `encoder`); `unknown` without a model config."""
    model = _get(config, "model")
    family = model.get("family", "decoder") if isinstance(model, dict) else "decoder"
    if family == "mlp":
        return f"mlp-ctx{model.get('context')}"
    if family == "ngram":
        return f"ngram-o{model.get('order')}"
    if family == "encoder":
        return "encoder"
    if family in RECURRENT:  # depth is the variant (Kaplan et al. compare 1, 2, 4 LSTM layers)
        return f"{family}-{model.get('num_layers')}l"
    if family != "decoder":
        return str(family)
    if not isinstance(model, dict) or "attention" not in model:
        return "unknown"
    label = str(model.get("attention") or "mha")
    if label == "gqa":
        kv = model.get("num_kv_heads") or model.get("num_heads")
        label = f"gqa-kv{kv}" if kv else "gqa"
    window = model.get("window") or 0
    if isinstance(window, (int, float)) and window > 0:
        label = f"window{window}" if label == "mha" else f"{label}-window{window}"
    return label


def _config_from_overrides(overrides) -> dict | None:
    """The nested config that a sweep's `overrides` (dotted key -> value, recorded in
    result.json / failed.json) describe: a stand-in for a run that never wrote config.json."""
    if not isinstance(overrides, dict) or not overrides:
        return None
    out: dict = {}
    for key, value in overrides.items():
        *parents, leaf = str(key).split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _error_line(failed) -> str:
    if failed is None:
        return ""
    if isinstance(failed, dict):
        for k in ("error", "message", "reason", "stderr"):
            if failed.get(k):
                text = str(failed[k]).strip().splitlines()
                return (text[-1] if k == "stderr" else text[0])[:300] if text else ""
    return json.dumps(failed, sort_keys=True)[:300]


def _wall_time(result) -> float:
    """`lmjax train`'s wall_time; else the sweep's `elapsed` (which includes process start)."""
    if not isinstance(result, dict):
        return math.nan
    t = number(result.get("wall_time"))
    return t if math.isfinite(t) else number(result.get("elapsed"))


def provenance(info) -> dict | None:
    """{"code_commit", "host", "jax"} of a run.json that records `code`, `versions` or `host`
    (`lmjax.process.provenance`); None for an older run.json without them.

    code_commit: the commit, `+dirty` when the tree had uncommitted changes ("" when unknown);
    host: the CPU model, then ` / <device kind>` when JAX recorded one."""
    if not isinstance(info, dict) or not any(isinstance(info.get(k), dict) for k in ("code", "versions", "host")):
        return None
    commit = _get(info, "code.commit") or ""
    if commit and _get(info, "code.dirty"):
        commit += "+dirty"
    cpu = str(_get(info, "host.cpu.model") or "")
    kind = _get(info, "host.device_kind")
    host = f"{cpu} / {kind}" if cpu and kind else str(cpu or kind or "")
    return {"code_commit": commit, "host": host, "jax": str(_get(info, "versions.jax") or "")}


def _curve(base: dict, evals: list[dict], tokens_per_step: float, flops_tok: float) -> list[dict]:
    out = []
    for r in evals:
        step = int(r["step"])
        tokens = step * tokens_per_step
        out.append({**base, "step": step, "tokens": tokens, "compute": flops_tok * tokens,
                    "val_loss": number(r.get("val_loss")), "val_bits_per_byte": number(r.get("val_bits_per_byte")),
                    "val_perplexity": number(r.get("val_perplexity"))})
    return out


def _seed_losses(eval_row: dict) -> list[float]:
    """The final val_loss of each replica (seed) of a run of config.train.replicas > 1 (its
    `val_loss` is their mean); [] for a run of one seed."""
    values = [number(v) for v in eval_row.get("val_loss_replicas") or []]
    return values if values and all(math.isfinite(v) for v in values) else []


def _median(rows: list[dict], key: str) -> float:
    vals = [v for v in (number(r.get(key)) for r in rows) if math.isfinite(v)]
    return statistics.median(vals) if vals else math.nan


def load_run(exp: Path, arg: str, name: str, path: Path, config_hash: str = "") -> tuple[dict, list[dict], dict | None]:
    """(results row, eval curve rows, run.json) of one run. `config_hash`: the hash the sweep now
    declares for it ("" when unknown): a result.json recorded for another one is `stale`."""
    wd = Workdir(path)
    info, result, failed, metrics = wd.run_info(), wd.result(), wd.failed(), wd.metrics()
    info = info if isinstance(info, dict) else None
    config = wd.config() or _config_from_overrides((result or {}).get("overrides")) \
        or _config_from_overrides((failed or {}).get("overrides"))
    counted = _get(config, "model.family") == "ngram"  # counted in one "step", not trained
    steps = COUNTED_STEP if counted else _get(config, "train.steps")
    batch, seq = _get(config, "train.batch_size"), _get(config, "train.seq_len")
    tokens_per_step = batch * seq if batch and seq else math.nan
    flops_tok = number((info or {}).get("flops_per_token"))
    variant = variant_label(config)
    status = wd.status(config_hash=config_hash, steps=steps)

    evals = sorted((r for r in metrics if "val_loss" in r), key=lambda r: int(r["step"]))
    curve = _curve({"arg": arg, "run": name, "variant": variant, "status": status}, evals,
                   tokens_per_step, flops_tok)
    final_step = number(result.get("step")) if result is not None else math.nan
    if not math.isfinite(final_step) and metrics:
        final_step = float(max(int(r["step"]) for r in metrics))
    last_eval = evals[-1] if evals else (result or {})
    train_rows = [r for r in metrics if "tokens_per_s" in r]
    tokens = number((info or {}).get("train_tokens")) if counted else final_step * tokens_per_step
    n_ne = number((info or {}).get("params_non_embedding"))
    seeds = _seed_losses(last_eval)
    row = {
        "arg": arg, "run": name, "variant": variant, "status": status,
        "attention": _get(config, "model.attention"),
        "num_kv_heads": (_get(config, "model.num_kv_heads") or _get(config, "model.num_heads")),
        "window": _get(config, "model.window"),
        # a counted n-gram has an order, not layers and a width
        "num_layers": None if counted else _get(config, "model.num_layers"),
        "width": None if counted else _get(config, "model.width"),
        "params": number((info or {}).get("params")), "params_non_embedding": n_ne,
        "steps": steps, "batch_size": batch, "seq_len": seq, "final_step": final_step,
        "tokens": tokens, "flops_per_token": flops_tok, "compute": flops_tok * tokens,
        "compute_6nd": math.nan if counted else 6.0 * n_ne * tokens,
        "val_loss": number(last_eval.get("val_loss")),
        # the final evaluation's own noise (standard error over its windows; the seeds' mean), and
        # how much of the split it scored (1.0: every target)
        "val_loss_se": number(last_eval.get("val_loss_se")),
        "val_tokens": number(last_eval.get("val_tokens")),
        "val_bytes": number(last_eval.get("val_bytes")),
        "val_coverage": number(last_eval.get("val_tokens")) / (number((info or {}).get("val_tokens")) - 1),
        "seeds": len(seeds) or (1 if config else None),
        "val_loss_sd": statistics.stdev(seeds) if len(seeds) > 1 else math.nan,
        "val_loss_seeds": seeds or None,
        "val_bits_per_byte": number(last_eval.get("val_bits_per_byte")),
        "val_perplexity": number(last_eval.get("val_perplexity")),
        "wall_time": _wall_time(result),
        "tokens_per_s": _median(train_rows, "tokens_per_s"), "mfu": _median(train_rows, "mfu"),
        "error": _error_line(failed) if status == "failed" else "",
        "workdir": path.relative_to(exp).as_posix(),
    }
    return row, curve, info


# --------------------------------------------------------------------------------------------
# The whole experiment


def scan(experiment_dir, arg: str | None = None) -> Collected:
    """Every run of the experiment (or of one arg): results, curves, provenance and notes."""
    exp = Path(experiment_dir)
    found = find_runs(exp, arg)
    notes: list[str] = []
    hashes = expected_hashes(exp, sorted({a for a, _, _ in found}), notes)
    rows, curve_rows, prov = [], [], {}
    for a, name, path in found:
        row, curve, info = load_run(exp, a, name, path, hashes.get(a, {}).get(name, ""))
        if info is not None:
            prov[(a, name)] = provenance(info)
        rows.append(row)
        curve_rows += curve
    columns = list(RESULT_COLUMNS)
    if any(p is not None for p in prov.values()):
        columns += PROVENANCE_COLUMNS
        for row in rows:
            row.update({k: (prov.get((row["arg"], row["run"])) or {}).get(k, "") for k in PROVENANCE_COLUMNS})
    df = pd.DataFrame(rows, columns=columns)
    for col in INT_COLUMNS:
        df[col] = df[col].astype("Int64")
    df = df.sort_values(["variant", "params", "tokens", "arg", "run"], na_position="last",
                        kind="mergesort").reset_index(drop=True)
    cv = pd.DataFrame(curve_rows, columns=CURVE_COLUMNS)
    cv = cv.sort_values(["variant", "arg", "run", "step"], kind="mergesort").reset_index(drop=True)
    return Collected(df, cv, prov, notes)


POSITION_COLUMNS = ["arg", "run", "variant", "status", "params_non_embedding", "step", "position", "loss"]


def position_losses(df: pd.DataFrame, experiment_dir) -> pd.DataFrame:
    """The last evaluation's loss at each position of the window, for every run that recorded
    it (loss_by_position.jsonl): the curve Kaplan et al. compare LSTMs and Transformers by."""
    rows = []
    for r in df.itertuples(index=False):
        evals = Workdir(Path(experiment_dir) / r.workdir).position_losses()
        if evals:
            last = evals[-1]
            rows += [[r.arg, r.run, r.variant, r.status, r.params_non_embedding, int(last["step"]), i, loss]
                     for i, loss in enumerate(last["loss_by_position"]) if loss is not None]
    return pd.DataFrame(rows, columns=POSITION_COLUMNS)


def collect(experiment_dir, *, arg: str | None = None) -> pd.DataFrame:
    """One row per run (columns `RESULT_COLUMNS`, then `PROVENANCE_COLUMNS` when any run records
    them), sorted by variant, then params, then tokens. Missing files give NaN/None cells, not
    errors; NoRunsError when there are no runs."""
    return scan(experiment_dir, arg).results


def curves(experiment_dir, *, arg: str | None = None) -> pd.DataFrame:
    """Every run's eval curve, long format (columns `CURVE_COLUMNS`): one row per eval of
    each run, with step, tokens = step * batch_size * seq_len, compute = flops_per_token *
    tokens, and val_loss / val_bits_per_byte / val_perplexity."""
    return scan(experiment_dir, arg).curves
