"""Safe extraction, with tarfile's filters (Python >= 3.11.4) and with the fallback Debian 12's Python 3.11.2 uses."""

from __future__ import annotations

import io
import stat
import tarfile
from pathlib import Path

import pytest

from builder import safetar

IMPLEMENTATIONS = ["fallback"] + (["filters"] if safetar.HAVE_FILTERS else [])


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(safetar, "HAVE_FILTERS", request.param == "filters")
    return request.param


def archive(tmp_path: Path, *members: tuple[str, str, object]) -> Path:
    """A tar with members (name, type, payload): file -> bytes, dir, sym/lnk -> target, chr."""
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = payload[0] if isinstance(payload, tuple) else payload
                info.size = len(data)
                info.mode = payload[1] if isinstance(payload, tuple) else 0o644
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "sym": tarfile.SYMTYPE,
                "lnk": tarfile.LNKTYPE,
                "chr": tarfile.CHRTYPE,
            }[kind]
            info.mode = 0o755
            if kind in ("sym", "lnk"):
                info.linkname = str(payload)
            tar.addfile(info)
    return path


def extract(path: Path, dest: Path, **kw: bool) -> None:
    dest.mkdir(exist_ok=True)
    with tarfile.open(path) as tar:
        safetar.extract(tar, dest, **kw)


def test_a_normal_tree(impl: str, tmp_path: Path) -> None:
    path = archive(
        tmp_path,
        ("src", "dir", None),
        ("src/run", "file", (b"#!/bin/sh\n", 0o4755)),
        ("src/data", "file", b"x"),
        ("src/link", "sym", "data"),
    )
    extract(path, tmp_path / "out")
    run = tmp_path / "out/src/run"
    assert run.read_bytes() == b"#!/bin/sh\n"
    assert run.stat().st_mode & 0o111 and not run.stat().st_mode & stat.S_ISUID  # exec kept, setuid dropped
    assert (tmp_path / "out/src/link").resolve() == (tmp_path / "out/src/data").resolve()


@pytest.mark.parametrize(
    "members",
    [
        [("../evil", "file", b"x")],
        [("up", "sym", "../../.."), ("up/evil", "file", b"x")],
        [("etc", "sym", "/etc")],
        [("hard", "lnk", "../outside")],
        [("tty", "chr", None)],
    ],
    ids=["dotdot", "symlink-out", "symlink-absolute", "hardlink-out", "device"],
)
def test_escapes_are_refused(impl: str, tmp_path: Path, members: list) -> None:
    path = archive(tmp_path, *members)
    with pytest.raises(tarfile.TarError):
        extract(path, tmp_path / "out")
    assert not (tmp_path / "evil").exists()


def test_absolute_names_stay_inside(impl: str, tmp_path: Path) -> None:
    extract(archive(tmp_path, ("/abs-evil", "file", b"x")), tmp_path / "out")
    assert (tmp_path / "out/abs-evil").read_bytes() == b"x" and not Path("/abs-evil").exists()
