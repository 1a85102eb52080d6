"""Xen's hypervisor and tools come from one Xen source: the `component:` source, the guard, the record.

Fast: manifests in tmp_path, locks written by hand in the shape `xenspin lock` writes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, git, new_repo, one_line, write

from builder import build, cli, manifest, packagesets, xensource
from builder.lock import Lock

TOOLS_FROM_SOURCE = ROOT / "components/xen-tools-from-source.yaml"
XEN_FROM_SOURCE = ROOT / "components/xen-from-source.yaml"
XEN_GIT = "https://xenbits.xen.org/git-http/xen.git"


def spin(tmp_path: Path, body: str) -> Path:
    """A spin of the repository's default distribution, written in tmp_path."""
    path = tmp_path / "spin.yaml"
    path.write_text(f"extends: {ROOT / 'distro.yaml'}\n{body}")
    return path


def refused(capsys: pytest.CaptureFixture[str], path: Path) -> str:
    assert cli.main(["-f", str(path), "validate"]) == 2
    return one_line(capsys.readouterr().err)


FROM_GIT = f"""\
components:
  xen:
    recipe: {XEN_FROM_SOURCE}
    source: {{git: {XEN_GIT}, ref: RELEASE-4.20.4}}
"""


@pytest.mark.parametrize("path", [ROOT / "distro.yaml", *sorted((ROOT / "spins").glob("*.yaml"))], ids=str)
def test_every_shipped_manifest_takes_both_halves_from_one_source(path: Path) -> None:
    distro = manifest.load(path)
    hv, tools = distro.components[distro.xen.hypervisor], distro.components[distro.xen.tools]
    assert not distro.xen.mixed
    if hv.source.kind == "archive":
        assert tools.source.kind == "archive"  # the same Debian source and version: checked at lock time
    else:
        assert distro.origin(distro.xen.tools) == distro.xen.hypervisor and tools.steps


def test_the_default_is_trixie_with_debians_xen_4_20() -> None:
    distro = manifest.load(ROOT / "distro.yaml")
    assert distro.base.suite == "trixie"
    assert distro.components["xen"].source.archive == ["xen-hypervisor-4.20-amd64"]
    assert "xen-utils-4.20" in distro.components["xen-tools"].source.archive


def test_hypervisor_from_git_with_the_archives_tools_is_refused(tmp_path: Path, capsys) -> None:
    line = refused(capsys, spin(tmp_path, FROM_GIT))
    assert line.split(": ", 1)[0].endswith("components/xen-tools.yaml:3")
    assert ": components.xen-tools.source: the Xen tools (" in line
    assert f"git {XEN_GIT} RELEASE-4.20.4" in line and "archive xen-utils-4.20" in line
    assert "source: {component: xen}" in line and "xen.mixed: true" in line


def test_two_git_sources_even_of_one_repository_are_two_sources(tmp_path: Path, capsys) -> None:
    """Locked twice, a branch may move between the two: only `component:` shares one lock entry."""
    body = (
        FROM_GIT
        + f"  xen-tools:\n    recipe: {TOOLS_FROM_SOURCE}\n    source: {{git: {XEN_GIT}, ref: RELEASE-4.20.4}}\n"
    )
    assert "come from different Xen sources" in refused(capsys, spin(tmp_path, body))


def test_an_explicit_mix_is_allowed_and_recorded(tmp_path: Path) -> None:
    distro = manifest.load(spin(tmp_path, FROM_GIT + "xen:\n  mixed: true\n"))
    assert distro.xen.mixed
    lock = Lock(
        components={
            "xen": {"kind": "git", "url": XEN_GIT, "commit": "9" * 40, "tag": "RELEASE-4.20.4"},
            "xen-tools": archive_entry({"xen-utils-4.20": "4.20.4+63-g7abfd2bce2-0+deb13u1"}),
        }
    )
    xensource.check(distro, lock, "spin.yaml")  # allowed
    record = xensource.origins(distro, lock)
    assert record["one-source"] is False and record["mixed-allowed"] is True
    assert record["hypervisor"]["tag"] == "RELEASE-4.20.4" and record["tools"]["kind"] == "archive"


@pytest.mark.parametrize(
    "entry, why",
    [
        ("{component: nothing}", "names no other component 'nothing'"),
        ("{component: xen-tools}", "names no other component 'xen-tools'"),
        ("{component: linux}", "linux's source is archive: (expected a component whose source is one of"),
    ],
)
def test_a_shared_source_must_name_another_buildable_component(tmp_path: Path, capsys, entry: str, why: str) -> None:
    body = FROM_GIT + f"  xen-tools:\n    recipe: {TOOLS_FROM_SOURCE}\n    source: {entry}\n"
    line = refused(capsys, spin(tmp_path, body))
    assert line.startswith(f"{tmp_path / 'spin.yaml'}:8: components.xen-tools.source.component: ") and why in line


