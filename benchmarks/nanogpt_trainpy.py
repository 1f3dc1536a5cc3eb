"""nanoGPT's own train.py, timed on this host, against the rewrite the comparison rounds use.

    python -m benchmarks.nanogpt_trainpy --nanogpt /path/to/nanoGPT --shape baby [--iters 100,600]
        [--rounds 2] [--torch_python /tmp/torchvenv/bin/python]

`benchmarks/vs_nanogpt.py` times nanoGPT's model and step as written out in
`benchmarks/nanogpt_reference.py`. This checks that rewrite against the real program: each round
runs nanoGPT's unmodified `train.py` (config/train_shakespeare_char.py, `--device=cpu
--compile=False`, the shape's overrides, dropout 0) for two iteration counts and takes the
difference of the wall times over the difference of the counts (start-up, data loading and the
one evaluation at iteration 0 cancel), then runs the rewrite once. A copy of the checkout (its
.git left out) goes to a temporary folder with tinyshakespeare from $LMJAX_DATA_DIR, where
nanoGPT's own `data/shakespeare_char/prepare.py` writes its .bin files: nothing is fetched,
nothing lands in the checkout or in this repository. The nanoGPT checkout is the user's (e.g.
`git clone https://github.com/karpathy/nanoGPT`); it is never committed here.

Writes `benchmarks/results/<date>-nanogpt_trainpy-<shape>.json` and a row of the "nanoGPT's own
train.py against the rewrite" table in RESULTS.md: **agreement** = rewrite ms / train.py ms.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

from absl import flags

from benchmarks import cli, records
from lmjax.errors import ConfigError
from lmjax.process.settings import Settings

REFERENCE = Path(__file__).with_name("nanogpt_reference.py")
# shape -> train.py overrides (on config/train_shakespeare_char.py) matching the rewrite's shape
SHAPES: Mapping[str, Sequence[str]] = {
    "baby": ["--n_layer=4", "--n_head=4", "--n_embd=128", "--block_size=64", "--batch_size=12"],
    "default": [],  # the config file's own 6 x 6 x 384, block 256, batch 64
}
COMMON = ["--device=cpu", "--compile=False", "--dropout=0.0", "--eval_interval=1000000", "--eval_iters=1",
          "--log_interval=1", "--always_save_checkpoint=False", "--wandb_log=False"]
ITER_LINE = re.compile(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms")


def prepare_copy(nanogpt: Path, torch_python: str, into: Path) -> Path:
    """A copy of the checkout with tinyshakespeare prepared by nanoGPT's own script."""
    for need in ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py",
                 "data/shakespeare_char/prepare.py"):
        if not (nanogpt / need).is_file():
            raise ConfigError(f"--nanogpt {nanogpt} has no {need}; pass a checkout of karpathy/nanoGPT")
    data_dir = Settings.read().data_dir
    text = Path(data_dir or ".", "tinyshakespeare", "input.txt")
    if not data_dir or not text.is_file():
        raise ConfigError("tinyshakespeare not found: set LMJAX_DATA_DIR (e.g. LMJAX_DATA_DIR=../shared/data)")
    copy = into / "nanoGPT"
    shutil.copytree(nanogpt, copy, ignore=shutil.ignore_patterns(".git", "out*", "*.bin"))
    shutil.copy(text, copy / "data" / "shakespeare_char" / "input.txt")
    subprocess.run([torch_python, "data/shakespeare_char/prepare.py"], cwd=copy, check=True,
                   capture_output=True, text=True)
    return copy


