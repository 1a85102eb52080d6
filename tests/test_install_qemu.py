"""The default ISO installed in QEMU (TCG), as a user runs `xenspin test install` and `xenspin test upgrade`.
Each VM run checks several things, as the slow suite's time is counted:

- BIOS: `xenspin test upgrade` from the default ISO (installed with a XenServer XML answerfile naming
  sda: the VM puts the target on AHCI, the answers on virtio; a static address, name servers and NTP
  servers read back on the installed host) to the same distribution built again as version 0.2 (only
  the rootfs, ISO and SBOM stages rebuild), then restored to 0.1;
- UEFI: `xenspin test install` with an XML answerfile naming sda whose root password is a hash;
- BIOS: `xenspin test install --interactive`, the installer's prompts typed on the serial console.

The ISO's boots as a CD (Xen, then dom0 from the squashfs on the CD, then the installer) are read in
these runs' serial logs; tests/test_iso_boot.py keeps the USB sticks.

Slow: the default build (session fixture), a second build, and three VM runs under TCG.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from conftest import DEFAULT_EPOCH, OPTIONAL_UPSTREAMS, DefaultBuild, copy_project, mirror_args

from builder import cli, testguest, vmtest

pytestmark = [pytest.mark.slow, pytest.mark.network]

# root's hash: of a random password, thrown away; the test logs in with its own login
ROOT_HASH = "$6$xenspinqemutest$MZg/UGw1bV.hIEoLvcHP2th1S8I.xbrOqZz1ZCGL/OsYycSzzuzd0DI2qv7iw1mdQA4lUu.qAtcAFfKHnRKIl0"


def xml_answers(hostname: str, network: str, extra: str = "") -> str:
    return (
        '<?xml version="1.0"?>\n'
        '<installation mode="fresh">\n'
        "  <primary-disk>sda</primary-disk>\n"
        "  <keymap>de</keymap>\n"
        f'  <root-password type="hash">{ROOT_HASH}</root-password>\n'
        "  <timezone>Europe/Paris</timezone>\n"
        f"  <hostname>{hostname}</hostname>\n"
        f"  {network}\n"
        f"{extra}"
        "</installation>\n"
    )


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    status = cli.main(argv)
    printed = capsys.readouterr()
    assert status == 0, printed.out + printed.err
    [line] = printed.out.splitlines()
    return line


def booted_from_cd(serial: Path) -> None:
    """The ISO booted as a CD: Xen's banner, dom0's, then the installer, dom0's root the squashfs on the CD."""
    log = serial.read_text(errors="replace")
    assert log.index("(XEN) Xen version") < log.index("Linux version") < log.index(vmtest.PROMPT)
    assert "/run/live/medium/live/filesystem.squashfs" in log


def booted_from_disk(serial: Path, hostname: str) -> str:
    """The VM without the ISO: Xen and dom0 from the installed disk, to the host's login prompt."""
    log = serial.read_text(errors="replace")
    assert log.index("(XEN) Xen version") < log.index("Linux version") < log.index(f"{hostname} login:")
    return log


