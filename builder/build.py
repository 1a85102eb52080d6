"""Component builds: each in a cached Debian build root, under bubblewrap, keyed by its inputs.

Planning (which components, their inputs) is pure and separate from running. Each
component becomes a stage (kind "build") whose key is the sha256 of its canonical
recipe, its locked source, its build root's key, the keys of what it builds after,
the build time stamp and the build format; a second build with nothing changed
finds every key in the store and runs no step. Build roots and unpacked source
trees are lazy stages: made only for a build that must run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import dataschema, debpackage, debtree, outputcheck, overlays, packagesets
from .context import Context
from .debpackage import control_file
from .debtree import TreeSpec
from .errors import XenspinError
from .lock import Lock
from .manifest import Component, Distro, build_order
from .run import CommandError, as_builder, builder, give, run, sandbox, take_back
from .sources import debian_upstream, module, verified_blob
from .sources import path as path_source
from .stage import Needs, Outcome, Stage, stage_key
from .store import remove_tree, sha256_file, tree_digest

log = logging.getLogger("xenspin.build")

# The component build's output format; bump to rebuild every component. 2: each package has its
# copyright file, changelog.Debian.gz, md5sums, Section, Priority and an extended description.
FORMAT = 2
SRC_FORMAT = 2  # the unpacked source tree's layout; 2: its metadata records the tree's digest
# In the step's private /tmp: the build root has no mount points of their own for them.
DEPS = "/tmp/deps"
PATCHES = "/tmp/patches"


class BuildError(XenspinError):
    """A component failed to build; names the component, step, status and log."""


# --- planning (pure) ---------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One component's build, every input known but the keys of what it needs."""

    name: str
    action: str  # "build": run steps; "archive": take locked .debs; "none": nothing to build
    root: TreeSpec | None
    after: tuple[str, ...]
    tree: str  # digest of an in-tree source, else ""
    source: str  # the component whose locked source it builds (itself, or the one `component:` names)
    deps: tuple[str, ...] = ()  # everything it builds after, directly or not: whose .debs it finds at $DEPS


# A recipe field left at its default adds nothing to a key, so a field added to the model
# later (with a default that keeps today's behaviour) rebuilds nothing.
DEFAULTS = {
    dataschema.yaml_key(f): dataschema.to_data(f.default_factory() if f.default is dataclasses.MISSING else f.default)
    for f, _ in dataschema.fields_of(Component)
    if not dataschema.is_required(f)
}


