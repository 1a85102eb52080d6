"""The packages xenspin makes are ones a Debian maintainer would accept: lintian finds no error.

Each .deb carries /usr/share/doc/PKG/copyright (machine-readable: the recipe's licence and
the source's own licence files), a changelog.Debian.gz saying what was built from what,
md5sums, Section, Priority and an extended description; its version reads as upstream's.

Fast: the installer and the hypervisor packaged through build._package (the installer's
real stage step, the hypervisor from the carried Xen repository at RELEASE-4.20.4), lintian
run on them. Slow: lintian on every package the default distribution's build made.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, DefaultBuild

from builder import build, debpackage, licence, manifest, sbom
from builder.manifest import GitSource
from builder.sources import Context, Provenance
from builder.sources import git as gitsrc
from builder.sources import path as path_source
from builder.store import Store

EPOCH = 1767225600  # 2026-01-01
XEN = "https://xenbits.xen.org/git-http/xen.git"
# Lintian warnings the packages keep, each with its reason in README.md ("Packages").
KEPT_WARNINGS = {
    # The installer is this project's own code: its files carry no copyright notice with a year to quote.
    "copyright-without-copyright-notice",
}


def lintian(*debs: Path) -> list[str]:
    """lintian's tags on the packages (pedantic and informational ones too), as `X: package: tag ...` lines."""
    if shutil.which("lintian") is None:
        pytest.skip("lintian is not installed (`xenspin setup` installs it)")
    proc = subprocess.run(
        ["lintian", "--pedantic", "--display-info", "--tag-display-limit", "0", *map(str, debs)],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if re.match(r"^[EWIPX]: ", line)]
    assert proc.returncode in (0, 2), proc.stderr  # 2: tags at or above the default --fail-on (error)
    return lines


def tags(lines: list[str], level: str) -> set[str]:
    return {line.split()[2] for line in lines if line.startswith(f"{level}: ")}


def deb_file(deb: Path, path: str) -> bytes:
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    return subprocess.run(["tar", "-xO", f"./{path}"], input=tar, capture_output=True, check=True).stdout


def control(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True).stdout


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True).stdout.strip()


# --- the installer and the hypervisor, packaged through the real path -----------------------


def package_installer(out: Path, key: str = "1" * 64) -> Path:
    """The default distribution's installer: its recipe's stage step run on this host, then build._package."""
    distro = manifest.load(ROOT / "distro.yaml")
    comp = distro.components["installer"]
    src = ROOT / "components/installer"
    staged = out / "staged"
    staged.mkdir(parents=True)
    env = {"PATH": os.environ["PATH"], "SRC": str(src), "OUT": str(staged), "LC_ALL": "C.UTF-8"}
    for step in comp.steps:
        subprocess.run(["/bin/sh", "-e", "-c", step.run], env=env, check=True)
    job = build.Job("installer", "build", None, (), path_source.digest(src), "installer")
    entry = {"kind": "path", "path": "components/installer"}
    return out / build._package(distro, job, comp, entry, staged, out, key, EPOCH, out / "logs", src)


