"""The default job: a small byte-level Transformer on the Python standard library.

No download: the corpus is the running interpreter's own stdlib. ~4 minutes on a 2-core CPU.
"""

from lmjax.config import base_config


def get_config(arg=None):
    c = base_config()
    return c
