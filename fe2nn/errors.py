"""User-facing errors: one clear line, non-zero exit, no traceback."""
from __future__ import annotations


class UserError(Exception):
    """An error caused by user input (config, file, value).

    The message must be one line naming the file/key/value and what is
    expected.  The CLI prints ``fe2nn: error: <message>`` and exits with
    status 2; tracebacks are never shown for these.
    """

    exit_code = 2


class SolverError(Exception):
    """A numerical failure the user must act on (e.g. minimum step reached)."""

    exit_code = 3
