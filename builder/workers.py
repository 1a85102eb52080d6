"""Builds on Dask workers: what neither the store nor the remote cache holds is made on a worker.

`xenspin build --scheduler tcp://HOST:8786` keeps the driver here (lock, fetch, the stage
graph, publishing to out/) and hands each stage that would be made here to a Dask worker
instead: the scheduler starts it as soon as the stages it comes after are done, on a
worker whose resources fit. Workers are `xenspin worker` processes, each with a store of
its own; the remote cache is the only way data moves. This machine puts the project (the
manifest with everything it names, its lock: one tar) and every locked source in the
cache; a job names them by sha256; the worker builds the same graph from them, refuses
to go on if its key for the stage is not the client's, makes the stage (taking what it
comes after from the cache) and sends it to the cache; the client takes it from there,
checked like any cache hit. Dask carries only the job (plain data) and a short answer;
no code of the project runs anywhere it would not run locally.

A worker killed mid-stage sends nothing: a stage is made under the store's tmp/ and its
record is written to the cache after all its blobs, so Dask runs it again on another
worker from the start and nobody ever sees half of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import os
import socket
import stat
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import cache, config, fetch, host, lazyimport, lock, manifest, packagesets, pipeline, safetar
from .context import Context
from .errors import XenspinError
from .progress import Reporter
from .stage import Scheduler, Stage, resolve, upto
from .store import Store, sha256_file

dask = lazyimport.module("distributed")  # only a build with --scheduler, or a worker, imports Dask

# Worker resources (`dask worker --resources` speaks the same): every xenspin worker offers
# one STAGE slot, so it makes one stage at a time (a stage uses every core itself); one
# where `xenspin setup` is done (mmdebstrap, bubblewrap, the ISO tools) offers TOOLS too.
STAGE = "xenspin-stage"
TOOLS = "xenspin-tools"
NEEDS_TOOLS = frozenset({"build", "rootfs", "iso", "repo"})  # kinds that run mmdebstrap, bwrap or the ISO tools
# Left out of the project sent to workers: version control, caches, environments.
NOT_SENT = frozenset({".git", ".hg", ".svn", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"})
PROJECT_KIND = "project"  # where a worker unpacks a project in its store (objects/project/SHA256)
CONNECT_SECONDS = 10
WORKER_WAIT_SECONDS = 120  # for the first worker to join the scheduler


@dataclass(frozen=True)
class Settings:
    """This worker's own: its store and which cache records it trusts (`xenspin worker` options over config.yaml)."""

    store: Path | None = None
    trust: str = ""
    keyring: tuple[Path, ...] = ()


_settings = Settings()  # set once by serve(); a plain `dask worker` keeps the config's


class WorkerError(XenspinError):
    """A stage failed on a worker: one line naming the worker (plain, so it crosses Dask's pickling)."""


@dataclass(frozen=True)
class Job:
    """What a worker is sent to make one stage: plain data, the rest comes from the cache by sha256."""

    stage: str  # the stage's id, e.g. build:xen
    key: str  # the client's key for it: the worker's must be the same
    project: str  # sha256 of the project's tar in the cache
    manifest: str  # the manifest's path inside the project
    cache: str  # the remote cache's URL
    endpoint: str = ""  # its S3 endpoint
    mirrors: dict[str, str] = dataclasses.field(default_factory=dict)
    epoch: int | None = None
    names: list[str] | None = None  # the components asked for (None: all)
    left_out: list[str] = dataclasses.field(default_factory=list)
    strict: bool = False
    client: str = ""  # the host that asked, for the worker's log
    code: str = ""  # code_digest() on the client: a worker running other code refuses


# --- pure parts --------------------------------------------------------------------------


def resources(kind: str) -> dict[str, int]:
    """What a stage of this kind asks of a worker."""
    return {STAGE: 1, TOOLS: 1} if kind in NEEDS_TOOLS else {STAGE: 1}


def task_key(stage: Stage, key: str) -> str:
    """The Dask key of a stage's task: by its store key, so two clients asking for one stage share one task."""
    return f"xenspin-{stage.kind}-{stage.name}-{key[:24]}"


