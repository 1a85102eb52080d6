"""The SBOM (SPDX 2.3, checked by spdx-tools' own validator) and `xenspin diff` (release notes).

Fast: licences from DEP-5 text, an SBOM from a small made-up build, changelogs and copyright
files read from .debs made here with dpkg-deb, diffs between locks edited here, an ISO made
here with pycdlib. Slow: the default build's SBOM against its packages.json and lock, and a
diff between the real lock and a copy with older versions.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, commit, git, new_repo, sh

from builder import cli, licence, relnotes, sbom
from builder import lock as lockfile
from builder.errors import XenspinError
from builder.store import Store, sha256_file

# --- licences from copyright files (pure) ---------------------------------------------

DEP5 = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: thing

Files: *
Copyright: 2020 Someone
License: GPL-2+

Files: lib/*
Copyright: 2021 Other
License: LGPL-2.1+ or BSD-3-clause

Files: doc/*
Copyright: 2021 Other
License: GFDL-NIV-1.3

Files: debian/*
Copyright: 2022 Packager
License: GPL-2+

License: GPL-2+
 This program is free software ...
"""


def test_dep5_licences_become_one_spdx_expression() -> None:
    assert (
        licence.declared(DEP5) == "GPL-2.0-or-later AND (LGPL-2.1-or-later OR BSD-3-Clause) AND LicenseRef-GFDL-NIV-1.3"
    )


def test_free_form_or_missing_copyright_is_noassertion() -> None:
    assert licence.declared("This package was debianized by someone.\nIt is GPL.\n") == "NOASSERTION"
    assert licence.declared(None) == "NOASSERTION"
    assert (
        licence.declared("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n")
        == "NOASSERTION"
    )


@pytest.mark.parametrize(
    ("dep5", "spdx"),
    [
        ("GPL-2", "GPL-2.0-only"),
        ("GPL-3.0+", "GPL-3.0-or-later"),
        ("LGPL-2+", "LGPL-2.0-or-later"),
        ("Expat", "MIT"),
        ("BSD-2-clause", "BSD-2-Clause"),
        ("Apache-2", "Apache-2.0"),
        ("zlib", "Zlib"),
        ("GPL-2+ or Artistic", "GPL-2.0-or-later OR Artistic-1.0"),
        ("GPL-2+ and BSD-3-clause", "GPL-2.0-or-later AND BSD-3-Clause"),
        ("GPL-3+ with Bison exception", "GPL-3.0-or-later WITH Bison-exception-2.2"),
        ("GPL-2+ with OpenSSL exception", "LicenseRef-GPL-2-plus-with-OpenSSL-exception"),
        ("public-domain", "LicenseRef-public-domain"),
        ("MPL-1.1 or GPL-2+, and MIT", "(MPL-1.1 OR GPL-2.0-or-later) AND MIT"),
        ("GPL-2+ and MIT or BSD-3-clause", "(GPL-2.0-or-later AND MIT) OR BSD-3-Clause"),
        ("GPL", "LicenseRef-GPL"),
    ],
)
def test_dep5_names_map_to_spdx_or_a_licence_ref(dep5: str, spdx: str) -> None:
    assert licence.expression(dep5) == spdx


def test_names_already_spelt_as_spdx_are_found_in_the_licence_list() -> None:
    known = licence.SpdxIds(
        {"sleepycat": "Sleepycat", "gpl-3.0-or-later": "GPL-3.0-or-later"},
        {"autoconf-exception-macro": "Autoconf-exception-macro"},
    )
    assert licence.expression("Sleepycat", known) == "Sleepycat"
    assert licence.expression("GPL-3.0-or-later WITH Autoconf-exception-macro", known) == (
        "GPL-3.0-or-later WITH Autoconf-exception-macro"
    )
    assert licence.refs("MIT AND LicenseRef-b AND (LicenseRef-a OR X)") == ["LicenseRef-a", "LicenseRef-b"]


