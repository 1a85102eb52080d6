"""Who runs untrusted code: the build account, its view of the host, and `xenspin setup`'s ids (fast)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from builder import host, iso
from builder.run import BUILD_USER, Builder, as_builder, builder, run, subid_ranges


def test_free_range_takes_the_first_gap_of_subordinate_ids() -> None:
    assert host.free_range([]) == 100000
    assert host.free_range([(100000, 65536)]) == 165536
    assert host.free_range([(165536, 65536)]) == 100000  # the gap before fits
    assert host.free_range([(100000, 65536), (200000, 65536)]) == 265536  # 165536 + 65536 overlaps 200000
    assert subid_ranges("alice:100000:65536\nbad line\nbob:x:1\n") == {"alice": (100000, 65536)}


@pytest.mark.root  # the build account is root's
def test_root_hands_untrusted_work_to_the_build_account() -> None:
    who = builder()
    assert who.name == BUILD_USER and who.uid != 0 and who.switches
    assert who.subuid >= 100000 and who.subgid >= 100000  # `xenspin setup` gave it ids


@pytest.mark.root  # the build account is root's
def test_the_build_accounts_view_hides_the_store_and_roots_files(tmp_path: Path) -> None:
    """Only the reach paths are there: the rest of the store, /root and /tmp are empty for the account."""
    store = tmp_path / "store"
    work = store / "tmp/work"
    work.mkdir(parents=True)
    (store / "objects").mkdir()
    (store / "objects/secret").write_text("object\n")
    os.chmod(work, 0o755)
    marker = Path("/tmp") / f"xenspin-view-{os.getpid()}"
    script = (
        f"id -u; test -d {work} && echo reach; test -e {store}/objects/secret || echo hidden;"
        f" ls -A /root | wc -l; echo x > {marker} && echo wrote"
    )
    proc = run(as_builder(["sh", "-c", script], builder(), reach=[work], hide=[store]), what="view", capture=True)
    lines = proc.stdout.decode().split()
    assert lines[0] == str(pwd.getpwnam(BUILD_USER).pw_uid)
    assert lines[1:4] == ["reach", "hidden", "0"] or lines[1:4] == ["reach", "hidden", "1"]  # /root: only the path back
    assert "wrote" in lines  # /tmp is writable in the view ...
    assert not marker.exists()  # ... and private to it


def test_an_ordinary_caller_runs_commands_as_they_are() -> None:
    me = Builder(os.geteuid(), os.getegid(), "me")
    assert as_builder(["true"], me, reach=[Path("/")]) == ["true"]


@pytest.mark.root  # the build account is root's
def test_the_iso_tools_are_the_hosts_never_the_locked_packages(tmp_path: Path) -> None:
    """A spin's archive may ship any grub-mkimage: the ISO stage runs the host's, sandboxed, and only reads theirs."""
    loaders = tmp_path / "loaders"
    fake = loaders / "usr/bin/grub-mkimage"
    fake.parent.mkdir(parents=True)
    marker = tmp_path / "ran"
    fake.write_text(f"#!/bin/sh\necho pwned > {marker}\n")
    fake.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    log = tmp_path / "iso.log"
    iso._tool(iso.Loaders(loaders, {}, "locked"), work, ["grub-mkimage", "--version"], what="t", log=log, env={})
    assert not marker.exists()
    assert "grub-mkimage (GRUB)" in log.read_text()  # the host's tool answered
