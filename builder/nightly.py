"""`xenspin build --nightly`: dated builds side by side, `latest`, retention, an index page.

    OUT/nightly/20260101/        one complete build (ISO, SHA256SUMS[.asc], build-info.json, ..., NAME-VERSION-source/)
    OUT/nightly/20260101-2/      a second build that day
    OUT/nightly/latest -> 20260101-2
    OUT/nightly/index.html, index.json

A build is made in a hidden directory (.NAME.partial) and renamed into place only when
complete; only then is `latest` swapped (a new symlink renamed over the old one) and the
oldest builds beyond `keep` deleted. A failed or killed build leaves `latest`, the
kept builds and the index as they were; the next run removes what it left.
The plans (names, what to delete, the index) are pure functions; run() does the moves.
"""

from __future__ import annotations

import contextlib
import fcntl
import html
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import lock, pipeline
from .context import Context
from .errors import XenspinError
from .manifest import Distro, GitSource, build_date

DIR = "nightly"
LATEST = "latest"
PARTIAL = ".partial"
NOTES = "release-notes.md"  # `xenspin diff` from the previous nightly, Markdown
BUILD_NAME = re.compile(r"(?P<date>[0-9]{8})(?:-(?P<n>[0-9]+))?")
COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# Files a build directory may hold that the index links to, in the order shown.
COMPANIONS = ["SHA256SUMS", "SHA256SUMS.asc", "build-info.json", "packages.json", "guest-tools.iso"]
SBOM_GLOBS = ["*.spdx.json", "*.cdx.json", "*sbom*"]
SOURCE_GLOB = "*-source"  # the source release (srcrelease.py), a directory


# --- pure plans ----------------------------------------------------------------------


def order(name: str) -> tuple[str, int]:
    """Sort key of a build directory's name: its date, then its number that day (none = 1)."""
    m = BUILD_NAME.fullmatch(name)
    if m is None:
        raise ValueError(name)
    return m["date"], int(m["n"] or 1)


def builds_in(names: list[str]) -> list[str]:
    """The build directories among names, newest first (latest, index files, partials left out)."""
    return sorted((n for n in names if BUILD_NAME.fullmatch(n)), key=order, reverse=True)


def next_name(existing: list[str], date: str) -> str:
    """DATE for the day's first build, DATE-2, DATE-3 ... for the next ones."""
    taken = [order(n)[1] for n in builds_in(existing) if order(n)[0] == date]
    return date if not taken else f"{date}-{max(taken) + 1}"


def to_delete(existing: list[str], new: str, keep: int) -> list[str]:
    """The builds to delete once new is complete: all but the newest `keep`, never new itself."""
    if keep < 1:
        raise ValueError(f"keep {keep}")
    others = [n for n in builds_in(existing) if n != new]
    return sorted(others[keep - 1 :], key=order)


def tracked(distro: Distro, current: lock.Lock | None) -> list[str]:
    """Components whose git source follows a branch: what a nightly re-locks (tags and commits stay)."""
    names = []
    for name, comp in sorted(distro.components.items()):
        source = comp.source
        if not isinstance(source, GitSource) or COMMIT.fullmatch(source.ref.lower()):
            continue
        entry = (current.components.get(name) if current else None) or {}
        if entry.get("tag") or source.ref.startswith("refs/tags/"):
            continue
        names.append(name)
    return names


@dataclass(frozen=True)
class Link:
    """One file of a build as the index shows it."""

    label: str
    href: str  # relative to the index
    size: int


@dataclass(frozen=True)
class Entry:
    """One build as the index lists it."""

    name: str
    version: str
    iso: Link | None
    sha256: str
    files: list[Link]
    sbom: Link | None
    notes: Link | None
    latest: bool
    sources: Link | None = None  # the source release's directory (NAME-VERSION-source/)


def index_data(entries: list[Entry], title: str) -> dict[str, Any]:
    """index.json: the builds newest first, with what each holds."""

    def link(x: Link | None) -> dict[str, Any] | None:
        return None if x is None else {"name": x.label, "href": x.href, "size": x.size}

    builds = sorted(entries, key=lambda e: order(e.name), reverse=True)
    return {
        "title": title,
        "latest": next((e.name for e in builds if e.latest), None),
        "builds": [
            {
                "name": e.name,
                "version": e.version,
                "latest": e.latest,
                "iso": link(e.iso),
                "sha256": e.sha256,
                "files": [link(f) for f in e.files],
                "sbom": link(e.sbom),
                "sources": link(e.sources),
                "release_notes": link(e.notes),
            }
            for e in builds
        ],
    }


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:72em}"
    "table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.4em .6em;border-bottom:1px solid #ccc;"
    "vertical-align:top}code{font-size:.8em;word-break:break-all}.latest{background:#eef6ee}"
)


