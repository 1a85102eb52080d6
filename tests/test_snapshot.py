"""Locked archive files the mirror has dropped come from Debian's snapshot archive, by their locked version.

The snapshot archive is served by the tests' HTTP server and reached through the mirror map,
as a user behind a mirror would reach it; the lock's sha256 decides what is stored.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from conftest import Server, one_line, snapshot_add

from builder import packagesets
from builder.context import Context
from builder.errors import FetchError, Missing, Refused
from builder.lock import Lock
from builder.manifest import Base
from builder.progress import Reporter
from builder.sources import debian
from builder.store import Store

MIRROR = "http://deb.debian.org/debian"


def make_deb(where: Path, name: str, version: str) -> Path:
    tree = where / f"{name}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@example.invalid>\n"
        f"Description: test package {name}\n"
    )
    deb = where / f"{name}_{version.split(':')[-1]}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(deb)], check=True, capture_output=True)
    return deb


def entry(deb: Path, name: str, version: str) -> dict:
    return {
        "version": version,
        "architecture": "all",
        "source": name,
        "archive": "trixie",
        "mirror": MIRROR,
        "filename": f"pool/main/{name[0]}/{name}/{deb.name}",
        "sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
        "size": deb.stat().st_size,
    }


def context(tmp_path: Path, server: Server, *, offline: bool = False) -> Context:
    """A run whose mirror map sends the archive and the snapshot archive to the test server; it says on stderr."""
    return Context(
        store=Store(tmp_path / "store"),
        base=Base(suite="trixie"),
        mirrors={f"{MIRROR}/": server.url("debian/"), "https://snapshot.debian.org/": server.url("snapshot/")},
        offline=offline,
        progress=Reporter(),
    )


@pytest.fixture
def debs(tmp_path: Path) -> dict[str, tuple[Path, dict]]:
    """Two locked .debs: one the mirror still has, one (with an epoch in its version) it dropped."""
    made = {}
    for name, version in (("kept", "1.0-1"), ("dropped", "1:2.0-3")):
        deb = make_deb(tmp_path, name, version)
        made[name] = (deb, entry(deb, name, version))
    return made


def publish_mirror(server: Server, deb: Path, info: dict) -> None:
    dest = server.root / "debian" / info["filename"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(deb.read_bytes())


def test_a_deb_gone_from_the_mirror_comes_from_the_snapshot_archive(
    tmp_path: Path, server: Server, debs, capsys
) -> None:
    (kept, kept_info), (dropped, dropped_info) = debs["kept"], debs["dropped"]
    publish_mirror(server, kept, kept_info)
    snapshot_add(server.root / "snapshot", "mr/binary/dropped/1:2.0-3/binfiles", {dropped.name: dropped}, "all")
    lock = Lock(sets={"s": {"packages": {"kept": kept_info, "dropped": dropped_info}}})
    ctx = context(tmp_path, server)
    report = packagesets.fetch(lock, ctx)
    assert report.fetched == ["dropped", "kept"]
    for info in (kept_info, dropped_info):
        assert ctx.store.blob_path(info["sha256"]).read_bytes() == (kept if info is kept_info else dropped).read_bytes()
    said = capsys.readouterr().err
    assert "fetch set: dropped: gone from the mirror; fetched from the snapshot archive" in said
    assert "kept" not in said
    # by the locked name and version (the epoch's colon %-encoded), then the file by the sha1 listed
    asked = [s.path for s in server.seen if s.path.startswith("/snapshot/")]
    assert asked[0] == "/snapshot/mr/binary/dropped/1%3A2.0-3/binfiles?fileinfo=1"
    assert asked[1] == "/snapshot/file/" + hashlib.sha1(dropped.read_bytes()).hexdigest()
    assert not any("kept" in p for p in asked)  # the mirror had it: the snapshot archive is not asked


def test_snapshot_bytes_that_differ_from_the_lock_are_refused(tmp_path: Path, server: Server, debs) -> None:
    dropped, info = debs["dropped"]
    evil = tmp_path / "evil.deb"
    evil.write_bytes(dropped.read_bytes() + b"\0")
    snapshot_add(server.root / "snapshot", "mr/binary/dropped/1:2.0-3/binfiles", {dropped.name: evil}, "all")
    ctx = context(tmp_path, server)
    with pytest.raises(Refused) as e:
        packagesets.fetch(Lock(sets={"s": {"packages": {"dropped": info}}}), ctx)
    assert "sha256 mismatch" in one_line(e) and "nothing stored" in one_line(e)
    assert not ctx.store.has_blob(info["sha256"])


def test_a_file_neither_has_is_one_line_naming_both(tmp_path: Path, server: Server, debs) -> None:
    _, info = debs["dropped"]
    ctx = context(tmp_path, server)
    with pytest.raises(FetchError) as e:
        packagesets.fetch(Lock(sets={"s": {"packages": {"dropped": info}}}), ctx)
    line = one_line(e)
    assert "\n" not in line
    assert f"{server.url('debian/')}{info['filename']}: HTTP 404" in line
    assert "not in the snapshot archive either" in line
    assert server.url("snapshot/mr/binary/dropped/1%3A2.0-3/binfiles") in line
    # a listing without the locked file name is as good as none
    snapshot_add(server.root / "snapshot", "mr/binary/dropped/1:2.0-3/binfiles", {"dropped_9_all.deb": debs["kept"][0]})
    with pytest.raises(FetchError) as e:
        packagesets.fetch(Lock(sets={"s": {"packages": {"dropped": info}}}), ctx)
    assert f"does not list {Path(info['filename']).name}" in one_line(e)


def test_offline_asks_nobody(tmp_path: Path, server: Server, debs) -> None:
    _, info = debs["dropped"]
    ctx = context(tmp_path, server, offline=True)
    with pytest.raises(Missing):
        packagesets.fetch(Lock(sets={"s": {"packages": {"dropped": info}}}), ctx)
    assert server.seen == []


def test_debian_source_files_fall_back_by_source_version(tmp_path: Path, server: Server, capsys) -> None:
    """The same for a `debian:` component's source package: its srcfiles listing."""
    files = {}
    for name, text in (("hello_1.0-1.dsc", "dsc\n"), ("hello_1.0.orig.tar.gz", "orig\n")):
        (tmp_path / name).write_text(text)
        files[name] = tmp_path / name
    snapshot_add(server.root / "snapshot", "mr/package/hello/1.0-1/srcfiles", files)
    locked = {
        "kind": "debian",
        "package": "hello",
        "version": "1.0-1",
        "mirror": MIRROR,
        "directory": "pool/main/h/hello",
        "files": {n: {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": 4} for n, p in files.items()},
    }
    ctx = context(tmp_path, server)
    for f in debian._files(locked, MIRROR):
        debian.download(f, ctx, f"fetch hello: {f.name}")
    assert all(ctx.store.has_blob(f["sha256"]) for f in locked["files"].values())
    assert capsys.readouterr().err.count("fetched from the snapshot archive") == 2
