"""The one place the installer starts a process: each command and its output go to the install log.

The builder's builder/run.py plays this part on the build host; this one runs inside
dom0, where the builder is not installed, and speaks to a console instead of a store.
"""

from __future__ import annotations

import functools
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from . import InstallerError

TAIL = 15


def masked(text: str, secrets: Sequence[str]) -> str:
    """text with each secret replaced by (secret)."""
    for secret in secrets:
        text = text.replace(secret, "(secret)")
    return text


class CommandFailed(InstallerError):
    """A command failed: what it was for, its status, the end of its output, the log."""


class Runner:
    """Runs commands, appending each with its output to the install log; says what it does."""

    def __init__(self, log_path: Path, out: IO[str] | None = None, dry_run: bool = False) -> None:
        self.log_path = log_path
        self.out = out if out is not None else sys.stdout
        self.dry_run = dry_run
        self.commands: list[list[str]] = []
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()

    def log(self, line: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(line.rstrip("\n") + "\n")

    def say(self, line: str) -> None:
        """A line for the user on the console, and in the log."""
        self.log(f"[{time.monotonic() - self.started:7.1f}s] {line}")
        print(line, file=self.out, flush=True)

    def run(
        self,
        cmd: Sequence[str],
        what: str,
        *,
        capture: bool = False,
        input: str | None = None,
        check: bool = True,
        writes: bool = True,
        secrets: Sequence[str] = (),
    ) -> str:
        """Run cmd; returns its stdout when capture. writes=False marks a read-only probe that runs in dry runs too.

        input is never logged. secrets (a password, a password hash: pass them in input,
        never in cmd) are masked wherever the command's output would show them, in the log
        and in the error, so a failing chpasswd that echoes its input line leaks nothing.
        """
        argv = [str(c) for c in cmd]
        mask = functools.partial(masked, secrets=[s for s in secrets if s])
        self.log(mask(f"[{time.monotonic() - self.started:7.1f}s] $ " + " ".join(shlex.quote(a) for a in argv)))
        self.commands.append(argv)
        if self.dry_run and writes:
            return ""
        try:
            # no console: a command that would ask a question (mmd on a name clash) fails instead of waiting
            stdin = subprocess.DEVNULL if input is None else None
            proc = subprocess.run(argv, input=input, stdin=stdin, capture_output=True, text=True, errors="replace")
        except FileNotFoundError:
            raise CommandFailed(f"{what}: {argv[0]} is not installed") from None
        with open(self.log_path, "a") as f:
            f.write(mask(proc.stderr if capture else proc.stdout + proc.stderr))
        if check and proc.returncode != 0:
            said = mask(proc.stdout + proc.stderr).strip().splitlines()[-TAIL:]
            tail = "".join("\n  | " + s for s in said)
            raise CommandFailed(f"{what}: failed with exit status {proc.returncode}; log: {self.log_path}{tail}")
        return proc.stdout
