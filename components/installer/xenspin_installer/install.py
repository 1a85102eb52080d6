"""Run an install: the disk plan from disks.py made real, the rootfs unpacked and set up to boot Xen.

Each step is a method named for what it does; every command goes through Runner, so
the install log holds the whole story and is copied into the installed system.
"""

from __future__ import annotations

import glob
import os
import shutil
import stat
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import InstallerError
from .answerfile import Answerfile, Hook
from .disks import VG_NAME, Disk, Part, check_writable, part_path, plan, sgdisk_args
from .run import Runner

LIVE_MEDIUM = Path("/run/live/medium")
SQUASHFS = LIVE_MEDIUM / "live" / "filesystem.squashfs"
LIVE_PACKAGES = ("live-boot", "live-boot-initramfs-tools", "live-config", "live-config-systemd", "live-tools")
LOG_ON_TARGET = "var/log/xenspin-install.log"
XEN_CMDLINE = "dom0_mem=1024M,max:1024M"
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
    """The disk and its planned partitions, decided before anything is written."""

    disk: Disk
    parts: list[Part]

    def dev(self, role: str) -> str | None:
        for p in self.parts:
            if p.role == role:
                return part_path(self.disk.path, p.number)
        return None


def decide(answer: Answerfile, disk: Disk) -> Layout:
    """The safety rules and the plan: raises before any write when the disk must not be touched."""
    check_writable(disk, wipe=answer.wipe)
    return Layout(disk, plan(disk.size, local_storage=answer.local_storage))


class Installer:
    def __init__(
        self, answer: Answerfile, layout: Layout, runner: Runner, squashfs: Path, *, medium: Path = LIVE_MEDIUM
    ):
        self.a = answer
        self.layout = layout
        self.r = runner
        self.squashfs = squashfs
        self.medium = medium
        self.mnt = Path(tempfile.mkdtemp(prefix="xenspin-target-"))
        self.mounted: list[Path] = []

    def run(self) -> None:
        start = time.monotonic()
        if not self.squashfs.is_file():
            raise InstallerError(f"root filesystem image {self.squashfs}: not found")
        self.hooks("installation-start")
        try:
            self.partition()
            self.make_filesystems()
            self.unpack()
            self.configure()
            self.make_bootable()
            self.hooks("filesystem-populated", self.mnt)
            self.r.say(f"installed in {time.monotonic() - start:.0f} s")
            self.copy_log()
            self.hooks("installation-complete", self.mnt)
        finally:
            self.unmount_all()

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
        if lvm:
            self.r.run(["pvcreate", "--force", "--force", "--yes", lvm], "make the LVM physical volume")
            self.r.run(["vgcreate", "--yes", VG_NAME, lvm], f"make the LVM group {VG_NAME}")

    def mount(self, what: str | Path, where: Path, *opts: str) -> None:
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
        self.mount(self.layout.dev("esp"), self.mnt / "boot" / "efi")
        for fs in ("dev", "proc", "sys", "run"):
            self.mount(f"/{fs}", self.mnt / fs, "--rbind", "--make-rslave")

    def copy_boot_files(self) -> None:
        """Kernel and Xen into the target's /boot when the squashfs left /boot out (they sit beside it)."""
        boot = self.mnt / "boot"
        if glob.glob(str(boot / "vmlinuz-*")):
            return
        for src in (self.squashfs.parent.parent / "boot", self.squashfs.parent / "boot", Path("/boot")):
            files = [
                Path(f) for pat in ("vmlinuz-*", "config-*", "System.map-*", "xen-*") for f in glob.glob(str(src / pat))
            ]
            if any(f.name.startswith("vmlinuz-") for f in files):
                boot.mkdir(exist_ok=True)
                for f in files:
                    shutil.copy2(f, boot / f.name)
                self.r.log(f"copied {len(files)} boot files from {src}")
                return
        raise InstallerError(f"no kernel in the root filesystem image {self.squashfs} nor beside it")

    def chroot(self, cmd: list[str], what: str, **kw) -> str:
        env = ["env", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C.UTF-8", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
        return self.r.run(["chroot", str(self.mnt), *env, *cmd], what, **kw)

    def write(self, rel: str, text: str, mode: int = 0o644) -> None:
        """Write a file of the target, through a temporary name (never half-written)."""
        self.r.log(f"write /{rel}")
        if self.r.dry_run:
            return
        path = self.mnt / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".xenspin-tmp")
        tmp.write_text(text)
        tmp.chmod(mode)
        os.replace(tmp, path)

    def uuid(self, dev: str) -> str:
        return self.r.run(["blkid", "-s", "UUID", "-o", "value", dev], f"read the UUID of {dev}", capture=True).strip()

    def configure(self) -> None:
        a = self.a
        self.r.say("configuring the system")
        root_uuid, esp_uuid = self.uuid(self.layout.dev("root")), self.uuid(self.layout.dev("esp"))
        self.write(
            "etc/fstab",
            "# written by the xenspin installer\n"
            f"UUID={root_uuid}\t/\text4\terrors=remount-ro\t0\t1\n"
            f"UUID={esp_uuid}\t/boot/efi\tvfat\tumask=0077\t0\t1\n",
        )
        self.write("etc/hostname", a.hostname + "\n")
        self.write(
            "etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{a.hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        )
        self.write("etc/network/interfaces", network_config(a, default_interface()))
        if a.network.dns:
            self.write("etc/resolv.conf", "".join(f"nameserver {d}\n" for d in a.network.dns))
        self.set_timezone()
        self.write(
            "etc/default/keyboard",
            f'XKBMODEL="pc105"\nXKBLAYOUT="{a.keymap}"\nXKBVARIANT=""\nXKBOPTIONS=""\nBACKSPACE="guess"\n',
        )
        self.set_root_login()
        self.first_boot_identity()

    def set_timezone(self) -> None:
        zone = self.a.timezone
        if not self.r.dry_run and not (self.mnt / "usr/share/zoneinfo" / zone).is_file():
            self.r.say(f"warning: time zone {zone} is not in the image (tzdata); keeping UTC")
            zone = "UTC"
        self.write("etc/timezone", zone + "\n")
        if not self.r.dry_run and (self.mnt / "usr/share/zoneinfo" / zone).is_file():
            link = self.mnt / "etc/localtime"
            link.unlink(missing_ok=True)
            link.symlink_to(f"/usr/share/zoneinfo/{zone}")

    def set_root_login(self) -> None:
        root = self.a.root
        if root.password_hash:
            self.chroot(["chpasswd", "--encrypted"], "set root's password", input=f"root:{root.password_hash}\n")
        elif root.password:
            self.chroot(["chpasswd"], "set root's password", input=f"root:{root.password}\n")
        if root.ssh_keys:
            self.write("root/.ssh/authorized_keys", "".join(k.strip() + "\n" for k in root.ssh_keys), 0o600)
            if not self.r.dry_run:
                (self.mnt / "root/.ssh").chmod(0o700)

    def first_boot_identity(self) -> None:
        """Each installed host gets its own machine id and SSH host keys, made on its first boot."""
        if self.r.dry_run:
            return
        (self.mnt / "etc/machine-id").write_text("")
        for key in glob.glob(str(self.mnt / "etc/ssh/ssh_host_*")):
            os.unlink(key)
        self.write("etc/systemd/system/xenspin-ssh-keygen.service", FIRST_BOOT_KEYS)
        wants = self.mnt / "etc/systemd/system/ssh.service.wants"
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / "xenspin-ssh-keygen.service"
        link.unlink(missing_ok=True)
        link.symlink_to("/etc/systemd/system/xenspin-ssh-keygen.service")

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
            self.chroot(["dpkg", "--purge", *installed], "remove live-boot")
        for modules in sorted(glob.glob(str(self.mnt / "lib/modules/*"))):
            version = Path(modules).name
            exists = (self.mnt / "boot" / f"initrd.img-{version}").exists()
            self.chroot(
                ["update-initramfs", "-u" if exists else "-c", "-k", version], f"make the initramfs for {version}"
            )
        self.write("etc/default/grub.d/xenspin.cfg", grub_defaults(self.a))
        self.chroot(["update-grub"], "write grub.cfg")
        disk = self.layout.disk.path
        self.chroot(["grub-install", "--target=i386-pc", disk], "install GRUB for BIOS")
        efi = ["grub-install", "--target=x86_64-efi", "--efi-directory=/boot/efi", "--no-nvram"]
        self.chroot([*efi, "--bootloader-id=xenspin"], "install GRUB for UEFI")
        self.chroot([*efi, "--removable"], "install GRUB for UEFI (removable path)")

    def copy_log(self) -> None:
        if self.r.dry_run:
            return
        dest = self.mnt / LOG_ON_TARGET
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.r.log_path, dest)
        dest.chmod(0o600)

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


