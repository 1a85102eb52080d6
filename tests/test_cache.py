"""The remote cache against real servers: nginx with WebDAV (Bazel's HTTP cache protocol) and S3 (moto's server).

Each test starts what it needs on 127.0.0.1: an nginx of its own (the Debian package
`xenspin setup` installs) or a fresh bucket on one moto server per module. The stages
here are Python functions writing files, so the tests are fast; the small distribution
built with a real build root (slow, the archive) is at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import TINY_RECIPE, Keys, write

from builder import cache, cli
from builder.cache import BadRecord, Entry
from builder.context import Context
from builder.sources import http
from builder.stage import Pending, Scheduler, Stage, resolve
from builder.store import Store, tree_digest

# --- the servers ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text() if log and log.exists() else proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port}")


NGINX_CONF = """\
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    root {d}/www;
    location / {{
      dav_methods PUT DELETE;
      create_full_put_path on;
      dav_access user:rw group:r all:r;
      client_max_body_size 0;
    }}
  }}
}}
"""


@dataclass
class CacheServer:
    """A cache a test reads and writes behind xenspin's back: its URL, and its files by path (cas/SHA, ac/NAME)."""

    kind: str
    url: str
    endpoint: str = ""
    root: Path | None = None  # nginx: the directory served below the URL
    access_log: Path | None = None
    client: object = None  # S3: a boto3 client
    bucket: str = ""
    prefix: str = ""

    def remote(self, **options) -> cache.Remote:
        said: list[str] = options.pop("said", [])
        remote = cache.from_settings(self.url, endpoint=self.endpoint, say=said.append, warn=said.append, **options)
        assert remote is not None
        return remote

    def put(self, path: str, data: bytes) -> None:
        if self.root is not None:
            (self.root / path).parent.mkdir(parents=True, exist_ok=True)
            (self.root / path).write_bytes(data)
        else:
            self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{path}", Body=data)

    def get(self, path: str) -> bytes:
        if self.root is not None:
            return (self.root / path).read_bytes()
        return self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{path}")["Body"].read()

    def listing(self) -> dict[str, str]:
        """Every path the cache holds and the sha256 of its bytes."""
        if self.root is not None:
            if not self.root.exists():
                return {}
            return {
                str(p.relative_to(self.root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in self.root.rglob("*")
                if p.is_file()
            }
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for obj in page.get("Contents", []):
                out[obj["Key"].removeprefix(self.prefix + "/")] = hashlib.sha256(self.get_key(obj["Key"])).hexdigest()
        return out

    def get_key(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def methods(self) -> list[str]:
        """nginx: the method of every request it answered, in order."""
        assert self.access_log is not None
        return re.findall(r'"([A-Z]+) /', self.access_log.read_text())


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[CacheServer]:
    """nginx with WebDAV PUT on a free 127.0.0.1 port: the directory it serves is the cache."""
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(exe, os.X_OK):
        pytest.skip("nginx is not installed: `xenspin setup` installs it (Debian's nginx package)")
    d = tmp_path / "nginx"
    (d / "www").mkdir(parents=True)
    port = free_port()
    (d / "nginx.conf").write_text(NGINX_CONF.format(d=d, port=port))
    proc = subprocess.Popen(
        [exe, "-p", str(d), "-e", str(d / "error.log"), "-c", str(d / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc, "nginx", d / "error.log")
        yield CacheServer(
            "nginx", f"http://127.0.0.1:{port}/xenspin", root=d / "www/xenspin", access_log=d / "access.log"
        )
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server on a free 127.0.0.1 port, one per module (each test makes its own bucket)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    wait_for_port(port, None, "moto")
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> CacheServer:
    import boto3

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    bucket = f"xenspin-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    client.create_bucket(Bucket=bucket)
    return CacheServer("s3", f"s3://{bucket}/cache", moto_endpoint, client=client, bucket=bucket, prefix="cache")


@pytest.fixture(params=["nginx", "s3"])
def server(request: pytest.FixtureRequest) -> CacheServer:
    return request.getfixturevalue(request.param)


# --- stages that are Python functions ------------------------------------------------------

BIG = bytes(range(256)) * 8192  # 2 MiB


@dataclass
class Made:
    calls: list[str] = field(default_factory=list)


def tree_stage(made: Made, name: str = "thing", content: str = "one", kind: str = "build") -> Stage:
    """A stage writing a little tree: a directory, modes, a link, a big file, a file the next stage shares."""

    def make(tmp: Path, needs) -> dict:
        made.calls.append(name)
        (tmp / "d/e").mkdir(parents=True)
        (tmp / "d/e/note").write_text(content)
        (tmp / "d/e/note").chmod(0o640)
        (tmp / "run.sh").write_text("#!/bin/sh\necho hi\n")
        (tmp / "run.sh").chmod(0o755)
        (tmp / "d").chmod(0o750)
        os.symlink("d/e/note", tmp / "link")
        (tmp / "big.bin").write_bytes(BIG)
        (tmp / "shared.deb").write_bytes(b"a deb\n" * 1000)
        return {"name": name, "debs": ["shared.deb"]}

    return Stage(kind, name, 1, lambda needs: {"name": name, "content": content}, make)


def after_stage(made: Made, first: str = "build:thing") -> Stage:
    """A stage after the first, keyed by what the first recorded, holding a copy of its shared file."""

    def inputs(needs) -> dict:
        if needs[first].meta is None:
            raise Pending("needs the first stage's record")
        return {"debs": needs[first].meta["debs"]}

    def make(tmp: Path, needs) -> dict:
        made.calls.append("repo")
        shutil.copy2(needs[first].path / "shared.deb", tmp / "shared.deb")
        return {"debs": ["shared.deb"]}

    return Stage("repo", "repo", 1, inputs, make, after=(first,))


def lazy_root(made: Made) -> Stage:
    def make(tmp: Path, needs) -> dict:
        made.calls.append("root")
        return {}

    return Stage("buildroot", "root", 1, lambda needs: {"root": 1}, make, lazy=True)


def run(store: Store, remote: cache.Remote | None, made: Made, **kw) -> dict:
    stages = [lazy_root(made), dataclasses.replace(tree_stage(made, **kw), uses=("buildroot:root",)), after_stage(made)]
    return Scheduler(store, stages, jobs=2, remote=remote).run()


# --- the record's checks (pure) --------------------------------------------------------------


def entry(path: str, type: str = "file", **kw) -> dict:
    base = {"path": path, "type": type, "mtime": 0}
    if type == "file":
        base |= {"mode": 0o644, "size": 1, "sha256": "0" * 64}
    elif type == "dir":
        base |= {"mode": 0o755}
    return base | kw


@pytest.mark.parametrize(
    "files,why",
    [
        ([entry("../x")], "not a plain name"),
        ([entry("/etc/passwd")], "bad name"),
        ([entry("a/./b")], "not a plain name"),
        ([entry("a//b")], "not a plain name"),
        ([entry("")], "bad name"),
        ([entry("a\0b")], "bad name"),
        ([entry("a/b")], "does not make a directory"),  # no directory a in the record
        ([entry("a", "link", target="/etc"), entry("a/passwd")], "link out of the object"),
        ([entry("a", "link", target="d"), entry("a/passwd")], "does not make a directory"),  # through a link
        ([entry("l", "link", target="../../etc/shadow")], "link out of the object"),
        ([entry("d", "dir"), entry("d/l", "link", target="../..")], "link out of the object"),
        ([entry("x"), entry("x")], "twice or out of order"),
        ([entry("b"), entry("a")], "twice or out of order"),
        ([entry("x", mode=0o4755)], "bad mode"),
        ([entry("x", sha256="zz")], "bad sha256"),
        ([entry("x", size=-1)], "bad size"),
        ([entry("x", "fifo", mode=0o644)], "unknown type"),
    ],
)
def test_a_record_naming_a_way_out_is_refused_before_anything_is_written(files: list, why: str) -> None:
    with pytest.raises(BadRecord, match=why):
        cache.check_entries(files)


def test_a_link_inside_the_object_is_taken() -> None:
    files = [entry("d", "dir"), entry("d/f"), entry("d/l", "link", target="f"), entry("up", "link", target="d/../d/f")]
    assert [e.type for e in cache.check_entries(files)] == ["dir", "file", "link", "link"]


def test_scan_refuses_a_device_a_fifo_and_a_link_out(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(cache.Uncacheable, match="fifo"):
        cache.scan(tmp_path)
    (tmp_path / "fifo").unlink()
    os.symlink("/etc/passwd", tmp_path / "out")
    with pytest.raises(cache.Uncacheable, match="link out"):
        cache.scan(tmp_path)


def test_a_record_for_another_key_is_refused() -> None:
    text = cache.body("build", "a" * 64, {}, [Entry("f", "file", 0o644, 0, 1, "0" * 64)], "h", "t")
    data = cache.encode(text, None)
    assert cache.decode(data, "build", "a" * 64).entries[0].path == "f"
    with pytest.raises(BadRecord, match="not this stage"):
        cache.decode(data, "build", "b" * 64)  # copied under another stage's name
    with pytest.raises(BadRecord, match="not a record"):
        cache.decode(b"<html>", "build", "a" * 64)


# --- a second machine takes what the first made --------------------------------------------------


def test_an_empty_store_takes_every_stage_from_the_cache_and_makes_nothing(server: CacheServer, tmp_path: Path) -> None:
    first, second = Store(tmp_path / "a"), Store(tmp_path / "b")
    made = Made()
    run(first, server.remote(), made)
    assert sorted(made.calls) == ["repo", "root", "thing"]
    # blobs first, records last: two records, the shared file stored once
    held = server.listing()
    assert len([p for p in held if p.startswith("ac/")]) == 2
    blobs = [p for p in held if p.startswith("cas/")]
    assert len(blobs) == 4 and all(p == f"cas/{h}" for p, h in held.items() if p.startswith("cas/"))

    said: list[str] = []
    remote = server.remote(said=said)
    again = Made()
    outcomes = run(second, remote, again)
    assert again.calls == []  # nothing made: not the stages, not the build root they use
    assert all(o.remote and not o.made for o in outcomes.values())
    for kind, key in [(o.stage.kind, o.done.key) for o in outcomes.values()]:
        a, b = first.object_path(kind, key), second.object_path(kind, key)
        assert tree_digest(a) == tree_digest(b)  # names, kinds, modes, bytes, link targets
        assert first.meta(kind, key) == second.meta(kind, key)
        for p in a.rglob("*"):
            assert int(p.lstat().st_mtime) == int((b / p.relative_to(a)).lstat().st_mtime)
    assert os.readlink(outcomes["build:thing"].done.path / "link") == "d/e/note"
    assert not second.object_path("buildroot", outcomes["build:thing"].done.key).exists()
    assert remote.stats.hits == 2 and remote.stats.refused == 0 and remote.stats.uploads == 0
    # the repository's copy of shared.deb was linked from the build's, not downloaded again
    assert remote.stats.blobs_down == 4 and remote.stats.blobs_local == 1
    assert any("from " in line and "build:" in line for line in said)
    # and a third run finds both in its own store: nothing is asked of the cache
    third = server.remote()
    run(second, third, Made())
    assert not third.used


def test_a_tampered_blob_is_refused_and_the_stage_made_here_and_the_cache_healed(
    server: CacheServer, tmp_path: Path
) -> None:
    made = Made()
    outcomes = run(Store(tmp_path / "a"), server.remote(), made)
    big = hashlib.sha256(BIG).hexdigest()
    server.put(f"cas/{big}", BIG[:-1] + b"X")  # same name, other bytes

    said: list[str] = []
    remote = server.remote(said=said)
    second = Store(tmp_path / "b")
    again = Made()
    outcomes = run(second, remote, again)
    assert "thing" in again.calls and "root" in again.calls  # made here, not taken
    assert not outcomes["build:thing"].remote and outcomes["repo:repo"].remote
    assert (outcomes["build:thing"].done.path / "big.bin").read_bytes() == BIG
    assert remote.stats.refused == 1 and remote.stats.hits == 1
    (warning,) = [line for line in said if line.startswith("warning:")]
    assert "build:" in warning and "big.bin" in warning and "changed in the cache" in warning
    # what was made here was sent again, the bad blob overwritten: the next machine takes it
    assert server.get(f"cas/{big}") == BIG
    third = Made()
    run(Store(tmp_path / "c"), server.remote(), third)
    assert third.calls == []


def test_a_missing_blob_is_refused_too(nginx: CacheServer, tmp_path: Path) -> None:
    run(Store(tmp_path / "a"), nginx.remote(), Made())
    assert nginx.root is not None
    (nginx.root / f"cas/{hashlib.sha256(BIG).hexdigest()}").unlink()
    again = Made()
    said: list[str] = []
    run(Store(tmp_path / "b"), nginx.remote(said=said), again)
    assert "thing" in again.calls
    assert any("is not in the cache" in line for line in said)


def test_a_record_whose_files_lead_out_is_refused_and_nothing_is_written_outside(
    nginx: CacheServer, tmp_path: Path
) -> None:
    made = Made()
    outcomes = run(Store(tmp_path / "a"), nginx.remote(), made)
    key = outcomes["build:thing"].done.key
    victim = tmp_path / "victim"
    payload = hashlib.sha256(b"owned\n").hexdigest()
    nginx.put(f"cas/{payload}", b"owned\n")
    files = [
        {"path": "x", "type": "link", "target": str(victim), "mtime": 0},
        {"path": "x/f", "type": "file", "mode": 0o644, "size": 6, "sha256": payload, "mtime": 0},
    ]
    text = json.dumps(
        {"xenspin-cache": 1, "kind": "build", "key": key, "meta": {}, "files": files, "host": "evil", "created": ""}
    ).encode()
    nginx.put(f"ac/{cache.ac_key('build', key)}", cache.encode(text, None))
    victim.mkdir()
    again = Made()
    said: list[str] = []
    run(Store(tmp_path / "b"), nginx.remote(said=said), again)
    assert "thing" in again.calls and list(victim.iterdir()) == []
    assert any("link out of the object" in line for line in said)


# --- read-only and trust ---------------------------------------------------------------------------


def test_read_only_never_writes(server: CacheServer, tmp_path: Path) -> None:
    run(Store(tmp_path / "a"), server.remote(), Made(), content="warm")
    before = server.listing()
    seen = len(server.methods()) if server.access_log is not None else 0
    remote = server.remote(read_only=True)
    made = Made()
    run(Store(tmp_path / "b"), remote, made, content="other")  # a miss: made here, not sent
    assert "thing" in made.calls
    assert server.listing() == before and remote.stats.uploads == 0 and remote.stats.blobs_up == 0
    if server.access_log is not None:
        assert set(server.methods()[seen:]) == {"GET"}  # records looked up, nothing written


@pytest.fixture
def signer(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> Keys:
    monkeypatch.setenv("GNUPGHOME", str(keys.home))  # the writer's keyring holds the release key
    return keys


def test_signed_trust_takes_only_records_signed_by_the_keyring(
    nginx: CacheServer, tmp_path: Path, signer: Keys
) -> None:
    run(Store(tmp_path / "a"), nginx.remote(sign_key=signer.good), Made())
    remote = nginx.remote(trust="signed", keyring=[signer.good_file])
    made = Made()
    run(Store(tmp_path / "b"), remote, made)
    assert made.calls == [] and remote.stats.hits == 2

    said: list[str] = []
    other = nginx.remote(trust="signed", keyring=[signer.bad_file], said=said)
    made = Made()
    run(Store(tmp_path / "c"), other, made)
    assert sorted(made.calls) == ["repo", "root", "thing"] and other.stats.refused == 2
    assert any("not a good one by the cache keyring" in line for line in said)


def test_signed_trust_refuses_unsigned_and_altered_records(nginx: CacheServer, tmp_path: Path, signer: Keys) -> None:
    run(Store(tmp_path / "a"), nginx.remote(), Made(), content="unsigned")
    said: list[str] = []
    made = Made()
    run(Store(tmp_path / "b"), nginx.remote(trust="signed", keyring=[signer.good_file], said=said), made)
    assert "thing" in made.calls and any("not signed (made by" in line for line in said)

    outcomes = run(Store(tmp_path / "c"), nginx.remote(sign_key=signer.good, host="builder-1"), Made(), content="s")
    name = cache.ac_key("build", outcomes["build:thing"].done.key)
    record = json.loads(nginx.get(f"ac/{name}"))
    inner = json.loads(record["record"])
    assert inner["host"] == "builder-1" and record["signature"].startswith("-----BEGIN PGP SIGNATURE")
    inner["meta"]["name"] = "changed"
    record["record"] = json.dumps(inner, sort_keys=True, separators=(",", ":"))
    nginx.put(f"ac/{name}", json.dumps(record).encode())
    said = []
    made = Made()
    run(Store(tmp_path / "d"), nginx.remote(trust="signed", keyring=[signer.good_file], said=said), made, content="s")
    assert "thing" in made.calls
    assert any("build:" in line and "is not a good one by the cache keyring" in line for line in said)


def test_signed_trust_needs_a_keyring() -> None:
    with pytest.raises(cache.XenspinError, match="--cache-keyring"):
        cache.from_settings("http://127.0.0.1:9/x", trust="signed")


# --- a cache that is not there -------------------------------------------------------------------


def test_an_unreachable_cache_is_reported_once_and_the_build_goes_on(tmp_path: Path) -> None:
    said: list[str] = []
    remote = cache.from_settings("http://127.0.0.1:9/cache", say=said.append, warn=said.append)
    made = Made()
    run(Store(tmp_path / "a"), remote, made)
    assert sorted(made.calls) == ["repo", "root", "thing"]
    (warning,) = said
    assert warning.startswith("warning: cache http://127.0.0.1:9/cache: GET ac/") and "going on without" in warning
    assert remote.stats.errors >= 1


def test_a_password_in_the_url_is_not_shown() -> None:
    remote = cache.from_settings("https://ci:s3cret@cache.example/x")
    assert remote is not None and "s3cret" not in remote.shown and "ci:***@cache.example" in remote.shown


# --- plan ---------------------------------------------------------------------------------------------


def test_resolve_shows_remote_hits_and_keys_after_them(nginx: CacheServer, tmp_path: Path) -> None:
    made = Made()
    stages = [tree_stage(made), after_stage(made)]
    store = Store(tmp_path / "b")
    assert [p.hit for p in resolve(store, stages, nginx.remote())] == [False, None]  # repo: pending
    Scheduler(Store(tmp_path / "a"), stages, remote=nginx.remote()).run()
    planned = resolve(store, stages, nginx.remote())
    assert [(p.hit, p.remote) for p in planned] == [(False, True), (False, True)]  # the record's meta keys the repo


# --- sources through the CAS ------------------------------------------------------------------------


def test_a_source_file_comes_from_the_cache_when_upstream_is_gone(
    server: CacheServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"tarball bytes\n" * 100
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / "up").mkdir()
    (tmp_path / "up/src.tar").write_bytes(data)
    first = Context(store=Store(tmp_path / "a"), base=None, remote=server.remote())
    http.download((tmp_path / "up/src.tar").as_uri(), first, sha256=sha, what="fetch x")
    assert server.get(f"cas/{sha}") == data  # sent as it was downloaded
    (tmp_path / "up/src.tar").unlink()  # upstream gone
    second = Context(store=Store(tmp_path / "b"), base=None, remote=server.remote())
    assert http.download((tmp_path / "up/src.tar").as_uri(), second, sha256=sha, what="fetch x") == sha
    assert second.store.blob_path(sha).read_bytes() == data
    assert second.remote.stats.sources_down == 1


def test_a_tampered_source_file_in_the_cache_is_ignored_for_upstream(nginx: CacheServer, tmp_path: Path) -> None:
    data = b"the real bytes\n"
    sha = hashlib.sha256(data).hexdigest()
    nginx.put(f"cas/{sha}", b"other bytes\n")
    (tmp_path / "src.tar").write_bytes(data)
    said: list[str] = []
    ctx = Context(store=Store(tmp_path / "a"), base=None, remote=nginx.remote(said=said))
    http.download((tmp_path / "src.tar").as_uri(), ctx, sha256=sha, what="fetch x")
    assert ctx.store.blob_path(sha).read_bytes() == data
    assert any("the cached copy is sha256" in line for line in said)
    assert nginx.get(f"cas/{sha}") == data  # and the cache holds the real bytes again


# --- the command line ---------------------------------------------------------------------------------

SMALL = """\
name: small
version: "1"
components:
  hello: {}
installer: {component: hello}
"""
NO_STEPS = "source: {path: hello}\n"


def small(where: Path, recipe: str = NO_STEPS) -> Path:
    write(where, {"distro.yaml": SMALL, "components/hello.yaml": recipe, "components/hello/note": "hi\n"})
    return where / "distro.yaml"


def xenspin(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out, out.err


def test_build_plan_and_stats_on_the_command_line(
    nginx: CacheServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A small distribution of in-tree sources: the first store warms the cache, the second takes it all."""
    manifest = small(tmp_path / "p")
    first = ["-f", str(manifest), "--store", str(tmp_path / "s1"), "--out", str(tmp_path / "o1"), "--cache", nginx.url]
    xenspin(capsys, *first, "build")
    out, _ = xenspin(capsys, *first, "cache", "stats")
    assert "0 hits, 2 misses" in out and "2 uploaded" in out

    second = ["-f", str(manifest), "--store", str(tmp_path / "s2"), "--out", str(tmp_path / "o2")]
    out, _ = xenspin(capsys, *second, "plan")
    assert "[miss " in out and "remote hit" not in out  # no cache named: none asked
    out, _ = xenspin(capsys, *second, "--cache", nginx.url, "plan")
    assert "[remote hit " in out.split("stage graph")[0]
    assert "build:hello  [remote hit " in out and "repo:repo    [remote hit " in out
    assert "0 to run, 2 from the remote cache" in out

    writes = len([m for m in nginx.methods() if m == "PUT"])
    out, err = xenspin(capsys, *second, "--cache", nginx.url, "--cache-read-only", "build")
    assert "cache: build:" in err and "cache: repo:" in err  # hello builds nothing: no `from the remote cache` line
    assert len([m for m in nginx.methods() if m == "PUT"]) == writes  # read-only: no write
    out, _ = xenspin(capsys, *second, "--json", "cache", "stats")
    stats = json.loads(out)
    assert stats["hits"] == 2 and stats["uploads"] == 0 and stats["read_only"] and stats["command"] == "build"
    assert (tmp_path / "o2/repo/Packages").read_bytes() == (tmp_path / "o1/repo/Packages").read_bytes()


def test_the_cache_from_the_config_file(s3: CacheServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = Path(os.environ["XDG_CONFIG_HOME"]) / "xenspin/config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(f"cache:\n  url: {s3.url}\n  endpoint: {s3.endpoint}\n  host-id: ci-runner-7\n")
    manifest = small(tmp_path / "p")
    xenspin(capsys, "-f", str(manifest), "--store", str(tmp_path / "s1"), "build")
    records = [json.loads(json.loads(s3.get(p))["record"]) for p in s3.listing() if p.startswith("ac/")]
    assert {r["host"] for r in records} == {"ci-runner-7"} and {r["kind"] for r in records} == {"build", "repo"}
    xenspin(capsys, "-f", str(manifest), "--store", str(tmp_path / "s2"), "build")
    assert json.loads(xenspin(capsys, "--store", str(tmp_path / "s2"), "--json", "cache", "stats")[0])["hits"] == 2
    xenspin(capsys, "-f", str(manifest), "--store", str(tmp_path / "s3"), "--no-cache", "build")
    assert json.loads(xenspin(capsys, "--store", str(tmp_path / "s3"), "--json", "cache", "stats")[0]) is None


def test_cache_stats_before_any_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = xenspin(capsys, "--store", str(tmp_path / "s"), "cache", "stats")
    assert out.startswith("no build or fetch with this store")


# --- a real build: the second machine runs no build step --------------------------------------------


@pytest.mark.slow
@pytest.mark.network
def test_a_second_machine_builds_the_lock_from_the_warm_cache_without_a_step_or_upstream(
    nginx: CacheServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first machine builds a one-step component in a real build root (mmdebstrap, the archive); the
    second, with an empty store and the Debian archive unreachable, takes the build root's locked .debs
    and the build from the cache: no build root is made, no step runs, the .deb is the same bytes."""
    manifest = small(tmp_path / "p", TINY_RECIPE)
    first = ["-f", str(manifest), "--store", str(tmp_path / "s1"), "--out", str(tmp_path / "o1"), "--cache", nginx.url]
    out, _ = xenspin(capsys, *first, "--json", "build")
    assert json.loads(out)["built"] == ["hello"]

    s2 = tmp_path / "s2"
    second = ["-f", str(manifest), "--store", str(s2), "--out", str(tmp_path / "o2"), "--cache", nginx.url]
    second += ["--mirror", "http://deb.debian.org/=http://127.0.0.1:9/"]  # upstream unreachable
    out, _ = xenspin(capsys, *second, "--json", "build")
    report = json.loads(out)
    assert report["built"] == [] and report["remote"] == ["hello"]
    assert not (s2 / "logs/build").exists()  # no step ran
    assert not list((s2 / "objects").glob("buildroot/*"))  # no build root was made
    (deb,) = report["debs"]["hello"]
    first_deb = next((tmp_path / "o1/repo").glob("hello-xs_*.deb"))
    assert Path(deb).read_bytes() == first_deb.read_bytes()
    stats = json.loads(xenspin(capsys, "--store", str(s2), "--json", "cache", "stats")[0])
    assert stats["sources_down"] > 0 and stats["hits"] == 2 and stats["refused"] == 0


# --- git sources as bundles -------------------------------------------------------------------------


def test_a_git_source_comes_from_the_cache_as_a_bundle_when_upstream_is_gone(
    server: CacheServer, tmp_path: Path, keys: Keys
) -> None:
    """The first machine fetches upstream and sends the locked commit (and its signed tag) as a bundle;
    the second, upstream gone, takes the bundle, and fetch checks the tag and its signature as ever."""
    from conftest import commit, git, new_repo

    from builder.manifest import GitSource, Verify
    from builder.sources import git as gitsrc

    up = new_repo(tmp_path / "up")
    commit(up, "two")
    git(up, "tag", "-s", "-m", "v1.0", "v1.0", key=keys.good, keys=keys)
    source = GitSource(git=up.as_uri(), ref="v1.0", verify=Verify(tag=True, keys=[str(keys.good_file)]))
    first = Context(store=Store(tmp_path / "a"), base=None, remote=server.remote())
    entry = gitsrc.lock("x", source, first)
    gitsrc.fetch("x", source, entry, Context(store=Store(tmp_path / "a2"), base=None, remote=first.remote))
    assert first.remote.stats.uploads == 1  # at lock; the second fetch found the bundle there

    shutil.rmtree(up)
    second = Context(store=Store(tmp_path / "b"), base=None, remote=server.remote())
    gitsrc.fetch("x", source, entry, second)
    assert gitsrc.fetched(entry, second) and second.remote.stats.hits == 1
    out = gitsrc.export(entry, second, tmp_path / "tree")
    assert (out / "README").read_text() == "two"

    # a bundle whose tag was signed by another key is refused by the same check as upstream's would be
    bad = GitSource(git=source.git, ref="v1.0", verify=Verify(tag=True, keys=[str(keys.bad_file)]))
    with pytest.raises(gitsrc.SignatureError):
        gitsrc.fetch("x", bad, entry, Context(store=Store(tmp_path / "c"), base=None, remote=server.remote()))


def test_s3_without_credentials_is_one_line_and_the_build_goes_on(
    moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to ask
    said: list[str] = []
    remote = cache.from_settings("s3://nobucket/x", endpoint=moto_endpoint, say=said.append, warn=said.append)
    made = Made()
    run(Store(tmp_path / "a"), remote, made)
    assert sorted(made.calls) == ["repo", "root", "thing"]
    (warning,) = said
    assert "Unable to locate credentials" in warning and "going on without the cache" in warning


def test_offline_asks_no_cache(nginx: CacheServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = small(tmp_path / "p")
    xenspin(capsys, "-f", str(manifest), "--store", str(tmp_path / "s1"), "--cache", nginx.url, "build")
    asked = len(nginx.methods())
    out, _ = xenspin(
        capsys, "-f", str(manifest), "--store", str(tmp_path / "s2"), "--cache", nginx.url, "--offline", "plan"
    )
    assert "remote hit" not in out and len(nginx.methods()) == asked
