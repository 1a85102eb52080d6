"""Xen built from source by spins: hypervisor and tools from one locked tree, versioned as upstream's,
and a host whose own xl starts a guest.

Slow: each spin makes its build root and compiles Xen's hypervisor and tools (about 3 minutes at
-j2); the vendor spin's ISO is installed under QEMU, the bookworm spin's is booted.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import DEFAULT_EPOCH, ROOT, XEN_GIT, copy_project

from builder import cli

pytestmark = [pytest.mark.slow, pytest.mark.network]  # build roots come from the archive

MULTIBOOT2_MAGIC = (0xE85250D6).to_bytes(4, "little")
DEBIAN_XEN_BINARIES = ("xen-utils-common", "libxenmisc4.20", "libxenstore4", "xenstore-utils", "xen-utils-4.20")


@dataclass(frozen=True)
class SpinBuild:
    manifest: Path
    out: Path
    report: dict
    lock: dict
    args: list[str]  # --store and the mirror map, for more commands on the same spin


def xenspin(args: list[str], capsys: pytest.CaptureFixture[str] | None = None) -> tuple[int, str, str]:
    code = cli.main(args)
    if capsys is None:
        return code, "", ""
    out = capsys.readouterr()
    return code, out.out, out.err


def build_spin(spin: str, store: Path, work: Path, mirrors: dict[str, str]) -> SpinBuild:
    """A copy of the repository with spins/SPIN built into work/out (the checkout's files stay untouched)."""
    project = work / "project"
    project.mkdir()
    copy_project(project)
    shutil.copytree(ROOT / "spins", project / "spins")
    manifest = project / "spins" / spin
    args = ["--store", str(store), *(a for f, t in mirrors.items() for a in ("--mirror", f"{f}={t}"))]
    out = work / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        mp.setenv("SOURCE_DATE_EPOCH", DEFAULT_EPOCH)
        code = cli.main(["-f", str(manifest), *args, "--out", str(out), "--json", "build"])
    assert code == 0, stderr.getvalue()
    lock = yaml.safe_load(manifest.with_suffix(".lock").read_text())
    return SpinBuild(manifest, out, json.loads(stdout.getvalue()), lock, ["-f", str(manifest), *args])


def unpack(deb: str, dest: Path) -> dict[str, str]:
    """Unpack a .deb; return its control fields."""
    subprocess.run(["dpkg-deb", "-x", deb, dest], check=True)
    text = subprocess.run(["dpkg-deb", "-f", deb], check=True, capture_output=True, text=True).stdout
    fields, key = {}, ""
    for line in text.splitlines():
        if line.startswith(" "):
            fields[key] += line
        else:
            key, _, value = line.partition(": ")
            fields[key] = value
    return fields


def dpkg_status(tree: Path) -> dict[str, dict[str, str]]:
    """The installed packages of an unpacked image: name -> its fields (first lines only)."""
    out = {}
    for para in (tree / "var/lib/dpkg/status").read_text().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in para.splitlines() if ": " in line and not line.startswith(" "))
        if "Package" in fields:
            out[fields["Package"]] = fields
    return out


@pytest.fixture(scope="module")
def vendor(store: Path, tmp_path_factory: pytest.TempPathFactory, xen_mirror: dict[str, str]) -> SpinBuild:
    """spins/vendor-example.yaml: Xen from upstream git at RELEASE-4.20.4 (the carried repository)."""
    return build_spin("vendor-example.yaml", store, tmp_path_factory.mktemp("vendor"), xen_mirror)


def test_vendor_spin_builds_hypervisor_and_tools_from_one_tag(vendor: SpinBuild, tmp_path: Path) -> None:
    xen, tools = vendor.lock["components"]["xen"], vendor.lock["components"]["xen-tools"]
    assert xen["url"] == XEN_GIT and xen["tag"] == "RELEASE-4.20.4" and len(xen["commit"]) == 40
    assert tools["kind"] == "component" and tools["component"] == "xen"  # locked once, in xen's entry
    [hv_deb], [tools_deb] = vendor.report["debs"]["xen"], vendor.report["debs"]["xen-tools"]
    hv, tl = unpack(hv_deb, tmp_path / "hv"), unpack(tools_deb, tmp_path / "tools")
    # versions read as upstream's release, the same for both halves
    assert hv["Version"].startswith("4.20.4-xs") and tl["Version"].startswith("4.20.4-xs")
    image = gzip.decompress((tmp_path / "hv/boot/xen-xenspin.gz").read_bytes())
    assert MULTIBOOT2_MAGIC in image[:32768] and b"4.20.4" in image
    # the tools of that tree: xl, the daemons, the libraries of its 4.20 interface, systemd units
    for rel in ("usr/sbin/xl", "usr/sbin/xenstored", "usr/sbin/xenconsoled", "usr/lib/xen/bin/xen-init-dom0"):
        assert (tmp_path / "tools" / rel).is_file(), rel
    assert (tmp_path / "tools/usr/lib/x86_64-linux-gnu/libxenctrl.so.4.20").exists()
    assert (tmp_path / "tools/usr/lib/systemd/system/xenstored.service").is_file()
    assert not (tmp_path / "tools/usr/include").exists()  # built against, not shipped
    for name in DEBIAN_XEN_BINARIES:  # apt cannot put Debian's Xen beside them
        assert name in tl["Conflicts"].split(", ") and name in tl["Replaces"].split(", ")
    assert "xen-hypervisor" in hv["Conflicts"] and "xen-hypervisor" in hv["Provides"]


