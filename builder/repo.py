"""Built and locked .debs -> a flat apt repository in the store, keyed by the .debs' digests.

The digests come from what each build recorded when it was made (and from the
lock for archive packages), so a no-op run hashes no .deb again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .run import run
from .stage import stage_key

FORMAT = 1


def key(digests: list[str]) -> str:
    """The repository's key: the set of .debs in it, by content."""
    return stage_key(FORMAT, {"debs": sorted(digests)})


def make(tmp: Path, debs: list[Path], origin: str) -> dict:
    """Hard-link debs into tmp and index them with apt-ftparchive (Packages, Release)."""
    for deb in debs:
        os.link(deb, tmp / deb.name)
    packages = run(["apt-ftparchive", "packages", "."], what="repo: index", cwd=tmp, capture=True).stdout
    (tmp / "Packages").write_bytes(packages)
    release = run(
        ["apt-ftparchive", "-o", f"APT::FTPArchive::Release::Origin={origin}", "release", "."],
        what="repo: release",
        cwd=tmp,
        capture=True,
    ).stdout
    (tmp / "Release").write_bytes(release)
    return {"debs": sorted(deb.name for deb in debs)}


def publish(repo: Path, dest: Path) -> Path:
    """Put a copy of the repository at dest (out/repo), replacing the old one only once complete.

    Call it under `out_lock(dest.parent)`: two builds publishing into one out/
    take turns, so neither renames the other's half-swapped tree.
    """
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for item in sorted(repo.iterdir()):
        try:
            os.link(item, tmp / item.name)
        except OSError:  # another filesystem
            shutil.copy2(item, tmp / item.name)
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
