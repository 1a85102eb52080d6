"""The Debian source packages of what ships: the lock's `sources:` section, read from the signed indexes.

Every .deb of the shipped package sets (`rootfs` and `iso`: what is on the ISO) names its
source in its verified Packages paragraph: `Source: NAME` or `Source: NAME (VERSION)` (a
binNMU, a signed kernel's template), and `Built-Using:` names sources whose code it carries
(the signed kernel's unsigned source). Each (source, version) is looked up in the signed
Sources index of the same archive state and locked with its files' sha256s, as a `debian:`
component's source is. So a source release fetched months later is checked against what
was locked, never against what the archive says then.

    sources:
      inputs: DIGEST                  # of the shipped .debs: stale when they change
      packages:
        xen_4.20.4+63-g7abfd2bce2-0+deb13u1:
          package: xen
          version: 4.20.4+63-g7abfd2bce2-0+deb13u1
          mirror: http://deb.debian.org/debian
          directory: pool/main/x/xen
          files: {xen_...dsc: {sha256: ..., size: ...}, ...}
          binaries: [xen-hypervisor-4.20-amd64, xen-utils-4.20, ...]
        foo_1.0:                      # the signed index names no such source: listed, no files
          package: foo
          version: "1.0"
          binaries: [foo]
          missing: not in the signed Sources index of trixie main

Build roots' sets are left out: they build, they do not ship.
"""

from __future__ import annotations

import re
from typing import Any

from .lock import Lock
from .sources import Context, debian
from .store import sha256_json

FORMAT = 1  # how the section is resolved and recorded; bump to resolve every lock's section again
SHIPPED = ("rootfs", "iso")  # the package sets whose files are on the ISO


def shipped(lock: Lock) -> list[tuple[str, str, str]]:
    """(package, version, architecture) of every .deb of the shipped sets, sorted, each once."""
    out = set()
    for name in SHIPPED:
        for pkg, info in ((lock.sets.get(name) or {}).get("packages") or {}).items():
            out.add((pkg, str(info["version"]), str(info.get("architecture", ""))))
    return sorted(out)


def inputs(lock: Lock) -> str:
    """What the section is resolved from: its entry is stale when this changes."""
    return sha256_json({"format": FORMAT, "debs": [list(d) for d in shipped(lock)]})


def stale(lock: Lock) -> bool:
    """Whether the lock's section is missing or was resolved for other .debs (a lock without shipped
    sets needs none)."""
    if not shipped(lock):
        return bool(lock.sources)
    return lock.sources.get("inputs") != inputs(lock)


def entries(lock: Lock) -> dict[str, dict[str, Any]]:
    """NAME_VERSION -> the locked source package."""
    return lock.sources.get("packages") or {}


def key(package: str, version: str) -> str:
    return f"{package}_{version}"


def own_version(version: str) -> str:
    """A binary's version as its source's, when the index cannot say: a binNMU's +bN is the binary's own."""
    return re.sub(r"\+b\d+$", "", version)


def resolve(lock: Lock, ctx: Context, *, again: bool = False) -> dict[str, Any]:
    """The section for lock's shipped sets, from the verified Packages and Sources indexes (network).

    Entries already locked are kept as they are unless again; a binary the Packages index no
    longer holds (a lock older than the archive) takes its set entry's source at its own
    version.
    """
    debs = shipped(lock)
    if not debs:
        return {}
    infos = {}
    for name in SHIPPED:
        for pkg, info in ((lock.sets.get(name) or {}).get("packages") or {}).items():
            infos[(pkg, str(info["version"]), str(info.get("architecture", "")))] = info
    binary = debian.verified_index(ctx, "binary")
    wanted: dict[tuple[str, str], dict[str, set[str]]] = {}
    for pkg, version, arch in debs:
        para = _paragraph(binary, pkg, version, arch)
        if para is not None:
            source = debian.binary_source(para)
            carried = debian.built_using(para)
        else:
            source = (str(infos[(pkg, version, arch)].get("source") or pkg), own_version(version))
            carried = []
        wanted.setdefault(source, {"binaries": set(), "built-using": set()})["binaries"].add(pkg)
        for other in carried:
            wanted.setdefault(other, {"binaries": set(), "built-using": set()})["built-using"].add(pkg)
    old = {} if again else entries(lock)
    index: debian.Index | None = None
    where = "+".join(suite for _, suite in ctx.base.archives()) + " " + "/".join(ctx.base.areas)
    packages: dict[str, Any] = {}
    for (package, version), why in sorted(wanted.items()):
        k = key(package, version)
        kept = old.get(k)
        if kept is not None and "files" in kept:
            entry = {f: kept[f] for f in ("package", "version", "mirror", "directory", "files")}
        else:
            if index is None:
                index = debian.verified_index(ctx, "source")
            entry = debian.source_entry(index, package, version) or {
                "package": package,
                "version": version,
                "missing": f"not in the signed Sources index of {where}",
            }
        entry["binaries"] = sorted(why["binaries"])
        if why["built-using"]:
            entry["built-using"] = sorted(why["built-using"])
        packages[k] = entry
    return {"inputs": inputs(lock), "packages": packages}


def _paragraph(index: debian.Index, pkg: str, version: str, arch: str) -> Any:
    for _mirror, text in index.get(pkg, []):
        para = debian.deb822.Packages(text)
        if para["Version"] == version and (not arch or para["Architecture"] == arch):
            return para
    return None


def keeps(lock: Lock) -> set[str]:
    """Blobs the section's files are (for `store gc`: a source release made before is not fetched again)."""
    return {f["sha256"] for e in entries(lock).values() for f in (e.get("files") or {}).values()}


def summary(lock: Lock) -> str:
    """A few words for `xenspin lock`."""
    all_ = entries(lock)
    absent = sorted(k for k, e in all_.items() if "missing" in e)
    sets = "/".join(s for s in SHIPPED if s in lock.sets)
    said = f"{len(all_)} Debian source packages of the {sets} sets, their files' sha256 from the signed Sources index"
    if absent:
        said += f"; {len(absent)} not in that index: {', '.join(absent)}"
    return said
