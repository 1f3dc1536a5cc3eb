"""What the benchmarks write: a JSON record per run under benchmarks/results/, and a row in a table
of benchmarks/RESULTS.md. Every table's text (its notes, header and row format) is here; the
benchmarks only measure.

A record is the benchmark's fields plus the date (UTC) and `lmjax.process.provenance`: the code
(git commit, uncommitted changes), the versions of Python and the JAX stack, the host (CPU model,
vector extensions, cores; the accelerator where there is one, with the load average at start
and end) and the process settings (argv, XLA flags, malloc tunables).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Callable

from absl import flags

from lmjax.process.provenance import provenance

REPO = Path(__file__).resolve().parents[1]
RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"
RESULTS_DIR = REPO / "benchmarks" / "results"


def define_flags(fv: flags.FlagValues, *, label: bool = True, rows: bool = True) -> None:
    """The flags of a benchmark that writes a record and (rows=True) a row (see save_record)."""
    if label:
        flags.DEFINE_string("label", "", "What this row changes (shown in the row).", flag_values=fv)
    flags.DEFINE_string("out", str(RESULTS_DIR), "Folder for the JSON record.", flag_values=fv)
    if not rows:
        return
    flags.DEFINE_boolean("no_append", False, "Do not append a row to benchmarks/RESULTS.md.",
                         flag_values=fv)
    flags.DEFINE_string("results_md", str(RESULTS_MD), "The markdown file rows are appended to.",
                        flag_values=fv)


def load_avg() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _date(now: dt.datetime) -> str:
    return now.isoformat(timespec="seconds").replace("+00:00", "Z")


# ---- the harness's table (the first `| date |` table of RESULTS.md) ----

# Notes on the columns added after the first rows were written; `append_row` adds them (and the
# columns) to an older RESULTS.md whose table lacks them.
NEW_COLUMN_NOTES = """\
- **data x train**: tokens/s of the input pipeline (`lmjax.data.train_batch` on the config's real
  corpus, then the synchronised host-to-device transfer) over the training tokens/s; `-`: not
  measured (`--nodata_iterator`, or a row older than the column).
- **ckpt overhead**: extra wall time of N train steps with one asynchronous checkpoint (as
  `lmjax train` saves) over the same N steps without, summed over interleaved rounds: (with -
  without) / without, N = `--checkpoint_every` (shown); `-`: not measured (the default).
"""

RESULTS_HEADER = """\
# Benchmark results

Rows are appended by `python -m benchmarks.harness` (see `benchmarks/README.md`); the full record
of each run (versions, resolved config, percentiles) is the JSON file under `benchmarks/results/`.
Training data is synthetic (random token ids placed on the device once), so the training figures
are those of the model and optimiser; the input pipeline is measured on its own (**data x train**).

Columns:
- **date**: UTC time of the run.
- **device**: device count x `device_kind` (`cpu` is the whole host, one JAX device; its model
  in brackets).
- **config**: config file (and `:ARG`) plus command-line overrides.
- **params**: parameter count, embeddings included (tied embeddings counted once).
- **tokens/step**: `batch_size * seq_len` (global).
- **step ms**: median wall time of one synchronised train step (forward, backward, AdamW update)
  over the timed steps, after warm-up.
- **tokens/s**: tokens/step / median step time.
- **MFU**: model FLOP/s (`lmjax.models.flops_per_token` x tokens/s: 6N + 6VD + attention, no
  remat recompute) over the device peak (`lmjax.process.hardware.peak_flops`: datasheet dense
  bf16 on accelerators; on CPU, the measured float32 2048^3 matmul rate of the machine).
- **first step s**: make_mesh + make_setup + parameter init + first train step, compile included.
- **peak mem**: peak device memory (`memory_stats()['peak_bytes_in_use']`), or `-` where the
  backend reports none (CPU).
- **sample tok/s**: new tokens per second from `lmjax.models.generate` (KV cache, prompt of 8
  tokens, `n` new tokens, prefill included), at batch 1 / batch 8.
""" + NEW_COLUMN_NOTES + """
| date | device | config | params | tokens/step | step ms | tokens/s | MFU | first step s | peak mem | sample tok/s (B=1 / B=8) | data x train | ckpt overhead |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
"""


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _cpu(rec: dict) -> str:
    """' (CPU model)' from the record's host section; '' for a record without one."""
    model = ((rec.get("host") or {}).get("cpu") or {}).get("model")
    return f" ({model})" if model else ""


