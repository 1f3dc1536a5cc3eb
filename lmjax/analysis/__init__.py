"""Analysis of sweeps: power-law fits (`fits`), and the report of an experiment's runs:
`runs` (the runs as tables), `fitting` (which points, per group; the frontier), `tables`
(markdown), `plots` (PNGs), `report` (`write_report`: all of them into files), and the
`lmjax report` command (`cli`).

`fits` needs only numpy and scipy; the report also needs pandas and matplotlib and is imported
on first use of `collect`, `curves` or `write_report`.
"""

from lmjax.analysis.fits import (
    PowerLaw,
    bootstrap,
    compute_optimal_frontier,
    fit_power_law,
    fit_variant,
    frontier_at,
)

_REPORT = {"collect": "runs", "curves": "runs", "write_report": "report"}  # name -> module

__all__ = ["PowerLaw", "bootstrap", "compute_optimal_frontier", "fit_power_law", "fit_variant",
           "frontier_at", *_REPORT]


def __getattr__(name):
    if name in _REPORT:
        import importlib

        return getattr(importlib.import_module(f"lmjax.analysis.{_REPORT[name]}"), name)
    raise AttributeError(f"module 'lmjax.analysis' has no attribute {name!r}")