def component_inputs(
    comp: Component,
    entry: dict,
    root: str | None,
    deps: dict[str, str],
    tree: str,
    project: Path,
    epoch: int,
    deb: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The canonical inputs of a component's key: everything that can change what the build produces.

    Paths are relative to project (the manifest's directory), so moving a checkout changes no key.
    deb: what the package takes from the manifest rather than the recipe (`package_facts`).
    """
    recipe = {k: v for k, v in dataschema.to_data(comp, relative_to=project).items() if v != DEFAULTS.get(k)}
    for volatile in ("description", "recipe", "optional"):
        recipe.pop(volatile, None)
    source = {k: v for k, v in entry.items() if k != "recipe"}
    inputs = {"recipe": recipe, "source": source, "tree": tree, "root": root, "after": deps, "epoch": epoch}
    if comp.patches:
        inputs["patches"] = [sha256_file(Path(p)) for p in comp.patches]
    if deb:
        inputs["deb"] = deb
    return inputs


def component_key(
    comp: Component,
    entry: dict,
    root: str | None,
    deps: dict[str, str],
    tree: str,
    project: Path,
    epoch: int,
    deb: dict[str, str] | None = None,
) -> str:
    return stage_key(FORMAT, component_inputs(comp, entry, root, deps, tree, project, epoch, deb))


def package_facts(distro: Distro, comp: Component, entry: dict) -> dict[str, str]:
    """What a component's package takes from the manifest (not the recipe): the maintainer, the
    changelog's suite and, for a source released with the distribution (in-tree), its version.
    Part of the key: a package changes only with its key. {} when the component makes no package."""
    if comp.package is None:
        return {}
    facts = {"maintainer": maintainer(distro), "suite": distro.base.suite}
    if module(entry["kind"]).DISTRIBUTION_VERSION:
        facts["version"] = distro.version
    return facts


def maintainer(distro: Distro) -> str:
    return f"{distro.vendor or distro.name} <builds@{distro.name}.invalid>"


def plan(
    distro: Distro, lock: Lock, names: list[str] | None = None, left_out: set[str] = frozenset()
) -> dict[str, Job]:
    """Jobs in build order for the named components and what they need (all when None).

    Components with no lock entry or left out by the fetch (optional ones whose
    source could not be had) get no job; a job after such a component is planned
    without it.
    """
    wanted = closure(distro, names) if names else set(distro.components)
    jobs: dict[str, Job] = {}
    for name in build_order(distro):
        comp = distro.components[name]
        src = distro.origin(name)
        entry = lock.components.get(src)
        if name not in wanted or entry is None or name in left_out or src in left_out:
            continue
        kind = module(distro.components[src].source.kind)
        here = kind.in_tree(distro.components[src].source)
        tree = path_source.digest(here) if here is not None else ""
        if kind.debs(entry) is not None:
            action, root = "archive", None
        elif comp.steps:
            action, root = "build", packagesets.root_tree(lock, comp.build_depends)
        else:
            action, root = "none", None
        after = tuple(d for d in comp.after if d in jobs)
        deps = sorted({d for a in after for d in (a, *jobs[a].deps)})
        jobs[name] = Job(name, action, root, after, tree, src, tuple(deps))
    return jobs


def closure(distro: Distro, names: list[str]) -> list[str]:
    """names and everything they build after."""
    out: set[str] = set()
    todo = list(names)
    while todo:
        n = todo.pop()
        if n not in out:
            out.add(n)
            todo.extend(distro.components[n].after)
    return sorted(out)


def package_version(entry: dict, key: str, release: str = "") -> str:
    """A Debian version that says where the bytes came from and changes with the key.

    The upstream version is the source's (4.20.4 for Xen at tag RELEASE-4.20.4, see each
    kind's upstream_version; an in-tree source's is the distribution's own, release: the
    manifest's `version:`), so apt, an SBOM or a scanner reads the release; the build key
    is the Debian revision (4.20.4-xs0123456789): every rebuild changes the version, yet
    it sorts with the upstream version first.
    """
    kind = module(entry["kind"])
    upstream = (debian_upstream(release) or "0") if kind.DISTRIBUTION_VERSION else kind.upstream_version(entry)
    return f"{upstream}-xs{key[:10]}"


def source_ident(entry: dict) -> dict[str, Any]:
    """The inputs of a locked source's unpacked tree: the entry, less the recipe digest."""
    return {"source": {k: v for k, v in entry.items() if k != "recipe"}}


def build_id(name: str) -> str:
    return f"build:{name}"


def src_id(name: str) -> str:
    return f"src:{name}"


# --- the stages --------------------------------------------------------------------


def stages(
    ctx: Context, distro: Distro, lock: Lock, jobs: dict[str, Job], say: Callable[[str], None] | None = None
) -> list[Stage]:
    """The stages that build jobs: one per component, plus the build roots and source trees they use."""
    say = say or ctx.say
    epoch = ctx.source_date_epoch(lock.archive)
    out: list[Stage] = []
    roots: dict[str, Stage] = {}
    trees: set[str] = set()
    for name, job in jobs.items():
        comp, entry = distro.components[name], lock.components[job.source]
        uses: list[str] = []
        if job.root is not None:
            rid = debtree.root_stage_id(job.root)
            if rid not in roots:
                roots[rid] = debtree.root_stage(ctx, job.root, say)
            uses.append(rid)
            shared = distro.components[job.source]
            if module(shared.source.kind).in_tree(shared.source) is None:
                uses.append(src_id(job.source))
                if job.source not in trees:  # one tree for every component building this source
                    trees.add(job.source)
                    out.append(_src_stage(ctx, job.source, shared, entry))

        deb = package_facts(distro, comp, entry) if job.action == "build" else {}

        def inputs(needs: Needs, comp=comp, entry=entry, job=job, deb=deb) -> dict[str, Any]:
            root = needs[debtree.root_stage_id(job.root)].key if job.root is not None else None
            deps = {d: needs[build_id(d)].key for d in job.after}
            return component_inputs(comp, entry, root, deps, job.tree, ctx.project, epoch, deb)

        def make(tmp: Path, needs: Needs, comp=comp, entry=entry, job=job, inputs=inputs) -> dict:
            given = inputs(needs)
            key = stage_key(FORMAT, given)
            return _make_build(ctx, distro, job, comp, entry, needs, tmp, key, epoch, say, given.get("patches", []))

        out.append(
            Stage(
                kind="build",
                name=name,
                format=FORMAT,
                inputs=inputs,
                make=make,
                after=tuple(build_id(d) for d in (job.deps if job.action == "build" else job.after)),
                uses=tuple(uses),
            )
        )
    return [*roots.values(), *out]


def _src_stage(ctx: Context, name: str, comp: Component, entry: dict) -> Stage:
    """The unpacked source tree: its digest recorded when made, checked each time a build takes it.

    A tree changed in the store since (a byte of a file, a file added, a link retargeted)
    is removed with a warning and unpacked again from the verified sources.
    """

    def make(tmp: Path, _needs: Needs) -> dict:
        tree = module(comp.source.kind).tree(entry, ctx, tmp)
        top = os.path.relpath(tree, tmp)
        return {"top": "" if top == "." else top, "tree": tree_digest(tmp)}

    def check(path: Path, meta: dict) -> bool:
        try:
            if tree_digest(path) == meta.get("tree"):
                return True
        except OSError:  # a file made unreadable, a directory made a file: changed all the same
            pass
        where = path.relative_to(ctx.store.root)
        ctx.say(
            f"warning: {where}: the source tree of {name} changed since it was unpacked; removed it, unpacking again"
        )
        return False

    return Stage(
        kind="src",
        name=name,
        format=SRC_FORMAT,
        inputs=lambda _needs: source_ident(entry),
        make=make,
        lazy=True,
        check=check,
    )


def _make_build(
    ctx: Context,
    distro: Distro,
    job: Job,
    comp: Component,
    entry: dict,
    needs: Needs,
    tmp: Path,
    key: str,
    epoch: int,
    say: Callable[[str], None],
    patches: list[str],
) -> dict:
    """Run the component's steps (or take its locked .debs) into tmp; record the .debs and their digests.

    patches: the sha256 of each patch file as the key took it; the steps get those bytes or nothing.
    """
    short = key[:12]
    start = time.monotonic()
    if job.action != "none":
        say(f"build {job.name} ({short})")
    debs: dict[str, str] = {}  # file name -> sha256, in order
    if job.action == "archive":
        for name, sha in sorted((module(comp.source.kind).debs(entry) or {}).items()):
            os.link(verified_blob(ctx.store, sha, f"build {job.name}: {name}"), tmp / name)
            debs[name] = sha
    elif job.action == "build":
        logs = ctx.store.log_dir("build", job.name, short)
        staged = _steps(ctx, distro, job, comp, entry, needs, tmp, epoch, logs, patches)
        # Packages the steps made themselves (dpkg-buildpackage) come first, then the staged tree's.
        made = sorted((tmp / "debs").glob("*.deb"))
        for deb in made:
            os.replace(deb, tmp / deb.name)
        shutil.rmtree(tmp / "debs")
        names = [d.name for d in made]
        if comp.package is not None:
            src, root = _src_and_root(distro, job, needs)
            given_patches = [
                (f"{i:02d}-{Path(p).name}", d) for i, (p, d) in enumerate(zip(comp.patches, patches, strict=True), 1)
            ]
            deb = _package(distro, job, comp, entry, staged, tmp, key, epoch, logs, src, root, tuple(given_patches))
            names.append(deb)
        debs = {n: sha256_file(tmp / n) for n in names}
        say(f"built {job.name} in {round(time.monotonic() - start, 1)} s")
    return {"component": job.name, "action": job.action, "debs": list(debs), "sha256": debs}


def _steps(
    ctx: Context,
    distro: Distro,
    job: Job,
    comp: Component,
    entry: dict,
    needs: Needs,
    tmp: Path,
    epoch: int,
    logs: Path,
    patch_digests: list[str],
) -> Path:
    src, root = _src_and_root(distro, job, needs)
    out, debs = tmp / "staged", tmp / "debs"
    scratch = ctx.store.tmp_dir("scratch-" + job.name)
    out.mkdir()
    debs.mkdir()
    ro = {"/src": src}
    env = {
        **comp.env,  # the recipe's own variables; the manifest refuses any name of xenspin's below
        "SRC": "/src",
        "OUT": "/out",
        "DEBS": "/debs",
        "BUILD": "/build",
        "HOME": "/build",
        "JOBS": str(os.cpu_count() or 1),
        "LC_ALL": "C.UTF-8",
        "SOURCE_DATE_EPOCH": str(epoch),
    }
    if files := module(comp.source.kind).srcpkg(entry):
        # The whole source package too (.dsc, orig and debian tarballs), for dpkg-source/dpkg-buildpackage.
        srcpkg = tmp / "srcpkg"
        srcpkg.mkdir()
        for filename, sha in files.items():
            os.link(verified_blob(ctx.store, sha, f"build {job.name}: {filename}"), srcpkg / filename)
        ro["/srcpkg"] = srcpkg
        env["SRCPKG"] = "/srcpkg"
    if comp.patches:
        # Copies, numbered in the recipe's order: what the key was computed from, whatever the project does next.
        patches = tmp / "patches"
        patches.mkdir()
        for i, (p, digest) in enumerate(zip(comp.patches, patch_digests, strict=True), 1):
            copy = patches / f"{i:02d}-{Path(p).name}"
            if _copy_regular(Path(os.path.realpath(p)), copy) != digest:  # not what the key names
                raise XenspinError(f"build {job.name}: patch {p} changed while the build started; build again")
        ro[PATCHES] = patches
        env["PATCHES"] = PATCHES
    if job.deps:
        # What it builds after, as packages: a step unpacks or inspects them (dpkg-deb -x), never installs them.
        deps = tmp / "deps"
        deps.mkdir()
        for d in job.deps:
            done = needs[build_id(d)]
            assert done.path is not None and done.meta is not None
            for filename, sha in done.meta.get("sha256", {}).items():
                os.link(done.path / filename, deps / filename)
                if sha256_file(deps / filename) != sha:  # changed in the store since it was built
                    raise BuildError(
                        f"build {job.name}: {filename} of {d} changed in the store since it was built"
                        f" (remove {done.path} and build again)"
                    )
        ro[DEPS] = deps
        env["DEPS"] = DEPS
    prefix = sandbox(root, ro=ro, rw={"/out": out, "/debs": debs, "/build": scratch}, env=env, cwd="/build")
    who = builder()
    for d in (out, debs, scratch):
        give(d, who)
    try:
        for i, step in enumerate(comp.steps, 1):
            log_path = logs / f"{i:02d}-{step.name}.log"
            try:
                run(
                    as_builder(
                        [*prefix, "/bin/sh", "-e", "-c", step.run],
                        who,
                        reach=[root, *ro.values(), out, debs, scratch],
                        hide=[ctx.store.root],
                    ),
                    what=f"build {job.name}: step {step.name}",
                    log_path=log_path,
                )
            except CommandError as e:
                raise BuildError(str(e)) from None
            outputcheck.check(
                job.name,
                step.name,
                out,
                debs,
                packages=comp.debs,
                architecture=ctx.base.architecture,
                setuid=comp.setuid,
            )
    finally:
        remove_tree(scratch)
        shutil.rmtree(tmp / "srcpkg", ignore_errors=True)
        shutil.rmtree(tmp / "deps", ignore_errors=True)
        shutil.rmtree(tmp / "patches", ignore_errors=True)
        if who.switches:  # what the build account wrote becomes root's before the host packs it
            take_back(out)
            take_back(debs)
    for rel in comp.outputs:
        if not (out / rel).exists():
            raise BuildError(f"build {job.name}: the steps did not produce {rel} (listed in outputs); logs: {logs}")
    return out


def _src_and_root(distro: Distro, job: Job, needs: Needs) -> tuple[Path, Path]:
    """The source tree a build job reads at /src and its build root (both in the store, or the source in-tree)."""
    assert job.root is not None
    root = needs[debtree.root_stage_id(job.root)].path
    shared = distro.components[job.source].source
    src = needs[src_id(job.source)].path if src_id(job.source) in needs else module(shared.kind).in_tree(shared)
    assert root is not None and src is not None
    return src, root


def _package(
    distro: Distro,
    job: Job,
    comp: Component,
    entry: dict,
    staged: Path,
    tmp: Path,
    key: str,
    epoch: int,
    logs: Path,
    src: Path | None = None,
    root: Path | None = None,
    patches: tuple[tuple[str, str], ...] = (),
) -> str:
    """The staged tree as the component's .deb, with what a Debian package says of itself.

    src: the source tree the build read (its licence files); root: the build root (its common
    licences); patches: (name at $PATCHES, sha256) of each patch given to the steps.
    """
    assert comp.package is not None
    name, arch = comp.package.name, distro.base.architecture
    facts = package_facts(distro, comp, entry)  # as the key took them
    version = package_version(entry, key, facts.get("version", ""))
    debian = staged / "DEBIAN"
    check_debian(job.name, debian)
    provenance = module(entry["kind"]).provenance(entry)
    if job.tree:  # an in-tree source: the content of the tree, which the lock entry does not pin
        provenance = dataclasses.replace(provenance, pinned=f"{provenance.pinned}, tree sha256 {job.tree}")
    maint = facts["maintainer"]
    built = debpackage.Built(name, version, maint, facts["suite"], epoch, key, provenance, patches)
    try:
        doc = debpackage.doc_dir(job.name, staged, name)
    except debpackage.PackageError as e:
        raise BuildError(str(e)) from None
    upstream = debpackage.licence_files(src) if src is not None else []
    text = debpackage.copyright_file(
        job.source, name, comp.license, provenance, upstream, debpackage.common_licences(root)
    )
    write_new(doc / "copyright", text.encode())
    write_new(doc / "changelog.Debian.gz", debpackage.changelog(built))
    write_new(debian / "control", control_file(comp, version, arch, maint, provenance.pinned).encode())
    write_new(debian / "md5sums", debpackage.md5sums(staged))
    # os.walk does not descend into symlinked directories, and utime changes a link, never its target.
    for dirpath, dirs, files in os.walk(staged):
        for path in dirs + files:
            os.utime(os.path.join(dirpath, path), (epoch, epoch), follow_symlinks=False)
    deb = f"{name}_{version}_{arch}.deb"
    run(
        ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", staged, tmp / deb],
        what=f"build {job.name}: package",
        log_path=logs / "package.log",
        env={"SOURCE_DATE_EPOCH": str(epoch)},
    )
    shutil.rmtree(staged)
    return deb


def check_debian(component: str, debian: Path) -> None:
    """$OUT/DEBIAN is a real directory holding regular files only (made if missing); else one line.

    A step wrote it: a symlink there (DEBIAN/control -> /etc/passwd) would have packaging
    write through it, or dpkg-deb read a host file into the package.
    """
    try:
        mode = debian.lstat().st_mode
    except FileNotFoundError:
        debian.mkdir()
        return
    if not stat.S_ISDIR(mode):
        raise BuildError(
            f"build {component}: package: $OUT/DEBIAN is {outputcheck.kind_of(mode)} (expected a directory of regular files)"
        )
    for name in sorted(os.listdir(debian)):
        mode = os.lstat(debian / name).st_mode
        if not stat.S_ISREG(mode):
            raise BuildError(
                f"build {component}: package: $OUT/DEBIAN/{outputcheck.printable(name)} is {outputcheck.kind_of(mode)}"
                " (expected only regular files in $OUT/DEBIAN)"
            )


def write_new(path: Path, data: bytes) -> None:
    """Replace path by a new regular file: what was there is removed first, and the new one made
    exclusively without following a symlink, so nothing a step left there is written through."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


# --- the report --------------------------------------------------------------------


@dataclass
class BuildReport:
    built: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)  # found in the store or the remote cache
    remote: list[str] = field(default_factory=list)  # of those, taken from the remote cache in this run
    nothing: list[str] = field(default_factory=list)
    debs: dict[str, list[str]] = field(default_factory=dict)  # component -> .deb paths
    seconds: dict[str, float] = field(default_factory=dict)
    workers: dict[str, str] = field(default_factory=dict)  # component -> the Dask worker that built it
    repo: str = ""


def report(outcomes: dict[str, Outcome], jobs: dict[str, Job]) -> BuildReport:
    """What the build stages did, in build order."""
    rep = BuildReport()
    for name, job in jobs.items():
        o = outcomes[build_id(name)]
        if job.action == "none":
            rep.nothing.append(name)
        elif o.made:
            rep.built.append(name)
            rep.seconds[name] = o.seconds
            if o.worker:
                rep.workers[name] = o.worker
        else:
            rep.cached.append(name)
            if o.remote:
                rep.remote.append(name)
        assert o.done.path is not None and o.done.meta is not None
        rep.debs[name] = [str(o.done.path / d) for d in o.done.meta["debs"]]
    return rep


def digests(outcomes: Needs, jobs: dict[str, Job]) -> list[str]:
    """The recorded sha256 of every .deb the builds hold (no .deb is read)."""
    return [d for name in jobs if (meta := outcomes[build_id(name)].meta) for d in meta["sha256"].values()]


def _copy_regular(src: Path, dest: Path) -> str:
    """Copy the regular file src (opened without following a link: a swap since the manifest was
    checked is refused) to dest; the sha256 of the bytes copied."""
    h = hashlib.sha256()
    with overlays.open_regular(src, "a recipe's patches") as f, open(dest, "wb") as out:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest()
