"""The ISO stage on a small stand-in rootfs: menus from the manifest, El Torito and isohybrid
layout, byte-identical rebuilds, the outputs in --out, and a cut write.

Uses the host's boot loader packages (isolinux, syslinux-common, grub-efi-amd64-bin, mtools,
dosfstools: `xenspin setup` installs them) and xorriso to read the result back; no VM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder import iso, manifest
from builder.store import Store, sha256_file

DISTRO = """\
name: tiny
version: "2.5"
components:
  installer:
    source: {path: installer}
iso:
  volume-id: TINY_25
  label: Tiny
  boot:
    timeout: 3
    xen-cmdline: console=com1,vga com1=115200 dom0_mem=512M
    dom0-cmdline: console=hvc0 quiet
"""

EPOCH = 1_700_000_000


@pytest.fixture
def distro(tmp_path: Path) -> manifest.Distro:
    (tmp_path / "installer").mkdir()
    (tmp_path / "distro.yaml").write_text(DISTRO)
    return manifest.load(tmp_path / "distro.yaml")


def fake_rootfs(root: Path, squashfs_size: int = 64 * 1024) -> Path:
    """The files the rootfs stage hands over, with stand-in contents (nothing here boots)."""
    (root / "boot").mkdir(parents=True)
    with open(root / "rootfs.squashfs", "wb") as f:
        f.truncate(squashfs_size)
    (root / "packages.json").write_text(json.dumps({"xen-hypervisor-4.17-amd64": "4.17.5"}) + "\n")
    for name in ("xen.gz", "vmlinuz", "initrd.img", "disk-initrd.img-6.1.0-1-amd64"):
        (root / "boot" / name).write_bytes(name.encode() * 100)
    return root


def inputs(distro: manifest.Distro, rootfs: Path) -> iso.Inputs:
    return iso.Inputs(distro, rootfs, "rootfs-key", iso.host_loaders(), iso.GuestTools(), EPOCH)


def xorriso_report(path: Path) -> str:
    proc = subprocess.run(
        ["xorriso", "-indev", str(path), "-report_el_torito", "plain", "-report_system_area", "plain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=True,
    )
    return proc.stdout


def test_menu_has_each_mode_with_serial_variants_first(distro: manifest.Distro) -> None:
    entries = iso.menu(distro)
    assert [e.id for e in entries] == [
        "install-serial",
        "unattended-serial",
        "rescue-serial",
        "install",
        "unattended",
        "rescue",
    ]
    for e in entries:
        assert e.xen == "console=com1,vga com1=115200 dom0_mem=512M"
        assert "boot=live" in e.dom0 and "quiet" in e.dom0
    # The last console= is dom0's main one: the serial console (hvc0) in the serial variants.
    assert entries[0].dom0.split("console=")[-1].startswith("hvc0")
    assert entries[3].dom0.split("console=")[-1].startswith("tty0")
    assert "xenspin.mode=unattended" in entries[1].dom0 and "xenspin.mode=rescue" in entries[5].dom0


def test_loader_configs_carry_the_manifest_command_lines(distro: manifest.Distro) -> None:
    entries = iso.menu(distro)
    cfg = iso.isolinux_cfg(distro, entries)
    assert cfg.startswith("serial 0 115200\n")
    assert "default install-serial" in cfg and "timeout 30" in cfg
    assert (
        "append /boot/xen.gz console=com1,vga com1=115200 dom0_mem=512M --- /live/vmlinuz "
        "boot=live console=tty0 console=hvc0 quiet xenspin.mode=install --- /live/initrd.img"
    ) in cfg
    grub = iso.grub_cfg(distro, entries)
    assert "serial --unit=0 --speed=115200" in grub and "terminal_output serial console" in grub
    assert "search --no-floppy --set=root --file /live/filesystem.squashfs" in grub
    assert "multiboot2 /boot/xen.gz placeholder console=com1,vga com1=115200 dom0_mem=512M" in grub
    assert grub.count("menuentry ") == 6 and "set timeout=3" in grub


def test_serial_off_leaves_the_serial_port_alone(tmp_path: Path) -> None:
    (tmp_path / "installer").mkdir()
    (tmp_path / "distro.yaml").write_text(DISTRO.replace("    timeout: 3\n", "    timeout: 3\n    serial: false\n"))
    distro = manifest.load(tmp_path / "distro.yaml")
    entries = iso.menu(distro)
    assert [e.id for e in entries] == ["install", "unattended", "rescue"]
    assert "serial" not in iso.isolinux_cfg(distro, entries)
    assert "serial" not in iso.grub_cfg(distro, entries)


def test_iso9660_names_are_level3_d_characters() -> None:
    assert iso.iso9660_name("live/filesystem.squashfs") == "/LIVE/FILESYSTEM.SQUASHFS;1"
    assert iso.iso9660_name("live/vmlinuz") == "/LIVE/VMLINUZ.;1"
    assert iso.iso9660_name(".disk", directory=True) == "/_DISK"
    long = iso.iso9660_name("guest-tools/xenbus/a.very-long.name.for.a.driver.file.inf")
    assert long.startswith("/GUEST_TOOLS/XENBUS/") and len(long.rsplit("/", 1)[1]) <= 32


def test_iso_boots_both_ways_by_its_layout_and_rebuilds_identically(distro: manifest.Distro, tmp_path: Path) -> None:
    rootfs = fake_rootfs(tmp_path / "rootfs")
    first = iso.obtain(inputs(distro, rootfs), Store(tmp_path / "store1"))
    assert first.iso.name == "tiny-2.5-amd64.iso"
    report = xorriso_report(first.iso)
    # Two El Torito entries: ISOLINUX for BIOS, the FAT image for UEFI.
    assert "El Torito boot img :   1  BIOS" in report
    assert "El Torito boot img :   2  UEFI" in report
    assert "/isolinux/isolinux.bin" in report and "/boot/grub/efi.img" in report
    assert "isohybrid-suitable" in report
    # An MBR for BIOS USB boot, a partition pointing at the EFI image, a consistent GPT.
    assert "MBR isohybrid" in report and "GPT" in report
    assert "MBR partition      :   2   0x00  0xef" in report
    assert "CRC" not in report and "differ" not in report
    assert "Volume id    : 'TINY_25'" in report
    # The EFI image holds GRUB under the removable-media path.
    listing = subprocess.run(
        [
            "xorriso",
            "-indev",
            str(first.iso),
            "-osirrox",
            "on",
            "-extract",
            "/boot/grub/efi.img",
            str(tmp_path / "efi"),
        ],
        capture_output=True,
        check=True,
    )
    assert listing.returncode == 0
    mdir = subprocess.run(["mdir", "-i", str(tmp_path / "efi"), "::/EFI/BOOT"], capture_output=True, text=True)
    assert "BOOTX64  EFI" in mdir.stdout
    # Another store, later, another time zone: the same bytes.
    time.sleep(1.1)
    env_tz = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        second = iso.obtain(inputs(distro, rootfs), Store(tmp_path / "store2"))
    finally:
        if env_tz is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = env_tz
        time.tzset()
    assert sha256_file(second.iso) == sha256_file(first.iso)
    # Same key, same store: nothing is written again.
    again = iso.obtain(inputs(distro, rootfs), Store(tmp_path / "store1"))
    assert again.iso == first.iso and again.info["seconds"] == first.info["seconds"]


def test_files_are_on_the_iso_under_their_rock_ridge_names(distro: manifest.Distro, tmp_path: Path) -> None:
    made = iso.obtain(inputs(distro, fake_rootfs(tmp_path / "rootfs")), Store(tmp_path / "store"))
    listing = subprocess.run(
        ["xorriso", "-indev", str(made.iso), "-find", "/", "-type", "f"], capture_output=True, text=True, check=True
    ).stdout
    for path in (
        "/live/filesystem.squashfs",
        "/live/vmlinuz",
        "/live/initrd.img",
        "/live/disk-initrd.img-6.1.0-1-amd64",
        "/boot/xen.gz",
        "/packages.json",
        "/isolinux/isolinux.bin",
        "/isolinux/mboot.c32",
        "/isolinux/ldlinux.c32",
        "/isolinux/isolinux.cfg",
        "/boot/grub/efi.img",
    ):
        assert f"'{path}'" in listing, path


def test_publish_writes_outputs_and_checksums(distro: manifest.Distro, tmp_path: Path) -> None:
    made = iso.obtain(inputs(distro, fake_rootfs(tmp_path / "rootfs")), Store(tmp_path / "store"))
    out = tmp_path / "out"
    paths = iso.publish(made, out, {"lock": "abc", "left_out": {}})
    names = sorted(p.name for p in out.iterdir())
    assert names == ["SHA256SUMS", "build-info.json", "packages.json", "tiny-2.5-amd64.iso"]
    assert {p.name for p in paths} == set(names)
    sums = dict(reversed(line.split("  ")) for line in (out / "SHA256SUMS").read_text().splitlines())
    assert sums["tiny-2.5-amd64.iso"] == sha256_file(out / "tiny-2.5-amd64.iso")
    assert sums["build-info.json"] == sha256_file(out / "build-info.json")
    assert json.loads((out / "build-info.json").read_text())["lock"] == "abc"
    # Published again (a rebuild with nothing changed): no temporary file left beside them.
    iso.publish(made, out, {"lock": "abc", "left_out": {}})
    assert sorted(p.name for p in out.iterdir()) == names


def test_missing_rootfs_file_is_one_line(distro: manifest.Distro, tmp_path: Path) -> None:
    rootfs = fake_rootfs(tmp_path / "rootfs")
    (rootfs / "boot" / "xen.gz").unlink()
    with pytest.raises(iso.IsoError, match=r"^iso: the rootfs output lacks boot/xen.gz"):
        iso.obtain(inputs(distro, rootfs), Store(tmp_path / "store"))
    (rootfs / "boot" / "xen.gz").write_bytes(b"xen")
    (rootfs / "boot" / "disk-initrd.img-6.1.0-1-amd64").unlink()
    with pytest.raises(iso.IsoError, match=r"^iso: the rootfs output lacks boot/disk-initrd.img-KVER"):
        iso.obtain(inputs(distro, rootfs), Store(tmp_path / "store"))


CUT = """\
import sys
from pathlib import Path
from builder import iso, manifest
from builder.store import Store
distro = manifest.load(Path(sys.argv[1]))
inp = iso.Inputs(distro, Path(sys.argv[2]), "k", iso.host_loaders(), iso.GuestTools(), 1700000000)
made = iso.obtain(inp, Store(Path(sys.argv[3])))
iso.publish(made, Path(sys.argv[4]), {})
"""


def test_a_cut_iso_write_leaves_nothing_under_the_final_name(distro: manifest.Distro, tmp_path: Path) -> None:
    # A rootfs big enough that writing the ISO takes a moment; killed while it is written.
    rootfs = fake_rootfs(tmp_path / "rootfs", squashfs_size=1536 << 20)
    with open(rootfs / "rootfs.squashfs", "r+b") as f:  # not sparse-looking to the reader: real bytes
        f.write(os.urandom(1 << 20))
    store, out = tmp_path / "store", tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", CUT, str(tmp_path / "distro.yaml"), str(rootfs), str(store), str(out)],
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        written = [p for p in (store / "tmp").glob("iso.*/*.iso") if p.stat().st_size > 32 << 20]
        if written:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the ISO was written before it could be cut"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list((store / "objects").glob("iso/*/*.iso"))
    assert not (out / "tiny-2.5-amd64.iso").exists()
    # The next run finishes the job.
    (rootfs / "rootfs.squashfs").write_bytes(b"small now")
    subprocess.run(
        [sys.executable, "-c", CUT, str(tmp_path / "distro.yaml"), str(rootfs), str(store), str(out)], check=True
    )
    assert (out / "tiny-2.5-amd64.iso").is_file()


def guest_deb(tmp_path: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """A .deb as the win-* recipes make it: the driver tree under usr/share/xenspin/guest-tools/NAME."""
    root = tmp_path / f"pkg-{name}"
    for rel, data in files.items():
        dest = root / "usr/share/xenspin/guest-tools" / name / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(
        f"Package: xenspin-guest-tools-{name}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: t <t@example.org>\nDescription: t\n"
    )
    deb = tmp_path / f"{name}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(deb)], check=True, capture_output=True)
    return deb


def test_guest_tools_become_their_own_iso_and_a_directory(distro: manifest.Distro, tmp_path: Path) -> None:
    debs = {
        "win-xenbus": [guest_deb(tmp_path, "xenbus", "9.0.0-1", {"x64/xenbus.sys": b"bus", "xenbus.inf": b"inf"})],
        "win-xennet": [guest_deb(tmp_path, "xennet", "9.0.1-1", {"x64/xennet.sys": b"net"})],
    }
    guest = iso.GuestTools(debs)
    inp = iso.Inputs(distro, fake_rootfs(tmp_path / "rootfs"), "k", iso.host_loaders(), guest, EPOCH)
    made = iso.obtain(inp, Store(tmp_path / "store"))
    assert made.guest_iso is not None
    assert made.info["guest_tools"] == {
        "win-xenbus": {"package": "xenspin-guest-tools-xenbus", "version": "9.0.0-1"},
        "win-xennet": {"package": "xenspin-guest-tools-xennet", "version": "9.0.1-1"},
    }
    out = tmp_path / "x"
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(made.guest_iso), "-extract", "/", str(out)],
        check=True,
        capture_output=True,
    )
    assert (out / "xenbus/x64/xenbus.sys").read_bytes() == b"bus"
    sums = (out / "SHA256SUMS").read_text().splitlines()
    assert f"{sha256_file(out / 'xennet/x64/xennet.sys')}  xennet/x64/xennet.sys" in sums
    assert json.loads((out / "versions.json").read_text())["win-xennet"]["version"] == "9.0.1-1"
    listing = subprocess.run(
        ["xorriso", "-indev", str(made.iso), "-find", "/guest-tools", "-type", "f"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "'/guest-tools/xenbus/x64/xenbus.sys'" in listing and "'/guest-tools/SHA256SUMS'" in listing
    published = iso.publish(made, tmp_path / "pub", {})
    assert "guest-tools.iso" in {p.name for p in published}
    assert "guest-tools.iso" in (tmp_path / "pub/SHA256SUMS").read_text()