def _row_date(rec: dict) -> str:
    return rec["date"][:16].replace("T", " ")


def results_row(rec: dict) -> str:
    """The harness table's row of a harness record."""
    f = rec["figures"]
    config = f"`{rec['config_name']}`" + (" " + " ".join(f"`{o}`" for o in rec["overrides"])
                                          if rec["overrides"] else "")
    device = f"{rec['device']['count']} x {rec['device']['kind']}"
    if rec["device"].get("platform") == "cpu":
        device += _cpu(rec)
    mfu = "-" if f["mfu"] is None else f"{f['mfu']:.1%}"
    sampling = [f["sampling"][b] for b in sorted(f["sampling"], key=int)]
    samp = " / ".join(f"{s['tokens_per_s']:,.0f}" for s in sampling) or "-"
    if sampling:
        samp += f" (n={sampling[0]['new_tokens']})"
    ratio = f.get("data_to_train_ratio")  # .get: records written before these figures existed
    data = "-" if ratio is None else f"{ratio:,.0f}x"
    ckpt = ("-" if f.get("checkpoint_overhead") is None
            else f"{f['checkpoint_overhead']:+.1%} (every {f['checkpoint']['every']})")
    return (f"| {_row_date(rec)} | {device} | {config} | {f['params'] / 1e6:.2f}M "
            f"| {f['tokens_per_step']:,} | {f['step_time_s']['median'] * 1e3:,.1f} "
            f"| {f['tokens_per_s']:,.0f} | {mfu} | {f['time_to_first_step_s']:.1f} "
            f"| {fmt_bytes(f['peak_memory_bytes'])} | {samp} | {data} | {ckpt} |")


def _widen_table(lines: list[str], header: int) -> int:
    """Give a results table written before the last columns existed today's header row (and the
    notes on the new columns, above the table). Its rows keep their cells: markdown shows a row's
    missing trailing cells empty, whereas cells beyond the header's would be dropped. Returns
    the header's index after the notes were inserted."""
    new_header, new_rule = RESULTS_HEADER.rstrip("\n").splitlines()[-2:]
    old = lines[header].rstrip()
    if old == new_header or not new_header.startswith(old) or header + 1 >= len(lines):
        return header  # current, or hand-edited: leave it alone
    lines[header], lines[header + 1] = new_header, new_rule
    if NEW_COLUMN_NOTES.splitlines()[0] not in lines:
        at = header - 1 if header > 0 and not lines[header - 1].strip() else header
        lines[at:at] = NEW_COLUMN_NOTES.rstrip("\n").splitlines()
        header += len(NEW_COLUMN_NOTES.rstrip("\n").splitlines())
    return header


def append_row(path: Path, row: str) -> None:
    """Add the row at the end of the harness's table (the one whose header starts `| date |`),
    widening an older table to today's columns first; notes and other tables below it stay
    where they are."""
    text = path.read_text() if path.exists() else RESULTS_HEADER
    lines = text.splitlines()
    header = next((i for i, line in enumerate(lines) if line.startswith("| date |")), None)
    if header is None:  # no results table yet: start one at the end
        lines += ["", *RESULTS_HEADER.rstrip("\n").splitlines()[-2:]]
        header = len(lines) - 2
    header = _widen_table(lines, header)
    at = header
    while at + 1 < len(lines) and lines[at + 1].startswith("|"):
        at += 1
    lines.insert(at + 1, row)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


# ---- the tables in their own sections ----

