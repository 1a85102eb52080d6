"""`xenspin test install`: an unattended install from the ISO onto a fresh disk, then the disk alone
boots Xen, `xl list` shows Domain-0 and a PV guest prints its marker, all over the serial line.

The VM comes from vmtest's QEMU helpers; what is added here is a serial line both ways
(a QEMU socket chardev that also logs to a file) and the conversation held over it.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import guest
from .errors import XenspinError
from .run import spawn, stop

INSTALL_TIMEOUT = 1200.0
BOOT_TIMEOUT = 900.0
DISK_SIZE = "8G"
BANNER = "xenspin installer:"
INSTALLED = "xenspin installed on"
FAILED = "xenspin install failed"
DOWN = "\x1b[B"


class Timeout(Exception):
    """The awaited text did not show up on the serial line."""

    def __init__(self, text: str, why: str) -> None:
        super().__init__(text)
        self.text, self.why = text, why


class SerialLine:
    """The VM's first serial port: read from the log QEMU writes, typed through its socket."""

    def __init__(self, sock_path: Path, log: Path, proc) -> None:
        self.log, self.proc = log, proc
        self.pos = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock.connect(str(sock_path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise XenspinError(f"test install: QEMU's serial socket {sock_path} did not open") from None
                time.sleep(0.2)
        # QEMU also sends the output down the socket; drain it so the guest never blocks.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        with contextlib.suppress(OSError):
            while self.sock.recv(65536):
                pass

    def text(self) -> str:
        return self.log.read_bytes().decode(errors="replace")

    def expect(self, *texts: str, timeout: float, poll: float = 0.5) -> str:
        """Wait for any of texts after what was already matched; returns the one seen."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.text()
            hits = [(seen.find(t, self.pos), t) for t in texts if seen.find(t, self.pos) >= 0]
            if hits:
                at, hit = min(hits)
                self.pos = at + len(hit)
                return hit
            if self.proc.poll() is not None:
                raise Timeout(texts[0], f"QEMU exited with status {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise Timeout(texts[0], f"within {timeout:.0f} s")
            time.sleep(poll)

    def send(self, text: str, pace: float = 0.05) -> None:
        """Type text, a character at a time (serial consoles drop what comes too fast)."""
        for ch in text:
            self.sock.sendall(ch.encode())
            time.sleep(pace)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass
class Verdict:
    """How one firmware's install and boot went."""

    firmware: str
    passed: bool
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)
    missing: str | None = None
    why: str = ""
    logs: Path | None = None

    def line(self) -> str:
        steps = ", ".join(f"{k} at {v:.0f} s" for k, v in self.steps.items())
        if self.passed:
            return f"PASS install {self.firmware}: {steps} (total {self.seconds:.0f} s; logs: {self.logs})"
        return f"FAIL install {self.firmware}: no {self.missing!r} {self.why} after {self.seconds:.0f} s ({steps or 'nothing'}; logs: {self.logs})"


@contextlib.contextmanager
def vm(argv_for: callable, logs: Path, name: str) -> Iterator[SerialLine]:
    """Run QEMU with a two-way serial line; stopped (the whole process group) on the way out."""
    serial_log, sock = logs / f"{name}.serial.log", logs / f"{name}.serial.sock"
    serial_log.write_bytes(b"")
    sock.unlink(missing_ok=True)
    argv = argv_for(serial_log, sock)
    proc = spawn(argv, what=f"test install {name}", log_path=logs / f"{name}.qemu.log")
    line = None
    try:
        line = SerialLine(sock, serial_log, proc)
        yield line
    finally:
        if line is not None:
            line.close()
        stop(proc)
        sock.unlink(missing_ok=True)


def menu_downs(iso: Path) -> int:
    """How many entries come before 'unattended-serial' in the ISO's menu (ISOLINUX and GRUB list them alike)."""
    import pycdlib

    iso_ = pycdlib.PyCdlib()
    try:
        iso_.open(str(iso))
        out = __import__("io").BytesIO()
        iso_.get_file_from_iso_fp(out, rr_path="/isolinux/isolinux.cfg")
        labels = re.findall(r"^label (\S+)", out.getvalue().decode(), re.M)
    except Exception:  # an ISO without ISOLINUX: the serial entries come first
        return 1
    finally:
        with contextlib.suppress(Exception):
            iso_.close()
    return labels.index("unattended-serial") if "unattended-serial" in labels else 1


def login_and_check(line: SerialLine, password: str, t0: float, steps: dict[str, float]) -> None:
    line.expect("login:", timeout=BOOT_TIMEOUT)
    steps["login"] = time.monotonic() - t0
    line.send("root\r")
    line.expect("Password:", timeout=60)
    line.send(password + "\r")
    line.expect(":~# ", timeout=120)
    line.send("xl list\r")
    line.expect("Domain-0", timeout=120)
    steps["Domain-0"] = time.monotonic() - t0
    line.send(
        "mount -o ro LABEL=XSANSWER /mnt && K=$(ls /boot/vmlinuz-* | tail -n 1) && "
        'xl create -c /dev/null \'name="guest"\' "kernel=\\"$K\\"" \'ramdisk="/mnt/guest.gz"\' '
        "'memory=256' 'extra=\"console=hvc0\"'\r"
    )
    line.expect(guest.GUEST_MARKER, timeout=300)
    steps["guest"] = time.monotonic() - t0
