"""Token stores at scale: `lmjax prepare` on synthetic .jsonl.zst corpora, then training on them.

    python -m benchmarks.data_store [--sizes_gb 1,10] [--tokenizers byte,bpe,sentencepiece]
        [--vocab_size 8192] [--one_worker_gb SIZES] [--tmp DIR] [--label ...] [--no_append]

For each size a corpus of that many GB of text is generated from the Python standard library (its
files as documents, cycled, each copy headed by its own comment line so no two documents are the
same) as .jsonl.zst shards under --tmp, and deleted at the end; nothing large is kept. Then, per
tokenizer:
- the tokenizer's raw rate: `encode_batch` of the store's own batches in this one process and one
  thread, on the first 64 MB of the corpus's text (the limit a worker can reach), and the rate of
  reading that text alone (decompress, parse: the limit where encoding is a copy, as for byte);
- `lmjax prepare --workers 1` (the smallest size, or --one_worker_gb) and `--workers 2`: the store build's
  seconds (the manifest's, tokenizer training apart), text MB/s per worker against the raw rate,
  and the peak resident memory of the process tree (the command and its workers, sampled every
  50 ms from /proc);
- for byte: `lmjax train` (configs/default.py) on the store, concat and documents packing: launch
  to the first step, the peak resident memory over its first 100 steps, its tokens/s, and the
  input pipeline's tokens/s (`lmjax.data.batches.batch` alone) over it, with the resident memory
  opening the store and reading 200 batches added to this process (`data_rss_bytes`); the same
  launch on the stdlib store for comparison.
Writes one JSON record under benchmarks/results/ and rows to the "Token stores" table of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import flags

from benchmarks import records

REPO = Path(__file__).resolve().parents[1]
SHARD_TEXT_BYTES = 64 << 20
SAMPLE_BYTES = 64 << 20
TRAIN_STEPS = 100


def generate(folder: Path, gb: float) -> dict:
    """The synthetic corpus: `gb` GB of stdlib text as JSONL records in .jsonl.zst shards."""
    import zstandard

    from lmjax.data import sources

    folder.mkdir(parents=True)
    docs = []
    for _, path in sources._stdlib_files():
        try:
            docs.append(Path(path).read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            continue
    target, written, shard, copy = int(gb * 1e9), 0, 0, 0
    t0 = time.perf_counter()
    while written < target:
        with open(folder / f"part-{shard:04d}.jsonl.zst", "wb") as raw, \
                zstandard.ZstdCompressor(level=3).stream_writer(raw) as out:
            in_shard = 0
            while in_shard < SHARD_TEXT_BYTES and written < target:
                doc = f"# copy {copy}\n{docs[copy % len(docs)]}"
                copy += 1
                n = len(doc.encode("utf-8"))
                out.write((json.dumps({"text": doc}) + "\n").encode("utf-8"))
                in_shard += n
                written += n
        shard += 1
    files = sorted(folder.iterdir())
    return {"gb": gb, "text_bytes": written, "documents": copy, "files": len(files),
            "compressed_bytes": sum(f.stat().st_size for f in files), "seconds": time.perf_counter() - t0}


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (from /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            continue
    return total


def run_measured(cmd: list[str], *, until=None, timeout: float = 7200) -> dict:
    """Run `cmd`, sampling its process tree's RSS; `until(elapsed)` True stops it (SIGKILL)."""
    t0 = time.perf_counter()
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err, text=True)
    peak, stopped = 0, False
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        if until is not None and until():
            proc.send_signal(signal.SIGKILL)
            stopped = True
            break
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            sys.exit(f"error: {' '.join(cmd[:4])} ran past {timeout:.0f} s")
        time.sleep(0.05)
    proc.wait()
    out.seek(0), err.seek(0)
    stdout, stderr = out.read(), err.read()
    if proc.returncode and not stopped:
        sys.exit(f"error: {' '.join(cmd)} failed ({proc.returncode}): {stderr.strip().splitlines()[-1:]}")
    return {"wall_s": time.perf_counter() - t0, "peak_rss_bytes": peak, "stdout": stdout, "stderr": stderr}


