"""The default ISO boots Xen, the live dom0 and its prompt under BIOS and UEFI, as a CD and as a
USB stick: four real QEMU boots (TCG), the whole budget of the slow suite.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from builder import cli, iso, manifest
from builder.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.network]

REPO = Path(__file__).resolve().parent.parent
BOOT_TIMEOUT = "900"  # per boot; about 90 s on an idle 2-core machine, several times that when loaded
LIVE_PACKAGES = "xen-system-amd64,linux-image-amd64,systemd-sysv,live-boot,live-boot-initramfs-tools,xen-utils-4.17"


@pytest.fixture(scope="session")
def live_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for the rootfs stage's output until it lands: a live dom0 from the archive."""
    work = tmp_path_factory.mktemp("live")
    tree = work / "tree"
    subprocess.run(
        ["mmdebstrap", "--variant=minbase", f"--include={LIVE_PACKAGES}", "bookworm", str(tree)],
        check=True,
        capture_output=True,
    )
    out = work / "rootfs"
    (out / "boot").mkdir(parents=True)
    subprocess.run(
        ["mksquashfs", str(tree), str(out / "rootfs.squashfs"), "-comp", "zstd", "-e", "boot", "-noappend", "-quiet"],
        check=True,
    )
    boot = tree / "boot"
    shutil.copyfile(next(boot.glob("xen-*.gz")), out / "boot/xen.gz")
    shutil.copyfile(next(boot.glob("vmlinuz-*")), out / "boot/vmlinuz")
    shutil.copyfile(next(boot.glob("initrd.img-*")), out / "boot/initrd.img")
    (out / "packages.json").write_text("{}\n")
    shutil.rmtree(tree)
    return out


@pytest.fixture(scope="session")
def default_iso(live_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default manifest's ISO (copied in, read-only data) over the live rootfs."""
    project = tmp_path_factory.mktemp("project")
    shutil.copyfile(REPO / "distro.yaml", project / "distro.yaml")
    shutil.copytree(REPO / "components", project / "components")
    shutil.copytree(REPO / "overlays", project / "overlays")  # validate checks that overlays exist
    distro = manifest.load(project / "distro.yaml")
    inp = iso.Inputs(distro, live_rootfs, "live", iso.host_loaders(), iso.GuestTools(), 1_700_000_000)
    made = iso.obtain(inp, Store(tmp_path_factory.mktemp("store")))
    return made.iso


def boot(image: Path, out: Path, *extra: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    status = cli.main(
        ["test", "boot", str(image), "--firmware", "both", "--timeout", BOOT_TIMEOUT, "--out", str(out), *extra]
    )
    lines = capsys.readouterr().out.splitlines()
    assert status == 0, "\n".join(lines)
    return lines


def test_default_iso_boots_as_a_cd_under_bios_and_uefi(
    default_iso: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = boot(default_iso, tmp_path, capsys=capsys)
    assert [line.split(":")[0] for line in lines] == ["PASS bios-cd", "PASS uefi-cd"]
    for fw in ("bios", "uefi"):
        log = (tmp_path / f"test-boot/{fw}-cd.serial.log").read_text(errors="replace")
        # Xen's banner, then dom0's, then the prompt: the dom0 root is the squashfs from the CD.
        assert log.index("(XEN) Xen version") < log.index("Linux version") < log.index("login:")
        assert "/run/live/medium/live/filesystem.squashfs" in log


def test_default_iso_boots_as_a_usb_stick_under_bios_and_uefi(
    default_iso: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = boot(default_iso, tmp_path, "--usb", capsys=capsys)
    assert [line.split(":")[0] for line in lines] == ["PASS bios-usb", "PASS uefi-usb"]
