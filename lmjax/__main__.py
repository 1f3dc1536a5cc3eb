"""`python -m lmjax ...`: the `lmjax` console script, for an environment where the package is on
PYTHONPATH but not installed (e.g. a GPU machine that gets the checkout and nothing else)."""

from lmjax.cli import entry

if __name__ == "__main__":
    entry()
