"""GPT-2 small (124M-class) shape, for GPU benchmarks.

12 layers, 12 heads, width 768, context 1024, a 50,304-token vocabulary (GPT-2's 50,257 rounded
up to a multiple of 64, as nanoGPT does), bfloat16 compute, RoPE + RMSNorm, tied embeddings,
no dropout; AdamW at lr 6e-4 with 100 warmup steps and weight decay 0.1.

The benchmark harness (`python -m benchmarks.harness --config configs/gpt2_small.py`) uses
`data.vocab_size` as the vocabulary of its synthetic batches; real training would train a
sentencepiece tokenizer of that size on `data.corpus`.

`:bN` sets the global batch to N sequences (default 16), e.g. `configs/gpt2_small.py:b32`.
"""

from lmjax.config import base_config


def get_config(arg=None):
    c = base_config()
    c.data.corpus = "stdlib"
    c.data.tokenizer = "sentencepiece"
    c.data.vocab_size = 50304
    # Explicit shape rather than model.size='small', so --config.model.num_layers=... still applies.
    c.model.num_layers, c.model.num_heads, c.model.width = 12, 12, 768
    c.model.mlp_ratio = 4
    c.model.positions = "rope"
    c.model.norm = "rmsnorm"
    c.model.tie_embeddings = True
    c.model.dropout = 0.0
    c.model.dtype = "bfloat16"
    c.train.batch_size = 16
    if arg:
        if not (arg.startswith("b") and arg[1:].isdigit() and int(arg[1:]) > 0):
            raise ValueError(f"configs/gpt2_small.py takes ':bN' (global batch N), got {arg!r}")
        c.train.batch_size = int(arg[1:])
    c.train.seq_len = 1024
    c.train.lr = 6e-4
    c.train.warmup_steps = 100
    c.train.weight_decay = 0.1
    c.train.b1, c.train.b2 = 0.9, 0.95
    c.train.grad_clip = 1.0
    c.train.steps = 5000
    c.train.eval_every = 500
    c.train.checkpoint_every = 1000
    return c
