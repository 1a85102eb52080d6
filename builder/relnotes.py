"""`xenspin diff OLD NEW`: release notes between two builds of a distribution.

Each side is a lock file, a build-info.json (with packages.json beside it) or an ISO
(its embedded packages.json). The notes say which components' sources changed (with the
git log between the two commits when the store has both), which packages were added,
removed, upgraded or downgraded (Debian version order), and for each upgrade the Debian
changelog entries in between, read from the new .deb in the store; entries naming a CVE
come first. What a side cannot tell (an ISO has no lock, the store lacks a .deb) is said
in the notes, not raised: notes of a release are still worth having with a gap.

`compare` and `markdown` are pure; `load`, `changelog_entries` and `git_log` read files.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import debfiles, iso, lazyimport, lock
from .errors import XenspinError
from .run import run
from .sbom import component_source, source_version
from .store import Store

debian_support = lazyimport.module("debian.debian_support")
debian_changelog = lazyimport.module("debian.changelog")

CVE = re.compile(r"\bCVE-\d{4}-\d{4,}\b")
GIT_LOG_MAX = 50  # commits listed per component; more are counted


class DiffError(XenspinError):
    pass


@dataclass
class Side:
    """What one side of the diff tells: its packages and components, where it knows them."""

    label: str
    name: str = ""
    version: str = ""
    packages: dict[str, dict[str, Any]] | None = None  # name -> version, source, sha256, architecture
    components: dict[str, dict[str, Any]] | None = None  # name -> lock entry
    archive: dict[str, Any] = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)  # what this side cannot tell


@dataclass
class Change:
    name: str
    old: str | None
    new: str | None
    kind: str  # added, removed, upgraded, downgraded, rebuilt, changed
    source: str = ""
    entries: list[dict[str, Any]] = field(default_factory=list)  # changelog entries (upgrades) or commits
    cves: list[str] = field(default_factory=list)
    note: str = ""  # why entries are missing


@dataclass
class Notes:
    old: str
    new: str
    components: list[Change] = field(default_factory=list)
    packages: list[Change] = field(default_factory=list)
    security: list[dict[str, Any]] = field(default_factory=list)  # package, version, cves, first line
    gaps: list[str] = field(default_factory=list)


# --- reading a side ------------------------------------------------------------------


def load(path: Path) -> Side:
    """One side from a lock file, a build-info.json (packages.json beside it) or an ISO."""
    if not path.is_file():
        raise DiffError(f"{path}: no such file (a lock, a build-info.json or an ISO)")
    with path.open("rb") as f:
        head = f.read(0x8006)
    if head[0x8001:0x8006] == b"CD001":
        return _from_iso(path)
    if path.suffix == ".json" or head.lstrip()[:1] in (b"{", b"["):
        return _from_json(path)
    return _from_lock(path)


def _packages(rows: Any, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "name" in r and "version" in r for r in rows):
        raise DiffError(f"{where}: not a packages.json (a list of name, version, ...)")
    return {r["name"]: {k: r.get(k) for k in ("version", "source", "sha256", "architecture")} for r in rows}


def _from_lock(path: Path) -> Side:
    current = lock.read(path)
    assert current is not None  # read() gives None only for a missing file
    side = Side(str(path), components=current.components, archive=current.archive)
    rootfs = (current.sets.get("rootfs") or {}).get("packages")
    if rootfs is None:
        side.gaps.append(f"{path} has no locked rootfs package set: packages not compared")
    else:
        side.packages = {
            n: {k: e.get(k) for k in ("version", "source", "sha256", "architecture")} for n, e in rootfs.items()
        }
    return side


def _from_json(path: Path) -> Side:
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DiffError(f"{path}: not JSON ({e})") from None
    if isinstance(data, list):  # a packages.json on its own
        return Side(str(path), packages=_packages(data, str(path)), gaps=[f"{path} is a package list: no components"])
    if not isinstance(data, dict) or "iso" not in data or "name" not in data:
        raise DiffError(f"{path}: not a build-info.json (no name and iso fields)")
    side = Side(str(path), name=str(data["name"]), version=str(data.get("version", "")))
    beside = path.with_name("packages.json")
    if beside.is_file():
        side.packages = _packages(json.loads(beside.read_text()), str(beside))
    else:
        side.gaps.append(f"no packages.json beside {path}: packages not compared")
    sbom = path.with_name(f"{side.name}-{side.version}.spdx.json")
    side.components = _components_from_sbom(sbom) if sbom.is_file() else None
    if side.components is None:
        side.gaps.append(f"no SBOM ({sbom.name}) beside {path}: components not compared")
    return side


def _components_from_sbom(path: Path) -> dict[str, dict[str, Any]] | None:
    """Components as the SBOM records them (version, download location), when it can be read."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    out: dict[str, dict[str, Any]] = {}
    for pkg in doc.get("packages", []):
        if str(pkg.get("SPDXID", "")).startswith("SPDXRef-component-"):
            loc = str(pkg.get("downloadLocation", ""))
            entry: dict[str, Any] = {
                "kind": "sbom",
                "version": pkg.get("versionInfo"),
                "info": pkg.get("sourceInfo", ""),
            }
            if m := re.fullmatch(r"git\+(.+)@([0-9a-f]{40,64})", loc):
                entry.update(kind="git", url=m[1], commit=m[2])
            out[pkg["name"]] = entry
    return out


