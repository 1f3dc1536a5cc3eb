"""lmjax's train step against nanoGPT's PyTorch step, interleaved on the same host in the same hour.

    python -m benchmarks.vs_nanogpt --shape baby --rounds 3 [--torch_python /tmp/torchvenv/bin/python]
    python -m benchmarks.vs_nanogpt --shape default --rounds 2 --torch_hugepages

Each round runs the harness (`python -m benchmarks.harness`, which sets its process up as `lmjax`
does: XLA flags and malloc tunables) and then `benchmarks/nanogpt_reference.py` in the torch venv,
each in a fresh process, so a drift of the host's speed hits both sides alike. With
--torch_hugepages each round also runs PyTorch under the same `GLIBC_TUNABLES` lmjax gives
itself, so no one can say lmjax won on the allocator. This process runs no JAX and leaves itself
as it is. Writes `benchmarks/results/<date>-vs_nanogpt-<shape>.json` and a row of the "CPU
throughput against nanoGPT" table in RESULTS.md: the ratio is nanoGPT's median step time over
lmjax's.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

from absl import flags

from benchmarks import cli, records
from lmjax.errors import ConfigError
from lmjax.process.hugepages import TUNABLES

REFERENCE = Path(__file__).with_name("nanogpt_reference.py")
# What --torch_hugepages gives PyTorch: the constant, since the reference is another interpreter,
# not an lmjax command that would set its own.
TORCH_TUNABLES = ":".join(TUNABLES)
# A shape: (the harness's arguments, the reference's arguments).
Shape = tuple[Sequence[str], Sequence[str]]
SHAPES: Mapping[str, Shape] = {
    "baby": (["--config", "configs/shakespeare_char.py", "--steps", "100", "--warmup", "10"],
             ["--shape", "baby", "--steps", "100", "--warmup", "10"]),
    "default": (["--config", "configs/shakespeare_char.py", "--config.model.num_layers=6",
                 "--config.model.num_heads=6", "--config.model.width=384",
                 "--config.train.seq_len=256", "--config.train.batch_size=64",
                 "--steps", "5", "--warmup", "1"],
                ["--shape", "default", "--steps", "5", "--warmup", "1"]),
}


def lmjax_ms(harness_args: Sequence[str]) -> float:
    with tempfile.TemporaryDirectory(prefix="lmjax-vs-") as tmp:
        rec = cli.run_json([sys.executable, "-m", "benchmarks.harness", *harness_args,
                            "--sample_tokens", "0", "--nodata_iterator", "--no_append", "--out", tmp],
                           dict(os.environ))
    return rec["figures"]["step_time_s"]["median"] * 1e3


def torch_ms(reference_args: Sequence[str], python: str, hugepages: bool) -> float:
    """nanoGPT's median step; with `hugepages`, under lmjax's malloc tunables."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if hugepages:
        env["GLIBC_TUNABLES"] = TORCH_TUNABLES
    return cli.run_json([python, str(REFERENCE), *reference_args], env)["step_ms_median"]


def _define_flags(fv: flags.FlagValues, shapes: Mapping[str, Shape]) -> None:
    flags.DEFINE_enum("shape", "baby", list(shapes), "nanoGPT's CPU shape.", flag_values=fv)
    flags.DEFINE_integer("rounds", 3, "Rounds of one lmjax run and one PyTorch run (or two).",
                         flag_values=fv)
    flags.DEFINE_string("torch_python", "/tmp/torchvenv/bin/python", "The PyTorch interpreter.",
                        flag_values=fv)
    flags.DEFINE_boolean("torch_hugepages", False, "Also time PyTorch under lmjax's GLIBC_TUNABLES.",
                         flag_values=fv)
    records.define_flags(fv, label=False)


def main(argv=None, *, shapes: Mapping[str, Shape] = SHAPES) -> dict:
    """`shapes`: the shapes `--shape` names (a test passes tiny ones)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    fv = cli.parse("benchmarks.vs_nanogpt", __doc__, argv, lambda fv: _define_flags(fv, shapes))
    if fv.rounds < 1:
        raise ConfigError("--rounds must be >= 1")
    if not Path(fv.torch_python).exists():
        raise ConfigError(f"no PyTorch interpreter at {fv.torch_python}; see benchmarks/README.md")
    harness_args, reference_args = shapes[fv.shape]
    load = records.load_avg()
    rounds = []
    for i in range(fv.rounds):
        r = {"lmjax_ms": lmjax_ms(harness_args),
             "torch_ms": torch_ms(reference_args, fv.torch_python, hugepages=False)}
        if fv.torch_hugepages:
            r["torch_hugepages_ms"] = torch_ms(reference_args, fv.torch_python, hugepages=True)
        rounds.append(r)
        print(f"[vs_nanogpt] round {i + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()),
              file=sys.stderr)
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    fields = {"shape": fv.shape, "rounds": rounds, "median_ms": med,
              "ratio": med["torch_ms"] / med["lmjax_ms"],
              "ratio_vs_torch_hugepages": (med["torch_hugepages_ms"] / med["lmjax_ms"]
                                           if "torch_hugepages_ms" in med else None),
              "torch_hugepages_tunables": TORCH_TUNABLES if fv.torch_hugepages else None}
    return records.save_record(fields, f"vs_nanogpt-{fv.shape}", fv, records.VS_NANOGPT, load=load)


if __name__ == "__main__":
    cli.run(main)
