# ruff: noqa: F811 (the cache fixtures imported from test_cache are parameters of the tests)
"""Builds on Dask workers (`xenspin build --scheduler`, `xenspin worker`): a real scheduler, real worker processes.

Each test starts `dask scheduler` and `xenspin worker` processes on 127.0.0.1, every worker
with a store of its own, and an nginx WebDAV cache (test_cache.py's), the only way data
moves between them. The small distribution here is in-tree sources, so those tests are
fast; the default distribution, with a worker killed while it composes the rootfs, is
slow (the build root, the rootfs and the ISO are made for real).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import DEFAULT_EPOCH, OPTIONAL_UPSTREAMS, copy_project, mirror_args, one_line, write
from test_cache import NO_STEPS, SMALL, CacheServer, moto_endpoint, nginx, s3, server  # noqa: F401 (fixtures)

from builder import cli, lock, manifest, safetar, workers
from builder.store import tree_digest

DASK = Path(sys.executable).parent / "dask"
NEEDS_FREE = 4 << 30  # the default distribution on workers: stores, cache and outputs at their peak


# --- the cluster --------------------------------------------------------------------------------


@dataclass
class Cluster:
    """A Dask scheduler and the xenspin workers a test started: their processes, stores and logs."""

    where: Path
    address: str = ""
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def worker(self, name: str, *argv: str, host_id: str = "") -> Path:
        """Start `xenspin worker` with a store of its own (and, given host_id, a config naming it in the
        records it writes); its store."""
        store = self.where / name / "store"
        env = dict(os.environ)
        if host_id:
            config = self.where / name / "config"
            write(config, {"xenspin/config.yaml": f"cache:\n  host-id: {host_id}\n"})
            env["XDG_CONFIG_HOME"] = str(config)
        cmd = [sys.executable, "-m", "builder", "--store", str(store), "worker", self.address, "--name", name, *argv]
        self.start(name, cmd, env)
        return store

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.where / f"{name}.log", "wb")  # noqa: SIM115 (kept open by the process)
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_for(self, count: int) -> None:
        """Until count workers have joined the scheduler."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = json.loads((self.where / "scheduler.json").read_text())
            with contextlib.suppress(Exception):
                from distributed import Client

                with Client(info["address"], timeout=5) as c:
                    c.wait_for_workers(count, timeout=30)
                    return
            time.sleep(0.5)
        raise RuntimeError(f"{count} workers did not join: {self.logs()}")

    def kill(self, name: str) -> None:
        """SIGKILL the worker and everything it started (its process group): a machine lost mid-stage."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait()

    def log(self, name: str) -> str:
        return (self.where / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{self.log(n)[-3000:]}" for n in self.procs)

    def stop(self) -> None:
        for name in self.procs:
            self.kill(name)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A `dask scheduler` on a free 127.0.0.1 port (no dashboard); workers are started by the test."""
    c = Cluster(tmp_path / "cluster")
    c.where.mkdir()
    sched = c.where / "scheduler.json"
    c.start("scheduler", [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                          "--scheduler-file", str(sched)])  # fmt: skip
    deadline = time.monotonic() + 30
    while not sched.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    if not sched.exists():
        c.stop()
        raise RuntimeError(f"the scheduler did not start: {c.log('scheduler')}")
    c.address = json.loads(sched.read_text())["address"]
    try:
        yield c
    finally:
        c.stop()


