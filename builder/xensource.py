"""Where Xen's hypervisor and tools come from, and the guard that they come from one Xen source.

xl, libxenlight and xenstored speak the hypervisor's unstable interfaces (domctl,
sysctl): tools of another Xen release build and install, then cannot start a guest.
The manifest says which components are the two halves (`xen:`); validate refuses
what the sources already decide (manifest.Distro._check_xen), and this module decides
the rest once versions are locked: two archive sources must be one Debian source at
one version, and no other binary of Debian's xen source may sit in the rootfs beside
a Xen built from source. Pure functions over the manifest and the lock.
"""

from __future__ import annotations

from typing import Any

from .errors import XenspinError
from .lock import Lock
from .manifest import Distro

DEBIAN_XEN = "xen"  # the Debian source package of Xen's binaries (xen-utils-*, libxen*, xen-hypervisor-*)


class MixedXen(XenspinError):
    """The hypervisor and the tools come from different Xen sources, and the manifest did not allow it."""


def _archive_source(info: dict[str, Any]) -> tuple[str, str]:
    """(Debian source package, version) of a locked archive .deb; older locks name no source: its pool directory."""
    source = info.get("source") or info["filename"].split("/")[-2]
    return source, info.get("source_version") or info["version"]


def describe(distro: Distro, lock: Lock, name: str) -> dict[str, Any]:
    """What one half was made from, for the guard and build-info.json."""
    src = distro.origin(name)
    entry = lock.components.get(src) or {}
    kind = entry.get("kind", "")
    out: dict[str, Any] = {"component": name, "kind": kind}
    if src != name:
        out["source-of"] = src
    if kind == "archive":
        pairs = {_archive_source(p) for p in entry["packages"].values()}
        out["packages"] = {p: i["version"] for p, i in sorted(entry["packages"].items())}
        out["debian-source"] = sorted(f"{s} {v}" for s, v in pairs)
    elif kind == "git":
        out.update(url=entry["url"], commit=entry["commit"], **({"tag": entry["tag"]} if entry.get("tag") else {}))
    elif kind == "debian":
        out.update(package=entry["package"], version=entry["version"])
    elif kind in ("tarball", "prebuilt"):
        out.update(url=entry.get("url", ""), sha256=entry.get("sha256", ""))
    return out


def origins(distro: Distro, lock: Lock) -> dict[str, Any]:
    """The `xen` record of build-info.json: each half, and whether they are one source."""
    xen = distro.xen
    halves = {role: getattr(xen, role) for role in ("hypervisor", "tools")}
    if any(name not in distro.components for name in halves.values()):
        return {}
    record = {role: describe(distro, lock, name) for role, name in halves.items()}
    return {**record, "one-source": not problems(distro, lock), "mixed-allowed": xen.mixed}


def problems(distro: Distro, lock: Lock) -> list[str]:
    """Why the locked hypervisor and tools are not one Xen source ([] when they are)."""
    xen = distro.xen
    if xen.hypervisor not in distro.components:
        return []
    hv_src = distro.origin(xen.hypervisor)
    hv_entry = lock.components.get(hv_src)
    if hv_entry is None:
        return []
    out: list[str] = []
    built = hv_entry["kind"] != "archive"
    want: tuple[str, str] | None = None
    if not built:
        pairs = {_archive_source(p) for p in hv_entry["packages"].values()}
        want = sorted(pairs)[0]
    if xen.tools in distro.components:
        tools = lock.components.get(distro.origin(xen.tools))
        if tools is not None and distro.origin(xen.tools) != hv_src:
            if built or tools["kind"] != "archive":
                out.append(f"the tools {xen.tools} do not build the hypervisor's source ({xen.hypervisor})")
            else:
                for pkg, info in sorted(tools["packages"].items()):
                    if _archive_source(info)[0] == DEBIAN_XEN and _archive_source(info) != want:
                        assert want is not None
                        out.append(f"{pkg} is Debian's xen {_archive_source(info)[1]}, the hypervisor xen {want[1]}")
    for pkg, info in sorted(((lock.sets.get("rootfs") or {}).get("packages") or {}).items()):
        pair = (info.get("source", ""), info.get("version", ""))
        if pair[0] != DEBIAN_XEN:
            continue
        if built:
            out.append(f"rootfs package {pkg} {pair[1]} is Debian's Xen, beside a Xen built from source")
        elif want is not None and pair != want:
            out.append(f"rootfs package {pkg} is Debian's xen {pair[1]}, the hypervisor xen {want[1]}")
    return out


def check(distro: Distro, lock: Lock, where: str) -> None:
    """Refuse, in one line, a lock whose hypervisor and tools are not one Xen source (unless xen.mixed)."""
    if distro.xen.mixed:
        return
    found = problems(distro, lock)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise MixedXen(
            f"{where}: xen: {found[0]}{more}; one Xen source must give both halves (xen.mixed: true allows a mix)"
        )