def append(path: Path, row: str, title: str, header: str) -> None:
    """Add `row` at the end of the table under the section `title`, creating the section (title,
    then `header`: notes and the table's header rows) at the end of the file if it is missing."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if title not in text:
        text = text.rstrip("\n") + f"\n\n{title}\n\n{header}"
    lines = text.splitlines()
    at = lines.index(title)
    while not lines[at].startswith("|---"):
        at += 1
    while at + 1 < len(lines) and lines[at + 1].startswith("|"):
        at += 1
    lines.insert(at + 1, row)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


@dataclasses.dataclass(frozen=True)
class Table:
    """A RESULTS.md table: its section title (None: the harness's table), the text from the title
    to the rows (notes, header rows), and the row of a record."""
    title: str | None
    header: str
    row: Callable[[dict], str]

    def add(self, path: Path, rec: dict) -> None:
        if self.title is None:
            append_row(path, self.row(rec))
        else:
            append(path, self.row(rec), self.title, self.header)


def _host(rec: dict) -> str:
    """'2 x cpu (model)'; records written before provenance had host.cpu_count and no model."""
    host = rec.get("host") or {}
    return f"{(host.get('cpu') or {}).get('cores', host.get('cpu_count'))} x cpu{_cpu(rec)}"


def _config(rec: dict) -> str:
    return f"`{Path(rec['config']).stem}`" + "".join(f" `{o}`" for o in rec["overrides"])


def _speedrun_losses(rec: dict) -> str:
    """'1.853 / 1.853', on the run's own validation part: ' (tune); test 1.861 / 1.861' when the
    run scored a half, or `--eval_parts` others (records older than val_part scored the whole split)."""
    out = " / ".join(f"{r['val_loss']:.3f}" for r in rec["runs"])
    if rec.get("val_part", "all") != "all":
        out += f" ({rec['val_part']})"
    for part in rec["runs"][0].get("val_loss_by_part", {}):
        out += f"; {part} " + " / ".join(f"{r['val_loss_by_part'][part]:.3f}" for r in rec["runs"])
    return out


def _speedrun_row(rec: dict) -> str:
    walls = " / ".join(f"{r['wall_s']:.1f}" for r in rec["runs"])
    losses = _speedrun_losses(rec)
    return (f"| {_row_date(rec)} | {_host(rec)} | {rec['label'] or '-'} | {_config(rec)} | {walls} "
            f"| {rec['median_wall_s']:.1f} | {losses} | {'yes' if rec['target_met'] else 'no'} |")


SPEEDRUN = Table("## CPU speedrun: `lmjax train` to tinyshakespeare char val loss <= 1.88", """\
Wall clock from launching `lmjax train` to its exit (imports, data, compile, training, final
full-split evaluation, last checkpoint), median of the runs listed; written by
`python -m benchmarks.speedrun` (see benchmarks/README.md). Goal: <= 35 s at val loss <= 1.88.

| date | host | label | config | runs (s) | median s | val loss | val loss <= target |
|---|---|---|---|---|---|---|---|
""", _speedrun_row)


def _second_start_row(rec: dict) -> str:
    walls = " / ".join(f"{s['launch_to_first_step_s']:.2f}" for s in rec["starts"])
    return (f"| {_row_date(rec)} | {_host(rec)} | {rec['label'] or '-'} | {_config(rec)} | {walls} "
            f"| {rec['median_launch_to_first_step_s']:.2f} | {rec['median_time_to_first_step_s']:.2f} |")


SECOND_START = Table("## Second start: launch to first step with the compilation cache warm", """\
Wall clock from launching `lmjax train` (the console script) to its first metrics row, in a
fresh workdir, after one start that filled the compilation cache; median of the starts listed.
`from train()` is the run's own `time_to_first_step`. Written by `python -m benchmarks.second_start`.
Goal (issue 5): <= 2 s.

| date | host | label | config | launch to first step (s) | median s | from train() median s |
|---|---|---|---|---|---|---|
""", _second_start_row)


def _attention_dots_row(rec: dict) -> str:
    def pair(side: str, table: str, suffix: str) -> str:
        if f"{side}_qk{suffix}" not in rec[table]:
            return "-"
        return " / ".join(f"{rec[table][f'{side}_{dot}{suffix}']:.1f}" for dot in ("qk", "pv"))

    return (f"| {_row_date(rec)} | {_host(rec)} | {rec['shape']} {tuple(rec['B_H_T_D'])} "
            f"| {pair('jax', 'median_us', '_us')} | {pair('torch', 'median_us', '_us')} "
            f"| {pair('jax', 'gflops', '')} | {pair('torch', 'gflops', '')} |")


ATTENTION_DOTS = Table("## Attention core's batched matmuls alone, JAX against PyTorch", """\
Written by `python -m benchmarks.attention_dots --torch_python ...` (see benchmarks/README.md):
median microseconds per call of the attention core's forward batched matmuls, each framework in
a fresh process per round, rounds alternated; `q @ k^T` and `p @ v` cost 2*B*H*T*T*D FLOPs each.

| date | host | shape (B, H, T, D) | JAX qk / pv us | PyTorch qk / pv us | JAX qk / pv GFLOP/s | PyTorch qk / pv GFLOP/s |
|---|---|---|---|---|---|---|
""", _attention_dots_row)


def _vs_nanogpt_row(rec: dict) -> str:
    def cells(key):
        return " / ".join(f"{r[key]:,.1f}" for r in rec["rounds"]) if key in rec["rounds"][0] else "-"
    vs_hp = rec["ratio_vs_torch_hugepages"]
    return (f"| {_row_date(rec)} | {_host(rec)} | {rec['shape']} | {cells('lmjax_ms')} | {cells('torch_ms')} "
            f"| {cells('torch_hugepages_ms')} | **{rec['ratio']:.2f}x** "
            f"| {f'{vs_hp:.2f}x' if vs_hp else '-'} |")


VS_NANOGPT = Table("## CPU throughput against nanoGPT, same hour", """\
Rounds of `python -m benchmarks.vs_nanogpt` (see benchmarks/README.md): each round one harness run
of lmjax (synthetic batches, as `lmjax train` runs) and one of nanoGPT's PyTorch step
(`benchmarks/nanogpt_reference.py`, PyTorch CPU eager, float32, 2 threads), back to back. ms are
medians of the timed steps per round; **ratio** = median nanoGPT ms / median lmjax ms (> 1: lmjax
faster). Goal: >= 1.3 on the baby shape, >= 1.15 on the default shape. The "+ huge pages" column runs
PyTorch under lmjax's own GLIBC_TUNABLES: huge pages only until 08:15, huge pages and freed memory
kept from 10:55 on.

| date | host | shape | lmjax ms per round | nanoGPT ms per round | nanoGPT + huge pages ms | ratio | ratio vs nanoGPT + huge pages |
|---|---|---|---|---|---|---|---|
""", _vs_nanogpt_row)

def _nanogpt_trainpy_row(rec: dict) -> str:
    def cells(key):
        return " / ".join(f"{r[key]:,.1f}" for r in rec["rounds"])
    return (f"| {_row_date(rec)} | {_host(rec)} | {rec['shape']} | {cells('train_py_ms')} "
            f"| {cells('train_py_logged_ms')} | {cells('rewrite_ms')} | **{rec['agreement']:.2f}** |")


NANOGPT_TRAINPY = Table("## nanoGPT's own train.py against the rewrite", """Rounds of `python -m benchmarks.nanogpt_trainpy --nanogpt CHECKOUT` (see benchmarks/README.md): in
each round nanoGPT's unmodified `train.py` (`--device=cpu --compile=False`, dropout 0, PyTorch
CPU, 2 threads) runs twice, for two iteration counts, and the difference of the wall times over
the difference of the counts is its ms per iteration (start-up, data and the evaluation at
iteration 0 cancel); "logged" is the median of the per-iteration times train.py prints; then the
rewrite the comparison rounds use (`benchmarks/nanogpt_reference.py`) runs once. **agreement** =
rewrite ms / train.py ms (1: the rewrite times what nanoGPT runs).

