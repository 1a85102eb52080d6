"""Package versions read as upstream's: the release tag (or file name) becomes the upstream version, the build key the revision."""

from __future__ import annotations

import itertools
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import commit, git, new_repo

from builder import build
from builder.manifest import GitSource
from builder.sources import Context, debian_upstream, tarball
from builder.sources import git as gitsrc
from builder.store import Store

XEN = "https://xenbits.xen.org/git-http/xen.git"
XEN_4_20_4 = "9611e26eff425be128d4b9c7b48f2bc6b5d3498e"
CANON = "https://example.invalid/up.git"
C = "9611e26eff425be128d4b9c7b48f2bc6b5d3498e"


# --- the pure rules -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "version"),
    [
        ("RELEASE-4.20.4", "4.20.4"),
        ("v1.2.0", "1.2.0"),
        ("xen-4.17.5", "4.17.5"),
        ("4.20.4", "4.20.4"),
        ("4.21.0-rc2", "4.21.0~rc2"),
        ("RELEASE-4.20.0-rc1", "4.20.0~rc1"),
        ("v2.0.0-beta.1", "2.0.0~beta.1"),
        ("1.0rc1", "1.0~rc1"),
        ("v3.0_alpha2", "3.0~alpha2"),
        ("v1.0-RC3", "1.0~RC3"),
        ("1.5-preview1", "1.5~preview1"),
        ("2.1.dev0", "2.1~dev0"),
        ("OpenSSL_1_1_1w", "1.1.1w"),  # a letter after the last digit is no pre-release
        ("curl-7_88_1", "7.88.1"),
        ("stable-4.20", "4.20"),
        ("v1.2.3+build5", "1.2.3+build5"),
        ("1.2.3-1", "1.2.3.1"),  # never a -: the revision is xenspin's
        ("v1.0@x:y/z", "1.0xyz"),  # only what Debian allows
        ("release-2024--01", "2024.01"),
        ("1.0-", "1.0"),
        ("light", None),
        ("", None),
    ],
)
def test_debian_upstream(tag: str, version: str | None) -> None:
    assert debian_upstream(tag) == version
    if version is not None:
        assert dpkg("--validate-version", version).returncode == 0


@pytest.mark.parametrize(
    ("tag", "distance", "version"),
    [
        ("RELEASE-4.20.4", 0, "4.20.4"),
        ("RELEASE-4.20.4", 1, "4.20.4+git1.9611e26eff42"),
        ("RELEASE-4.20.4", 72, "4.20.4+git72.9611e26eff42"),
        ("4.21.0-rc2", 0, "4.21.0~rc2"),
        ("4.21.0-rc2", 5, "4.21.0~rc2+git5.9611e26eff42"),
        ("v1.2.0", 0, "1.2.0"),
        ("nightly", 0, "0~git9611e26eff42"),  # a tag holding no digit
        ("nightly", 4, "0~git9611e26eff42"),
        (None, 0, "0~git9611e26eff42"),  # no tag reachable
    ],
)
def test_describe_version(tag: str | None, distance: int, version: str) -> None:
    assert gitsrc.describe_version(tag, distance, C) == version


def test_upstream_version_of_entries_with_and_without_describe() -> None:
    assert gitsrc.upstream_version({"commit": C}) == "0~git9611e26eff42"  # a lock entry written before describe
    assert gitsrc.upstream_version({"commit": C, "describe": {"tag": "RELEASE-4.20.4", "distance": 0}}) == "4.20.4"
    after = {"commit": C, "describe": {"tag": "RELEASE-4.20.4", "distance": 3}}
    assert gitsrc.upstream_version(after) == "4.20.4+git3.9611e26eff42"


@pytest.mark.parametrize(
    ("url", "version"),
    [
        ("https://downloads.xenproject.org/release/xen/4.20.4/xen-4.20.4.tar.gz", "4.20.4"),
        ("https://deb.example/pool/f/foo/foo_1.2.orig.tar.xz", "1.2"),
        ("https://github.com/o/r/archive/refs/tags/v1.2.0.tar.gz", "1.2.0"),
        ("https://github.com/o/r/archive/refs/tags/RELEASE-4.20.4.tar.gz", "4.20.4"),
        ("https://cdn.kernel.org/linux-6.1-rc3.tar.xz", "6.1~rc3"),
        ("https://example.org/foo-2.0.0-beta.1.zip", "2.0.0~beta.1"),
        ("https://example.org/libxyz-1.0-src.tgz", "1.0"),
        ("https://example.org/python3-foo-1.0.tar.bz2", "1.0"),
        ("https://example.org/curl-7_88_1.tar.zst", "7.88.1"),
        ("https://example.org/x-1.2.3+dfsg.tar.xz", "1.2.3+dfsg"),
        ("https://example.org/xen-pv-drivers-9.1.0.exe", "9.1.0"),
        ("https://example.org/a%2Db-3.4.tar.gz", "3.4"),
        (f"https://github.com/o/r/archive/{C}.tar.gz", "0"),  # a commit id is no version
        ("https://example.org/source.tar.gz", "0"),
        ("https://example.org/download?id=12", "0"),
        ("https://example.org/", "0"),
    ],
)
def test_tarball_upstream_version(url: str, version: str) -> None:
    assert tarball.upstream_version({"kind": "tarball", "url": url}) == version


