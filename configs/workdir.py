"""A run's own config, read back from its workdir's config.json.

    lmjax train --config configs/workdir.py:runs/x --workdir runs/x

continues the run in runs/x (for example one that `lmjax import` made) under the config it was
made with; --config.KEY=VALUE overrides apply on top, as with any config file.
"""

from lmjax.config import SECTIONS, base_config
from lmjax.workdir import Workdir


def get_config(workdir):
    saved = Workdir(workdir).config()
    if saved is None:
        raise FileNotFoundError(f"{workdir} has no config.json: pass the folder of a run")
    c = base_config()
    for section in SECTIONS:  # a fine-tuned run's `finetune` section is not a training key
        c[section].update(saved.get(section, {}))
    return c
