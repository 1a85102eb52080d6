"""Source kinds behind one protocol: each module locks a source to exact bytes and fetches them.

Every kind module (git, tarball, debian, path) implements `Kind` below; the rest of
xenspin reaches a kind only through `module(kind)`, so adding a kind touches sources/
alone. The lock entry is the contract between lock and fetch: fetch never re-resolves a
ref or a version, it only fills the store with exactly what was locked.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..context import Context
from ..errors import FetchError, Gone, Missing, Refused
from ..store import Store, sha256_file, sha256_json

__all__ = [
    "Context",
    "FetchError",
    "Gone",
    "Keeps",
    "Kind",
    "Provenance",
    "Missing",
    "Refused",
    "debian_upstream",
    "link_blob",
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
    stamps: frozenset[str] = frozenset()  # verified/ stamps (of the lock entries, not of a kind)


@dataclass(frozen=True)
class Provenance:
    """Where a locked source's bytes come from, as the packages built from it say it (their copyright
    file's Source:, changelog and description).

    where: the upstream's address (a URL; words for an in-tree source); pinned: all of it in one
    sentence's worth, exact (the kind, the address, the full commit, sha256 or version).
    """

    where: str
    pinned: str


def verified_stamp(ctx: Context, entry: dict[str, Any]) -> Path:
    """Where the store records that every check this lock entry demands passed (keys' digests included).

    Verification is a property of the stored object, not of one run: without this
    stamp a source in the store is checked again before it counts as fetched.
    """
    return ctx.store.stamp_path(sha256_json(entry))


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
    "component": "component",
}


class Kind:
    """A source kind as lock, fetch, build and plan see it. `source` is the manifest's source, `entry` its lock entry.

    A kind module defines the members that `REQUIRED` names and those where it differs
    from the defaults below; `module(kind)` gives an instance with the module's members
    laid over them.
    """

    REQUIRED = ("lock", "fetch", "fetched", "tree", "summary")

    # Locked against the base archive's state: stale when the base's suites change.
    FOLLOWS_ARCHIVE: bool = False
    # Released with the distribution (in-tree sources): its packages take the manifest's `version:`.
    DISTRIBUTION_VERSION: bool = False

    def __init__(self, mod: ModuleType) -> None:
        missing = [name for name in self.REQUIRED if not hasattr(mod, name)]
        if missing:
            raise TypeError(f"source kind {mod.__name__} lacks {', '.join(missing)}")
        self.name = mod.__name__.rpartition(".")[2]
        for name in (*self.REQUIRED, *_DEFAULTED):
            if hasattr(mod, name):
                setattr(self, name, getattr(mod, name))

    def lock(self, name: str, source: Any, ctx: Context) -> dict[str, Any]:
        """Resolve to a lock entry (plain JSON data, no absolute paths); needs the network."""
        raise NotImplementedError

    def fetch(self, name: str, source: Any, entry: dict[str, Any], ctx: Context) -> None:
        """Make the store hold what entry names, verified; offline, raise Missing instead."""
        raise NotImplementedError

    def fetched(self, entry: dict[str, Any], ctx: Context) -> bool:
        """Whether the store already holds it (cheap)."""
        raise NotImplementedError

    def tree(self, entry: dict[str, Any], ctx: Context, dest: Path) -> Path:
        """Put the source under dest as a directory to build from; return that directory."""
        raise NotImplementedError

    def summary(self, entry: dict[str, Any]) -> str:
        """A few words on what the entry pins (for `xenspin lock`)."""
        raise NotImplementedError

    def keeps(self, entry: dict[str, Any], ctx: Context) -> Keeps:
        """What in the store it needs (for gc roots): by default nothing."""
        return Keeps()

    def tag_now(self, name: str, entry: dict[str, Any], ctx: Context) -> str | None:
        """The commit a locked tag names upstream now, if the kind has tags (`lock --check-tags`)."""
        return None

    def in_tree(self, source: Any) -> Path | None:
        """The directory a source is used from where it lies (in-tree sources), else None."""
        return None

    def debs(self, entry: dict[str, Any]) -> dict[str, str] | None:
        """For a source that is packages already: .deb file name -> sha256 of its blob; else None."""
        return None

    def binary_packages(self, source: Any) -> list[str]:
        """Binary package names a source is (for `plan`), else []."""
        return []

    def srcpkg(self, entry: dict[str, Any]) -> dict[str, str]:
        """Files of a whole Debian source package (name -> sha256), mounted at $SRCPKG; else {}."""
        return {}

    def upstream_version(self, entry: dict[str, Any]) -> str:
        """The upstream part of a Debian version for what was built from it ("0" when it has none)."""
        return "0"

    def provenance(self, entry: dict[str, Any]) -> Provenance:
        """Where the entry's bytes come from (for the packages built from it): by default, its summary."""
        return Provenance(self.summary(entry), self.summary(entry))

    def release_files(self, name: str, entry: dict[str, Any], ctx: Context, dest: Path, epoch: int) -> dict[str, str]:
        """Write what a source release holds of this source under dest: relative path -> sha256.

        Reproducible: the same entry gives the same bytes (epoch: the build's time, for
        what needs a file time). By default nothing: the source is no file of its own.
        """
        return {}

    def import_files(self, name: str, entry: dict[str, Any], ctx: Context, release: Path) -> None:
        """Take this source into the store from a source release (files as release_files wrote them) when
        the store cannot hold it as blobs (git); the fetch that follows checks it as any fetch does."""

    def share(self, name: str, entry: dict[str, Any], ctx: Context) -> None:
        """Send what the store holds of this source to the remote cache (a build on workers takes it
        from there, not upstream): by default the blobs it keeps."""
        if ctx.remote is not None:
            for blob in sorted(self.keeps(entry, ctx).blobs):
                ctx.remote.offer_blob(ctx.store, blob)


_DEFAULTED = (
    "FOLLOWS_ARCHIVE",
    "DISTRIBUTION_VERSION",
    "keeps",
    "tag_now",
    "in_tree",
    "debs",
    "binary_packages",
    "srcpkg",
    "upstream_version",
    "provenance",
    "release_files",
    "import_files",
    "share",
)


def link_blob(store: Store, sha256: str, dest: Path, what: str) -> str:
    """The stored blob at dest (a hard link, a copy across filesystems), its bytes checked first; its sha256."""
    blob = verified_blob(store, sha256, what)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(blob, dest)
    except OSError:
        shutil.copyfile(blob, dest)
    return sha256


# The words that mark a pre-release (a regular expression, matched ignoring case).
PRERELEASE_WORDS = r"(?:rc|alpha|beta|preview|pre|dev)(?![a-z])"
# A pre-release mark right after a digit: 4.21.0-rc2, 1.0rc1, 2.0.0-beta.1, 3.0_alpha (not 1.1.1w).
PRERELEASE = re.compile(rf"(?<=\d)[-_.~]?({PRERELEASE_WORDS})", re.I)


def debian_upstream(text: str) -> str | None:
    """text (a release tag, a file name's version) as a Debian upstream version; None when it holds no digit.

    What comes before the first digit goes (RELEASE-4.20.4 -> 4.20.4, v1.2.0 -> 1.2.0,
    xen-4.17.5 -> 4.17.5); a pre-release mark after a digit becomes ~, which sorts before
    the release (4.21.0-rc2 -> 4.21.0~rc2); any other - or _ becomes . (curl-7_88_1 ->
    7.88.1); characters Debian does not allow are dropped. The result holds no - or :, so
    it is a valid version on its own and with any revision appended.
    """
    first = re.search(r"\d", text)
    if first is None:
        return None
    version = PRERELEASE.sub(r"~\1", text[first.start() :])
    version = re.sub(r"[^A-Za-z0-9.+~]", "", version.replace("-", ".").replace("_", "."))
    return re.sub(r"\.{2,}", ".", version).rstrip(".")


@functools.cache
def module(kind: str) -> Kind:
    """The source kind named kind (a manifest's kind or its alias: prebuilt, archive)."""
    return Kind(importlib.import_module(f"{__name__}.{KINDS[kind]}"))
