"""Sweeps: declare runs next to a base config, run them here (one at a time or N at once) or on
SLURM, with skip / resume / failure isolation derived from each run's workdir.

    lmjax sweep --config experiments/NAME/config.py:ARG [--parallel N] [--dry-run] [--slurm]
"""

from lmjax.sweeps.budget import budget_steps, estimate, steps_for_budget
from lmjax.sweeps.spec import (
    Point,
    SweepError,
    SweepRun,
    apply_overrides,
    chain,
    derive,
    expand,
    product,
    run_name,
    zip_,
)

__all__ = [
    "Point", "SweepError", "SweepRun", "apply_overrides", "budget_steps", "chain", "derive", "estimate",
    "expand", "product", "run_name", "steps_for_budget", "zip_",
]
