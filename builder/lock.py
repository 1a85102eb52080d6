"""distro.lock: every source resolved to exact bytes, so a build can be repeated.

The lock is YAML with sorted keys (stable, diff-friendly) kept beside the manifest
and committed. Entries stay as they are until asked (`lock --update`), as with cargo;
an entry whose recipe changed since it was written is stale and is resolved again.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import dataschema
from .errors import XenspinError, describe
from .manifest import Component, Distro, build_order, require_components
from .sources import Context, FetchError, Refused, debian, module, verified_stamp, write_stamp
from .store import sha256_file, sha256_json

log = logging.getLogger("xenspin.lock")

# The lock file's own format, separate from the cache keys' formats (each stage has its
# own): changing how a stage's output is made never makes a committed lock unreadable.
LOCK_FORMAT = 1

# libyaml's loader when PyYAML has it: a lock with package sets holds thousands of values,
# and the pure-Python parser would be most of a no-op build's time. Same safe semantics.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

HEADER = "# distro.lock: written by `xenspin lock`; commit it. Edit the manifest, not this file.\n"


class LockError(XenspinError):
    pass


@dataclass
class Lock:
    """The parsed lock file: the archive's state and one entry per component."""

    archive: dict[str, Any] = field(default_factory=dict)
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)  # package sets (packagesets.py)
    sources: dict[str, Any] = field(default_factory=dict)  # the shipped sets' Debian sources (debsources.py)


@dataclass
class LockReport:
    """What `xenspin lock` did, for the user."""

    resolved: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)  # package sets resolved
    moved: dict[str, str] = field(default_factory=dict)  # name -> "tag T: OLD -> NEW"
    sources: str = ""  # what the shipped sets' Debian sources were resolved to ("" when not)


def lock_path(manifest_path: Path) -> Path:
    """distro.yaml -> distro.lock; spins/nightly.yaml -> spins/nightly.lock."""
    return Path(manifest_path).with_suffix(".lock")


def read(path: Path) -> Lock | None:
    """The lock at path, or None when there is none yet."""
    if not path.exists():
        return None
    try:
        data = yaml.load(path.read_text(), Loader=_LOADER)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise LockError(
            f"{path}: not a readable lock file ({e.__class__.__name__}); run `xenspin lock --update`"
        ) from None
    if not isinstance(data, dict) or data.get("format") != LOCK_FORMAT:
        raise LockError(f"{path}: not a lock file of format {LOCK_FORMAT}; run `xenspin lock --update`")
    return Lock(
        archive=data.get("archive") or {},
        components=data.get("components") or {},
        sets=data.get("sets") or {},
        sources=data.get("sources") or {},
    )


def write(path: Path, lock: Lock) -> None:
    """Write atomically: a reader sees the old lock or the new one, never half of one."""
    data = {"format": LOCK_FORMAT, "archive": lock.archive, "components": lock.components}
    if lock.sets:
        data["sets"] = lock.sets
    if lock.sources:
        data["sources"] = lock.sources
    text = HEADER + yaml.safe_dump(data, sort_keys=True, default_flow_style=False, width=1000)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise LockError(f"{path}: cannot write: {describe(e)}") from None


def recipe_digest(component: Component, root: Path) -> str:
    """sha256 of the component's source declaration, with paths relative to the manifest's directory.

    Only the source counts: changing build steps rebuilds, but needs no new lock.
    """
    data = dataschema.to_data(component.source, relative_to=root)
    return sha256_json(data)


def key_digests(component: Component, root: Path) -> dict[str, str]:
    """sha256 of each verify.keys file, by path relative to root: a lock entry's trust anchors.

    Part of the entry, so changing (rotating) a key makes the entry stale and its
    signatures are checked again against the new keys.
    """
    verify = getattr(component.source, "verify", None)
    if verify is None:
        return {}
    out = {}
    for key in verify.keys:
        rel = os.path.relpath(key, root)
        out[rel] = sha256_file(Path(key)) if Path(key).is_file() else "missing"
    return out


