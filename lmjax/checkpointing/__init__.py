"""Saving and restoring training state."""
from lmjax.checkpointing.checkpoints import Checkpointer, abstract_like

__all__ = ["Checkpointer", "abstract_like"]
