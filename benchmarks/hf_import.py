"""How long `lmjax import` then `lmjax eval` take for a GPT-2-small-sized model made by
`transformers` from a random config (12 layers, 12 heads, 768 wide, 1024 positions, vocabulary
50257; with a byte-level tokenizer.json, since GPT-2's own BPE files would need a download).

    python -m benchmarks.hf_import [--eval_batches 4] [--corpus tinyshakespeare]

Both are timed as the user runs them: `python -m lmjax import ...` and `python -m lmjax eval
...` in fresh processes, wall time from launch to exit (interpreter start, reading safetensors,
orbax save; tokenizing the corpus with the hf tokenizer, compiling, evaluating). Needs the hf
extra (`pip install -e '.[hf]'`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import flags

from benchmarks import cli, records
from lmjax.errors import ConfigError

SHAPE = dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257)


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("eval_batches", 4, "Validation batches `lmjax eval` scores.", flag_values=fv)
    flags.DEFINE_string("corpus", "tinyshakespeare", "config.data.corpus of the imported run.", flag_values=fv)
    flags.DEFINE_integer("batch_size", 8, "config.train.batch_size of the imported run (eval batches).",
                         flag_values=fv)
    records.define_flags(fv, label=False)


def _timed(args: list[str]) -> tuple[float, dict]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "lmjax", *args], capture_output=True, text=True,
                       cwd=records.REPO)
    wall = time.perf_counter() - t
    if p.returncode:
        raise ConfigError(f"lmjax {args[0]} failed: {p.stderr.strip().splitlines()[-1]}")
    return wall, json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    fv = cli.parse("benchmarks.hf_import", __doc__, argv, _define_flags)
    try:
        import torch
        import transformers
    except ImportError:
        raise ConfigError("benchmarks.hf_import needs the hf extra: pip install -e '.[hf]'") from None
    from lmjax.data.tokenizers import ByteTokenizer
    from lmjax.hf.tokenizer import save_hf_tokenizer

    load = records.load_avg()
    with tempfile.TemporaryDirectory(prefix="hf-import-") as tmp:
        src, workdir = Path(tmp) / "gpt2-random", Path(tmp) / "run"
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**SHAPE, bos_token_id=None,
                                                                     eos_token_id=None))
        model.save_pretrained(src)
        save_hf_tokenizer(ByteTokenizer(), src)
        params = sum(p.numel() for p in model.parameters())
        size = sum(f.stat().st_size for f in src.iterdir())
        import_s, imported = _timed(["import", "--from", str(src), "--workdir", str(workdir),
                                     f"--config.data.corpus={fv.corpus}",
                                     f"--config.train.batch_size={fv.batch_size}"])
        eval_s, result = _timed(["eval", "--workdir", str(workdir), "--batches", str(fv.eval_batches)])
    fields = {"shape": SHAPE, "params": params, "safetensors_bytes": size, "import_s": import_s,
              "eval_s": eval_s, "eval_batches": fv.eval_batches, "batch_size": fv.batch_size,
              "corpus": fv.corpus, "eval": result, "imported": imported,
              "transformers": transformers.__version__, "torch": torch.__version__,
              "xla_flags": os.environ.get("XLA_FLAGS")}
    return records.save_record(fields, "hf_import", fv, records.HF_IMPORT, load=load)


if __name__ == "__main__":
    cli.run(main)
