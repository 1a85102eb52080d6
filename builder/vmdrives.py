"""The drive plan of `xenspin test install` and `test upgrade`: QEMU devices that give the target disk the
name the answerfile gives it in dom0.

Pure: `plan(name)` says which bus each drive sits on and what dom0 calls it; `DrivePlan.argv`
turns that into QEMU options. How dom0 names what QEMU attaches on q35:

- virtio-blk devices are vda, vdb, ... in the order they are on the command line (PCI order);
- disks on the built-in AHCI controller are sda, sdb, ... by port; here port 0 is left to the
  ISO's CD (sr0) and the disks take ports 1 to 5 in letter order;
- NVMe controllers are nvme0, nvme1, ... in command-line order, their namespaces n1, n2, ...;
- /dev/disk/by-id/ names come from udev: virtio-SERIAL, ata-QEMU_HARDDISK_SERIAL (QEMU's ATA
  model, then the serial) and nvme-QEMU_NVMe_Ctrl_SERIAL, so the drive gets that serial.

The answers disk (XSANSWER) never takes the target's name: it goes on AHCI beside a virtio or
NVMe target and on virtio beside an AHCI one; for a later letter (sdb, vdc) it and blank filler
disks take the letters before the target's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import XenspinError

Bus = Literal["virtio", "ahci", "nvme"]
Role = Literal["target", "answers", "filler"]

AHCI_FIRST_PORT = 1  # port 0: the ISO's CD
AHCI_PORTS = 5  # q35's ICH9 AHCI has six (ide.0 to ide.5)
MAX_VIRTIO = 8
MAX_NVME = 4
SERIAL = r"[A-Za-z0-9_.+-]{1,20}"  # what QEMU passes through and udev keeps as is (20: ATA's and virtio's limit)
BY_ID = "/dev/disk/by-id/"
NVME_MODEL = "QEMU_NVMe_Ctrl"  # QEMU's NVMe model "QEMU NVMe Ctrl" as udev writes it
ATA_MODEL = "QEMU_HARDDISK"  # QEMU's ATA model "QEMU HARDDISK"
FORMS = (
    "vdX, sdX (sda to sde), nvmeXnY, /dev/disk/by-id/virtio-SERIAL, "
    f"/dev/disk/by-id/ata-{ATA_MODEL}_SERIAL or /dev/disk/by-id/nvme-{NVME_MODEL}_SERIAL"
)


@dataclass(frozen=True)
class Drive:
    """One disk of the VM: its part, the bus it sits on and what dom0 calls it."""

    id: str  # QEMU's drive id; the file given for it in DrivePlan.argv
    role: Role
    bus: Bus
    name: str  # dom0's kernel name: vda, sdb, nvme0n1
    port: int = 0  # AHCI port; NVMe controller number
    nsid: int = 0  # NVMe namespace
    serial: str = ""


@dataclass(frozen=True)
class DrivePlan:
    """The disks of the VM, in the order they are attached, and the target's names."""

    target: str  # as the answerfile names it ("" for the only disk)
    drives: tuple[Drive, ...]

    @property
    def device(self) -> str:
        """The target's kernel device, as the installer reports it: /dev/sda."""
        return "/dev/" + self.by_role("target")[0].name

    def by_role(self, role: Role) -> list[Drive]:
        return [d for d in self.drives if d.role == role]

    def argv(self, files: Mapping[str, Path], *, boot_disk: bool) -> list[str]:
        """QEMU options for every drive; files: each drive id's image (the target qcow2, the others raw or qcow2,
        all but the target opened with snapshot=on). boot_disk: the target boots first (else the CD does)."""
        argv: list[str] = []
        nvme_serials = {d.port: d.serial for d in self.drives if d.bus == "nvme" and d.serial}
        controllers: set[int] = set()
        for d in self.drives:
            path = files[d.id]
            fmt = "qcow2" if path.suffix == ".qcow2" else "raw"
            snapshot = "" if d.role == "target" else ",snapshot=on"
            argv += ["-drive", f"if=none,id={d.id},format={fmt},file={path}{snapshot}"]
            opts = f"drive={d.id}"
            if d.role == "target":
                opts += ",bootindex=1" if boot_disk else ",bootindex=2"
            serial = f",serial={d.serial}" if d.serial else ""
            if d.bus == "virtio":
                argv += ["-device", f"virtio-blk-pci,{opts}{serial}"]
            elif d.bus == "ahci":
                argv += ["-device", f"ide-hd,{opts}{serial},bus=ide.{d.port}"]
            else:  # the serial is the controller's
                if d.port not in controllers:
                    controllers.add(d.port)
                    argv += ["-device", f"nvme,id=nvme{d.port},serial={nvme_serials.get(d.port, f'xsnvme{d.port}')}"]
                argv += ["-device", f"nvme-ns,bus=nvme{d.port},nsid={d.nsid},{opts}"]
        return argv


