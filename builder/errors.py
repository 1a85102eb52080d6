"""The one error type a user sees, and where in which file it points."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Loc:
    """A place in a file; line 0 means the file as a whole."""

    file: Path
    line: int = 0

    def __str__(self) -> str:
        name = _display(self.file)
        return f"{name}:{self.line}" if self.line else name


def _display(path: Path) -> str:
    """Show a path relative to the working directory when it lies below it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return rel if not rel.startswith("..") else str(path)


class XenspinError(Exception):
    """An expected failure: printed as one line, exit status 2, never a traceback."""

    exit_code = 2

    def __str__(self) -> str:
        return self.args[0] if self.args else self.__class__.__name__


class ManifestError(XenspinError):
    """Bad input in a manifest or recipe: names the file, line and field."""

    def __init__(self, loc: Loc, field: str, message: str) -> None:
        self.loc = loc
        self.field = field
        self.message = message
        where = f"{loc}: {field}: " if field else f"{loc}: "
        super().__init__(where + message)
