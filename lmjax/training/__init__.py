"""Training: mesh and sharding rules, optimizer, the pure step functions and the loop."""

from lmjax.training.loop import evaluate, train

__all__ = ["train", "evaluate"]