def xenspin(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The command line as a user runs it, in a process of its own (the test watches the workers meanwhile)."""
    proc = subprocess.run([sys.executable, "-m", "builder", *argv], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def small(where: Path) -> Path:
    write(where, {"distro.yaml": SMALL, "components/hello.yaml": NO_STEPS, "components/hello/note": "hi\n"})
    return where / "distro.yaml"


# --- the project sent to workers (pure) ------------------------------------------------------------


def project(where: Path) -> Path:
    write(where, {"distro.yaml": SMALL, "components/hello.yaml": NO_STEPS, "components/hello/note": "hi\n"})
    (where / "overlays/etc").mkdir(parents=True)
    (where / "overlays/etc/localtime").symlink_to("/usr/share/zoneinfo/UTC")  # data, inside the rootfs
    (where / "overlays/etc/secret").write_text("s\n")
    (where / "overlays/etc/secret").chmod(0o640)
    (where / "components/hello/run").write_text("#!/bin/sh\n")
    (where / "components/hello/run").chmod(0o755)
    for skipped in (".git/config", ".venv/bin/python", "components/hello/__pycache__/x.pyc", "out/x.iso"):
        write(where, {skipped: "not sent\n"})
    return where


def test_the_project_is_packed_reproducibly_and_unpacked_exactly(tmp_path: Path) -> None:
    """The tar a worker unpacks is the same bytes from the same tree; modes and links arrive as they are
    (a link is made, not followed); version control, environments, caches and out/ stay home."""
    root = project(tmp_path / "p")
    one, two = tmp_path / "one.tar", tmp_path / "two.tar"
    assert workers.pack_project(root, one, (root / "out",)) == 5
    os.utime(root / "distro.yaml", (1, 1))  # times are not part of it
    workers.pack_project(root, two, (root / "out",))
    assert one.read_bytes() == two.read_bytes()
    dest = tmp_path / "unpacked"
    dest.mkdir()
    with tarfile.open(one) as tar:
        safetar.extract_tree(tar, dest)
    assert os.readlink(dest / "overlays/etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert (dest / "overlays/etc/secret").stat().st_mode & 0o7777 == 0o640
    assert (dest / "components/hello/run").stat().st_mode & 0o777 == 0o755
    for gone in (".git", ".venv", "components/hello/__pycache__", "out"):
        assert not (dest / gone).exists()
        shutil.rmtree(root / gone)
    assert tree_digest(dest) == tree_digest(root)


def test_a_fifo_in_the_project_is_refused_by_name(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    os.mkfifo(root / "components/hello/pipe")
    with pytest.raises(workers.XenspinError, match=r"components/hello/pipe: not a file, directory or link"):
        workers.pack_project(root, tmp_path / "p.tar")


def bad_tar(path: Path, *members: tuple[str, str, str]) -> Path:
    """A tar of (name, type, link target or content) members, in order."""
    with tarfile.open(path, "w") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = {"dir": tarfile.DIRTYPE, "link": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE}.get(
                kind, tarfile.REGTYPE
            )
            if kind in ("link", "hard"):
                info.linkname = data
                tar.addfile(info)
            elif kind == "dir":
                tar.addfile(info)
            else:
                raw = data.encode()
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    return path


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ([("etc", "link", "/etc"), ("etc/passwd", "file", "x")], "is not a directory of the archive"),
        ([("a", "dir", ""), ("a/../../x", "file", "x")], "outside the destination"),
        ([("/x", "file", "x")], "outside the destination"),
        ([("x", "file", "x"), ("y", "hard", "/etc/passwd")], "not a directory, regular file or symbolic link"),
        ([("b/x", "file", "x")], "is not a directory of the archive"),
    ],
)
def test_a_project_tar_writing_through_a_link_or_out_is_refused(tmp_path: Path, members: list, why: str) -> None:
    """A tar from the cache is checked member by member: nothing is written through a link it made or
    outside the directory, whatever the archive says."""
    dest = tmp_path / "dest"
    dest.mkdir()
    with tarfile.open(bad_tar(tmp_path / "bad.tar", *members)) as tar, pytest.raises(tarfile.TarError, match=why):
        safetar.extract_tree(tar, dest)
    assert not (tmp_path / "x").exists() and Path("/etc/passwd").read_text() != "x"


def test_what_a_stage_asks_of_a_worker() -> None:
    """Builds, the rootfs, the ISO and the repository need `xenspin setup` done on the worker; the SBOM does not."""
    assert workers.resources("build") == {workers.STAGE: 1, workers.TOOLS: 1}
    assert workers.resources("rootfs")[workers.TOOLS] == 1 and workers.resources("iso")[workers.TOOLS] == 1
    assert workers.resources("sbom") == {workers.STAGE: 1}


def test_a_worker_fetches_only_what_its_stage_needs() -> None:
    root = Path(__file__).resolve().parent.parent
    distro = manifest.load(root / "distro.yaml")
    current = lock.read(root / "distro.lock")
    assert current is not None
    comps, sets = workers.wanted_fetch(distro, current, "build:installer")
    assert comps == ["installer"] and len(sets) == 1 and next(iter(sets)).startswith("buildroot-")
    assert workers.wanted_fetch(distro, current, "rootfs:rootfs") == ([], {"rootfs"})
    assert workers.wanted_fetch(distro, current, "iso:iso") == ([], {"iso"})
    assert workers.wanted_fetch(distro, current, "repo:repo") == ([], set())


def test_a_spin_sends_the_directory_holding_it_and_what_it_extends() -> None:
    root = Path(__file__).resolve().parent.parent
    assert workers.project_root(root / "spins/xcp.yaml") == root
    assert workers.project_root(root / "distro.yaml") == root


# --- the command line against a real scheduler -------------------------------------------------------


def test_a_small_distribution_is_built_on_two_workers_and_handed_back_through_the_cache(
    cluster: Cluster, server: CacheServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client makes nothing itself: each stage is made on a worker, in that worker's store, and the
    client takes it from the cache (nginx, or S3: moto's server); the repository is the same bytes as a
    local build's."""
    if server.endpoint:  # S3: client and workers find the endpoint where boto3 looks
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", server.endpoint)
    w1 = cluster.worker("w1", host_id="worker-one")
    w2 = cluster.worker("w2", host_id="worker-two")
    cluster.wait_for(2)
    manifest_path = small(tmp_path / "p")
    client = tmp_path / "client"
    argv = ["-f", str(manifest_path), "--store", str(client), "--out", str(tmp_path / "o1"), "--cache", server.url]
    proc = xenspin(*argv, "build", "--scheduler", cluster.address)
    assert "build:hello: sent to the workers" in proc.stderr and "repo:repo: made on w" in proc.stderr
    assert "apt repository: " in proc.stdout
    # made on the workers, in their stores; recorded in the cache by the worker that made them
    made = {p.parent.name for s in (w1, w2) for p in (s / "objects").glob("*/*") if p.is_dir()}
    assert made == {"build", "repo", "project"}  # the project: what the client sent, unpacked
    records = [json.loads(json.loads(server.get(p))["record"]) for p in server.listing() if p.startswith("ac/")]
    assert {r["kind"] for r in records} == {"build", "repo"}
    assert {r["host"] for r in records} <= {"worker-one", "worker-two"}
    local = ["-f", str(manifest_path), "--store", str(tmp_path / "local"), "--out", str(tmp_path / "o2"), "--no-cache"]
    xenspin(*local, "build")
    assert (tmp_path / "o1/repo/Packages").read_bytes() == (tmp_path / "o2/repo/Packages").read_bytes()


def test_a_worker_whose_key_differs_refuses_to_make_the_stage(
    cluster: Cluster,
    nginx: CacheServer,
    tmp_path: Path,
) -> None:
    """A worker computes the stage's key from the project it was sent; one that differs from the client's
    (another project, lock or xenspin) is one line naming the worker, and nothing is made or written."""
    cluster.worker("w1")
    cluster.wait_for(1)
    manifest_path = small(tmp_path / "p")
    client = tmp_path / "client"
    argv = ["-f", str(manifest_path), "--store", str(client), "--cache", nginx.url]
    xenspin(*argv, "lock")
    from builder import cache
    from builder.context import Context
    from builder.store import Store

    remote = cache.from_settings(nginx.url)
    assert remote is not None
    ctx = Context(store=Store(client), base=None, manifest=manifest_path.absolute(), remote=remote)
    distro = manifest.load(manifest_path)
    current = lock.read(lock.lock_path(manifest_path))
    assert current is not None
    with workers.pool(cluster.address, ctx, distro, current, [], skip=()) as pool:
        assert pool is not None
        from builder.stage import Stage

        stage = Stage("build", "hello", 1, lambda _n: {}, lambda _t, _n: {})
        with pytest.raises(workers.XenspinError) as e:
            pool(stage, "0" * 64)
    assert one_line(e).startswith("build:hello on worker w1 (tcp://127.0.0.1:")
    assert "here, 000000000000 on the client: the project, lock or xenspin differ" in str(e.value)
    assert not [p for p in nginx.listing() if p.startswith("ac/")]


def test_a_worker_running_other_xenspin_code_refuses(tmp_path: Path) -> None:
    """The job names the client's code; a worker whose own differs makes nothing (its keys could agree
    while its tools make other bytes)."""
    job = workers.Job(
        stage="build:hello", key="k" * 64, project="p" * 64, manifest="distro.yaml", cache="", code="0" * 64
    )
    with pytest.raises(
        workers.WorkerError, match=r"runs other xenspin code \([0-9a-f]{12}\) than the client \(000000000000\)"
    ):
        workers.run_job(job)
    assert workers.code_digest() == workers.code_digest() and len(workers.code_digest()) == 64


def test_no_cache_no_worker_and_no_setup_are_each_one_line(
    cluster: Cluster,
    nginx: CacheServer,
    tmp_path: Path,
) -> None:
    manifest_path = small(tmp_path / "p")
    argv = ["-f", str(manifest_path), "--store", str(tmp_path / "s")]
    proc = xenspin(*argv, "build", "--scheduler", cluster.address, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("workers hand stages back through a remote cache; name one (--cache URL)")
    proc = xenspin(
        *argv, "--cache", nginx.url, "--cache-read-only", "build", "--scheduler", cluster.address, check=False
    )
    assert proc.returncode == 2 and "cannot be read-only" in proc.stderr
    # a plain Dask worker, without `xenspin setup`: the build is refused before anything is sent
    cluster.start("plain", [str(DASK), "worker", cluster.address, "--nthreads", "1", "--resources",
                            f"{workers.STAGE}=1", "--no-dashboard"])  # fmt: skip
    cluster.wait_for(1)
    proc = xenspin(*argv, "--cache", nginx.url, "build", "--scheduler", cluster.address, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"no worker offers {workers.TOOLS}" in proc.stderr and "which build, repo stages need" in proc.stderr
    assert not nginx.listing()
    proc = xenspin(*argv, "--cache", nginx.url, "build", "--scheduler", "tcp://127.0.0.1:9", check=False)
    assert proc.returncode == 2 and "--scheduler tcp://127.0.0.1:9: cannot connect" in proc.stderr


def test_an_answerfile_on_the_command_line_is_refused_with_a_scheduler(tmp_path: Path) -> None:
    manifest_path = small(tmp_path / "p")
    (tmp_path / "a.yaml").write_text("root: {}\n")
    code = cli.main(["-f", str(manifest_path), "build", "--answerfile", str(tmp_path / "a.yaml"), "--scheduler", "x"])
    assert code == 2


# --- the default distribution, a worker killed mid-stage -------------------------------------------


@pytest.mark.slow
@pytest.mark.network
def test_the_default_distribution_on_two_workers_survives_one_killed_mid_rootfs(
    cluster: Cluster,
    nginx: CacheServer,
    tmp_path: Path,
    store: Path,
    default_iso: Path,
) -> None:
    """Two workers with empty stores build the default distribution for a client whose store holds only
    its sources; the worker composing the rootfs is killed halfway; Dask gives the stage to the other,
    the half-made rootfs never reaches the cache, and the ISO is the same bytes as the local build's.
    (A second machine building the lock from the warm cache alone: test_cache.py.)"""
    free = shutil.disk_usage(tmp_path).free
    if free < NEEDS_FREE:  # its peak is 2.2 GiB; a full /tmp would fail it and every test after it
        pytest.skip(f"needs {NEEDS_FREE >> 30} GiB free in {tmp_path.parent}, has {free / 2**30:.1f} GiB")
    try:
        check_default_on_workers(cluster, nginx, tmp_path, store, default_iso)
    finally:  # some 3 GiB of stores, cache and outputs: the session's /tmp may be a small tmpfs
        cluster.stop()
        for big in ("client", "o1", "cluster", "nginx/www"):
            shutil.rmtree(tmp_path / big, ignore_errors=True)


def check_default_on_workers(cluster: Cluster, nginx: CacheServer, tmp_path: Path, store: Path, iso: Path) -> None:
    stores = {"w1": cluster.worker("w1", host_id="w1"), "w2": cluster.worker("w2", host_id="w2")}
    cluster.wait_for(2)
    project_dir = tmp_path / "p"
    project_dir.mkdir()
    manifest_path = copy_project(project_dir)
    client = tmp_path / "client"
    (client / "blobs").mkdir(parents=True)
    subprocess.run(["cp", "-al", str(store / "blobs/sha256"), str(client / "blobs/")], check=True)  # sources only
    argv = ["-f", str(manifest_path), "--store", str(client), "--out", str(tmp_path / "o1"), "--cache", nginx.url]
    argv += mirror_args(OPTIONAL_UPSTREAMS)
    env = {**os.environ, "SOURCE_DATE_EPOCH": DEFAULT_EPOCH}
    build = subprocess.Popen(
        [sys.executable, "-m", "builder", *argv, "--json", "build", "--scheduler", cluster.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    killed = ""
    try:
        deadline = time.monotonic() + 1800
        while not killed and build.poll() is None and time.monotonic() < deadline:
            for name, s in stores.items():
                if list((s / "tmp").glob("rootfs.*")):  # composing: mmdebstrap is running in there
                    time.sleep(10)
                    cluster.kill(name)
                    killed = name
                    break
            time.sleep(0.5)
        out, err = build.communicate(timeout=1800)
    finally:
        if build.poll() is None:
            build.kill()
    assert build.returncode == 0, err + cluster.logs()
    assert killed, "no worker was seen composing the rootfs"
    report = json.loads(out)
    survivor = "w2" if killed == "w1" else "w1"
    assert report["rootfs"]["worker"].startswith(f"{survivor} (tcp://") and report["rootfs"]["made"]
    assert not list((stores[killed] / "objects").glob("rootfs/*"))  # it never finished there ...
    records = [json.loads(json.loads(nginx.get(p))["record"]) for p in nginx.listing() if p.startswith("ac/")]
    assert [r["host"] for r in records if r["kind"] == "rootfs"] == [survivor]  # ... nor reached the cache
    assert set(report["built"]) == {"installer", "linux", "xen", "xen-tools"} == set(report["workers"])
    assert not (client / "logs/build").exists() and not list((client / "objects").glob("buildroot/*"))
    assert (tmp_path / "o1" / iso.name).read_bytes() == iso.read_bytes()
