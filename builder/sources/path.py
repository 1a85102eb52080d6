"""In-tree sources: versioned with the manifest itself, so the lock only records where they are."""

from __future__ import annotations

import os
from pathlib import Path

from ..store import tree_digest
from . import Context, FetchError, Provenance

# Released with the distribution: its packages are versioned with the manifest's `version:`.
DISTRIBUTION_VERSION = True


def lock(name: str, source, ctx: Context) -> dict:
    path = Path(source.path)
    if not path.is_dir():
        raise FetchError(f"lock {name}: source path {path} is not a directory")
    root = ctx.project
    return {"kind": "path", "path": os.path.relpath(path, root)}


def fetch(name: str, source, entry: dict, ctx: Context) -> None:
    if not Path(source.path).is_dir():
        raise FetchError(f"fetch {name}: source path {source.path} is not a directory")


def fetched(entry: dict, ctx: Context) -> bool:
    root = ctx.project
    return (root / entry["path"]).is_dir()


def tree(entry: dict, ctx: Context, dest: Path) -> Path:
    """An in-tree source is used where it lies."""
    return ctx.project / entry["path"]


def in_tree(source) -> Path | None:
    return Path(source.path)


def summary(entry: dict) -> str:
    return entry["path"]


def provenance(entry: dict) -> Provenance:
    """The directory, relative to the manifest (build adds the tree's digest, which the entry lacks)."""
    return Provenance(f"the distribution's own source, {entry['path']}", f"the in-tree source {entry['path']}")


def digest(path: Path) -> str:
    """The tree's identity for cache keys: store.tree_digest with only the execute bits
    (the other permission bits of a checkout follow the user's umask).

    __pycache__ is left out: Python writes it when tests import an in-tree package.
    """
    return tree_digest(path, modes=0o111, skip=frozenset({"__pycache__"}))
