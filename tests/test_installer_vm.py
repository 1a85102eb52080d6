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


def loop_disk(image: Path) -> str:
    """An empty 8 GiB image attached as a loop device (the caller detaches it)."""
    with open(image, "wb") as f:
        f.truncate(8 * GiB)
    return subprocess.run(
        ["losetup", "--find", "--show", "--partscan", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.root
def test_install_onto_a_loop_device(default_build, tmp_path: Path) -> None:
    dev = loop_disk(tmp_path / "disk.img")
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


def run_installer(tmp_path: Path, answer: str, squashfs: Path, name: str, login: Path | None = None) -> str:
    """The installer from the checkout, as the ISO runs it; its output (it must succeed)."""
    (tmp_path / f"{name}.yaml").write_text(answer)
    (tmp_path / "cmdline").write_text("console=hvc0\n")
    argv = [sys.executable, "-m", "xenspin_installer", "--answerfile", str(tmp_path / f"{name}.yaml")]
    argv += [
        "--squashfs",
        str(squashfs),
        "--log",
        str(tmp_path / f"{name}.log"),
        "--cmdline",
        str(tmp_path / "cmdline"),
    ]
    argv += ["--medium", str(tmp_path), *(["--test-login", str(login)] if login else [])]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr + (tmp_path / f"{name}.log").read_text()[-3000:]
    return proc.stdout


def partnames(dev: str) -> dict[int, str]:
    out = subprocess.run(["partx", "-g", "-o", "NR,NAME", "-r", dev], capture_output=True, text=True, check=True)
    return {int(nr): name for nr, name in (line.split(" ", 1) for line in out.stdout.splitlines())}


def check_upgrade_and_restore(tmp_path: Path, squashfs: Path) -> None:
    """Install, change the host as its administrator would, upgrade, check what was kept; restore; check the names."""
    dev = loop_disk(tmp_path / "disk.img")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = lambda n: f"{dev}p{n}"  # noqa: E731
    try:
        run_installer(tmp_path, f"disk: {dev}\nhostname: kept\nroot:\n  password: s3cret\n", squashfs, "install")
        subprocess.run(["partprobe", dev], check=False)
        assert partnames(dev) == {1: "biosboot", 2: "esp", 3: "xenspin-root", 4: "xenspin-backup", 5: "local"}
        # the administrator's changes, and what the first boot made
        subprocess.run(["mount", p(3), str(mnt)], check=True)
        try:
            (mnt / "etc/xenspin-upgrade-test").write_text("mine\n")
            (mnt / "etc/issue").write_text("changed by the administrator\n")
            (mnt / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
            (mnt / "etc/ssh/ssh_host_ed25519_key").write_text("host key\n")
            (mnt / "root/notes").write_text("root's\n")
            with open(mnt / "etc/passwd", "a") as f:
                f.write("alice:x:1000:1000:Alice:/home/alice:/bin/bash\n")
            with open(mnt / "etc/shadow", "a") as f:
                f.write("alice:$6$salt$hash:19000:0:99999:7:::\n")
            root_hash = next(ln for ln in (mnt / "etc/shadow").read_text().splitlines() if ln.startswith("root:"))
            issue_as_shipped = (mnt / "etc/os-release").read_text()
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
        old_uuid = blkid(p(3), "UUID")
        login = tmp_path / "login"
        login.write_bytes(testguest.login_file(testguest.throwaway_login())[TEST_LOGIN])
        out = run_installer(tmp_path, f"mode: upgrade\ndisk: {dev}\n", squashfs, "upgrade", login)
        assert f"xenspin upgraded on {dev} (" in out
        subprocess.run(["partprobe", dev], check=False)
        assert partnames(dev)[3] == "xenspin-backup" and partnames(dev)[4] == "xenspin-root"
        assert blkid(p(3), "UUID") == old_uuid  # the old root is as it was
        subprocess.run(["mount", "-o", "ro", p(4), str(mnt)], check=True)
        try:
            assert (mnt / "etc/xenspin-upgrade-test").read_text() == "mine\n"
            assert (mnt / "etc/issue").read_text() == "changed by the administrator\n"
            assert (mnt / "etc/hostname").read_text() == "kept\n"
            assert (mnt / "etc/machine-id").read_text() == "0123456789abcdef0123456789abcdef\n"
            assert (mnt / "etc/ssh/ssh_host_ed25519_key").read_text() == "host key\n"
            assert (mnt / "root/notes").read_text() == "root's\n"
            assert (mnt / "etc/os-release").read_text() == issue_as_shipped  # the new release's own
            shadow = (mnt / "etc/shadow").read_text().splitlines()
            assert root_hash in shadow and "alice:$6$salt$hash:19000:0:99999:7:::" in shadow
            assert "alice:x:1000:1000:Alice:/home/alice:/bin/bash" in (mnt / "etc/passwd").read_text()
            assert f"{TEST_USER}:x:0:0" in (mnt / "etc/passwd").read_text()
            fstab = (mnt / "etc/fstab").read_text()
            assert f"UUID={blkid(p(4), 'UUID')}\t/\text4" in fstab and old_uuid not in fstab
            grub = (mnt / "boot/grub/grub.cfg").read_text()
            assert f"root=UUID={blkid(p(4), 'UUID')}" in grub
            assert "menuentry 'Previous release: " in grub and f"--set=root {old_uuid}" in grub
            assert (mnt / "etc/grub.d/42_xenspin_previous").stat().st_mode & 0o111
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
        out = run_installer(tmp_path, f"mode: restore\ndisk: {dev}\n", squashfs, "restore")
        assert f"xenspin restored on {dev} (" in out
        subprocess.run(["partprobe", dev], check=False)
        assert partnames(dev)[3] == "xenspin-root" and partnames(dev)[4] == "xenspin-backup"
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)


@pytest.mark.root
def test_upgrade_keeps_the_hosts_state_and_restore_switches_back(default_build, tmp_path: Path) -> None:
    check_upgrade_and_restore(tmp_path, default_build.rootfs / "rootfs.squashfs")
