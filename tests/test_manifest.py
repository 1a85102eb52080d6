"""The manifest: good files load, every kind of bad file gets one `file:line: field: ...` line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from builder import cli, manifest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = [ROOT / "distro.yaml", *sorted((ROOT / "spins").glob("*.yaml"))]

RECIPE = "source:\n  path: src\nsteps:\n  - name: stage\n    run: cp -a $SRC/. $OUT/\n"
BASE = """\
name: mini
version: "1.0"
components:
  a: {}
  b:
    after: [a]
installer:
  component: b
"""


def write(tmp: Path, files: dict[str, str | bytes]) -> None:
    for name, text in files.items():
        p = tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small valid project: distro.yaml with two components and their recipes."""
    write(tmp_path, {"distro.yaml": BASE, "components/a.yaml": RECIPE, "components/b.yaml": RECIPE})
    (tmp_path / "components/src").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI expecting a manifest error; return its single line."""
    assert cli.main([*argv, "validate"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --- what ships --------------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_manifests_validate(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-f", str(path), "validate"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_manifests_match_schema(path: Path) -> None:
    schema = manifest.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)


def test_shipped_recipes_match_schema() -> None:
    schema = manifest.json_schema()
    recipe_schema = {**schema, "$ref": "#/$defs/Component"}
    recipes = sorted((ROOT / "components").glob("*.yaml"))
    assert len(recipes) >= 6
    for recipe in recipes:
        jsonschema.validate(yaml.safe_load(recipe.read_text()), recipe_schema)


def test_schema_rejects_what_the_loader_rejects() -> None:
    schema = manifest.json_schema()
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "x", "vesion": "1"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"components": {"x": {"source": {"git": "u", "url": "v"}}}}, schema)


def test_default_distribution_has_the_parts_of_a_xen_distribution() -> None:
    d = manifest.load(ROOT / "distro.yaml")
    kinds = {name: c.source.kind for name, c in d.components.items()}
    # Debian's Xen 4.20, hypervisor and tools of one source (spins build their own from source)
    assert kinds["xen"] == kinds["xen-tools"] == "archive"
    assert d.xen.hypervisor == "xen" and d.xen.tools == "xen-tools" and not d.xen.mixed
    assert kinds["installer"] == "path"
    # the XCP toolstack is opt-in (spins/xcp.yaml): the default builds without it
    assert "xapi" not in d.components and "xen-api" not in d.components
    windows = [n for n in d.components if n.startswith("win-")]
    assert len(windows) == 5 and all(d.components[n].optional for n in windows)


def test_vendor_spin_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    base = manifest.load(ROOT / "distro.yaml")
    spin = manifest.load(ROOT / "spins/vendor-example.yaml")
    assert spin.name == "acme-xen" and spin.vendor != base.vendor
    assert spin.rootfs.packages == base.rootfs.packages + ["htop"]
    assert spin.rootfs.overlays == base.rootfs.overlays + [str(ROOT / "overlays/acme")]
    xen = spin.components["xen"]
    assert xen.source.kind == "git" and xen.source.ref == "RELEASE-4.20.4"
    assert xen.steps and xen.package is not None and xen.package.name == "xenspin-hypervisor"
    tools = spin.components["xen-tools"]
    assert tools.source == manifest.ComponentSource(component="xen") and tools.steps  # xl of that same tree
    assert spin.iso.volume_id == "ACME_XEN" and spin.iso.boot == base.iso.boot


def test_nightly_version_is_dated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")  # 2026-01-01
    spin = manifest.load(ROOT / "spins/nightly.yaml")
    assert spin.version == "0.1.99~nightly20260101"
    assert spin.components["xen"].source.ref == "stable-4.20"
    assert spin.origin("xen-tools") == "xen"


def test_show_json_is_the_resolved_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-f", str(ROOT / "spins/vendor-example.yaml"), "show", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "acme-xen"
    assert data["components"]["xen"]["source"]["git"].endswith("xen.git")
    assert data["components"]["xen"]["build-depends"][0] == "build-essential"


def test_plan_lists_components_in_build_order(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-f", str(ROOT / "distro.yaml"), "plan"]) == 0
    out = capsys.readouterr().out
    order = manifest.build_order(manifest.load(ROOT / "distro.yaml"))
    assert [line.split()[0] for line in out.splitlines() if line.split()[:1] and line.split()[0] in order] == order
    assert "(optional)" in out


def test_console_script_reports_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "distro.yaml"
    bad.write_text("name: x\nversion: '1'\ncomponents: {}\nbogus: 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "builder", "-f", str(bad), "validate"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"{bad}:4: bogus: unknown field (expected one of {', '.join(FIELDS)})"


FIELDS = [
    "name",
    "version",
    "components",
    "vendor",
    "description",
    "extends",
    "base",
    "rootfs",
    "installer",
    "iso",
    "xen",
    "nightly",
]


# --- bad input: one line each ------------------------------------------------------


def test_missing_file(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fails(capsys, "-f", "nope.yaml") == "nope.yaml: no such file"


def test_yaml_syntax_error(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"distro.yaml": BASE + "rootfs:\n  packages: [a, b\n"})
    line = fails(capsys)
    assert line.startswith("distro.yaml:10: YAML syntax error")


def test_tab_indentation(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"distro.yaml": BASE + "rootfs:\n\tvariant: minbase\n"})
    assert fails(capsys) == "distro.yaml:10: tab character in indentation (YAML indents with spaces only)"


def test_duplicate_key(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"distro.yaml": BASE + "name: again\n"})
    assert fails(capsys) == "distro.yaml:9: name: duplicate key (first given on line 1)"


def test_unknown_field_did_you_mean(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"distro.yaml": BASE + "rootfs:\n  pakages: [vim]\n"})
    assert fails(capsys) == "distro.yaml:10: rootfs.pakages: unknown field; did you mean 'packages'?"


def test_wrong_type(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"distro.yaml": BASE + "rootfs:\n  packages: vim\n"})
    assert fails(capsys) == ("distro.yaml:10: rootfs.packages: got the string 'vim' (expected a list of strings)")


def test_boolean_where_string_expected(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"distro.yaml": BASE.replace('version: "1.0"', "version: yes")})
    assert fails(capsys) == "distro.yaml:2: version: got true (expected a string; quote it)"


def test_unquoted_number_is_kept_as_written(project: Path) -> None:
    write(project, {"distro.yaml": BASE.replace('version: "1.0"', "version: 1.10")})
    assert manifest.load(project / "distro.yaml").version == "1.10"


def test_bad_choice(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"distro.yaml": BASE + "rootfs:\n  compression: zstdd\n"})
    assert fails(capsys) == (
        "distro.yaml:10: rootfs.compression: got the string 'zstdd' (expected one of 'zstd', 'xz', 'gzip'); "
        "did you mean 'zstd'?"
    )


def test_missing_field(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"distro.yaml": BASE.replace('version: "1.0"\n', "")})
    line = fails(capsys)
    assert line.startswith("distro.yaml:1: version: missing (expected a string")


def test_after_names_no_component(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"distro.yaml": BASE.replace("after: [a]", "after: [aa]")})
    assert fails(capsys) == "distro.yaml:6: components.b.after[0]: names no component 'aa'; did you mean 'a'?"


def test_dependency_cycle(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"distro.yaml": BASE.replace("a: {}", "a: {after: [b]}")})
    assert fails(capsys) == "distro.yaml:4: components.a.after: dependency cycle: a -> b -> a"


def test_self_dependency(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"distro.yaml": BASE.replace("after: [a]", "after: [b]")})
    assert fails(capsys) == "distro.yaml:6: components.b.after: dependency cycle: b -> b"


def test_missing_recipe(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"distro.yaml": BASE.replace("  a: {}\n", "  a: {}\n  c: {}\n")})
    line = fails(capsys)
    assert line.startswith("distro.yaml:5: components.c: no recipe ") and "components/c.yaml" in line


def test_error_inside_a_recipe_names_the_recipe(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"components/a.yaml": RECIPE + "optional: maybe\n"})
    assert (
        fails(capsys) == "components/a.yaml:6: components.a.optional: got the string 'maybe' (expected true or false)"
    )


def test_source_with_two_kinds(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"components/a.yaml": "source:\n  path: src\n  git: https://example.invalid/a.git\n"})
    assert fails(capsys) == "components/a.yaml:3: components.a.source: gives both path and git (expected only one)"


def test_source_of_no_kind(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"components/a.yaml": "source:\n  gti: https://example.invalid/a.git\n"})
    assert fails(capsys) == (
        "components/a.yaml:2: components.a.source: says nothing of its kind "
        "(expected one of git, url, prebuilt, debian, archive, path, component); did you mean 'git'?"
    )


def test_field_of_another_source_kind(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"components/a.yaml": "source:\n  path: src\n  ref: main\n"})
    assert fails(capsys) == "components/a.yaml:3: components.a.source.ref: unknown field (expected one of path)"


def test_alias_bomb(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bomb = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        bomb.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 10) + "]")
    write(project, {"distro.yaml": BASE + "description:\n" + "".join(f"  {b}\n" for b in bomb)})
    line = fails(capsys)
    assert line.startswith("distro.yaml:") and "alias bomb" in line


def test_recursive_alias(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"distro.yaml": BASE + "vendor: &v [*v]\n"})
    assert fails(capsys) == "distro.yaml:9: recursive alias (a value that contains itself)"


def test_merge_keys_refused(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"distro.yaml": BASE + "base: &b {suite: bookworm}\niso:\n  <<: *b\n"})
    assert fails(capsys) == "distro.yaml:11: iso: YAML merge keys (<<) are not supported (use extends:)"


def test_empty_file(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"distro.yaml": "# nothing here\n\n"})
    assert fails(capsys) == "distro.yaml: file is empty (expected a mapping of fields)"


def test_binary_file(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"distro.yaml": b"name: x\n\x7fELF\x02\x01\x01\x00\x00"})
    assert fails(capsys) == "distro.yaml:2: binary data (expected a UTF-8 YAML text file)"


def test_non_utf8(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"distro.yaml": BASE.encode() + b"vendor: caf\xe9\n"})
    assert fails(capsys) == "distro.yaml:9: byte 0xe9 is not UTF-8 (expected a UTF-8 text file)"


def test_top_level_list(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"distro.yaml": "- name: x\n"})
    assert fails(capsys) == "distro.yaml:1: top level is a list (expected a mapping of fields)"


def test_top_level_scalar(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"distro.yaml": "just words\n"})
    assert fails(capsys) == "distro.yaml:1: top level is a scalar (expected a mapping of fields)"


def test_two_documents(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"distro.yaml": BASE + "---\nname: again\n"})
    assert fails(capsys) == "distro.yaml:9: more than one YAML document (expected exactly one)"


def test_manifest_is_a_directory(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fails(capsys, "-f", "components") == "components: not a regular file (expected a YAML file)"


def test_bad_name_and_volume_id(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"distro.yaml": BASE.replace("name: mini", "name: Mini Xen")})
    assert fails(capsys).startswith("distro.yaml:1: name: 'Mini Xen' (expected lowercase")
    write(project, {"distro.yaml": BASE + "iso:\n  volume-id: a-very-long-volume-id-that-is-too-long\n"})
    assert fails(capsys).startswith("distro.yaml:10: iso.volume-id: 'a-very-long")


def test_installer_names_no_component(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"distro.yaml": BASE.replace("component: b", "component: bb")})
    assert fails(capsys) == "distro.yaml:8: installer.component: names no component 'bb'; did you mean 'b'?"


def test_bad_version_template(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """{{ date }} is the only template the grammar lets through: nothing else reaches Jinja2."""
    write(project, {"distro.yaml": BASE.replace('"1.0"', '"1.0.{{ tomorrow }}"')})
    assert fails(capsys).startswith("distro.yaml:2: version: '1.0.{{ tomorrow }}' (expected letters, digits")


# --- spins -------------------------------------------------------------------------

SPIN = "extends: ../distro.yaml\nname: spun\n"


def test_spin_merge_rules(project: Path) -> None:
    write(
        project,
        {
            "distro.yaml": BASE + "rootfs:\n  packages: [vim, less]\n  variant: minbase\n",
            "spins/s.yaml": SPIN
            + "components:\n  a: null\n  b: {after: []}\n"
            + "rootfs:\n  packages+: [htop]\n  packages-: [vim]\n",
        },
    )
    d = manifest.load(project / "spins/s.yaml")
    assert d.name == "spun" and d.version == "1.0"
    assert list(d.components) == ["b"]
    assert d.rootfs.packages == ["less", "htop"] and d.rootfs.variant == "minbase"


def test_spin_chain_resolves_paths_against_each_file(project: Path) -> None:
    write(
        project,
        {
            "spins/one.yaml": SPIN + "rootfs:\n  overlays: [ov1]\n",
            "spins/deeper/two.yaml": "extends: ../one.yaml\nrootfs:\n  overlays+: [ov2]\n",
        },
    )
    (project / "spins/ov1").mkdir()
    (project / "spins/deeper/ov2").mkdir()
    d = manifest.load(project / "spins/deeper/two.yaml")
    assert d.name == "spun"
    assert d.rootfs.overlays == [str(project / "spins/ov1"), str(project / "spins/deeper/ov2")]


def test_spin_adds_component_with_its_own_recipe(project: Path) -> None:
    write(project, {"spins/s.yaml": SPIN + "components:\n  extra:\n    recipe: ../components/a.yaml\n    after: [b]\n"})
    d = manifest.load(project / "spins/s.yaml")
    assert d.components["extra"].after == ["b"]
    assert d.components["extra"].source.path == str(project / "components/src")
    assert manifest.build_order(d) == ["a", "b", "extra"]


def test_extends_cycle(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"spins/x.yaml": "extends: y.yaml\n", "spins/y.yaml": "extends: x.yaml\n"})
    assert fails(capsys, "-f", "spins/x.yaml") == "spins/y.yaml:1: extends: extends cycle: x.yaml -> y.yaml -> x.yaml"


def test_extends_missing(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"spins/x.yaml": "extends: ../nope.yaml\n"})
    line = fails(capsys, "-f", "spins/x.yaml")
    assert line.startswith("spins/x.yaml:1: extends: ") and line.endswith(
        "nope.yaml does not exist (expected a manifest file)"
    )


def test_extends_directory(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"spins/x.yaml": "extends: ../components\n"})
    line = fails(capsys, "-f", "spins/x.yaml")
    assert line.startswith("spins/x.yaml:1: extends: ") and line.endswith("is a directory (expected a manifest file)")


def test_spin_removes_unknown_component(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"spins/x.yaml": SPIN + "components:\n  bb: null\n"})
    assert (
        fails(capsys, "-f", "spins/x.yaml") == "spins/x.yaml:4: components.bb: removes no component; did you mean 'b'?"
    )


def test_spin_removes_absent_list_item(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"spins/x.yaml": SPIN + "rootfs:\n  packages-: [emacs]\n"})
    assert (
        fails(capsys, "-f", "spins/x.yaml")
        == "spins/x.yaml:4: rootfs.packages-[0]: removes 'emacs', which packages does not hold"
    )


def test_spin_removing_a_needed_component(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"spins/x.yaml": SPIN + "components:\n  a: null\n"})
    assert fails(capsys, "-f", "spins/x.yaml") == "distro.yaml:6: components.b.after[0]: names no component 'a'"


def test_bad_package_name(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"components/a.yaml": RECIPE + "package:\n  name: Hello_World\n"})
    assert fails(capsys) == (
        "components/a.yaml:7: components.a.package.name: 'Hello_World' (expected a Debian package name: a-z 0-9 + - .)"
    )


def test_two_components_one_package(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(
        project,
        {
            "components/a.yaml": RECIPE + "package: {name: same}\n",
            "components/b.yaml": RECIPE + "package: {name: same}\n",
        },
    )
    assert fails(capsys) == "components/b.yaml:6: components.b.package.name: 'same' is also a's package"


def test_step_names_are_unique_and_plain(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"components/a.yaml": RECIPE + "  - name: stage\n    run: 'true'\n"})
    assert fails(capsys) == "components/a.yaml:6: components.a.steps[1].name: 'stage' again (steps[0] has it)"
    write(project, {"components/a.yaml": RECIPE.replace("name: stage", "name: ../stage")})
    assert (
        fails(capsys)
        == "components/a.yaml:4: components.a.steps[0].name: '../stage' (expected letters, digits, '.', '_', '-')"
    )


def test_outputs_stay_inside_out(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"components/a.yaml": RECIPE + "outputs: [../../etc/passwd]\n"})
    assert (
        fails(capsys)
        == "components/a.yaml:6: components.a.outputs[0]: '../../etc/passwd' (expected a path inside $OUT)"
    )


def test_step_env_names_plain_variables_never_xenspins_own(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project, {"components/a.yaml": RECIPE + "env: {PACKAGES: 'uri,uri-re', OUT: /etc}\n"})
    assert fails(capsys) == "components/a.yaml:6: components.a.env.OUT: is set by xenspin for every step"
    write(project, {"components/a.yaml": RECIPE + "env: {'lower': x}\n"})
    line = fails(capsys)
    assert line.startswith("components/a.yaml:6: components.a.env") and "upper-case shell variable name" in line
    write(project, {"components/a.yaml": RECIPE + "env: {PACKAGES: 'uri,uri-re'}\nbuild-only: true\n"})
    assert cli.main(["validate"]) == 0
