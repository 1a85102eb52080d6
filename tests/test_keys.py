"""Cache keys: which inputs change a component's key (and those built after it), and which must not."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from builder import lock, manifest, packagesets, pipeline
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


def test_keys_hold_across_xenspin_versions(project: Path) -> None:
    """Keys written down: a change of xenspin that changes them (a new recipe field, a new input)
    rebuilds every user's store, so it must be deliberate (bump build.FORMAT and this test)."""
    assert keys(project) == {
        "a": "9d408ae631252b1deea00c5072cf60f3db76e71d7e1b49bacdb939d5487faf0a",
        "b": "8da28b09139c818e817f0223ff74d496c2364114eaa3661f9f5029617d266f0a",
        "c": "a1ac17c89c510b98bbfe38d14c17ff66c79ef9f531c156d3745b6b9b2a64c91e",
    }


@pytest.mark.parametrize(
    "old,new",
    [
        ("  a:\n", "  a:\n    env: {}\n"),  # a field at its default
        ("  a:\n", "  a:\n    build-only: false\n"),
        ("  a:\n", "  a:\n    setuid: []\n"),
        ("  a:\n", '  a:\n    license: ""\n'),
        ("package: {name: a-xs}", "package: {name: a-xs, section: misc, priority: optional}"),
    ],
)
def test_a_field_at_its_default_changes_no_key(project: Path, old: str, new: str) -> None:
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
        ("  a:\n", "  a:\n    env: {FLAVOUR: small}\n", {"a", "b"}),
        ("  a:\n", "  a:\n    build-only: true\n", {"a", "b"}),
        # what a's package says: its licence, section, extended description
        ("  a:\n", "  a:\n    license: MIT\n", {"a", "b"}),
        ("package: {name: a-xs}", "package: {name: a-xs, section: admin}", {"a", "b"}),
        ("package: {name: a-xs}", 'package: {name: a-xs, description: "a\\nmore"}', {"a", "b"}),
        # the manifest's words in a's package: its maintainer (the vendor) and, the source being
        # in-tree, its version (the distribution's); c makes no package, b none but builds after a
        ("description: keys", "description: keys\nvendor: ACME", {"a", "b"}),
        ('version: "1"', 'version: "2"', {"a", "b"}),
    ],
)
def test_what_changes_a_key(project: Path, old: str, new: str, rebuilt: set[str]) -> None:
    before = keys(project)
    edit(project, old, new)
    assert changed(before, keys(project)) == rebuilt


def test_a_patch_changes_the_key_by_its_content(project: Path) -> None:
    (project / "fix.patch").write_text("one\n")
    edit(project, "  a:\n", "  a:\n    patches: [fix.patch]\n")
    before = keys(project)
    (project / "fix.patch").write_text("two\n")
    assert changed(before, keys(project)) == {"a", "b"}
    os.utime(project / "fix.patch", (1, 1))
    shutil.copytree(project, project.parent / "moved")
    assert keys(project.parent / "moved") == keys(project)


def test_source_content_and_epoch_change_keys(project: Path) -> None:
    before = keys(project)
    (project / "b/file").write_text("changed\n")
    assert changed(before, keys(project)) == {"b"}
    (project / "b/file").chmod(0o755)  # the executable bit is content too
    assert changed(before, after := keys(project)) == {"b"}
    assert changed(after, keys(project, epoch=1700000001)) == {"a", "b", "c"}


def test_a_build_root_changes_only_when_its_locked_set_does(project: Path) -> None:
    """A build root is keyed by the .debs its locked set names, never by the archive's state: an archive
    that moved on (a new signed Release) changes nothing until the lock does."""
    path = project / "distro.yaml"
    distro = manifest.load(path)
    ctx = Context(store=Store(project.parent / "store"), base=distro.base, manifest=path, epoch=1700000000)
    current, _ = lock.resolve(distro, None, ctx)
    sets = packagesets.root_sets(distro, current)
    assert set(sets) == {"a", "b"} and sets["a"] != sets["b"]  # make, and minbase alone

    def deb(name: str, version: str, sha: str) -> dict:
        return {"version": version, "architecture": "amd64", "filename": f"pool/{name}_{version}.deb", "sha256": sha}

    current.sets = {
        sets["a"]: {"packages": {"make": deb("make", "4.4.1-2", "1" * 64), "dash": deb("dash", "0.5.12-12", "2" * 64)}},
        sets["b"]: {"packages": {"dash": deb("dash", "0.5.12-12", "2" * 64)}},
    }

    def planned() -> dict[str, str]:
        return {p.stage.id: p.key for p in pipeline.planned(ctx, distro, current) if p.key}

    before = planned()
    roots = {sid for sid in before if sid.startswith("buildroot:")}
    assert len(roots) == 2
    current.archive = {"suite": "trixie", "date": "Sat, 05 Dec 2026 08:00:00 UTC", "inrelease-sha256": "9" * 64}
    assert planned() == before  # the archive moved on; the lock's sets did not
    current.sets[sets["a"]]["packages"]["make"] = deb("make", "4.4.1-3", "3" * 64)
    after = planned()
    builds = {sid for sid in before if sid.startswith("build:") and before[sid] != after[sid]}
    assert builds == {"build:a", "build:b"}  # a's root, and b builds after a
    root_of_b = packagesets.root_tree(current, []).key[:16]
    assert {sid for sid in before if sid.startswith("buildroot:")} - set(after) == roots - {f"buildroot:{root_of_b}"}
    assert f"buildroot:{root_of_b}" in after and len([s for s in after if s.startswith("buildroot:")]) == 2
