"""Trust: each attack of issue 7 tried as an attacker would, refused with one line, its evidence nowhere.

Fast tests work on manifests, locks and the store; the ones marked slow run real
bubblewrap builds in one build root shared by the whole session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder import cli

SECRET = "hunter2-not-for-ci-logs"

DISTRO = """\
name: tiny
version: "1.0"
components:
  hello: {}
installer:
  component: hello
"""

RECIPE = """\
source: {path: hello}
steps:
  - name: stage
    run: install -D -m 0644 "$SRC/note" "$OUT/usr/share/hello/note"
package: {name: hello-xs}
"""


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny distribution with one in-tree component, in its own directory under tmp_path."""
    root = tmp_path / "project"
    write(root, {"distro.yaml": DISTRO, "components/hello.yaml": RECIPE, "components/hello/note": "hello\n"})
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A host file outside the project standing in for /etc/shadow."""
    path = tmp_path / "host" / "shadow"
    write(tmp_path, {"host/shadow": f"root:{SECRET}:20228:0:99999:7:::\n"})
    return path


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI expecting exit 2 and one line; return that line."""
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def nowhere(text: str, *roots: Path) -> None:
    """text is in no file under roots."""
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = Path(dirpath, name)
                if path.is_symlink() or not path.is_file():
                    continue
                assert text.encode() not in path.read_bytes(), path


# --- 2. confinement: paths a manifest names stay in the project ------------------------


def test_source_path_climbing_out_is_refused_before_any_build(project: Path, secret: Path, capsys, tmp_path) -> None:
    write(project, {"components/hello.yaml": RECIPE.replace("{path: hello}", "{path: ../../host}")})
    line = refused(capsys, "--store", str(tmp_path / "store"), "build")
    assert line.startswith("components/hello.yaml:1: components.hello.source.path: ")
    assert "lies outside the project" in line
    assert not (tmp_path / "store" / "objects").exists()
    nowhere(SECRET, tmp_path / "store", project)


def test_in_tree_symlink_to_host_directory_is_refused(project: Path, secret: Path, capsys, tmp_path) -> None:
    os.symlink(secret.parent, project / "components/hostlink")
    write(project, {"components/hello.yaml": RECIPE.replace("{path: hello}", "{path: hostlink}")})
    line = refused(capsys, "--store", str(tmp_path / "store"), "build")
    assert line.startswith("components/hello.yaml:1: components.hello.source.path: ")
    assert "lies outside the project" in line
    assert not (tmp_path / "store" / "objects").exists()


@pytest.mark.parametrize(
    ("where", "text", "field"),
    [
        ("distro.yaml", "rootfs:\n  overlays: [/etc]\n", "rootfs.overlays[0]"),
        ("distro.yaml", "rootfs:\n  hooks: [../host/shadow]\n", "rootfs.hooks[0]"),
        ("distro.yaml", "installer:\n  component: hello\n  answerfile: ../host/shadow\n", "installer.answerfile"),
        ("distro.yaml", "base:\n  keyring: ../host/shadow\n", "base.keyring"),
        (
            "components/hello.yaml",
            "source:\n  git: https://example.invalid/x.git\n  verify: {keys: [../../host/shadow], tag: true}\n",
            "components.hello.source.verify.keys[0]",
        ),
    ],
)
def test_every_path_field_is_confined(project: Path, secret: Path, capsys, where: str, text: str, field: str) -> None:
    path = project / where
    body = path.read_text()
    if where == "distro.yaml":
        body = body.replace("installer:\n  component: hello\n", "") + text
    else:
        body = text + body.split("\n", 1)[1]
    path.write_text(body)
    line = refused(capsys, "validate")
    assert f": {field}: " in line and "lies outside the project" in line, line
    assert line.startswith(where + ":")
    assert SECRET not in line


def test_recipe_outside_the_project_is_refused(project: Path, tmp_path: Path, capsys) -> None:
    write(tmp_path, {"elsewhere/hello.yaml": RECIPE})
    write(project, {"distro.yaml": DISTRO.replace("hello: {}", "hello: {recipe: ../elsewhere/hello.yaml}")})
    line = refused(capsys, "validate")
    assert line.startswith("distro.yaml:4: components.hello.recipe: ") and "lies outside the project" in line


def test_spin_and_vendor_repository_may_name_files_of_the_chain(project: Path, tmp_path: Path, capsys) -> None:
    """spins/x.yaml names ../overlays/acme; a vendor repo extending ../project/distro.yaml names files in either."""
    (project / "overlays/acme").mkdir(parents=True)
    write(project, {"spins/x.yaml": "extends: ../distro.yaml\nrootfs:\n  overlays+: [../overlays/acme]\n"})
    write(
        tmp_path,
        {
            "vendor/spin.yaml": "extends: ../project/distro.yaml\n"
            "rootfs:\n  overlays: [../project/overlays/acme, mine]\n  hooks: [hooks/h.sh]\n",
            "vendor/hooks/h.sh": "#!/bin/sh\n",
        },
    )
    (tmp_path / "vendor/mine").mkdir()
    assert cli.main(["-f", "spins/x.yaml", "validate"]) == 0
    assert cli.main(["-f", str(tmp_path / "vendor/spin.yaml"), "validate"]) == 0


def test_validate_checks_overlays_and_hooks_exist(project: Path, capsys) -> None:
    write(project, {"distro.yaml": DISTRO + "rootfs:\n  overlays: [overlays/none]\n"})
    line = refused(capsys, "validate")
    assert line.startswith("distro.yaml:8: rootfs.overlays[0]: ") and "does not exist (expected a directory)" in line
    write(project, {"distro.yaml": DISTRO + "rootfs:\n  hooks: [hooks/none.sh]\n"})
    line = refused(capsys, "validate")
    assert line.startswith("distro.yaml:8: rootfs.hooks[0]: ") and "does not exist (expected a file)" in line


# --- 6. a file that is not a manifest is never echoed ----------------------------------


def test_extends_host_file_is_refused_unread(project: Path, secret: Path, capsys) -> None:
    write(project, {"spins/x.yaml": f"extends: {secret}\n"})
    line = refused(capsys, "-f", "spins/x.yaml", "validate")
    assert line == f"spins/x.yaml:1: extends: {secret} is not a manifest file (expected a .yaml or .yml file)"


@pytest.mark.parametrize(
    "content",
    [
        f"root:{SECRET}:20228:0:99999:7:::\n",  # a scalar
        f"- root:{SECRET}\n",  # a list
        f"{SECRET}: 1\nroot: x\n",  # a mapping with no known field
    ],
)
def test_file_that_is_no_manifest_is_named_never_echoed(project: Path, capsys, content: str) -> None:
    write(project, {"spins/secret.yaml": content, "spins/x.yaml": "extends: secret.yaml\n"})
    line = refused(capsys, "-f", "spins/x.yaml", "validate")
    assert line.startswith("spins/secret.yaml:1: ")
    assert SECRET not in line and "root:" not in line


def test_recipe_that_is_no_recipe_is_never_echoed(project: Path, capsys) -> None:
    write(project, {"components/hello.yaml": f"{SECRET}: x\n"})
    line = refused(capsys, "validate")
    assert line.startswith("components/hello.yaml:1: not a recipe") and SECRET not in line


def test_deeply_nested_yaml_is_one_line(project: Path, capsys) -> None:
    write(project, {"distro.yaml": DISTRO + "description: " + "[" * 5000 + "]" * 5000 + "\n"})
    line = refused(capsys, "validate")
    assert line == "distro.yaml:7: nested deeper than 32 levels (expected a manifest)"
