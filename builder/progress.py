"""Progress for long work: a rich bar on a terminal, a log line per item elsewhere."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress

log = logging.getLogger("xenspin")


class Task:
    def __init__(self, bar: Progress | None, task_id: int | None) -> None:
        self.bar = bar
        self.task_id = task_id

    def advance(self, amount: int) -> None:
        if self.bar is not None and self.task_id is not None:
            self.bar.advance(self.task_id, amount)

    def reset(self, completed: int = 0, total: int | None = None) -> None:
        if self.bar is not None and self.task_id is not None:
            self.bar.update(self.task_id, completed=completed, total=total)


class Reporter:
    """Hands out progress tasks; quiet=True for tests and --json."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()

    def say(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def transfer(self, description: str, total: int | None = None) -> Iterator[Task]:
        """A byte-counting task: a bar on a terminal, one line as it starts elsewhere (logs, CI)."""
        if self.quiet or not self.tty:
            if self.quiet:
                log.info("%s ...", description)
            else:
                self.say(f"{description} ...")
            yield Task(None, None)
            return
        # rich only for a bar on a terminal: a no-op run never pays for importing it
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=True,
        ) as bar:
            yield Task(bar, bar.add_task(description, total=total))
