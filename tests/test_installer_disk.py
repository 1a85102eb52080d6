"""The installer against real block devices (loop devices): what it refuses leaves the disk byte-identical.

Needs root (marker root), losetup and the host's partitioning tools (`xenspin setup`); a few
seconds each, so they run in the fast suite.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

MiB = 1024 * 1024


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def attach(image: Path) -> str:
    dev = subprocess.run(
        ["losetup", "--find", "--show", "--partscan", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    subprocess.run(["partprobe", dev], check=False)  # --partscan's scan may come late without udev
    return dev


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A 256 MiB image holding an ext4 filesystem with a file, attached as a loop device."""
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(256 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "precious", str(image)], check=True)
    subprocess.run(["debugfs", "-w", "-R", "mkdir keep", str(image)], check=True, capture_output=True)
    dev = attach(image)
    try:
        yield image, dev
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)


@pytest.fixture
def tiny_squashfs(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text('PRETTY_NAME="tiny"\n')
    out = tmp_path / "filesystem.squashfs"
    subprocess.run(["mksquashfs", str(tree), str(out), "-quiet", "-no-progress"], check=True)
    return out


def installer(tmp_path: Path, answer: str, squashfs: Path, *extra: str) -> subprocess.CompletedProcess:
    af = tmp_path / "answer.yaml"
    af.write_text(answer)
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=hvc0\n")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "xenspin_installer",
            "--answerfile",
            str(af),
            "--squashfs",
            str(squashfs),
            "--log",
            str(tmp_path / "install.log"),
            "--cmdline",
            str(cmdline),
            "--medium",
            str(tmp_path),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_disk_holding_a_filesystem_not_named_for_wiping_is_refused_unchanged(
    tmp_path, loop_disk, tiny_squashfs
) -> None:
    image, dev = loop_disk
    before = sha256(image)
    proc = installer(tmp_path, f"disk: {dev}\nroot: {{password: x}}\n", tiny_squashfs)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (
        proc.stderr
        == f"xenspin installer: disk {dev}: holds an ext4 filesystem; refusing to erase it (set wipe: true)\n"
    )
    assert sha256(image) == before
    ran = [line for line in (tmp_path / "install.log").read_text().splitlines() if "] $ " in line]
    # only what reads: partx reads the partition names of any other disk that has partitions
    # (a loop device another program attached is one), wipefs with --no-act
    readers = ("udevadm", "lsblk", "partx", "wipefs")
    assert ran and all(line.split("] $ ")[1].split()[0] in readers for line in ran), ran
    assert all("--no-act" in line for line in ran if " wipefs " in line)


def test_a_bad_answerfile_stops_before_any_write(tmp_path, loop_disk, tiny_squashfs) -> None:
    image, dev = loop_disk
    before = sha256(image)
    proc = installer(
        tmp_path,
        f"disk: {dev}\nwipe: true\nroot: {{password: x}}\nnetwork:\n  mode: static\n  address: 192.0.2.1\n",
        tiny_squashfs,
    )
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        "answer.yaml:6: network.address: '192.0.2.1' has no prefix length (expected e.g. 192.0.2.10/24)"
    )
    assert sha256(image) == before
    assert "] $ " not in (tmp_path / "install.log").read_text()


def test_a_named_disk_too_small_is_refused_unchanged_even_with_wipe(tmp_path, loop_disk, tiny_squashfs) -> None:
    image, dev = loop_disk
    before = sha256(image)
    proc = installer(tmp_path, f"disk: {dev}\nwipe: true\nroot: {{password: x}}\n", tiny_squashfs)
    assert proc.returncode == 2
    assert proc.stderr == "xenspin installer: disk is too small: 256.0 MiB (expected at least 6.3 GiB)\n"
    assert sha256(image) == before


def test_check_mode_plans_without_writing(tmp_path, tiny_squashfs) -> None:
    image = tmp_path / "big.img"
    with open(image, "wb") as f:
        f.truncate(8 * 1024 * MiB)
    dev = attach(image)
    try:
        proc = installer(tmp_path, f"disk: {dev}\nroot: {{password: x}}\n", tiny_squashfs, "--check")
        assert proc.returncode == 0, proc.stderr
        assert f"would install to {dev} (8.0 GiB) (nothing written)" in proc.stdout
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)
    with open(image, "rb") as f:
        assert f.read(MiB) == bytes(MiB)


