"""Does pretraining help? Fine-tune a pretrained encoder and decoder on `stdlib-modules`, against
the same models fine-tuned from random initialisation with the same fine-tuning budget.

    python experiments/finetune_stdlib/run.py            # ~25 min on a 2-core CPU
    python experiments/finetune_stdlib/run.py --steps 300 --out experiments/finetune_stdlib

Runs `lmjax train --config configs/stdlib_small.py:{decoder,encoder}` (skipped when its workdir
already holds a finished run), then for each pretrained model `lmjax finetune` three ways: full
fine-tuning from the pretrained parameters, the head alone on them (a linear probe), and full
fine-tuning from fresh parameters (config.finetune.random_init). Writes results.md (the table
the README quotes) and results.json next to this file, from each fine-tuned run's result.json.
Workdirs go under runs/finetune_stdlib/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from lmjax.process import provenance

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WAYS = {  # label -> (workdir suffix, config.finetune overrides)
    "pretrained, full fine-tuning": ("pretrained-full", []),
    "pretrained, head only (linear probe)": ("pretrained-probe", ["--config.finetune.freeze_backbone=True"]),
    "random init, full fine-tuning": ("random-full", ["--config.finetune.random_init=True"]),
}


def lmjax(*args: str) -> None:
    cmd = [sys.executable, "-m", "lmjax", *args]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps")
    p.add_argument("--runs", default="runs/finetune_stdlib", help="where the workdirs go")
    p.add_argument("--out", default=str(HERE), help="where results.md/json go")
    a = p.parse_args()
    runs, rows = ROOT / a.runs, []
    t0 = time.time()
    for family in ("encoder", "decoder"):
        pre = runs / f"pretrain-{family}"
        if not (pre / "result.json").exists():
            lmjax("train", "--config", f"configs/stdlib_small.py:{family}", "--workdir", str(pre),
                  "--progress=false")
        for way, (suffix, overrides) in WAYS.items():
            out = runs / f"{family}-{suffix}"
            lmjax("finetune", "--init", str(pre), "--task", "stdlib-modules", "--workdir", str(out), "--force",
                  f"--config.finetune.steps={a.steps}", *overrides)
            result = json.loads((out / "result.json").read_text())
            rows.append({"family": family, "fine-tuning": way, "accuracy": result["accuracy"],
                         "macro_f1": result["macro_f1"], "examples": result["examples"],
                         "wall_s": result["wall_time"], "workdir": str(out.relative_to(ROOT))})
    cpu = provenance.cpu()
    host = f"{cpu.get('model')} ({', '.join(cpu.get('vector_extensions') or []) or 'no vector extensions read'})"
    lines = ["| family | fine-tuning | held-out accuracy | macro-F1 | examples | wall s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['family']} | {r['fine-tuning']} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | "
              f"{r['examples']:,} | {r['wall_s']:.0f} |" for r in rows]
    lines += ["", f"{a.steps} fine-tuning steps of batch 32; host {host}, {time.time() - t0:.0f} s in all "
              f"(pretraining included where it ran)."]
    Path(a.out, "results.md").write_text("\n".join(lines) + "\n")
    Path(a.out, "results.json").write_text(json.dumps({"steps": a.steps, "rows": rows}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
