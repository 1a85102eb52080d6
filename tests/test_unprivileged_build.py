"""A release rebuilt from its lock alone, by an ordinary account, gives the same ISO bytes (slow).

The test makes an account (it needs root for that, the build does not), gives it
subordinate ids with `xenspin setup --user`, and runs xenspin as that account in a
store of its own: `xenspin fetch` against a mirror that has dropped some locked .debs
(Debian's snapshot archive, served by the test, has them), then `xenspin --offline build`
with every proxy pointing nowhere: build roots and rootfs are composed from the store,
the archive's current state is never read. The checkout may sit where the account
cannot look (/root), so the account sees it through the same view xenspin gives its
build account.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    DEFAULT_EPOCH,
    OPTIONAL_UPSTREAMS,
    ROOT,
    DefaultBuild,
    Server,
    copy_project,
    mirror_args,
    snapshot_add,
)

from builder import host, lock, packagesets
from builder.run import Builder, as_builder, run
from builder.sources import debian
from builder.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.root]  # making an account needs root

USER = "xenspin-test-user"


@pytest.fixture(scope="module")
def account() -> Iterator[Builder]:
    made = False
    try:
        pwd.getpwnam(USER)
    except KeyError:
        run(["useradd", "--no-create-home", "--shell", "/bin/sh", USER], what="test: make an account", capture=True)
        made = True
    host.setup([USER])
    pw = pwd.getpwnam(USER)
    who = Builder(pw.pw_uid, pw.pw_gid, USER)
    yield who
    if made:
        run(["userdel", USER], what="test: remove the account", capture=True, check=False)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def archive_files(current: lock.Lock) -> list[tuple[str, str, dict]]:
    """(group, package, entry) of every .deb the lock takes from the archive: sets and archive components."""
    out = [(name, pkg, info) for name in sorted(current.sets) for pkg, info in packagesets.files(current, name).items()]
    for name, entry in sorted(current.components.items()):
        if entry.get("kind") == "archive":
            out += [(name, pkg, info) for pkg, info in sorted(entry["packages"].items())]
    return out


def serve_archive(default_build: DefaultBuild, current: lock.Lock, server: Server) -> set[str]:
    """A mirror at server/debian with every locked .deb but the smallest of each group (a build root set, the
    rootfs set, an archive component), which only the snapshot archive at server/snapshot still has."""
    files = archive_files(current)
    dropped: dict[str, tuple[str, dict]] = {}
    for group in ["linux", *sorted({g for g, _, _ in files if g.startswith("buildroot-")}), "rootfs"]:
        taken = {pkg for pkg, _ in dropped.values()}
        candidates = [(info["size"], pkg, info) for g, pkg, info in files if g == group and pkg not in taken]
        _size, pkg, info = min(candidates, key=lambda c: (c[0], c[1]))
        dropped[group] = (pkg, info)
    gone = {info["sha256"] for _, info in dropped.values()}
    for _group, pkg, info in files:
        blob = Store(default_build.store).blob_path(info["sha256"])
        assert blob.is_file(), f"{pkg}: not in the session's store"
        if info["sha256"] in gone:
            listing = f"mr/binary/{pkg}/{info['version']}/binfiles"
            snapshot_add(server.root / "snapshot", listing, {Path(info["filename"]).name: blob}, "amd64")
            continue
        dest = server.root / "debian" / info["filename"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            os.link(blob, dest)
    return {pkg for pkg, _ in dropped.values()}


def test_a_release_rebuilds_from_its_lock_alone_to_the_same_iso(
    account: Builder, default_build: DefaultBuild, default_iso: Path, server: Server
) -> None:
    current = lock.read(lock.lock_path(default_build.manifest))
    assert current is not None and any(name.startswith("buildroot-") for name in current.sets)
    dropped = serve_archive(default_build, current, server)
    assert len(dropped) >= 3
    work = Path(tempfile.mkdtemp(prefix="xenspin-unprivileged.", dir="/var/tmp"))
    try:
        os.chmod(work, 0o755)
        manifest = copy_project(work)
        shutil.copy(lock.lock_path(default_build.manifest), lock.lock_path(manifest))  # the release's lock
        subprocess.run(["chown", "-R", f"{account.uid}:{account.gid}", str(work)], check=True)
        xenspin = Path(sys.executable).parent / "xenspin"
        base = [str(xenspin), "-f", str(manifest), "--store", str(work / "store"), "--out", str(work / "out")]
        mirrors = {
            f"{debian_mirror(current)}/": server.url("debian/"),
            f"{debian.SNAPSHOT}/": server.url("snapshot/"),
            **OPTIONAL_UPSTREAMS,
        }
        env = {"SOURCE_DATE_EPOCH": DEFAULT_EPOCH, "HOME": str(work), "LC_ALL": "C.UTF-8"}
        fetched = as_account(account, [*base, *mirror_args(mirrors), "fetch"], env, work)
        from_snapshot = [
            line for line in fetched.splitlines() if "gone from the mirror; fetched from the snapshot" in line
        ]
        for pkg in dropped:  # "fetch set: PKG: ..." or "fetch COMPONENT: PKG_VERSION_ARCH.deb: ..."
            assert any(f" {pkg}:" in line or f" {pkg}_" in line for line in from_snapshot), fetched[-3000:]
        nowhere = "http://127.0.0.1:9"  # the archive's current state cannot be read: nothing answers
        env |= {"http_proxy": nowhere, "https_proxy": nowhere, "HTTP_PROXY": nowhere, "HTTPS_PROXY": nowhere}
        built = as_account(account, [*base, "--offline", "build"], env, work)
        assert "build root" in built and "compose" in built  # composed here, from the store
        (iso,) = sorted((work / "out").glob("*-amd64.iso"))
        assert iso.stat().st_uid == account.uid  # the account wrote it, not root
        assert sha256(iso) == sha256(default_iso), built[-2000:]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def debian_mirror(current: lock.Lock) -> str:
    (mirror,) = {info["mirror"] for _, _, info in archive_files(current)}
    return mirror


def as_account(account: Builder, cmd: list[str], env: dict[str, str], work: Path) -> str:
    """cmd run as the account; its output (both streams), after asserting it succeeded."""
    proc = run(
        as_builder(cmd, account, reach=[work, ROOT, Path(sys.prefix)]),
        what=f"test: xenspin {cmd[-1]} as an ordinary account",
        env=env,
        inherit_env=False,
        capture=True,
        check=False,
    )
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 0, out[-4000:]
    return out