def test_vendor_image_holds_only_the_spins_xen(vendor: SpinBuild, tmp_path: Path) -> None:
    rootfs = Path(vendor.report["rootfs"]["path"])
    tree = tmp_path / "tree"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(tree), str(rootfs / "rootfs.squashfs")], check=True)
    installed = dpkg_status(tree)
    assert installed["xenspin-xen-tools"]["Version"].startswith("4.20.4-xs")
    assert not [n for n, f in installed.items() if f.get("Source", n).split()[0] == "xen"]  # none of Debian's
    wants = tree / "etc/systemd/system/multi-user.target.wants"
    for unit in ("xenstored.service", "xenconsoled.service", "xen-init-dom0.service", "xendomains.service"):
        assert (wants / unit).is_symlink(), unit
    assert [p.name for p in (tree / "boot").glob("xen*.gz")] == ["xen-xenspin.gz"]
    info = json.loads((vendor.out / "build-info.json").read_text())["xen"]
    assert info["one-source"] is True and info["hypervisor"]["tag"] == "RELEASE-4.20.4"
    assert info["tools"]["source-of"] == "xen" and info["tools"]["commit"] == info["hypervisor"]["commit"]


def test_vendor_host_installs_and_its_own_xl_starts_a_guest(vendor: SpinBuild, tmp_path: Path, capsys) -> None:
    [iso] = vendor.out.glob("*-amd64.iso")
    code, out, err = xenspin(
        [*vendor.args, "--out", str(tmp_path), "test", "install", str(iso), "--firmware", "bios"], capsys
    )
    assert code == 0, out + err
    assert "PASS install bios" in out and "guest at" in out


def test_debians_xen_tools_beside_a_source_built_xen_are_refused_at_lock(
    vendor: SpinBuild, tmp_path: Path, capsys
) -> None:
    """Named in rootfs.packages, or pulled in by a package that needs Debian's libraries: refused either way."""
    for extra in ("xen-utils-4.20", "qemu-system-xen"):
        spin = vendor.manifest.with_name(f"mix-{extra}.yaml")
        spin.write_text(f"extends: vendor-example.yaml\nrootfs:\n  packages+: [{extra}]\n")
        code, out, err = xenspin(["-f", str(spin), *vendor.args[2:], "lock"], capsys)
        assert code == 2, out + err
        assert "Traceback" not in err
        line = err.strip().splitlines()[-1]  # after the progress lines, the one error line
        assert line.startswith("lock set rootfs: apt cannot resolve it: xenspin-xen-tools conflicts with "), line
        assert not spin.with_suffix(".lock").exists()


def test_bookworm_spin_builds_xen_4_17_from_debians_source_and_boots(
    store: Path, tmp_path_factory: pytest.TempPathFactory, capsys
) -> None:
    spin = build_spin("bookworm.yaml", store, tmp_path_factory.mktemp("bookworm"), {})
    xen = spin.lock["components"]["xen"]
    assert xen["kind"] == "debian" and xen["version"].startswith("4.17.")
    assert spin.lock["components"]["xen-tools"] == {
        "kind": "component",
        "component": "xen",
        "recipe": spin.lock["components"]["xen-tools"]["recipe"],
    }
    upstream = xen["version"].rsplit("-", 1)[0]
    for comp in ("xen", "xen-tools"):
        [deb] = spin.report["debs"][comp]
        assert Path(deb).name.split("_")[1].startswith(f"{upstream}-xs")  # Debian's upstream version
    [iso] = spin.out.glob("*-amd64.iso")
    code, out, err = xenspin([*spin.args, "test", "boot", str(iso), "--firmware", "bios"], capsys)
    assert code == 0 and "PASS" in out, out + err
