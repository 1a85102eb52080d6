"""Source kinds behind one protocol: each module locks a source to exact bytes and fetches them.

A kind module (git, tarball, debian, archive, path) exposes:

    lock(name, source, ctx) -> dict       resolve to a lock entry (plain JSON data, no
                                          absolute paths); needs the network
    fetch(name, source, entry, ctx)       make the store hold what entry names, verified;
                                          in ctx.offline raise Missing instead of fetching
    fetched(entry, ctx) -> bool           whether the store already holds it (cheap)
    keeps(entry, ctx) -> Keeps            what in the store it needs (for `store gc`)

The lock entry is the contract between lock and fetch: fetch never re-resolves a
ref or a version, it only fills the store with exactly what was locked.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import XenspinError
from ..store import Store, sha256_json


class FetchError(XenspinError):
    """A source could not be had or did not verify; nothing of it was stored."""


class Refused(FetchError):
    """Bytes were offered and failed verification (digest, signature, moved tag); nothing was stored.

    Never a reason to quietly leave an optional component out: it may be an attack.
    """


class Missing(FetchError):
    """Offline, and the store lacks something a lock entry names."""


@dataclass
class Context:
    """What every source kind may use."""

    store: Store
    base: Any  # manifest.Base: the Debian archive
    mirrors: dict[str, str] = field(default_factory=dict)
    offline: bool = False
    recipe_dir: Path | None = None  # directory paths in the lock are relative to (the manifest's)
    progress: Any = None  # builder.progress.Progress, or None for quiet
    cache: dict[str, Any] = field(default_factory=dict)  # per-run memo (archive indexes, ...)

    def url(self, url: str) -> str:
        """url rewritten by the mirror map: the longest matching prefix wins, as with git's insteadOf."""
        best = max((p for p in self.mirrors if url.startswith(p)), key=len, default=None)
        return self.mirrors[best] + url[len(best) :] if best is not None else url


@dataclass(frozen=True)
class Keeps:
    """Store entries a locked source needs."""

    blobs: frozenset[str] = frozenset()
    git: frozenset[str] = frozenset()


def verified_stamp(ctx: Context, entry: dict[str, Any]) -> Path:
    """Where the store records that every check this lock entry demands passed (keys' digests included).

    Verification is a property of the stored object, not of one run: without this
    stamp a source in the store is checked again before it counts as fetched.
    """
    return ctx.store.root / "verified" / sha256_json(entry)


def write_stamp(stamp: Path) -> None:
    stamp.parent.mkdir(parents=True, exist_ok=True)
    tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}")
    tmp.write_text("verified\n")
    os.replace(tmp, stamp)


KINDS = {
    "git": "git",
    "tarball": "tarball",
    "prebuilt": "tarball",
    "debian": "debian",
    "archive": "debian",
    "path": "path",
}


def module(kind: str) -> ModuleType:
    """The module that handles a source kind."""
    return importlib.import_module(f"{__name__}.{KINDS[kind]}")