@functools.cache
def code_digest() -> str:
    """sha256 of xenspin's own files (the builder package as installed): client and workers must run the
    same code, since a changed tool that kept its format numbers would make other bytes under one key."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".py", ".sh")):
        h.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\0".encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def project_root(manifest_path: Path) -> Path:
    """The directory sent to workers: the one holding the manifest and every manifest it extends."""
    files = manifest.chain_files(manifest_path)
    return Path(os.path.commonpath([str(f.parent) for f in files]))


def wanted_fetch(distro: manifest.Distro, current: lock.Lock, stage_id: str) -> tuple[list[str], set[str]]:
    """The components whose sources, and the package sets whose .debs, a worker needs to make this stage."""
    kind, _, name = stage_id.partition(":")
    if kind == "build":
        return [name], set(packagesets.root_sets(distro, current, {name}).values())
    if kind == "rootfs":
        return [], {"rootfs"}
    if kind == "iso":
        return [], {"iso"}
    return [], set()


def pack_project(root: Path, dest: Path, skip: tuple[Path, ...] = ()) -> int:
    """The project under root as a reproducible tar at dest (names sorted, owners and times zeroed,
    modes kept); the number of files. Links are kept as links and never followed; skip:
    directories left out (the store, out/). A device, fifo or socket in the project is refused."""
    skipped = {os.path.realpath(p) for p in skip}
    count = 0

    def add(tar: tarfile.TarFile, path: Path, rel: str) -> None:
        nonlocal count
        st = path.lstat()
        info = tarfile.TarInfo(rel)
        info.mtime = 0
        info.mode = stat.S_IMODE(st.st_mode)  # an overlay's modes are what the rootfs gets
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
            for child in sorted(os.listdir(path)):
                p = path / child
                if child in NOT_SENT or os.path.realpath(p) in skipped:
                    continue
                add(tar, p, f"{rel}/{child}")
        elif stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.mode = 0o777
            info.linkname = os.readlink(path)
            tar.addfile(info)
        elif stat.S_ISREG(st.st_mode):
            info.size = st.st_size
            with open(path, "rb") as f:
                tar.addfile(info, f)
            count += 1
        else:
            raise XenspinError(f"{path}: not a file, directory or link; cannot send the project to the workers")

    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, root, ".")
    return count


# --- the worker ---------------------------------------------------------------------------


def tools_ready() -> bool:
    """Whether this machine has what `xenspin setup` installs (mmdebstrap, bubblewrap, the ISO tools)."""
    try:
        return not host.missing(host.wanted())
    except (OSError, XenspinError):
        return False


def serve(address: str, settings: Settings, *, name: str, tools: bool | None = None) -> int:
    """Run a Dask worker for xenspin stages until the scheduler goes away (`xenspin worker`)."""
    global _settings
    _settings = settings
    ready = tools_ready() if tools is None else tools
    offered = {STAGE: 1, **({TOOLS: 1} if ready else {})}
    where = _worker_store()
    if address.startswith("tcp://"):
        print(
            f"warning: {address} is unauthenticated: whoever reaches the scheduler can run code here; "
            "use tls:// or a private network (docs/cache.md)",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"xenspin worker {name}: store {where}, resources {', '.join(offered)}"
        + ("" if ready else f" (no {TOOLS}: run `xenspin setup` to make builds, rootfs and ISOs here)"),
        flush=True,
    )

    async def main() -> None:
        async with dask.Worker(
            address,
            nthreads=1,
            resources=offered,
            name=name,
            memory_limit=0,
            dashboard=False,
            death_timeout=WORKER_WAIT_SECONDS,
        ) as w:
            await w.finished()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        return 130
    except (TimeoutError, OSError) as e:
        raise XenspinError(f"worker: cannot reach the scheduler at {address}: {e}") from None
    return 0


def _worker_store() -> Path:
    cfg = config.load()
    return _settings.store or (Path(cfg.store) if cfg.store else config.default_store())


def run_job(job: Job) -> dict[str, Any]:
    """Make one stage on this worker and put it in the cache (the Dask task); what it did.

    Any failure is one line naming this worker, as a WorkerError the client reports.
    """
    me = _me()
    try:
        return _run_job(job, me)
    except XenspinError as e:
        raise WorkerError(f"{job.stage} on worker {me}: {e}") from None
    except OSError as e:
        raise WorkerError(f"{job.stage} on worker {me}: {e}") from None


def _me() -> str:
    with contextlib.suppress(ValueError, AttributeError):
        w = dask.get_worker()
        return f"{w.name} ({w.address})"
    return socket.gethostname()


def _run_job(job: Job, me: str) -> dict[str, Any]:
    if job.code != code_digest():
        raise XenspinError(
            f"this worker runs other xenspin code ({code_digest()[:12]}) than the client ({job.code[:12]}): "
            "install the same xenspin on both"
        )
    start = time.monotonic()
    cfg = config.load().cache
    store = Store(_worker_store())
    progress = Reporter()
    remote = cache.from_settings(
        job.cache,
        endpoint=job.endpoint,
        trust=_settings.trust or cfg.trust,
        keyring=list(_settings.keyring) or [Path(k) for k in cfg.keyring],
        sign_key=cfg.sign_key,
        host=cfg.host_id or socket.gethostname(),
        say=progress.say,
        warn=progress.say,
    )
    if remote is None:
        raise XenspinError("the job names no remote cache")
    progress.say(f"{job.stage}: asked by {job.client or 'a client'} (key {job.key[:12]})")
    with store.session():
        path = _project(store, remote, job.project) / job.manifest
        distro = manifest.load(path)
        current = lock.read(lock.lock_path(path))
        if current is None:
            raise XenspinError(f"{job.manifest}: the project sent has no lock")
        ctx = Context(
            store=store,
            base=distro.base,
            mirrors=dict(job.mirrors),
            manifest=path,
            progress=progress,
            epoch=job.epoch,
            remote=remote,
        )
        stages, _ = pipeline.graph(ctx, distro, current, job.names, set(job.left_out))
        needed = upto(stages, job.stage)
        planned = {p.stage.id: p for p in resolve(store, needed, remote)}[job.stage]
        if planned.key != job.key:
            got = planned.key[:12] or "pending (a stage it comes after is in neither the store nor the cache)"
            raise XenspinError(f"key {got} here, {job.key[:12]} on the client: the project, lock or xenspin differ")
        comps, sets = wanted_fetch(distro, current, job.stage)
        if comps:
            fetch.fetch(distro, current, ctx, comps, strict=job.strict)
        if sets:
            pipeline.fetch_sets(current, ctx, sets)
        outcome = Scheduler(store, needed, jobs=1, remote=remote).run()[job.stage]
        kind = outcome.stage.kind
        if not outcome.made and not remote.has_record(kind, job.key):  # in this store already
            remote.upload(store, kind, job.key)
        if remote.down or not remote.has_record(kind, job.key):
            raise XenspinError(
                f"made it, but could not put it in the cache {remote.shown}: {remote.down or 'no record'}"
            )
    return {
        "stage": job.stage,
        "key": job.key,
        "worker": me,
        "made": outcome.made,
        "seconds": round(time.monotonic() - start, 1),
    }


def _project(store: Store, remote: cache.Remote, sha256: str) -> Path:
    """The project's tar from the cache, unpacked once per content into this store."""
    dest = store.object_path(PROJECT_KIND, sha256)
    if dest.is_dir():
        return dest
    with store.locked(f"{PROJECT_KIND}-{sha256[:32]}"):
        if dest.is_dir():
            return dest
        if not store.has_blob(sha256) and not remote.fetch_blob(store, sha256, "the project"):
            raise XenspinError(f"the project {sha256[:12]} is not in the cache {remote.shown}")
        tmp = store.tmp_dir(PROJECT_KIND)
        try:
            with tarfile.open(store.blob_path(sha256)) as tar:
                safetar.extract_tree(tar, tmp)
        except tarfile.TarError as e:
            raise XenspinError(f"the project {sha256[:12]}: {e}") from None
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, dest)
    return dest


