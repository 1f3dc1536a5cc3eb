"""The benchmarks' command lines: parsing their flags, and the `lmjax train` children they start.

Every benchmark that runs under lmjax's interpreter parses its flags as `lmjax train` does: absl
flags in a `flags.FlagValues()` of its own (never the global FLAGS), and for `--config`
ml_collections' config_flags, so `--config configs/NAME.py[:ARG]` and `--config.KEY=VAL`
overrides mean what they mean to `lmjax train` (an unknown key fails before anything runs,
naming the nearest valid one). Errors are `ConfigError`s; `run()` turns them into one
`error: ...` line and exit status 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

from absl import flags
from ml_collections import config_flags

from lmjax.cli.main import check_overrides
from lmjax.errors import ConfigError, LmjaxError

REPO = Path(__file__).resolve().parents[1]
HELP = ("-h", "--help", "--helpfull")


def _load_error(e: Exception) -> ConfigError:
    lines = [line for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    if "Traceback" in str(e):  # an exception inside get_config: name it, not the traceback
        return ConfigError(f"{lines[0]} {lines[-1].strip()}")
    return ConfigError(lines[0])


def parse(prog: str, doc: str, argv: list[str], define: Callable[[flags.FlagValues], None], *,
          config: str | None = None) -> flags.FlagValues:
    """The flags `define(fv)` defines, parsed from `argv` (without the program name). config:
    None (no --config flag), "optional" or "required": a config file flag, loaded here.
    --help prints `doc` and the flags, and exits."""
    argv = list(argv)
    if config:
        check_overrides(argv)
    fv = flags.FlagValues()
    full_argv = [prog, *argv]
    # config_flags reads the --config.KEY overrides from sys.argv when the flag is defined.
    saved, sys.argv = sys.argv, full_argv
    try:
        if config:
            config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py[:ARG]).",
                                            flag_values=fv, lock_config=False)
        define(fv)
        if any(a in HELP for a in argv):
            print(f"{doc.rstrip()}\n\nflags:\n{fv.get_help()}")
            raise SystemExit(0)
        positional = fv(full_argv)[1:]
        if positional:
            raise ConfigError(f"unexpected arguments {positional} (flags look like --name=value)")
        if config == "required" and fv.config is None:
            raise ConfigError("no config: pass --config configs/NAME.py")
        if config and fv.config is not None:
            fv.config.to_dict()  # loading errors surface here (a failed load is a lazy error object)
    except flags.Error as e:
        raise _load_error(e) from e
    except (OSError, AttributeError, KeyError, ValueError) as e:
        raise ConfigError(f"cannot load config: {str(e).splitlines()[0]}") from e
    finally:
        sys.argv = saved
    return fv


def config_overrides(argv: list[str]) -> list[str]:
    """The --config.KEY=VAL arguments of `argv`, a separate value joined on ('--config.KEY VAL')."""
    out = []
    for i, a in enumerate(argv):
        if a.startswith("--config."):
            if "=" not in a and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                a = f"{a}={argv[i + 1]}"
            out.append(a)
    return out


def config_name(fv: flags.FlagValues) -> tuple[str, str]:
    """(stem, 'stem[:arg]') of the --config flag's file: ('gpt2_small', 'gpt2_small:b32')."""
    raw = fv["config"].config_filename or ""
    path, _, arg = raw.partition(":")
    stem = Path(path).stem or "config"
    return stem, f"{stem}:{arg}" if arg else stem


def _lmjax() -> list[str]:
    """`lmjax` as a user runs it: the console script beside this interpreter, or its equivalent."""
    script = Path(sys.executable).parent / "lmjax"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from lmjax.cli import entry; entry()"]


def lmjax_train(config: str, overrides: list[str], workdir: Path) -> list[str]:
    """`lmjax train` in `workdir`, without the progress bar and the closing sample."""
    return [*_lmjax(), "train", f"--config={config}", *overrides, f"--workdir={workdir}",
            "--noprogress", "--config.sample.prompt="]


def lmjax_eval(workdir: Path, val_part: str) -> list[str]:
    """`lmjax eval` of the run in `workdir` on the whole of `val_part` ('all', 'tune', 'test')."""
    return [*_lmjax(), "eval", f"--workdir={workdir}", f"--val_part={val_part}"]


def run_json(cmd: list[str], env: dict | None = None) -> dict:
    """Run `cmd` in the repository and return the JSON object on its last stdout line; exit with
    its last stderr line if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[:3])} failed ({proc.returncode}): "
                 f"{proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(main: Callable[[list[str]], object]) -> None:
    """A benchmark's `__main__`: main(the arguments); a user error is one line and exit status 2."""
    try:
        main(sys.argv[1:])
    except LmjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