def wait_for(dev: Path, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not dev.exists():
        if time.monotonic() > deadline:
            raise InstallerError(f"{dev}: did not appear after partitioning")
        time.sleep(0.2)


def default_interface(sys_net: Path = Path("/sys/class/net")) -> str:
    """The first wired interface (one backed by a device, not a bridge or a vif)."""
    names = sorted(p.name for p in sys_net.glob("*") if (p / "device").exists() and not (p / "wireless").exists())
    return names[0] if names else "eth0"


def network_config(a: Answerfile, fallback: str) -> str:
    """/etc/network/interfaces for ifupdown."""
    n = a.network
    iface = n.interface or fallback
    lines = ["# written by the xenspin installer", "auto lo", "iface lo inet loopback", "", f"allow-hotplug {iface}"]
    if n.mode == "dhcp":
        lines.append(f"iface {iface} inet dhcp")
    else:
        lines += [f"iface {iface} inet static", f"    address {n.address}"]
        if n.gateway:
            lines.append(f"    gateway {n.gateway}")
    return "\n".join(lines) + "\n"


def grub_defaults(a: Answerfile) -> str:
    """GRUB settings: Xen the default entry (Debian's 20_linux_xen), serial console when asked."""
    xen = XEN_CMDLINE
    linux = "console=tty0"
    lines = ["# written by the xenspin installer", "XEN_OVERRIDE_GRUB_DEFAULT=1", "GRUB_TIMEOUT=3"]
    if a.serial_console:
        xen += " console=com1,vga com1=115200"
        linux = "console=tty0 console=hvc0"
        lines += ['GRUB_TERMINAL="serial console"', 'GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"']
    lines += [f'GRUB_CMDLINE_XEN_DEFAULT="{xen}"', f'GRUB_CMDLINE_LINUX_XEN_REPLACE_DEFAULT="{linux}"']
    return "\n".join(lines) + "\n"
