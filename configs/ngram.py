"""An n-gram baseline: interpolated modified Kneser-Ney over the byte-level Python stdlib.

    lmjax train --config configs/ngram.py          # order 5 (counts ~28M bytes in seconds)
    lmjax train --config configs/ngram.py:3 --workdir runs/ngram3

Evaluated on the same validation split as configs/default.py (its whole split here).
"""

from lmjax.config import base_config


def get_config(arg="5"):
    c = base_config()
    c.data.corpus = "stdlib"
    c.data.tokenizer = "byte"
    c.model.family = "ngram"
    c.model.order = int(arg or 5)
    c.train.update(batch_size=32, seq_len=128, eval_batches=0)
    c.sample.update(prompt="def ", max_new_tokens=120)
    return c