def lmjax(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmjax.cli.main", *args]


def prepare_store(corpus: str, tokenizer: str, vocab: int, workers: int, cache: Path) -> dict:
    args = ["prepare", f"--config.data.corpus={corpus}", f"--config.data.tokenizer={tokenizer}",
            f"--config.data.cache_dir={cache}", f"--workers={workers}", "--noprogress"]
    if tokenizer != "byte":
        args.append(f"--config.data.vocab_size={vocab}")
    r = run_measured(lmjax(*args))
    line = json.loads(r["stdout"].strip().splitlines()[-1])
    manifest = json.loads(Path(line["store"], "manifest.json").read_text())
    text = manifest["train"]["bytes"] + manifest["val"]["bytes"]
    build = manifest["build_seconds"]
    return {"workers": workers, "store": line["store"], "wall_s": r["wall_s"], "build_s": build,
            "tokens": line["train_tokens"] + line["val_tokens"], "text_bytes": text,
            "text_mb_per_s": text / build / 1e6, "text_mb_per_s_per_worker": text / build / 1e6 / workers,
            "peak_rss_bytes": r["peak_rss_bytes"]}


def raw_rate(store: str, corpus: str) -> dict:
    """encode_batch of the store's own tokenizer on the corpus's first SAMPLE_BYTES, in batches as
    a worker makes them (BATCH_DOCS documents or BATCH_CHARS characters)."""
    from lmjax.data import sources, store as store_lib
    from lmjax.data.tokenizers import tokenizer_from_json

    tok = tokenizer_from_json(json.loads(Path(store, "tokenizer.json").read_text()))
    c = sources.find_corpus(corpus)
    texts, n = [], 0
    t0 = time.perf_counter()
    for piece in sources.plan_pieces(c):
        for _, text, _ in sources.documents(c, piece, sources.ReadOptions()):
            texts.append(text)
            n += len(text.encode("utf-8"))
            if n >= SAMPLE_BYTES:
                break
        if n >= SAMPLE_BYTES:
            break
    read_s = time.perf_counter() - t0  # decompress and parse alone: the limit where encoding is a copy
    batches, cur, size = [], [], 0
    for t in texts:
        cur.append(t)
        size += len(t)
        if len(cur) >= store_lib.BATCH_DOCS or size >= store_lib.BATCH_CHARS:
            batches.append(cur)
            cur, size = [], 0
    batches.append(cur)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread, as in a worker (HF and sentencepiece)
    t0 = time.perf_counter()
    for b in batches:
        tok.encode_batch(b)
    seconds = time.perf_counter() - t0
    return {"sample_bytes": n, "seconds": seconds, "text_mb_per_s": n / seconds / 1e6,
            "read_s": read_s, "read_mb_per_s": n / read_s / 1e6}


def train_probe(corpus: str, cache: Path, packing: str, workdir: Path) -> dict:
    """`lmjax train` of configs/default.py on the store: launch to first step, peak RSS over the
    first TRAIN_STEPS steps, tokens/s; stopped there."""
    metrics = workdir / "metrics.jsonl"

    def rows():
        return [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []

    def done():
        r = rows()
        return bool(r) and r[-1]["step"] >= TRAIN_STEPS

    args = ["train", "--config=configs/default.py", f"--config.data.corpus={corpus}",
            f"--config.data.cache_dir={cache}", f"--config.data.packing={packing}", f"--workdir={workdir}",
            "--config.train.steps=1000000", "--config.train.eval_every=1000000",
            "--config.train.checkpoint_every=1000000", "--config.sample.prompt=", "--noprogress"]
    t0 = time.perf_counter()
    first = [None]

    def until():
        if first[0] is None and metrics.exists() and metrics.stat().st_size:
            first[0] = time.perf_counter() - t0
        return done()

    r = run_measured(lmjax(*args), until=until)
    logged = rows()
    speeds = [x["tokens_per_s"] for x in logged if "tokens_per_s" in x]
    return {"packing": packing, "launch_to_first_step_s": first[0],
            "time_to_first_step_s": logged[0]["time_to_first_step"], "steps": logged[-1]["step"],
            "peak_rss_bytes": r["peak_rss_bytes"], "train_tokens_per_s": statistics.median(speeds)}


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024


def pipeline_rate(corpus: str, cache: Path, packing: str, steps: int = 200) -> dict:
    """Tokens/s of the input pipeline alone: default.py's batches (32 x 128) drawn and read."""
    from lmjax.config import DataConfig
    from lmjax.data import batches, prepare

    before = _rss()
    data = prepare(DataConfig(corpus=corpus, cache_dir=str(cache), packing=packing), progress=False)
    batches.batch(data, seed=0, step=0, batch_size=32, seq_len=128)  # the row plan, the first touches
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        batches.batch(data, seed=0, step=step, batch_size=32, seq_len=128)
    seconds = time.perf_counter() - t0
    out = {"packing": packing, "steps": steps, "tokens_per_s": steps * 32 * 128 / seconds,
           "data_rss_bytes": _rss() - before}  # what opening the store and reading its batches keeps resident
    if packing == "documents":
        out["padding_fraction"] = data.sources[0].train.row_plan(129).padding_fraction
    return out


def stdlib_padding(cache: Path, seq_lens=(128, 1024)) -> dict:
    """documents packing's share of padding on the stdlib's training split, per seq_len."""
    from lmjax.config import DataConfig
    from lmjax.data import prepare
    split = prepare(DataConfig(corpus="stdlib", cache_dir=str(cache)), progress=False).sources[0].train
    out = {}
    for L in seq_lens:
        plan = split.row_plan(L + 1)
        out[str(L)] = {"rows": plan.num_rows, "documents": split.documents,
                       "padding_fraction": plan.padding_fraction}
    return out


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_list("sizes_gb", ["1", "10"], "Corpus sizes, GB of text.", flag_values=fv)
    flags.DEFINE_list("tokenizers", ["byte", "bpe", "sentencepiece"], "Tokenizers to prepare with.",
                      flag_values=fv)
    flags.DEFINE_integer("vocab_size", 8192, "bpe and sentencepiece vocabulary.", flag_values=fv)
    flags.DEFINE_list("one_worker_gb", None, "Sizes also prepared with one worker (default: the smallest; "
                      "empty: none).", flag_values=fv)
    flags.DEFINE_string("tmp", tempfile.gettempdir(), "Where the corpora and stores go (deleted after).",
                        flag_values=fv)
    records.define_flags(fv)


def measure_size(gb: float, root: Path, fv, smallest: bool) -> dict:
    corpus_dir = root / f"corpus-{gb:g}gb"
    out = {"corpus": generate(corpus_dir, gb), "tokenizers": {}}
    print(f"[data_store] {gb:g} GB corpus: {out['corpus']}", file=sys.stderr)
    corpus = str(corpus_dir)
    for kind in fv.tokenizers:
        cache = root / f"cache-{gb:g}-{kind}"
        runs = []
        if smallest:
            runs.append(prepare_store(corpus, kind, fv.vocab_size, 1, cache))
            shutil.rmtree(Path(runs[0]["store"]))  # keep the tokenizer: the next build reuses it
        runs.append(prepare_store(corpus, kind, fv.vocab_size, 2, cache))
        entry = {"prepare": runs, "raw": raw_rate(runs[-1]["store"], corpus)}
        for r in runs:
            r["of_raw_per_worker"] = r["text_mb_per_s_per_worker"] / entry["raw"]["text_mb_per_s"]
        if len(runs) == 2:
            entry["speedup_2_workers"] = runs[0]["build_s"] / runs[1]["build_s"]
        if kind == "byte":
            entry["train"] = [train_probe(corpus, cache, p, root / f"run-{gb:g}-{p}") for p in ("concat", "documents")]
            entry["pipeline"] = [pipeline_rate(corpus, cache, p) for p in ("concat", "documents")]
        print(f"[data_store] {gb:g} GB {kind}: {json.dumps(entry)}", file=sys.stderr)
        out["tokenizers"][kind] = entry
        shutil.rmtree(cache)
    shutil.rmtree(corpus_dir)
    return out


def main(argv=None) -> dict:
    from benchmarks import cli

    argv = sys.argv[1:] if argv is None else list(argv)
    fv = cli.parse("benchmarks.data_store", __doc__, argv, _define_flags)
    load = records.load_avg()
    sizes = sorted(float(s) for s in fv.sizes_gb)
    with tempfile.TemporaryDirectory(prefix="lmjax-data-store-", dir=fv.tmp) as tmp:
        root = Path(tmp)
        stdlib = [train_probe("stdlib", root / "cache-stdlib", "concat", root / "run-stdlib")]
        padding = stdlib_padding(root / "cache-stdlib")
        one = sizes[:1] if fv.one_worker_gb is None else [float(x) for x in fv.one_worker_gb if x]
        by_size = {f"{gb:g}": measure_size(gb, root, fv, gb in one) for gb in sizes}
    fields = {"label": fv.label, "vocab_size": fv.vocab_size, "stdlib_train": stdlib,
              "stdlib_documents_padding": padding, "sizes": by_size,
              "command": "python -m benchmarks.data_store " + " ".join(argv)}
    return records.save_record(fields, "data-store", fv, records.DATA_STORE, load=load)


if __name__ == "__main__":
    from lmjax.process import setup_command_process

    setup_command_process()
    main()
