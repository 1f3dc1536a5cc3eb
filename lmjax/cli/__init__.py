"""The `lmjax` command (`main.py`), and its console-script entry point, kept here so that the
first process (before the re-execution with malloc tunables) imports nothing it does not need."""

import os
import sys


def entry() -> None:
    """Console script. After an error, leave without interpreter teardown: a failed
    asynchronous save leaves orbax threads that would print tracebacks on the way out."""
    from lmjax.process import setup_command_process

    setup_command_process()  # a command-line process only: library users opt in themselves
    from lmjax.cli.main import main

    code = main()
    if code:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
