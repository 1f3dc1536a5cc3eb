"""Checkpoints through orbax's CheckpointManager.

Each step folder holds three items: `state` (params, optimizer state, step), `config` and
`tokenizer` (JSON), so a checkpoint is self-contained: `lmjax.load` needs nothing else.
Restores always pass a target of abstract arrays with the *current* mesh's shardings, which is
what lets a checkpoint written on 8 devices come back on 1 (and the other way round).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from lmjax.errors import CheckpointError
from lmjax.workdir import CHECKPOINTS


def _ocp():
    # Imported on first use (0.35 s of a ~2.5 s start): a fresh run needs orbax only when it
    # first saves, after its first step.
    import orbax.checkpoint as ocp

    return ocp


class Checkpointer:
    def __init__(self, workdir: str | Path, *, keep: int = 2, async_save: bool = True,
                 read_only: bool = False):
        self.directory = Path(workdir).resolve() / CHECKPOINTS
        self._options = dict(max_to_keep=keep if keep > 0 else None, create=not read_only,
                             read_only=read_only, enable_async_checkpointing=async_save)
        if read_only:  # orbax warns at length that a read-only manager will not save
            logging.getLogger("absl").setLevel(logging.ERROR)

    @functools.cached_property
    def manager(self):
        ocp = _ocp()
        return ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(**self._options))

    def latest_step(self) -> int | None:
        if not self.directory.is_dir() or not any(self.directory.iterdir()):
            return None  # nothing saved yet: no need to start orbax
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, *, config: dict, tokenizer: dict) -> None:
        """Starts an asynchronous save; the state's arrays are copied before this returns."""
        ocp = _ocp()
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                config=ocp.args.JsonSave(config),
                tokenizer=ocp.args.JsonSave(tokenizer),
            ),
            force=True,
        )

    def restore_state(self, step: int, abstract_state=None):
        """`abstract_state`: a tree of jax.ShapeDtypeStruct with shardings for this mesh; None
        restores the saved tree as it is (numpy arrays, e.g. an n-gram model's counts)."""
        ocp = _ocp()
        try:
            out = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
            )
        except Exception as e:  # orbax/tensorstore raise many types for unreadable data
            others = [s for s in self.all_steps() if s != step]
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} cannot be restored onto this model "
                f"({_first_line(e)}): it is corrupt or from another config; move "
                f"{self.directory / str(step)} aside to resume from "
                + (f"step {max(others)}" if others else "scratch")
                + ", or use a new --workdir"
            ) from e
        return out.state

    def restore_meta(self, step: int) -> tuple[dict, dict]:
        """The run's config and tokenizer as stored with checkpoint `step`."""
        ocp = _ocp()
        try:
            out = self.manager.restore(
                step,
                args=ocp.args.Composite(config=ocp.args.JsonRestore(), tokenizer=ocp.args.JsonRestore()),
            )
        except Exception as e:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} has no readable config/tokenizer "
                f"({_first_line(e)})"
            ) from e
        return dict(out.config), dict(out.tokenizer)

    def wait(self) -> None:
        if "manager" in self.__dict__:  # else nothing was ever saved
            self.manager.wait_until_finished()

    def close(self) -> None:
        if "manager" in self.__dict__:
            self.manager.wait_until_finished()
            self.manager.close()


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]