# --- the package version and dpkg's order -----------------------------------------------


def dpkg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dpkg", *args], capture_output=True, check=False)


def test_package_versions_sort_as_upstream_releases() -> None:
    """Upstream order decides, whatever the build keys; the key is the Debian revision."""

    def git_entry(tag: str | None, distance: int = 0) -> dict:
        return {"kind": "git", "commit": C} | ({"describe": {"tag": tag, "distance": distance}} if tag else {})

    # Keys that sort against the versions: the revision must never decide between releases.
    ordered = [
        (git_entry(None), "f" * 64),
        (git_entry("RELEASE-4.20.0-rc1"), "e" * 64),
        (git_entry("RELEASE-4.20.0-rc1", 3), "d" * 64),
        (git_entry("RELEASE-4.20.0"), "c" * 64),
        (git_entry("RELEASE-4.20.4"), "b" * 64),
        (git_entry("RELEASE-4.20.4", 1), "a" * 64),
        (git_entry("RELEASE-4.20.4", 2), "9" * 64),
        (git_entry("RELEASE-4.20.4", 10), "8" * 64),
        (git_entry("RELEASE-4.20.5"), "7" * 64),
        ({"kind": "tarball", "url": "https://example.org/xen-4.20.10.tar.gz"}, "6" * 64),
        (git_entry("v4.21.0"), "0" * 64),
    ]
    versions = [build.package_version(entry, key) for entry, key in ordered]
    assert versions[:4] == [
        "0~git9611e26eff42-xsffffffffff",
        "4.20.0~rc1-xseeeeeeeeee",
        "4.20.0~rc1+git3.9611e26eff42-xsdddddddddd",
        "4.20.0-xscccccccccc",
    ]
    assert versions[5] == "4.20.4+git1.9611e26eff42-xsaaaaaaaaaa"
    for v in versions:
        assert dpkg("--validate-version", v).returncode == 0, v
    for lower, higher in itertools.pairwise(versions):
        assert dpkg("--compare-versions", lower, "lt", higher).returncode == 0, f"{lower} < {higher}"
    # A rebuild of the same source changes the version, and only its revision.
    again = build.package_version(git_entry("RELEASE-4.20.4"), "0123456789" + "0" * 54)
    assert again == "4.20.4-xs0123456789" != versions[4]


# --- describe against real repositories -----------------------------------------------------


@dataclass(frozen=True)
class Tagged:
    """A repository: RELEASE-1.0.0 (annotated) on c1; c2; v1.1.0-rc1 (lightweight) on c3; c4 with
    the tag nightly (no version); branch notags, a history of its own with no tag."""

    path: Path
    c1: str
    c2: str
    c3: str
    c4: str
    lone: str


@pytest.fixture
def tagged(tmp_path: Path) -> Tagged:
    path = new_repo(tmp_path / "up", "one")
    c1 = git(path, "rev-parse", "HEAD")
    git(path, "tag", "-a", "-m", "1.0.0", "RELEASE-1.0.0")
    git(path, "branch", "rel")
    c2 = commit(path, "two")
    git(path, "branch", "after")
    c3 = commit(path, "three")
    git(path, "tag", "v1.1.0-rc1")
    c4 = commit(path, "four")
    git(path, "tag", "nightly")
    git(path, "checkout", "-q", "--orphan", "notags")
    lone = commit(path, "alone")
    git(path, "checkout", "-q", "main")
    return Tagged(path, c1, c2, c3, c4, lone)


def ctx_for(tmp_path: Path, mirrors: dict[str, str], store: str = "store") -> Context:
    return Context(store=Store(tmp_path / store), base=None, mirrors=mirrors, offline=False, progress=None)


