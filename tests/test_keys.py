"""Cache keys: which inputs change a component's key (and those built after it), and which must not."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from builder import lock, manifest, pipeline
from builder.context import Context
from builder.store import Store

DISTRO = """\
name: k
version: "1"
description: keys
installer: {component: c}
components:
  a:
    description: the first
    source: {path: a}
    build-depends: [make]
    steps: [{name: s, run: "cp -a $SRC/. $OUT/"}]
    package: {name: a-xs}
  b:
    source: {path: b}
    after: [a]
    steps: [{name: s, run: "true"}]
  c:
    source: {path: c}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    p = tmp_path / "p"
    for name in "abc":
        (p / name).mkdir(parents=True)
        (p / name / "file").write_text(f"{name}\n")
    (p / "distro.yaml").write_text(DISTRO)
    return p


def keys(project: Path, epoch: int | None = 1700000000) -> dict[str, str]:
    """Component name -> build key, as `xenspin plan` computes them (a lock of in-tree sources: no network)."""
    path = project / "distro.yaml"
    distro = manifest.load(path)
    ctx = Context(store=Store(project.parent / "store"), base=distro.base, manifest=path, epoch=epoch)
    current, _ = lock.resolve(distro, None, ctx)
    return {p.stage.name: p.key for p in pipeline.planned(ctx, distro, current) if p.stage.kind == "build"}


def edit(project: Path, old: str, new: str) -> None:
    path = project / "distro.yaml"
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new))


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {n for n in before if before[n] != after[n]}


def test_same_inputs_same_keys(project: Path) -> None:
    assert keys(project) == keys(project) and len(set(keys(project).values())) == 3


@pytest.mark.parametrize(
    "old,new",
    [
        ("description: the first", "description: another"),  # words about it
        ("    description: the first\n", ""),
        ("  a:\n", "  a:\n    optional: true\n"),  # whether a build may leave it out
        ("description: keys", "description: other"),  # the distribution's description
    ],
)
def test_what_does_not_change_a_key(project: Path, old: str, new: str) -> None:
    before = keys(project)
    edit(project, old, new)
    assert keys(project) == before


def test_file_times_and_the_project_location_do_not_change_keys(project: Path) -> None:
    before = keys(project)
    os.utime(project / "a/file", (1, 1))
    assert keys(project) == before
    moved = project.parent / "elsewhere"
    shutil.copytree(project, moved)
    assert keys(moved) == before  # paths in keys are relative to the manifest


@pytest.mark.parametrize(
    "old,new,rebuilt",
    [
        ('run: "true"', 'run: "echo"', {"b"}),  # a step of b: b only
        ("cp -a $SRC/. $OUT/", "cp -r $SRC/. $OUT/", {"a", "b"}),  # a step of a: a and b, built after it
        ("build-depends: [make]", "build-depends: [make, gcc]", {"a", "b"}),  # a's build root
        ("package: {name: a-xs}", "package: {name: a-xs, depends: [b]}", {"a", "b"}),
        ("  c:\n    source: {path: c}\n", "  c:\n    source: {path: c}\n    after: [a]\n", {"c"}),
    ],
)
def test_what_changes_a_key(project: Path, old: str, new: str, rebuilt: set[str]) -> None:
    before = keys(project)
    edit(project, old, new)
    assert changed(before, keys(project)) == rebuilt


def test_source_content_and_epoch_change_keys(project: Path) -> None:
    before = keys(project)
    (project / "b/file").write_text("changed\n")
    assert changed(before, keys(project)) == {"b"}
    (project / "b/file").chmod(0o755)  # the executable bit is content too
    assert changed(before, after := keys(project)) == {"b"}
    assert changed(after, keys(project, epoch=1700000001)) == {"a", "b", "c"}