@pytest.fixture(scope="module")
def next_iso(default_build: DefaultBuild, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default distribution built again as version 0.2, in the session's store: the upgrade's NEW."""
    project = tmp_path_factory.mktemp("distro-0.2")
    manifest = copy_project(project)
    text = manifest.read_text()
    assert '\nversion: "0.1"\n' in text
    manifest.write_text(text.replace('\nversion: "0.1"\n', '\nversion: "0.2"\n'))
    argv = ["-f", str(manifest), "--store", str(default_build.store), "--out", str(project / "out")]
    argv += [*mirror_args(OPTIONAL_UPSTREAMS), "--json", "build"]
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setenv("SOURCE_DATE_EPOCH", DEFAULT_EPOCH)
        assert cli.main(argv) == 0, err.getvalue()
    stages = json.loads((project / "out/build-info.json").read_text())["stages"]
    made = {name for name, stage in stages.items() if stage["made"]}
    # the archive components come from the store; the in-tree installer is versioned with the distribution
    assert made <= {"build:installer", "repo:repo", "rootfs:rootfs", "iso:iso", "sbom:sbom"}, made
    return project / "out/xenspin-0.2-amd64.iso"


def test_an_xml_install_on_sda_upgrades_to_the_next_version_and_restores_under_bios(
    default_iso: Path, next_iso: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = tmp_path / "answer.xml"
    answer.write_text(
        xml_answers(
            "from-xml",
            '<admin-interface proto="static"><ipaddr>10.0.2.15</ipaddr><subnet>255.255.255.0</subnet>'
            "<gateway>10.0.2.2</gateway></admin-interface>",
            "  <name-server>10.0.2.3</name-server>\n"
            "  <nameserver>192.0.2.53</nameserver>\n"  # the legacy spelling
            "  <ntp-server>192.0.2.123</ntp-server>\n",
        )
    )
    argv = ["--out", str(tmp_path), "test", "upgrade", str(default_iso), str(next_iso), "--firmware", "bios"]
    line = run_cli([*argv, "--answerfile", str(answer)], capsys)
    assert line.startswith("PASS upgrade bios: installed at ")
    for step in ("changed", "upgraded", "guest (new)", "kept", "restored", "Domain-0 (old)"):
        assert f"{step} at " in line, line
    logs = tmp_path / "test-upgrade"
    booted_from_cd(logs / "bios-install.serial.log")
    assert "xenspin installed on /dev/sda" in (logs / "bios-install.serial.log").read_text(errors="replace")
    assert "xenspin upgraded on /dev/sda" in (logs / "bios-upgrade.serial.log").read_text(errors="replace")
    assert "xenspin restored on /dev/sda" in (logs / "bios-restore.serial.log").read_text(errors="replace")
    booted_from_disk(logs / "bios-old.serial.log", "from-xml")
    upgraded = booted_from_disk(logs / "bios-upgraded.serial.log", "from-xml")
    assert "Domain-0" in upgraded and testguest.GUEST_MARKER in upgraded
    assert "Domain-0" in booted_from_disk(logs / "bios-restored.serial.log", "from-xml")
    # the VM's disks: the target on AHCI, the answers on virtio
    qemu = (logs / "bios-install.qemu.log").read_text()
    assert "ide-hd,drive=target" in qemu and "virtio-blk-pci,drive=answers" in qemu


def test_an_xml_answerfile_installs_on_sda_under_uefi(
    default_iso: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = tmp_path / "answer.xml"
    answer.write_text(xml_answers("from-xml", '<admin-interface name="eth0" proto="dhcp"/>'))
    argv = ["--out", str(tmp_path / "run"), "test", "install", str(default_iso), "--firmware", "uefi"]
    line = run_cli([*argv, "--answerfile", str(answer)], capsys)
    assert line.startswith("PASS install uefi: installed at ") and "guest at" in line
    logs = tmp_path / "run/test-install"
    booted_from_cd(logs / "uefi-install.serial.log")
    serial = (logs / "uefi-install.serial.log").read_bytes()  # firmware output: not UTF-8
    assert b"xenspin installed on /dev/sda" in serial and b"adding the test login xenspin-test" in serial
    # the XML's hostname; root's password is a hash the test cannot log in with
    booted = booted_from_disk(logs / "uefi-disk.serial.log", "from-xml")
    assert "Domain-0" in booted and testguest.GUEST_MARKER in booted


def test_the_interactive_installer_typed_on_the_serial_console_installs_under_bios(
    default_iso: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--out", str(tmp_path), "test", "install", str(default_iso), "--firmware", "bios", "--interactive"]
    line = run_cli(argv, capsys)
    assert line.startswith("PASS interactive bios: asked at ") and "Domain-0 at" in line
    logs = tmp_path / "test-install"
    typed = (logs / "bios-interactive.serial.log").read_text(errors="replace")
    for prompt in ("Install to disk", "Host name", "Root password", "Again", "Type yes"):
        assert prompt in typed
    assert "xenspin installed on /dev/vda" in typed
    booted_from_disk(logs / "bios-typed-disk.serial.log", "xenspin-typed")
