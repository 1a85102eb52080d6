"""The installer ISO: the rootfs, Xen and the live kernel, made bootable four ways (BIOS/UEFI, CD/USB).

BIOS boots through ISOLINUX's mboot.c32 (multiboot v1 loads the gzipped Xen, then the dom0
kernel and initrd), UEFI through a GRUB EFI image (multiboot2/module2) inside an El Torito
platform-0xEF FAT image, and an isohybrid MBR with a GPT makes the same file boot from a USB
stick. Everything that could vary between two builds is fixed: pycdlib's clock, the MBR id
and GPT GUIDs (derived from the key), the FAT image's serial and times, the GRUB memdisk's
tar headers. So two builds of one lock give the same bytes.

Pure parts (menu, configs, key, layout) are separate from the parts that run commands.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import struct
import tarfile
import threading
import time
import types
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xenspin_installer import DISK_INITRD
from xenspin_installer.grammar import CONTROL

from . import answercheck, lazyimport
from .errors import XenspinError
from .manifest import Boot, Distro
from .run import as_builder, builder, give, run, sandbox
from .stage import Done, Needs, Pending, Stage, stage_key
from .store import Store, sha256_file, sha256_json

pycdlib = lazyimport.module("pycdlib")  # imported when an ISO is written (see builder/lazyimport.py)

FORMAT_VERSION = 3  # 2: the installed disk's initrd beside the squashfs; 3: packing tools of the host, sandboxed

# What the ISO's boot loaders are made of, as paths inside the loader tree (the host, or a
# Debian tree composed from locked packages).
ISOLINUX_BIN = "usr/lib/ISOLINUX/isolinux.bin"
SYSLINUX_MODULES = "usr/lib/syslinux/modules/bios"
ISOLINUX_C32 = ["ldlinux.c32", "libcom32.c32", "libutil.c32", "mboot.c32", "menu.c32"]
GRUB_EFI_DIR = "usr/lib/grub/x86_64-efi"
# Built into BOOTX64.EFI (no module is loaded from the medium, so the ISO's files never have
# to match the GRUB that reads them).
GRUB_MODULES = [
    "all_video",
    "configfile",
    "echo",
    "efi_gop",
    "efi_uga",
    "fat",
    "gzio",
    "iso9660",
    "memdisk",
    "multiboot2",
    "normal",
    "part_gpt",
    "part_msdos",
    "search",
    "search_fs_file",
    "serial",
    "tar",
    "terminal",
    "test",
]
# The Debian packages that hold the above: their versions are part of the ISO's key.
LOADER_PACKAGES = ["isolinux", "syslinux-common", "grub-efi-amd64-bin", "grub-common", "dosfstools", "mtools"]

ESP_TYPE = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")  # GPT type of an EFI system partition

LOADERS_KIND = "loaders"

# The file GRUB looks for to find the medium it booted from.
MARKER = "/live/filesystem.squashfs"


class IsoError(XenspinError):
    pass


# --- the boot menu (pure) -------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One boot menu line: what it is called and the command lines it gives Xen and dom0."""

    id: str
    title: str
    xen: str
    dom0: str


MODES = [("install", "Install"), ("unattended", "Unattended install"), ("rescue", "Rescue shell")]


def menu(distro: Distro) -> list[Entry]:
    """The entries of both loaders, the default first.

    Each mode (the installer reads `xenspin.mode=` from the kernel command line) comes with
    the screen as dom0's main console and, when `iso.boot.serial`, a serial-console variant
    whose main console is the manifest's dom0 console (hvc0: Xen's console, on com1). The
    kernel writes to both consoles either way; the main one is where the installer talks.
    With serial on, the serial variants come first so a machine without a screen (or a CI
    job) boots into them.
    """
    boot = distro.iso.boot
    label = distro.iso.label
    vga = [Entry(m, f"{t} {label}", boot.xen_cmdline, _dom0(boot, m, serial=False)) for m, t in MODES]
    if not boot.serial:
        return vga
    serial = [
        Entry(f"{m}-serial", f"{t} {label} (serial console)", boot.xen_cmdline, _dom0(boot, m, serial=True))
        for m, t in MODES
    ]
    return serial + vga


def _dom0(boot: Boot, mode: str, *, serial: bool) -> str:
    consoles = f"console=tty0 {boot.dom0_cmdline}" if serial else f"{boot.dom0_cmdline} console=tty0"
    return f"boot=live {consoles} xenspin.mode={mode}".replace("  ", " ").strip()


# --- what the menus may carry (pure) --------------------------------------------------
# The manifest's grammars keep these strings plain; the writers check again, so that no
# string reaching them some other way can end a config line and start a menu entry.


