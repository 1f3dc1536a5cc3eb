"""Checkpointer (lmjax/checkpointing/checkpoints.py). Save/restore across meshes, corrupt and
mismatched checkpoints are covered end to end in test_fault_tolerance.py; here, what the
checkpointer costs a fresh run before its first step, and which checkpoints it keeps."""

import json
import subprocess
import sys

PROBE = """
import json, sys
import jax.numpy as jnp
from lmjax.checkpointing import Checkpointer
ckpt = Checkpointer(sys.argv[1])
fresh = [ckpt.latest_step(), "orbax.checkpoint" in sys.modules]
ckpt.save(3, {"w": jnp.ones(4)}, config={"a": 1}, tokenizer={"kind": "byte"})
ckpt.close()
again = Checkpointer(sys.argv[1])
print(json.dumps(fresh + [again.latest_step(), again.restore_meta(3)[0]]))
again.close()
kept = {}
for keep in (2, 0):  # config.train.keep_checkpoints: the newest `keep`, 0 all of them
    ckpt = Checkpointer(f"{sys.argv[1]}-keep{keep}", keep=keep)
    for step in range(1, 5):
        ckpt.save(step, {"w": jnp.full(4, step)}, config={}, tokenizer={})
    ckpt.close()
    kept[keep] = Checkpointer(f"{sys.argv[1]}-keep{keep}", read_only=True).all_steps()
print(json.dumps(kept))
"""


def test_fresh_run_does_not_start_orbax_until_it_saves_and_keeps_the_newest(tmp_path):
    # orbax takes ~0.35 s to import: a fresh run pays it at its first save, after its first step.
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "run")], check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()
    assert json.loads(out[-2]) == [None, False, 3, {"a": 1}]
    assert json.loads(out[-1]) == {"2": [3, 4], "0": [1, 2, 3, 4]}