# --- upgrade and restore: what they refuse leaves the disk as it was ------------------------


def os_release_squashfs(tmp_path: Path, distro_id: str) -> Path:
    tree = tmp_path / f"tree-{distro_id}"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/os-release").write_text(f'PRETTY_NAME="{distro_id} 0.2"\nNAME="{distro_id}"\nID={distro_id}\n')
    out = tmp_path / f"{distro_id}.squashfs"
    subprocess.run(["mksquashfs", str(tree), str(out), "-quiet", "-no-progress"], check=True)
    return out


@pytest.fixture
def two_root_disk(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A 256 MiB image with the two-root layout whose root in use holds Debian (not xenspin), attached."""
    image = tmp_path / "layout.img"
    with open(image, "wb") as f:
        f.truncate(256 * MiB)
    names = ["biosboot", "esp", "xenspin-root", "xenspin-backup", "local"]
    args = ["sgdisk", "--clear"]
    for n, (name, size) in enumerate(zip(names, ["1M", "32M", "64M", "64M", "0"], strict=True), start=1):
        args += [f"--new={n}:0:+{size}" if size != "0" else f"--new={n}:0:0", f"--change-name={n}:{name}"]
    subprocess.run([*args, str(image)], check=True, capture_output=True)
    dev = attach(image)
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", f"{dev}p3"], check=True)
        release = tmp_path / "debian-os-release"
        release.write_text('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nNAME="Debian GNU/Linux"\nID=debian\n')
        for cmd in ("mkdir etc", f"write {release} etc/os-release"):
            subprocess.run(["debugfs", "-w", "-R", cmd, f"{dev}p3"], check=True, capture_output=True)
        yield image, dev
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)


def test_an_upgrade_of_a_disk_holding_another_system_is_refused_unchanged(tmp_path, two_root_disk) -> None:
    image, dev = two_root_disk
    before = sha256(image)
    proc = installer(tmp_path, f"mode: upgrade\ndisk: {dev}\n", os_release_squashfs(tmp_path, "xenspin"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == (
        f"xenspin installer: {dev}p3: holds Debian GNU/Linux 13 (trixie), not xenspin; this installer upgrades "
        "and restores only xenspin (install fresh, with wipe, to replace it)\n"
    )
    assert sha256(image) == before


def test_a_restore_with_nothing_kept_is_refused_unchanged(tmp_path, two_root_disk) -> None:
    image, dev = two_root_disk
    before = sha256(image)
    proc = installer(tmp_path, f"mode: restore\ndisk: {dev}\n", os_release_squashfs(tmp_path, "xenspin"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == (
        f"xenspin installer: disk {dev}: its second root {dev}p4 is empty: no release kept by an upgrade to restore\n"
    )
    assert sha256(image) == before


def test_an_upgrade_of_a_disk_without_an_installation_is_refused_unchanged(tmp_path, loop_disk) -> None:
    image, dev = loop_disk
    before = sha256(image)
    proc = installer(tmp_path, f"mode: upgrade\ndisk: {dev}\n", os_release_squashfs(tmp_path, "xenspin"))
    assert proc.returncode == 2
    assert proc.stderr == (
        f"xenspin installer: disk {dev}: holds no xenspin installation (it holds an ext4 filesystem)\n"
    )
    assert sha256(image) == before


def test_an_upgrade_of_an_install_from_before_the_two_roots_is_refused_unchanged(tmp_path) -> None:
    image = tmp_path / "old-layout.img"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    args = ["sgdisk", "--clear"]
    for n, name in enumerate(["biosboot", "esp", "root", "local"], start=1):
        args += [f"--new={n}:0:+8M", f"--change-name={n}:{name}"]
    subprocess.run([*args, str(image)], check=True, capture_output=True)
    before = sha256(image)
    dev = attach(image)
    try:
        proc = installer(tmp_path, "mode: upgrade\n", os_release_squashfs(tmp_path, "xenspin"), "--disk", dev)
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)
    assert proc.returncode == 2
    assert proc.stderr == (
        f"xenspin installer: disk {dev}: holds an install made before upgrades existed (one root partition, no "
        "second one to install beside it); back up what it holds and install fresh\n"
    )
    assert sha256(image) == before
