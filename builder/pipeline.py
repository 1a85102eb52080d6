"""The pipeline driver: lock, fetch, then one graph of stages run in dependency order.

`graph` is the whole build as stages (component builds with their build roots and
source trees, the apt repository; later the rootfs and the ISO). `xenspin build`
runs it, `xenspin plan` shows it, `xenspin store gc` keeps what it uses. A new
stage is a node added here, reading earlier stages' outputs through its needs.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import aptrepo, build, debsources, fetch, iso, lock, packagesets, rootfs, sbom, srcrelease, xensource
from .context import Context
from .errors import XenspinError
from .manifest import Distro
from .stage import Dispatch, Needs, Outcome, Pending, Planned, Scheduler, Stage, resolve
from .store import GcResult, Root, sha256_file

REPO = "repo:repo"


@dataclass
class Result:
    """What `xenspin build` did, stage by stage."""

    locked: list[str]
    left_out: dict[str, str]
    build: build.BuildReport
    repo: Path
    rootfs: Outcome | None = None  # None: a partial build (COMP named), no rootfs
    iso: Outcome | None = None  # None: a partial build, no ISO
    published: list[Path] = field(default_factory=list)  # the ISO and its companions in out/
    sources: Outcome | None = None  # the source release's stage, when asked for
    source_dir: Path | None = None  # where it was published: out/NAME-VERSION-source


def graph(
    ctx: Context,
    distro: Distro,
    current: lock.Lock,
    names: list[str] | None = None,
    left_out: set[str] = frozenset(),
) -> tuple[list[Stage], dict[str, build.Job]]:
    """Every stage of a build of distro at the locked sources, and the component jobs among them."""
    jobs = build.plan(distro, current, names, left_out)
    stages = build.stages(ctx, distro, current, jobs)
    shipped = {n: j for n, j in jobs.items() if not distro.components[n].build_only}
    after = tuple(build.build_id(n) for n in shipped)

    def repo_inputs(needs: Needs) -> dict:
        if any(needs[a].meta is None for a in after):
            raise Pending("the repository's key is the digests of .debs not built yet")
        return {"debs": sorted(build.digests(needs, shipped))}

    def repo_make(tmp: Path, needs: Needs) -> dict:
        debs = [needs[a].path / d for a in after for d in needs[a].meta["debs"]]  # type: ignore[operator,index]
        return aptrepo.make(tmp, debs, distro.name)

    stages.append(Stage("repo", "repo", aptrepo.FORMAT, repo_inputs, repo_make, after=after))
    if names is None and "rootfs" in packagesets.package_sets(distro, current):
        stages.append(rootfs.stage(ctx, distro, current, shipped, build.build_id))
        stages += iso_stages(ctx, distro, current, shipped)
    return stages, jobs


def iso_stages(ctx: Context, distro: Distro, current: lock.Lock, jobs: dict[str, build.Job]) -> list[Stage]:
    """The ISO after the rootfs and the guest tool builds, its boot loaders from the locked `iso` set.

    Without a locked set (a lock from before sets) the host's boot loaders are used.
    """
    guest = {n: build.build_id(n) for n, j in jobs.items() if n.startswith(iso.GUEST_PREFIX) and j.action == "build"}
    files = packagesets.files(current, "iso")
    out: list[Stage] = []
    loaders: iso.Loaders | str
    if files:
        ld = iso.loaders_stage(ctx.store, files)
        out.append(ld)
        loaders = ld.id
    else:
        loaders = iso.host_loaders()
    epoch = ctx.source_date_epoch(current.archive)
    out.append(iso.stage(distro, rootfs.STAGE_ID, guest, loaders, epoch, ctx.store))
    builds = {n: build.build_id(n) for n in jobs}
    out.append(
        sbom.stage(
            distro, current, epoch=epoch, iso_id=iso.STAGE_ID, rootfs_id=rootfs.STAGE_ID, builds=builds, store=ctx.store
        )
    )
    return out


def current_lock(
    distro: Distro, path: Path, ctx: Context, *, strict: bool, say: Callable[[str], None], sources: bool = False
) -> lock.Lock:
    """The lock, resolving only what it lacks or what went stale (as `cargo build` does).

    With sources (a build writing a source release), the Debian sources of the package sets
    too (debsources.py). Optional components that could not be locked stay out until
    `xenspin lock` is run again, so an unreachable upstream costs nothing on every build.
    """
    old = lock.read(path)
    todo = [
        name
        for name, why in lock.stale(distro, old, ctx.project).items()
        if not distro.components[name].optional or why != "not locked"
    ]
    stale_sources = sources and old is not None and debsources.stale(old)
    if old is not None and not todo and not packagesets.stale_sets(distro, old) and not stale_sources:
        return old
    if ctx.offline:
        what = "no lock yet" if old is None else "stale for " + ", ".join(todo or ["its package sets"])
        if old is not None and not todo and not packagesets.stale_sets(distro, old):
            what = "without the Debian sources of its package sets (`xenspin lock` adds them)"
        raise XenspinError(f"{path}: {what}; --offline forbids resolving sources")
    new, report = resolve_lock(distro, old, ctx, update=None, strict=strict)
    if new != old:
        lock.write(path, new)
        done = report.resolved + report.sets + (["the Debian sources of the package sets"] if report.sources else [])
        say(f"lock: resolved {', '.join(done) or 'nothing'}; wrote {path}")
    return new


def resolve_lock(
    distro: Distro, old: lock.Lock | None, ctx: Context, *, update: list[str] | None, strict: bool, **options: bool
) -> tuple[lock.Lock, lock.LockReport]:
    """Components first (options go to lock.resolve), then the package sets that follow from them."""
    new, report = lock.resolve(distro, old, ctx, update=update, strict=strict, **options)
    names = list(packagesets.package_sets(distro, new)) if update == [] else packagesets.stale_sets(distro, new)
    if names:
        new.sets = packagesets.resolve_all(distro, new, ctx, names)
        report.sets = names
    if update == [] or debsources.stale(new):
        new.sources = debsources.resolve(new, ctx, again=update == [])
        report.sources = debsources.summary(new) if new.sources else ""
    xensource.check(distro, new, str(ctx.manifest or "the manifest"))  # before the lock is written
    return new, report


def fetch_sets(current: lock.Lock, ctx: Context, only: set[str] | None = None) -> packagesets.SetFetch:
    """The locked package sets' .debs (of the sets named in only) into the store, verified by sha256."""
    report = packagesets.fetch(current, ctx, only=only)
    if report.fetched:
        ctx.say(f"fetch: {len(report.fetched)} locked .debs of the package sets")
    return report


