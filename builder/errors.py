"""The one error type a user sees, and where in which file it points."""

from __future__ import annotations

import errno
import os
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from xenspin_installer.grammar import printable

BUG_EXIT = 70  # EX_SOFTWARE: an unexpected error inside xenspin (a bug), not something the user did


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
        field = printable(field)  # a key may hold a newline: the error stays one line
        self.loc = loc
        self.field = field
        self.message = message
        where = f"{loc}: {field}: " if field else f"{loc}: "
        super().__init__(where + message)


class FetchError(XenspinError):
    """A source could not be had or did not verify; nothing of it was stored."""


class Refused(FetchError):
    """Bytes were offered and failed verification (digest, signature, moved tag); nothing was stored.

    Never a reason to quietly leave an optional component out: it may be an attack.
    """


class Missing(FetchError):
    """Offline, and the store lacks something a lock entry names."""


class Gone(FetchError):
    """The server answered that the file is not there (HTTP 404 or 410): another place may have it."""


class GitError(XenspinError):
    """git failed on a mirror in the store (not reaching upstream: that is a FetchError)."""


class VerifyFailed(XenspinError):
    """A download is not what was published (a digest, a signature, the ISO's own record): exit 1, like a failed test."""

    exit_code = 1


def describe(e: BaseException) -> str:
    """One line for an error of the machine rather than of xenspin (OSError, a hung child)."""
    if isinstance(e, OSError):
        what = {
            errno.ENOSPC: "no space left on the device",
            errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system",
            errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted",
        }.get(e.errno or 0, e.strerror or str(e))
        names = [str(n) for n in (e.filename, e.filename2) if n]
        return f"{' -> '.join(names)}: {what}" if names else what
    if hasattr(e, "timeout") and hasattr(e, "cmd"):  # subprocess.TimeoutExpired
        return f"{e.cmd!s:.80}: gave no answer in {e.timeout} s and was stopped"
    return str(e) or e.__class__.__name__


def git_said(stderr: str) -> str:
    """The line of git's standard error that says what went wrong (fatal:/error:), else its last line."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(("fatal:", "error:")):
            return line
    return lines[-1] if lines else "no message"


def git_failed(what: str, args: Sequence[str], status: int, stderr: str) -> str:
    """One line for a git command that failed: what it was for, the subcommand, its status, git's word."""
    words = [a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or args[i - 1] != "-c")]
    sub = " ".join(words[:2])
    return f"{what}: git {sub} failed (exit {status}): {git_said(stderr)}"


def save_traceback() -> Path:
    """Write the current exception's traceback to a file a user can attach to a report; return its path."""
    fd, name = tempfile.mkstemp(prefix=f"xenspin-crash-{time.strftime('%Y%m%dT%H%M%S')}-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(traceback.format_exc())
    return Path(name)
