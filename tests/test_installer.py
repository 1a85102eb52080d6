"""The installer's pure parts: disk choice and safety rules, the partition plan, files it writes, the console UI."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import Server
from xenspin_installer.answerfile import Answerfile, Network, Root
from xenspin_installer.bootloader import (
    BootFiles,
    boot_files,
    grub_cfg,
    grub_defaults,
    parse_settings,
    read_settings_script,
)
from xenspin_installer.disks import Disk, DiskError, GiB, MiB, check_writable, choose, part_path, plan, sgdisk_args
from xenspin_installer.install import decide, network_config
from xenspin_installer.main import booted_on_serial, distribution, main_console
from xenspin_installer.probe import parse_lsblk
from xenspin_installer.sources import cmdline_args
from xenspin_installer.ui import Console, interview

LSBLK = {
    "blockdevices": [
        {
            "path": "/dev/sda",
            "size": 64 * GiB,
            "type": "disk",
            "model": "QEMU HARDDISK ",
            "pttype": None,
            "fstype": None,
            "ro": False,
            "mountpoints": [None],
        },
        {
            "path": "/dev/sdb",
            "size": 32 * GiB,
            "type": "disk",
            "model": None,
            "pttype": "gpt",
            "fstype": None,
            "ro": False,
            "mountpoints": [None],
            "children": [
                {
                    "path": "/dev/sdb1",
                    "size": 32 * GiB - 2 * MiB,
                    "type": "part",
                    "fstype": "ext4",
                    "ro": False,
                    "mountpoints": [None],
                }
            ],
        },
        {
            "path": "/dev/sr0",
            "size": 700 * MiB,
            "type": "rom",
            "fstype": "iso9660",
            "ro": False,
            "mountpoints": ["/run/live/medium"],
        },
        {"path": "/dev/vda", "size": 8 * GiB, "type": "disk", "fstype": None, "ro": False, "mountpoints": ["/"]},
        {"path": "/dev/sdc", "size": 16 * GiB, "type": "disk", "ro": True, "mountpoints": [None]},
    ]
}


def disks() -> list[Disk]:
    return parse_lsblk(json.dumps(LSBLK), {"/dev/sr0"})


def test_lsblk_parsed() -> None:
    sda, sdb, sr0, vda, sdc = disks()
    assert (sda.path, sda.size, sda.model, sda.contents(), sda.in_use()) == (
        "/dev/sda",
        64 * GiB,
        "QEMU HARDDISK",
        [],
        [],
    )
    assert sdb.contents() == ["a gpt partition table", "/dev/sdb1 (ext4, 32.0 GiB)"]
    assert sr0.holds_live_medium and vda.in_use() == ["/"] and sdc.readonly


def test_a_named_disk_is_the_only_one_written() -> None:
    assert choose(disks(), "sda", interactive=False).disk.path == "/dev/sda"
    assert choose(disks(), "/dev/sdb", interactive=True).disk.path == "/dev/sdb"
    assert choose(disks(), "/dev/disk/by-id/x", interactive=False, resolve=lambda p: "/dev/sda").disk.path == "/dev/sda"
    with pytest.raises(DiskError, match=r"^disk sdz: no such disk \(found: /dev/sda, /dev/sdb"):
        choose(disks(), "sdz", interactive=False)


def test_several_disks_none_named_ask_or_stop() -> None:
    with pytest.raises(DiskError, match="several disks and none named: /dev/sda, /dev/sdb, /dev/vda"):
        choose(disks(), "", interactive=False)
    asked = choose(disks(), "", interactive=True)
    assert asked.disk is None and [d.path for d in asked.ask] == ["/dev/sda", "/dev/sdb", "/dev/vda"]
    only = [d for d in disks() if d.path in ("/dev/sda", "/dev/sr0", "/dev/sdc")]
    assert choose(only, "", interactive=False).disk.path == "/dev/sda"  # the medium and a read-only disk do not count
    answers = Disk("/dev/sdd", 16 * MiB, children=(Disk("/dev/sdd1", 15 * MiB, type="part", labels=("XSANSWER",)),))
    assert (
        choose([*only, answers], "", interactive=False).disk.path == "/dev/sda"
    )  # nor the disk that brought the answers
    with pytest.raises(DiskError, match="no disk to install to"):
        choose([d for d in disks() if d.path == "/dev/sr0"], "", interactive=False)


def test_safety_rules() -> None:
    sda, sdb, sr0, vda, sdc = disks()
    check_writable(sda, wipe=False)
    with pytest.raises(
        DiskError,
        match=r"^disk /dev/sdb: holds a gpt partition table, /dev/sdb1 \(ext4, 32.0 GiB\); refusing to erase it \(set wipe: true\)$",
    ):
        check_writable(sdb, wipe=False)
    check_writable(sdb, wipe=True)
    for disk, why in ((vda, "is in use (mounted at /)"), (sr0, "is a rom"), (sdc, "is read-only")):
        with pytest.raises(DiskError, match="^" + re.escape(f"disk {disk.path}: {why}")):
            check_writable(disk, wipe=True)


def test_decide_checks_before_planning() -> None:
    a = Answerfile(disk="sdb", root=Root(password="x"))
    with pytest.raises(DiskError, match="refusing to erase"):
        decide(a, disks()[1])
    a.wipe = True
    layout = decide(a, disks()[1])
    assert [p.role for p in layout.parts] == ["bios-boot", "esp", "root", "backup", "lvm"]
    assert (layout.dev("root"), layout.dev("backup"), layout.dev("lvm")) == ("/dev/sdb3", "/dev/sdb4", "/dev/sdb5")


def test_plan_layout() -> None:
    parts = plan(128 * GiB)
    assert [(p.number, p.label, p.role, p.typecode) for p in parts] == [
        (1, "biosboot", "bios-boot", "EF02"),
        (2, "esp", "esp", "EF00"),
        (3, "xenspin-root", "root", "8300"),
        (4, "xenspin-backup", "backup", "8300"),
        (5, "local", "lvm", "8E00"),
    ]
    assert parts[0].start == MiB and parts[0].size == MiB and parts[1].size == 256 * MiB
    assert parts[2].size == parts[3].size == 16 * GiB  # two roots of one size, capped; the rest goes to guests
    for a, b in zip(parts, parts[1:], strict=False):
        assert a.end == b.start and a.start % MiB == 0
    assert parts[-1].end == 128 * GiB - MiB  # the last MiB holds the backup GPT
    small = plan(8 * GiB)
    assert small[2].size == small[3].size == 3 * GiB and small[4].end == 8 * GiB - MiB
    assert small[4].size == 8 * GiB - 2 * MiB - 257 * MiB - 6 * GiB  # at least 1 GiB left for guests
    no_local = plan(64 * GiB, local_storage=False)
    assert [p.role for p in no_local] == ["bios-boot", "esp", "root", "backup"]
    assert 64 * GiB - 2 * MiB <= no_local[-1].end <= 64 * GiB - MiB  # the two roots split the rest
    assert [p.role for p in plan(7 * GiB)] == ["bios-boot", "esp", "root", "backup"]  # too little left for guests
    with pytest.raises(DiskError, match=r"disk is too small: 6.0 GiB \(expected at least 6.3 GiB\)"):
        plan(6 * GiB)


def test_sgdisk_command_and_partition_names() -> None:
    args = sgdisk_args("/dev/sda", plan(8 * GiB))
    assert args[:2] == ["sgdisk", "--clear"] and args[-1] == "/dev/sda"
    assert "--new=1:2048:4095" in args and "--typecode=1:EF02" in args and "--change-name=5:local" in args
    assert "--change-name=3:xenspin-root" in args and "--change-name=4:xenspin-backup" in args
    assert (part_path("/dev/sda", 3), part_path("/dev/nvme0n1", 3), part_path("/dev/loop7", 1)) == (
        "/dev/sda3",
        "/dev/nvme0n1p3",
        "/dev/loop7p1",
    )


def test_network_and_grub_files() -> None:
    assert network_config(Answerfile(root=Root(password="x"))) is None  # the image's DHCP on every NIC
    named = network_config(Answerfile(network=Network(interface="enp1s0"), root=Root(password="x")))
    assert "[Match]\nName=enp1s0\n\n[Network]\nDHCP=yes\n" in named
    static = Answerfile(
        network=Network(mode="static", address="192.0.2.10/24", gateway="192.0.2.1", dns=["192.0.2.53"]),
        root=Root(password="x"),
    )
    assert "Name=en* eth*\n\n[Network]\nAddress=192.0.2.10/24\nGateway=192.0.2.1\nDNS=192.0.2.53\n" in network_config(
        static
    )
    plain = grub_defaults(serial_console=False)
    assert 'GRUB_DEFAULT="xenspin GNU/Linux, with Xen hypervisor"' in plain and "serial" not in plain
    serial = grub_defaults(serial_console=True)
    assert 'GRUB_TERMINAL="serial console"' in serial and "com1=115200" in serial and "console=hvc0" in serial
    sourced = subprocess.run(["sh", "-c", serial + 'echo "$GRUB_CMDLINE_XEN_DEFAULT"'], capture_output=True, text=True)
    assert sourced.stdout == "dom0_mem=1024M,max:1024M console=com1,vga com1=115200\n"
    keep = subprocess.run(
        ["sh", "-c", "GRUB_CMDLINE_XEN_DEFAULT=dom0_mem=2G\n" + plain + 'echo "$GRUB_CMDLINE_XEN_DEFAULT"'],
        capture_output=True,
        text=True,
    )
    assert keep.stdout == "dom0_mem=2G\n"  # the image's Xen command line stays
    image = "GRUB_CMDLINE_XEN_DEFAULT='console=com1 com1=9600'\n"
    once = subprocess.run(
        ["sh", "-c", image + serial + 'echo "$GRUB_CMDLINE_XEN_DEFAULT"'], capture_output=True, text=True
    )
    assert once.stdout == "console=com1 com1=9600\n"  # a serial console the image set is not added twice


def settings_of(tmp_path: Path, **files: str) -> dict[str, str]:
    """What the installer reads from a tree holding these /etc/default/grub.d files (name: text)."""
    d = tmp_path / "etc/default/grub.d"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for name, text in files.items():
        (d / f"{name}.cfg").write_text(text)
    script = read_settings_script(str(tmp_path))
    return parse_settings(subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout)


# The image's /etc/default/grub.d/xen.cfg (the rootfs overlay writes it from the manifest).
IMAGE_XEN_CFG = """GRUB_CMDLINE_XEN_DEFAULT="console=com1,vga com1=115200 dom0_mem=1024M,max:1024M"
GRUB_CMDLINE_LINUX_XEN_REPLACE_DEFAULT="console=hvc0"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_TERMINAL="console serial"
"""


def test_grub_cfg_entries_carry_the_command_lines_update_grub_would(tmp_path: Path) -> None:
    files = BootFiles("/boot/vmlinuz-6.1.0-50-amd64", "/boot/initrd.img-6.1.0-50-amd64", "/boot/xen-xenspin.gz")
    cfg = grub_cfg(
        settings_of(tmp_path, xen=IMAGE_XEN_CFG, **{"zz-xenspin": grub_defaults(serial_console=True)}), "u-u-i-d", files
    )
    assert "set default='xenspin GNU/Linux, with Xen hypervisor'\nset timeout=3\n" in cfg
    assert "serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\n" in cfg
    xen, linux = cfg.split("menuentry ")[1:]
    assert xen.startswith("'xenspin GNU/Linux, with Xen hypervisor'")  # the title GRUB_DEFAULT names
    assert "search --no-floppy --fs-uuid --set=root u-u-i-d\n" in xen
    # Xen's line keeps the image's, dom0's is replaced by the serial console's (20_linux_xen's rule)
    assert (
        "multiboot2 /boot/xen-xenspin.gz placeholder console=com1,vga com1=115200 dom0_mem=1024M,max:1024M ${xen_rm_opts}\n"
        in xen
    )
    assert "module2 /boot/vmlinuz-6.1.0-50-amd64 placeholder root=UUID=u-u-i-d ro console=tty0 console=hvc0\n" in xen
    assert "module2 --nounzip /boot/initrd.img-6.1.0-50-amd64\n" in xen
    assert 'xen_rm_opts="no-real-mode edd=off"' in xen  # under UEFI, as Debian's script does
    assert (
        "linux /boot/vmlinuz-6.1.0-50-amd64 root=UUID=u-u-i-d ro\n\tinitrd /boot/initrd.img-6.1.0-50-amd64\n" in linux
    )
    # without the serial console: the image's own terminal and consoles, and no Xen file means no Xen entry
    plain = grub_cfg(
        settings_of(tmp_path, xen=IMAGE_XEN_CFG, **{"zz-xenspin": grub_defaults(serial_console=False)}), "u", files
    )
    assert "terminal_input console serial\n" in plain and "placeholder root=UUID=u ro console=hvc0\n" in plain
    assert (
        "Xen"
        not in grub_cfg(settings_of(tmp_path, xen=IMAGE_XEN_CFG), "u", BootFiles("/boot/vmlinuz-1", None, None)).split(
            "set timeout"
        )[1]
    )
    saved = grub_cfg(settings_of(tmp_path, a="GRUB_DEFAULT=saved"), "u", files)
    assert 'load_env\nset default="${saved_entry}"\n' in saved and "set timeout=5\n" in saved


def test_boot_files_pick_the_newest_kernel_and_xen(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    for name in ("vmlinuz-6.1.0-9-amd64", "vmlinuz-6.1.0-10-amd64", "initrd.img-6.1.0-10-amd64", "xen-4.17-amd64.gz"):
        (boot / name).write_bytes(b"")
    assert boot_files(tmp_path) == BootFiles(
        "/boot/vmlinuz-6.1.0-10-amd64", "/boot/initrd.img-6.1.0-10-amd64", "/boot/xen-4.17-amd64.gz"
    )
    (boot / "initrd.img-6.1.0-10-amd64").unlink()
    assert boot_files(tmp_path).initrd is None
    for p in boot.glob("vmlinuz-*"):
        p.unlink()
    with pytest.raises(FileNotFoundError):
        boot_files(tmp_path)


def test_cmdline_and_banner(tmp_path: Path) -> None:
    args = cmdline_args(
        "BOOT_IMAGE=/live/vmlinuz boot=live console=hvc0 xenspin.mode=unattended answerfile=http://h/a.yaml quiet\n"
    )
    assert (args["xenspin.mode"], args["answerfile"], args["quiet"]) == ("unattended", "http://h/a.yaml", "")
    assert booted_on_serial(args) and main_console(args) == "hvc0"
    assert main_console(cmdline_args("console=ttyS0,115200n8 console=tty0")) == "tty1"
    assert not booted_on_serial(cmdline_args("boot=live console=hvc0 console=tty0 xenspin.mode=install"))
    (tmp_path / "os-release").write_text('PRETTY_NAME="xenspin 0.1"\nNAME="xenspin"\n')
    assert distribution(tmp_path / "os-release") == "xenspin 0.1"


def test_interactive_install_confirms_what_is_erased() -> None:
    typed = "sdb\nhost-2\nstatic\n192.0.2.7/24\n192.0.2.1\n192.0.2.53\npassword\nEurope/Paris\nfr\nyes\n"
    out = io.StringIO()
    answer = interview(Console(io.StringIO(typed), out, secret=lambda prompt: "pw"), disks()[:2])
    shown = out.getvalue()
    assert "This ERASES /dev/sdb (32.0 GiB), which holds: a gpt partition table, /dev/sdb1 (ext4, 32.0 GiB)" in shown
    assert "/dev/sdb4" in shown and "LVM xenspin-local for guests" in shown
    assert (answer.disk, answer.wipe, answer.hostname, answer.timezone, answer.keymap) == (
        "/dev/sdb",
        True,
        "host-2",
        "Europe/Paris",
        "fr",
    )
    assert (answer.network.address, answer.network.gateway, answer.network.dns, answer.root.password) == (
        "192.0.2.7/24",
        "192.0.2.1",
        ["192.0.2.53"],
        "pw",
    )


def test_interactive_bad_answers_asked_again_and_no_means_nothing() -> None:
    typed = "sdc\nsda\nbad_name\nhost\ndhcp\nssh-key\nnot a key\nssh-ed25519 AAAAC3Nz me\nMars/Base\nUTC\nus\nno\n"
    out = io.StringIO()
    assert interview(Console(io.StringIO(typed), out), disks()[:2]) is None
    shown = out.getvalue()
    assert "please answer one of sda, sdb" in shown
    assert "hostname: 'bad_name'" in shown and "root.ssh-keys[0]: 'not a key' (expected an SSH public key" in shown
    assert "This ERASES /dev/sda (64.0 GiB QEMU HARDDISK) (it holds nothing)" in shown


def test_in_tree_source_digest_ignores_pycache(tmp_path: Path) -> None:
    """Importing the installer in tests writes __pycache__; the component's cache key must not move."""
    from builder.sources.path import digest

    (tmp_path / "main.py").write_text("print('x')\n")
    before = digest(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")
    assert digest(tmp_path) == before


def test_probe_without_udev_sees_filesystems_through_signatures() -> None:
    """Without udev, lsblk lists partitions flat and reports no filesystems: wipefs' signatures fill in."""
    flat = {
        "blockdevices": [
            {
                "path": "/dev/loop0",
                "kname": "loop0",
                "pkname": None,
                "size": 4 * GiB,
                "type": "loop",
                "pttype": None,
                "fstype": None,
                "ro": False,
                "mountpoints": [None],
            },
            {
                "path": "/dev/loop1",
                "kname": "loop1",
                "pkname": None,
                "size": 4 * GiB,
                "type": "loop",
                "pttype": None,
                "fstype": None,
                "ro": False,
                "mountpoints": [None],
            },
            {
                "path": "/dev/loop0p1",
                "kname": "loop0p1",
                "pkname": "loop0",
                "size": GiB,
                "type": "part",
                "fstype": None,
                "ro": False,
                "mountpoints": [None],
            },
        ]
    }
    sigs = {
        "/dev/loop0": [("gpt", ""), ("gpt", ""), ("PMBR", "")],
        "/dev/loop0p1": [("ext4", "")],
        "/dev/loop1": [("xfs", "")],
    }
    loop0, loop1 = parse_lsblk(json.dumps(flat), set(), sigs)
    assert [c.path for c in loop0.children] == ["/dev/loop0p1"]
    assert loop0.contents() == ["a gpt partition table", "/dev/loop0p1 (ext4, 1.0 GiB)"]
    assert loop1.contents() == ["an xfs filesystem"]
    with pytest.raises(DiskError, match="holds an xfs filesystem; refusing"):
        check_writable(loop1, wipe=False)


def test_answerfile_sources(tmp_path: Path, server: Server) -> None:
    from xenspin_installer import InstallerError
    from xenspin_installer.run import Runner
    from xenspin_installer.sources import from_medium, from_url

    runner = Runner(tmp_path / "install.log")
    medium = tmp_path / "medium"
    (medium / "xenspin").mkdir(parents=True)
    (medium / "xenspin" / "answerfile.xml").write_text("<installation/>")
    assert from_medium(medium) == medium / "xenspin" / "answerfile.xml"
    assert from_url("file:/xenspin/answerfile.xml", medium, runner) == medium / "xenspin" / "answerfile.xml"
    with pytest.raises(InstallerError, match=r"answerfile=file:/nope.yaml: not found on the install medium"):
        from_url("file:/nope.yaml", medium, runner)
    with pytest.raises(InstallerError, match=r"unsupported \(expected http://, https:// or file:/PATH\)"):
        from_url("ftp://host/a.yaml", medium, runner)
    (server.root / "a").write_text("root: {password: x}\n")
    got = from_url(server.url("a"), medium, runner)
    assert got.read_text() == "root: {password: x}\n" and got.suffix == ".yaml"
    got.unlink()
