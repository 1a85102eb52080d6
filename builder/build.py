"""Component builds: each in a cached Debian build root, under bubblewrap, keyed by its inputs.

Planning (keys, what runs) is pure and separate from running. A component's key is
the sha256 of its canonical recipe, its locked source, its build root's key, the keys
of what it builds after, and the builder's format version; its output lives in the
store under that key, so a second build with nothing changed runs no step.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from . import FORMAT_VERSION, typed
from .errors import XenspinError
from .lock import Lock
from .manifest import Component, Distro, build_order
from .run import CommandError, run, sandbox
from .sources import Context, FetchError, module
from .sources import path as path_source
from .store import Store, sha256_file, sha256_json

log = logging.getLogger("xenspin.build")

MOUNTS = ("/src", "/srcpkg", "/out", "/debs", "/build")


class BuildError(XenspinError):
    """A component failed to build; names the component, step, status and log."""


# --- planning (pure) ---------------------------------------------------------------


@dataclass(frozen=True)
class RootSpec:
    """A build root: the archive state and the packages in it."""

    archives: tuple[tuple[str, str], ...]  # (mirror, suite): the base suite, then update suites
    areas: tuple[str, ...]
    archive: str  # the locked InRelease sha256s (archive_ident)
    variant: str
    packages: tuple[str, ...]

    def sources(self, url: Callable[[str], str]) -> list[str]:
        """mmdebstrap's mirror arguments: one sources.list line per suite, mirrors mapped by url."""
        return [f"deb {url(mirror)} {suite} {' '.join(self.areas)}" for mirror, suite in self.archives]

    @property
    def key(self) -> str:
        return sha256_json({"format": FORMAT_VERSION, "mounts": MOUNTS, **dataclasses.asdict(self)})


@dataclass(frozen=True)
class Job:
    """One component's build, every input known."""

    name: str
    key: str
    action: str  # "build": run steps; "archive": take locked .debs; "none": nothing to build
    root: RootSpec | None
    after: tuple[str, ...]

    @property
    def short(self) -> str:
        return self.key[:12]


def archive_ident(state: dict[str, Any]) -> str:
    """The locked state of every suite in one string: their InRelease sha256s."""
    shas = [state.get("inrelease-sha256", "")] + [u.get("inrelease-sha256", "") for u in state.get("updates", [])]
    return ",".join(shas) if any(shas) else ""


def root_spec(distro: Distro, lock: Lock, comp: Component) -> RootSpec:
    return RootSpec(
        archives=tuple(distro.base.archives()),
        areas=tuple(distro.base.areas),
        archive=archive_ident(lock.archive),
        variant="minbase",
        packages=tuple(sorted(set(comp.build_depends))),
    )


def component_key(
    comp: Component, entry: dict, root: RootSpec | None, deps: dict[str, str], tree: str, base: Path, epoch: int
) -> str:
    """The cache key: everything that can change what the build produces."""
    recipe = typed.to_data(comp, relative_to=base)
    for volatile in ("description", "recipe", "optional"):
        recipe.pop(volatile, None)
    source = {k: v for k, v in entry.items() if k != "recipe"}
    return sha256_json(
        {
            "format": FORMAT_VERSION,
            "recipe": recipe,
            "source": source,
            "tree": tree,
            "root": root.key if root else None,
            "after": deps,
            "epoch": epoch,
        }
    )


def plan(
    distro: Distro, lock: Lock, base: Path, names: list[str] | None = None, left_out: set[str] = frozenset()
) -> dict[str, Job]:
    """Jobs in build order for the named components and what they need (all when None).

    Components with no lock entry or left out by the fetch (optional ones whose
    source could not be had) get no job; a job after such a component is planned
    without it.
    """
    wanted = closure(distro, names) if names else set(distro.components)
    epoch = source_date_epoch(lock)
    jobs: dict[str, Job] = {}
    for name in build_order(distro):
        comp = distro.components[name]
        entry = lock.components.get(name)
        if name not in wanted or entry is None or name in left_out:
            continue
        deps = {d: jobs[d].key for d in comp.after if d in jobs}
        tree = path_source.digest(Path(comp.source.path)) if comp.source.kind == "path" else ""
        if comp.source.kind == "archive":
            action, root = "archive", None
        elif comp.steps:
            action, root = "build", root_spec(distro, lock, comp)
        else:
            action, root = "none", None
        key = component_key(comp, entry, root, deps, tree, base, epoch)
        jobs[name] = Job(name, key, action, root, tuple(deps))
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


