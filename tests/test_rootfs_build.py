"""The default distribution's dom0 rootfs, composed for real (once per run, shared via `default_build`)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import DEFAULT_EPOCH, DefaultBuild

from builder import cli

pytestmark = [pytest.mark.slow, pytest.mark.network]  # the first build fetches from the archive

MULTIBOOT2_MAGIC = (0xE85250D6).to_bytes(4, "little")


def test_dom0_has_debians_xen_4_20_the_kernel_and_its_own_xl(default_build: DefaultBuild) -> None:
    tree, boot = default_build.tree, default_build.rootfs / "boot"
    xen = gzip.decompress((tree / "boot/xen-4.20-amd64.gz").read_bytes())
    assert MULTIBOOT2_MAGIC in xen[:32768]  # Debian's hypervisor of the 4.20 line, the only one
    assert [p.name for p in (tree / "boot").glob("xen*.gz")] == ["xen-4.20-amd64.gz"]
    assert list((tree / "boot").glob("vmlinuz-*")) and list((tree / "boot").glob("config-*"))
    assert not list((tree / "boot").glob("initrd.img*"))  # it is in boot/ beside the squashfs
    assert (tree / "usr/sbin/xl").is_symlink() and (tree / "usr/lib/xen-4.20/bin/xl").is_file()
    # the tools are of the hypervisor's own Debian source and version
    status = (tree / "var/lib/dpkg/status").read_text().split("\n\n")
    versions = {
        dict(line.split(": ", 1) for line in p.splitlines() if ": " in line and not line.startswith(" "))["Package"]: p
        for p in status
        if p.strip()
    }
    hv = versions["xen-hypervisor-4.20-amd64"]
    assert "Source: xen" in versions["xen-utils-4.20"] and "Source: xen" in hv
    version = [line for line in hv.splitlines() if line.startswith("Version: ")][0]
    assert version in versions["xen-utils-4.20"] and version.startswith("Version: 4.20.")
    # boot/ for the ISO: Xen (multiboot2 and EFI), the kernel and live-boot's initrd
    assert (boot / "xen.gz").read_bytes() == (tree / "boot/xen-4.20-amd64.gz").read_bytes()
    assert (boot / "xen.efi").read_bytes()[:2] == b"MZ"
    assert (boot / "vmlinuz").stat().st_size > 4_000_000
    # live-boot's initrd carries live-boot; the installed disk's, made beside it, does not
    # (each listed by the image's own lsinitramfs, the tree left as it is)
    [disk] = (boot).glob("disk-initrd.img-*")
    assert disk.name == "disk-initrd.img-" + next((tree / "lib/modules").iterdir()).name
    assert "scripts/live" in lsinitramfs(tree, boot / "initrd.img")
    listed = lsinitramfs(tree, disk)
    assert "scripts/local" in listed and "usr/lib/modules/" in listed
    assert "scripts/live" not in listed and "lib/live/boot" not in listed
    # the live packages' initramfs files went back into the tree after the disk initrd was made
    assert (tree / "usr/share/initramfs-tools/scripts/live").is_file()


def lsinitramfs(tree: Path, initrd: Path) -> str:
    return subprocess.run(
        ["bwrap", "--ro-bind", str(tree), "/", "--tmpfs", "/tmp"]
        + ["--ro-bind", str(initrd), "/tmp/initrd.img"]
        + ["--dev", "/dev", "--proc", "/proc", "lsinitramfs", "/tmp/initrd.img"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_xen_services_ssh_network_and_serial_console_are_enabled(default_build: DefaultBuild) -> None:
    etc = default_build.tree / "etc"
    # Debian's Xen tools start xenstored, xenconsoled and xen-init-dom0 from /etc/init.d/xen
    assert (etc / "init.d/xen").is_file()
    assert [p.name for p in (etc / "rc2.d").glob("S*xen")], "xen is not enabled in runlevel 2"
    wants = etc / "systemd/system/multi-user.target.wants"
    assert (wants / "ssh.service").is_symlink() and (wants / "xenspin-ssh-keygen.service").is_symlink()
    assert (wants / "systemd-networkd.service").is_symlink()
    assert "DHCP=yes" in (etc / "systemd/network/50-xenspin-dhcp.network").read_text()
    assert (etc / "systemd/system/getty.target.wants/serial-getty@hvc0.service").is_symlink()
    grub = (etc / "default/grub.d/xen.cfg").read_text()
    assert 'GRUB_CMDLINE_XEN_DEFAULT="console=com1,vga com1=115200 dom0_mem=1024M,max:1024M"' in grub


def test_no_build_host_traces(default_build: DefaultBuild) -> None:
    tree = default_build.tree
    assert (tree / "etc/machine-id").read_text() == ""
    assert not list((tree / "etc/ssh").glob("ssh_host_*"))
    assert not [p for p in (tree / "var/lib/apt/lists").iterdir() if p.is_file()]
    assert not [f for _, _, files in os.walk(tree / "var/log") for f in files]
    assert "file:" not in (tree / "etc/apt/sources.list").read_text()  # the build's repository is gone
    assert "deb http://deb.debian.org/debian trixie main" in (tree / "etc/apt/sources.list").read_text()
    assert not (tree / str(default_build.store).lstrip("/")).exists()  # no mount point left behind
    dpkg_cfg = "".join(p.read_text() for p in (tree / "etc/dpkg/dpkg.cfg.d").iterdir())
    assert "path-exclude=/usr/share/man/*" in dpkg_cfg and "unsafe-io" not in dpkg_cfg


def test_branded_and_overlay_rendered(default_build: DefaultBuild) -> None:
    tree = default_build.tree
    release = dict(line.split("=", 1) for line in (tree / "etc/os-release").read_text().splitlines() if "=" in line)
    assert release["NAME"] == '"xenspin"' and release["ID"] == '"xenspin"' and release["ID_LIKE"] == '"debian"'
    assert release["VERSION_ID"] == '"0.1"' and len(release["BUILD_ID"].strip('"')) == 12
    assert (tree / "etc/hostname").read_text() == "xenspin\n"
    assert (tree / "etc/issue").read_text().startswith("xenspin 0.1 ")
    info = json.loads((tree / "etc/xenspin/build-info.json").read_text())
    assert info["rootfs-key"] == default_build.report["rootfs"]["key"]
    assert set(info["components"]) == {"installer", "linux", "xen", "xen-tools"} and len(info["lock-digest"]) == 64
    motd = (tree / "etc/motd").read_text()  # overlays/dom0/etc/motd.j2, rendered
    xen = yaml.safe_load((default_build.project / "distro.lock").read_text())["components"]["xen"]
    version = xen["packages"]["xen-hypervisor-4.20-amd64"]["version"]
    assert "xenspin 0.1 by xenspin project" in motd and f"xen-hypervisor-4.20-amd64 {version}" in motd
    assert (tree / "etc/motd").stat().st_uid == 0


def test_packages_json_matches_the_lock(default_build: DefaultBuild) -> None:
    packages = json.loads((default_build.rootfs / "packages.json").read_text())
    lock = yaml.safe_load((default_build.project / "distro.lock").read_text())
    locked = lock["sets"]["rootfs"]["packages"]
    by_name = {p["name"]: p for p in packages}
    built = {"xenspin-installer"}
    assert built <= set(by_name)
    assert set(by_name) - built == set(locked)  # exactly the locked set is installed, nothing else
    for name, info in locked.items():
        p = by_name[name]
        assert (p["version"], p["architecture"], p["sha256"]) == (info["version"], info["architecture"], info["sha256"])
        assert p["source"] == info["source"]
    installer = by_name["xenspin-installer"]
    (deb,) = default_build.report["debs"]["installer"]
    assert installer["sha256"] == subprocess.run(["sha256sum", deb], capture_output=True, text=True).stdout.split()[0]


def test_offline_recompose_gives_the_same_squashfs(default_build: DefaultBuild, tmp_path: Path, capsys) -> None:
    """Compose again from the store alone (no network) and get the same bytes."""
    rootfs = default_build.rootfs
    first = default_build.report["rootfs"]["sha256"]
    key = default_build.report["rootfs"]["key"]
    # Take the object out of a copy of the store's index: a second store sharing blobs and builds.
    store = tmp_path / "store"
    store.mkdir()
    shutil.copytree(default_build.store / "blobs", store / "blobs", copy_function=os.link)
    for kind in ("build", "repo"):  # build roots and source trees are only needed to build again
        shutil.copytree(default_build.store / "objects" / kind, store / "objects" / kind, copy_function=os.link)
    argv = ["-f", str(default_build.manifest), "--store", str(store), "--offline", "--out", str(tmp_path / "out")]
    argv += ["--json", "build"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", DEFAULT_EPOCH)
        mp.setenv("http_proxy", "http://127.0.0.1:9")  # any network use would fail
        code = cli.main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err
    again = json.loads(out.out)["rootfs"]
    assert again["made"] and again["key"] == key
    assert again["sha256"] == first
    assert Path(again["path"]) != rootfs
