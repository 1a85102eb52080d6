"""XenServer answerfiles as administrators write them: each element honoured, warned about or refused,
and the time servers they give written for systemd-timesyncd."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from xenspin_installer.answerfile import Answerfile, AnswerfileError, Root
from xenspin_installer.disks import Disk, GiB, plan
from xenspin_installer.install import TIMESYNCD_CONF, Installer, Layout
from xenspin_installer.readanswer import load
from xenspin_installer.run import Runner
from xenspin_installer.xmlanswer import ELEMENTS

HASH = "$6$salt$abcdefghijklmnopqrstuvwxyz0123456789./ABCDEFGHIJKLMNOP"

# As found in the wild: the legacy <nameserver>, <ntp> with its servers, the boot loader and
# network stack XenServer's installer defaults to.
REAL_WORLD = f"""\
<?xml version="1.0"?>
<installation mode="fresh" srtype="lvm">
  <primary-disk gueststorage="yes" sr-at-end="true">sda</primary-disk>
  <keymap>us</keymap>
  <root-password type="hash">{HASH}</root-password>
  <source type="local"/>
  <admin-interface name="eth0" proto="dhcp"/>
  <nameserver>192.0.2.53</nameserver>
  <nameserver>192.0.2.54</nameserver>
  <timezone>Europe/London</timezone>
  <time-config-method>ntp</time-config-method>
  <ntp mode="manual">
    <ntp-server>ntp1.example.org</ntp-server>
    <ntp-server>192.0.2.123</ntp-server>
  </ntp>
  <hostname>xen1</hostname>
  <bootloader location="mbr" write-boot-entry="false">grub2</bootloader>
  <network-backend>bridge</network-backend>
  <ui-confirmation-prompt>false</ui-confirmation-prompt>
