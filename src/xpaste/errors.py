"""One error type for problems a user can fix: it names the offending file and gives a hint."""
from __future__ import annotations

import os


class XPasteError(Exception):
    """A user-facing error. The CLI prints it as one line (no traceback unless --debug)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, hint: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.hint:
            text += f" (hint: {self.hint})"
        return text


def missing_extra(package: str, extra: str) -> ImportError:
    """The ImportError raised when an optional backend's library is not installed."""
    return ImportError(f"{package} is not installed; run: pip install 'xpaste[{extra}]'")
