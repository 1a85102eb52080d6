"""Guest tools end to end: the real win-xenbus recipe fetched through --mirror from a local HTTP
server, built into its package, and put on the ISO and into guest-tools.iso.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import OPTIONAL_UPSTREAMS, Server, mirror_args
from test_iso import EPOCH, fake_rootfs

from builder import cli, iso, manifest
from builder.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.network]

REPO = Path(__file__).resolve().parent.parent

DISTRO = """\
name: tools
version: "1"
components:
  win-xenbus: {}
  installer:
    source: {path: installer}
"""


@pytest.fixture
def xenbits(server: Server) -> str:
    """A local stand-in for xenbits.xen.org serving a small xenbus driver tarball."""
    www = server.root / "pvdrivers/win/9.0.0"
    www.mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in {"xenbus/x64/xenbus.sys": b"driver bytes", "xenbus/xenbus.inf": b"DriverVer=9.0.0\n"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = EPOCH
            tar.addfile(info, io.BytesIO(data))
    (www / "xenbus.tar").write_bytes(buf.getvalue())
    return server.base


def test_guest_tools_through_a_mirror(
    tmp_path: Path, store: Path, xenbits: str, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "project"
    (project / "components").mkdir(parents=True)
    (project / "installer").mkdir()
    (project / "distro.yaml").write_text(DISTRO)
    shutil.copyfile(REPO / "components/win-xenbus.yaml", project / "components/win-xenbus.yaml")
    mirror = f"https://xenbits.xen.org/={xenbits}"
    args = ["-f", str(project / "distro.yaml"), "--store", str(store), "--out", str(tmp_path / "out")]
    status = cli.main([*args, "--mirror", mirror, "--json", "build"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "left out" not in captured.err
    debs = {name: [Path(d) for d in paths] for name, paths in json.loads(captured.out)["debs"].items() if paths}
    assert list(debs) == ["win-xenbus"]

    distro = manifest.load(project / "distro.yaml")
    guest = iso.GuestTools({"win-xenbus": debs["win-xenbus"]})
    inp = iso.Inputs(distro, fake_rootfs(tmp_path / "rootfs"), "k", iso.host_loaders(), guest, EPOCH)
    made = iso.obtain(inp, Store(tmp_path / "iso-store"))
    assert made.guest_iso is not None
    assert made.info["guest_tools"]["win-xenbus"]["package"] == "xenspin-guest-tools-xenbus"
    extracted = tmp_path / "guest"
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(made.guest_iso), "-extract", "/", str(extracted)],
        check=True,
        capture_output=True,
    )
    assert (extracted / "xenbus/x64/xenbus.sys").read_bytes() == b"driver bytes"
    assert "xenbus/xenbus.inf" in (extracted / "SHA256SUMS").read_text()

    # With the upstream unreachable (mapped where nothing listens, on any machine): the guest tools are left out, in one line.
    with contextlib.suppress(FileNotFoundError):
        (project / "distro.lock").unlink()
    status = cli.main([*args, "--store", str(tmp_path / "store2"), *mirror_args(OPTIONAL_UPSTREAMS), "lock"])
    err = capsys.readouterr().err
    assert status == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: left out guest tools (win-xenbus): ")
