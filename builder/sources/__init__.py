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
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..context import Context
from ..errors import FetchError, Missing, Refused
from ..store import Store, sha256_file, sha256_json

__all__ = [
    "Context",
    "FetchError",
    "Keeps",
    "Missing",
    "Refused",
    "module",
    "verified_blob",
    "verified_stamp",
    "write_stamp",
]


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


def verified_blob(store: Store, sha256: str, what: str) -> Path:
    """A store blob, its bytes checked against the locked sha256 again as a build takes it.

    A blob changed behind xenspin's back is refused (and removed, so the next fetch
    gets the real bytes again), never built.
    """
    path = store.blob_path(sha256)
    if not path.is_file():
        raise Missing(f"{what}: the store lacks sha256 {sha256}; fetch it first")
    got = sha256_file(path)
    if got != sha256:
        path.unlink(missing_ok=True)
        raise Refused(f"{what}: store blob {sha256} was changed behind xenspin's back (sha256 now {got}); removed it")
    return path


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
