"""`lmjax sweep --dry-run`: every run's size, tokens, training FLOPs and estimated time, run nothing.

The time is FLOPs / (peak FLOP/s x MFU) + a fixed start-up per run (interpreter, JAX, data,
compilation: 8-15 s measured on the 2-core CPU). The CPU peak is lmjax's measured float32 matmul
rate (hardware.cpu_peak_flops, cached on first use). The attention_variants:cpu sizes (1-3
layers, width 32-96) reached 0.07-0.19 of that peak on the 2-core machine (measured in
run.json/metrics: tiny matrices leave XLA's CPU kernels far from their peak), hence 0.15.
"""

from __future__ import annotations

from tabulate import tabulate

from lmjax.config import TRANSFORMERS
from lmjax.formatting import duration, sci, si
from lmjax.sweeps.budget import estimate
from lmjax.sweeps.spec import SweepRun

ASSUMED_MFU_CPU = 0.15
ASSUMED_MFU_ACCELERATOR = 0.35
STARTUP_S = 15.0

COLUMNS = ["run", "status", "layers x width", "params", "non-emb", "steps", "tokens", "train FLOPs",
           "est. time"]
ALIGN = ["left"] * 3 + ["right"] * 6


def flop_rate(mfu: float | None = None) -> tuple[float, float, str]:
    """(assumed FLOP/s of the whole machine, MFU, description)."""
    import jax

    from lmjax.process import hardware

    devices = jax.devices()
    peak = hardware.peak_flops(devices)
    cpu = devices[0].platform == "cpu"
    mfu = mfu or (ASSUMED_MFU_CPU if cpu else ASSUMED_MFU_ACCELERATOR)
    what = ("measured float32 matmul rate of this CPU" if cpu
            else f"datasheet bf16 peak of {len(devices)} x {devices[0].device_kind}")
    return peak * mfu, mfu, f"{peak / 1e12:.3g} TFLOP/s ({what}) x assumed MFU {mfu:g}"


def _count(n) -> str:
    return si(n, 4)


def run_row(run: SweepRun, status: str, rate: float) -> tuple[list, dict, float]:
    """(the table row, the estimate, seconds at `rate` FLOP/s plus the start-up)."""
    e = estimate(run.config)
    m = run.config.model
    secs = STARTUP_S + e["flops"] / rate
    kv = f"/{m.num_kv_heads}kv" if m.num_kv_heads else ""
    if m.family == "ngram":  # counted, not trained: its order is its shape
        shape = f"order {m.order} ngram"
    else:
        shape = f"{m.num_layers}x{m.width} " + (f"h{m.num_heads}{kv}" if m.family in TRANSFORMERS else m.family)
    row = [run.name, status, shape, _count(e["params"]),
           _count(e["params_non_embedding"]), run.steps, _count(e["tokens"]), sci(e["flops"]),
           duration(secs)]
    return row, e, secs


def dry_run_report(runs: list[SweepRun], *, parallel: int = 1, mfu: float | None = None) -> str:
    """The runs with parameters, tokens, training FLOPs and estimated time, and the totals."""
    rate, mfu, what = flop_rate(mfu)
    p = max(1, parallel)
    rows, flops, tokens, secs, todo_secs, todo = [], 0.0, 0, 0.0, 0.0, 0
    estimated_vocab = False
    for r in runs:
        status = r.status()
        row, e, s = run_row(r, status, rate / p)
        rows.append(row)
        estimated_vocab |= not e["vocab_exact"]
        flops, tokens, secs = flops + e["flops"], tokens + e["tokens"], secs + s
        if status != "done":
            todo_secs, todo = todo_secs + s, todo + 1
    rows.append(["TOTAL", f"{len(runs)} runs", "", "", "", "", _count(tokens), sci(flops), duration(secs / p)])
    notes = [
        f"{len(runs)} runs, {sci(flops)} training FLOPs, {_count(tokens)} tokens; estimated "
        f"{duration(secs / p)} in all ({secs / p / 3600:.2f} h) with --parallel {p}; {todo} not done "
        f"yet: {duration(todo_secs / p)}",
        f"estimate: FLOPs (6N + unembedding + attention per token, x steps x batch x seq) at "
        f"{what}, split over {p} concurrent run(s), plus {STARTUP_S:.0f} s start-up per run",
    ]
    if estimated_vocab:
        notes.append("char tokenizer without config.data.vocab_size: vocabulary estimated as 100 symbols")
    table = tabulate(rows, headers=COLUMNS, colalign=ALIGN, disable_numparse=True)  # numbers as formatted
    return table + "\n" + "\n".join(notes)


__all__ = ["ASSUMED_MFU_ACCELERATOR", "ASSUMED_MFU_CPU", "STARTUP_S", "dry_run_report", "flop_rate"]
