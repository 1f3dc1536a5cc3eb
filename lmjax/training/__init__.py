"""Training: mesh and sharding rules, optimizer, the pure step functions and the loop."""

__all__ = ["train", "evaluate"]


def __getattr__(name: str):
    # Lazy, so that importing a light module of this package (env, hugepages) does not load JAX.
    if name in __all__:
        from lmjax.training import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'lmjax.training' has no attribute {name!r}")
