"""lmjax: language-model scaling experiments in JAX/Flax.

    import lmjax
    run = lmjax.load("runs/default")
    run.generate("def main(")
"""

from lmjax.run import History, Run, TokenScores, load

__version__ = "0.1.0"
__all__ = ["load", "Run", "History", "TokenScores", "__version__"]