@pytest.mark.parametrize(
    ("ref", "at", "describe", "version"),
    [
        ("rel", "c1", ("RELEASE-1.0.0", 0), "1.0.0"),  # annotated tag, found by git describe
        ("RELEASE-1.0.0", "c1", ("RELEASE-1.0.0", 0), "1.0.0"),  # locked at the tag itself
        ("after", "c2", ("RELEASE-1.0.0", 1), "1.0.0+git1.{}"),  # one commit after a tag
        ("v1.1.0-rc1", "c3", ("v1.1.0-rc1", 0), "1.1.0~rc1"),  # lightweight tag
        ("main", "c4", ("v1.1.0-rc1", 1), "1.1.0~rc1+git1.{}"),  # past a lightweight tag; nightly skipped
        ("nightly", "c4", ("v1.1.0-rc1", 1), "1.1.0~rc1+git1.{}"),  # a locked tag with no version
        ("notags", "lone", None, "0~git{}"),  # no tag reachable: no describe, the lock goes on
    ],
)
def test_lock_records_nearest_release_tag(
    tagged: Tagged, tmp_path: Path, ref: str, at: str, describe: tuple[str, int] | None, version: str
) -> None:
    sha = getattr(tagged, at)
    entry = gitsrc.lock("up", GitSource(git=CANON, ref=ref), ctx_for(tmp_path, {CANON: tagged.path.as_uri()}))
    assert entry["commit"] == sha
    assert entry.get("describe") == (None if describe is None else {"tag": describe[0], "distance": describe[1]})
    assert gitsrc.upstream_version(entry) == version.format(sha[:12])


def test_lock_with_no_tags_at_all(tmp_path: Path) -> None:
    up = new_repo(tmp_path / "bare-history")
    entry = gitsrc.lock("up", GitSource(git=CANON, ref="main"), ctx_for(tmp_path, {CANON: up.as_uri()}))
    assert "describe" not in entry
    assert gitsrc.upstream_version(entry) == "0~git" + entry["commit"][:12]


def test_fetch_needs_no_describe(tagged: Tagged, tmp_path: Path) -> None:
    """The lock entry is the contract: fetch never derives describe, and an entry from before it still fetches."""
    mirrors = {CANON: tagged.path.as_uri()}
    entry = gitsrc.lock("up", GitSource(git=CANON, ref="after"), ctx_for(tmp_path, mirrors, "lock-store"))
    assert entry["describe"] == {"tag": "RELEASE-1.0.0", "distance": 1}
    old = {k: v for k, v in entry.items() if k != "describe"}
    for n, e in enumerate([entry, old]):
        ctx = ctx_for(tmp_path, mirrors, f"store{n}")
        gitsrc.fetch("up", GitSource(git=CANON, ref="after"), e, ctx)
        assert gitsrc.fetched(e, ctx)
    assert gitsrc.upstream_version(old) == "0~git" + tagged.c2[:12]


# --- the shallow Xen mirror ---------------------------------------------------------------


def test_lock_shallow_xen_at_release_tag(xen_mirror: dict[str, str], tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path, xen_mirror)
    tag = gitsrc.lock("xen", GitSource(git=XEN, ref="RELEASE-4.20.4"), ctx)
    assert (tag["commit"], tag["tag"]) == (XEN_4_20_4, "RELEASE-4.20.4")
    assert tag["describe"] == {"tag": "RELEASE-4.20.4", "distance": 0}
    assert gitsrc.upstream_version(tag) == "4.20.4"
    assert set((ctx.store.git_path(XEN) / "shallow").read_text().split()) == {XEN_4_20_4}  # the store mirror is shallow
    # The branch at the same commit: git describe itself finds the tag in the shallow mirror.
    branch = gitsrc.lock("xen", GitSource(git=XEN, ref="stable-4.20"), ctx)
    assert branch["describe"] == {"tag": "RELEASE-4.20.4", "distance": 0}
    assert gitsrc.upstream_version(branch) == "4.20.4"
    assert build.package_version(branch, "0123456789abcdef").startswith("4.20.4-xs0123456789")
    # A fresh store fetches and exports the locked commit from the shallow upstream.
    fresh = ctx_for(tmp_path, xen_mirror, "fresh")
    gitsrc.fetch("xen", GitSource(git=XEN, ref="RELEASE-4.20.4"), tag, fresh)
    tree = gitsrc.export(tag, fresh, tmp_path / "tree")
    assert "export XEN_SUBVERSION    = 20" in (tree / "xen/Makefile").read_text()
