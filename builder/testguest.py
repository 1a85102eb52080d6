"""What `xenspin test install` brings to the VM: a tiny PV guest initrd, the XSANSWER disk and the test login.

Pure parts (the cpio archive, the default answerfile) apart from the ones that run
tools (the FAT image and the password hash, through run.py).
"""

from __future__ import annotations

import gzip
import io
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from xenspin_installer.disks import ANSWER_LABEL  # the label the installer looks for
from xenspin_installer.install import TEST_USER  # the login the installer adds for the file below
from xenspin_installer.sources import TEST_LOGIN  # the file on the answer disk the installer reads

from .run import run

GUEST_MARKER = "xenspin-guest: hello from a PV guest"
BUSYBOX = Path("/bin/busybox")  # busybox-static: the guest has no libraries
TEST_PASSWORD = "xenspin-test"

INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "{GUEST_MARKER}"
/bin/busybox poweroff -f
"""


@dataclass(frozen=True)
class Entry:
    """One member of a newc cpio archive."""

    name: str
    mode: int  # with the file type bits
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def cpio_newc(entries: list[Entry]) -> bytes:
    """A cpio archive in the kernel's initramfs format ("newc"), owned by root, time 0."""
    out = io.BytesIO()

    def pad() -> None:
        out.write(b"\0" * (-out.tell() % 4))

    for ino, e in enumerate([*entries, Entry("TRAILER!!!", 0)], start=1):
        name = e.name.encode() + b"\0"
        fields = [ino, e.mode, 0, 0, 1, 0, len(e.data), 0, 0, e.rdev[0], e.rdev[1], len(name), 0]
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.write(name)
        pad()
        out.write(e.data)
        pad()
    return out.getvalue()


def guest_initrd(busybox: bytes) -> bytes:
    """A gzipped initramfs whose /init prints GUEST_MARKER on the console and powers off."""
    entries = [
        Entry("dev", 0o40755),
        Entry("dev/console", 0o20600, rdev=(5, 1)),
        Entry("proc", 0o40755),
        Entry("bin", 0o40755),
        Entry("bin/busybox", 0o100755, busybox),
        Entry("init", 0o100755, INIT.encode()),
    ]
    return gzip.compress(cpio_newc(entries), mtime=0)


@dataclass(frozen=True)
class Login:
    """The harness's throwaway login into the installed host: a fresh random password per run.

    Only its hash leaves the harness, in its own file (TEST_LOGIN) on the answer disk of
    the test's VM, beside the user's answerfile, which stays byte for byte as given; the
    installer adds the login TEST_USER (uid 0) with it, leaving root as the answerfile
    set it up (xenspin_installer.install.Installer.add_test_login says why that is no
    backdoor). The password itself is only ever typed into the VM's serial console: it
    is in no file, log or ISO.
    """

    user: str
    password: str = field(repr=False)
    hash: str = field(repr=False)


def throwaway_login() -> Login:
    """A random password and its SHA-512 crypt(3) hash (`openssl passwd -6`, given the password on stdin)."""
    password = secrets.token_urlsafe(24)  # letters, digits, - and _: safe to type on a serial console
    proc = run(
        ["openssl", "passwd", "-6", "-stdin"],
        what="test install: hash the test login's password",
        input=password.encode() + b"\n",
        capture=True,  # and no log: the hash is the VM's alone
    )
    return Login(TEST_USER, password, proc.stdout.decode().strip())


def login_file(login: Login) -> dict[str, bytes]:
    """The answer disk's file that asks the installer for the test login."""
    return {TEST_LOGIN: login.hash.encode() + b"\n"}


def default_answerfile() -> str:
    """The answers of an unattended test install: the only disk, serial console, power-off.

    Root gets TEST_PASSWORD for a person who boots the test's disk afterwards; the
    harness itself logs in with its throwaway Login, as with any answerfile.
    """
    return (
        "# xenspin test install\n"
        f"root:\n  password: {TEST_PASSWORD}\n"
        "hostname: xenspin-test\n"
        "serial-console: true\n"
        "finish: poweroff\n"
    )


def answer_disk(image: Path, files: dict[str, bytes], log: Path) -> Path:
    """A small FAT disk labelled XSANSWER holding files (made with mtools: no mount)."""
    image.unlink(missing_ok=True)
    run(
        ["mkfs.vfat", "-C", "-n", ANSWER_LABEL, image, str(32 * 1024)],
        what="test install: make the answer disk",
        log_path=log,
    )
    for name, data in files.items():
        src = image.parent / f"{image.name}.{name}"
        src.write_bytes(data)
        try:
            run(
                ["mcopy", "-i", image, src, f"::/{name}"],
                what=f"test install: copy {name} to the answer disk",
                log_path=log,
            )
        finally:
            src.unlink()
    return image
