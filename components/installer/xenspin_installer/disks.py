"""The disk plan: which disk, whether it may be written, and its partitions.

Pure functions over what probe.py saw; install.py runs the plan. Keeping them apart
is what lets the safety rules be tested without a disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import InstallerError

MiB = 1024 * 1024
GiB = 1024 * MiB
SECTOR = 512

BIOS_BOOT = 1 * MiB
ESP = 256 * MiB
ROOT_MIN = 3 * GiB
ROOT_MAX = 16 * GiB
LOCAL_MIN = 1 * GiB
VG_NAME = "xenspin-local"
ANSWER_LABEL = "XSANSWER"
# GPT partition names of the two roots: the one in use, and the other (the release before the
# last upgrade, or empty). An upgrade writes the other and swaps the names; a restore swaps them back.
ROOT_NAME = "xenspin-root"
BACKUP_NAME = "xenspin-backup"
LEGACY_ROOT_NAME = "root"  # the one-root layout of the installs before upgrades existed


@dataclass(frozen=True)
class Disk:
    """A block device as lsblk reports it."""

    path: str
    size: int
    type: str = "disk"
    model: str = ""
    pttype: str = ""
    fstype: str = ""
    readonly: bool = False
    children: tuple[Disk, ...] = ()
    mountpoints: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    holds_live_medium: bool = False
    partlabel: str = ""  # a GPT partition's name
    partn: int = 0  # a partition's number

    @property
    def name(self) -> str:
        return self.path.removeprefix("/dev/")

    @property
    def holds_answerfile(self) -> bool:
        """A small disk labelled XSANSWER brought the answers; it is never a target chosen for the user."""
        return any(ANSWER_LABEL in d.labels for d in (self, *self.children))

    def in_use(self) -> list[str]:
        """Mount points on this device or any partition of it."""
        return [m for d in (self, *self.children) for m in (d.mountpoints or ()) if m]

    def contents(self) -> list[str]:
        """What a wipe would erase, in words: partition table, partitions, filesystems."""
        out = []
        if self.pttype:
            out.append(f"{article(self.pttype)} {self.pttype} partition table")
        if self.fstype:
            out.append(f"{article(self.fstype)} {self.fstype} filesystem")
        for c in self.children:
            out.append(f"{c.path} ({c.fstype or 'no filesystem'}, {human(c.size)})")
        return out

    def describe(self) -> str:
        model = f" {self.model}" if self.model else ""
        return f"{self.path} ({human(self.size)}{model})"


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiox" else "a"


def human(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", GiB), ("MiB", MiB)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


class DiskError(InstallerError):
    """The disk cannot or may not be written: one line saying why."""


def candidates(disks: list[Disk]) -> list[Disk]:
    """Disks an install could go to when none is named: writable whole disks, not the install medium or answers."""
    return [
        d
        for d in disks
        if d.type == "disk" and not d.readonly and not d.holds_live_medium and not d.holds_answerfile and d.size > 0
    ]


@dataclass(frozen=True)
class Choice:
    """The outcome of choosing a disk: one disk, or a question to ask."""

    disk: Disk | None
    ask: list[Disk] = field(default_factory=list)


def choose(disks: list[Disk], named: str, *, interactive: bool, resolve=lambda p: p) -> Choice:
    """The disk to install to. Never a disk nobody named, unless it is the only one.

    named: the disk from the answerfile or the user ("" for none). resolve maps a
    /dev/disk/by-* link to its device (os.path.realpath in real use).
    """
    if named:
        path = resolve(named if named.startswith("/") else "/dev/" + named)
        for d in disks:
            if d.path == path:
                return Choice(d)
        raise DiskError(f"disk {named}: no such disk (found: {', '.join(d.path for d in disks) or 'none'})")
    found = candidates(disks)
    if not found:
        raise DiskError("no disk to install to was found")
    if len(found) == 1:
        return Choice(found[0])
    if interactive:
        return Choice(None, ask=found)
    raise DiskError(
        f"several disks and none named: {', '.join(d.path for d in found)} (name one with disk: in the answerfile)"
    )


def check_writable(disk: Disk, *, wipe: bool) -> None:
    """Refuse a disk we must not write: read-only, in use, the medium, or holding data without wipe."""
    if disk.type not in ("disk", "loop"):
        raise DiskError(f"disk {disk.path}: is a {disk.type}, not a whole disk")
    check_in_use(disk)
    held = disk.contents()
    if held and not wipe:
        raise DiskError(f"disk {disk.path}: holds {', '.join(held)}; refusing to erase it (set wipe: true)")


@dataclass(frozen=True)
class Part:
    """One partition of the plan; sizes in bytes, aligned to 1 MiB."""

    number: int
    label: str
    start: int
    size: int
    typecode: str  # sgdisk type code
    role: str  # bios-boot, esp, root, lvm

    @property
    def end(self) -> int:
        return self.start + self.size


def plan(size: int, *, local_storage: bool = True) -> list[Part]:
    """GPT layout: BIOS boot 1 MiB, ESP 256 MiB, two roots of one size, the rest an LVM PV for guests.

    Two roots so that an upgrade installs the new release beside the one in use and the old
    one stays bootable (upgrade, restore). Each root takes a quarter of what is left, from 3
    to 16 GiB, when there is local storage, or half of it. The first and last MiB stay free
    for the GPT and its backup.
    """
    usable = (size // MiB) * MiB - 2 * MiB
    fixed = BIOS_BOOT + ESP
    if usable < fixed + 2 * ROOT_MIN:
        raise DiskError(f"disk is too small: {human(size)} (expected at least {human(fixed + 2 * ROOT_MIN + 2 * MiB)})")
    rest = usable - fixed
    root = (rest // 2 // MiB) * MiB
    if local_storage:
        quarter = max(ROOT_MIN, min(ROOT_MAX, (rest // 4 // MiB) * MiB))
        if rest - 2 * quarter >= LOCAL_MIN:
            root = quarter
    start = MiB + fixed
    parts = [
        Part(1, "biosboot", MiB, BIOS_BOOT, "EF02", "bios-boot"),
        Part(2, "esp", MiB + BIOS_BOOT, ESP, "EF00", "esp"),
        Part(3, ROOT_NAME, start, root, "8300", "root"),
        Part(4, BACKUP_NAME, start + root, root, "8300", "backup"),
    ]
    if local_storage and rest - 2 * root >= LOCAL_MIN:
        parts.append(Part(5, "local", start + 2 * root, rest - 2 * root, "8E00", "lvm"))
    return parts


def sgdisk_args(disk: str, parts: list[Part]) -> list[str]:
    """One sgdisk command line that writes a fresh GPT with the plan."""
    args = ["sgdisk", "--clear"]
    for p in parts:
        first, last = p.start // SECTOR, p.end // SECTOR - 1
        args += [
            f"--new={p.number}:{first}:{last}",
            f"--typecode={p.number}:{p.typecode}",
            f"--change-name={p.number}:{p.label}",
        ]
    return [*args, disk]


def part_path(disk: str, number: int) -> str:
    """The device of partition number on disk: sda3, nvme0n1p3, loop0p3."""
    return f"{disk}p{number}" if disk[-1].isdigit() else f"{disk}{number}"


def describe_plan(disk: Disk, parts: list[Part]) -> list[str]:
    names = {
        "bios-boot": "BIOS boot",
        "esp": "EFI system (FAT)",
        "root": "root (ext4)",
        "backup": "second root (the release before an upgrade)",
        "lvm": f"LVM {VG_NAME} for guests",
    }
    return [f"{part_path(disk.path, p.number)}  {human(p.size):>10}  {names[p.role]}" for p in parts]


@dataclass(frozen=True)
class Installed:
    """A disk holding this layout: the root in use, the other root, the ESP (all partitions of disk)."""

    disk: Disk
    root: Disk
    backup: Disk
    esp: Disk


def has_layout(disk: Disk) -> bool:
    """Whether disk carries the two-root layout (what an upgrade or a restore can work on)."""
    names = {c.partlabel for c in disk.children}
    return {ROOT_NAME, BACKUP_NAME, "esp"} <= names


def installed(disk: Disk) -> Installed:
    """The installation's partitions on disk, or DiskError saying in one line why there is none to work on."""
    by_name: dict[str, Disk] = {}
    for c in disk.children:
        by_name.setdefault(c.partlabel, c)
    if has_layout(disk):
        return Installed(disk, by_name[ROOT_NAME], by_name[BACKUP_NAME], by_name["esp"])
    if LEGACY_ROOT_NAME in by_name and "esp" in by_name:
        raise DiskError(
            f"disk {disk.path}: holds an install made before upgrades existed (one root partition, no second one "
            "to install beside it); back up what it holds and install fresh"
        )
    held = disk.contents()
    raise DiskError(f"disk {disk.path}: holds no xenspin installation (it holds {', '.join(held) or 'nothing'})")