def _from_iso(path: Path) -> Side:
    """The ISO's packages.json and .disk/info; an ISO carries no lock, so no components."""
    try:
        files = iso.read_files(path, ["/packages.json", "/.disk/info"])
    except iso.UnreadableIso as e:
        raise DiffError(str(e)) from None
    side = Side(str(path), gaps=[f"{path.name} is an ISO: it carries no lock, so components are not compared"])
    info = files.get("/.disk/info", b"").decode("utf-8", "replace").split()
    if len(info) >= 2:
        side.name, side.version = info[0], info[1]
    if "/packages.json" not in files:
        raise DiffError(f"{path}: the ISO holds no packages.json (not a xenspin ISO?)")
    side.packages = _packages(json.loads(files["/packages.json"]), f"{path}:/packages.json")
    return side


# --- comparing (pure) ----------------------------------------------------------------


def vcmp(a: str, b: str) -> int:
    """Debian version order (dpkg's), via python-debian."""
    va, vb = debian_support.Version(a), debian_support.Version(b)
    return (va > vb) - (va < vb)


def component_version(entry: dict[str, Any], archive: dict[str, Any]) -> str:
    """A component's locked source in a few words: a commit, a version, a digest, a path."""
    if entry.get("kind") == "sbom":
        return str(entry.get("version") or entry.get("info") or "")
    src = component_source(entry, archive)
    if entry.get("kind") == "archive":
        return "; ".join(f"{n} {p['version']}" for n, p in sorted(entry.get("packages", {}).items()))
    if entry.get("kind") == "path":
        return f"{entry['path']} (recipe {entry.get('recipe', '')[:12]})"
    return str(src["version"] or src["info"])


def compare(old: Side, new: Side) -> Notes:
    """Which components and packages differ between old and new (no changelogs yet)."""
    notes = Notes(old.label, new.label, gaps=[*old.gaps, *new.gaps])
    if old.components is not None and new.components is not None:
        for name in sorted(set(old.components) | set(new.components)):
            o, n = old.components.get(name), new.components.get(name)
            ov = component_version(o, old.archive) if o else None
            nv = component_version(n, new.archive) if n else None
            if ov != nv:
                kind = "added" if o is None else "removed" if n is None else "changed"
                notes.components.append(Change(name, ov, nv, kind))
    if old.packages is not None and new.packages is not None:
        for name in sorted(set(old.packages) | set(new.packages)):
            o, n = old.packages.get(name), new.packages.get(name)
            src = str((n or o or {}).get("source") or name)
            if o is None:
                notes.packages.append(Change(name, None, n["version"], "added", src))  # type: ignore[index]
            elif n is None:
                notes.packages.append(Change(name, o["version"], None, "removed", src))
            elif (c := vcmp(o["version"], n["version"])) != 0:
                notes.packages.append(
                    Change(name, o["version"], n["version"], "upgraded" if c < 0 else "downgraded", src)
                )
            elif o.get("sha256") and n.get("sha256") and o["sha256"] != n["sha256"]:
                notes.packages.append(Change(name, o["version"], n["version"], "rebuilt", src))
    return notes


