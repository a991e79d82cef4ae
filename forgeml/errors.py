"""User-facing errors.

A `ForgeError` is a mistake the user can fix (bad config, bad data, missing file). The CLI prints
its message as one line and exits with code 2; anything else is a bug and keeps its traceback.
Messages answer three questions: what happened, what was expected, how to fix it, and name the
file, row/line, column or config key at fault.
"""

from __future__ import annotations


class ForgeError(Exception):
    """A user error: printed as one line by the CLI, exit code 2."""

    exit_code = 2


class ConfigError(ForgeError):
    """The config (file or override) is wrong."""


class DataError(ForgeError):
    """A data source is missing, unreadable or holds values of the wrong kind."""


class CheckpointError(ForgeError):
    """A checkpoint is missing, truncated, unsafe or does not match its manifest."""