| date | host | shape | train.py ms per round (differenced) | train.py ms (logged) | rewrite ms | agreement |
|---|---|---|---|---|---|---|
""", _nanogpt_trainpy_row)

def _hf_import_row(rec: dict) -> str:
    return (f"| {_row_date(rec)} | {_host(rec)} | {rec['params'] / 1e6:.1f}M, {rec['safetensors_bytes'] / 1e6:,.0f} MB "
            f"| **{rec['import_s']:.1f}** | **{rec['eval_s']:.1f}** | {rec['eval_batches']} x {rec['batch_size']} x "
            f"{rec['shape']['n_positions']} on {rec['corpus']} | {rec['eval']['loss']:.3f} |")


HF_IMPORT = Table("## Hugging Face import, then eval", """`python -m benchmarks.hf_import`: a GPT-2-small-sized
`GPT2LMHeadModel` from a random config (`save_pretrained`, float32 safetensors) with a byte-level
tokenizer.json; `lmjax import` and then `lmjax eval` timed from launch to exit, each in a fresh
process (the eval includes tokenizing the corpus with the imported tokenizer and compiling). The
loss of a random model is about ln 50257 = 10.8.

| date | host | model | import s | eval s | eval tokens | loss |
|---|---|---|---|---|---|---|
""", _hf_import_row)

def _gb(n) -> str:
    return f"{n / 1e9:.2f}"


def _raw(raw: dict) -> str:
    """'2887.8', and '; read 131' in records that time reading alone."""
    return f"{raw['text_mb_per_s']:.1f}" + (f"; read {raw['read_mb_per_s']:.0f}" if "read_mb_per_s" in raw else "")


def _data_store_rows(rec: dict) -> str:
    """One row per (size, tokenizer, workers) of a `benchmarks.data_store` record."""
    rows = []
    for size, s in rec["sizes"].items():
        for kind, t in s["tokenizers"].items():
            train = {x["packing"]: x for x in t.get("train", [])}
            pipe = {x["packing"]: x for x in t.get("pipeline", [])}
            for p in t["prepare"]:
                speedup = f"{t['speedup_2_workers']:.2f}x" if p["workers"] == 2 and "speedup_2_workers" in t else "-"
                trained = " / ".join(
                    f"{train[k]['launch_to_first_step_s']:.1f} s, {_gb(train[k]['peak_rss_bytes'])} GB, "
                    f"{pipe[k]['tokens_per_s'] / train[k]['train_tokens_per_s']:,.0f}x"
                    for k in ("concat", "documents")) if train and p["workers"] == 2 else "-"
                rows.append(f"| {_row_date(rec)} | {_host(rec)} | {size} GB ({s['corpus']['files']} .jsonl.zst) "
                            f"| {kind} | {p['workers']} | {p['build_s']:.0f} | {p['text_mb_per_s']:.1f} "
                            f"| {_raw(t['raw'])} | {p['of_raw_per_worker']:.0%} | {speedup} "
                            f"| {_gb(p['peak_rss_bytes'])} | {trained} |")
    return "\n".join(rows)


DATA_STORE = Table("## Token stores: `lmjax prepare` and training at 1 GB and 10 GB", """\
Written by `python -m benchmarks.data_store` (see benchmarks/README.md): synthetic corpora of stdlib
documents as .jsonl.zst shards, generated in a temporary folder and deleted after. **build s**: the
store build (the manifest's `build_seconds`; the tokenizer's training apart); **MB/s**: text
megabytes tokenized per second; **raw MB/s**: the tokenizer's own `encode_batch` in one process on
the first 64 MB (the limit; one thread), and `read`: reading those documents alone (decompress,
parse), byte's real limit since its encode is a copy; **of raw**: MB/s per worker over raw; **2 vs 1**: build time of 1
worker over 2; **peak GB**: resident memory of `lmjax prepare` and its workers together; **train**
(byte, concat / documents packing): configs/default.py's launch to first step, peak resident
memory over its first 100 steps, and the input pipeline's tokens/s over training's.

