"""In-tree sources: versioned with the manifest itself, so the lock only records where they are."""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
from pathlib import Path, PurePosixPath

from ..store import sha256_file, tree_digest
from . import Context, FetchError, Provenance

# Released with the distribution: its packages are versioned with the manifest's `version:`.
DISTRIBUTION_VERSION = True

SKIP = frozenset({"__pycache__"})  # written by Python when tests import an in-tree package; no source


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
    return tree_digest(path, modes=0o111, skip=SKIP)


def release_files(name: str, entry: dict, ctx: Context, dest: Path, epoch: int) -> dict[str, str]:
    """The tree as components/NAME.tar.gz, its members under the path the lock names (so it unpacks in
    place beside the manifest): reproducible, the same tree gives the same bytes."""
    rel = f"components/{name}.tar.gz"
    where = PurePosixPath(entry["path"])
    prefix = where.name if ".." in where.parts or where.is_absolute() else where.as_posix()
    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
    reproducible_tar(ctx.project / entry["path"], dest / rel, prefix, epoch)
    return {rel: sha256_file(dest / rel)}


def reproducible_tar(tree: Path, out: Path, prefix: str, epoch: int) -> None:
    """tree as a gzipped tar under prefix/: names sorted, times epoch, owner root, modes 0644 or 0755 by the
    execute bit (what `digest` counts), links kept; gzip without a name or time. What the build hashes
    as the tree (`digest`) is what the tar holds, so a tree unpacked from it builds the same."""
    with (
        open(out, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):

        def member(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = kind, mode, epoch
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            return info

        def walk(directory: Path, name: str) -> None:
            tar.addfile(member(name, tarfile.DIRTYPE, 0o755))
            for e in sorted(os.scandir(directory), key=lambda e: e.name):
                if e.name in SKIP:
                    continue
                inner = f"{name}/{e.name}"
                mode = e.stat(follow_symlinks=False).st_mode
                if stat.S_ISLNK(mode):
                    info = member(inner, tarfile.SYMTYPE, 0o777)
                    info.linkname = os.readlink(e.path)
                    tar.addfile(info)
                elif stat.S_ISDIR(mode):
                    walk(Path(e.path), inner)
                elif stat.S_ISREG(mode):
                    info = member(inner, tarfile.REGTYPE, 0o755 if mode & 0o111 else 0o644)
                    info.size = os.path.getsize(e.path)
                    with open(e.path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    raise FetchError(f"{tree}: {inner} is neither a file, a directory nor a link")

        walk(tree, prefix)
