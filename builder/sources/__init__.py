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
from dataclasses import dataclass
from types import ModuleType

from ..context import Context
from ..errors import FetchError, Missing, Refused

__all__ = ["Context", "FetchError", "Keeps", "Missing", "Refused", "module"]


@dataclass(frozen=True)
class Keeps:
    """Store entries a locked source needs."""

    blobs: frozenset[str] = frozenset()
    git: frozenset[str] = frozenset()


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
