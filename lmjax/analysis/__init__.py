"""Analysis of sweeps: power-law fits (`fits`), results tables and plots (`report`), and the
`lmjax report` command (`cli`).

`fits` needs only numpy and scipy; `report` also needs pandas and matplotlib and is imported
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

_REPORT = ("collect", "curves", "write_report")

__all__ = ["PowerLaw", "bootstrap", "compute_optimal_frontier", "fit_power_law", "fit_variant",
           "frontier_at", *_REPORT]


def __getattr__(name):
    if name in _REPORT:
        from lmjax.analysis import report

        return getattr(report, name)
    raise AttributeError(f"module 'lmjax.analysis' has no attribute {name!r}")
