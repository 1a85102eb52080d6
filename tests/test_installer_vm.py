"""The installer end to end on the default distribution: a real install onto a loop device,
checked from outside (partitions, fstab, GRUB's Xen entry, the initramfs, the password, the test login, the log).

Slow: the default build (session fixture), loop devices (root).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from xenspin_installer.install import TEST_USER
from xenspin_installer.sources import TEST_LOGIN

from builder import testguest

pytestmark = [pytest.mark.slow, pytest.mark.network]

GiB = 1024**3


def blkid(dev: str, tag: str) -> str:
    return subprocess.run(
        ["blkid", "-s", tag, "-o", "value", dev], capture_output=True, text=True, check=True
    ).stdout.strip()


def boot_lines(cfg: str) -> dict[str, list[str]]:
    """The load lines (multiboot2, module2, linux, initrd) of the first Xen entry and the first Linux entry."""
    entries: dict[str, list[str]] = {}
    for entry in cfg.split("menuentry ")[1:]:
        kind = "xen" if "multiboot2" in entry else "linux"
        loads = [
            " ".join(line.split())
            for line in entry.splitlines()
            if line.split()[:1] in (["multiboot2"], ["module2"], ["linux"], ["initrd"])
        ]
        entries.setdefault(kind, [line.replace("${xen_rm_opts}", "").strip() for line in loads])
    return entries


def update_grub(root: str, mnt: Path) -> str:
    """What Debian's grub-mkconfig writes for the installed tree (root mounted on mnt, read-write)."""
    subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
    uuid = blkid(root, "UUID")
    link = Path("/dev/disk/by-uuid") / uuid  # no udev here: grub-mkconfig writes root=UUID= only with the link
    made = not link.exists()
    mounts = []
    try:
        if made:
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(root)
        for fs in ("dev", "proc", "sys"):
            subprocess.run(["mount", "--rbind", "--make-rslave", f"/{fs}", str(mnt / fs)], check=True)
            mounts.append(mnt / fs)
        subprocess.run(["chroot", str(mnt), "grub-mkconfig", "-o", "/tmp/grub.cfg"], check=True, capture_output=True)
        return (mnt / "tmp/grub.cfg").read_text()
    finally:
        for m in reversed(mounts):
            subprocess.run(["umount", "--lazy", str(m)], check=False)
        if made:
            link.unlink(missing_ok=True)


@pytest.mark.root
def test_install_onto_a_loop_device(default_build, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(8 * GiB)
    dev = subprocess.run(
        ["losetup", "--find", "--show", "--partscan", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        answer = tmp_path / "answer.yaml"
        answer.write_text(
            f"disk: {dev}\nhostname: looped\nroot:\n  password: s3cret\nserial-console: true\ntimezone: Europe/Berlin\n"
        )
        (tmp_path / "cmdline").write_text("console=hvc0\n")
        login = testguest.throwaway_login()  # as `xenspin test install` puts it on the answer disk
        (tmp_path / "login").write_bytes(testguest.login_file(login)[TEST_LOGIN])
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "xenspin_installer",
                "--answerfile",
                str(answer),
                "--squashfs",
                str(default_build.rootfs / "rootfs.squashfs"),
                "--log",
                str(tmp_path / "install.log"),
                "--cmdline",
                str(tmp_path / "cmdline"),
                "--medium",
                str(tmp_path),
                "--test-login",
                str(tmp_path / "login"),
            ],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr + (tmp_path / "install.log").read_text()[-3000:]
        assert f"xenspin installed on {dev}" in proc.stdout
        subprocess.run(["partprobe", dev], check=False)
        root, esp = f"{dev}p3", f"{dev}p2"
        assert blkid(root, "LABEL") == "xenspin-root" and blkid(esp, "TYPE") == "vfat"
        subprocess.run(["mount", "-o", "ro", root, str(mnt)], check=True)
        try:
            fstab = (mnt / "etc/fstab").read_text()
            assert (
                f"UUID={blkid(root, 'UUID')}\t/\text4" in fstab
                and f"UUID={blkid(esp, 'UUID')}\t/boot/efi\tvfat" in fstab
            )
            assert (mnt / "etc/hostname").read_text() == "looped\n"
            assert os.readlink(mnt / "etc/localtime") == "/usr/share/zoneinfo/Europe/Berlin"
            shadow = next(line for line in (mnt / "etc/shadow").read_text().splitlines() if line.startswith("root:"))
            assert shadow.split(":")[1].startswith(("$y$", "$6$")) and "s3cret" not in shadow
            # the test login: a second name for uid 0 with the harness's hash; root's own entry untouched by it
            assert f"{TEST_USER}:x:0:0:xenspin test install:/root:/bin/bash" in (mnt / "etc/passwd").read_text()
            assert f"\n{TEST_USER}:{login.hash}:" in (mnt / "etc/shadow").read_text()
            log = (mnt / "var/log/xenspin-install.log").read_text()
            assert "s3cret" not in log and login.hash not in log and shadow.split(":")[1] not in log
            grub = (mnt / "boot/grub/grub.cfg").read_text()
            assert (
                "set default='xenspin GNU/Linux, with Xen hypervisor'" in grub
                and f"root=UUID={blkid(root, 'UUID')}" in grub
            )
            assert "multiboot2" in grub and "com1=115200" in grub and "console=hvc0" in grub
            # the disk boots with the initrd the rootfs stage made without live-boot
            [initrd] = (mnt / "boot").glob("initrd.img-*")
            made = default_build.rootfs / "boot" / initrd.name.replace("initrd.img-", "disk-initrd.img-")
            assert initrd.read_bytes() == made.read_bytes()
            conf = (mnt / "etc/initramfs-tools/update-initramfs.conf").read_text()
            assert "update_initramfs=yes" in conf and "update_initramfs=no" not in conf  # put back as it was
            status = (mnt / "var/lib/dpkg/status").read_text()
            assert "Package: live-boot\n" not in status
            assert "xenspin installer" in log
            assert not list((mnt / "etc/ssh").glob("ssh_host_*_key"))  # made on the first boot
            assert (mnt / "etc/machine-id").read_text() == ""
            # The installer writes grub.cfg itself: its entries load what update-grub's would, with the same arguments.
            assert boot_lines(grub) == boot_lines(update_grub(root, mnt))
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
        efi = subprocess.run(["mdir", "-b", "-i", esp, "::/EFI/BOOT"], capture_output=True, text=True)
        assert "BOOTX64.EFI" in efi.stdout.upper()
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)
