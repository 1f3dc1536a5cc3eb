"""lmjax: language-model scaling experiments in JAX/Flax.

    import lmjax
    run = lmjax.load("runs/default")
    run.generate("def main(")
"""

__version__ = "0.1.0"
__all__ = ["load", "Run", "History", "TokenScores", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `import lmjax` does not load JAX: the `lmjax` command sets up its process
    # (malloc tunables, XLA flags) before JAX starts.
    if name in __all__:
        from lmjax import run

        return getattr(run, name)
    raise AttributeError(f"module 'lmjax' has no attribute {name!r}")
