"""The VM's drive plan (the target under the answerfile's disk name) and the settings read back on the
installed host: pure functions, no QEMU."""

from __future__ import annotations

from pathlib import Path

import pytest
from xenspin_installer.readanswer import parse_yaml
from xenspin_installer.xmlanswer import parse_xml

from builder import installtest, vmdrives


def layout(disk: str) -> list[tuple[str, str, str]]:
    return [(d.role, d.bus, d.name) for d in vmdrives.plan(disk).drives]


@pytest.mark.parametrize(
    ("disk", "device", "drives"),
    [
        ("", "/dev/vda", [("target", "virtio", "vda"), ("answers", "ahci", "sda")]),
        ("vda", "/dev/vda", [("target", "virtio", "vda"), ("answers", "ahci", "sda")]),
        (
            "/dev/vdc",
            "/dev/vdc",
            [("answers", "virtio", "vda"), ("filler", "virtio", "vdb"), ("target", "virtio", "vdc")],
        ),
        ("sda", "/dev/sda", [("answers", "virtio", "vda"), ("target", "ahci", "sda")]),
        ("/dev/sdb", "/dev/sdb", [("answers", "ahci", "sda"), ("target", "ahci", "sdb")]),
        ("sdc", "/dev/sdc", [("answers", "ahci", "sda"), ("filler", "ahci", "sdb"), ("target", "ahci", "sdc")]),
        ("nvme0n1", "/dev/nvme0n1", [("answers", "ahci", "sda"), ("target", "nvme", "nvme0n1")]),
        (
            "nvme1n2",
            "/dev/nvme1n2",
            [
                ("answers", "ahci", "sda"),
                ("filler", "nvme", "nvme0n1"),
                ("filler", "nvme", "nvme1n1"),
                ("target", "nvme", "nvme1n2"),
            ],
        ),
        ("/dev/disk/by-id/virtio-xs1", "/dev/vda", [("target", "virtio", "vda"), ("answers", "ahci", "sda")]),
        (
            "/dev/disk/by-id/ata-QEMU_HARDDISK_XS2",
            "/dev/sda",
            [("answers", "virtio", "vda"), ("target", "ahci", "sda")],
        ),
        (
            "/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_xs3",
            "/dev/nvme0n1",
            [("answers", "ahci", "sda"), ("target", "nvme", "nvme0n1")],
        ),
    ],
)
def test_the_target_gets_the_answerfiles_name_and_the_answers_disk_another(
    disk: str, device: str, drives: list[tuple[str, str, str]]
) -> None:
    plan = vmdrives.plan(disk)
    assert plan.device == device
    assert layout(disk) == drives
    names = [d.name for d in plan.drives]
    assert len(set(names)) == len(names)


def test_the_qemu_options_follow_the_plan() -> None:
    plan = vmdrives.plan("sdb")
    files = {"target": Path("t.qcow2"), "answers": Path("a.img")}
    argv = plan.argv(files, boot_disk=False)
    assert argv == [
        "-drive",
        "if=none,id=answers,format=raw,file=a.img,snapshot=on",
        "-device",
        "ide-hd,drive=answers,bus=ide.1",
        "-drive",
        "if=none,id=target,format=qcow2,file=t.qcow2",
        "-device",
        "ide-hd,drive=target,bootindex=2,bus=ide.2",
    ]
    assert "drive=target,bootindex=1" in " ".join(plan.argv(files, boot_disk=True))


def test_a_by_id_name_becomes_the_drives_serial() -> None:
    files = {"target": Path("t.qcow2"), "answers": Path("a.img")}
    argv = " ".join(vmdrives.plan("/dev/disk/by-id/virtio-xs1").argv(files, boot_disk=True))
    assert "virtio-blk-pci,drive=target,bootindex=1,serial=xs1" in argv
    argv = " ".join(vmdrives.plan("/dev/disk/by-id/ata-QEMU_HARDDISK_XS2").argv(files, boot_disk=True))
    assert "ide-hd,drive=target,bootindex=1,serial=XS2,bus=ide.1" in argv
    argv = " ".join(vmdrives.plan("/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_xs3").argv(files, boot_disk=True))
    assert "nvme,id=nvme0,serial=xs3 -device nvme-ns,bus=nvme0,nsid=1,drive=target,bootindex=1" in argv


def test_nvme_fillers_come_before_the_target() -> None:
    plan = vmdrives.plan("nvme1n2")
    files = {d.id: Path(f"{d.id}.qcow2") for d in plan.drives}
    argv = plan.argv(files, boot_disk=True)
    devices = [a for a in argv if a.startswith("nvme")]
    assert devices == [
        "nvme,id=nvme0,serial=xsnvme0",
        "nvme-ns,bus=nvme0,nsid=1,drive=filler1",
        "nvme,id=nvme1,serial=xsnvme1",
        "nvme-ns,bus=nvme1,nsid=1,drive=filler2",
        "nvme-ns,bus=nvme1,nsid=2,drive=target,bootindex=1",
    ]


