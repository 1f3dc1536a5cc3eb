"""A small Transformer pretrained on the byte-level Python stdlib, to fine-tune for classification.

    lmjax train --config configs/stdlib_small.py:decoder --workdir runs/stdlib-decoder
    lmjax train --config configs/stdlib_small.py:encoder --workdir runs/stdlib-encoder   # masked LM
    lmjax finetune --init runs/stdlib-encoder --task stdlib-modules --workdir runs/stdlib-encoder-cls

3 layers x 96 wide, 4 heads, context 128 bytes, batch 16, 2000 steps (4.1M bytes, about 3
minutes on a 2-core CPU). `:decoder` (default) is the causal LM, `:encoder` the same blocks
pretrained with BERT's masked-LM objective. experiments/finetune_stdlib uses both.
"""

from lmjax.config import base_config


def get_config(arg="decoder"):
    arg = arg or "decoder"
    if arg not in ("decoder", "encoder"):
        raise ValueError(f"configs/stdlib_small.py takes ':decoder' or ':encoder', got {arg!r}")
    c = base_config()
    c.data.corpus = "stdlib"
    c.data.tokenizer = "byte"
    c.model.family = arg
    c.model.num_layers, c.model.num_heads, c.model.width = 3, 4, 96
    c.train.update(batch_size=16, seq_len=128, steps=2000, lr=3e-3, warmup_steps=100, eval_every=500,
                   eval_batches=16, checkpoint_every=500)
    c.sample.prompt = "def " if arg == "decoder" else ""
    return c
