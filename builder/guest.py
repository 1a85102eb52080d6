"""What `xenspin test install` brings to the VM: a tiny PV guest initrd and the XSANSWER disk.

Pure parts (the cpio archive, the default answerfile) apart from the one that runs
tools (the FAT image, through run.py).
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path

from xenspin_installer.disks import ANSWER_LABEL  # the label the installer looks for

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


def default_answerfile() -> str:
    """The answers of an unattended test install: the only disk, root's test password, serial console."""
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
