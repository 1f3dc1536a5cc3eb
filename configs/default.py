"""The default job: a small byte-level Transformer on the Python standard library.

No download: the corpus is the running interpreter's own stdlib (31 MB of .py files). About 4
minutes on a 2-core CPU; ends by printing a sample, which should look like Python.
"""

from lmjax.config import base_config


def get_config(arg=None):
    c = base_config()
    c.data.corpus = "stdlib"
    c.data.tokenizer = "byte"
    c.model.num_layers, c.model.num_heads, c.model.width = 4, 4, 128
    c.train.update(steps=500, batch_size=32, seq_len=128, lr=2e-3, warmup_steps=50,
                   log_every=10, eval_every=250, eval_batches=16, checkpoint_every=250)
    c.sample.update(prompt="def ", temperature=0.7)
    return c