def train_py(copy: Path, torch_python: str, shape_args: Sequence[str], iters: int) -> tuple[float, list[float]]:
    """(wall seconds, the logged per-iteration ms past iteration 0) of one train.py run."""
    # The config's learning-rate schedule stays (warmup 100, decay over 5000): it does not change
    # an iteration's cost, and lr_decay_iters <= warmup_iters would divide by zero in train.py.
    cmd = [torch_python, "train.py", "config/train_shakespeare_char.py", *COMMON, *shape_args,
           f"--max_iters={iters}", f"--out_dir={copy / 'out'}"]
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=copy, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode:
        raise ConfigError(f"nanoGPT's train.py failed: {(r.stderr or r.stdout).strip().splitlines()[-1]}")
    logged = [float(m.group(2)) for m in map(ITER_LINE.match, r.stdout.splitlines()) if m and int(m.group(1)) > 0]
    return wall, logged


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("nanogpt", None, "A local checkout of karpathy/nanoGPT.", flag_values=fv)
    flags.DEFINE_enum("shape", "baby", list(SHAPES), "nanoGPT's CPU shape.", flag_values=fv)
    flags.DEFINE_list("iters", ["100", "600"], "The two iteration counts whose wall times are "
                      "differenced.", flag_values=fv)
    flags.DEFINE_integer("rounds", 2, "Rounds of (train.py x 2, rewrite).", flag_values=fv)
    flags.DEFINE_integer("reference_steps", 100, "Timed steps of the rewrite per round.", flag_values=fv)
    flags.DEFINE_string("torch_python", "/tmp/torchvenv/bin/python", "The PyTorch interpreter.",
                        flag_values=fv)
    records.define_flags(fv, label=False)


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    fv = cli.parse("benchmarks.nanogpt_trainpy", __doc__, argv, _define_flags)
    if not fv.nanogpt:
        raise ConfigError("--nanogpt is required: a checkout of karpathy/nanoGPT (git clone it anywhere)")
    if not Path(fv.torch_python).exists():
        raise ConfigError(f"no PyTorch interpreter at {fv.torch_python}; see benchmarks/README.md")
    lo, hi = sorted(int(i) for i in fv.iters)
    if not 0 < lo < hi or fv.rounds < 1:
        raise ConfigError("--iters takes two different positive counts, --rounds >= 1")
    load = records.load_avg()
    env_threads = os.environ.get("OMP_NUM_THREADS")
    rounds = []
    with tempfile.TemporaryDirectory(prefix="nanogpt-") as tmp:
        copy = prepare_copy(Path(fv.nanogpt).expanduser().resolve(), fv.torch_python, Path(tmp))
        for i in range(fv.rounds):
            (w_lo, _), (w_hi, logged) = (train_py(copy, fv.torch_python, SHAPES[fv.shape], n) for n in (lo, hi))
            ref = cli.run_json([fv.torch_python, str(REFERENCE), "--shape", fv.shape, "--steps",
                                str(fv.reference_steps)], dict(os.environ))
            r = {"train_py_ms": (w_hi - w_lo) / (hi - lo) * 1e3, "train_py_logged_ms": statistics.median(logged),
                 "rewrite_ms": ref["step_ms_median"], "wall_s": [w_lo, w_hi]}
            rounds.append(r)
            print(f"[nanogpt_trainpy] round {i + 1}: train.py {r['train_py_ms']:.1f} ms by differencing "
                  f"({r['train_py_logged_ms']:.1f} logged), rewrite {r['rewrite_ms']:.1f} ms", file=sys.stderr)
    commit = subprocess.run(["git", "-C", fv.nanogpt, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    med = {k: statistics.median(r[k] for r in rounds) for k in ("train_py_ms", "train_py_logged_ms", "rewrite_ms")}
    fields = {"shape": fv.shape, "iters": [lo, hi], "rounds": rounds, "median_ms": med,
              "agreement": med["rewrite_ms"] / med["train_py_ms"], "nanogpt_commit": commit or None,
              "torch_python": fv.torch_python, "omp_num_threads": env_threads}
    return records.save_record(fields, f"nanogpt_trainpy-{fv.shape}", fv, records.NANOGPT_TRAINPY, load=load)


if __name__ == "__main__":
    cli.run(main)
