"""What a run knows, read once at its start: store, mirrors, offline, epoch, manifest location, progress, remote cache.

Everything below the command line takes this one object instead of re-reading the
environment or re-deriving where the manifest is: the manifest's location is
`manifest` (an absolute file path) and nothing else; paths in a lock are relative
to its directory.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from .errors import XenspinError
from .store import Store


@dataclass
class Context:
    """The run-wide context; sources, stages and the driver read it, none re-reads the environment."""

    store: Store
    base: Any  # manifest.Base: the Debian archive
    mirrors: dict[str, str] = field(default_factory=dict)
    offline: bool = False
    manifest: Path | None = None  # the manifest file (absolute); lock paths are relative to its directory
    progress: Any = None  # builder.progress.Reporter, or None for quiet
    epoch: int | None = None  # $SOURCE_DATE_EPOCH as given, else None (then the locked archive's date)
    cache: dict[str, Any] = field(default_factory=dict)  # per-run memo (archive indexes, ...)
    remote: Any = None  # builder.cache.Remote: the remote cache this run shares stages and sources through, or None

    def url(self, url: str) -> str:
        """url rewritten by the mirror map: the longest matching prefix wins, as with git's insteadOf.

        A mirror on this machine (file://) takes only paths inside it: the rest of a recipe's
        URL may not climb out with '..' (plain or %-encoded) to another of the host's files.
        """
        best = max((p for p in self.mirrors if url.startswith(p)), key=len, default=None)
        if best is None:
            return url
        target, rest = self.mirrors[best], url[len(best) :]
        if target.startswith("file:") and ".." in re.split(r"[/\\]", urllib.parse.unquote(rest)):
            raise XenspinError(f"{url}: '..' would lead out of the mirror {target}")
        return target + rest

    @property
    def project(self) -> Path:
        """The manifest's directory: in-tree sources and lock paths are relative to it."""
        if self.manifest is None:
            raise ValueError("Context.manifest is not set")  # a bug: every command sets it
        return self.manifest.parent

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress.say(message)

    def source_date_epoch(self, archive: dict[str, Any]) -> int:
        """The build time stamped into outputs: $SOURCE_DATE_EPOCH, else the locked archive's Release date.

        So two builds of one lock agree byte for byte, and the time is part of every key.
        """
        if self.epoch is not None:
            return self.epoch
        date = archive.get("date")
        if date:
            try:
                return int(parsedate_to_datetime(date).timestamp())
            except (TypeError, ValueError):
                pass
        return 0