def package_version(entry: dict, key: str) -> str:
    """A Debian version that says where the bytes came from and changes with the key."""
    kind = entry.get("kind")
    if kind == "debian":
        upstream = entry["version"].split(":")[-1].rsplit("-", 1)[0]
    elif kind == "git":
        upstream = "0~git" + entry["commit"][:12]
    else:
        upstream = "0"
    return f"{upstream}+xs{key[:10]}"


def control_file(comp: Component, version: str, arch: str, maintainer: str) -> str:
    assert comp.package is not None
    lines = [
        f"Package: {comp.package.name}",
        f"Version: {version}",
        f"Architecture: {arch}",
        f"Maintainer: {maintainer}",
    ]
    if comp.package.depends:
        lines.append("Depends: " + ", ".join(comp.package.depends))
    summary = comp.package.description or comp.description or comp.package.name
    lines.append(f"Description: {summary.splitlines()[0]}")
    return "\n".join(lines) + "\n"


# --- running -----------------------------------------------------------------------


@dataclass
class BuildReport:
    built: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    nothing: list[str] = field(default_factory=list)
    debs: dict[str, list[str]] = field(default_factory=dict)  # component -> .deb paths
    repo: str = ""
    seconds: dict[str, float] = field(default_factory=dict)


class Builder:
    """Runs a plan against a store: build roots, steps under bwrap, packaging, the apt repo."""

    def __init__(self, distro: Distro, lock: Lock, ctx: Context, *, jobs: int = 1, say: Any = None) -> None:
        self.distro = distro
        self.lock = lock
        self.ctx = ctx
        self.store: Store = ctx.store
        self.jobs = max(1, jobs)
        self.say = say or (lambda msg: log.info("%s", msg))
        self.epoch = source_date_epoch(lock)

    def output(self, job: Job) -> Path:
        return self.store.object_path("build", job.key)

    def is_built(self, job: Job) -> bool:
        return (self.output(job) / "build.json").is_file()

    def run(self, jobs: dict[str, Job]) -> BuildReport:
        """Build every job whose output is missing, in parallel along `after:`."""
        report = BuildReport()
        pending = dict(jobs)
        done: set[str] = set()
        failed: list[BaseException] = []
        lock = threading.Lock()
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.jobs) as pool:
            running: dict[concurrent.futures.Future, str] = {}
            while pending or running:
                if not failed:
                    for name, job in list(pending.items()):
                        if all(d in done for d in job.after):
                            del pending[name]
                            running[pool.submit(self._one, job, report, lock)] = name
                if not running:
                    break
                finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for fut in finished:
                    name = running.pop(fut)
                    if fut.exception() is not None:
                        failed.append(fut.exception())
                    else:
                        done.add(name)
        if failed:
            raise failed[0]
        for name, job in jobs.items():
            meta = json.loads((self.output(job) / "build.json").read_text())
            report.debs[name] = [str(self.output(job) / d) for d in meta["debs"]]
        report.repo = str(self.make_repo([Path(d) for debs in report.debs.values() for d in debs]))
        return report

    def _one(self, job: Job, report: BuildReport, lock: threading.Lock) -> None:
        if self.is_built(job):
            with lock:
                (report.nothing if job.action == "none" else report.cached).append(job.name)
            return
        start = time.monotonic()
        with self.store.locked("build-" + job.key[:32]):
            if not self.is_built(job):
                if job.action != "none":
                    self.say(f"build {job.name} ({job.short})")
                self._build(job)
        seconds = round(time.monotonic() - start, 1)
        if job.action == "build":
            self.say(f"built {job.name} in {seconds} s")
        with lock:
            (report.nothing if job.action == "none" else report.built).append(job.name)
            report.seconds[job.name] = seconds

    def _build(self, job: Job) -> None:
        comp = self.distro.components[job.name]
        entry = self.lock.components[job.name]
        tmp = self.store.tmp_dir("build-" + job.name)
        try:
            debs: list[str] = []
            if job.action == "archive":
                for info in sorted(entry["packages"].values(), key=lambda i: i["filename"]):
                    name = Path(info["filename"]).name
                    os.link(self.store.blob_path(info["sha256"]), tmp / name)
                    debs.append(name)
            elif job.action == "build":
                staged = self._steps(job, comp, entry, tmp)
                # Packages the steps made themselves (dpkg-buildpackage) come first, then the staged tree's.
                for deb in sorted((tmp / "debs").glob("*.deb")):
                    os.replace(deb, tmp / deb.name)
                    debs.append(deb.name)
                shutil.rmtree(tmp / "debs")
                if comp.package is not None:
                    debs.append(self._package(job, comp, entry, staged, tmp))
            meta = {"component": job.name, "key": job.key, "action": job.action, "debs": debs}
            (tmp / "build.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            self.store.commit_dir(tmp, self.output(job))
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _steps(self, job: Job, comp: Component, entry: dict, tmp: Path) -> Path:
        assert job.root is not None
        root = self.build_root(job.root)
        src = self.source_tree(job.name, comp, entry)
        out, debs = tmp / "staged", tmp / "debs"
        scratch = self.store.tmp_dir("scratch-" + job.name)
        out.mkdir()
        debs.mkdir()
        logs = self.log_dir(job)
        ro = {"/src": src}
        env = {
            "SRC": "/src",
            "OUT": "/out",
            "DEBS": "/debs",
            "BUILD": "/build",
            "HOME": "/build",
            "JOBS": str(os.cpu_count() or 1),
            "LC_ALL": "C.UTF-8",
            "SOURCE_DATE_EPOCH": str(self.epoch),
        }
        if comp.source.kind == "debian":
            # The whole source package too (.dsc, orig and debian tarballs), for dpkg-source/dpkg-buildpackage.
            srcpkg = tmp / "srcpkg"
            srcpkg.mkdir()
            for filename, info in entry["files"].items():
                os.link(self.store.blob_path(info["sha256"]), srcpkg / filename)
            ro["/srcpkg"] = srcpkg
            env["SRCPKG"] = "/srcpkg"
        prefix = sandbox(root, ro=ro, rw={"/out": out, "/debs": debs, "/build": scratch}, env=env, cwd="/build")
        try:
            for i, step in enumerate(comp.steps, 1):
                log_path = logs / f"{i:02d}-{step.name}.log"
                try:
                    run(
                        [*prefix, "/bin/sh", "-e", "-c", step.run],
                        what=f"build {job.name}: step {step.name}",
                        log_path=log_path,
                    )
                except CommandError as e:
                    raise BuildError(str(e)) from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            shutil.rmtree(tmp / "srcpkg", ignore_errors=True)
        for rel in comp.outputs:
            if not (out / rel).exists():
                raise BuildError(f"build {job.name}: the steps did not produce {rel} (listed in outputs); logs: {logs}")
        return out

    def _package(self, job: Job, comp: Component, entry: dict, staged: Path, tmp: Path) -> str:
        assert comp.package is not None
        version = package_version(entry, job.key)
        debian = staged / "DEBIAN"
        debian.mkdir(exist_ok=True)
        maint = f"{self.distro.vendor or self.distro.name} <builds@{self.distro.name}.invalid>"
        (debian / "control").write_text(control_file(comp, version, self.distro.base.architecture, maint))
        for dirpath, dirs, files in os.walk(staged):
            for name in dirs + files:
                os.utime(os.path.join(dirpath, name), (self.epoch, self.epoch), follow_symlinks=False)
        deb = f"{comp.package.name}_{version}_{self.distro.base.architecture}.deb"
        run(
            ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", staged, tmp / deb],
            what=f"build {job.name}: package",
            log_path=self.log_dir(job) / "package.log",
            env={"SOURCE_DATE_EPOCH": str(self.epoch)},
        )
        shutil.rmtree(staged)
        return deb

    def log_dir(self, job: Job) -> Path:
        return self.store.log_dir("build", job.name, job.short)

    # --- build roots and source trees --------------------------------------------

    def build_root(self, spec: RootSpec) -> Path:
        """The build root for spec, made once with mmdebstrap and kept in the store by key."""
        dest = self.store.object_path("buildroot", spec.key)
        if dest.is_dir():
            return dest
        with self.store.locked("buildroot-" + spec.key[:32]):
            if dest.is_dir():
                return dest
            if self.ctx.offline:
                raise BuildError(
                    f"build root {spec.key[:12]} ({', '.join(spec.packages) or 'minbase'}) is not in the store "
                    "and --offline forbids mmdebstrap"
                )
            suites = "+".join(suite for _, suite in spec.archives)
            self.say(f"build root {spec.key[:12]}: mmdebstrap {suites} {' '.join(spec.packages)}")
            self._check_archive(spec)
            tmp = self.store.tmp_dir("buildroot")
            target = tmp / "root"
            cmd = ["mmdebstrap", "--mode=root", f"--variant={spec.variant}", "--quiet"]
            if spec.packages:
                cmd.append("--include=" + ",".join(spec.packages))
            cmd += [
                "--customize-hook=mkdir -p " + " ".join(f'"$1{m}"' for m in MOUNTS),
                '--customize-hook=rm -rf "$1/var/cache/apt"/*.bin "$1/var/lib/apt/lists"/*_*',
                spec.archives[0][1],
                target,
                *spec.sources(self.ctx.url),
            ]
            try:
                run(
                    cmd,
                    what=f"build root {spec.key[:12]}",
                    log_path=self.store.log_dir("buildroot", spec.key[:12] + ".log"),
                )
                self.store.commit_dir(target, dest)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def _check_archive(self, spec: RootSpec) -> None:
        """Say so when the archive has moved on since the lock: mmdebstrap can only use its current state."""
        if not spec.archive:
            return
        try:
            now = module("debian").archive_state(self.ctx)
        except FetchError:
            return  # mmdebstrap will report an unreachable archive itself
        if archive_ident(now) != spec.archive:
            suites = "+".join(suite for _, suite in spec.archives)
            self.say(
                f"warning: {suites} changed since it was locked; build root {spec.key[:12]} gets today's package versions"
            )

    def source_tree(self, name: str, comp: Component, entry: dict) -> Path:
        """The component's source as a directory: in-tree as it is, others unpacked once into the store."""
        kind = comp.source.kind
        if kind == "path":
            return Path(comp.source.path)
        dest = self.store.object_path("src", source_ident(entry))
        top = (lambda p: p) if kind == "git" else _single  # a repository's tree is the tree itself
        if dest.is_dir():
            return top(dest)
        with self.store.locked("src-" + dest.name[:32]):
            if not dest.is_dir():
                tmp = self.store.tmp_dir("src-" + name)
                try:
                    mod = module(kind)
                    if kind == "git":
                        mod.export(entry, self.ctx, tmp)
                    else:
                        mod.unpack(entry, self.ctx, tmp)
                    self.store.commit_dir(tmp, dest)
                finally:
                    if tmp.exists():
                        shutil.rmtree(tmp, ignore_errors=True)
        return top(dest)

    # --- the local apt repository --------------------------------------------------

    def keeps(self, jobs: dict[str, Job]) -> set[tuple[str, str]]:
        """The store objects this plan uses (for `store gc`): builds, their roots and sources, the repo."""
        keep: set[tuple[str, str]] = set()
        debs: list[Path] = []
        for name, job in jobs.items():
            keep.add(("build", job.key))
            if job.root is not None:
                keep.add(("buildroot", job.root.key))
            keep.add(("src", source_ident(self.lock.components[name])))
            meta = self.output(job) / "build.json"
            if meta.is_file():
                debs += [self.output(job) / d for d in json.loads(meta.read_text())["debs"]]
        keep.add(("repo", repo_key(debs)))
        return keep

    def make_repo(self, debs: list[Path]) -> Path:
        """A flat apt repository holding exactly these .debs, in the store by their digests."""
        key = repo_key(debs)
        dest = self.store.object_path("repo", key)
        if dest.is_dir():
            return dest
        with self.store.locked("repo-" + key[:32]):
            if dest.is_dir():
                return dest
            tmp = self.store.tmp_dir("repo")
            try:
                for deb in debs:
                    os.link(deb, tmp / deb.name)
                packages = run(["apt-ftparchive", "packages", "."], what="repo: index", cwd=tmp, capture=True).stdout
                (tmp / "Packages").write_bytes(packages)
                release = run(
                    ["apt-ftparchive", "-o", f"APT::FTPArchive::Release::Origin={self.distro.name}", "release", "."],
                    what="repo: release",
                    cwd=tmp,
                    capture=True,
                ).stdout
                (tmp / "Release").write_bytes(release)
                self.store.commit_dir(tmp, dest)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return dest


def source_ident(entry: dict) -> str:
    """The identity of a locked source's unpacked tree in the store."""
    return sha256_json({k: v for k, v in entry.items() if k != "recipe"})


def repo_key(debs: list[Path]) -> str:
    return sha256_json({"format": FORMAT_VERSION, "debs": sorted(sha256_file(d) for d in debs)})


def publish(repo: Path, dest: Path) -> Path:
    """Put a copy of the repository at dest (out/repo), replacing the old one only once complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for item in sorted(repo.iterdir()):
        try:
            os.link(item, tmp / item.name)
        except OSError:  # another filesystem
            shutil.copy2(item, tmp / item.name)
    old = dest.with_name(f".{dest.name}.old{os.getpid()}")
    if dest.exists():
        os.rename(dest, old)
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def _single(path: Path) -> Path:
    """An unpacked tree's top directory when it has just one (tarballs usually do)."""
    entries = list(path.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else path


def source_date_epoch(lock: Lock) -> int:
    """The build time stamped into outputs: $SOURCE_DATE_EPOCH, else the locked archive's Release date.

    So two builds of one lock agree byte for byte, and the time is part of every key.
    """
    env = os.environ.get("SOURCE_DATE_EPOCH", "")
    if env.isdigit():
        return int(env)
    date = lock.archive.get("date")
    if date:
        try:
            return int(parsedate_to_datetime(date).timestamp())
        except (TypeError, ValueError):
            pass
    return 0
