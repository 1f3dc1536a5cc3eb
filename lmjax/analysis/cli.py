"""`lmjax report experiments/NAME [--arg ARG] [--out DIR] [--bootstrap N] [--verbose]`.

Prints the results table and the fits, writes them (CSV, markdown, JSON, PNG plots) into
experiments/NAME/report/ (or --out), and returns 0. Bad input: one `error:` line, status 2.
"""

from __future__ import annotations

import argparse
import sys

from lmjax.errors import LmjaxError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmjax report",
        description="Collect a sweep's runs into a results table, power-law fits L(C) = E + A*C^-alpha "
                    "with bootstrap intervals, and plots.")
    p.add_argument("experiment", help="experiment folder, e.g. experiments/NAME (holds runs/<arg>/<run>/)")
    p.add_argument("--arg", default=None, help="only the runs of this config arg (runs/<arg>/); default: all")
    p.add_argument("--out", default=None, help="output folder (default: <experiment>/report)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for the fit intervals (0: none; default 1000)")
    p.add_argument("--verbose", action="store_true", help="show tracebacks for errors")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, argparse printed the line)
        return int(e.code or 0)
    try:
        if args.bootstrap < 0:
            raise LmjaxError(f"--bootstrap={args.bootstrap} must be >= 0")
        try:
            from lmjax.analysis.report import write_report
        except ImportError as e:  # pandas is not among lmjax's core dependencies
            raise LmjaxError(f"lmjax report needs {e.name or 'pandas'}: pip install pandas") from e
        res = write_report(args.experiment, arg=args.arg, out=args.out, bootstrap_n=args.bootstrap)
    except LmjaxError as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(res["results_md"])
    print(res["fits_md"])
    print(f"wrote {', '.join(sorted(p.name for p in res['files'].values()))} to {res['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