def entries_between(text: str, old: str, new: str) -> list[dict[str, Any]]:
    """The changelog's entries newer than old, up to and including new (source versions), newest first."""
    log = debian_changelog.Changelog(text, strict=False)
    lo, hi = debian_support.Version(source_version(old)), debian_support.Version(source_version(new))
    out = []
    for block in log:
        try:
            v = debian_support.Version(str(block.version))
        except ValueError:
            continue
        if lo < v <= hi:
            changes = [line for line in block.changes() if line.strip()]
            body = "\n".join(changes)
            out.append(
                {
                    "version": str(block.version),
                    "date": block.date or "",
                    "urgency": block.urgency or "",
                    "changes": [c.rstrip() for c in changes],
                    "cves": cve_sorted(CVE.findall(body)),
                }
            )
    return out


def cve_sorted(ids: Any) -> list[str]:
    """CVE ids once each, by year then number (CVE-2026-7383 before CVE-2026-14456)."""
    return sorted(set(ids), key=lambda c: tuple(int(x) for x in c.split("-")[1:]))


def add_security(notes: Notes) -> None:
    """The upgrades' CVE-naming entries, gathered at the top of the notes."""
    for change in notes.packages:
        for entry in change.entries:
            if entry["cves"]:
                notes.security.append({"package": change.name, "version": entry["version"], "cves": entry["cves"]})
        change.cves = cve_sorted(c for e in change.entries for c in e["cves"])


# --- reading the store ---------------------------------------------------------------


def changelogs(notes: Notes, new: Side, store: Store) -> None:
    """Fill each upgrade's changelog entries from the new .deb in the store, or say why not."""
    pkgs = new.packages or {}
    for change in notes.packages:
        if change.kind != "upgraded":
            continue
        assert change.old is not None and change.new is not None
        text, why = _changelog(change.name, pkgs, store)
        if text is None:
            change.note = why
            notes.gaps.append(f"{change.name} {change.new}: {why}")
            continue
        try:
            change.entries = entries_between(text, change.old, change.new)
        except Exception as e:  # python-debian's parser on a malformed changelog
            change.note = f"its changelog could not be parsed ({e.__class__.__name__})"
    add_security(notes)


def _changelog(name: str, pkgs: dict[str, dict[str, Any]], store: Store) -> tuple[str | None, str]:
    """The package's Debian changelog text from its .deb in the store (following a doc directory
    linked to another package's), or None and why not."""
    for _ in range(4):
        sha = (pkgs.get(name) or {}).get("sha256")
        deb = deb_in_store(store, sha) if sha else None
        if deb is None:
            return None, f"the store has no .deb of {name} {(pkgs.get(name) or {}).get('version', '')}".rstrip()
        try:
            doc = debfiles.changelog_text(deb, name)
        except debfiles.DebFileError as e:
            return None, str(e)
        if doc is None:
            return None, f"{name}'s .deb has no changelog.Debian.gz"
        if doc.link is None:
            return (
                (doc.text, "")
                if doc.text is not None
                else (None, f"{name}'s changelog links outside its doc directory")
            )
        name = doc.link
    return None, "its doc directory links too deep"


def deb_in_store(store: Store, sha256: str) -> Path | None:
    """A .deb by digest: a fetched one among the blobs, else one a component build made
    (the build objects record their .debs' digests)."""
    if store.has_blob(sha256):
        return store.blob_path(sha256)
    for meta in sorted((store.root / "objects" / "build").glob("*.json")):
        try:
            made = json.loads(meta.read_text()).get("sha256") or {}
        except (OSError, ValueError):
            continue
        for deb, digest in made.items():
            path = meta.with_suffix("") / deb
            if digest == sha256 and path.is_file():
                return path
    return None