def run_build(
    distro: Distro,
    ctx: Context,
    *,
    names: list[str] | None,
    jobs: int,
    strict: bool,
    out: Path,
    sources: bool = False,
    workers: Callable[..., contextlib.AbstractContextManager[Dispatch]] | None = None,
) -> Result:
    """Lock, fetch, run the stage graph, publish the apt repository to out/repo (with sources, the
    source release to out/NAME-VERSION-source too). With workers (workers.pool for a Dask
    scheduler), stages neither the store nor the remote cache holds are made on its workers."""
    assert ctx.manifest is not None
    with ctx.store.session():
        path = lock.lock_path(ctx.manifest)
        current = current_lock(distro, path, ctx, strict=strict, say=ctx.say, sources=sources)
        xensource.check(distro, current, str(ctx.manifest))  # a lock kept from before is held to it too
        wanted = build.closure(distro, names) if names else None
        fetched = fetch.fetch(distro, current, ctx, wanted, strict=strict)
        # every set for a whole build; only the build roots of the named components (and what they build after)
        fetch_sets(
            current, ctx, None if wanted is None else set(packagesets.root_sets(distro, current, set(wanted)).values())
        )
        stages, comp_jobs = graph(ctx, distro, current, names, set(fetched.left_out))
        if sources:
            stages.append(source_release(distro, ctx, current, path, fetched.left_out, strict=strict))
        distribute = workers or (lambda *_a, **_k: contextlib.nullcontext())
        with distribute(
            ctx,
            distro,
            current,
            stages,
            skip=(ctx.store.root, out),
            mirrors=dict(ctx.mirrors),
            epoch=ctx.epoch,
            names=names,
            left_out=sorted(fetched.left_out),
            strict=strict,
            client=socket.gethostname(),
        ) as pool:
            # with workers, each thread here only waits for one: as many as stages may run at once
            threads = max(jobs, len(stages)) if pool is not None else jobs
            outcomes = Scheduler(ctx.store, stages, jobs=threads, remote=ctx.remote, dispatch=pool).run()
        report = build.report(outcomes, comp_jobs)
        repo_path = outcomes[REPO].done.path
        assert repo_path is not None
        report.repo = str(repo_path)
        made = outcomes.get(rootfs.STAGE_ID)
        image = outcomes.get(iso.STAGE_ID)
        files: list[Path] = []
        released = outcomes.get(srcrelease.STAGE_ID)
        source_dir = None
        with aptrepo.out_lock(out):  # one build's repo, ISO and sums together, never a mix of two
            published = aptrepo.publish(repo_path, out / "repo")
            if image is not None:
                files = publish_iso(distro, ctx, current, outcomes, fetched.left_out, out)
            if released is not None and released.done.path is not None:
                source_dir = srcrelease.publish(released.done.path, out)
        # The whole plan's root, even when only some components were asked for.
        ctx.store.register(gc_root(ctx, distro, current, resolve(ctx.store, stages) if names is None else None))
    return Result(
        sorted(current.components), fetched.left_out, report, published, made, image, files, released, source_dir
    )