def check_in_use(disk: Disk) -> None:
    """Refuse a disk that is read-only, the install medium or mounted (any install, upgrade or restore)."""
    if disk.readonly:
        raise DiskError(f"disk {disk.path}: is read-only")
    if disk.holds_live_medium:
        raise DiskError(f"disk {disk.path}: holds the install medium")
    mounted = disk.in_use()
    if mounted:
        raise DiskError(f"disk {disk.path}: is in use (mounted at {', '.join(mounted)})")


def choose_installed(disks: list[Disk], named: str, *, resolve=lambda p: p) -> Disk:
    """The disk to upgrade or restore: the one named, or the only one holding the two-root layout."""
    if named:
        return choose(disks, named, interactive=False, resolve=resolve).disk  # type: ignore[return-value]
    found = [d for d in disks if has_layout(d)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DiskError("no disk holds a xenspin installation to upgrade or restore")
    raise DiskError(f"several disks hold an installation: {', '.join(d.path for d in found)} (name one with disk:)")


def swap_names_args(disk: str, active: int, other: int) -> list[str]:
    """One sgdisk call (one GPT write) that makes partition active the root in use and other the backup."""
    return ["sgdisk", f"--change-name={active}:{ROOT_NAME}", f"--change-name={other}:{BACKUP_NAME}", disk]