# --- .debs made here -------------------------------------------------------------------

CHANGELOG = """\
thing (1.3-1) unstable; urgency=high

  * Fix CVE-2024-1234: a buffer overflow.

 -- Packager <p@example.invalid>  Mon, 01 Apr 2024 00:00:00 +0000

thing (1.2-1) unstable; urgency=medium

  * New upstream release.

 -- Packager <p@example.invalid>  Mon, 01 Mar 2024 00:00:00 +0000

thing (1.1-1) unstable; urgency=medium

  * Security: CVE-2023-99999.

 -- Packager <p@example.invalid>  Mon, 01 Feb 2024 00:00:00 +0000

thing (1.0-1) unstable; urgency=medium

  * Initial release.

 -- Packager <p@example.invalid>  Mon, 01 Jan 2024 00:00:00 +0000
"""


def make_deb(where: Path, name: str, version: str, docs: dict[str, bytes], link: str | None = None) -> Path:
    """A .deb of name at version holding /usr/share/doc/NAME/ files (or a link to another package's doc dir)."""
    tree = where / f"{name}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: T <t@example.invalid>\nDescription: test\n"
    )
    doc = tree / "usr/share/doc" / name
    if link:
        doc.parent.mkdir(parents=True)
        doc.symlink_to(link)
    else:
        doc.mkdir(parents=True)
        for fname, data in docs.items():
            (doc / fname).write_bytes(data)
    deb = where / f"{name}_{version}_all.deb"
    sh("dpkg-deb", "--root-owner-group", "-Zxz", "--build", tree, deb)
    shutil.rmtree(tree)
    return deb


