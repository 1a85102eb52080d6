"""The rootfs stage's plan: package sets, keys, what a change recomposes (fast, offline), and locking a set (network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, copy_project, one_line

from builder import cli, lock, manifest, packagesets


def plan_keys(capsys: pytest.CaptureFixture[str], manifest_path: Path, store: Path) -> dict[str, str]:
    code = cli.main(["-f", str(manifest_path), "--store", str(store), "--json", "plan"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return {s["id"]: s["key"] for s in json.loads(out.out)["graph"]}


def test_rootfs_set_asks_for_manifest_live_boot_pinned_components_and_built_depends() -> None:
    distro = manifest.load(ROOT / "distro.yaml")
    current = lock.read(ROOT / "distro.lock")
    assert current is not None
    sets = packagesets.package_sets(distro, current)
    rootfs = sets["rootfs"]
    assert set(distro.rootfs.packages) <= set(rootfs.include)
    assert {"live-boot", "live-boot-initramfs-tools"} <= set(rootfs.include)
    linux = current.components["linux"]["packages"]["linux-image-amd64"]["version"]
    assert f"linux-image-amd64={linux}" in rootfs.include  # archive components at their locked versions
    assert "xenspin-installer" in dict(rootfs.built)  # built components take part through their depends
    assert rootfs.closure and rootfs.variant == distro.rootfs.variant
    assert not sets["iso"].closure and "isolinux" in sets["iso"].include


def fresh_sets(project: Path) -> None:
    """Mark the copied lock's sets as made from the current inputs (these tests are about keys, not the archive)."""
    path = project / "distro.lock"
    current = lock.read(path)
    assert current is not None
    for name, spec in packagesets.package_sets(manifest.load(project / "distro.yaml"), current).items():
        current.sets[name]["inputs"] = spec.inputs
    lock.write(path, current)


def test_committed_lock_holds_sets_matching_the_components() -> None:
    current = lock.read(ROOT / "distro.lock")
    assert current is not None
    locked = current.sets["rootfs"]["packages"]
    for comp in ("linux", "xen", "xen-tools"):
        for name, info in current.components[comp]["packages"].items():
            assert locked[name]["version"] == info["version"] and locked[name]["sha256"] == info["sha256"]
    for name in ("live-boot", "openssh-server", "systemd-sysv", "python3"):
        entry = locked[name]
        assert set(entry) == {"version", "architecture", "source", "archive", "mirror", "filename", "sha256", "size"}
        assert len(entry["sha256"]) == 64
    assert "xenspin-installer" not in locked  # built, not from the archive


def test_changing_the_package_list_makes_only_the_rootfs_set_stale(tmp_path: Path) -> None:
    path = copy_project(tmp_path)
    fresh_sets(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["rootfs"]["packages"].append("htop")
    path.write_text(yaml.safe_dump(data))
    distro = manifest.load(path)
    current = lock.read(tmp_path / "distro.lock")
    assert current is not None
    assert packagesets.stale_sets(distro, current) == ["rootfs"]


def test_build_offline_refuses_a_stale_set_with_one_line(tmp_path: Path, capsys) -> None:
    path = copy_project(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["rootfs"]["packages"].append("htop")
    path.write_text(yaml.safe_dump(data))
    code = cli.main(["-f", str(path), "--store", str(tmp_path / "store"), "--offline", "build"])
    line = one_line(capsys.readouterr().err)
    assert code == 2
    assert "package sets" in line and "--offline" in line


def test_an_overlay_change_recomposes_the_rootfs_and_rebuilds_no_component(tmp_path: Path, capsys) -> None:
    path = copy_project(tmp_path)
    fresh_sets(tmp_path)
    store = tmp_path / "store"
    before = plan_keys(capsys, path, store)
    assert before["rootfs:rootfs"]
    motd = tmp_path / "overlays/dom0/etc/motd.j2"
    motd.write_text(motd.read_text() + "Welcome.\n")
    after = plan_keys(capsys, path, store)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"rootfs:rootfs"}
    # and a hook's content counts too
    hook = tmp_path / "hook.sh"
    hook.write_text("#!/bin/sh\ntrue\n")
    data = yaml.safe_load(path.read_text())
    data["rootfs"]["hooks"] = ["hook.sh"]
    path.write_text(yaml.safe_dump(data))
    with_hook = plan_keys(capsys, path, store)
    hook.write_text("#!/bin/sh\nfalse\n")
    assert plan_keys(capsys, path, store)["rootfs:rootfs"] != with_hook["rootfs:rootfs"]


@pytest.mark.network
def test_lock_resolves_the_sets_with_apt_against_the_verified_index(tmp_path: Path, capsys) -> None:
    path = copy_project(tmp_path)
    store = tmp_path / "store"
    data = yaml.safe_load(path.read_text())
    data["rootfs"]["packages"].append("htop")
    path.write_text(yaml.safe_dump(data))
    code = cli.main(["-f", str(path), "--store", str(store), "lock"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "locked  set rootfs:" in out.out
    new = lock.read(tmp_path / "distro.lock")
    assert new is not None
    locked = new.sets["rootfs"]["packages"]
    assert "htop" in locked and "libncursesw6" in locked  # htop and what it depends on, by apt
    assert locked["htop"]["source"] == "htop" and locked["htop"]["archive"] == "trixie"
    assert locked["htop"]["filename"].startswith("pool/main/h/htop/")
    assert packagesets.stale_sets(manifest.load(path), new) == []


def test_apts_unmet_dependencies_become_one_line() -> None:
    out = """Reading package lists...
The following packages have unmet dependencies:
 xenspin-xen-tools : Conflicts: libxencall1 but 4.20.4-1 is to be installed
                     Conflicts: libxenmisc4.20 but 4.20.4-1 is to be installed
 htop : Depends: libnl-3-200 (>= 3.2) but it is not installable
E: Unable to correct problems, you have held broken packages.
"""
    assert packagesets.unmet(out) == [
        "xenspin-xen-tools conflicts with libxencall1, libxenmisc4.20",
        "htop depends on libnl-3-200",
    ]
    assert packagesets.unmet("E: something else\n") == []