def _line(what: str, value: str) -> str:
    """value for one line of a boot loader config; IsoError when a control character would end that line."""
    if re.search(f"[{CONTROL}]", value):
        raise IsoError(f"iso: {what} {value!r} holds a control character (it would add lines to the boot menu)")
    return value


def _isolinux_args(what: str, cmdline: str) -> str:
    """A command line for an ISOLINUX append line, which has no quoting: a '---' word would split mboot.c32's modules."""
    if "---" in _line(what, cmdline).split():
        raise IsoError(f"iso: {what} {cmdline!r} holds the word '---' (mboot.c32's module separator)")
    return cmdline


def _grub_args(what: str, cmdline: str) -> str:
    """A command line as GRUB words, each quoted when GRUB would read a character of it (; $ ' ...)."""
    return " ".join(shlex.quote(w) for w in _line(what, cmdline).split())


def isolinux_cfg(distro: Distro, entries: list[Entry]) -> str:
    """ISOLINUX's menu: mboot.c32 loads Xen, then the dom0 kernel and its initrd, split by ---."""
    boot = distro.iso.boot
    lines = []
    if boot.serial:
        lines.append("serial 0 115200")
    lines += [
        "ui menu.c32",
        f"menu title {_line('iso.label', distro.iso.label)} {_line('version', distro.version)}",
        f"timeout {max(1, boot.timeout * 10)}",
        f"default {entries[0].id}",
        "",
    ]
    for e in entries:
        xen, dom0 = _isolinux_args("Xen command line", e.xen), _isolinux_args("dom0 command line", e.dom0)
        lines += [
            f"label {_line('menu id', e.id)}",
            f"  menu label {_line('menu title', e.title)}",
            "  kernel /isolinux/mboot.c32",
            f"  append /boot/xen.gz {xen} --- /live/vmlinuz {dom0} --- /live/initrd.img",
            "",
        ]
    return "\n".join(lines)


def grub_cfg(distro: Distro, entries: list[Entry]) -> str:
    """GRUB's menu (UEFI): find the medium by a file only it has, then multiboot2 Xen."""
    boot = distro.iso.boot
    lines = []
    if boot.serial:
        lines += [
            "serial --unit=0 --speed=115200",
            "terminal_input serial console",
            "terminal_output serial console",
        ]
    lines += [
        f"search --no-floppy --set=root --file {MARKER}",
        f"set timeout={boot.timeout}",
        "set default=0",
        "",
    ]
    for e in entries:
        # "placeholder": multiboot2 hands over the arguments only; Xen drops the first word.
        lines += [
            f"menuentry {shlex.quote(_line('menu title', e.title))} --id {shlex.quote(e.id)} {{",
            f"  multiboot2 /boot/xen.gz placeholder {_grub_args('Xen command line', e.xen)}",
            f"  module2 /live/vmlinuz placeholder {_grub_args('dom0 command line', e.dom0)}",
            "  module2 /live/initrd.img",
            "}",
            "",
        ]
    return "\n".join(lines)


def iso_file_name(distro: Distro) -> str:
    """The ISO's file name, refused unless it is one path component (the manifest's grammar, checked again)."""
    name = _line("iso.filename", distro.iso_filename)
    if "/" in name or name in ("", ".", ".."):
        raise IsoError(f"iso: iso.filename becomes {name!r} (expected one file name, no /)")
    return name


# --- inputs and key (pure) ------------------------------------------------------------


@dataclass(frozen=True)
class Loaders:
    """Where the boot loaders and the tools that pack them come from.

    `root` is a Debian tree holding the packages in LOADER_PACKAGES: "/" (the build host)
    or the locked packages unpacked, whose files the host's own tools read (see _tool).
    `versions` names what is in it, for the key and build-info.json.
    """

    root: Path
    versions: dict[str, str]
    origin: str  # "host" or "locked"

    def path(self, rel: str) -> Path:
        return self.root / rel

    def ident(self) -> dict[str, Any]:
        return {"origin": self.origin, "versions": self.versions}


@dataclass(frozen=True)
class GuestTools:
    """The Windows PV drivers that were built: component -> its .debs."""

    debs: dict[str, list[Path]] = field(default_factory=dict)


@dataclass(frozen=True)
class Inputs:
    """All the ISO stage reads. `rootfs` holds rootfs.squashfs, packages.json, boot/{xen.gz,vmlinuz,initrd.img}
    and boot/disk-initrd.img-KVER (the installed disk's initrd)."""

    distro: Distro
    rootfs: Path
    rootfs_key: str
    loaders: Loaders
    guest: GuestTools
    epoch: int


ROOTFS_FILES = ["rootfs.squashfs", "packages.json", "boot/xen.gz", "boot/vmlinuz", "boot/initrd.img"]