def source_release(
    distro: Distro, ctx: Context, current: lock.Lock, path: Path, left_out: dict[str, str], *, strict: bool
) -> Stage:
    """The source release's stage, after fetching the Debian sources' files it holds (what cannot be had is
    listed in it; with strict, it fails the build before anything is built)."""
    gaps = srcrelease.fetch(current, ctx)
    if gaps.fetched:
        ctx.say(f"fetch: {gaps.fetched} files of the Debian sources for the source release")
    lacking = srcrelease.incomplete(current, gaps)
    if strict and lacking:
        shown = ", ".join(lacking[:10]) + (f" and {len(lacking) - 10} more" if len(lacking) > 10 else "")
        raise XenspinError(f"--strict: the source release would lack {len(lacking)} Debian sources: {shown}")
    return srcrelease.stage(ctx, distro, current, path, gaps, left_out)


def publish_iso(
    distro: Distro,
    ctx: Context,
    current: lock.Lock,
    outcomes: dict[str, Outcome],
    left_out: dict[str, str],
    out: Path,
) -> list[Path]:
    """Put the ISO, guest-tools.iso, packages.json, the SBOM, build-info.json and SHA256SUMS in out/."""
    assert ctx.manifest is not None
    done = outcomes[iso.STAGE_ID].done
    assert done.path is not None and done.meta is not None
    made = iso.made(done.path, done.meta)
    squashfs = outcomes[rootfs.STAGE_ID].done
    sizes = {made.iso.name: made.info["size"]}
    if squashfs.path is not None:
        sizes["rootfs.squashfs"] = (squashfs.path / "rootfs.squashfs").stat().st_size
    if made.guest_iso is not None:
        sizes["guest-tools.iso"] = made.guest_iso.stat().st_size
    lock_file = lock.lock_path(ctx.manifest)
    info = iso.build_info(
        distro,
        made,
        lock_sha256=sha256_file(lock_file) if lock_file.is_file() else "",
        stages={sid: {"key": o.done.key, "made": o.made, "seconds": o.seconds} for sid, o in sorted(outcomes.items())},
        sizes=sizes,
        left_out=left_out,
        epoch=ctx.source_date_epoch(current.archive),
        xen=xensource.origins(distro, current),
    )
    bom = outcomes[sbom.STAGE_ID].done
    assert bom.path is not None and bom.meta is not None
    return iso.publish(made, out, info, extra=[bom.path / bom.meta["file"]])


def planned(ctx: Context, distro: Distro, current: lock.Lock, *, remote: bool = False) -> list[Planned]:
    """The stage graph with each key and whether the store has it (nothing is run); with remote, the cache too."""
    stages, _ = graph(ctx, distro, current)
    return resolve(ctx.store, stages, ctx.remote if remote else None)


def gc_root(ctx: Context, distro: Distro, current: lock.Lock, graph: list[Planned] | None = None) -> Root:
    """What the manifest's lock and stage graph use: its gc root in the store."""
    assert ctx.manifest is not None
    keep = fetch.keeps(distro, current, ctx)
    graph = planned(ctx, distro, current) if graph is None else graph
    objects = frozenset((p.stage.kind, p.key) for p in graph if p.key)
    blobs = keep.blobs | packagesets.keeps(current) | debsources.keeps(current)
    return Root(ctx.manifest, blobs, keep.git, objects, keep.stamps)


def register(ctx: Context, distro: Distro, current: lock.Lock | None) -> None:
    """Register the manifest's gc root (lock, fetch and build do): a gc for another manifest keeps it."""
    if current is not None:
        ctx.store.register(gc_root(ctx, distro, current))


def collect_garbage(distro: Distro, ctx: Context, *, older_than_days: float | None = None) -> GcResult:
    """Remove from the store what no manifest building into it still uses (the union of live gc roots)."""
    assert ctx.manifest is not None
    current = lock.read(lock.lock_path(ctx.manifest)) or lock.Lock()
    return ctx.store.gc(gc_root(ctx, distro, current), older_than_days=older_than_days)
