"""What the build host needs from Debian, and `xenspin setup` to install it."""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

from .errors import XenspinError
from .run import BUILD_USER, run, subid_ranges

# Debian packages each stage runs; `xenspin setup` installs the missing ones.
HOST_PACKAGES = {
    "fetch": ["git", "gnupg", "gpgv", "debian-archive-keyring", "ca-certificates"],
    # uidmap: newuidmap/newgidmap for mmdebstrap's user namespace (unshare mode); acl: setfacl for its output dirs.
    "build": ["mmdebstrap", "bubblewrap", "uidmap", "acl", "dpkg-dev", "apt-utils", "arch-test", "xz-utils", "zstd"],
    "rootfs": ["squashfs-tools"],
    # Boot loaders and the tools that pack them (until a locked package set supplies them),
    # and xorriso to read an ISO's boot records back.
    "iso": ["isolinux", "syslinux-common", "grub-efi-amd64-bin", "grub-common", "mtools", "dosfstools", "xorriso"],
    # The installer's disk tools (its tests install onto loop devices from this host).
    "installer": ["gdisk", "parted", "lvm2", "dosfstools", "mtools", "e2fsprogs", "util-linux", "udev"],
    # QEMU for test boot/install; busybox for the tiny guest initrd test install starts;
    # openssl hashes the password of test install's throwaway login; lintian checks the
    # packages xenspin builds as a Debian maintainer would; nginx is the remote cache's
    # tests' server (HTTP with WebDAV PUT), started on 127.0.0.1 by each test.
    "test": ["qemu-system-x86", "qemu-utils", "ovmf", "busybox-static", "openssl", "lintian", "nginx"],
    # Headless Chromium: the nightly index page's test loads it as people's browsers would.
    "nightly": ["chromium"],
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


def setup(users: list[str] = ()) -> list[str]:
    """Install the host packages xenspin needs and arrange unprivileged builds; return what changed, one line each.

    users: ordinary accounts that will build (each gets subordinate ids); as root,
    xenspin builds as the `xenspin` account, which this makes.
    """
    changes = _packages()
    if os.geteuid() == 0:
        changes += _userns_sysctl()
        changes += _account()
        for user in [BUILD_USER, *users]:
            changes += _subids(user)
    elif users:
        raise XenspinError("setup: giving accounts subordinate ids needs root")
    return changes


def _packages() -> list[str]:
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
    return [f"installed {' '.join(todo)}", *_quiet_services(todo)]


# Packages installed for their programs whose Debian packages also start a system service:
# the service is stopped and disabled when setup installed the package (nothing of the
# host's own is touched). nginx: Debian serves its default site on port 80.
SERVICES = {"nginx": "nginx"}


def _quiet_services(installed: list[str]) -> list[str]:
    changes = []
    for package, service in SERVICES.items():
        if package not in installed:
            continue
        run(["invoke-rc.d", service, "stop"], what=f"setup: stop {service}", capture=True, check=False)
        run(["update-rc.d", service, "disable"], what=f"setup: disable {service}", capture=True, check=False)
        if Path("/run/systemd/system").is_dir():
            run(["systemctl", "disable", "--now", service], what=f"setup: disable {service}", capture=True, check=False)
        changes.append(f"stopped and disabled the {service} service Debian starts (xenspin's tests run their own)")
    return changes


SUBID_COUNT = 65536
SUBID_FIRST = 100000
USERNS_SYSCTL = Path("/proc/sys/kernel/unprivileged_userns_clone")  # Debian's kernels only
USERNS_CONF = Path("/etc/sysctl.d/90-xenspin-userns.conf")


def _userns_sysctl() -> list[str]:
    """Debian kernels can forbid unprivileged user namespaces; bubblewrap and mmdebstrap need them."""
    if not USERNS_SYSCTL.exists() or USERNS_SYSCTL.read_text().strip() == "1":
        return []
    USERNS_CONF.write_text(
        "# Written by `xenspin setup`: unprivileged user namespaces for bubblewrap and mmdebstrap.\n"
        "kernel.unprivileged_userns_clone = 1\n"
    )
    USERNS_SYSCTL.write_text("1\n")
    return [f"enabled unprivileged user namespaces (kernel.unprivileged_userns_clone = 1, in {USERNS_CONF})"]


def _account() -> list[str]:
    """The system account root hands every untrusted step to (never root itself)."""
    try:
        pwd.getpwnam(BUILD_USER)
        return []
    except KeyError:
        pass
    run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "xenspin builds",
            BUILD_USER,
        ],
        what=f"setup: make the account {BUILD_USER}",
        capture=True,
    )
    return [f"made the system account {BUILD_USER} (xenspin, run as root, hands its untrusted steps to it)"]


def free_range(taken: list[tuple[int, int]], count: int = SUBID_COUNT, first: int = SUBID_FIRST) -> int:
    """The lowest start at or above `first` whose `count` ids overlap none of `taken`."""
    start = first
    for begin, n in sorted(taken):
        if start + count <= begin:
            break
        start = max(start, begin + n)
    return start


def _subids(user: str) -> list[str]:
    """Subordinate uids and gids for user (mmdebstrap's user namespace maps them), unless it has them."""
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise XenspinError(f"setup: no account named {user!r}") from None
    changes = []
    for kind, flag in (("uid", "--add-subuids"), ("gid", "--add-subgids")):
        path = Path(f"/etc/sub{kind}")
        ranges = subid_ranges(path.read_text() if path.exists() else "")
        if user in ranges:
            continue
        start = free_range(list(ranges.values()))
        run(
            ["usermod", flag, f"{start}-{start + SUBID_COUNT - 1}", user],
            what=f"setup: sub{kind}s for {user}",
            capture=True,
        )
        changes.append(f"gave {user} subordinate {kind}s {start}-{start + SUBID_COUNT - 1} (/etc/sub{kind})")
    return changes
