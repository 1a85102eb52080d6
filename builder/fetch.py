"""Fill the store with exactly what the lock names, verified; offline, only name what is missing."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .lock import Lock
from .manifest import Distro, build_order
from .sources import Context, FetchError, Keeps, Missing, Refused, module, verified_stamp, write_stamp

log = logging.getLogger("xenspin.fetch")


@dataclass
class FetchReport:
    fetched: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)


def fetch(
    distro: Distro, lock: Lock, ctx: Context, names: list[str] | None = None, *, strict: bool = False
) -> FetchReport:
    """Fetch each named component (all when names is None) in build order.

    An optional component with no lock entry, or whose source cannot be had, is
    left out and reported; --strict (strict=True) makes that an error. Offline,
    every missing thing is named in one error rather than the first alone.
    """
    report = FetchReport()
    if names is not None:  # and the components whose source they build (`component:`)
        names = [*names, *(distro.origin(n) for n in names)]
    wanted = build_order(distro) if names is None else [n for n in build_order(distro) if n in names]
    missing: list[str] = []
    for name in wanted:
        comp = distro.components[name]
        entry = lock.components.get(name)
        if entry is None:
            if comp.optional and not strict:
                report.left_out[name] = "not in the lock (its source could not be resolved)"
                continue
            raise FetchError(f"fetch {name}: not in the lock; run `xenspin lock`")
        kind = module(comp.source.kind)
        stamp = verified_stamp(ctx, entry)
        if kind.fetched(entry, ctx) and stamp.is_file():
            report.present.append(name)
            continue
        try:
            kind.fetch(name, comp.source, entry, ctx)
        except Refused:
            stamp.unlink(missing_ok=True)
            raise
        except FetchError as e:
            if comp.optional and not strict:
                report.left_out[name] = str(e)
                continue
            if isinstance(e, Missing):  # offline: keep going, to name everything missing at once
                missing.append(str(e))
                continue
            raise
        write_stamp(stamp)
        report.fetched.append(name)
    if missing:
        raise Missing(f"offline: {len(missing)} missing from the store: " + "; ".join(missing))
    return report


def share(distro: Distro, lock: Lock, ctx: Context, names: list[str]) -> None:
    """The named components' locked sources, from the store to the remote cache (for a build on
    workers, which take them from there and need no upstream): files by sha256, git commits as bundles."""
    remote = ctx.remote
    if remote is None or not remote.writable:
        return
    for name in dict.fromkeys(distro.origin(n) for n in names):
        entry = lock.components.get(name)
        if entry is None or name not in distro.components:
            continue
        module(distro.components[name].source.kind).share(name, entry, ctx)


def keeps(distro: Distro, lock: Lock, ctx: Context) -> Keeps:
    """Everything in the store that the lock still needs (for `store gc`), its verified/ stamps too."""
    blobs: set[str] = set()
    git: set[str] = set()
    stamps: set[str] = set()
    for name, entry in lock.components.items():
        if name in distro.components:
            k = module(distro.components[name].source.kind).keeps(entry, ctx)
            blobs |= k.blobs
            git |= k.git
            stamps.add(verified_stamp(ctx, entry).name)
    return Keeps(frozenset(blobs), frozenset(git), frozenset(stamps))