class DriveError(XenspinError):
    """A target disk name the VM cannot be given: one line."""


def _refuse(name: str, why: str) -> DriveError:
    return DriveError(f"test install: the answerfile's disk {name!r}: {why} (expected {FORMS})")


def plan(disk: str) -> DrivePlan:
    """The drives that make dom0 see the target under disk (the answerfile's disk:, "" for the only disk)."""
    name = disk.removeprefix("/dev/") if not disk.startswith(BY_ID) else disk
    if not name:
        return _virtio(disk, 0)
    if m := re.fullmatch(r"vd([a-z])", name):
        index = ord(m[1]) - ord("a")
        if index >= MAX_VIRTIO:
            raise _refuse(disk, f"the harness attaches at most {MAX_VIRTIO} virtio disks")
        return _virtio(disk, index)
    if m := re.fullmatch(r"sd([a-z])", name):
        index = ord(m[1]) - ord("a")
        if index >= AHCI_PORTS:
            raise _refuse(disk, f"q35's AHCI ports give sda to sd{chr(ord('a') + AHCI_PORTS - 1)}")
        return _ahci(disk, index)
    if m := re.fullmatch(r"nvme(\d+)n(\d+)", name):
        ctrl, ns = int(m[1]), int(m[2])
        if ctrl >= MAX_NVME or not 1 <= ns <= MAX_NVME:
            raise _refuse(disk, f"the harness makes nvme0 to nvme{MAX_NVME - 1}, namespaces n1 to n{MAX_NVME}")
        return _nvme(disk, ctrl, ns)
    if name.startswith(BY_ID):
        link = name.removeprefix(BY_ID)
        if m := re.fullmatch(f"virtio-({SERIAL})", link):
            return _virtio(disk, 0, serial=m[1])
        if m := re.fullmatch(f"ata-{ATA_MODEL}_({SERIAL})", link):
            return _ahci(disk, 0, serial=m[1])
        if m := re.fullmatch(f"nvme-{NVME_MODEL}_({SERIAL})", link):
            return _nvme(disk, 0, 1, serial=m[1])
        raise _refuse(disk, "no QEMU drive makes that by-id name with one serial")
    raise _refuse(disk, "not a name the harness can give a QEMU disk")


def _answers(bus: Bus, name: str, port: int = 0) -> Drive:
    return Drive("answers", "answers", bus, name, port)


def _fillers(bus: Bus, names: list[str], ports: list[int]) -> list[Drive]:
    return [
        Drive(f"filler{i}", "filler", bus, n, p) for i, (n, p) in enumerate(zip(names, ports, strict=True), start=1)
    ]


def _virtio(disk: str, index: int, serial: str = "") -> DrivePlan:
    target = Drive("target", "target", "virtio", f"vd{chr(ord('a') + index)}", serial=serial)
    if index == 0:  # the answers disk on AHCI: sda
        return DrivePlan(disk, (target, _answers("ahci", "sda", AHCI_FIRST_PORT)))
    names = [f"vd{chr(ord('a') + i)}" for i in range(1, index)]
    return DrivePlan(disk, (_answers("virtio", "vda"), *_fillers("virtio", names, [0] * len(names)), target))


def _ahci(disk: str, index: int, serial: str = "") -> DrivePlan:
    target = Drive("target", "target", "ahci", f"sd{chr(ord('a') + index)}", AHCI_FIRST_PORT + index, serial=serial)
    if index == 0:  # the answers disk on virtio: vda
        return DrivePlan(disk, (_answers("virtio", "vda"), target))
    names = [f"sd{chr(ord('a') + i)}" for i in range(1, index)]
    ports = [AHCI_FIRST_PORT + i for i in range(1, index)]
    return DrivePlan(disk, (_answers("ahci", "sda", AHCI_FIRST_PORT), *_fillers("ahci", names, ports), target))


def _nvme(disk: str, ctrl: int, ns: int, serial: str = "") -> DrivePlan:
    """Controllers before the target's with one blank namespace each; blank namespaces before the target's."""
    before = [(c, 1) for c in range(ctrl)] + [(ctrl, n) for n in range(1, ns)]
    fillers = [Drive(f"filler{i}", "filler", "nvme", f"nvme{c}n{n}", c, n) for i, (c, n) in enumerate(before, start=1)]
    target = Drive("target", "target", "nvme", f"nvme{ctrl}n{ns}", ctrl, ns, serial)
    return DrivePlan(disk, (_answers("ahci", "sda", AHCI_FIRST_PORT), *fillers, target))
