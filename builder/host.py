"""What the build host needs from Debian, and `xenspin setup` to install it."""

from __future__ import annotations

import os
import shutil

from .errors import XenspinError
from .run import run

# Debian packages each stage runs; `xenspin setup` installs the missing ones.
HOST_PACKAGES = {
    "fetch": ["git", "gnupg", "gpgv", "debian-archive-keyring", "ca-certificates"],
    "build": ["mmdebstrap", "bubblewrap", "dpkg-dev", "apt-utils", "arch-test", "xz-utils", "zstd"],
    "rootfs": ["squashfs-tools"],
    # Boot loaders and the tools that pack them (until a locked package set supplies them),
    # and xorriso to read an ISO's boot records back.
    "iso": ["isolinux", "syslinux-common", "grub-efi-amd64-bin", "grub-common", "mtools", "dosfstools", "xorriso"],
    # The installer's disk tools (its tests install onto loop devices from this host).
    "installer": ["gdisk", "parted", "lvm2", "dosfstools", "mtools", "e2fsprogs", "util-linux", "udev"],
    # QEMU for test boot/install; busybox for the tiny guest initrd test install starts;
    # openssl hashes the password of test install's throwaway login.
    "test": ["qemu-system-x86", "qemu-utils", "ovmf", "busybox-static", "openssl"],
}


def wanted() -> list[str]:
    return sorted({p for pkgs in HOST_PACKAGES.values() for p in pkgs})


def missing(packages: list[str]) -> list[str]:
    """Packages not installed, asked of dpkg in one call."""
    proc = run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\\n", *packages],
        what="setup: query installed packages",
        capture=True,
        check=False,
    )
    installed = {line.split()[0] for line in proc.stdout.decode().splitlines() if line.endswith(" installed")}
    return [p for p in packages if p not in installed]


def setup() -> list[str]:
    """Install the host packages xenspin needs; return those it installed."""
    if not shutil.which("dpkg-query"):
        raise XenspinError("setup: this is not a Debian system (expected Debian 12 with apt)")
    todo = missing(wanted())
    if not todo:
        return []
    if os.geteuid() != 0:
        raise XenspinError(f"setup: installing {' '.join(todo)} needs root (run as root or install them with apt)")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-q"], what="setup: apt-get update", env=env, capture=True)
    run(
        ["apt-get", "install", "-y", "-q", *todo],
        what="setup: apt-get install",
        env=env,
        capture=True,
    )
    return todo
