"""The error boundary: every failure a user can cause is one line and exit 2; a bug names its saved traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import one_line

from builder import cli, errors
from builder.run import CommandError, run

TINY = "name: t\nversion: '1'\ninstaller: {component: tree}\ncomponents:\n  tree:\n    source: {path: tree}\n"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A manifest whose only component is in-tree: lock and fetch need no network."""
    (tmp_path / "p/tree").mkdir(parents=True)
    (tmp_path / "p/tree/file").write_text("x\n")
    (tmp_path / "p/distro.yaml").write_text(TINY)
    monkeypatch.chdir(tmp_path / "p")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "p"


def fails(capsys: pytest.CaptureFixture[str], *args: str, code: int = 2) -> str:
    got = cli.main(list(args))
    err = capsys.readouterr().err
    assert got == code, err
    return one_line(err)


def xenspin_in(bwrap: list[str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """xenspin as a new process inside a bubblewrap view of this machine (for faults root cannot cause here)."""
    cmd = ["bwrap", "--bind", "/", "/", "--dev", "/dev", "--proc", "/proc", *bwrap, sys.executable, "-m", "builder"]
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_store_that_cannot_be_created(project: Path, capsys) -> None:
    line = fails(capsys, "--store", "/proc/nope", "lock")
    assert line == "store /proc/nope: cannot create /proc/nope/blobs/sha256: No such file or directory"


def test_file_as_store(project: Path, capsys) -> None:
    (project / "afile").write_text("")
    line = fails(capsys, "--store", "afile", "lock")
    assert line.startswith("store ") and line.endswith("afile/blobs/sha256: Not a directory")


def test_empty_store_option(project: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--store", "", "fetch"])
    assert e.value.code == 2
    assert one_line(capsys.readouterr().err) == (
        "xenspin: argument --store: expected a directory, got an empty string (see xenspin --help)"
    )
    assert not (project / "blobs").exists()  # the working directory did not become a store


def test_read_only_store(project: Path) -> None:
    (project / "ro").mkdir()
    proc = xenspin_in(["--ro-bind", str(project / "ro"), str(project / "ro")], project, "--store", "ro", "lock")
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr).endswith("ro/blobs/sha256: Read-only file system")


def test_disk_full(project: Path) -> None:
    """The lock cannot be written beside a manifest on a full filesystem."""
    full = project / "full"
    full.mkdir()
    script = f"cp -r {project}/tree {project}/distro.yaml {full}/ && cat /dev/zero > {full}/fill 2>/dev/null; "
    script += f"exec {sys.executable} -m builder --store {project}/store -f {full}/distro.yaml lock"
    proc = subprocess.run(
        ["bwrap", "--bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--size", str(1 << 20), "--tmpfs", str(full)]
        + ["sh", "-c", script],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc.stderr)
    assert line == f"{full}/distro.lock: cannot write: no space left on the device"


def test_killed_child_is_named() -> None:
    with pytest.raises(CommandError) as e:
        run(["sh", "-c", "kill -9 $$"], what="build x: step compile")
    assert str(e.value) == "build x: step compile: was killed by signal SIGKILL"


def test_bug_prints_one_line_and_saves_the_traceback(project: Path, capsys, monkeypatch) -> None:
    def broken(_args):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(cli, "COMMANDS", {**cli.COMMANDS, "validate": broken})
    line = fails(capsys, "validate", code=errors.BUG_EXIT)
    assert line.startswith("xenspin: internal error (ZeroDivisionError: oops); this is a bug: please report it")
    saved = Path(line.rsplit(" ", 1)[1])
    assert "Traceback" in saved.read_text() and "ZeroDivisionError: oops" in saved.read_text()
    saved.unlink()
    assert cli.main(["-vv", "validate"]) == errors.BUG_EXIT  # -vv: the traceback in full as well
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    Path(err.strip().rsplit(" ", 1)[1]).unlink()
