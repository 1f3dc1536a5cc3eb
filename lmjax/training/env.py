"""The LMJAX_* on/off environment switches, read the same way everywhere."""

from __future__ import annotations

import os

OFF = ("0", "false", "no", "off")


def switched_off(name: str, environ=None) -> bool:
    """True when environment variable `name` is set to one of OFF (default: on)."""
    return (os.environ if environ is None else environ).get(name, "1").strip().lower() in OFF