def disk_initrds(rootfs: Path) -> list[Path]:
    """The installed disk's initrds the rootfs stage made (one per kernel)."""
    return sorted((rootfs / "boot").glob(f"{DISK_INITRD}*"))


def key_inputs(inp: Inputs, digest: Callable[[Path], str] = sha256_file) -> dict[str, Any]:
    """What the ISO's key covers: what goes into the image and how it is laid out."""
    iso = inp.distro.iso
    return {
        "name": inp.distro.name,
        "version": inp.distro.version,
        "iso": {
            "volume_id": iso.volume_id,
            "label": iso.label,
            "filename": iso.filename,
            "boot": vars(iso.boot),
        },
        "rootfs": inp.rootfs_key,
        "loaders": inp.loaders.ident(),
        "guest": {n: sorted(digest(d) for d in debs) for n, debs in sorted(inp.guest.debs.items())},
        "epoch": inp.epoch,
        **({"answerfile": digest(Path(af))} if (af := inp.distro.installer.answerfile) else {}),
    }


def key(inp: Inputs, digest: Callable[[Path], str] = sha256_file) -> str:
    return stage_key(FORMAT_VERSION, key_inputs(inp, digest))


def host_loaders() -> Loaders:
    """The build host's boot loaders (until a locked `iso` package set supplies them)."""
    proc = run(
        ["dpkg-query", "-W", "-f=${Package} ${Version} ${db:Status-Status}\\n", *LOADER_PACKAGES],
        what="iso: boot loader packages",
        capture=True,
        check=False,
    )
    versions = {}
    for line in proc.stdout.decode().splitlines():
        name, version, status = line.split()[:3]
        if status == "installed":
            versions[name] = version
    missing = [p for p in LOADER_PACKAGES if p not in versions]
    if missing:
        raise IsoError(f"iso: boot loader packages missing on this host: {' '.join(missing)} (run `xenspin setup`)")
    return Loaders(Path("/"), versions, "host")


def loaders_stage(store: Store, packages: dict[str, dict[str, Any]]) -> Stage:
    """The boot loaders from the lock's `iso` package set: its .debs (verified blobs) unpacked
    into one tree in the store, made once per set.

    The set is not a closure (no libc, no shell): its files are data (GRUB's modules,
    ISOLINUX's binaries) for the host's own packing tools; nothing in it is run.
    """
    missing = [p for p in LOADER_PACKAGES if p not in packages]
    if missing:
        raise IsoError(f"iso: the locked iso package set lacks {' '.join(missing)} (run `xenspin lock`)")
    wanted = {p: packages[p] for p in sorted(packages)}

    def inputs(needs: Needs) -> dict[str, Any]:
        return {"packages": {p: i["sha256"] for p, i in wanted.items()}}

    def make_(tmp: Path, needs: Needs) -> dict[str, Any]:
        log = store.log_dir(LOADERS_KIND, "unpack.log")
        for pkg, info in wanted.items():
            blob = store.blob_path(info["sha256"])
            if not blob.is_file():
                raise IsoError(f"iso: locked boot loader package {pkg} is not in the store (run `xenspin fetch`)")
            run(["dpkg-deb", "-x", str(blob), str(tmp)], what=f"iso: unpack {pkg}", log_path=log)
        return {"versions": {p: i["version"] for p, i in wanted.items()}}

    return Stage(LOADERS_KIND, "iso", FORMAT_VERSION, inputs, make_, lazy=True)


def loaders_of(done: Done) -> Loaders:
    assert done.path is not None and done.meta is not None
    return Loaders(done.path, done.meta["versions"], "locked")


# --- deterministic pycdlib ------------------------------------------------------------

_clock_lock = threading.Lock()


