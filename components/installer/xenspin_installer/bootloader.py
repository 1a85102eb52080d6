"""GRUB on the installed disk: its settings, the grub.cfg the installer writes, the UEFI image's config.

The installer writes /boot/grub/grub.cfg itself instead of running `update-grub`: under
emulation update-grub took 118 of the install's 250 s (dozens of shell scripts and
grub-probe calls), and the installer already knows the one root filesystem, kernel and
Xen it has put in place. The entries carry the command lines update-grub would give
them: the same /etc/default/grub and grub.d/*.cfg are read (by a shell, as grub-mkconfig
reads them) and combined as Debian's 10_linux and 20_linux_xen combine them. A later
`update-grub` (on a kernel upgrade) rewrites the file from those same settings.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from . import confined

DISTRIBUTOR = "xenspin"  # GRUB's menu says "xenspin GNU/Linux, with Xen hypervisor"
XEN_TITLE = f"{DISTRIBUTOR} GNU/Linux, with Xen hypervisor"
XEN_CMDLINE = "dom0_mem=1024M,max:1024M"
EFI_CORE_MODULES = ["part_gpt", "part_msdos", "ext2", "search", "search_fs_uuid"]
# After an upgrade: the menu entry of the release kept on the other root (written by the installer,
# and printed by the /etc/grub.d script of that name when update-grub runs).
PREVIOUS_CFG = "/boot/grub/xenspin-previous.cfg"
PREVIOUS_SCRIPT = "/etc/grub.d/42_xenspin_previous"

# The variables grub-mkconfig exports to its scripts that the entries written here use.
SETTINGS = [
    "GRUB_DEFAULT",
    "GRUB_TIMEOUT",
    "GRUB_DISTRIBUTOR",
    "GRUB_TERMINAL",
    "GRUB_TERMINAL_INPUT",
    "GRUB_TERMINAL_OUTPUT",
    "GRUB_SERIAL_COMMAND",
    "GRUB_CMDLINE_LINUX",
    "GRUB_CMDLINE_LINUX_DEFAULT",
    "GRUB_CMDLINE_XEN",
    "GRUB_CMDLINE_XEN_DEFAULT",
    "GRUB_CMDLINE_LINUX_XEN_REPLACE",
    "GRUB_CMDLINE_LINUX_XEN_REPLACE_DEFAULT",
]


def read_settings_script(root: str = "") -> str:
    """A shell line that sources root's GRUB settings in grub-mkconfig's order and prints them NUL-separated.

    The installer runs it in the target (chroot, root ""): the files are shell, as they are for grub-mkconfig.
    """
    values = " ".join(f'"${{{name}}}"' for name in SETTINGS)
    files = '"$R"/etc/default/grub "$R"/etc/default/grub.d/*.cfg'
    return (
        f'R={shlex.quote(root)}; for f in {files}; do if [ -e "$f" ]; then . "$f"; fi; done; printf \'%s\\0\' {values}'
    )


def grub_defaults(serial_console: bool) -> str:
    """GRUB settings read after the image's (zz-): Xen the default entry, the serial console when asked.

    The image's /etc/default/grub.d/xen.cfg carries the distribution's Xen and dom0
    command lines; this keeps them and adds the serial console to them.
    """
    lines = [
        "# written by the xenspin installer",
        f'GRUB_DISTRIBUTOR="{DISTRIBUTOR}"',
        f'GRUB_DEFAULT="{XEN_TITLE}"',
        "GRUB_TIMEOUT=3",
        f'GRUB_CMDLINE_XEN_DEFAULT="${{GRUB_CMDLINE_XEN_DEFAULT:-{XEN_CMDLINE}}}"',
    ]
    if serial_console:
        lines += [
            'case " $GRUB_CMDLINE_XEN_DEFAULT " in *" com1="*) ;; '
            '*) GRUB_CMDLINE_XEN_DEFAULT="$GRUB_CMDLINE_XEN_DEFAULT console=com1,vga com1=115200" ;; esac',
            'GRUB_CMDLINE_LINUX_XEN_REPLACE_DEFAULT="console=tty0 console=hvc0"',
            'GRUB_TERMINAL="serial console"',
            'GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"',
        ]
    return "\n".join(lines) + "\n"


def parse_settings(out: str) -> dict[str, str]:
    """read_settings_script's output as a dict (an unset variable is the empty string)."""
    values = out.split("\0")
    return {name: values[i] if i < len(values) else "" for i, name in enumerate(SETTINGS)}