</installation>
"""


def write(tmp_path: Path, text: str, name: str = "a.xml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def parsed(tmp_path: Path, body: str, root: str = "<installation>") -> tuple[Answerfile, list[str]]:
    """body inside root, after a root password; warnings without the temporary directory."""
    end = "</" + root[1:].split()[0].rstrip(">") + ">"
    a, warnings = load(write(tmp_path, f"{root}\n<root-password type='hash'>{HASH}</root-password>\n{body}\n{end}"))
    return a, [w.replace(str(tmp_path) + "/", "") for w in warnings]


def refusal(tmp_path: Path, body: str, root: str = "<installation>") -> str:
    with pytest.raises(AnswerfileError) as e:
        parsed(tmp_path, body, root)
    msg = str(e.value)
    assert "\n" not in msg
    return msg.replace(str(tmp_path) + "/", "")


def test_a_real_world_answerfile_is_taken_whole(tmp_path: Path) -> None:
    a, warnings = load(write(tmp_path, REAL_WORLD))
    assert warnings == []
    assert (a.mode, a.disk, a.disk_path, a.wipe, a.local_storage) == ("install", "sda", "/dev/sda", True, True)
    assert a.ntp == ["ntp1.example.org", "192.0.2.123"]
    assert (a.network.mode, a.network.interface, a.network.dns) == ("dhcp", "eth0", ["192.0.2.53", "192.0.2.54"])
    assert (a.hostname, a.timezone, a.keymap, a.root.password_hash) == ("xen1", "Europe/London", "us", HASH)


def test_legacy_top_level_time_servers_and_name_servers(tmp_path: Path) -> None:
    a, warnings = parsed(
        tmp_path,
        "<admin-interface name='eth0' proto='static'><ipaddr>192.0.2.10</ipaddr><subnet>255.255.255.0</subnet>"
        "<gateway>192.0.2.1</gateway></admin-interface>\n"
        "<ntp-server>0.pool.ntp.org</ntp-server>\n<ntp-servers>2001:db8::123</ntp-servers>\n"
        "<name-server>192.0.2.53</name-server>\n<nameserver>192.0.2.54</nameserver>",
    )
    assert warnings == []
    assert a.ntp == ["0.pool.ntp.org", "2001:db8::123"]
    assert (a.network.address, a.network.dns) == ("192.0.2.10/24", ["192.0.2.53", "192.0.2.54"])
    dhcp, _ = parsed(tmp_path, "<nameserver>192.0.2.53</nameserver>")  # no admin-interface: the image's DHCP
    assert (dhcp.network.mode, dhcp.network.dns) == ("dhcp", ["192.0.2.53"])


@pytest.mark.parametrize(
    "body, ntp, warning",
    [
        ("", None, None),
        ('<ntp source="none"/>', [], None),
        ('<ntp source="dhcp"/>', None, None),
        ('<ntp source="default"/>', None, "a.xml:3: warning: ntp@source: 'default': systemd-timesyncd uses"),
        (
            '<admin-interface name="eth0" proto="static"><ipaddr>192.0.2.10</ipaddr><subnet>255.255.255.0</subnet>'
            '</admin-interface>\n<ntp source="dhcp"/>',
            None,
            "a.xml:4: warning: ntp@source: 'dhcp' with a static admin-interface: no lease names servers",
        ),
        ('<ntp source="manual"/>\n<ntp-server>192.0.2.123</ntp-server>', ["192.0.2.123"], None),
    ],
)
def test_ntp_modes(tmp_path: Path, body: str, ntp: list[str] | None, warning: str | None) -> None:
    a, warnings = parsed(tmp_path, body)
    assert a.ntp == ntp
    assert [w[: len(warning)] for w in warnings] == ([warning] if warning else [])


@pytest.mark.parametrize(
    "body, expected",
    [
        (
            "<network-backend>openvswitch</network-backend>",
            "a.xml:3: network-backend: 'openvswitch' is not supported: this distribution carries no Open vSwitch; use bridge",
        ),
        (
            "<network-backend>vswitch</network-backend>",
            "a.xml:3: network-backend: 'vswitch' is not supported: this distribution carries no Open vSwitch; use bridge",
        ),
        ('<bootloader location="partition"/>', "a.xml:3: bootloader@location: 'partition' is not supported: xenspin"),
        (
            "<bootloader>extlinux</bootloader>",
            "a.xml:3: bootloader: 'extlinux' is not supported: xenspin boots with GRUB 2",
        ),
        ('<ntp source="dhcp"/>\n<ntp-server>x.org</ntp-server>', 'a.xml:4: ntp-server: given with <ntp source="dhcp">'),
        ('<ntp source="manual"/>', 'a.xml:3: ntp: source="manual" names no <ntp-server> (expected at least one)'),
        ('<ntp source="sometimes"/>', "a.xml:3: ntp@source: 'sometimes' (expected dhcp, default, manual or none)"),
        ("<ntp/>", "a.xml:3: ntp@source: missing (expected dhcp, default, manual or none)"),
        (
            "<ntp-server>a b</ntp-server>",
            "a.xml:3: ntp[0]: 'a b' (expected a host name like pool.ntp.org or an IP address)",
        ),
        ("<ntp-server>10.0.0.300</ntp-server>", "a.xml:3: ntp[0]: '10.0.0.300' is not an IP address"),
        ("<guest-disk>sdb</guest-disk>", "a.xml:3: guest-disk: local storage on other disks is not supported"),
        ('<primary-disk swraid="true">sda,sdb</primary-disk>', "a.xml:3: primary-disk@swraid: software RAID"),
        (
            '<primary-disk preserve-first-partition="true">sda</primary-disk>',
            "a.xml:3: primary-disk@preserve-first-partition: 'true': xenspin erases the whole disk",
        ),
        ('<admin-interface name="eth0" vlan="20"/>', "a.xml:3: admin-interface@vlan: a tagged management VLAN"),
        (
            '<admin-interface proto="static" hwaddr="52:54:00:12:34:56"/>',
            "a.xml:3: admin-interface@hwaddr: is not read",
        ),
        ('<admin-interface name="eth0" proto="none" protov6="autoconf"/>', "a.xml:3: admin-interface@proto: 'none'"),
        ('<admin-interface name="eth0" protov6="static"/>', "a.xml:3: admin-interface@protov6: 'static' is not"),
        ('<script stage="filesystem-populated" type="nfs">srv:/s.sh</script>', "a.xml:3: script@type: scripts on NFS"),
        ("<ui-confirmation-prompt>true</ui-confirmation-prompt>", "a.xml:3: ui-confirmation-prompt: xenspin's"),
        ("<ssh-mode>off</ssh-mode>", "a.xml:3: ssh-mode: 'off' is not supported: a xenspin host runs sshd"),
        ("<fcoe-interface name='eth1'/>", "a.xml:3: fcoe-interface: FCoE is not supported"),
        ("<primary-disk>iscsi:192.0.2.9::::iqn.x</primary-disk>", "a.xml:3: primary-disk: an iSCSI boot disk"),
        ("<bootloader/>\n<bootloader/>", "a.xml:4: bootloader: given twice (first on line 3)"),
    ],
)
def test_refused_in_one_line_naming_file_line_and_element(tmp_path: Path, body: str, expected: str) -> None:
    assert refusal(tmp_path, body).startswith(expected)


@pytest.mark.parametrize(
    "body, expected",
    [
        ('<source type="url">http://repo.example.org/xs/</source>', "source: type 'url': xenspin installs"),
        ('<driver-source type="url">http://x/d</driver-source>', "driver-source: driver packs (XenServer RPMs)"),
        ("<install-failed-script>http://x/f.sh</install-failed-script>", "install-failed-script: xenspin runs no"),
        ('<service name="ssh" state="disabled"/>', "service: 'ssh' is a XenServer service name"),
        ('<bootloader write-boot-entry="true"/>', "bootloader@write-boot-entry: xenspin writes no UEFI boot entry"),
        ('<primary-disk sr-at-end="false">sda</primary-disk>', "primary-disk@sr-at-end: xenspin always puts"),
        (
            '<primary-disk preserve-first-partition="if-utility">sda</primary-disk>',
            "primary-disk@preserve-first-partition: xenspin erases the whole disk",
        ),
        ('<primary-disk fs-type="ext3">sda</primary-disk>', "primary-disk@fs-type: 'ext3': xenspin's root"),
        ('<admin-interface hwaddr="52:54:00:12:34:56" proto="dhcp"/>', "admin-interface@hwaddr: not read"),
        ('<admin-interface name="eth0" protov6="autoconf"/>', "admin-interface@protov6: 'autoconf': IPv6 is as"),
        ("<time-config-method>manual</time-config-method>", "time-config-method: 'manual': a xenspin host keeps"),
        ('<script stage="packages-installed" type="url">http://x/p.sh</script>', "script@stage: 'packages-installed'"),
        ("<existing-installation>sda</existing-installation>", "existing-installation: not used by a fresh install"),
        ("<ntpservers>x.org</ntpservers>", "ntpservers: not an element of XenServer's answerfile format; ignored"),
    ],
)
def test_warned_in_one_line_and_the_install_goes_on(tmp_path: Path, body: str, expected: str) -> None:
    _, warnings = parsed(tmp_path, body)
    assert len(warnings) == 1
    assert warnings[0].startswith("a.xml:3: warning: " + expected)


def test_a_warned_srtype_and_a_packages_installed_script_keep_their_meaning(tmp_path: Path) -> None:
    a, warnings = parsed(
        tmp_path, '<script stage="packages-installed" type="url">http://x/p.sh</script>', '<installation srtype="ext">'
    )
    assert [(h.stage, h.url) for h in a.hooks] == [("filesystem-populated", "http://x/p.sh")]
    assert warnings[0].startswith("a.xml:1: warning: installation@srtype: 'ext': xenspin makes local storage")
    post, _ = parsed(tmp_path, "<post-install-script>http://x/post.sh</post-install-script>")
    assert [(h.stage, h.url) for h in post.hooks] == [("filesystem-populated", "http://x/post.sh")]


def test_installation_modes(tmp_path: Path) -> None:
    up, warnings = parsed(
        tmp_path,
        "<existing-installation>sdb</existing-installation>\n<hostname>other</hostname>",
        '<installation mode="upgrade">',
    )
    assert (up.mode, up.disk, up.wipe, up.hostname) == ("upgrade", "sdb", False, "xenspin")
    assert warnings == [
        "a.xml:2: warning: root-password: not used by an upgrade: it keeps the host's settings",
        "a.xml:4: warning: hostname: not used by an upgrade: it keeps the host's settings",
    ]
    assert refusal(tmp_path, "", '<installation mode="upgrade">') == (
        "a.xml:1: existing-installation: missing (expected the disk of the installation to upgrade)"
    )
    restored, _ = parsed(tmp_path, "<backup-disk>/dev/sdc</backup-disk>", "<restore>")
    assert (restored.mode, restored.disk, restored.wipe) == ("restore", "/dev/sdc", False)
    by_mode, _ = parsed(tmp_path, "<existing-installation>sdc</existing-installation>", '<installation mode="restore">')
    assert (by_mode.mode, by_mode.disk) == ("restore", "sdc")
    assert refusal(tmp_path, "", '<installation mode="reinstall">').startswith(
        "a.xml:1: installation mode: 'reinstall' (back up the host, then install fresh) is not supported"
    )
    assert refusal(tmp_path, "", "<upgrade>").startswith("a.xml:1: upgrade: ambiguous root element")


def test_yaml_ntp(tmp_path: Path) -> None:
    a, _ = load(write(tmp_path, "root: {password: x}\nntp: [pool.ntp.org, 192.0.2.123, '2001:db8::1']\n", "a.yaml"))
    assert a.ntp == ["pool.ntp.org", "192.0.2.123", "2001:db8::1"]
    assert load(write(tmp_path, "root: {password: x}\nntp: []\n", "b.yaml"))[0].ntp == []
    assert load(write(tmp_path, "root: {password: x}\n", "c.yaml"))[0].ntp is None
    with pytest.raises(AnswerfileError, match=r"c.yaml:2: ntp\[0\]: 'pool.ntp.org;reboot' \(expected a host name"):
        load(write(tmp_path, "root: {password: x}\nntp: [pool.ntp.org;reboot]\n", "c.yaml"))


def test_every_element_is_in_the_docs_table() -> None:
    page = (Path(__file__).parent.parent / "docs" / "answerfiles.md").read_text()
    table = page.split("| element / attribute | xenspin |", 1)[1]
    named = set(re.findall(r"<([a-z-]+)[ >/]", table))
    assert set(ELEMENTS) - named == set()


# --- the install: time servers written for systemd-timesyncd --------------------------------


class Recorder(Runner):
    """Runs nothing: the commands are recorded, as an install on a temporary target would make them."""

    def run(self, cmd, what, **kw) -> str:  # noqa: ANN001
        self.commands.append([str(c) for c in cmd])
        return ""


def installer(tmp_path: Path, answer: Answerfile, *, dry_run: bool = False) -> tuple[Installer, io.StringIO]:
    disk = Disk("/dev/vdz", 8 * GiB)
    out = io.StringIO()
    runner = (Runner if dry_run else Recorder)(tmp_path / "install.log", out=out, dry_run=dry_run)
    inst = Installer(
        answer, Layout(disk, plan(disk.size)), runner, tmp_path / "medium/live/filesystem.squashfs", workdir=tmp_path
    )
    return inst, out


def with_timesyncd(target: Path) -> None:
    unit = target / "usr/lib/systemd/system/systemd-timesyncd.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Unit]\n")


def test_configure_writes_the_time_servers_for_timesyncd(tmp_path: Path) -> None:
    a, _ = load(write(tmp_path, REAL_WORLD))
    inst, out = installer(tmp_path, a)
    with_timesyncd(inst.mnt)
    inst.configure()
    assert (inst.mnt / TIMESYNCD_CONF).read_text() == (
        "# written by the xenspin installer\n[Time]\nNTP=ntp1.example.org 192.0.2.123\n"
    )
    assert TIMESYNCD_CONF == "etc/systemd/timesyncd.conf.d/xenspin.conf"
    assert (inst.mnt / "etc/resolv.conf").read_text() == "nameserver 192.0.2.53\nnameserver 192.0.2.54\n"
    assert "warning" not in out.getvalue().replace("warning: time zone", "")


def test_no_servers_masks_timesyncd_and_none_given_writes_nothing(tmp_path: Path) -> None:
    off, _ = installer(tmp_path / "off", Answerfile(root=Root(password="x"), ntp=[]))
    with_timesyncd(off.mnt)
    off.set_time_servers()
    assert os.readlink(off.mnt / "etc/systemd/system/systemd-timesyncd.service") == "/dev/null"
    assert not (off.mnt / TIMESYNCD_CONF).exists()
    default, _ = installer(tmp_path / "default", Answerfile(root=Root(password="x")))
    with_timesyncd(default.mnt)
    default.set_time_servers()
    assert not (default.mnt / "etc/systemd").exists()


def test_an_image_without_timesyncd_gets_one_warning(tmp_path: Path) -> None:
    inst, out = installer(tmp_path, Answerfile(root=Root(password="x"), ntp=["pool.ntp.org"]))
    inst.set_time_servers()
    assert out.getvalue() == "warning: no systemd-timesyncd in the image; the answerfile's time servers are not set\n"
    assert not (inst.mnt / "etc").exists()


def test_configure_dry_run_names_the_file(tmp_path: Path) -> None:
    inst, _ = installer(tmp_path, Answerfile(root=Root(password="x"), ntp=["pool.ntp.org"]), dry_run=True)
    inst.configure()
    assert f"write /{TIMESYNCD_CONF}" in (tmp_path / "install.log").read_text()
    assert not (inst.mnt / "etc").exists()


def test_validate_answerfile_prints_each_warning(tmp_path: Path) -> None:
    path = write(tmp_path, REAL_WORLD.replace('<source type="local"/>', '<source type="url">http://x/</source>'))
    done = subprocess.run(
        [sys.executable, "-m", "builder", "validate-answerfile", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"{path}:6: warning: source: type 'url': xenspin installs the root filesystem on its own medium; "
        "no repository is read (boot the ISO of the release you want)"
    ]
    assert "valid (installs to sda, host xen1)" in done.stdout
    path.write_text(REAL_WORLD.replace(">bridge<", ">openvswitch<"))
    refused = subprocess.run(
        [sys.executable, "-m", "builder", "validate-answerfile", str(path)], capture_output=True, text=True
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith(
        f"{path}:18: network-backend: 'openvswitch' is not supported: this distribution carries no Open vSwitch; use bridge"
    )


def test_a_fully_qualified_host_name_is_taken(tmp_path: Path) -> None:
    a, warnings = parsed(tmp_path, "<hostname>xen1.example.com</hostname>")
    assert a.hostname == "xen1.example.com" and not [w for w in warnings if "hostname" in w]
    inst, _ = installer(tmp_path, a)
    inst.configure()
    assert (inst.mnt / "etc/hostname").read_text() == "xen1\n"  # Debian's way: the full name in /etc/hosts
    assert "127.0.1.1\txen1.example.com\txen1\n" in (inst.mnt / "etc/hosts").read_text()
    for bad in ("xen1..example.com", "-xen1.example.com", "xen1.example.com.", "a" * 64 + ".example.com"):
        assert "hostname" in refusal(tmp_path, f"<hostname>{bad}</hostname>")