class _Clock(types.SimpleNamespace):
    """The `time` module as pycdlib should see it: always `epoch`, always UTC."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def time(self) -> float:
        return float(self.epoch)

    def localtime(self, t: float | None = None) -> time.struct_time:
        return time.gmtime(self.epoch if t is None else t)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@contextlib.contextmanager
def fixed_clock(epoch: int, seed: str) -> Iterator[None]:
    """Make pycdlib read `epoch` for every time stamp (in UTC) and derive GPT GUIDs from seed.

    pycdlib asks time.time() for each record and uuid4() for GPT GUIDs; swapping the
    modules it sees (not the global ones) keeps the rest of the process untouched.
    """
    counter = iter(range(1 << 30))
    clock = _Clock(epoch)
    ids = types.SimpleNamespace(
        UUID=uuid.UUID,
        uuid4=lambda: uuid.UUID(bytes=hashlib.sha256(f"{seed}/{next(counter)}".encode()).digest()[:16], version=4),
    )
    mods = [pycdlib.pycdlib, pycdlib.headervd, pycdlib.dates]
    with _clock_lock:
        saved = [(m, m.time) for m in mods] + [(pycdlib.isohybrid, None)]
        saved_uuid = pycdlib.isohybrid.uuid
        try:
            for m in mods:
                m.time = clock
            pycdlib.isohybrid.uuid = ids
            yield
        finally:
            for m, t in saved:
                if t is not None:
                    m.time = t
            pycdlib.isohybrid.uuid = saved_uuid


# --- the file layout (pure) -----------------------------------------------------------


def iso9660_name(rel: str, *, directory: bool = False) -> str:
    """An ISO9660 level-3 path for a Rock Ridge/Joliet path: upper case d-characters, files with ;1.

    Readers that matter (Linux, GRUB) use the Rock Ridge names; ISOLINUX matches these
    case-insensitively, so the loaders' own names must survive (they are all short).
    """
    parts = rel.strip("/").split("/")
    out = []
    for i, part in enumerate(parts):
        name = "".join(c if c.isalnum() or c == "." else "_" for c in part.upper())
        if i < len(parts) - 1 or directory:
            out.append(name.replace(".", "_")[:31])
            continue
        stem, dot, ext = name.rpartition(".")
        if not dot:
            stem, ext = name, ""
        ext = ext[:8]
        stem = stem.replace(".", "_")[: 30 - len(ext) - 1] or "_"
        out.append(f"{stem}.{ext};1")
    return "/" + "/".join(out)


@dataclass(frozen=True)
class Layout:
    """What lands where on the ISO: path on the ISO -> file on disk (or bytes)."""

    files: dict[str, Path | bytes]
    bios_boot: str | None  # ISO path of isolinux.bin
    efi_image: str | None  # ISO path of the FAT image


def layout(inp: Inputs, work: Path) -> Layout:
    """The ISO's tree; loader files are read from the loader tree, configs from work/."""
    distro = inp.distro
    entries = menu(distro)
    files: dict[str, Path | bytes] = {
        "live/filesystem.squashfs": inp.rootfs / "rootfs.squashfs",
        "live/vmlinuz": inp.rootfs / "boot/vmlinuz",
        "live/initrd.img": inp.rootfs / "boot/initrd.img",
        "boot/xen.gz": inp.rootfs / "boot/xen.gz",
        "packages.json": inp.rootfs / "packages.json",
        # Beside the squashfs, where the installer looks for the installed disk's initrd.
        **{f"live/{p.name}": p for p in disk_initrds(inp.rootfs)},
        ".disk/info": f"{distro.name} {distro.version} amd64\n".encode(),
    }
    bios_boot = efi_image = None
    if distro.iso.boot.bios:
        files["isolinux/isolinux.bin"] = inp.loaders.path(ISOLINUX_BIN)
        for c32 in ISOLINUX_C32:
            files[f"isolinux/{c32}"] = inp.loaders.path(f"{SYSLINUX_MODULES}/{c32}")
        files["isolinux/isolinux.cfg"] = isolinux_cfg(distro, entries).encode()
        bios_boot = "isolinux/isolinux.bin"
    if distro.iso.boot.uefi:
        files["boot/grub/efi.img"] = work / "efi.img"
        files["boot/grub/grub.cfg"] = grub_cfg(distro, entries).encode()
        efi_image = "boot/grub/efi.img"
    if distro.installer.answerfile:  # an unattended spin: the installer finds it under the live medium
        answer = Path(distro.installer.answerfile)
        files[answercheck.iso_name(answer)] = answer
    tools = work / "guest-tools"
    for f in sorted(tools.rglob("*")) if tools.is_dir() else []:
        if f.is_file():
            files[f"guest-tools/{f.relative_to(tools)}"] = f
    return Layout(dict(sorted(files.items())), bios_boot, efi_image)


# --- commands -------------------------------------------------------------------------


def _tool(loaders: Loaders, work: Path, argv: list[str], *, what: str, log: Path, env: dict[str, str]) -> None:
    """Run a packing tool of the build host (grub-mkimage, mkfs.vfat, mtools) on the locked loaders' files.

    Never a binary from the loader packages: a spin chooses its archive, so those are
    its code (and a newer suite's would not even start on this host). The host's tool
    reads the locked files as data, in the sandbox as the build account: the host's
    system read-only, no network, only work/ writable.
    """
    who = builder()
    for d in [work, *(p for p in work.rglob("*") if p.is_dir() and not p.is_symlink())]:
        give(d, who)
    binds = {str(work): work}
    ro = {} if loaders.origin == "host" else {str(loaders.root): loaders.root}
    prefix = sandbox(Path("/"), ro=ro, rw=binds, env=env, cwd=str(work))
    reach = [work, *ro.values()]
    run(as_builder([*prefix, *argv], who, reach=reach), what=what, log_path=log)


