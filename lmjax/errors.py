"""User-facing errors: each carries one line that names the problem and the fix.

The CLI prints `error: <message>` for these and exits non-zero, without a traceback.
"""


class LmjaxError(Exception):
    """Base of every error caused by the user's input rather than a bug in lmjax."""


class ConfigError(LmjaxError):
    """A config key or value that cannot run."""


class DataError(LmjaxError):
    """A corpus or tokenizer problem: missing, empty, undecodable, too large a vocabulary."""


class CheckpointError(LmjaxError):
    """A checkpoint that is missing, corrupt, or does not match the config."""
