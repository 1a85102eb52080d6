"""The pipeline driver: each stage in order, each reading what the one before left in the store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import build, fetch, lock
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
    if old is not None and not todo:
        return old
    if ctx.offline:
        raise XenspinError(
            f"{path}: {'no lock yet' if old is None else 'stale for ' + ', '.join(todo)}; --offline forbids resolving sources"
        )
    new, report = lock.resolve(distro, old, ctx, strict=strict)
    if new != old:
        lock.write(path, new)
        say(f"lock: resolved {', '.join(report.resolved) or 'nothing'}; wrote {path}")
    return new


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
        plan = build.plan(distro, current, ctx.recipe_dir, names, set(fetched.left_out))
        report = build.Builder(distro, current, ctx, jobs=jobs, say=say).run(plan)
        repo = build.publish(Path(report.repo), out / "repo")
    return Result(sorted(current.components), fetched.left_out, report, repo)


def collect_garbage(distro: Distro, manifest_path: Path, ctx: Context) -> list[Usage]:
    """Remove from the store what the manifest's lock and build plan no longer use."""
    current = lock.read(lock.lock_path(manifest_path)) or lock.Lock()
    keep = fetch.keeps(distro, current, ctx)
    jobs = build.plan(distro, current, ctx.recipe_dir)
    objects = build.Builder(distro, current, ctx).keeps(jobs)
    return ctx.store.gc(set(keep.blobs), set(keep.git), objects)