def efi_image(inp: Inputs, work: Path, log: Path) -> Path:
    """BOOTX64.EFI (GRUB with the menu in a memdisk) inside a FAT image, made without mounting.

    grub-mkimage with a memdisk tar we write ourselves (fixed names, owners and times) gives
    the same bytes every time, which grub-mkstandalone's own tar does not.
    """
    epoch = inp.epoch
    grub_dir = work / "grub"
    grub_dir.mkdir()
    cfg = grub_cfg(inp.distro, menu(inp.distro)).encode()
    with tarfile.open(grub_dir / "memdisk.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in [("boot", None), ("boot/grub", None), ("boot/grub/grub.cfg", cfg)]:
            info = tarfile.TarInfo(name)
            info.mtime = epoch
            info.uname = info.gname = "root"
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    (grub_dir / "early.cfg").write_text("set root=(memdisk)\nset prefix=($root)/boot/grub\n")
    env = {"SOURCE_DATE_EPOCH": str(epoch), "TZ": "UTC", "LC_ALL": "C.UTF-8"}
    efi = grub_dir / "BOOTX64.EFI"
    _tool(
        inp.loaders,
        work,
        [
            "grub-mkimage",
            "-O",
            "x86_64-efi",
            "-d",
            str(inp.loaders.path(GRUB_EFI_DIR)),
            "-c",
            str(grub_dir / "early.cfg"),
            "-m",
            str(grub_dir / "memdisk.tar"),
            "-p",
            "/boot/grub",
            "-o",
            str(efi),
            *GRUB_MODULES,
        ],
        what="iso: GRUB EFI image",
        log=log,
        env=env,
    )
    os.utime(efi, (epoch, epoch))
    img = work / "efi.img"
    # FAT room: the EFI binary plus slack for the FAT tables and directories, whole MiB.
    kib = ((efi.stat().st_size + 512 * 1024) // (1024 * 1024) + 1) * 1024
    serial = sha256_json({"efi": sha256_file(efi)})[:8]
    _tool(
        inp.loaders,
        work,
        ["mkfs.vfat", "-C", "-i", serial, "-n", "EFIBOOT", "--invariant", str(img), str(kib)],
        what="iso: FAT image",
        log=log,
        env=env,
    )
    _tool(inp.loaders, work, ["mmd", "-i", str(img), "::/EFI", "::/EFI/BOOT"], what="iso: FAT dirs", log=log, env=env)
    _tool(
        inp.loaders,
        work,
        ["mcopy", "-m", "-i", str(img), str(efi), "::/EFI/BOOT/BOOTX64.EFI"],
        what="iso: FAT copy",
        log=log,
        env=env,
    )
    return img


def write_iso(
    lay: Layout, dest: Path, *, volume_id: str, epoch: int, seed: str, volume_set: str = "", app: str = ""
) -> None:
    """Write the ISO (ISO9660 level 3 + Joliet + Rock Ridge 1.09, El Torito, isohybrid) to dest."""
    with fixed_clock(epoch, seed):
        iso = pycdlib.PyCdlib()
        iso.new(
            interchange_level=3,
            joliet=3,
            rock_ridge="1.09",
            vol_ident=volume_id,
            vol_set_ident=volume_set,
            app_ident_str=app,
        )
        dirs: set[str] = set()
        handles: list[Any] = []
        try:
            for rel, src in lay.files.items():
                parts = rel.split("/")
                for depth in range(1, len(parts)):
                    d = "/".join(parts[:depth])
                    if d not in dirs:
                        dirs.add(d)
                        iso.add_directory(
                            iso9660_name(d, directory=True), rr_name=parts[depth - 1], joliet_path="/" + d
                        )
                if isinstance(src, bytes):
                    fp: Any = io.BytesIO(src)
                    size = len(src)
                else:
                    fp = open(src, "rb")  # noqa: SIM115 - pycdlib reads it at write time
                    handles.append(fp)
                    size = os.fstat(fp.fileno()).st_size
                iso.add_fp(
                    fp,
                    size,
                    iso9660_name(rel),
                    rr_name=parts[-1],
                    joliet_path="/" + rel,
                    file_mode=0o100444,
                )
            if lay.bios_boot:
                iso.add_eltorito(
                    iso9660_name(lay.bios_boot),
                    bootcatfile=iso9660_name("isolinux/boot.cat"),
                    rr_bootcatname="boot.cat",
                    joliet_bootcatfile="/isolinux/boot.cat",
                    boot_load_size=4,
                    boot_info_table=True,
                )
            if lay.efi_image:
                kwargs: dict[str, Any] = {}
                if not lay.bios_boot:
                    kwargs = {
                        "bootcatfile": iso9660_name("boot/grub/boot.cat"),
                        "rr_bootcatname": "boot.cat",
                        "joliet_bootcatfile": "/boot/grub/boot.cat",
                    }
                iso.add_eltorito(iso9660_name(lay.efi_image), platform_id=0xEF, efi=True, **kwargs)
            if lay.bios_boot:
                iso.add_isohybrid(efi=bool(lay.efi_image), mbr_id=int(seed[:8], 16))
            with open(dest, "wb") as out:
                iso.write_fp(out)
            if lay.bios_boot and lay.efi_image:
                repair_gpt(dest)
        finally:
            for fp in handles:
                fp.close()
            iso.close()


def repair_gpt(path: Path) -> None:
    """Make the isohybrid GPT pycdlib wrote consistent: CRCs over the whole entry array, and a
    backup header and array that mirror the primary ones (same GUIDs).

    pycdlib 1.x checksums only the used entries and draws separate GUIDs for the backup, so
    partitioning tools call the table corrupt.
    """
    with open(path, "r+b") as f:
        f.seek(512)
        primary = bytearray(f.read(512))
        if primary[:8] != b"EFI PART":
            return
        size = struct.unpack_from("<I", primary, 12)[0]
        (backup_lba,) = struct.unpack_from("<Q", primary, 32)
        (entries_lba,) = struct.unpack_from("<Q", primary, 72)
        count, entry_size = struct.unpack_from("<II", primary, 80)
        f.seek(entries_lba * 512)
        entries = bytearray(f.read(count * entry_size))
        # The second entry is the El Torito EFI image: say so (pycdlib calls it basic data).
        entries[entry_size : entry_size + 16] = ESP_TYPE.bytes_le
        f.seek(entries_lba * 512)
        f.write(entries)
        array_crc = zlib.crc32(entries)
        backup_entries_lba = backup_lba - (count * entry_size + 511) // 512
        for header, own, other, table in (
            (primary, 1, backup_lba, entries_lba),
            (bytearray(primary), backup_lba, 1, backup_entries_lba),
        ):
            struct.pack_into("<QQ", header, 24, own, other)
            struct.pack_into("<Q", header, 72, table)
            struct.pack_into("<I", header, 88, array_crc)
            struct.pack_into("<I", header, 16, 0)
            struct.pack_into("<I", header, 16, zlib.crc32(bytes(header[:size])))
            f.seek(own * 512)
            f.write(header)
            if own != 1:
                f.seek(table * 512)
                f.write(entries)


# --- guest tools ----------------------------------------------------------------------


def guest_tree(guest: GuestTools, work: Path, log: Path) -> dict[str, Any] | None:
    """Unpack the PV driver packages into work/guest-tools with a SHA256SUMS; None when there are none."""
    if not guest.debs:
        return None
    root = work / "guest-tools"
    root.mkdir()
    versions: dict[str, Any] = {}
    for name, debs in sorted(guest.debs.items()):
        for deb in debs:
            unpack = work / f"deb-{name}"
            run(["dpkg-deb", "-x", str(deb), str(unpack)], what=f"iso: unpack {name}", log_path=log)
            fields = run(
                ["dpkg-deb", "-f", str(deb), "Package", "Version"], what=f"iso: read {name}", capture=True
            ).stdout.decode()
            info = dict(line.split(": ", 1) for line in fields.strip().splitlines())
            versions[name] = {"package": info.get("Package", ""), "version": info.get("Version", "")}
            share = unpack / "usr/share/xenspin/guest-tools"
            if share.is_dir():
                for item in sorted(share.iterdir()):
                    shutil.copytree(item, root / item.name, dirs_exist_ok=True)
            shutil.rmtree(unpack)
    sums = []
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        sums.append(f"{sha256_file(f)}  {f.relative_to(root)}")
    (root / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    (root / "versions.json").write_text(json.dumps(versions, indent=2, sort_keys=True) + "\n")
    return versions


# --- the stage ------------------------------------------------------------------------

KIND = "iso"
STAGE_ID = f"{KIND}:iso"
# Components whose packages carry guest tools (Windows PV drivers) rather than dom0 software.
GUEST_PREFIX = "win-"


@dataclass
class Made:
    """The ISO stage's object in the store: the ISO, guest-tools.iso when there are guest tools, packages.json."""

    path: Path
    iso: Path
    guest_iso: Path | None
    info: dict[str, Any]


def made(path: Path, info: dict[str, Any]) -> Made:
    guest = path / "guest-tools.iso"
    return Made(path, path / info["iso"], guest if guest.is_file() else None, info)


def make(tmp: Path, inp: Inputs, log: Path, seed: str) -> dict[str, Any]:
    """Write the ISO (and guest-tools.iso) into tmp; return what to record beside it.

    Scratch (the EFI image, unpacked guest tools) lives in tmp/.work and is removed
    before the store renames tmp into place.
    """
    start = time.monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    for rel in ROOTFS_FILES:
        if not (inp.rootfs / rel).is_file():
            raise IsoError(f"iso: the rootfs output lacks {rel} ({inp.rootfs})")
    if not disk_initrds(inp.rootfs):
        raise IsoError(f"iso: the rootfs output lacks boot/{DISK_INITRD}KVER ({inp.rootfs})")
    work = tmp / ".work"
    work.mkdir()
    try:
        versions = guest_tree(inp.guest, work, log)
        if inp.distro.iso.boot.uefi:
            efi_image(inp, work, log)
        lay = layout(inp, work)
        name = iso_file_name(inp.distro)
        write_iso(
            lay,
            tmp / name,
            volume_id=inp.distro.iso.volume_id,
            epoch=inp.epoch,
            seed=seed,
            volume_set=f"{inp.distro.name} {inp.distro.version}"[:128],
            app=f"xenspin {inp.distro.name}"[:128],
        )
        if versions is not None:
            tools = work / "guest-tools"
            files = {str(f.relative_to(tools)): f for f in sorted(tools.rglob("*")) if f.is_file()}
            write_iso(
                Layout(files, None, None),
                tmp / "guest-tools.iso",
                volume_id="XENSPIN_TOOLS",
                epoch=inp.epoch,
                seed=seed,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    shutil.copyfile(inp.rootfs / "packages.json", tmp / "packages.json")
    return {
        "iso": name,
        "size": (tmp / name).stat().st_size,
        "sha256": sha256_file(tmp / name),
        "guest_tools": versions,
        "loaders": inp.loaders.ident(),
        "boot": {"bios": lay.bios_boot is not None, "uefi": lay.efi_image is not None},
        "seconds": round(time.monotonic() - start, 1),
    }


def obtain(inp: Inputs, store: Store) -> Made:
    """The ISO for these inputs from the store, made first when missing (outside a stage graph)."""
    k = key(inp)
    path = store.obtain(KIND, k, lambda tmp: make(tmp, inp, store.log_dir(KIND, k[:16], "iso.log"), k))
    info = store.meta(KIND, k)
    assert info is not None
    return made(path, info)


def stage(
    distro: Distro,
    rootfs_id: str,
    guest_ids: dict[str, str],
    loaders: Loaders | str,
    epoch: int,
    store: Store,
) -> Stage:
    """The ISO as a node of the pipeline graph: after the rootfs and the guest tool builds.

    guest_ids maps guest tool components to their build stages (the ones left out are
    recorded by the driver in build-info.json). loaders is the loaders stage's id (locked) or the host's.
    The key takes the .debs' recorded digests, not their bytes.
    """
    loaders_id = loaders if isinstance(loaders, str) else None

    def loaders_in(needs: Needs, *, key_only: bool) -> Loaders:
        if not isinstance(loaders, str):
            return loaders
        done = needs[loaders]
        if key_only:  # the key takes the loader set's key; its tree is made only when the ISO is
            return Loaders(Path("/nonexistent"), {"stage": done.key}, "locked")
        return loaders_of(done)

    def inputs_of(needs: Needs, *, key_only: bool = False) -> Inputs:
        rootfs = needs[rootfs_id]
        if rootfs.path is None:
            raise Pending("the ISO's key needs the rootfs")
        debs: dict[str, list[Path]] = {}
        for name, sid in sorted(guest_ids.items()):
            done = needs[sid]
            if done.path is None or done.meta is None:
                raise Pending("the ISO's key needs the guest tool builds")
            debs[name] = [done.path / d for d in done.meta["debs"]]
        ld = loaders_in(needs, key_only=key_only)
        return Inputs(distro, rootfs.path, rootfs.key, ld, GuestTools(debs), epoch)

    def digest(needs: Needs) -> Callable[[Path], str]:
        recorded = {
            needs[sid].path / d: sha  # type: ignore[operator]
            for sid in guest_ids.values()
            for d, sha in (needs[sid].meta or {}).get("sha256", {}).items()
        }
        return lambda p: recorded.get(p) or sha256_file(p)

    def inputs(needs: Needs) -> dict[str, Any]:
        return key_inputs(inputs_of(needs, key_only=True), digest(needs))

    def make_(tmp: Path, needs: Needs) -> dict[str, Any]:
        inp = inputs_of(needs)
        k = stage_key(FORMAT_VERSION, inputs(needs))
        return make(tmp, inp, store.log_dir(KIND, k[:16], "iso.log"), k)

    uses = (loaders_id,) if loaders_id else ()
    return Stage(KIND, "iso", FORMAT_VERSION, inputs, make_, after=(rootfs_id, *guest_ids.values()), uses=uses)


# --- publishing to --out --------------------------------------------------------------


def build_info(
    distro: Distro,
    result: Made,
    *,
    lock_sha256: str,
    stages: dict[str, dict[str, Any]],
    sizes: dict[str, int],
    left_out: dict[str, str],
    epoch: int,
    xen: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """build-info.json: what was built from what, how big, how long each stage took, what was left out,
    and where Xen's hypervisor and tools came from (xensource.origins)."""
    guest_left = sorted(n for n in left_out if n.startswith(GUEST_PREFIX))
    return {
        "name": distro.name,
        "version": distro.version,
        "iso": {"file": result.iso.name, "sha256": result.info["sha256"], "size": result.info["size"]},
        "lock_sha256": lock_sha256,
        "source_date_epoch": epoch,
        "stages": stages,
        "sizes": sizes,
        "left_out": left_out,
        "guest_tools": result.info.get("guest_tools") or {},
        "guest_tools_left_out": guest_left,
        "boot_loaders": result.info.get("loaders"),
        "xen": xen or {},
    }


def _place(src: Path | bytes, dest: Path) -> None:
    """Put src at dest under a temporary name first, so dest is never half-written."""
    if not isinstance(src, bytes) and dest.exists() and os.path.samefile(src, dest):
        return  # already this file (a hard link from an earlier run): rename() would do nothing
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    if isinstance(src, bytes):
        tmp.write_bytes(src)
    else:
        try:
            os.link(src, tmp)
        except OSError:  # another filesystem
            shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def publish(result: Made, out: Path, build_info: dict[str, Any], extra: Sequence[Path] = ()) -> list[Path]:
    """Write the ISO, guest-tools.iso, packages.json, extra files (the SBOM), build-info.json and
    SHA256SUMS into out/."""
    out.mkdir(parents=True, exist_ok=True)
    placed: list[Path] = []
    for src in [result.iso, result.guest_iso, result.path / "packages.json", *extra]:
        if src is not None:
            _place(src, out / src.name)
            placed.append(out / src.name)
    stale = out / "guest-tools.iso"
    if result.guest_iso is None and stale.exists():
        stale.unlink()
    info = json.dumps(build_info, indent=2, sort_keys=True) + "\n"
    _place(info.encode(), out / "build-info.json")
    placed.append(out / "build-info.json")
    # The ISO's digest was recorded when it was made: a no-op build does not read 200+ MB again.
    known = {result.iso.name: result.info.get("sha256")}
    sums = "".join(f"{known.get(p.name) or sha256_file(p)}  {p.name}\n" for p in sorted(placed))
    _place(sums.encode(), out / "SHA256SUMS")
    return [*placed, out / "SHA256SUMS"]


# --- reading an ISO back (verify, diff, the install test's menu) ---------------------------

SYSTEM_AREA = 16 * 2048  # ISO 9660's first 16 sectors: the isohybrid MBR and GPT live there


class UnreadableIso(XenspinError):
    """Not an ISO 9660 image pycdlib can read."""


class _WithoutSystemArea(io.RawIOBase):
    """An image read with its system area as zeros.

    The build rewrites the isohybrid GPT there (repair_gpt) with partition types pycdlib's
    parser refuses; the ISO 9660 tree read here starts after it and does not depend on it.
    """

    def __init__(self, f: io.BufferedReader) -> None:
        self.f = f

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def readinto(self, b: Any) -> int:
        pos = self.f.tell()
        n = self.f.readinto(b)
        if n and pos < SYSTEM_AREA:
            k = min(n, SYSTEM_AREA - pos)
            b[:k] = bytes(k)
        return n


def read_files(image: Path, names: Sequence[str]) -> dict[str, bytes]:
    """Files of an ISO by their paths (Rock Ridge, else Joliet); a name it does not hold is left out."""
    out: dict[str, bytes] = {}
    with open(image, "rb") as f:
        reader = pycdlib.PyCdlib()
        try:
            reader.open_fp(_WithoutSystemArea(f))
        except Exception as e:  # pycdlib's own exception types, for a damaged image
            raise UnreadableIso(f"{image}: not a readable ISO 9660 image ({e})") from None
        try:
            for name in names:
                for kind in ("rr_path", "joliet_path"):
                    buf = io.BytesIO()
                    try:
                        reader.get_file_from_iso_fp(buf, **{kind: "/" + name.lstrip("/")})
                    except Exception:
                        continue
                    out[name] = buf.getvalue()
                    break
        finally:
            reader.close()
    return out
