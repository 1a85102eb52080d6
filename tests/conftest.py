"""Fixtures shared by the slow tests."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder import cli


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for the whole run, so each build root is made once and shared by every build test."""
    return tmp_path_factory.mktemp("store")


def one_line(err: str) -> str:
    """The single line a user sees for an expected failure: no traceback, nothing else."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]


ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EPOCH = "1767225600"  # the epoch test_xen.py builds with, so the session store shares every object


@dataclass(frozen=True)
class DefaultBuild:
    """The default distribution built once per run: its project copy, store and outputs."""

    project: Path  # a copy of the repository's distro.yaml, distro.lock, components/ and overlays/
    manifest: Path
    store: Path
    report: dict  # `xenspin --json build`
    rootfs: Path  # the rootfs stage's output: rootfs.squashfs, packages.json, boot/
    tree: Path  # rootfs.squashfs unpacked (read it, do not change it)


def copy_project(dest: Path) -> Path:
    """The repository's default distribution copied into dest (read-only data; nothing points back)."""
    for name in ("distro.yaml", "distro.lock"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("components", "overlays"):
        shutil.copytree(ROOT / name, dest / name, symlinks=True)
    return dest / "distro.yaml"


@pytest.fixture(scope="session")
def default_build(store: Path, tmp_path_factory: pytest.TempPathFactory) -> DefaultBuild:
    """`xenspin build` of the default distribution, once per session, shared by the rootfs, ISO and installer tests.

    Slow and needs the archive on a cold store: only slow/network tests may use it.
    """
    project = tmp_path_factory.mktemp("default-distro")
    manifest = copy_project(project)
    argv = ["-f", str(manifest), "--store", str(store), "--out", str(project / "out"), "--json", "build"]
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setenv("SOURCE_DATE_EPOCH", DEFAULT_EPOCH)
        code = cli.main(argv)
    assert code == 0, err.getvalue()
    report = json.loads(out.getvalue())
    rootfs = Path(report["rootfs"]["path"])
    tree = project / "tree"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(tree), str(rootfs / "rootfs.squashfs")], check=True)
    return DefaultBuild(project, manifest, store, report, rootfs, tree)