@pytest.mark.parametrize(
    ("disk", "why"),
    [
        ("hda", "not a name the harness can give"),
        ("sdf", "sda to sde"),
        ("vdz", "at most 8 virtio disks"),
        ("nvme9n1", "nvme0 to nvme3"),
        ("/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_drive", "no QEMU drive makes that by-id name"),
        ("/dev/disk/by-id/virtio-a,b", "no QEMU drive makes that by-id name"),  # a comma would split QEMU's option
        ("/dev/disk/by-id/virtio-" + "x" * 21, "no QEMU drive makes that by-id name"),
        ("/dev/disk/by-uuid/1234", "not a name the harness can give"),
    ],
)
def test_a_name_no_drive_can_take_is_refused_in_one_line(disk: str, why: str) -> None:
    with pytest.raises(vmdrives.DriveError) as e:
        vmdrives.plan(disk)
    message = str(e.value)
    assert "\n" not in message and why in message and repr(disk) in message


# --- the settings read back on the installed host -------------------------------------------------

XML = """<?xml version="1.0"?>
<installation mode="fresh">
  <primary-disk>sda</primary-disk>
  <keymap>de</keymap>
  <root-password type="hash">$6$salt$abc</root-password>
  <hostname>from-xml</hostname>
  <admin-interface proto="static"><ipaddr>10.0.2.15</ipaddr><subnet>255.255.255.0</subnet><gateway>10.0.2.2</gateway></admin-interface>
  <name-server>10.0.2.3</name-server>
</installation>
"""

HOST = {
    "hostname": "from-xml\n",
    "timezone": "UTC\n",
    "addresses": "2: xenbr0    inet 10.0.2.15/24 brd 10.0.2.255 scope global xenbr0\ndefault via 10.0.2.2 dev xenbr0 proto static\n",
    "dns": "nameserver 10.0.2.3\n[Match]\nName=en* eth*\n[Network]\nAddress=10.0.2.15/24\nDNS=10.0.2.3\n",
    "ssh-keys": "",
    "keymap": 'XKBMODEL="pc105"\nXKBLAYOUT="de"\n',
    "vgs": "  xenspin-local\n",
    "ntp": "",
}


def test_the_settings_split_back_by_key() -> None:
    out = "\n".join(f"{installtest.SECTION}-{k}\n{v.rstrip()}" for k, v in HOST.items())
    found = installtest.split_settings(out)
    assert {k: v.strip() for k, v in found.items()} == {k: v.strip() for k, v in HOST.items()}
    command = installtest.settings_command()
    assert all(f"S {k}; " in command for k in installtest.SETTINGS) and len(command) < 400


def test_a_host_as_the_answers_asked_shows_no_difference() -> None:
    answer, _ = parse_xml(XML, "a.xml")
    assert installtest.settings_problems(answer, HOST) == []


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("hostname", "xenspin\n", "hostname: expected from-xml"),
        ("addresses", "inet 10.0.2.16/24\ndefault via 10.0.2.2 dev x\n", "addresses: expected 10.0.2.15/24"),
        ("dns", "nameserver 10.0.2.30\n", "dns: expected 10.0.2.3"),
        ("keymap", 'XKBLAYOUT="us"\n', 'keymap: expected XKBLAYOUT="de"'),
        ("vgs", "\n", "vgs: expected the volume group xenspin-local"),
    ],
)
def test_each_difference_is_named(key: str, value: str, named: str) -> None:
    answer, _ = parse_xml(XML, "a.xml")
    problems = installtest.settings_problems(answer, {**HOST, key: value})
    assert len(problems) == 1 and problems[0].startswith(named)


def test_ssh_keys_and_ntp_are_checked_where_given() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq0 test@example"
    answer = parse_yaml(f"root:\n  ssh-keys: [{key}]\nhostname: h\n", "a.yaml")
    host = {**HOST, "hostname": "h\n", "keymap": 'XKBLAYOUT="us"\n'}
    assert installtest.settings_problems(answer, {**host, "ssh-keys": key + "\n"}) == []
    assert installtest.settings_problems(answer, host)[0].startswith("ssh-keys: expected ssh-ed25519 ...")
    # NTP: only once the installed file exists, from however the model holds the servers
    answer.ntp = ["192.0.2.123"]  # type: ignore[attr-defined]
    assert installtest.settings_problems(answer, {**host, "ssh-keys": key}) == []
    wrong = {**host, "ssh-keys": key, "ntp": "[Time]\nNTP=192.0.2.1\n"}
    assert installtest.settings_problems(answer, wrong) == [
        "ntp: expected 192.0.2.123, the host has '[Time]\\nNTP=192.0.2.1'"
    ]
