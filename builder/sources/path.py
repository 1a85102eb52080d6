"""In-tree sources: versioned with the manifest itself, so the lock only records where they are."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ..store import sha256_file
from . import Context, FetchError, Keeps

FOLLOWS_ARCHIVE = False


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


def keeps(entry: dict, ctx: Context) -> Keeps:
    return Keeps()


def tree(entry: dict, ctx: Context, dest: Path) -> Path:
    """An in-tree source is used where it lies."""
    return ctx.project / entry["path"]


def tag_now(name: str, entry: dict[str, Any], ctx: Context) -> str | None:
    return None  # no tags: nothing can move under a locked entry


def in_tree(source) -> Path | None:
    return Path(source.path)


def debs(entry: dict) -> dict[str, str] | None:
    return None


def binary_packages(source) -> list[str]:
    return []


def srcpkg(entry: dict) -> dict[str, str]:
    return {}


def summary(entry: dict) -> str:
    return entry["path"]


def upstream_version(entry: dict) -> str:
    return "0"


def digest(path: Path) -> str:
    """sha256 over a tree's names, modes, link targets and contents: its identity for cache keys.

    __pycache__ is left out: Python writes it when tests import an in-tree package.
    """
    h = hashlib.sha256()
    for dirpath, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, path)
            st = os.lstat(full)
            if os.path.islink(full):
                h.update(f"L {rel} {os.readlink(full)}\n".encode())
                continue
            h.update(f"F {rel} {st.st_mode & 0o111:o} {sha256_file(Path(full))}\n".encode())
    return h.hexdigest()