# --- the client ---------------------------------------------------------------------------


class Pool:
    """This build's use of a Dask cluster: the project and sources sent, stages handed out, answers awaited."""

    def __init__(self, address: str, ctx: Context, distro: manifest.Distro, current: lock.Lock, job: Job) -> None:
        self.address = address
        self.ctx = ctx
        self.distro = distro
        self.current = current
        self.job = job  # the fields every job of this build shares (stage and key empty)
        self._client: Any = None
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, address: str, ctx: Context, distro: manifest.Distro, current: lock.Lock, **fields: Any) -> Pool:
        """Connect to the scheduler and wait for a worker; XenspinError in one line when there is none."""
        remote = ctx.remote
        if remote is None:
            raise XenspinError(
                f"--scheduler {address}: workers hand stages back through a remote cache; name one (--cache URL)"
            )
        if not remote.writable:
            raise XenspinError(
                f"--scheduler {address}: the project and sources go to workers through the cache, "
                "so it cannot be read-only"
            )
        try:
            import distributed  # noqa: F401 (only to say what is missing)
        except ImportError:
            raise XenspinError(f"--scheduler {address}: Dask is not installed: pip install 'xenspin[dask]'") from None
        endpoint = getattr(remote.backend, "endpoint", "")
        job = Job(
            stage="",
            key="",
            project="",
            manifest="",
            cache=remote.backend.url,
            endpoint=endpoint,
            code=code_digest(),
            **fields,
        )
        pool = cls(address, ctx, distro, current, job)
        try:
            pool._client = dask.Client(address, timeout=CONNECT_SECONDS, set_as_default=False)
        except (TimeoutError, OSError, ValueError) as e:
            raise XenspinError(f"--scheduler {address}: cannot connect: {e}") from None
        try:
            pool._client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
        except TimeoutError:
            pool.close()
            raise XenspinError(
                f"--scheduler {address}: no worker joined in {WORKER_WAIT_SECONDS} s (start one: xenspin worker {address})"
            ) from None
        return pool

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    def offered(self) -> list[dict[str, Any]]:
        """Every worker's resources."""
        info = self._client.scheduler_info(n_workers=-1)
        return [w.get("resources", {}) for w in info.get("workers", {}).values()]

    def check(self, kinds: set[str]) -> None:
        """Refuse a build whose stages no worker could make (no worker with the tools); before anything runs."""
        tooled = [k for k in sorted(kinds) if k in NEEDS_TOOLS]
        if tooled and not any(r.get(TOOLS) for r in self.offered()):
            raise XenspinError(
                f"--scheduler {self.address}: no worker offers {TOOLS} (`xenspin setup` done on it), "
                f"which {', '.join(tooled)} stages need"
            )

    def send_project(self, skip: tuple[Path, ...]) -> None:
        """The project (manifest, recipes, overlays, lock) into the cache as one tar; its sha256 goes in every job."""
        ctx, remote = self.ctx, self.ctx.remote
        assert ctx.manifest is not None and remote is not None
        root = project_root(ctx.manifest)
        tmp = ctx.store.tmp_path("project")
        try:
            files = pack_project(root, tmp, skip)
            digest = sha256_file(tmp)
            ctx.store.add_blob(tmp, digest, what="the project sent to workers")
        finally:
            tmp.unlink(missing_ok=True)
        ctx.say(f"workers: the project {root} ({files} files, {digest[:12]}) through {remote.shown}")
        remote.offer_blob(ctx.store, digest)
        if remote.down:
            raise XenspinError(f"--scheduler: could not put the project in the cache {remote.shown}: {remote.down}")
        self.job = dataclasses.replace(self.job, project=digest, manifest=str(ctx.manifest.relative_to(root)))

    def send_sources(self, stage_id: str) -> None:
        """What a worker fetches to make the stage, from this store to the cache: the worker needs no upstream."""
        comps, sets = wanted_fetch(self.distro, self.current, stage_id)
        fetch.share(self.distro, self.current, self.ctx, comps)
        packagesets.share(self.current, self.ctx, sets)

    def __call__(self, stage: Stage, key: str) -> str:
        """Make stage on a worker (Dask picks one whose resources fit); blocks until it is in the cache."""
        self.send_sources(stage.id)
        job = dataclasses.replace(self.job, stage=stage.id, key=key)
        self.ctx.say(f"{stage.id}: sent to the workers (key {key[:12]})")
        with self._lock:
            future = self._client.submit(
                run_job, job, key=task_key(stage, key), resources=resources(stage.kind), pure=False, retries=0
            )
        try:
            answer = future.result()
        except WorkerError as e:
            raise XenspinError(str(e)) from None
        except XenspinError:
            raise
        except Exception as e:  # KilledWorker after too many deaths, a lost scheduler, a bug on the worker
            raise XenspinError(f"{stage.id}: on the workers of {self.address}: {type(e).__name__}: {e}") from None
        self.ctx.say(f"{stage.id}: made on {answer['worker']} in {answer['seconds']} s")
        return str(answer["worker"])


@contextlib.contextmanager
def pool(
    address: str, ctx: Context, distro: manifest.Distro, current: lock.Lock, stages: list[Stage], **fields: Any
) -> Iterator[Pool]:
    """The build's Pool on the scheduler at address, the project sent; closed at the end (pipeline.run_build's
    `workers`). skip: directories inside the project not to send (the store, out/); the rest: Job's fields.
    """
    skip = fields.pop("skip", ())
    p = Pool.connect(address, ctx, distro, current, **fields)
    try:
        assert ctx.remote is not None
        p.check({s.kind for s in stages if ctx.remote.wants(s.kind)})
        p.send_project(skip)
        yield p
    finally:
        p.close()
