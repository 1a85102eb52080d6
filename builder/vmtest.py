"""Boot an image in QEMU and watch its serial console for markers: `xenspin test boot`, and the
harness `xenspin test install` drives too.

QEMU runs under TCG by default (KVM here fails with "KVM internal error"; `kvm=True` asks for
it where it works) on a q35 machine with TCG_CPU, a CPU model a PV dom0 survives under TCG,
its vCPUs in one host thread (TCG_ACCEL): with a thread per vCPU, Linux 6.12's PV dom0 saw
its TSC skew against Xen's clock, marked it unstable and patched its own code live while the
other vCPU ran a stale translation of it (an int3 oops about one boot in eight here); in one
thread the TSC stays stable and the boots take as long.
The serial line goes to a log file that is polled for the markers, in order; the VM's
process group is stopped when the last marker shows up or the time runs out.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import XenspinError
from .run import spawn, stop

Firmware = Literal["bios", "uefi"]

XEN_BANNER = "(XEN) Xen version"
DOM0_BANNER = "Linux version"
# The installer's banner (it runs on the serial console instead of a login prompt).
PROMPT = "xenspin installer:"
DEFAULT_TIMEOUT = 600.0
# QEMU's own model, as Xen's CI uses it. Its vendor is AMD, so Xen applies neither XPTI (Meltdown)
# nor PV L1TF shadowing, which the emulated CPU has no need of and which under TCG cost about 40%
# of the time to the installer (148 s with Haswell-noTSX, 91 s with this). `-cpu max` and EPYC
# make dom0 fault at once.
TCG_CPU = "qemu64"
TCG_ACCEL = "tcg,thread=single"  # every vCPU in one host thread (see the module's docstring)

OVMF_DIRS = [Path("/usr/share/OVMF"), Path("/usr/share/ovmf")]
# Split code/vars pairs first (the vars get a private copy), then the combined image.
OVMF_PAIRS = [("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"), ("OVMF_CODE.fd", "OVMF_VARS.fd")]
OVMF_COMBINED = "OVMF.fd"


class VmError(XenspinError):
    pass


@dataclass(frozen=True)
class Ovmf:
    """UEFI firmware for QEMU: code and a vars template, or one combined image (vars None)."""

    code: Path
    vars: Path | None


def find_ovmf(dirs: Sequence[Path] = OVMF_DIRS) -> Ovmf:
    for d in dirs:
        for code, vars_ in OVMF_PAIRS:
            if (d / code).is_file() and (d / vars_).is_file():
                return Ovmf(d / code, d / vars_)
    for d in dirs:
        if (d / OVMF_COMBINED).is_file():
            return Ovmf(d / OVMF_COMBINED, None)
    where = " or ".join(str(d) for d in dirs)
    raise VmError(f"test boot: no OVMF firmware in {where} (run `xenspin setup`, which installs ovmf)")


@dataclass(frozen=True)
class Machine:
    """The VM: firmware, whether the image is a CD or a USB stick, size."""

    firmware: Firmware
    usb: bool = False
    memory_mib: int = 3072
    cpus: int = 2
    kvm: bool = False

    @property
    def name(self) -> str:
        return f"{self.firmware}-{'usb' if self.usb else 'cd'}"


def qemu_argv(
    image: Path | None, m: Machine, serial_log: Path, ovmf: Ovmf | None, vars_copy: Path | None, *, nic: str = "none"
) -> list[str]:
    """The QEMU command line (pure): no display, the first serial port into serial_log, no reboot.

    image None: no boot medium (the caller adds the disks to boot from, as `test install` does).
    nic: QEMU's -nic option (none: no network).
    """
    argv = [
        "qemu-system-x86_64",
        "-machine",
        "q35",
        "-accel",
        "kvm" if m.kvm else TCG_ACCEL,
        "-cpu",
        "host" if m.kvm else TCG_CPU,
        "-m",
        str(m.memory_mib),
        "-smp",
        str(m.cpus),
        "-display",
        "none",
        "-vga",
        "std",
        "-monitor",
        "none",
        "-serial",
        f"file:{serial_log}",
        "-no-reboot",
        "-nic",
        nic,
    ]
    if m.firmware == "uefi":
        if ovmf is None:
            raise VmError("test boot: UEFI needs OVMF")
        if ovmf.vars is None:
            argv += ["-bios", str(ovmf.code)]
        else:
            assert vars_copy is not None
            argv += [
                "-drive",
                f"if=pflash,format=raw,unit=0,readonly=on,file={ovmf.code}",
                "-drive",
                f"if=pflash,format=raw,unit=1,file={vars_copy}",
            ]
    if image is None:
        pass
    elif m.usb:
        # The file as a USB stick written with dd: a raw disk on an xHCI controller.
        argv += [
            "-device",
            "qemu-xhci,id=xhci",
            "-drive",
            f"if=none,id=stick,format=raw,readonly=on,file={image}",
            "-device",
            "usb-storage,bus=xhci.0,drive=stick,bootindex=1",
        ]
    else:
        argv += [
            "-drive",
            f"if=none,id=cd,media=cdrom,format=raw,readonly=on,file={image}",
            "-device",
            "ide-cd,drive=cd,bootindex=1",
        ]
    return argv


@dataclass
class BootResult:
    """How one boot went: which markers showed up, how long it took, where the serial log is."""

    machine: str
    passed: bool
    seconds: float
    reached: list[str] = field(default_factory=list)
    missing: str | None = None
    why: str = ""
    log: Path | None = None

    def line(self) -> str:
        if self.passed:
            return f"PASS {self.machine}: {self.reached[-1]!r} after {self.seconds:.1f} s (serial log: {self.log})"
        return (
            f"FAIL {self.machine}: no {self.missing!r} {self.why} after {self.seconds:.1f} s (serial log: {self.log})"
        )


def find_markers(text: str, markers: Sequence[str]) -> list[str]:
    """The markers found in text, in order: each is looked for after the one before it."""
    found: list[str] = []
    pos = 0
    for marker in markers:
        at = text.find(marker, pos)
        if at < 0:
            break
        found.append(marker)
        pos = at + len(marker)
    return found


def firmwares(choice: str) -> list[Firmware]:
    """A --firmware choice as the firmwares to run: "both" is BIOS, then UEFI."""
    return ["bios", "uefi"] if choice == "both" else [choice]  # type: ignore[list-item]


def run_boot_test(
    image: Path,
    firmware: Sequence[Firmware],
    out: Path,
    *,
    expect: str = PROMPT,
    usb: bool = False,
    kvm: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    report: Callable[[BootResult], None] = lambda _result: None,
) -> list[BootResult]:
    """`xenspin test boot`: boot image once per firmware until Xen, dom0 and expect show up; logs in out/test-boot.

    report hears each result as soon as it is known (a boot takes minutes).
    """
    results = []
    for fw in firmware:
        machine = Machine(fw, usb=usb, kvm=kvm)
        result = boot(image, machine, out / "test-boot", markers=[XEN_BANNER, DOM0_BANNER, expect], timeout=timeout)
        report(result)
        results.append(result)
    return results


def boot(
    image: Path,
    m: Machine,
    logs: Path,
    *,
    markers: Sequence[str] = (XEN_BANNER, DOM0_BANNER, PROMPT),
    timeout: float = DEFAULT_TIMEOUT,
    poll: float = 0.5,
) -> BootResult:
    """Boot image in QEMU until every marker has shown up on the serial line, in order, or timeout."""
    if not image.is_file():
        raise VmError(f"test boot: {image}: no such file")
    logs.mkdir(parents=True, exist_ok=True)
    serial = logs / f"{m.name}.serial.log"
    qemu_log = logs / f"{m.name}.qemu.log"
    serial.write_bytes(b"")
    qemu_log.write_bytes(b"")
    ovmf = vars_copy = None
    if m.firmware == "uefi":
        ovmf = find_ovmf()
        if ovmf.vars is not None:
            vars_copy = logs / f"{m.name}.OVMF_VARS.fd"
            shutil.copyfile(ovmf.vars, vars_copy)
    argv = qemu_argv(image.absolute(), m, serial, ovmf, vars_copy)
    start = time.monotonic()
    proc = spawn(argv, what=f"test boot {m.name}", log_path=qemu_log)
    reached: list[str] = []
    why = f"within {timeout:.0f} s"
    try:
        while True:
            reached = find_markers(serial.read_bytes().decode(errors="replace"), markers)
            if len(reached) == len(markers):
                break
            if proc.poll() is not None:
                # One last look: the VM may have printed the marker and then stopped.
                reached = find_markers(serial.read_bytes().decode(errors="replace"), markers)
                if len(reached) < len(markers):
                    why = f"(QEMU exited with status {proc.returncode}; see {qemu_log})"
                break
            if time.monotonic() - start > timeout:
                break
            time.sleep(poll)
    finally:
        stop(proc)
        if vars_copy is not None:
            vars_copy.unlink(missing_ok=True)
    seconds = time.monotonic() - start
    passed = len(reached) == len(markers)
    missing = None if passed else markers[len(reached)]
    return BootResult(m.name, passed, round(seconds, 1), reached, missing, "" if passed else why, serial)
