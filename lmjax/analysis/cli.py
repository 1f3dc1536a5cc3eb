"""`lmjax report experiments/NAME [--arg ARG] [--out DIR] [--bootstrap N] [--verbose]`.

Collects a sweep's runs into a results table, power-law fits L(C) = E + A*C^-alpha with
bootstrap intervals, and plots. Prints the results table and the fits, writes them (CSV,
markdown, JSON, PNG plots) into experiments/NAME/report/ (or --out), and returns 0. Bad input:
one `error:` line, status 2.
"""

from __future__ import annotations

import sys

from absl import flags

from lmjax.errors import LmjaxError

USAGE = "usage: lmjax report experiments/NAME [--arg ARG] [--out DIR] [--bootstrap N] [--verbose]"


def _define(fv: flags.FlagValues) -> None:
    d = dict(flag_values=fv)
    flags.DEFINE_string("arg", None, "Only the runs of this config arg (runs/<arg>/); default: all.", **d)
    flags.DEFINE_string("out", None, "Output folder (default: <experiment>/report).", **d)
    flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for the fit intervals (0: none).", **d)
    flags.DEFINE_boolean("verbose", False, "Show tracebacks for errors.", **d)


def parse(argv: list[str]) -> tuple[flags.FlagValues, str]:
    """The flags and the experiment folder (the one argument that is not a flag)."""
    from lmjax.cli.main import parse_own_flags

    fv, rest = parse_own_flags("report", _define, argv, USAGE)
    if not rest:
        raise LmjaxError(f"the experiment folder is required; {USAGE}")
    if len(rest) > 1:
        raise LmjaxError(f"unexpected argument {rest[1]!r}; {USAGE}")
    if fv.bootstrap < 0:
        raise LmjaxError(f"--bootstrap={fv.bootstrap} must be >= 0")
    return fv, rest[0]


def run(argv: list[str]) -> int:
    fv, experiment = parse(argv)
    try:
        from lmjax.analysis.report import write_report
    except ImportError as e:  # pandas is not among lmjax's core dependencies
        raise LmjaxError(f"lmjax report needs {e.name or 'pandas'}: pip install {e.name or 'pandas'}") from e
    res = write_report(experiment, arg=fv.arg, out=fv.out, bootstrap_n=fv.bootstrap)
    for note in res["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(res["results_md"])
    print(res["fits_md"])
    print(f"wrote {', '.join(sorted(p.name for p in res['files'].values()))} to {res['out']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from lmjax.cli.main import delegated_main

    return delegated_main(argv, define=_define, doc=f"{__doc__}\n{USAGE}\n", run=run)


if __name__ == "__main__":
    sys.exit(main())
