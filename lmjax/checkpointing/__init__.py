"""Saving and restoring training state."""
from lmjax.checkpointing.checkpoints import Checkpointer

__all__ = ["Checkpointer"]