def test_a_hypervisor_without_its_tools_is_refused(tmp_path: Path, capsys) -> None:
    line = refused(capsys, spin(tmp_path, "components:\n  xen-tools: null\n"))
    assert "xen.tools: names no component 'xen-tools'" in line


def test_the_xen_section_names_the_halves(tmp_path: Path, capsys) -> None:
    body = "xen:\n  hypervisor: hv\n"
    assert "xen.hypervisor: names no component 'hv'" in refused(capsys, spin(tmp_path, body))
    renamed = (
        "components:\n  xen: null\n  xen-tools: null\n"
        f"  hv:\n    recipe: {XEN_FROM_SOURCE}\n    source: {{git: {XEN_GIT}, ref: RELEASE-4.20.4}}\n"
        f"  tools:\n    recipe: {TOOLS_FROM_SOURCE}\n    source: {{component: hv}}\n"
        "xen:\n  hypervisor: hv\n  tools: tools\n"
    )
    distro = manifest.load(spin(tmp_path, renamed))
    assert distro.origin("tools") == "hv"


def test_a_manifest_without_xen_needs_no_xen_section(tmp_path: Path) -> None:
    write(
        tmp_path,
        {"d.yaml": "name: d\nversion: '1'\ncomponents:\n  a: {source: {path: a}}\ninstaller: {component: a}\n"},
    )
    (tmp_path / "a").mkdir()
    assert manifest.load(tmp_path / "d.yaml").components["a"].source.kind == "path"


# --- the lock-time guard --------------------------------------------------------------


def archive_entry(packages: dict[str, str], source: str = "xen") -> dict:
    return {
        "kind": "archive",
        "packages": {
            name: {
                "filename": f"pool/main/x/{source}/{name}_{version}_amd64.deb",
                "mirror": "http://deb.debian.org/debian",
                "source": source,
                "version": version,
                "sha256": "0" * 64,
                "size": 1,
            }
            for name, version in packages.items()
        },
    }


V420 = "4.20.4+63-g7abfd2bce2-0+deb13u1"
V417 = "4.17.5+72-g01140da4e8-1"


def rootfs_set(packages: dict[str, tuple[str, str]]) -> dict:
    return {"rootfs": {"packages": {n: {"source": s, "version": v} for n, (s, v) in packages.items()}}}


def test_archive_halves_of_different_versions_are_refused() -> None:
    distro = manifest.load(ROOT / "distro.yaml")
    lock = Lock(
        components={
            "xen": archive_entry({"xen-hypervisor-4.20-amd64": V420}),
            "xen-tools": archive_entry({"xen-utils-4.17": V417, "xenstore-utils": V417}),
        }
    )
    with pytest.raises(xensource.MixedXen) as e:
        xensource.check(distro, lock, "distro.yaml")
    line = one_line(e, "distro.yaml: xen: ")
    assert f"xen-utils-4.17 is Debian's xen {V417}, the hypervisor xen {V420} (and 1 more)" in line
    assert "xen.mixed: true" in line


def test_archive_halves_of_one_source_pass_and_are_recorded() -> None:
    distro = manifest.load(ROOT / "distro.yaml")
    lock = Lock(
        components={
            "xen": archive_entry({"xen-hypervisor-4.20-amd64": V420}),
            "xen-tools": archive_entry({"xen-utils-4.20": V420, "xenstore-utils": V420}),
        },
        sets=rootfs_set({"xen-utils-common": ("xen", V420), "libxenmisc4.20": ("xen", V420), "bash": ("bash", "5")}),
    )
    xensource.check(distro, lock, "distro.yaml")
    record = xensource.origins(distro, lock)
    assert record["one-source"] and record["hypervisor"]["debian-source"] == [f"xen {V420}"]
    assert record["tools"]["packages"] == {"xen-utils-4.20": V420, "xenstore-utils": V420}


def test_an_older_lock_without_source_fields_is_read_from_the_pool_path() -> None:
    distro = manifest.load(ROOT / "distro.yaml")
    old = archive_entry({"xen-utils-4.20": V420})
    del old["packages"]["xen-utils-4.20"]["source"]
    lock = Lock(components={"xen": archive_entry({"xen-hypervisor-4.20-amd64": V417}), "xen-tools": old})
    assert xensource.problems(distro, lock) == [f"xen-utils-4.20 is Debian's xen {V420}, the hypervisor xen {V417}"]


def test_debians_xen_packages_beside_a_xen_built_from_source_are_refused(tmp_path: Path) -> None:
    """Whatever path brings them in (rootfs.packages, a dependency): the locked rootfs set is what counts."""
    distro = manifest.load(ROOT / "spins/vendor-example.yaml")
    lock = Lock(
        components={
            "xen": {"kind": "git", "url": XEN_GIT, "commit": "9" * 40, "tag": "RELEASE-4.20.4"},
            "xen-tools": {"kind": "component", "component": "xen"},
        },
        sets=rootfs_set({"libxenmisc4.20": ("xen", V420), "htop": ("htop", "3")}),
    )
    assert xensource.problems(distro, lock) == [
        f"rootfs package libxenmisc4.20 {V420} is Debian's Xen, beside a Xen built from source"
    ]
    lock.sets = rootfs_set({"htop": ("htop", "3")})
    xensource.check(distro, lock, "x")
    record = xensource.origins(distro, lock)
    assert record["tools"] == {
        "component": "xen-tools",
        "kind": "git",
        "source-of": "xen",
        "url": XEN_GIT,
        "commit": "9" * 40,
        "tag": "RELEASE-4.20.4",
    }


