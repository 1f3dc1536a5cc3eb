"""CPU speedrun: tinyshakespeare, character level, to validation loss <= 1.88 as fast as possible.

    python -m benchmarks.speedrun --config configs/speedrun_cpu.py      # median of 3, timed
    lmjax train --config configs/speedrun_cpu.py

What each choice bought is measured in benchmarks/RESULTS.md ("CPU speedrun"). The validation
loss is computed once, at the end, on the whole validation split (eval_batches=0).

Against nanoGPT's baby budget (4 layers, batch 12 x 64, AdamW lr 1e-3, 2000 steps = 1.5M tokens):
two layers instead of four (2.4x the steps per second; at this budget depth does not pay for
itself); Muon for the blocks' matrices (orthogonalised momentum at muon_lr 0.02, with three
Newton-Schulz iterations instead of optax's five: cheaper, and enough here) and AdamW at 3x
nanoGPT's learning rate for the embeddings and norms, a 30-step warm-up and a cosine decay to
zero, no weight decay and b2 = 0.95 (a short run has no time to overfit); 500 steps (0.38M
tokens) instead of 2000. With AdamW alone the same model needs 1150 steps (val 1.854, 20.2 s
against Muon's 13.8 s on the same host and hour).
"""

from lmjax.config import base_config


def get_config(arg=None):
    c = base_config()
    c.data.corpus = "tinyshakespeare"
    c.data.tokenizer = "char"
    c.model.num_layers, c.model.num_heads, c.model.width = 2, 4, 128
    c.model.positions = "rope"
    c.model.norm = "rmsnorm"
    c.train.steps = 500
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
