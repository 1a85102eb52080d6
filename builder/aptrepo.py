"""Flat apt repositories: every one xenspin writes, and the copy of the build's repository in out/.

Three are written, all here: the store's repository of a build's .debs (a stage,
keyed by the .debs' recorded digests, so a no-op run hashes no .deb again), the
local repository the rootfs is composed from (locked and built .debs), and the index
apt resolves a package set against (verified paragraphs and built stand-ins).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from .errors import Missing, XenspinError
from .run import run
from .sources import verified_blob
from .store import Store

FORMAT = 1  # the store repository's object; bump when what it holds changes


class RepoError(XenspinError):
    """A repository cannot be written as asked (two .debs of one file name)."""


def make(tmp: Path, debs: Sequence[Path], origin: str) -> dict:
    """The store's repository object: debs hard-linked into tmp, indexed; its metadata names them."""
    _link(((deb.name, deb) for deb in debs), tmp)
    index(tmp, origin)
    return {"debs": sorted(deb.name for deb in debs)}


def local(debs: Iterable[tuple[str, Path]], dest: Path, suite: str, origin: str) -> Path:
    """A repository at dest holding these .debs by file name, its Release naming suite (mmdebstrap selects by it)."""
    dest.mkdir(parents=True, exist_ok=True)
    _link(debs, dest)
    index(dest, origin, suite)
    return dest


def locked_debs(store: Store, debs: Iterable[tuple[str, str, str, str]], what: str) -> list[tuple[str, Path]]:
    """(file name, store blob) of each locked (name, version, pool filename, sha256), every blob checked again.

    A blob missing says to fetch; one changed behind xenspin's back is refused and removed.
    """
    out, missing = [], []
    for name, version, filename, sha256 in debs:
        if not store.has_blob(sha256):
            missing.append(f"{name} {version}")
            continue
        out.append((Path(filename).name, verified_blob(store, sha256, f"{what}: {name} {version}")))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise Missing(f"{what}: {len(missing)} locked .debs are not in the store: {shown} (run `xenspin fetch`)")
    return out


def from_paragraphs(dest: Path, paragraphs: Iterable[str], files: dict[str, bytes], suite: str, origin: str) -> Path:
    """A repository whose Packages is these paragraphs as given, with files (stand-ins) written beside it."""
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / "Packages", "w", encoding="utf-8") as f:
        for para in paragraphs:
            f.write(para.strip() + "\n\n")
    for name, data in files.items():
        (dest / name).write_bytes(data)
    write_release(dest, origin, suite)
    return dest


def index(repo: Path, origin: str, suite: str | None = None) -> None:
    """Packages (apt-ftparchive over the .debs in repo) and Release."""
    packages = run(["apt-ftparchive", "packages", "."], what="apt repository: Packages", cwd=repo, capture=True)
    (repo / "Packages").write_bytes(packages.stdout)
    write_release(repo, origin, suite)


def write_release(repo: Path, origin: str, suite: str | None = None) -> None:
    """Release of a flat repository; with suite, its Suite and Codename say it (mmdebstrap selects by them)."""
    options = [f"APT::FTPArchive::Release::Origin={origin}"]
    if suite is not None:
        options += [f"APT::FTPArchive::Release::Suite={suite}", f"APT::FTPArchive::Release::Codename={suite}"]
    cmd = ["apt-ftparchive", *(arg for o in options for arg in ("-o", o)), "release", "."]
    text = run(cmd, what="apt repository: Release", cwd=repo, capture=True).stdout
    (repo / "Release").write_bytes(text)


def _link(debs: Iterable[tuple[str, Path]], dest: Path) -> None:
    """Hard links (copies across filesystems) of the .debs into dest, each under its name."""
    for name, deb in debs:
        target = dest / name
        if target.exists():
            raise RepoError(f"apt repository {dest}: two .debs named {name}")
        try:
            os.link(deb, target)
        except OSError:
            shutil.copy2(deb, target)


def publish(repo: Path, dest: Path) -> Path:
    """Put a copy of the repository at dest (out/repo), replacing the old one only once complete.

    Call it under `out_lock(dest.parent)`: two builds publishing into one out/
    take turns, so neither renames the other's half-swapped tree.
    """
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _link(((item.name, item) for item in sorted(repo.iterdir())), tmp)
    old = dest.with_name(f".{dest.name}.old{os.getpid()}")
    if dest.exists():
        os.rename(dest, old)
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


@contextlib.contextmanager
def out_lock(out: Path) -> Iterator[None]:
    """Hold out/ for one build's publish: a lock on the directory itself, so nothing is left in it."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
