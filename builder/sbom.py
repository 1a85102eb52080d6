"""The ISO's software bill of materials: NAME-VERSION.spdx.json (SPDX 2.3), written with spdx-tools.

What it lists: the ISO, the rootfs in it, every .deb in the rootfs (name, version, sha256,
the licence its machine-readable copyright file declares), the Debian source package
each was built from, every component with its locked source (git URL and commit, tarball
URL and sha256, Debian source and version, archive packages, in-tree path), and the
guest tools. Relationships: ISO CONTAINS rootfs CONTAINS package; package GENERATED_FROM
its Debian source and, when a component made it, from that component.

It is a stage (kind `sbom`) after the ISO: its key is everything the document says, so a
no-op build finds it in the store and reads no .deb; made, it reads each .deb's copyright
file (debfiles.py) and renders the document (`document`, pure) at the build's epoch.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from . import debfiles, lazyimport, licence
from .errors import XenspinError
from .stage import Needs, Pending, Stage
from .store import Store

spdx = lazyimport.module("spdx_tools.spdx.model")
spdx_json = lazyimport.module("spdx_tools.spdx.writer.json.json_writer")
spdx_validation = lazyimport.module("spdx_tools.spdx.validation.document_validator")
spdx_licensing = lazyimport.module("license_expression")
spdx_uris = lazyimport.module("spdx_tools.spdx.validation.uri_validators")

log = logging.getLogger("xenspin.sbom")

KIND = "sbom"
STAGE_ID = f"{KIND}:sbom"
FORMAT = 1  # what the stage writes; bump to rewrite every SBOM
TOOL = "xenspin"


class SbomError(XenspinError):
    pass


def file_name(name: str, version: str) -> str:
    """NAME-VERSION.spdx.json, beside NAME-VERSION-amd64.iso."""
    return f"{name}-{version}.spdx.json"


@dataclass
class Inputs:
    """All the document says, as plain data (also the stage's key inputs)."""

    name: str
    version: str
    epoch: int
    iso: dict[str, Any]  # file, sha256, size
    archive: dict[str, Any]  # the lock's archive state (mirror, suite)
    components: dict[str, dict[str, Any]]  # the lock's entries
    packages: list[dict[str, Any]]  # packages.json
    locked: dict[str, dict[str, Any]]  # the lock's rootfs set: name -> entry (mirror, filename)
    built: dict[str, str]  # package -> the component whose build gave its .deb
    guest_tools: dict[str, dict[str, str]]  # component -> package, version (build-info's guest_tools)
    loaders: list[dict[str, Any]] = field(default_factory=list)  # the lock's `iso` set, when the ISO used it
    licences: dict[str, str] = field(default_factory=dict)  # package -> SPDX expression (made, not keyed)
    loader_licences: dict[str, str] = field(default_factory=dict)  # the same for the loaders

    def key_data(self) -> dict[str, Any]:
        data = dict(vars(self))
        data.pop("licences")
        data.pop("loader_licences")
        return data


# --- the document (pure) ------------------------------------------------------------


def spdx_ref(kind: str, *parts: str) -> str:
    """SPDXRef-KIND-PART...: SPDX identifiers allow letters, digits, "." and "-" only."""
    text = "-".join(re.sub(r"[^A-Za-z0-9.]+", "-", p.replace("+", ".plus.")) for p in (kind, *parts))
    return "SPDXRef-" + text.strip("-")


def source_version(version: str) -> str:
    """The Debian source version of a binary version: a binNMU's +bN suffix is the binary's own."""
    return re.sub(r"\+b\d+$", "", version)


def purl(name: str, version: str, arch: str | None = None) -> str:
    """pkg:deb/debian/NAME@VERSION?arch=ARCH (the version escaped: an epoch's colon)."""
    out = f"pkg:deb/debian/{quote(name, safe='')}@{quote(version, safe='')}"
    return f"{out}?arch={arch}" if arch else out


def component_source(entry: dict[str, Any], archive: dict[str, Any]) -> dict[str, Any]:
    """What a component's lock entry pins, as an SBOM package's fields: download location, version,
    sha256 (when the source is one file), and a sentence for sourceInfo."""
    kind = entry.get("kind", "")
    if kind == "git":
        return {
            "download": f"git+{entry['url']}@{entry['commit']}",
            "version": entry["commit"],
            "info": f"git {entry['url']} ref {entry.get('ref', '')} at commit {entry['commit']}",
        }
    if kind in ("url", "prebuilt"):
        return {
            "download": entry["url"],
            "version": entry["sha256"][:12],
            "sha256": entry["sha256"],
            "info": f"{kind} {entry['url']} sha256 {entry['sha256']}",
        }
    if kind == "debian":
        mirror = entry.get("mirror") or archive.get("mirror", "")
        dsc = next((f for f in sorted(entry.get("files", {})) if f.endswith(".dsc")), "")
        return {
            "download": f"{mirror}/{entry['directory']}/{dsc}" if dsc else "NOASSERTION",
            "version": entry["version"],
            "sha256": entry.get("files", {}).get(dsc, {}).get("sha256"),
            "info": f"Debian source package {entry['package']} {entry['version']}",
        }
    if kind == "archive":
        pkgs = entry.get("packages", {})
        versions = sorted({p["version"] for p in pkgs.values()})
        listed = ", ".join(f"{n} {p['version']} (source {p.get('source', n)})" for n, p in sorted(pkgs.items()))
        return {"download": "NOASSERTION", "version": ", ".join(versions), "info": f"Debian archive packages {listed}"}
    if kind == "path":
        return {"download": "NOASSERTION", "version": None, "info": f"in-tree source {entry['path']}"}
    if kind == "component":
        return {"download": "NOASSERTION", "version": None, "info": f"the source of component {entry['component']}"}
    return {"download": "NOASSERTION", "version": None, "info": f"{kind} source"}


def document(inp: Inputs) -> Any:
    """The SPDX 2.3 document (an spdx_tools Document): packages in a stable order, ids from names."""
    m = spdx
    created = datetime.datetime.fromtimestamp(inp.epoch, tz=datetime.UTC).replace(tzinfo=None)
    title = f"{inp.name}-{inp.version}"
    info = m.CreationInfo(
        spdx_version="SPDX-2.3",
        spdx_id="SPDXRef-DOCUMENT",
        name=title,
        document_namespace=f"https://xenspin.invalid/spdx/{quote(title, safe='')}-{inp.iso['sha256']}",
        creators=[m.Actor(m.ActorType.TOOL, TOOL)],
        created=created,
        creator_comment=f"Made by `xenspin build` from {inp.name}'s lock; licences from /usr/share/doc/PKG/copyright",
    )
    noassert = m.SpdxNoAssertion()
    licensing = spdx_licensing.get_spdx_licensing()
    packages: list[Any] = []
    rels: list[Any] = []

    def location(url: str) -> Any:
        """url when SPDX accepts it as a download location; else NOASSERTION (a local mirror,
        file://, an address by IP: sourceInfo still names it)."""
        return url if url and not spdx_uris.validate_download_location(url) else noassert

    def declared(expr: str) -> Any:
        """The expression as spdx-tools holds it; NOASSERTION for one it cannot parse."""
        if expr == licence.NOASSERTION:
            return noassert
        try:
            return licensing.parse(expr)
        except Exception:  # license-expression's own parse errors
            return noassert

    def sha(digest: str | None) -> list[Any]:
        return [m.Checksum(m.ChecksumAlgorithm.SHA256, digest)] if digest else []

    iso_id = spdx_ref("ISO", inp.iso["file"])
    packages.append(
        m.Package(
            spdx_id=iso_id,
            name=inp.iso["file"],
            version=inp.version,
            file_name=inp.iso["file"],
            download_location=noassert,
            files_analyzed=False,
            checksums=sha(inp.iso["sha256"]),
            primary_package_purpose=m.PackagePurpose.OPERATING_SYSTEM,
            license_concluded=noassert,
            license_declared=noassert,
            copyright_text=noassert,
            comment=f"{inp.iso['size']} bytes",
        )
    )
    rels.append(m.Relationship("SPDXRef-DOCUMENT", m.RelationshipType.DESCRIBES, iso_id))
    rootfs_id = spdx_ref("rootfs")
    packages.append(
        m.Package(
            spdx_id=rootfs_id,
            name="rootfs.squashfs",
            version=inp.version,
            download_location=noassert,
            files_analyzed=False,
            primary_package_purpose=m.PackagePurpose.OPERATING_SYSTEM,
            license_concluded=noassert,
            license_declared=noassert,
            copyright_text=noassert,
            comment="the dom0 root filesystem (live/filesystem.squashfs on the ISO)",
        )
    )
    rels.append(m.Relationship(iso_id, m.RelationshipType.CONTAINS, rootfs_id))

    comp_ids: dict[str, str] = {}
    for name, entry in sorted(inp.components.items()):
        src = component_source(entry, inp.archive)
        cid = comp_ids[name] = spdx_ref("component", name)
        packages.append(
            m.Package(
                spdx_id=cid,
                name=name,
                version=src["version"],
                download_location=location(src["download"]),
                files_analyzed=False,
                checksums=sha(src.get("sha256")),
                source_info=src["info"],
                primary_package_purpose=m.PackagePurpose.SOURCE,
                license_concluded=noassert,
                license_declared=noassert,
                copyright_text=noassert,
            )
        )

    def add_deb(pkg: dict[str, Any], pid: str, parent: str, download: str, expr: str) -> None:
        """A .deb, what contains it, and the Debian source (and component) it was built from."""
        name, version = pkg["name"], pkg["version"]
        packages.append(
            m.Package(
                spdx_id=pid,
                name=name,
                version=version,
                file_name=f"{name}_{version.split(':')[-1]}_{pkg.get('architecture', 'all')}.deb",
                download_location=location(download),
                files_analyzed=False,
                checksums=sha(pkg.get("sha256")),
                primary_package_purpose=m.PackagePurpose.INSTALL,
                license_concluded=noassert,
                license_declared=declared(expr),
                copyright_text=noassert,
                external_references=[
                    m.ExternalPackageRef(
                        m.ExternalPackageRefCategory.PACKAGE_MANAGER,
                        "purl",
                        purl(name, version, pkg.get("architecture")),
                    )
                ],
            )
        )
        rels.append(m.Relationship(parent, m.RelationshipType.CONTAINS, pid))
        src_name, src_ver = pkg.get("source") or name, source_version(version)
        sid = sources.get((src_name, src_ver))
        if sid is None:
            sid = sources[(src_name, src_ver)] = spdx_ref("source", src_name, src_ver)
            packages.append(
                m.Package(
                    spdx_id=sid,
                    name=src_name,
                    version=src_ver,
                    download_location=noassert,
                    files_analyzed=False,
                    source_info=f"Debian source package {src_name} {src_ver}",
                    primary_package_purpose=m.PackagePurpose.SOURCE,
                    license_concluded=noassert,
                    license_declared=noassert,
                    copyright_text=noassert,
                    external_references=[
                        m.ExternalPackageRef(
                            m.ExternalPackageRefCategory.PACKAGE_MANAGER,
                            "purl",
                            purl(src_name, src_ver) + "?arch=source",
                        )
                    ],
                )
            )
        rels.append(m.Relationship(pid, m.RelationshipType.GENERATED_FROM, sid))
        comp = inp.built.get(name)
        if comp in comp_ids and parent == rootfs_id:
            rels.append(m.Relationship(pid, m.RelationshipType.GENERATED_FROM, comp_ids[comp]))

    sources: dict[tuple[str, str], str] = {}
    mirror = inp.archive.get("mirror", "")
    in_rootfs: dict[str, str] = {}
    for pkg in sorted(inp.packages, key=lambda p: p["name"]):
        locked = inp.locked.get(pkg["name"], {})
        download = f"{locked.get('mirror', mirror)}/{locked['filename']}" if locked.get("filename") else ""
        pid = spdx_ref("deb", pkg["name"])
        in_rootfs[pkg.get("sha256") or pid] = pid
        add_deb(pkg, pid, rootfs_id, download, inp.licences.get(pkg["name"], licence.NOASSERTION))
    # The boot loaders' files on the ISO (GRUB, ISOLINUX) come from the lock's `iso` set.
    for pkg in sorted(inp.loaders, key=lambda p: p["name"]):
        same = in_rootfs.get(pkg.get("sha256") or "")
        if same:  # the very .deb the rootfs has: the ISO holds files of it too
            rels.append(m.Relationship(iso_id, m.RelationshipType.CONTAINS, same))
            continue
        download = f"{pkg.get('mirror', mirror)}/{pkg['filename']}" if pkg.get("filename") else ""
        expr = inp.loader_licences.get(pkg["name"], licence.NOASSERTION)
        add_deb(pkg, spdx_ref("loader", pkg["name"]), iso_id, download, expr)

    for comp, tool in sorted(inp.guest_tools.items()):
        gid = spdx_ref("guest", comp)
        packages.append(
            m.Package(
                spdx_id=gid,
                name=tool.get("package") or comp,
                version=tool.get("version") or None,
                download_location=noassert,
                files_analyzed=False,
                primary_package_purpose=m.PackagePurpose.FILE,
                license_concluded=noassert,
                license_declared=noassert,
                copyright_text=noassert,
                comment="guest tools (Windows PV drivers), under guest-tools/ on the ISO",
            )
        )
        rels.append(m.Relationship(iso_id, m.RelationshipType.CONTAINS, gid))
        if comp in comp_ids:
            rels.append(m.Relationship(gid, m.RelationshipType.GENERATED_FROM, comp_ids[comp]))

    users: dict[str, list[str]] = {}
    for name, expr in [*inp.licences.items(), *inp.loader_licences.items()]:
        for ref in licence.refs(expr):
            users.setdefault(ref, [])
            if name not in users[ref]:
                users[ref].append(name)
    users = {ref: sorted(names) for ref, names in users.items()}
    extracted = [
        m.ExtractedLicensingInfo(
            license_id=ref,
            extracted_text=f"A licence named {ref.removeprefix('LicenseRef-')!r} in Debian's machine-readable "
            f"copyright files; its text is in /usr/share/doc/PKG/copyright of: {', '.join(names)}",
            license_name=ref.removeprefix("LicenseRef-"),
        )
        for ref, names in sorted(users.items())
    ]
    return m.Document(info, packages=packages, relationships=rels, extracted_licensing_info=extracted)


def problems(doc: Any) -> list[str]:
    """spdx-tools' validation of the document: one line per problem, none when valid."""
    return [str(v.validation_message) for v in spdx_validation.validate_full_spdx_document(doc)]


def render(doc: Any) -> bytes:
    """The document as SPDX JSON, validated by spdx-tools; an invalid one is refused (a bug in xenspin)."""
    bad = problems(doc)
    if bad:
        raise SbomError(f"sbom: the SPDX document is not valid: {bad[0]} ({len(bad)} problems)")
    buf = io.StringIO()
    spdx_json.write_document_to_stream(doc, buf, validate=False)
    return (buf.getvalue() + "\n").encode()


def spdx_ids() -> licence.SpdxIds:
    """The SPDX licence list as the license-expression package knows it."""
    symbols = spdx_licensing.get_spdx_licensing().known_symbols
    lic, exc = {}, {}
    for key, sym in symbols.items():
        if key.startswith("LicenseRef-"):
            continue
        (exc if sym.is_exception else lic)[key.lower()] = key
    return licence.SpdxIds(lic, exc)


# --- licences from the .debs ---------------------------------------------------------


def licences(packages: list[dict[str, Any]], deb_of: Callable[[dict[str, Any]], Path | None]) -> dict[str, str]:
    """package -> its declared licence (SPDX), read from each .deb's copyright file.

    A doc directory linked to another package's (libgcc-s1 -> gcc-14-base) takes that
    package's licence; a package with no .deb at hand, no copyright file or a free-form
    one gets NOASSERTION.
    """
    known = spdx_ids()
    texts: dict[str, debfiles.DocFile | None] = {}
    for pkg in packages:
        deb = deb_of(pkg)
        try:
            texts[pkg["name"]] = debfiles.copyright_text(deb, pkg["name"]) if deb is not None else None
        except debfiles.DebFileError as e:  # an unreadable doc file costs the licence, not the build
            log.warning("sbom: %s", e)
            texts[pkg["name"]] = None
    out: dict[str, str] = {}
    for name, doc in sorted(texts.items()):
        for _ in range(5):  # follow links between doc directories, a few deep
            if doc is None or doc.link is None:
                break
            doc = texts.get(doc.link)
        out[name] = licence.declared(doc.text if doc else None, known)
    return out


# --- the stage -----------------------------------------------------------------------


def stage(
    distro: Any,
    lock: Any,
    *,
    epoch: int,
    iso_id: str,
    rootfs_id: str,
    builds: dict[str, str],
    store: Store,
) -> Stage:
    """The SBOM as a node after the ISO, the rootfs and the shipped component builds (builds: component -> stage id)."""

    def inputs_of(needs: Needs) -> Inputs:
        image, rootfs = needs.get(iso_id), needs.get(rootfs_id)
        if image is None or rootfs is None or image.meta is None or rootfs.path is None:
            raise Pending("the SBOM needs the ISO")
        built: dict[str, str] = {}
        for comp, sid in sorted(builds.items()):
            if sid not in needs:
                raise Pending("the SBOM needs the component builds")
            for deb in (needs[sid].meta or {}).get("debs", []):
                built[Path(deb).name.split("_")[0]] = comp
        packages = json.loads((rootfs.path / "packages.json").read_text())
        rootfs_set = (lock.sets.get("rootfs") or {}).get("packages", {})
        iso_set = (lock.sets.get("iso") or {}).get("packages", {})
        locked_loaders = (image.meta.get("loaders") or {}).get("origin") == "locked"
        names = {p["name"] for p in packages}
        return Inputs(
            name=distro.name,
            version=distro.version,
            epoch=epoch,
            iso={"file": image.meta["iso"], "sha256": image.meta["sha256"], "size": image.meta["size"]},
            archive={k: lock.archive.get(k) for k in ("mirror", "suite") if k in lock.archive},
            components=lock.components,
            packages=packages,
            locked={
                n: {k: e[k] for k in ("mirror", "filename") if k in e} for n, e in rootfs_set.items() if n in names
            },
            built=built,
            guest_tools=image.meta.get("guest_tools") or {},
            loaders=[{"name": n, **e} for n, e in sorted(iso_set.items())] if locked_loaders else [],
        )

    def deb_finder(needs: Needs) -> Callable[[dict[str, Any]], Path | None]:
        by_sha: dict[str, Path] = {}
        for sid in builds.values():
            done = needs[sid]
            for deb, digest in ((done.meta or {}).get("sha256") or {}).items():
                if done.path is not None:
                    by_sha[digest] = done.path / deb
        return lambda p: (
            by_sha.get(p.get("sha256", ""))
            or (store.blob_path(p["sha256"]) if p.get("sha256") and store.has_blob(p["sha256"]) else None)
        )

    def make(tmp: Path, needs: Needs) -> dict[str, Any]:
        inp = inputs_of(needs)
        inp.licences = licences(inp.packages, deb_finder(needs))
        inp.loader_licences = licences(inp.loaders, deb_finder(needs))
        name = file_name(inp.name, inp.version)
        (tmp / name).write_bytes(render(document(inp)))
        unknown = sorted(n for n, e in inp.licences.items() if e == licence.NOASSERTION)
        return {"file": name, "packages": len(inp.packages), "noassertion": unknown}

    return Stage(
        KIND,
        "sbom",
        FORMAT,
        lambda needs: inputs_of(needs).key_data(),
        make,
        after=(iso_id, rootfs_id, *builds.values()),
    )
