"""CPU speedrun: tinyshakespeare, character level, to validation loss <= 1.88 as fast as possible.

    python -m benchmarks.speedrun --config configs/speedrun_cpu.py      # median of 3, timed
    lmjax train --config configs/speedrun_cpu.py

Held out (issue 22): the settings were chosen on the first half of the validation split's tokens
(config.data.val_part='tune') and the figure is reported on the second half, which this file
scores by default (val_part='test'), once, at the end, over all of it (eval_batches=0). What
each choice bought is in benchmarks/RESULTS.md ("CPU speedrun", "Held out"). On the test half
this file reached 1.894 / 1.927 / 1.901 with seeds 0 / 1 / 2 (1.871 / 1.902 / 1.882 on the whole
split): above the 1.88 target, which was set on the whole split. On a quiet machine it takes
12.3 s from launch to exit (median of 3, 2026-12-07, at 1.897 with seed 0 after the char
vocabulary gained its end-of-document id; record 20261207T134320Z-speedrun.json).

Against nanoGPT's baby budget (4 layers, batch 12 x 64, AdamW lr 1e-3, 2000 steps = 1.5M tokens):
two layers instead of four (2.4x the steps per second; at this budget depth does not pay for
itself); Muon for the blocks' matrices (orthogonalised momentum at muon_lr 0.02, three
Newton-Schulz iterations instead of optax's five: a cheaper step) and AdamW at 3x nanoGPT's
learning rate for the embeddings and norms, a 30-step warm-up and a cosine decay to zero, no
weight decay and b2 = 0.95 (a short run has no time to overfit). 475 steps (0.36M tokens): the
fewest that reach <= 1.87 on the tune half with seed 0 and <= 1.88 with seeds 0, 1 and 2 (475:
1.849 with seed 0; 450: 1.866, but 1.892 with seed 1; 400: 1.900; 500: 1.835). Chosen by
steps, not seconds (this host was loaded by other work): five Newton-Schulz iterations need 400
steps (1.853), each dearer (500 of them took 15.7 s against three's 13.8 s in the seventh
session's records), so about the same cost; AdamW needs 1150 (1.834; 1000: 1.870); muon_lr 0.03
does worse (1.869 at 450 steps).
"""

from lmjax.config import base_config


def get_config(arg=None):
    c = base_config()
    c.data.corpus = "tinyshakespeare"
    c.data.tokenizer = "char"
    c.data.val_part = "test"  # the half the settings were not chosen on (see the docstring)
    c.model.num_layers, c.model.num_heads, c.model.width = 2, 4, 128
    c.model.positions = "rope"
    c.model.norm = "rmsnorm"
    c.train.steps = 475
    c.train.optimizer = "muon"
    c.train.muon_ns_steps = 3
    c.train.batch_size = 12
    c.train.seq_len = 64
    c.train.lr = 3e-3
    c.train.warmup_steps = 30
    c.train.min_lr_ratio = 0.0
    c.train.weight_decay = 0.0
    c.train.b2 = 0.95
    c.train.log_every = 50
    c.train.eval_every = c.train.get_ref("steps")  # once, at the end (follows --config.train.steps)
    c.train.eval_batches = 0  # the whole validation split
    c.train.checkpoint_every = c.train.get_ref("steps")
    c.sample.prompt = ""
    return c