# --- one source, two builds, packaged to replace Debian's ---------------------------------


def test_the_tools_build_the_hypervisors_locked_source() -> None:
    distro = manifest.load(ROOT / "spins/vendor-example.yaml")
    lock = Lock(
        components={
            **{n: {"kind": "path"} for n in ("installer",)},
            "linux": archive_entry({"linux-image-amd64": "6.12"}, "linux-signed-amd64"),
            "xen": {"kind": "git", "url": XEN_GIT, "commit": "9" * 40, "tag": "RELEASE-4.20.4"},
            "xen-tools": {"kind": "component", "component": "xen"},
        },
        archive={"suite": "trixie"},
    )
    jobs = build.plan(distro, lock, ["xen", "xen-tools"])
    assert jobs["xen-tools"].source == "xen" and jobs["xen"].source == "xen"
    assert jobs["xen-tools"].root == jobs["xen"].root  # one build root for both
    # the key covers the commit the shared entry pins
    one = build.component_inputs(distro.components["xen-tools"], lock.components["xen"], "r", {}, "", ROOT, 0)
    moved = dict(lock.components["xen"], commit="8" * 40)
    other = build.component_inputs(distro.components["xen-tools"], moved, "r", {}, "", ROOT, 0)
    assert one != other


def test_the_tools_package_replaces_debians_and_apt_refuses_a_mix(tmp_path: Path) -> None:
    distro = manifest.load(ROOT / "spins/vendor-example.yaml")
    tools = distro.components["xen-tools"]
    control = build.control_file(tools, "4.20.4-xs0123456789", "amd64", "ACME <b@acme.invalid>")
    fields = dict(line.split(": ", 1) for line in control.splitlines() if not line.startswith(" "))
    for name in ("xen-utils-common", "xen-utils-4.20", "libxenmisc4.20", "xenstore-utils", "libxenstore4"):
        assert name in fields["Conflicts"].split(", ") and name in fields["Replaces"].split(", ")
    assert "xen-utils-4.20" not in fields["Provides"]  # or xen-system-amd64 would pull Debian's hypervisor in
    stand_in = packagesets.relations(tools.package)
    assert stand_in.startswith("Depends: ") and "\nConflicts: xen-utils-common, " in stand_in
    # dpkg itself reads the control file we write as valid
    (tmp_path / "p/DEBIAN").mkdir(parents=True)
    (tmp_path / "p/DEBIAN/control").write_text(control)
    subprocess.run(
        ["dpkg-deb", "--build", str(tmp_path / "p"), str(tmp_path / "p.deb")], check=True, capture_output=True
    )
    shown = subprocess.run(["dpkg-deb", "-f", str(tmp_path / "p.deb"), "Conflicts"], capture_output=True, text=True)
    assert "xen-utils-4.17" in shown.stdout


def test_fetching_the_tools_alone_fetches_the_source_they_build(tmp_path: Path, capsys) -> None:
    """`xenspin fetch xen-tools` (and so `build xen-tools`) needs the hypervisor's locked source in the store."""
    upstream = new_repo(tmp_path / "upstream", "xen 4.20.4")
    git(upstream, "tag", "RELEASE-4.20.4")
    recipe = "steps:\n  - name: noop\n    run: 'true'\n"
    write(
        tmp_path / "p",
        {
            "distro.yaml": "name: t\nversion: '1'\ninstaller: {component: xen}\ncomponents:\n"
            f"  xen:\n    source: {{git: {XEN_GIT}, ref: RELEASE-4.20.4}}\n"
            "  xen-tools:\n    source: {component: xen}\n",
            "components/xen.yaml": recipe,
            "components/xen-tools.yaml": recipe,
        },
    )
    args = ["-f", str(tmp_path / "p/distro.yaml"), "--store", str(tmp_path / "store")]
    args += ["--mirror", f"{XEN_GIT}={upstream.as_uri()}"]
    assert cli.main([*args, "lock"]) == 0
    capsys.readouterr()
    assert cli.main([*args, "--offline", "fetch", "xen-tools"]) == 0  # locking fetched it already
    store = tmp_path / "store"
    shutil.rmtree(store / "git")
    shutil.rmtree(store / "verified")
    assert cli.main([*args, "fetch", "xen-tools"]) == 0
    assert list((store / "git").iterdir())  # the hypervisor's repository, for the tools' tree
    assert "xen" in capsys.readouterr().out