| date | host | corpus | tokenizer | workers | build s | MB/s | raw MB/s | of raw | 2 vs 1 | peak GB | train: first step, peak GB, data x train |
|---|---|---|---|---|---|---|---|---|---|---|---|
""", _data_store_rows)

HARNESS = Table(None, RESULTS_HEADER, results_row)


# ---- records ----

def save_record(fields: dict, kind: str, fv: flags.FlagValues, table: Table | None, *, load: float | None,
                devices=None, now: dt.datetime | None = None) -> dict:
    """The record: the date (`now`, default now; UTC), `fields`, then provenance (host load
    average at start, `load`, and now). Written to <fv.out>/<date>-<kind>.json, its row added to
    `table` in fv.results_md (unless fv.no_append), printed as the last line of stdout and
    returned, with "json_path" added. table None: a record with no row (and no row flags)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    rec = {"date": _date(now), **fields, **provenance(devices)}
    rec["host"].update(load_avg_1m_start=load, load_avg_1m_end=load_avg())
    out = Path(fv.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{now.strftime('%Y%m%dT%H%M%SZ')}-{kind}.json"
    path.write_text(json.dumps(rec, indent=2) + "\n")
    rec["json_path"] = str(path)
    if table is not None and not fv.no_append:
        table.add(Path(fv.results_md), rec)
        print(f"appended a row to {fv.results_md}", file=sys.stderr)
    print(f"wrote {path}", file=sys.stderr)
    print(json.dumps(rec))
    return rec
