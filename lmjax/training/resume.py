"""Whether a workdir's checkpoints may be continued under a config: the checks `lmjax train` runs
for every family (trained by steps or counted) before it resumes."""

from __future__ import annotations

from lmjax import config as config_lib
from lmjax.checkpointing import Checkpointer
from lmjax.data import Dataset, tokenizer_from_json
from lmjax.errors import ConfigError
from lmjax.workdir import Workdir


def check_workdir(wd: Workdir, cfg: dict, force: bool) -> None:
    """Refuse to mix two configs' checkpoints in one workdir (unless --force)."""
    saved = wd.config()
    if saved is None:
        return
    saved = config_lib.fill_defaults(saved)  # a key added to the schema since counts as its default
    diffs = [f"config.{key}: {saved[section][k]!r} -> {cfg[section][k]!r}"
             for key in config_lib.identity_keys() for section, k in [key.split(".")]
             if saved[section][k] != cfg[section][k]]
    if diffs and not force:
        raise ConfigError(
            f"workdir {wd.path} holds a run of another config ({'; '.join(diffs[:3])}); "
            "use a new --workdir, or pass --force to set the old checkpoints aside and start over"
        )
    if diffs and force:
        wd.set_checkpoints_aside()  # never deleted: --force must not lose a run


def check_tokenizer(ckpt: Checkpointer, step: int, data: Dataset, force: bool) -> None:
    _, saved = ckpt.restore_meta(step)
    if tokenizer_from_json(saved).fingerprint != data.tokenizer.fingerprint and not force:
        raise ConfigError(
            f"the tokenizer built from config.data differs from the one stored with checkpoint "
            f"{step} (did the corpus change?); restore the corpus, use a new --workdir, or pass --force"
        )
