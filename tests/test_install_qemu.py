"""`xenspin test install` on the default ISO, as a user runs it: an unattended install in
QEMU (TCG) onto a fresh disk, then the disk alone boots Xen, `xl list` shows Domain-0 and a
PV guest prints its marker. BIOS with the default YAML answers, UEFI with a XenServer XML
answerfile whose root password is hashed: both firmwares and both answerfile formats in
two installs, each logged into with the harness's own throwaway login.

Slow: the default build (session fixture) and two full installs under TCG.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builder import cli, testguest

pytestmark = [pytest.mark.slow, pytest.mark.network]


def install(iso: Path, out: Path, firmware: str, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    status = cli.main(["--out", str(out), "test", "install", str(iso), "--firmware", firmware, *extra])
    printed = capsys.readouterr()
    assert status == 0, printed.out + printed.err
    [line] = printed.out.splitlines()
    return line


def check_logs(logs: Path, firmware: str) -> str:
    """What the serial lines show: the install finished, then Xen, dom0 and the guest from the disk."""
    installed = (logs / f"{firmware}-install.serial.log").read_text(errors="replace")
    assert "xenspin installed on /dev/vda" in installed
    booted = (logs / f"{firmware}-disk.serial.log").read_text(errors="replace")
    # The second VM has no ISO: Xen and dom0 come from the installed disk.
    assert booted.index("(XEN) Xen version") < booted.index("Linux version") < booted.index("login:")
    assert "Domain-0" in booted and testguest.GUEST_MARKER in booted
    return booted


def test_unattended_install_under_bios_boots_xen_and_a_guest(
    default_iso: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = install(default_iso, tmp_path, "bios", capsys)
    assert line.startswith("PASS install bios: installed at ") and "guest at" in line
    booted = check_logs(tmp_path / "test-install", "bios")
    assert "xenspin-test login:" in booted  # the default answers' hostname


def test_an_xml_answerfile_installs_under_uefi(
    default_iso: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = tmp_path / "answer.xml"  # root's hash: of a random password, thrown away
    answer.write_text(
        '<?xml version="1.0"?>\n'
        '<installation mode="fresh">\n'
        "  <primary-disk>vda</primary-disk>\n"
        "  <keymap>us</keymap>\n"
        '  <root-password type="hash">$6$xenspinqemutest$MZg/UGw1bV.hIEoLvcHP2th1S8I.xbrOqZz1ZCGL/OsYycSzzuzd0DI2qv7iw1mdQA4lUu.qAtcAFfKHnRKIl0</root-password>\n'
        "  <timezone>Europe/Paris</timezone>\n"
        "  <hostname>from-xml</hostname>\n"
        '  <admin-interface name="eth0" proto="dhcp"/>\n'
        "</installation>\n"
    )
    line = install(default_iso, tmp_path / "run", "uefi", capsys, "--answerfile", str(answer))
    assert line.startswith("PASS install uefi: installed at ") and "guest at" in line
    booted = check_logs(tmp_path / "run/test-install", "uefi")
    assert "from-xml login:" in booted  # the XML's hostname; root's password is a hash the test cannot log in with
    serial = (tmp_path / "run/test-install/uefi-install.serial.log").read_bytes()  # firmware output: not UTF-8
    assert b"adding the test login xenspin-test" in serial