def index_html(data: dict[str, Any]) -> str:
    """The people-facing page of index_data: newest build first, every file a relative link."""
    e = html.escape

    def a(link: dict[str, Any] | None, text: str | None = None) -> str:
        if link is None:
            return "—"
        return f'<a href="{e(link["href"], quote=True)}">{e(text or link["name"])}</a>'

    rows = []
    for b in data["builds"]:
        iso = b["iso"]
        tag = " <strong>(latest)</strong>" if b["latest"] else ""
        files = " ".join(a(f) for f in b["files"]) or "—"
        cls = ' class="latest"' if b["latest"] else ""
        size = e(human(iso["size"])) if iso else ""
        rows.append(
            f'<tr id="{e(b["name"], quote=True)}"{cls}>'
            f"<td>{e(b['name'])}{tag}<br>{e(b['version'])}</td>"
            f"<td>{a(iso)}<br>{size}</td>"
            f"<td><code>{e(b['sha256'])}</code></td>"
            f"<td>{files}</td><td>{a(b['sbom'], 'SBOM')}</td><td>{a(b.get('sources'), 'sources')}</td>"
            f"<td>{a(b['release_notes'], 'release notes')}</td></tr>"
        )
    latest = data["latest"]
    head = (
        f'<p>The newest complete build is <a href="{LATEST}/">{e(latest)}</a> (also at <code>{LATEST}/</code>). '
        "Check a download with <code>xenspin verify ISO --keyring KEY</code>.</p>"
        if latest
        else "<p>No build yet.</p>"
    )
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{e(data["title"])}</title>'
        f"<style>{CSS}</style></head>\n<body>\n<h1>{e(data['title'])}</h1>\n{head}\n"
        '<table id="builds"><thead><tr><th>build</th><th>ISO</th><th>sha256</th><th>checksums and records</th>'
        "<th>SBOM</th><th>sources</th><th>changes</th></tr></thead>\n<tbody>\n"
        + "\n".join(rows)
        + "\n</tbody></table>\n</body></html>\n"
    )


# --- reading what is on disk ---------------------------------------------------------


def entry(root: Path, name: str, latest: str | None) -> Entry:
    """What root/name holds, for the index (links relative to root; only files that exist)."""
    d = root / name

    def link(f: Path) -> Link:
        return Link(f.name, f"{name}/{f.name}", f.stat().st_size)

    info: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        info = json.loads((d / "build-info.json").read_text())
    iso_name = (info.get("iso") or {}).get("file")
    isos = [d / iso_name] if iso_name and (d / iso_name).is_file() else sorted(d.glob("*-amd64.iso"))
    files = [link(d / f) for f in COMPANIONS if (d / f).is_file()]
    sboms = sorted({p for g in SBOM_GLOBS for p in d.glob(g) if p.is_file()})
    releases = sorted(p for p in d.glob(SOURCE_GLOB) if (p / "SHA256SUMS").is_file())
    notes = d / NOTES
    return Entry(
        name=name,
        version=str(info.get("version", "")),
        iso=link(isos[0]) if isos else None,
        sha256=str((info.get("iso") or {}).get("sha256", "")),
        files=files,
        sbom=link(sboms[0]) if sboms else None,
        notes=link(notes) if notes.is_file() else None,
        latest=name == latest,
        sources=Link(releases[0].name + "/", f"{name}/{releases[0].name}/", _size(releases[0])) if releases else None,
    )


def _size(tree: Path) -> int:
    return sum(p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())


def current_latest(root: Path) -> str | None:
    """The build `latest` points at, when it points at one that is there."""
    try:
        target = os.readlink(root / LATEST)
    except OSError:
        return None
    return target if BUILD_NAME.fullmatch(target) and (root / target).is_dir() else None


# --- doing it ------------------------------------------------------------------------


@dataclass
class Nightly:
    """What a nightly run did."""

    name: str
    path: Path
    previous: str | None
    deleted: list[str] = field(default_factory=list)
    notes: str = ""  # what became of the release notes
    index: Path | None = None

    def lines(self) -> list[str]:
        out = [f"nightly: {self.path} complete; latest -> {self.name} (was {self.previous or 'none'})"]
        out.append(f"nightly: {self.notes}")
        if self.deleted:
            out.append("nightly: deleted " + ", ".join(self.deleted) + " (beyond the builds kept)")
        out.append(f"nightly: index {self.index}")
        return out


