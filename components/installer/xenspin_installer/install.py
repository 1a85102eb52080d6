"""Run an install: the disk plan from disks.py made real, the rootfs unpacked and set up to boot Xen.

Each step is a method named for what it does; every command goes through Runner, so
the install log holds the whole story and is copied into the installed system. No
password, plain or hashed, is ever in that log: it goes to chpasswd on its input, and
Runner masks it in what chpasswd says.

The installer's own file operations in the target and on the medium (writes, the copies
of boot files, initrds, GRUB modules and the log) name files through confined.py: a
symlink the root filesystem image brings is followed as in a chroot of the target,
never out of it into the live system.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os
import shutil
import stat
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import DISK_INITRD, InstallerError, carry, confined
from .answerfile import Answerfile, Hook
from .bootloader import (
    EFI_CORE_MODULES,
    PREVIOUS_CFG,
    PREVIOUS_SCRIPT,
    boot_files,
    efi_early_config,
    grub_cfg,
    grub_defaults,
    parse_settings,
    previous_entry,
    read_settings_script,
)
from .disks import (
    VG_NAME,
    Disk,
    DiskError,
    Part,
    check_in_use,
    check_writable,
    installed,
    part_path,
    plan,
    sgdisk_args,
    swap_names_args,
)
from .run import Runner

CLONE_NEWNS = 0x00020000
LIVE_MEDIUM = Path("/run/live/medium")
SQUASHFS = LIVE_MEDIUM / "live" / "filesystem.squashfs"
LIVE_PACKAGES = ("live-boot", "live-boot-initramfs-tools", "live-config", "live-config-systemd", "live-tools")
LOG_ON_TARGET = "var/log/xenspin-install.log"
TEST_USER = "xenspin-test"  # the test login (Installer.add_test_login)
TEST_LOGIN_ADDED = f"adding the test login {TEST_USER}"  # said on the console: the harness looks for it
KEYGEN_UNIT = "xenspin-ssh-keygen.service"
# /etc/grub.d/ script: update-grub (a kernel upgrade) keeps the previous release's entry the installer wrote.
PREVIOUS_SCRIPT_TEXT = f"""#!/bin/sh
# written by the xenspin installer at an upgrade: the release kept on the other root
if [ -f {PREVIOUS_CFG} ]; then cat {PREVIOUS_CFG}; fi
"""
TIMESYNCD_UNIT = "systemd-timesyncd.service"
TIMESYNCD_CONF = "etc/systemd/timesyncd.conf.d/xenspin.conf"
FIRST_BOOT_KEYS = """\
[Unit]
Description=Generate this host's SSH host keys (xenspin, first boot)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=ssh.service
"""


@dataclass
class Layout:
    """The disk, the partitions a fresh install writes, and the device of each role, decided before any write.

    Roles: root (where the release goes, or the root a restore boots again), esp, backup and
    lvm (a fresh install), old (upgrade, restore: the root in use until now). swap: upgrade
    and restore, the partition numbers that become the root in use and the backup.
    """

    disk: Disk
    parts: list[Part]
    devs: dict[str, str] = field(default_factory=dict)
    swap: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not self.devs:  # a fresh install: each role's partition of the plan
            self.devs = {p.role: part_path(self.disk.path, p.number) for p in self.parts}

    def dev(self, role: str) -> str | None:
        return self.devs.get(role)


def decide(answer: Answerfile, disk: Disk) -> Layout:
    """The safety rules and the plan: raises before any write when the disk must not be touched."""
    if answer.mode == "install":
        check_writable(disk, wipe=answer.wipe)
        return Layout(disk, plan(disk.size, local_storage=answer.local_storage))
    check_in_use(disk)
    found = installed(disk)  # upgrade and restore both write the other root and make it the one in use
    if answer.mode == "restore" and not found.backup.fstype:
        raise DiskError(
            f"disk {disk.path}: its second root {found.backup.path} is empty: no release kept by an upgrade to restore"
        )
    devs = {"root": found.backup.path, "old": found.root.path, "esp": found.esp.path}
    return Layout(disk, [], devs, (found.backup.partn, found.root.partn))


def os_release(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep and k.strip() and not k.startswith("#"):
            out[k.strip()] = v.strip().strip('"').strip("'")
    return out


def pretty(info: dict[str, str]) -> str:
    return info.get("PRETTY_NAME") or " ".join(x for x in (info.get("NAME"), info.get("VERSION")) if x) or "unknown"


class Installer:
    def __init__(
        self,
        answer: Answerfile,
        layout: Layout,
        runner: Runner,
        squashfs: Path,
        *,
        medium: Path = LIVE_MEDIUM,
        test_login: str | None = None,
        workdir: Path | None = None,
    ):
        self.a = answer
        self.layout = layout
        self.r = runner
        self.squashfs = squashfs
        self.medium = medium
        self.test_login = test_login
        # mount points: the target, and the root in use during an upgrade; removed when run() ends
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="xenspin-install-"))
        self.own_workdir = workdir is None
        self.mnt = self.workdir / "target"
        self.old = self.workdir / "old"
        for point in (self.mnt, self.old):
            point.mkdir(mode=0o700, exist_ok=True)
        self.mounted: list[Path] = []
        self.previous: tuple[str, str] | None = None  # (title, root UUID) of the release an upgrade keeps

    def run(self) -> str:
        """Do what the answers' mode asks; returns the line that says what was done."""
        start = time.monotonic()
        if not self.squashfs.is_file():
            raise InstallerError(f"root filesystem image {self.squashfs}: not found")
        if not self.r.dry_run:
            private_mounts(self.r)
        try:
            done = {"install": self.install, "upgrade": self.upgrade, "restore": self.restore}[self.a.mode]()
            self.r.say(f"{self.a.mode} done in {time.monotonic() - start:.0f} s")
            if self.a.mode != "restore":
                self.copy_log()
                self.hooks("installation-complete", self.mnt)
            return done
        finally:
            self.unmount_all()

    def install(self) -> str:
        self.hooks("installation-start")
        self.partition()
        self.make_filesystems()
        self.unpack()
        self.configure()
        self.make_bootable()
        self.hooks("filesystem-populated", self.mnt)
        return f"xenspin installed on {self.layout.disk.path}"

    # --- upgrade and restore --------------------------------------------------------------

    def image_release(self) -> dict[str, str]:
        """os-release of the root filesystem image, read from it before anything is written."""
        if self.r.dry_run:
            return {}
        tmp = Path(tempfile.mkdtemp(prefix="xenspin-release-"))
        try:
            self.r.run(
                ["unsquashfs", "-no-progress", "-force", "-dest", str(tmp), str(self.squashfs)]
                + ["etc/os-release", "usr/lib/os-release"],
                "read the image's os-release",
                check=False,
                writes=False,
            )
            return os_release(confined.read_bytes(tmp, "etc/os-release", limit=65536).decode(errors="replace"))
        except (confined.Refused, OSError):
            return {}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def release_of(self, root: Path, dev: str) -> dict[str, str]:
        """os-release of the root mounted at root; InstallerError when it is not this distribution's."""
        try:
            info = os_release(confined.read_bytes(root, "etc/os-release", limit=65536).decode(errors="replace"))
        except (confined.Refused, OSError):
            info = {}
        if not info:
            raise InstallerError(f"{dev}: holds no installed system (no /etc/os-release)")
        mine = self.image_release()
        if mine and info.get("ID") != mine.get("ID"):
            name = mine.get("NAME") or mine.get("ID")
            raise InstallerError(
                f"{dev}: holds {pretty(info)}, not {name}; this installer upgrades and restores only {name} "
                "(install fresh, with wipe, to replace it)"
            )
        return info

    def upgrade(self) -> str:
        """The new release into the other root, with this host's state from the root in use; the old one stays."""
        disk, old_dev, new_dev = self.layout.disk.path, self.layout.dev("old"), self.layout.dev("root")
        self.mount(old_dev, self.old, "-o", "ro")
        before = self.release_of(self.old, old_dev) if not self.r.dry_run else {}
        if not self.r.dry_run and not confined.is_file(self.old, carry.RELEASE_ETC):
            raise InstallerError(
                f"{old_dev}: has no record of its release's /etc ({carry.RELEASE_ETC}); cannot tell this host's "
                "settings from the release's"
            )
        after = self.image_release()
        self.r.say(
            f"upgrading {pretty(before)} on {disk} to {pretty(after)}; {pretty(before)} stays on {old_dev} "
            "(boot menu: previous release; installer: restore)"
        )
        self.hooks("installation-start")
        self.r.run(["mkfs.ext4", "-F", "-q", "-L", "xenspin-root", new_dev], "make the new root filesystem")
        self.unpack()
        self.first_boot_identity()  # the image's own go; the host's come over with the rest
        self.carry_state()
        self.write_fstab()
        if self.test_login:
            self.add_test_login(self.test_login)
        self.previous = (f"Previous release: {pretty(before)}", self.uuid(old_dev))
        self.make_bootable()
        self.hooks("filesystem-populated", self.mnt)
        return f"xenspin upgraded on {disk} ({pretty(before)} -> {pretty(after)})"

    def carry_state(self) -> None:
        """The host's identity, settings and data from the old root (carry.py says what and why)."""
        self.r.say("carrying this host's settings and data over")
        if self.r.dry_run:
            return
        release = carry.parse_record(confined.read_bytes(self.old, carry.RELEASE_ETC).decode(errors="replace"))
        n = carry.copy(self.old, self.mnt, carry.carried(self.old, release))
        for accounts, shadow in carry.ACCOUNTS.items():
            if not (confined.is_file(self.old, accounts) and confined.is_file(self.mnt, accounts)):
                continue
            text, from_old = carry.merge_table(
                confined.read_bytes(self.mnt, accounts).decode(errors="replace"),
                confined.read_bytes(self.old, accounts).decode(errors="replace"),
                members=accounts == "etc/group",
            )
            confined.write_bytes(self.mnt, accounts, text.encode(), mode=None)
            if confined.is_file(self.old, shadow) and confined.is_file(self.mnt, shadow):
                merged = carry.merge_shadow(
                    confined.read_bytes(self.mnt, shadow).decode(errors="replace"),
                    confined.read_bytes(self.old, shadow).decode(errors="replace"),
                    from_old,
                )
                confined.write_bytes(self.mnt, shadow, merged.encode(), mode=None)
        self.r.log(f"carried {n} files, links and directories from {self.layout.dev('old')}; accounts merged")

    def restore(self) -> str:
        """Make the other root (the release before the last upgrade) the one in use again: only the boot changes."""
        disk, dev = self.layout.disk.path, self.layout.dev("root")
        self.mount(dev, self.mnt)
        info = self.release_of(self.mnt, dev) if not self.r.dry_run else {}
        if not self.r.dry_run:
            try:
                boot_files(self.mnt)
            except FileNotFoundError:
                raise InstallerError(f"{dev}: holds no kernel to boot; nothing to restore") from None
        self.r.say(
            f"restoring {pretty(info)} on {disk}; the release in use until now stays on {self.layout.dev('old')}"
        )
        for fs in ("dev", "proc", "sys", "run"):
            self.mount(f"/{fs}", self.mnt / fs, "--rbind", "--make-rslave")
        self.switch_root_and_boot()
        return f"xenspin restored on {disk} ({pretty(info)})"

    def switch_root_and_boot(self) -> None:
        """Swap the partition names (the one record of which root is in use), then point GRUB at the new one."""
        if self.layout.swap:
            active, other = self.layout.swap
            self.r.run(swap_names_args(self.layout.disk.path, active, other), "make it the root in use")
        self.chroot(["grub-install", "--target=i386-pc", self.layout.disk.path], "install GRUB for BIOS")
        self.install_efi_grub()

    # --- disk ----------------------------------------------------------------------

    def partition(self) -> None:
        disk = self.layout.disk.path
        self.r.say(f"partitioning {disk}")
        if self.layout.disk.contents():
            for child in self.layout.disk.children:
                self.r.run(["wipefs", "--all", child.path], f"erase signatures on {child.path}")
            self.r.run(["wipefs", "--all", disk], f"erase signatures on {disk}")
        self.r.run(["sgdisk", "--zap-all", disk], f"clear the partition table of {disk}")
        self.r.run(sgdisk_args(disk, self.layout.parts), f"partition {disk}")
        self.r.run(["partprobe", disk], f"re-read partitions of {disk}", check=False)
        self.r.run(["udevadm", "settle", "--timeout=20"], "wait for partitions", check=False)
        if not self.r.dry_run:
            for p in self.layout.parts:
                wait_for(Path(part_path(disk, p.number)))

    def make_filesystems(self) -> None:
        self.r.say("making filesystems")
        esp, root, lvm = self.layout.dev("esp"), self.layout.dev("root"), self.layout.dev("lvm")
        self.r.run(["mkfs.vfat", "-F", "32", "-n", "XSESP", esp], "make the EFI system partition")
        self.r.run(["mkfs.ext4", "-F", "-q", "-L", "xenspin-root", root], "make the root filesystem")
        # the second root stays empty until an upgrade: nothing left there from before may pass for a release
        self.r.run(["wipefs", "--all", self.layout.dev("backup")], "clear the second root")
        if lvm:
            self.r.run(["pvcreate", "--force", "--force", "--yes", lvm], "make the LVM physical volume")
            self.r.run(["vgcreate", "--yes", VG_NAME, lvm], f"make the LVM group {VG_NAME}")

    def mount(self, what: str | Path, where: Path, *opts: str) -> None:
        if where not in (self.mnt, self.old):  # a mount point in the target: resolved inside it, as in a chroot
            where = confined.resolve(self.mnt, where.relative_to(self.mnt))
        where.mkdir(parents=True, exist_ok=True)
        self.r.run(["mount", *opts, str(what), str(where)], f"mount {where}")
        self.mounted.append(where)

    def unmount_all(self) -> None:
        for where in reversed(self.mounted):
            self.r.run(["umount", "--lazy", str(where)], f"unmount {where}", check=False)
        self.mounted.clear()
        if self.layout.dev("lvm"):
            self.r.run(["vgchange", "--activate", "n", VG_NAME], "deactivate the LVM group", check=False)
        self.r.run(["sync"], "flush writes", check=False)
        made = [self.workdir / "target", self.old] + ([self.workdir] if self.own_workdir else [])
        for point in made:  # empty ones only: a busy one stays
            with contextlib.suppress(OSError):
                point.rmdir()

    # --- root filesystem --------------------------------------------------------------

    def unpack(self) -> None:
        self.mount(self.layout.dev("root"), self.mnt)
        self.r.say(f"unpacking the root filesystem from {self.squashfs}")
        self.r.run(
            ["unsquashfs", "-no-progress", "-force", "-dest", str(self.mnt), str(self.squashfs)],
            "unpack the root filesystem",
        )
        if not self.r.dry_run:
            self.copy_boot_files()
            confined.mkdirs(self.mnt, "boot/efi")
            # the release's /etc as shipped: the next upgrade tells the host's changes from it (carry.py)
            confined.write_bytes(self.mnt, carry.RELEASE_ETC, carry.record(self.mnt).encode(), 0o644)
        for fs in ("dev", "proc", "sys", "run"):
            self.mount(f"/{fs}", self.mnt / fs, "--rbind", "--make-rslave")

    @property
    def medium_tree(self) -> Path:
        """The tree the squashfs sits in (the medium: live/filesystem.squashfs): boot files beside it are read inside it."""
        return self.squashfs.parent.parent

    def copy_boot_files(self) -> None:
        """Kernel and Xen into the target's /boot when the squashfs left /boot out (they sit beside it).

        Each is copied as the regular file its name is inside its tree (the medium, or the
        live system for /boot): a `boot/vmlinuz-zzz -> /some/host/file` there is refused,
        never copied.
        """
        if glob.glob(str(confined.resolve(self.mnt, "boot") / "vmlinuz-*")):
            return
        live = self.squashfs.parent.name
        for tree, rel in ((self.medium_tree, "boot"), (self.medium_tree, f"{live}/boot"), (Path("/"), "boot")):
            src = confined.resolve(tree, rel)
            names = sorted(
                {
                    Path(f).name
                    for pat in ("vmlinuz-*", "config-*", "System.map-*", "xen-*")
                    for f in glob.glob(str(src / pat))
                }
            )
            if any(n.startswith("vmlinuz-") for n in names):
                for name in names:  # all checked before any is copied
                    confined.regular(tree, f"{rel}/{name}")
                for name in names:
                    confined.copy_file(tree, f"{rel}/{name}", self.mnt, f"boot/{name}")
                self.r.log(f"copied {len(names)} boot files from {src}")
                return
        raise InstallerError(f"no kernel in the root filesystem image {self.squashfs} nor beside it")

    def chroot(self, cmd: list[str], what: str, **kw) -> str:
        env = ["env", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C.UTF-8", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
        return self.r.run(["chroot", str(self.mnt), *env, *cmd], what, **kw)

    def write(self, rel: str, text: str, mode: int | None = 0o644) -> None:
        """Write a file of the target, through a temporary name (never half-written, never through a link).

        mode None keeps the mode of the file replaced.
        """
        self.r.log(f"write /{rel}")
        if self.r.dry_run:
            return
        confined.write_bytes(self.mnt, rel, text.encode(), mode)

    def uuid(self, dev: str) -> str:
        return self.r.run(["blkid", "-s", "UUID", "-o", "value", dev], f"read the UUID of {dev}", capture=True).strip()

    @functools.cached_property
    def root_uuid(self) -> str:
        """The root filesystem's UUID, read once after mkfs: fstab, grub.cfg and the UEFI image name it."""
        return self.uuid(self.layout.dev("root"))

    def configure(self) -> None:
        a = self.a
        self.r.say("configuring the system")
        self.write_fstab()
        short = a.hostname.split(".")[0]  # Debian's way: the short name in /etc/hostname, the full one in hosts
        self.write("etc/hostname", short + "\n")
        names = a.hostname if short == a.hostname else f"{a.hostname}\t{short}"
        self.write(
            "etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{names}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        )
        networkd = network_config(a)
        if networkd:
            self.write("etc/systemd/network/10-xenspin-install.network", networkd)
        if a.network.dns:
            self.write("etc/resolv.conf", "".join(f"nameserver {d}\n" for d in a.network.dns))
        self.set_timezone()
        self.set_time_servers()
        self.write(
            "etc/default/keyboard",
            f'XKBMODEL="pc105"\nXKBLAYOUT="{a.keymap}"\nXKBVARIANT=""\nXKBOPTIONS=""\nBACKSPACE="guess"\n',
        )
        self.set_root_login()
        if self.test_login:
            self.add_test_login(self.test_login)
        self.first_boot_identity()

    def write_fstab(self) -> None:
        """/ and /boot/efi by UUID; on an upgrade, the old root's other lines after them."""
        root_uuid, esp_uuid = self.root_uuid, self.uuid(self.layout.dev("esp"))
        text = (
            "# written by the xenspin installer\n"
            f"UUID={root_uuid}\t/\text4\terrors=remount-ro\t0\t1\n"
            f"UUID={esp_uuid}\t/boot/efi\tvfat\tumask=0077,nofail\t0\t2\n"
        )
        if self.a.mode == "upgrade" and not self.r.dry_run and confined.is_file(self.old, "etc/fstab"):
            for line in confined.read_bytes(self.old, "etc/fstab").decode(errors="replace").splitlines():
                fields = line.split()
                if len(fields) >= 2 and not fields[0].startswith("#") and fields[1] not in ("/", "/boot/efi"):
                    text += line + "\n"
        self.write("etc/fstab", text)

    def set_timezone(self) -> None:
        zone = self.a.timezone
        in_image = self.r.dry_run or confined.is_file(self.mnt, f"usr/share/zoneinfo/{zone}")
        if not in_image:
            self.r.say(f"warning: time zone {zone} is not in the image (tzdata); keeping UTC")
            zone = "UTC"
        self.write("etc/timezone", zone + "\n")
        if not self.r.dry_run and confined.is_file(self.mnt, f"usr/share/zoneinfo/{zone}"):
            link = confined.resolve(self.mnt, "etc/localtime", follow=False)
            link.unlink(missing_ok=True)
            link.symlink_to(f"/usr/share/zoneinfo/{zone}")

    def set_time_servers(self) -> None:
        """The answerfile's time servers for systemd-timesyncd; [] turns time sync off (the unit masked).

        Not given: nothing is written, and timesyncd uses the servers a DHCP lease names, else
        Debian's pool. An image without timesyncd gets one warning and the install goes on.
        """
        servers = self.a.ntp
        if servers is None:
            return
        if not self.r.dry_run and not any(
            confined.is_file(self.mnt, f"{lib}/systemd/system/{TIMESYNCD_UNIT}") for lib in ("usr/lib", "lib")
        ):
            self.r.say("warning: no systemd-timesyncd in the image; the answerfile's time servers are not set")
            return
        if not servers:
            self.r.log(f"mask {TIMESYNCD_UNIT}: the answerfile turns time sync off")
            if not self.r.dry_run:
                link = confined.mkdirs(self.mnt, "etc/systemd/system") / TIMESYNCD_UNIT
                link.unlink(missing_ok=True)
                link.symlink_to("/dev/null")
            return
        self.write(TIMESYNCD_CONF, f"# written by the xenspin installer\n[Time]\nNTP={' '.join(servers)}\n")

    def set_root_login(self) -> None:
        """Root's password (to chpasswd on its input, masked in what it says) and SSH keys, as the answers give them."""
        root = self.a.root
        if root.password_hash:
            self.chroot(
                ["chpasswd", "--encrypted"],
                "set root's password",
                input=f"root:{root.password_hash}\n",
                secrets=[root.password_hash],
            )
        elif root.password:
            self.chroot(["chpasswd"], "set root's password", input=f"root:{root.password}\n", secrets=[root.password])
        if root.ssh_keys:
            self.write("root/.ssh/authorized_keys", "".join(k.strip() + "\n" for k in root.ssh_keys), 0o600)
            if not self.r.dry_run:
                confined.resolve(self.mnt, "root/.ssh").chmod(0o700)

    def add_test_login(self, password_hash: str) -> None:
        """The login `xenspin test install` proves the installed host with: TEST_USER, uid 0, its own password.

        Why an account of its own: root stays exactly as the answerfile set it up (a hashed
        password, SSH keys only, or a plain one), so the test installs what production
        installs, whatever the answerfile's form, and needs no password the user would have
        to give it. A second name for uid 0 (home /root) is what `xl` needs, and logging
        in on the serial console needs no sshd or network.

        Why it is no backdoor: it only comes from the XSANSWER disk that also holds the
        answerfile (sources.py), never from the ISO, a URL or the kernel command line, and
        whoever can attach that disk can already give root any password or key with an
        answerfile of their own: it adds no power the answer disk does not already have.
        The harness makes a fresh random password for each run, hands only its hash to the
        VM, and the disk it installs is thrown away. The hash goes to chpasswd on its
        input, never into a command line or the install log.
        """
        self.r.say(f"{TEST_LOGIN_ADDED} (uid 0) that the answer disk asks for; root is as the answers set it")
        passwd = "" if self.r.dry_run else confined.read_bytes(self.mnt, "etc/passwd").decode(errors="replace")
        if not any(line.startswith(f"{TEST_USER}:") for line in passwd.splitlines()):  # an upgrade keeps it
            self.chroot(
                [
                    "useradd",
                    "--non-unique",
                    "--uid",
                    "0",
                    "--gid",
                    "0",
                    "--home-dir",
                    "/root",
                    "--no-create-home",
                    "--shell",
                    "/bin/bash",
                    "--comment",
                    "xenspin test install",
                    TEST_USER,
                ],
                f"add the test login {TEST_USER}",
            )
        self.chroot(
            ["chpasswd", "--encrypted"],
            f"set the password of {TEST_USER}",
            input=f"{TEST_USER}:{password_hash}\n",
            secrets=[password_hash],
        )

    def first_boot_identity(self) -> None:
        """Each installed host gets its own machine id and SSH host keys, made on its first boot."""
        if self.r.dry_run:
            return
        confined.write_bytes(self.mnt, "etc/machine-id", b"", mode=None)
        for key in glob.glob(str(confined.resolve(self.mnt, "etc/ssh") / "ssh_host_*")):
            os.unlink(key)  # the name itself, never what a link names
        if os.path.lexists(confined.resolve(self.mnt, f"etc/systemd/system/{KEYGEN_UNIT}")):
            return  # the image brings its own first-boot key generation
        self.write(f"etc/systemd/system/{KEYGEN_UNIT}", FIRST_BOOT_KEYS)
        wants = confined.mkdirs(self.mnt, "etc/systemd/system/ssh.service.wants")
        link = wants / KEYGEN_UNIT
        link.unlink(missing_ok=True)
        link.symlink_to(f"/etc/systemd/system/{KEYGEN_UNIT}")

    # --- boot -----------------------------------------------------------------------

    def make_bootable(self) -> None:
        self.r.say("making the disk bootable (initramfs, GRUB for BIOS and UEFI)")
        installed = [
            p
            for p in LIVE_PACKAGES
            if self.chroot(
                ["dpkg-query", "-W", "-f", "${Status}", p], f"look for {p}", capture=True, check=False, writes=False
            ).endswith(" installed")
        ]
        if installed:
            with self.initramfs_updates_held():  # the initrds are put in place just below
                self.chroot(["dpkg", "--purge", *installed], "remove live-boot")
        made = self.disk_initrds()
        for modules in sorted(glob.glob(str(confined.resolve(self.mnt, "lib/modules") / "*"))):
            version = Path(modules).name
            target = f"boot/initrd.img-{version}"
            if version in made:
                self.r.log(f"initramfs for {version}: {made[version]}, made without live-boot at build time")
                if not self.r.dry_run:
                    confined.copy_file(self.medium_tree, made[version], self.mnt, target, mode=0o644)
            else:  # made here (slow under emulation); any initrd the image had may hold live-boot
                exists = os.path.lexists(confined.resolve(self.mnt, target))
                self.chroot(
                    ["update-initramfs", "-u" if exists else "-c", "-k", version],
                    f"make the initramfs for {version}",
                )
        # zz-: read after Debian's xen.cfg, whose GRUB_DEFAULT names a "Debian GNU/Linux" entry
        self.write("etc/default/grub.d/zz-xenspin.cfg", grub_defaults(self.serial_console()))
        if self.previous:
            title, uuid = self.previous
            self.write(PREVIOUS_CFG.lstrip("/"), previous_entry(title, uuid))
            self.write(f"etc/grub.d/{Path(PREVIOUS_SCRIPT).name}", PREVIOUS_SCRIPT_TEXT, 0o755)
        self.write_grub_cfg()
        self.switch_root_and_boot()

    def serial_console(self) -> bool:
        """The answers' choice; for an upgrade that makes none, the old root's (its GRUB on the serial line or not)."""
        if self.a.serial_console is not None:
            return self.a.serial_console
        old = "etc/default/grub.d/zz-xenspin.cfg"
        if self.a.mode == "upgrade" and not self.r.dry_run and confined.is_file(self.old, old):
            return 'GRUB_TERMINAL="serial console"' in confined.read_bytes(self.old, old).decode(errors="replace")
        return False

    def write_grub_cfg(self) -> None:
        """/boot/grub/grub.cfg from the target's GRUB settings (bootloader.py: why not update-grub)."""
        out = self.chroot(["sh", "-c", read_settings_script()], "read GRUB's settings", capture=True, writes=False)
        if self.r.dry_run:
            return
        try:
            files = boot_files(self.mnt)
        except FileNotFoundError as e:
            raise InstallerError(f"no kernel to boot: {e}") from None
        if files.xen is None:
            self.r.say("warning: no Xen in /boot of the root filesystem image; GRUB boots Linux alone")
        previous = previous_entry(*self.previous) if self.previous else ""
        self.write("boot/grub/grub.cfg", grub_cfg(parse_settings(out), self.root_uuid, files, previous))

    def disk_initrds(self) -> dict[str, str]:
        """Kernel version -> the disk initrd xenspin's rootfs stage made, found beside the squashfs (a name in medium_tree)."""
        found: dict[str, str] = {}
        live = self.squashfs.parent.name
        for rel in (live, f"{live}/boot", "boot"):
            for path in sorted(confined.resolve(self.medium_tree, rel).glob(DISK_INITRD + "*")):
                found.setdefault(path.name.removeprefix(DISK_INITRD), f"{rel}/{path.name}")
        return found

    @contextlib.contextmanager
    def initramfs_updates_held(self) -> Iterator[None]:
        """update_initramfs=no while live-boot is purged: its trigger would remake the initrd for nothing."""
        conf = "etc/initramfs-tools/update-initramfs.conf"
        if self.r.dry_run or not confined.is_file(self.mnt, conf):
            yield
            return
        before = confined.read_bytes(self.mnt, conf)
        held = before + b"\nupdate_initramfs=no  # xenspin installer, for the purge of live-boot\n"
        confined.write_bytes(self.mnt, conf, held, mode=None)
        try:
            yield
        finally:
            confined.write_bytes(self.mnt, conf, before, mode=None)

    def install_efi_grub(self) -> None:
        """GRUB for UEFI at EFI/BOOT/BOOTX64.EFI (the removable path) and EFI/xenspin/grubx64.efi.

        What `grub-install --target=x86_64-efi` does, without mounting the ESP: the image
        is made in the target and copied onto the FAT filesystem with mtools, so no vfat
        driver is needed where the installer runs. It finds root by UUID and reads the
        grub.cfg written before it, loading modules from /boot/grub/x86_64-efi.
        """
        self.write("boot/grub/xenspin-efi-early.cfg", efi_early_config(self.root_uuid))
        if not self.r.dry_run:
            confined.remove(self.mnt, "boot/grub/x86_64-efi")
            confined.copy_tree(self.mnt, "usr/lib/grub/x86_64-efi", self.mnt, "boot/grub/x86_64-efi")
        image = "/boot/grub/xenspin-bootx64.efi"
        self.chroot(
            [
                "grub-mkimage",
                "--format=x86_64-efi",
                f"--output={image}",
                "--config=/boot/grub/xenspin-efi-early.cfg",
                "--prefix=",
                *EFI_CORE_MODULES,
            ],
            "make GRUB's UEFI image",
        )
        esp = self.layout.dev("esp")
        # mcopy runs outside the target: it reads the image as the regular file it is inside the target
        src = str(self.mnt / image.lstrip("/")) if self.r.dry_run else str(confined.regular(self.mnt, image))
        # -D s: an upgrade finds them there (without it mmd asks on the console what to do, and waits);
        # it then exits 1, so the status says nothing: a directory missing fails the copies below
        self.r.run(
            ["mmd", "-D", "s", "-i", esp, "::/EFI", "::/EFI/BOOT", "::/EFI/xenspin"],
            "make directories on the ESP",
            check=False,
        )
        for dest in ("::/EFI/BOOT/BOOTX64.EFI", "::/EFI/xenspin/grubx64.efi"):
            self.r.run(["mcopy", "-o", "-i", esp, src, dest], f"copy GRUB to {dest[2:]} on the ESP")

    def copy_log(self) -> None:
        """The install log (it holds no password: Runner) into the target, readable by root only."""
        if self.r.dry_run:
            return
        log = self.r.log_path.absolute()
        confined.copy_file(log.parent, log.name, self.mnt, LOG_ON_TARGET, mode=0o600)

    # --- hooks ----------------------------------------------------------------------

    def hooks(self, stage: str, target: Path | None = None) -> None:
        for hook in (h for h in self.a.hooks if h.stage == stage):
            self.r.say(f"running the {stage} hook {hook.url}")
            script = fetch_hook(hook, self.medium)
            try:
                self.r.run([str(script), *([str(target)] if target else [])], f"{stage} hook {hook.url}")
            finally:
                script.unlink(missing_ok=True)


def fetch_hook(hook: Hook, medium: Path) -> Path:
    """The hook's script in a temporary executable file. file:/P is looked up on the medium, then the live system."""
    if hook.url.startswith("file:"):
        rel = hook.url.removeprefix("file:").lstrip("/")
        src = next((p for p in (medium / rel, Path("/") / rel) if p.is_file()), None)
        if src is None:
            raise InstallerError(f"hook {hook.url}: not found on the install medium")
        data = src.read_bytes()
    else:
        try:
            with urllib.request.urlopen(hook.url, timeout=60) as resp:
                data = resp.read()
        except OSError as e:
            raise InstallerError(f"hook {hook.url}: cannot fetch: {e}") from None
    fd, name = tempfile.mkstemp(prefix="xenspin-hook-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(name, stat.S_IRWXU)
    return Path(name)


def private_mounts(runner: Runner) -> None:
    """Mount the target in a mount namespace of our own.

    Mounts made in the shared namespace are copied into every namespace created while
    they exist (a sandbox, a container), which then keeps the target's filesystems busy
    after we unmount them; in our own namespace nobody else ever sees them.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise InstallerError(f"cannot make a mount namespace: {os.strerror(ctypes.get_errno())}")
    runner.run(["mount", "--make-rprivate", "/"], "keep the installer's mounts to itself")


def wait_for(dev: Path, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not dev.exists():
        if time.monotonic() > deadline:
            raise InstallerError(f"{dev}: did not appear after partitioning")
        time.sleep(0.2)


def network_config(a: Answerfile) -> str | None:
    """A systemd-networkd file for the management interface; None when the image's DHCP on every NIC will do.

    Named 10-: networkd takes the first file (in name order) that matches an interface,
    so it wins over the image's catch-all DHCP file.
    """
    n = a.network
    if n.mode == "dhcp" and not n.interface:
        return None
    lines = ["# written by the xenspin installer", "[Match]", f"Name={n.interface or 'en* eth*'}", "", "[Network]"]
    if n.mode == "dhcp":
        lines.append("DHCP=yes")
    else:
        lines.append(f"Address={n.address}")
        if n.gateway:
            lines.append(f"Gateway={n.gateway}")
    lines += [f"DNS={d}" for d in n.dns]
    return "\n".join(lines) + "\n"
