"""The default distribution's Xen, built from real upstream source, two ways that must agree.

Slow: a build root with build-essential (mmdebstrap) and two compiles of the hypervisor.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from builder import cli

pytestmark = [pytest.mark.slow, pytest.mark.network]  # build roots come from the archive

ROOT = Path(__file__).resolve().parent.parent
XEN_GIT = "https://xenbits.xen.org/git-http/xen.git"
MULTIBOOT2_MAGIC = (0xE85250D6).to_bytes(4, "little")


@pytest.fixture(autouse=True)
def fixed_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")


def build(capsys: pytest.CaptureFixture[str], store: Path, manifest: Path, *args: str) -> dict:
    code = cli.main(["-f", str(manifest), "--store", str(store), "--out", str(store.parent / "out"), "--json", *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def hypervisor(deb: str, dest: Path) -> tuple[bytes, bytes]:
    """(xen.gz unpacked, xen.efi) from a xenspin-hypervisor .deb."""
    subprocess.run(["dpkg-deb", "-x", deb, dest], check=True)
    return gzip.decompress((dest / "boot/xen-xenspin.gz").read_bytes()), (dest / "boot/xen-xenspin.efi").read_bytes()


def test_default_distribution_builds_with_xen_from_source(store: Path, capsys, tmp_path: Path) -> None:
    report = build(capsys, store, ROOT / "distro.yaml", "build", "-j", "2")
    assert set(report["built"] + report["cached"]) == {"installer", "linux", "xen", "xl"}
    (deb,) = report["debs"]["xen"]
    xen, efi = hypervisor(deb, tmp_path / "x")
    # a multiboot2 image (what GRUB's multiboot2 loads) and an EFI application
    assert MULTIBOOT2_MAGIC in xen[:32768]
    assert efi[:2] == b"MZ" and b"PE\0\0" in efi[:1024]
    assert b"Xen version" not in xen[:16] and len(xen) > 1_000_000
    packages = (Path(report["repo"]) / "Packages").read_text()
    for name in ("xenspin-hypervisor", "xenspin-installer", "xen-utils-4.17", "xenstore-utils", "linux-image-amd64"):
        assert f"Package: {name}\n" in packages
    # the toolstack is of the hypervisor's release line
    lock = yaml.safe_load((ROOT / "distro.lock").read_text())
    source = lock["components"]["xen"]["version"].rsplit("-", 1)[0]
    tools = lock["components"]["xl"]["packages"]["xen-utils-4.17"]["version"].rsplit("-", 1)[0]
    assert tools == source
    again = build(capsys, store, ROOT / "distro.yaml", "build")
    assert again["built"] == []


def test_spin_builds_xen_from_upstream_git_by_tag(store: Path, capsys, tmp_path: Path) -> None:
    """A local repository made from the same source, reached through the mirror map, gives the same Xen."""
    tarball_build = build(capsys, store, ROOT / "distro.yaml", "build", "xen")
    (src,) = [p.parent.parent for p in (store / "objects/src").glob("*/xen-*/xen/Makefile")]
    work = tmp_path / "xen"
    shutil.copytree(src, work, symlinks=True)
    env = {"GIT_AUTHOR_DATE": "@1767225600 +0000", "GIT_COMMITTER_DATE": "@1767225600 +0000", "HOME": str(tmp_path)}

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-C", str(work), "-c", "user.name=Xen", "-c", "user.email=x@example.invalid", *args],
            check=True,
            env=env,
            capture_output=True,
        )

    git("init", "-q")
    git("add", "-A", "-f")
    git("commit", "-q", "-m", "Xen 4.17.5")
    git("tag", "-a", "RELEASE-4.17.5", "-m", "Xen 4.17.5")
    spin = tmp_path / "upstream.yaml"
    spin.write_text(
        f"extends: {ROOT / 'distro.yaml'}\ncomponents:\n  xen:\n    source:\n      git: {XEN_GIT}\n      ref: RELEASE-4.17.5\n"
    )
    git_build = build(capsys, store, spin, "--mirror", f"{XEN_GIT}=file://{work}", "build", "xen")
    assert git_build["built"] == ["xen"]
    entry = yaml.safe_load(spin.with_suffix(".lock").read_text())["components"]["xen"]
    assert entry["url"] == XEN_GIT and entry["tag"] == "RELEASE-4.17.5" and len(entry["commit"]) == 40
    from_tarball = hypervisor(tarball_build["debs"]["xen"][0], tmp_path / "a")
    from_git = hypervisor(git_build["debs"]["xen"][0], tmp_path / "b")
    assert from_git == from_tarball  # reproducible: same source, same hypervisor, byte for byte