def into_store(store: Store, deb: Path) -> str:
    """Put deb among the store's blobs, as fetch does; its sha256."""
    digest = sha256_file(deb)
    dest = store.blob_path(digest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(deb, dest)
    return digest


def test_licences_are_read_from_the_debs_copyright_files(tmp_path: Path) -> None:
    debs = {
        "thing": make_deb(tmp_path, "thing", "1.0-1", {"copyright": DEP5.encode()}),
        "libthing1": make_deb(tmp_path, "libthing1", "1.0-1", {}, link="thing"),
        "plain": make_deb(tmp_path, "plain", "1", {"copyright": b"Copyright 2020 Someone. GPL.\n"}),
        "none": make_deb(tmp_path, "none", "1", {"README": b"hi\n"}),
    }
    packages = [{"name": n} for n in [*debs, "absent"]]
    got = sbom.licences(packages, lambda p: debs.get(p["name"]))
    assert got["thing"].startswith("GPL-2.0-or-later AND")
    assert got["libthing1"] == got["thing"]  # its doc directory is thing's
    assert got["plain"] == got["none"] == got["absent"] == "NOASSERTION"


# --- the SBOM from a small made-up build ---------------------------------------------------

COMMIT = "a" * 40


def small_inputs() -> sbom.Inputs:
    return sbom.Inputs(
        name="tiny",
        version="1.0",
        epoch=1700000000,
        iso={"file": "tiny-1.0-amd64.iso", "sha256": "1" * 64, "size": 1234},
        archive={"mirror": "http://deb.example.org/debian", "suite": "trixie"},
        components={
            "xen": {
                "kind": "git",
                "url": "https://git.example.org/xen.git",
                "ref": "RELEASE-4.20.0",
                "commit": COMMIT,
            },
            "tools": {"kind": "url", "url": "https://example.org/tools-1.0.tar.gz", "sha256": "2" * 64, "size": 9},
            "kernel": {
                "kind": "debian",
                "package": "linux",
                "version": "6.12.1-1",
                "mirror": "http://deb.example.org/debian",
                "directory": "pool/main/l/linux",
                "files": {"linux_6.12.1-1.dsc": {"sha256": "3" * 64, "size": 5}},
            },
            "firmware": {
                "kind": "archive",
                "packages": {"fw": {"version": "2:1.0-1", "source": "fw-src", "sha256": "4" * 64, "filename": "x.deb"}},
            },
            "installer": {"kind": "path", "path": "components/installer", "recipe": "5" * 64},
            "local": {"kind": "git", "url": "file:///srv/git/local.git", "ref": "main", "commit": "c" * 40},
        },
        packages=[
            {"name": "libc6", "version": "2.41-12", "source": "glibc", "sha256": "6" * 64, "architecture": "amd64"},
            {"name": "bash", "version": "5.2.37-2+b10", "source": "bash", "sha256": "7" * 64, "architecture": "amd64"},
            {"name": "fw", "version": "2:1.0-1", "source": "fw-src", "sha256": "4" * 64, "architecture": "all"},
            {
                "name": "tiny-installer",
                "version": "0-xs1",
                "source": "tiny-installer",
                "sha256": "8" * 64,
                "architecture": "amd64",
            },
        ],
        locked={"libc6": {"mirror": "http://deb.example.org/debian", "filename": "pool/main/g/glibc/libc6.deb"}},
        built={"fw": "firmware", "tiny-installer": "installer"},
        guest_tools={"win-xenbus": {"package": "tiny-guest-tools-xenbus", "version": "9.1.0"}},
        loaders=[
            {"name": "bash", "version": "5.2.37-2+b10", "source": "bash", "sha256": "7" * 64},  # the rootfs's own
            {"name": "grub-pc-bin", "version": "2.12-9", "source": "grub2", "sha256": "9" * 64, "filename": "g.deb"},
        ],
        loader_licences={"grub-pc-bin": "GPL-3.0-or-later AND LicenseRef-grub-only"},
        licences={
            "libc6": "LGPL-2.1-or-later AND LicenseRef-public-domain",
            "bash": "GPL-3.0-or-later",
            "fw": "NOASSERTION",
            "tiny-installer": "NOASSERTION",
        },
    )


def test_sbom_of_a_small_build_is_valid_spdx_and_says_everything(tmp_path: Path) -> None:
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    inp = small_inputs()
    data = sbom.render(sbom.document(inp))
    assert data == sbom.render(sbom.document(small_inputs()))  # the same inputs, the same bytes
    path = tmp_path / sbom.file_name(inp.name, inp.version)
    path.write_bytes(data)
    parsed = parse_file(str(path))  # the library reads back what it wrote, and finds it valid
    assert validate_full_spdx_document(parsed) == []

    doc = json.loads(data)
    assert doc["spdxVersion"] == "SPDX-2.3" and doc["creationInfo"]["created"] == "2023-11-14T22:13:20Z"
    by_name = {p["name"]: p for p in doc["packages"] if p["SPDXID"].startswith("SPDXRef-deb-")}
    assert set(by_name) == {p["name"] for p in inp.packages}
    assert by_name["libc6"]["licenseDeclared"] == "LGPL-2.1-or-later AND LicenseRef-public-domain"
    assert by_name["libc6"]["downloadLocation"] == "http://deb.example.org/debian/pool/main/g/glibc/libc6.deb"
    assert by_name["fw"]["licenseDeclared"] == "NOASSERTION"
    assert by_name["bash"]["checksums"] == [{"algorithm": "SHA256", "checksumValue": "7" * 64}]
    assert by_name["fw"]["externalRefs"][0]["referenceLocator"] == "pkg:deb/debian/fw@2%3A1.0-1?arch=all"
    comps = {p["name"]: p for p in doc["packages"] if p["SPDXID"].startswith("SPDXRef-component-")}
    assert set(comps) == set(inp.components)
    assert comps["xen"]["downloadLocation"] == f"git+https://git.example.org/xen.git@{COMMIT}"
    assert comps["local"]["downloadLocation"] == "NOASSERTION"  # SPDX takes no file:// location
    assert "file:///srv/git/local.git" in comps["local"]["sourceInfo"]
    assert comps["tools"]["checksums"][0]["checksumValue"] == "2" * 64
    assert comps["kernel"]["versionInfo"] == "6.12.1-1"
    assert [e["licenseId"] for e in doc["hasExtractedLicensingInfos"]] == [
        "LicenseRef-grub-only",
        "LicenseRef-public-domain",
    ]

    ids = {p["SPDXID"]: p["name"] for p in doc["packages"]}
    rels = {
        (ids.get(r["spdxElementId"], r["spdxElementId"]), r["relationshipType"], ids[r["relatedSpdxElement"]])
        for r in doc["relationships"]
    }
    assert ("SPDXRef-DOCUMENT", "DESCRIBES", "tiny-1.0-amd64.iso") in rels
    assert ("tiny-1.0-amd64.iso", "CONTAINS", "rootfs.squashfs") in rels
    assert ("rootfs.squashfs", "CONTAINS", "bash") in rels
    assert ("bash", "GENERATED_FROM", "bash") in rels  # the Debian source package, version 5.2.37-2 (no binNMU)
    assert any(p["name"] == "bash" and p.get("versionInfo") == "5.2.37-2" for p in doc["packages"])
    assert ("tiny-installer", "GENERATED_FROM", "installer") in rels
    assert ("tiny-1.0-amd64.iso", "CONTAINS", "tiny-guest-tools-xenbus") in rels
    assert ("tiny-1.0-amd64.iso", "CONTAINS", "bash") in rels  # a boot loader package the rootfs has too
    assert ("tiny-1.0-amd64.iso", "CONTAINS", "grub-pc-bin") in rels
    grub = next(p for p in doc["packages"] if p["name"] == "grub-pc-bin")
    assert grub["licenseDeclared"] == "GPL-3.0-or-later AND LicenseRef-grub-only" and grub["downloadLocation"].endswith(
        "/g.deb"
    )


# --- xenspin diff ----------------------------------------------------------------------


def edited_lock(tmp_path: Path, edit) -> Path:
    """A copy of the repository's distro.lock with edit(data) applied."""
    data = yaml.safe_load((ROOT / "distro.lock").read_text())
    edit(data)
    path = tmp_path / "old.lock"
    path.write_text(lockfile.HEADER + yaml.safe_dump(data, sort_keys=True))
    return path


def older(data: dict) -> None:
    pkgs = data["sets"]["rootfs"]["packages"]
    pkgs["bash"]["version"] = "5.2.15-2"  # upgraded in the real lock
    pkgs["zstd"]["version"] = "9:9.9-9"  # downgraded in the real lock
    pkgs["not-any-more"] = copy.deepcopy(pkgs["zstd"])  # removed in the real lock
    del pkgs["less"]  # added in the real lock
    data["components"]["xen"]["packages"]["xen-hypervisor-4.20-amd64"]["version"] = "4.20.0-1"


def test_diff_between_two_locks_names_each_kind_of_change(tmp_path: Path) -> None:
    old = edited_lock(tmp_path, older)
    notes = relnotes.diff(old, ROOT / "distro.lock", Store(tmp_path / "store"))
    kinds = {c.name: c.kind for c in notes.packages}
    assert kinds == {"bash": "upgraded", "zstd": "downgraded", "not-any-more": "removed", "less": "added"}
    assert [(c.name, c.kind) for c in notes.components] == [("xen", "changed")]
    assert "4.20.0-1" in (notes.components[0].old or "")
    # The empty store has no .deb: said in the notes, not an error.
    assert any("the store has no .deb of bash" in g for g in notes.gaps)
    text = relnotes.markdown(notes)
    assert "### Upgraded (1)\n\n- bash: 5.2.15-2 -> " in text and "## Not known" in text


def test_diff_cli_prints_markdown_or_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = edited_lock(tmp_path, older)
    assert cli.main(["--store", str(tmp_path / "store"), "diff", str(old), str(ROOT / "distro.lock")]) == 0
    assert capsys.readouterr().out.startswith("# Release notes: ")
    assert cli.main(["--store", str(tmp_path / "store"), "--json", "diff", str(old), str(ROOT / "distro.lock")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {c["name"] for c in data["packages"]} == {"bash", "zstd", "not-any-more", "less"}
    assert cli.main(["diff", str(tmp_path / "nothing.lock"), str(old)]) == 2
    assert "nothing.lock: no such file" in capsys.readouterr().err


def lock_with(tmp_path: Path, name: str, **packages: dict) -> Path:
    data = {"format": 1, "archive": {}, "components": {}, "sets": {"rootfs": {"packages": packages}}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_upgrade_lists_changelog_entries_between_the_versions_security_first(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    changelog = gzip.compress(CHANGELOG.encode(), mtime=0)
    new_deb = make_deb(tmp_path, "thing", "1.3-1", {"changelog.Debian.gz": changelog})
    digest = into_store(store, new_deb)
    link_deb = into_store(store, make_deb(tmp_path, "libthing1", "1.3-1", {}, link="thing"))
    old = lock_with(tmp_path, "old.lock", thing={"version": "1.1-1"}, libthing1={"version": "1.1-1"})
    new = lock_with(
        tmp_path,
        "new.lock",
        thing={"version": "1.3-1", "sha256": digest},
        libthing1={"version": "1.3-1", "sha256": link_deb},
    )
    notes = relnotes.diff(old, new, store)
    thing = next(c for c in notes.packages if c.name == "thing")
    assert [e["version"] for e in thing.entries] == ["1.3-1", "1.2-1"]  # 1.1-1 is the old one: not listed
    assert thing.cves == ["CVE-2024-1234"]
    lib = next(c for c in notes.packages if c.name == "libthing1")
    assert [e["version"] for e in lib.entries] == ["1.3-1", "1.2-1"]  # read from thing's doc directory
    assert notes.security[0] == {"package": "libthing1", "version": "1.3-1", "cves": ["CVE-2024-1234"]}
    text = relnotes.markdown(notes)
    assert text.index("## Security fixes") < text.index("## Packages")
    assert "  * Fix CVE-2024-1234: a buffer overflow." in text
    assert "CVE-2023-99999" not in text


def test_a_changed_git_component_lists_the_commits_between(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    url = "https://git.example.org/xen.git"
    work = new_repo(tmp_path / "work")
    first = git(work, "rev-parse", "HEAD")
    commit(work, "two: fix the thing")
    last = commit(work, "three: another fix")
    mirror = store.git_path(url)
    mirror.parent.mkdir(parents=True)
    git(tmp_path, "clone", "-q", "--bare", str(work), str(mirror))

    def locked(rev: str, name: str) -> Path:
        data = {
            "format": 1,
            "archive": {},
            "components": {"xen": {"kind": "git", "url": url, "ref": "main", "commit": rev}},
        }
        (tmp_path / name).write_text(yaml.safe_dump(data))
        return tmp_path / name

    notes = relnotes.diff(locked(first, "a.lock"), locked(last, "b.lock"), store)
    assert [e["subject"] for e in notes.components[0].entries] == ["three: another fix", "two: fix the thing"]
    notes = relnotes.diff(locked(first, "a.lock"), locked("b" * 40, "c.lock"), Store(tmp_path / "empty"))
    assert "the store has no git mirror" in notes.components[0].note


def test_an_iso_side_reads_its_packages_json(tmp_path: Path) -> None:
    import pycdlib

    rows = [{"name": "bash", "version": "5.2.37-2", "source": "bash", "sha256": "7" * 64, "architecture": "amd64"}]
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, rock_ridge="1.09", joliet=3)
    data = json.dumps(rows).encode()
    iso.add_fp(io.BytesIO(data), len(data), "/PACKAGES.JSON;1", rr_name="packages.json", joliet_path="/packages.json")
    iso.add_directory("/DISK", rr_name=".disk", joliet_path="/.disk")
    info = b"tiny 1.0 amd64\n"
    iso.add_fp(io.BytesIO(info), len(info), "/DISK/INFO.;1", rr_name="info", joliet_path="/.disk/info")
    path = tmp_path / "tiny.iso"
    iso.write(str(path))
    iso.close()
    side = relnotes.load(path)
    assert (side.name, side.version) == ("tiny", "1.0")
    assert side.packages == {"bash": {k: v for k, v in rows[0].items() if k != "name"}}
    assert side.components is None and "carries no lock" in side.gaps[0]
    (tmp_path / "junk.iso").write_bytes(b"\0" * 40000)
    with pytest.raises(XenspinError, match="junk.iso"):
        relnotes.load(tmp_path / "junk.iso")


# --- the default build (slow) ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.network
def test_default_build_sbom_is_valid_and_complete_and_diff_reads_the_store(
    default_build, default_iso, tmp_path
) -> None:
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    out = default_iso.parent
    path = out / "xenspin-0.1.spdx.json"
    assert path.name in (out / "SHA256SUMS").read_text()
    assert validate_full_spdx_document(parse_file(str(path))) == []
    doc = json.loads(path.read_text())
    packages = json.loads((out / "packages.json").read_text())
    lock = lockfile.read(default_build.project / "distro.lock")
    debs = {p["name"]: p for p in doc["packages"] if p["SPDXID"].startswith("SPDXRef-deb-")}
    assert set(debs) == {p["name"] for p in packages}
    for p in packages:
        assert debs[p["name"]]["versionInfo"] == p["version"]
        assert debs[p["name"]]["checksums"][0]["checksumValue"] == p["sha256"]
    comps = {p["name"] for p in doc["packages"] if p["SPDXID"].startswith("SPDXRef-component-")}
    assert comps == set(lock.components)
    digests = {c["checksumValue"] for p in doc["packages"] for c in p.get("checksums", [])}
    assert {e["sha256"] for e in lock.sets["iso"]["packages"].values()} <= digests  # the boot loaders
    iso_sha = json.loads((out / "build-info.json").read_text())["iso"]["sha256"]
    assert any(c["checksumValue"] == iso_sha for p in doc["packages"] for c in p.get("checksums", []))
    declared = [p["licenseDeclared"] for p in debs.values()]
    assert sum(d != "NOASSERTION" for d in declared) > len(declared) // 2  # most of Debian is DEP-5 by now
    assert debs["libc6"]["licenseDeclared"].startswith("LGPL-2.1-or-later")

    # A diff from a copy of the real lock with an older Xen and libc6: their changelogs come from the store.
    older_xen = "4.20.2+37-g61ff35323e-0+deb13u1"

    def older_real(data: dict) -> None:
        data["components"]["xen"]["packages"]["xen-hypervisor-4.20-amd64"]["version"] = older_xen
        pkgs = data["sets"]["rootfs"]["packages"]
        pkgs["xen-hypervisor-4.20-amd64"]["version"] = older_xen
        pkgs["libc6"]["version"] = "2.41-11"

    old = edited_lock(tmp_path, older_real)
    new = default_build.project / "distro.lock"
    outbuf = io.StringIO()
    with contextlib.redirect_stdout(outbuf):
        assert cli.main(["--store", str(default_build.store), "--json", "diff", str(old), str(new)]) == 0
    notes = json.loads(outbuf.getvalue())
    assert [c["name"] for c in notes["components"]] == ["xen"]
    changes = {c["name"]: c for c in notes["packages"]}
    assert set(changes) == {"xen-hypervisor-4.20-amd64", "libc6"}
    assert all(c["kind"] == "upgraded" and c["entries"] and not c["note"] for c in changes.values())
    assert "xen-hypervisor-4.20-amd64" in {s["package"] for s in notes["security"]}
    assert not notes["gaps"]
