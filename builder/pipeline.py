"""The pipeline driver: each stage in order, each reading what the one before left in the store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import build, fetch, lock, packagesets, rootfs
from .errors import XenspinError
from .manifest import Distro
from .sources import Context
from .store import Usage


@dataclass
class Result:
    """What `xenspin build` did, stage by stage."""

    locked: list[str]
    left_out: dict[str, str]
    build: build.BuildReport
    repo: Path
    rootfs: rootfs.Made | None = None


def current_lock(distro: Distro, path: Path, ctx: Context, *, strict: bool, say: Callable[[str], None]) -> lock.Lock:
    """The lock, resolving only what it lacks or what went stale (as `cargo build` does).

    Optional components that could not be locked stay out until `xenspin lock` is run
    again, so an unreachable upstream costs nothing on every build.
    """
    old = lock.read(path)
    todo = [
        name
        for name, why in lock.stale(distro, old, ctx.recipe_dir).items()
        if not distro.components[name].optional or why != "not locked"
    ]
    if old is not None and not todo and not packagesets.stale_sets(distro, old):
        return old
    if ctx.offline:
        what = "no lock yet" if old is None else "stale for " + ", ".join(todo or ["its package sets"])
        raise XenspinError(f"{path}: {what}; --offline forbids resolving sources")
    new, report = resolve_lock(distro, old, ctx, update=None, strict=strict)
    if new != old:
        lock.write(path, new)
        say(f"lock: resolved {', '.join(report.resolved + report.sets) or 'nothing'}; wrote {path}")
    return new


def resolve_lock(
    distro: Distro, old: lock.Lock | None, ctx: Context, *, update: list[str] | None, strict: bool
) -> tuple[lock.Lock, lock.LockReport]:
    """Components first, then the package sets that follow from them (apt over the verified indexes)."""
    new, report = lock.resolve(distro, old, ctx, update=update, strict=strict)
    names = list(packagesets.package_sets(distro, new)) if update == [] else packagesets.stale_sets(distro, new)
    if names:
        new.sets = packagesets.resolve_all(distro, new, ctx, names)
        report.sets = names
    return new, report


def run_build(
    distro: Distro,
    manifest_path: Path,
    ctx: Context,
    *,
    names: list[str] | None,
    jobs: int,
    strict: bool,
    out: Path,
    say: Callable[[str], None],
) -> Result:
    """Lock, fetch, build, publish the apt repository to out/repo."""
    with ctx.store.session():
        current = current_lock(distro, lock.lock_path(manifest_path), ctx, strict=strict, say=say)
        wanted = build.closure(distro, names) if names else None
        fetched = fetch.fetch(distro, current, ctx, wanted, strict=strict)
        if names is None:
            fetch_sets(current, ctx, say)
        plan = build.plan(distro, current, ctx.recipe_dir, names, set(fetched.left_out))
        report = build.Builder(distro, current, ctx, jobs=jobs, say=say).run(plan)
        repo = build.publish(Path(report.repo), out / "repo")
        made = None
        if names is None:
            made = rootfs.obtain(rootfs_inputs(distro, current, ctx, plan), ctx.store, built_debs(report, plan), say)
    return Result(sorted(current.components), fetched.left_out, report, repo, made)


def fetch_sets(current: lock.Lock, ctx: Context, say: Callable[[str], None]) -> None:
    """The locked package sets' .debs into the store, verified by sha256."""
    report = packagesets.fetch(current, ctx)
    if report.fetched:
        say(f"fetch: {len(report.fetched)} locked .debs of the package sets")


def rootfs_inputs(distro: Distro, current: lock.Lock, ctx: Context, plan: dict[str, build.Job]) -> rootfs.Inputs:
    """The rootfs stage's inputs: the lock, and the keys of the components whose .debs go in."""
    built = {name: job.key for name, job in plan.items() if job.action != "none"}
    return rootfs.Inputs(distro, current, built, ctx.recipe_dir or Path.cwd(), build.source_date_epoch(current))


def built_debs(report: build.BuildReport, plan: dict[str, build.Job]) -> list[Path]:
    return [Path(d) for name in sorted(plan) for d in report.debs.get(name, [])]


def collect_garbage(distro: Distro, manifest_path: Path, ctx: Context) -> list[Usage]:
    """Remove from the store what the manifest's lock and build plan no longer use."""
    current = lock.read(lock.lock_path(manifest_path)) or lock.Lock()
    keep = fetch.keeps(distro, current, ctx)
    jobs = build.plan(distro, current, ctx.recipe_dir)
    objects = build.Builder(distro, current, ctx).keeps(jobs)
    if not packagesets.stale_sets(distro, current):
        objects.add((rootfs.KIND, rootfs_inputs(distro, current, ctx, jobs).key))
    return ctx.store.gc(set(keep.blobs) | packagesets.keeps(current), set(keep.git), objects)