def version_key(name: str) -> list[tuple[int, object]]:
    """Sort key for file names holding versions (vmlinuz-6.1.0-9-amd64 < vmlinuz-6.1.0-10-amd64)."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class BootFiles:
    """What the entries load, as paths on the root filesystem (which holds /boot)."""

    kernel: str  # /boot/vmlinuz-KVER
    initrd: str | None  # /boot/initrd.img-KVER
    xen: str | None  # /boot/xen-*.gz


def boot_files(root: Path) -> BootFiles:
    """The newest kernel (with its initrd) and the newest Xen under root/boot, as update-grub would pick them."""
    boot = confined.resolve(root, "boot")  # names only, read inside root (a link there never leaves it)
    kernels = sorted((p.name for p in boot.glob("vmlinuz-*")), key=version_key, reverse=True)
    if not kernels:
        raise FileNotFoundError(f"{boot}: no vmlinuz-*")
    version = kernels[0].removeprefix("vmlinuz-")
    initrd = f"initrd.img-{version}"
    xens = sorted((p.name for p in boot.glob("xen-*.gz")), key=version_key, reverse=True)
    return BootFiles(
        f"/boot/{kernels[0]}",
        f"/boot/{initrd}" if confined.is_file(root, f"boot/{initrd}") else None,
        f"/boot/{xens[0]}" if xens else None,
    )


def _args(*parts: str) -> str:
    return " ".join(p for p in (" ".join(x.split()) for x in parts) if p)


def previous_entry(title: str, root_uuid: str) -> str:
    """The menu entry that boots the release an upgrade kept: its own menu, from its own root."""
    return "\n".join(
        [
            f"menuentry {shlex.quote(title)} --id xenspin-previous {{",
            "\tinsmod part_gpt",
            "\tinsmod ext2",
            f"\tsearch --no-floppy --fs-uuid --set=root {root_uuid}",
            "\tconfigfile /boot/grub/grub.cfg",
            "}",
            "",
        ]
    )


def grub_cfg(settings: dict[str, str], root_uuid: str, files: BootFiles, extra: str = "") -> str:
    """The installed disk's grub.cfg (pure): the Xen entry (the default when there is a Xen) and plain Linux.

    Command lines as Debian's scripts make them: Xen gets GRUB_CMDLINE_XEN and
    _XEN_DEFAULT (and, under UEFI, no-real-mode edd=off as 20_linux_xen adds); dom0 gets
    GRUB_CMDLINE_LINUX and _LINUX_DEFAULT unless the _LINUX_XEN_REPLACE ones are set.
    """
    s = {k: settings.get(k, "") for k in SETTINGS}
    distributor = s["GRUB_DISTRIBUTOR"] or "Debian"
    linux_title = f"{distributor} GNU/Linux"
    xen_title = f"{linux_title}, with Xen hypervisor"
    default = s["GRUB_DEFAULT"] or "0"
    timeout = s["GRUB_TIMEOUT"] or "5"
    lines = ["# written by the xenspin installer; `update-grub` rewrites it from /etc/default/grub.d", ""]
    terminal_in = s["GRUB_TERMINAL_INPUT"] or s["GRUB_TERMINAL"]
    terminal_out = s["GRUB_TERMINAL_OUTPUT"] or s["GRUB_TERMINAL"]
    if "serial" in f"{terminal_in} {terminal_out}".split():
        lines.append(s["GRUB_SERIAL_COMMAND"] or "serial")
    if terminal_in:
        lines.append(f"terminal_input {terminal_in}")
    if terminal_out:
        lines.append(f"terminal_output {terminal_out}")
    if default == "saved":  # GRUB_SAVEDEFAULT's companion: the entry grub-reboot or savedefault stored
        lines += ["load_env", 'set default="${saved_entry}"']
    else:
        lines.append(f"set default={shlex.quote(default)}")
    lines += [f"set timeout={timeout}", ""]
    find_root = [
        "\tinsmod part_gpt",
        "\tinsmod ext2",
        "\tinsmod gzio",
        f"\tsearch --no-floppy --fs-uuid --set=root {root_uuid}",
    ]
    root = f"root=UUID={root_uuid} ro"
    linux_args = _args(s["GRUB_CMDLINE_LINUX"], s["GRUB_CMDLINE_LINUX_DEFAULT"])
    if files.xen:
        dom0_args = _args(
            s["GRUB_CMDLINE_LINUX_XEN_REPLACE"] or s["GRUB_CMDLINE_LINUX"],
            s["GRUB_CMDLINE_LINUX_XEN_REPLACE_DEFAULT"] or s["GRUB_CMDLINE_LINUX_DEFAULT"],
        )
        xen_args = _args(s["GRUB_CMDLINE_XEN"], s["GRUB_CMDLINE_XEN_DEFAULT"])
        lines += [
            f"menuentry {shlex.quote(xen_title)} --class xen --id xen-gnulinux-simple-{root_uuid} {{",
            *find_root,
            '\tif [ "$grub_platform" = "pc" -o "$grub_platform" = "" ]; then',
            "\t\txen_rm_opts=",
            "\telse",
            '\t\txen_rm_opts="no-real-mode edd=off"',
            "\tfi",
            f"\tmultiboot2 {files.xen} placeholder {_args(xen_args, '${xen_rm_opts}')}",
            f"\tmodule2 {files.kernel} placeholder {_args(root, dom0_args)}",
            *([f"\tmodule2 --nounzip {files.initrd}"] if files.initrd else []),
            "}",
            "",
        ]
    lines += [
        f"menuentry {shlex.quote(linux_title)} --id gnulinux-simple-{root_uuid} {{",
        *find_root,
        f"\tlinux {files.kernel} {_args(root, linux_args)}",
        *([f"\tinitrd {files.initrd}"] if files.initrd else []),
        "}",
    ]
    if extra:
        lines += ["", extra.rstrip("\n")]
    return "\n".join(lines) + "\n"


def efi_early_config(root_uuid: str) -> str:
    """The config built into GRUB's UEFI image: find root by UUID and set the prefix.

    GRUB then loads normal.mod from the prefix, which reads the module lists and
    grub.cfg there (as the image grub-install makes does).
    """
    return f"search --no-floppy --fs-uuid --set=root {root_uuid}\nset prefix=($root)/boot/grub\n"