def _write(dest: Path, text: str) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, dest)


def _point(root: Path, name: str) -> None:
    """latest -> name, atomically: a new symlink renamed over the old one."""
    tmp = root / f".{LATEST}.tmp{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(name, tmp)
    os.replace(tmp, root / LATEST)


def _remove(path: Path) -> None:
    """Out of sight first (a half-deleted build never looks like one), then gone."""
    gone = path.with_name(f".{path.name}.deleting")
    shutil.rmtree(gone, ignore_errors=True)
    os.rename(path, gone)
    shutil.rmtree(gone)


@contextlib.contextmanager
def _held(root: Path) -> Iterator[None]:
    """One nightly at a time in root (the lock is on the directory itself)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise XenspinError(f"{root}: another nightly is running there") from None
        yield
    finally:
        os.close(fd)


def write_index(root: Path, title: str) -> Path:
    """index.json and index.html from what root holds now."""
    latest = current_latest(root)
    entries = [entry(root, n, latest) for n in builds_in([p.name for p in root.iterdir() if p.is_dir()])]
    data = index_data(entries, title)
    _write(root / "index.json", json.dumps(data, indent=2) + "\n")
    _write(root / "index.html", index_html(data))
    return root / "index.html"


def run(
    root: Path,
    build: Callable[[Path], None],
    *,
    keep: int,
    title: str,
    date: str | None = None,
    notes: Callable[[Path, Path], str] | None = None,
) -> Nightly:
    """Build into root/.NAME.partial, then publish it as root/NAME, point latest at it, prune, index.

    notes: release notes (Markdown) from the previous build's directory to the new one's.
    """
    root.mkdir(parents=True, exist_ok=True)
    with _held(root):
        for stale in root.glob(f".*{PARTIAL}"):  # a killed run's: no other nightly holds root
            shutil.rmtree(stale, ignore_errors=True)
        for stale in root.glob(".*.deleting"):
            shutil.rmtree(stale, ignore_errors=True)
        previous = current_latest(root)
        existing = [p.name for p in root.iterdir()]
        name = next_name(existing, date or build_date())
        staging = root / f".{name}{PARTIAL}"
        staging.mkdir()
        try:
            build(staging)
            said = _notes(root, previous, staging, notes)
            os.rename(staging, root / name)
        except BaseException as e:
            shutil.rmtree(staging, ignore_errors=True)
            kept = f"latest still {previous}" if previous else "no latest yet"
            if isinstance(e, XenspinError):
                failed = XenspinError(f"{e} (nightly {name} failed; {kept})")
                failed.exit_code = e.exit_code
                raise failed from None
            raise
        _point(root, name)
        deleted = to_delete([p.name for p in root.iterdir()], name, keep)
        for old in deleted:
            _remove(root / old)
        index = write_index(root, title)
    return Nightly(name, root / name, previous, deleted, said, index)


def _notes(root: Path, previous: str | None, new: Path, notes: Callable[[Path, Path], str] | None) -> str:
    """Write new's release notes against the previous nightly; say what happened in a few words."""
    if previous is None:
        return "release notes: no previous nightly to compare with"
    if notes is None:
        return "release notes: not asked for"
    text = notes(root / previous, new)
    _write(new / NOTES, text if text.endswith("\n") else text + "\n")
    return f"release notes: {NOTES} (changes since {previous})"


def relock(distro: Distro, ctx: Context, *, strict: bool) -> list[str]:
    """Re-resolve the components that follow a branch (lock --update NAME...); lines saying what moved."""
    assert ctx.manifest is not None
    path = lock.lock_path(ctx.manifest)
    old = lock.read(path)
    names = tracked(distro, old)
    if not names:
        return []
    if ctx.offline:
        return [f"nightly: --offline: branches not re-locked, kept at their locked commits: {', '.join(names)}"]
    with ctx.store.session():
        new, _ = pipeline.resolve_lock(distro, old, ctx, update=names, strict=strict)
        if new != old:
            lock.write(path, new)
        pipeline.register(ctx, distro, new)
    lines = []
    for name in names:
        was = ((old.components.get(name) if old else None) or {}).get("commit")
        now = (new.components.get(name) or {}).get("commit")
        ref = getattr(distro.components[name].source, "ref", "")
        moved = (
            f"{(was or 'unlocked')[:12]} -> {(now or 'left out')[:12]}"
            if was != now
            else f"{(now or '')[:12]} (unchanged)"
        )
        lines.append(f"nightly: re-locked {name} ({ref}): {moved}")
    return lines