def stale(distro: Distro, lock: Lock | None, root: Path) -> dict[str, str]:
    """Components whose lock entry is missing or no longer matches the recipe: name -> why."""
    out = {}
    entries = lock.components if lock else {}
    moved = lock is not None and bool(lock.archive) and locked_archives(lock) != distro.base.archives()
    for name, comp in distro.components.items():
        entry = entries.get(name)
        if entry is None:
            out[name] = "not locked"
        elif entry.get("recipe") != recipe_digest(comp, root):
            out[name] = "recipe changed since it was locked"
        elif entry.get("keys", {}) != key_digests(comp, root):
            out[name] = "verify.keys changed since it was locked"
        elif moved and module(comp.source.kind).FOLLOWS_ARCHIVE:
            out[name] = "base archive (mirror, suite or updates) changed since it was locked"
    return out


def locked_archives(lock: Lock) -> list[tuple[str, str]]:
    """(mirror, suite) of each suite the lock's archive state records, base first."""
    states = [lock.archive, *lock.archive.get("updates", [])]
    return [(a.get("mirror", ""), a.get("suite", "")) for a in states]


def resolve(
    distro: Distro,
    old: Lock | None,
    ctx: Context,
    *,
    update: list[str] | None = None,
    strict: bool = False,
    allow_moved_tags: bool = False,
    check_tags: bool = False,
) -> tuple[Lock, LockReport]:
    """A new lock: old entries kept unless stale or named in update ([] = all).

    A tag that now names another commit than the one locked is never re-pinned quietly:
    re-resolving one is refused unless allow_moved_tags; with check_tags, kept tag
    entries are looked up upstream too and a moved one is reported (and kept).
    """
    root = ctx.project
    report = LockReport()
    old = old or Lock()
    changed = stale(distro, old, root)
    require_components(distro, update or [], "lock --update")
    redo = set(distro.components) if update == [] else set(update or []) | set(changed)
    new = Lock(archive=dict(old.archive), sets=dict(old.sets), sources=dict(old.sources))
    for name in build_order(distro):
        comp = distro.components[name]
        if name not in redo:
            new.components[name] = old.components[name]
            report.kept.append(name)
            if check_tags:
                now = module(comp.source.kind).tag_now(name, old.components[name], ctx)
                if now and now != old.components[name]["commit"]:
                    report.moved[name] = _moved(old.components[name], now)
            continue
        if name in changed and changed[name] != "not locked":
            report.stale.append(name)
        try:
            entry = module(comp.source.kind).lock(name, comp.source, ctx)
        except Refused:
            raise
        except FetchError as e:
            if comp.optional and not strict:
                report.left_out[name] = str(e)
                if name in old.components:  # keep what was locked before rather than lose it
                    new.components[name] = old.components[name]
                continue
            raise
        entry["recipe"] = recipe_digest(comp, root)
        if keys := key_digests(comp, root):
            entry["keys"] = keys
        was = old.components.get(name) or {}
        if (
            was.get("kind") == "git"
            and was.get("tag")
            and was["tag"] == entry.get("tag")
            and was["commit"] != entry["commit"]
        ):
            report.moved[name] = _moved(was, entry["commit"])
            if not allow_moved_tags:
                raise Refused(f"lock {name}: {report.moved[name]}; not re-pinned (--allow-moved-tags re-pins it)")
        if module(comp.source.kind).fetched(entry, ctx):
            write_stamp(verified_stamp(ctx, entry))  # locking checked what fetch would
        new.components[name] = entry
        report.resolved.append(name)
    if any(module(distro.components[n].source.kind).FOLLOWS_ARCHIVE for n in report.resolved):
        new.archive = debian.archive_state(ctx)  # the state the new entries were read from
    report.dropped = sorted(set(old.components) - set(distro.components))
    return new, report


def _moved(entry: dict[str, Any], now: str) -> str:
    return f"tag {entry['tag']} moved: {entry['commit']} -> {now}"


def require(distro: Distro, lock: Lock | None, root: Path, names: list[str], path: Path) -> None:
    """Refuse to go on from a lock that does not match the manifest."""
    if lock is None:
        raise LockError(f"{path}: no lock yet; run `xenspin lock`")
    problems = {n: why for n, why in stale(distro, lock, root).items() if n in names}
    missing = {n: why for n, why in problems.items() if not distro.components[n].optional or why != "not locked"}
    if missing:
        listed = ", ".join(f"{n} ({why})" for n, why in sorted(missing.items()))
        raise LockError(f"{path}: stale for {listed}; run `xenspin lock`")


def summary(entry: dict[str, Any]) -> str:
    """A few words on what an entry pins, for `xenspin lock` output."""
    return module(entry["kind"]).summary(entry)
