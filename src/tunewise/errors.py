"""User-facing errors.

A ``UserError`` is a problem with the user's input (a bad file, a bad flag, a missing package):
the CLI prints its one-line message and exits with code 2. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; rendered as one line, exit code 2."""

    exit_code = 2


class DataError(UserError):
    """Malformed input data; ``str(err)`` is ``file:line: field: message``."""

    def __init__(self, path: str, line: int | None, field: str, message: str) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.message = message
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {field}: {message}")


class SealedSplitError(UserError):
    """An attempt to evaluate on the sealed test split without ``--final``."""