@pytest.fixture(scope="module")
def xen_tree(xen_mirror: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """The carried Xen locked at RELEASE-4.20.4 (its lock entry) and the tree a build reads at /src."""
    tmp = tmp_path_factory.mktemp("xen")
    ctx = Context(store=Store(tmp / "store"), base=None, mirrors=xen_mirror, offline=False, progress=None)
    entry = gitsrc.lock("xen", GitSource(git=XEN, ref="RELEASE-4.20.4"), ctx)
    return entry, gitsrc.export(entry, ctx, tmp / "src")


def package_hypervisor(out: Path, entry: dict, src: Path) -> Path:
    """xenspin-hypervisor of spins/vendor-example.yaml (Xen from upstream git), its outputs stood in for."""
    distro = manifest.load(ROOT / "spins/vendor-example.yaml")
    comp = distro.components["xen"]
    staged = out / "staged"
    for rel in comp.outputs:
        (staged / rel).parent.mkdir(parents=True, exist_ok=True)
        (staged / rel).write_bytes(gzip.compress(b"xen\n", mtime=0))
    job = build.Job("xen", "build", None, (), "", "xen")
    return out / build._package(distro, job, comp, entry, staged, out, "2" * 64, EPOCH, out / "logs", src)


def test_installer_and_hypervisor_packages_are_lintian_clean(tmp_path: Path, xen_tree: tuple[dict, Path]) -> None:
    entry, src = xen_tree
    installer = package_installer(tmp_path / "installer")
    hypervisor = package_hypervisor(tmp_path / "xen", entry, src)
    found = lintian(installer, hypervisor)
    assert not tags(found, "E"), "\n".join(found)
    assert tags(found, "W") <= KEPT_WARNINGS, "\n".join(found)
    # The versions read as upstream's: the distribution's own for the in-tree installer, the tag for Xen.
    assert field(installer, "Version") == "0.1-xs1111111111"
    assert field(hypervisor, "Version") == "4.20.4-xs2222222222"
    for deb, section in [(installer, "admin"), (hypervisor, "kernel")]:
        assert (field(deb, "Section"), field(deb, "Priority")) == (section, "optional")
    # Xen's own licence statement ships with the pointer to Debian's GPL-2 text.
    text = deb_file(hypervisor, "usr/share/doc/xenspin-hypervisor/copyright").decode()
    assert "\nLicense: GPL-2\n" in text and "/usr/share/common-licenses/GPL-2" in text
    assert " Most files in this repository are licensed under the terms of the GNU" in text  # COPYING
    assert f"Source: {XEN}\n" in text
    changes = gzip.decompress(deb_file(hypervisor, "usr/share/doc/xenspin-hypervisor/changelog.Debian.gz")).decode()
    assert changes.startswith("xenspin-hypervisor (4.20.4-xs2222222222) trixie; urgency=medium\n")
    assert entry["commit"] in changes and "2" * 64 in changes
    description = " ".join(control(hypervisor).split("Description: ", 1)[1].split())
    assert f"Built by xenspin from git {XEN} at RELEASE-4.20.4, commit {entry['commit']}." in description


def test_the_installer_ships_no_bytecode_and_compiles_it_when_installed(tmp_path: Path) -> None:
    deb = package_installer(tmp_path)
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "__pycache__" not in listing and ".pyc" not in listing
    assert "./usr/share/man/man8/xenspin-installer.8.gz" in listing
    postinst = subprocess.run(
        ["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True
    ).stdout  # the maintainer scripts make and remove the bytecode where the package is installed
    scripts = subprocess.run(["tar", "-xO", "./postinst", "./prerm"], input=postinst, capture_output=True, check=True)
    assert b"compileall -q --invalidation-mode checked-hash" in scripts.stdout
    assert b"rm -rf /usr/lib/xenspin-installer/xenspin_installer/__pycache__" in scripts.stdout
    assert "util-linux" not in field(deb, "Depends")  # essential: never an unversioned dependency


def test_a_package_is_the_same_bytes_each_time(tmp_path: Path) -> None:
    one = package_installer(tmp_path / "one")
    two = package_installer(tmp_path / "two")
    assert one.name == two.name
    assert hashlib.sha256(one.read_bytes()).digest() == hashlib.sha256(two.read_bytes()).digest()
    sums = deb_control_file(one, "md5sums").decode()
    assert "  usr/share/doc/xenspin-installer/copyright\n" in sums and "  usr/sbin/xenspin-installer\n" in sums
    assert "DEBIAN" not in sums


def deb_control_file(deb: Path, name: str) -> bytes:
    tar = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True).stdout
    return subprocess.run(["tar", "-xO", f"./{name}"], input=tar, capture_output=True, check=True).stdout


# --- the texts -------------------------------------------------------------------------------

GIT = Provenance(XEN, f"git {XEN} at RELEASE-4.20.4, commit {'9' * 40}")
ISC_TEXT = "Copyright (c) 2012-2024 Anil Madhavapeddy\n\nPermission to use, copy, modify ...\n\tand/or distribute\f"


def test_copyright_points_at_debians_text_and_keeps_the_sources_statement() -> None:
    text = debpackage.copyright_file(
        "xen", "xenspin-hypervisor", "GPL-2.0-only", GIT, [("COPYING", "Xen is GPL.")], {"GPL-2"}
    )
    paragraphs = text.split("\n\n")
    assert paragraphs[0].startswith(f"Format: {debpackage.COPYRIGHT_FORMAT}\nUpstream-Name: xen\nSource: {XEN}\n")
    assert paragraphs[1].startswith("Files: *\nCopyright: the authors of the source; its files name them\n")
    assert "License: GPL-2\nComment: The source's own licence statement:\n COPYING:\n .\n Xen is GPL." in paragraphs[1]
    assert paragraphs[2] == (
        "License: GPL-2\n SPDX: GPL-2.0-only.\n On Debian systems, the complete text of GPL-2.0-only is in\n"
        " /usr/share/common-licenses/GPL-2.\n"
    )


def test_a_licence_debian_lacks_carries_the_sources_text() -> None:
    text = debpackage.copyright_file("uri", "xenspin-ocaml-uri", "ISC", GIT, [("LICENSE.md", ISC_TEXT)], {"GPL-2"})
    assert "Copyright: Copyright (c) 2012-2024 Anil Madhavapeddy\n" in text
    licence_paragraph = text.split("\n\n", 2)[2]
    assert licence_paragraph.startswith(
        "License: ISC\n SPDX: ISC.\n .\n The source's licence files:\n .\n LICENSE.md:\n"
    )
    assert "\t" not in text and "\f" not in text and "        and/or distribute" in text  # tabs expanded
    assert "Comment: The source's own" not in text  # the files are shipped once


def test_an_exception_and_a_full_licence_text() -> None:
    spdx = "LGPL-2.1-only WITH OCaml-LGPL-linking-exception"
    files = [("LICENSE", "As a special exception to the GNU Lesser General Public License, you may link ...")]
    text = debpackage.copyright_file("xenstore", "p", spdx, GIT, files, {"LGPL-2.1"})
    assert "\nLicense: LGPL-2.1 with OCaml-LGPL-linking exception\n SPDX: " + spdx + ".\n On Debian systems" in text
    assert " As a special exception" in text  # the exception's own words, with the pointer
    # A file that is the whole text of a licence Debian carries is not repeated beside the pointer.
    gpl = "GNU GENERAL PUBLIC LICENSE\nVersion 2, June 1991\n\nTERMS AND CONDITIONS FOR COPYING, DISTRIBUTION..."
    text = debpackage.copyright_file("x", "p", "GPL-2.0-or-later", GIT, [("COPYING", gpl), ("NOTICE", "n")], {"GPL-2"})
    assert "TERMS AND CONDITIONS" not in text and " NOTICE:" in text and "License: GPL-2+\n" in text


def test_no_licence_stated_is_noassertion() -> None:
    text = debpackage.copyright_file("netlink", "p", "", GIT, [], {"GPL-2"})
    assert "\nLicense: NOASSERTION\n" in text and "The recipe states no licence" in text
    assert licence.declared(text) == licence.NOASSERTION


def recipes() -> dict[str, manifest.Component]:
    """Every component of the repository's manifests and spins, by name (a spin's entry wins)."""
    out: dict[str, manifest.Component] = {}
    for path in [ROOT / "distro.yaml", *sorted((ROOT / "spins").glob("*.yaml"))]:
        out.update(manifest.load(path).components)
    return out


def test_every_recipe_states_its_licence_and_the_sbom_reads_it_back() -> None:
    """The copyright file says the recipe's licence as the SBOM reads it: the same SPDX expression."""
    known = sbom.spdx_ids()
    unstated = set()
    for name, comp in sorted(recipes().items()):
        if not comp.license:
            unstated.add(name)
            continue
        for ident, exc in licence.terms(comp.license):
            assert ident in known.licences.values(), (name, ident)
            assert not exc or exc in known.exceptions.values(), (name, exc)
        text = debpackage.copyright_file(name, "p", comp.license, GIT, [], debpackage.common_licences(None))
        assert licence.declared(text, known) == comp.license, name
    assert unstated == {"ocaml-netlink"}  # upstream states none at the locked tag (spins/xcp.yaml says so)


def test_changelog_says_what_was_built_from_what() -> None:
    built = debpackage.Built(
        "xenspin-xapi",
        "26.17.0-xs0123456789",
        "ACME <builds@acme.invalid>",
        "trixie",
        EPOCH,
        "0123456789" + "a" * 54,
        Provenance("https://github.com/xapi-project/xen-api.git", "git https://github.com/xapi-project/xen-api.git"),
        (("01-fix.patch", "b" * 64),),
    )
    data = debpackage.changelog(built)
    assert data == debpackage.changelog(built)
    assert data[:10] == bytes.fromhex("1f8b0800000000000203")  # gzip -9n: no name, no time stamp, level 9
    text = gzip.decompress(data).decode()
    assert all(len(line) <= 80 for line in text.splitlines() if "/" not in line and "a" * 20 not in line)
    (tmp := Path(os.environ.get("TMPDIR", "/tmp")) / f"changelog-{os.getpid()}").write_text(text)
    try:
        parsed = subprocess.run(["dpkg-parsechangelog", "-l", str(tmp)], capture_output=True, text=True, check=True)
    finally:
        tmp.unlink()
    fields = dict(re.findall(r"^(\w+): (.*)$", parsed.stdout, re.M))
    assert fields["Source"] == "xenspin-xapi" and fields["Version"] == "26.17.0-xs0123456789"
    assert fields["Distribution"] == "trixie" and fields["Timestamp"] == str(EPOCH)
    assert fields["Maintainer"] == "ACME <builds@acme.invalid>"
    assert "01-fix.patch (sha256 " + "b" * 64 + ")" in text.replace("\n    ", " ")


def test_control_file_has_section_priority_and_an_extended_description() -> None:
    comp = recipes()["installer"]
    text = debpackage.control_file(comp, "0.1-xs0123456789", "amd64", "M <m@x.invalid>", "the in-tree source x")
    assert "\nSection: admin\nPriority: optional\nDescription: xenspin host installer\n Installs a xenspin" in text
    assert text.endswith("\n .\n Built by xenspin from the in-tree source x.\n")
    bare = manifest.Component(source=manifest.PathSource(path="x"), package=manifest.Package(name="x-xs"))
    text = debpackage.control_file(bare, "1-xs0", "amd64", "M <m@x.invalid>", "y")
    assert text.endswith(
        "\nSection: misc\nPriority: optional\nDescription: x-xs, built by xenspin\n Built by xenspin from y.\n"
    )


@pytest.mark.parametrize(
    ("release", "version"),
    [
        ("0.1", "0.1-xs0123456789"),
        ("0.1.99~nightly20260101", "0.1.99~nightly20260101-xs0123456789"),
        ("v2", "2-xs0123456789"),
        ("", "0-xs0123456789"),
    ],
)
def test_an_in_tree_source_takes_the_distributions_version(release: str, version: str) -> None:
    assert build.package_version({"kind": "path", "path": "x"}, "0123456789abcdef", release) == version


def test_distribution_versions_sort_release_nightly_next_release() -> None:
    """apt upgrades a host's installer from a release to the nightlies after it, then to the next release."""
    releases = ["0.1", "0.1.99~nightly20260101", "0.1.99~nightly20260102", "0.2"]
    keys = ["f" * 64, "0" * 64, "9" * 64, "1" * 64]  # the build key never decides
    versions = [build.package_version({"kind": "path", "path": "x"}, k, r) for r, k in zip(releases, keys, strict=True)]
    for lower, higher in zip(versions, versions[1:], strict=False):
        assert subprocess.run(["dpkg", "--compare-versions", lower, "lt", higher]).returncode == 0, (lower, higher)


def test_readme_lists_the_kept_warnings() -> None:
    readme = (ROOT / "README.md").read_text()
    for tag in KEPT_WARNINGS:
        assert f"`{tag}`" in readme


# --- slow: every package of the default distribution ------------------------------------------


@pytest.mark.slow
@pytest.mark.network
def test_default_distribution_packages_are_lintian_clean(default_build: DefaultBuild) -> None:
    """lintian on every .deb xenspin built for the default distribution (Debian's own .debs are Debian's)."""
    distro = manifest.load(default_build.manifest)
    built = [
        n
        for n, c in distro.components.items()
        if c.steps and c.package is not None and n in default_build.report["debs"]
    ]
    debs = [Path(d) for n in sorted(built) for d in default_build.report["debs"][n]]
    assert any(d.name.startswith("xenspin-installer_0.1-xs") for d in debs), debs
    found = lintian(*debs)
    assert not tags(found, "E"), "\n".join(found)
    assert tags(found, "W") <= KEPT_WARNINGS, "\n".join(found)
    # The SBOM reads each built package's licence from its copyright file.
    (spdx,) = (default_build.project / "out").glob("*.spdx.json")
    packages = json.loads(spdx.read_text())["packages"]
    declared = {p["name"]: p["licenseDeclared"] for p in packages if p["SPDXID"].startswith("SPDXRef-deb-")}
    assert declared["xenspin-installer"] == "GPL-2.0-or-later"
    # The bytecode the package leaves out is made where it is installed: in the rootfs.
    cache = default_build.tree / "usr/lib/xenspin-installer/xenspin_installer/__pycache__"
    assert sorted(cache.glob("main.*.pyc"))