def git_logs(notes: Notes, old: Side, new: Side, store: Store) -> None:
    """For each git component that changed, the commits between the two (from the store's mirror)."""
    for change in notes.components:
        o = (old.components or {}).get(change.name) or {}
        n = (new.components or {}).get(change.name) or {}
        if o.get("kind") != "git" or n.get("kind") != "git":
            continue
        mirror = store.git_path(n["url"])
        if not mirror.is_dir():
            change.note = f"the store has no git mirror of {n['url']}"
            continue
        result = run(
            ["git", "--git-dir", str(mirror), "log", "--format=%h %s", f"{o['commit']}..{n['commit']}"],
            what=f"diff: git log of {change.name}",
            capture=True,
            check=False,
        )
        if result.returncode != 0:
            change.note = f"the store's mirror lacks {o['commit'][:12]} or {n['commit'][:12]}"
            continue
        lines = result.stdout.decode("utf-8", "replace").splitlines()
        change.entries = [{"commit": line.split(" ", 1)[0], "subject": line.partition(" ")[2]} for line in lines]


def diff(old_path: Path, new_path: Path, store: Store) -> Notes:
    """The release notes from old to new: compare, then what the store adds (changelogs, git logs)."""
    old, new = load(old_path), load(new_path)
    notes = compare(old, new)
    git_logs(notes, old, new, store)
    changelogs(notes, new, store)
    return notes


# --- rendering (pure) ----------------------------------------------------------------


def to_data(notes: Notes) -> dict[str, Any]:
    return asdict(notes)


def markdown(notes: Notes) -> str:
    """The notes as Markdown: security fixes first, then components, then packages by kind."""
    out = [f"# Release notes: {notes.old} -> {notes.new}", ""]
    if notes.security:
        out += ["## Security fixes", ""]
        for s in notes.security:
            out.append(f"- {s['package']} {s['version']}: {', '.join(s['cves'])}")
        out.append("")
    out += ["## Components", ""]
    if not notes.components:
        out.append("No component's source changed." if not _gap(notes, "components") else "Not compared.")
    for c in notes.components:
        out.append(
            f"- {c.name}: {c.old or '(none)'} -> {c.new or '(none)'}" + (f" ({c.kind})" if c.kind != "changed" else "")
        )
        shown = c.entries[:GIT_LOG_MAX]
        out += [f"  - {e['commit']} {e['subject']}" for e in shown]
        if len(c.entries) > len(shown):
            out.append(f"  - ... and {len(c.entries) - len(shown)} more commits")
        if c.note:
            out.append(f"  - ({c.note})")
    out.append("")
    out += ["## Packages", ""]
    if not notes.packages:
        out.append("No package changed." if not _gap(notes, "packages") else "Not compared.")
    for kind in ("upgraded", "downgraded", "added", "removed", "rebuilt"):
        changes = [c for c in notes.packages if c.kind == kind]
        if not changes:
            continue
        out += [f"### {kind.capitalize()} ({len(changes)})", ""]
        for c in changes:
            if kind in ("upgraded", "downgraded"):
                line = f"- {c.name}: {c.old} -> {c.new}"
            elif kind == "rebuilt":
                line = f"- {c.name} {c.new} (same version, other bytes)"
            else:
                line = f"- {c.name} {c.new or c.old}"
            out.append(line + (f" (security: {len(c.cves)} CVE{'s' if len(c.cves) > 1 else ''})" if c.cves else ""))
            for e in c.entries:
                out.append(f"  - {e['version']}" + (f" (urgency {e['urgency']})" if e["urgency"] else ""))
                out += [f"  {line}" for line in e["changes"]]
            if c.note:
                out.append(f"  - ({c.note})")
        out.append("")
    if notes.gaps:
        out += ["## Not known", ""] + [f"- {g}" for g in notes.gaps] + [""]
    return "\n".join(out)


def _gap(notes: Notes, what: str) -> bool:
    return any(f"{what} not compared" in g or f"so {what} are not compared" in g for g in notes.gaps)
