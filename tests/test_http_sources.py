"""HTTP downloads and the tarball/prebuilt kinds against a real local server.

The server (127.0.0.1, port 0, a thread) serves generated files and misbehaves on
purpose by URL prefix: /cut/ drops the connection half way on the first request,
/cutnorange/ does that and then ignores Range, /tamper/ serves altered bytes,
/flaky/ answers 503 once, /slow/ waits before the body, /gzenc/ labels a .gz file
with Content-Encoding: gzip (a common server misconfiguration). Everything else is a plain
file server with Range and ETag support.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from builder.manifest import PrebuiltSource, TarballSource, Verify
from builder.progress import Reporter, Task
from builder.run import run
from builder.sources import Context, FetchError, Missing, http, tarball
from builder.store import Store

MODES = {"cut", "cutnorange", "tamper", "flaky", "slow", "gzenc"}


# --- the server --------------------------------------------------------------------


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


@dataclass
class Server:
    root: Path
    httpd: ThreadingHTTPServer | None = None
    seen: list[Seen] = field(default_factory=list)
    first: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base(self) -> str:
        assert self.httpd is not None
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def url(self, path: str) -> str:
        return self.base + path.lstrip("/")

    def requests_for(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == "/" + path.lstrip("/")]

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        state: Server = self.server.state  # type: ignore[attr-defined]
        with state.lock:
            state.seen.append(Seen(self.path, dict(self.headers)))
            first = self.path not in state.first
            state.first.add(self.path)
        mode, _, rest = self.path.lstrip("/").partition("/")
        if mode not in MODES:
            mode, rest = "plain", self.path.lstrip("/")
        file = state.root / rest
        if ".." in rest.split("/") or not file.is_file():
            return self._reply(404, b"not found\n")
        data = file.read_bytes()
        if mode == "tamper":
            data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
        if mode == "flaky" and first:
            return self._reply(503, b"busy\n", {"Retry-After": "0"})
        if mode == "slow":
            time.sleep(0.3)
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        start = 0
        want = self.headers.get("Range", "")
        honour = mode != "cutnorange" and self.headers.get("If-Range", etag) == etag
        m = re.fullmatch(r"bytes=(\d+)-", want)
        if m and honour:
            start = int(m.group(1))
            if start >= len(data):
                return self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        if mode == "gzenc":
            self.send_header("Content-Encoding", "gzip")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if mode in ("cut", "cutnorange") and first:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _reply(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "www"
    root.mkdir()
    state = Server(root)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.state = state  # type: ignore[attr-defined]
    state.httpd = httpd
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    state.stop()
    thread.join(5)


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "BACKOFF", 0.01)


# --- helpers -----------------------------------------------------------------------


def make_tarball(path: Path, files: dict[str, bytes], compression: str = "gz") -> bytes:
    """Write a tarball of files (names may contain directories) and return its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = f"w:{compression}" if compression else "w"
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return path.read_bytes()


def xen_tarball(server: Server, name: str = "xen-4.19.0.tar.gz") -> bytes:
    """A tarball of incompressible bytes, big enough that half of it is a real cut."""
    return make_tarball(
        server.root / name,
        {"xen-4.19.0/README": b"xen\n", "xen-4.19.0/blob.bin": os.urandom(256 * 1024)},
    )


def ctx_for(tmp_path: Path, name: str = "store", **kw: object) -> Context:
    return Context(store=Store(tmp_path / name), base=None, progress=Reporter(quiet=True), **kw)  # type: ignore[arg-type]


def blobs(ctx: Context) -> list[Path]:
    return sorted((ctx.store.root / "blobs" / "sha256").glob("*/*"))


def partials(ctx: Context) -> list[Path]:
    return sorted(p for p in (ctx.store.root / "tmp").glob("partial-*") if p.suffix != ".json")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def one_line(e: pytest.ExceptionInfo[BaseException], prefix: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert msg.startswith(prefix), msg
    return msg


# --- lock and fetch ----------------------------------------------------------------


def test_lock_then_fetch_tarball(server: Server, tmp_path: Path) -> None:
    data = xen_tarball(server)
    url = server.url("xen-4.19.0.tar.gz")
    ctx = ctx_for(tmp_path)
    entry = tarball.lock("xen", TarballSource(url=url), ctx)
    assert entry == {"kind": "tarball", "url": url, "sha256": sha(data), "size": len(data)}
    assert tarball.fetched(entry, ctx)
    assert tarball.keeps(entry, ctx).blobs == {sha(data)}

    fresh = ctx_for(tmp_path, "store2")
    assert not tarball.fetched(entry, fresh)
    tarball.fetch("xen", TarballSource(url=url), entry, fresh)
    assert tarball.fetched(entry, fresh)
    assert fresh.store.blob_path(sha(data)).read_bytes() == data
    assert partials(fresh) == []


def test_pinned_sha256_mismatch_refused_nothing_stored(server: Server, tmp_path: Path) -> None:
    data = xen_tarball(server)
    ctx = ctx_for(tmp_path)
    with pytest.raises(FetchError) as e:
        tarball.lock("xen", TarballSource(url=server.url("tamper/xen-4.19.0.tar.gz"), sha256=sha(data)), ctx)
    assert "sha256 mismatch" in one_line(e, "lock xen: ")
    assert blobs(ctx) == []
    assert partials(ctx) == []


def test_tampered_at_fetch_refused_nothing_stored(server: Server, tmp_path: Path) -> None:
    xen_tarball(server)
    ctx = ctx_for(tmp_path)
    entry = tarball.lock("xen", TarballSource(url=server.url("xen-4.19.0.tar.gz")), ctx)
    fresh = ctx_for(tmp_path, "store2")
    bad = {**entry, "url": server.url("tamper/xen-4.19.0.tar.gz")}
    with pytest.raises(FetchError) as e:
        tarball.fetch("xen", TarballSource(url=bad["url"]), bad, fresh)
    assert entry["sha256"] in one_line(e, "fetch xen: ")
    assert blobs(fresh) == []
    assert partials(fresh) == []


def test_cut_download_resumes_with_range(server: Server, tmp_path: Path) -> None:
    data = xen_tarball(server)
    ctx = ctx_for(tmp_path)
    entry = tarball.lock("xen", TarballSource(url=server.url("cut/xen-4.19.0.tar.gz")), ctx)
    assert entry["sha256"] == sha(data)
    seen = server.requests_for("cut/xen-4.19.0.tar.gz")
    assert len(seen) == 2
    assert "Range" not in seen[0].headers
    m = re.fullmatch(r"bytes=(\d+)-", seen[1].headers["Range"])
    assert m and 0 < int(m.group(1)) < len(data)
    assert seen[1].headers.get("If-Range")  # a changed file would come back whole


def test_cut_download_resumes_in_a_later_run(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = xen_tarball(server)
    url = server.url("cut/xen-4.19.0.tar.gz")
    ctx = ctx_for(tmp_path)
    monkeypatch.setattr(http, "ATTEMPTS", 1)
    with pytest.raises(FetchError) as e:
        tarball.lock("xen", TarballSource(url=url), ctx)
    assert "failed after 1 attempts" in one_line(e, "lock xen: ")
    [partial] = partials(ctx)
    assert 0 < partial.stat().st_size < len(data)
    assert blobs(ctx) == []

    monkeypatch.setattr(http, "ATTEMPTS", 5)
    entry = tarball.lock("xen", TarballSource(url=url), ctx)
    assert entry["sha256"] == sha(data)
    assert server.requests_for("cut/xen-4.19.0.tar.gz")[1].headers["Range"] == f"bytes={partial_size(data)}-"
    assert partials(ctx) == []


def partial_size(data: bytes) -> int:
    return len(data) // 2


def test_server_ignoring_range_restarts_cleanly(server: Server, tmp_path: Path) -> None:
    data = xen_tarball(server)
    ctx = ctx_for(tmp_path)
    entry = tarball.lock("xen", TarballSource(url=server.url("cutnorange/xen-4.19.0.tar.gz")), ctx)
    assert entry["sha256"] == sha(data)
    assert entry["size"] == len(data)
    seen = server.requests_for("cutnorange/xen-4.19.0.tar.gz")
    assert len(seen) == 2 and "Range" in seen[1].headers
    assert [p.name for p in blobs(ctx)] == [sha(data)]


def test_file_changed_between_runs_is_fetched_whole(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    xen_tarball(server)
    url = server.url("cut/xen-4.19.0.tar.gz")
    ctx = ctx_for(tmp_path)
    monkeypatch.setattr(http, "ATTEMPTS", 1)
    with pytest.raises(FetchError):
        tarball.lock("xen", TarballSource(url=url), ctx)
    new = xen_tarball(server)  # same name, other bytes: the kept half must not be glued to it
    entry = tarball.lock("xen", TarballSource(url=url), ctx)
    assert entry["sha256"] == sha(new)
    assert server.requests_for("cut/xen-4.19.0.tar.gz")[1].headers.get("If-Range")


def test_complete_partial_is_not_fetched_again(server: Server, tmp_path: Path) -> None:
    data = xen_tarball(server)
    url = server.url("xen-4.19.0.tar.gz")
    ctx = ctx_for(tmp_path)
    # As a run that was killed between the last byte and the store would leave it.
    partial = ctx.store.root / "tmp" / ("partial-" + hashlib.sha256(url.encode()).hexdigest()[:32])
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data)
    etag = '"' + sha(data)[:16] + '"'
    partial.with_name(partial.name + ".json").write_text(json.dumps({"validator": etag}))
    entry = tarball.lock("xen", TarballSource(url=url), ctx)
    assert entry["sha256"] == sha(data)
    [seen] = server.requests_for("xen-4.19.0.tar.gz")
    assert seen.headers["Range"] == f"bytes={len(data)}-"  # answered 416: nothing more to send
    assert partials(ctx) == []


def test_content_encoding_is_not_undone(server: Server, tmp_path: Path) -> None:
    data = xen_tarball(server)
    ctx = ctx_for(tmp_path)
    entry = tarball.lock("xen", TarballSource(url=server.url("gzenc/xen-4.19.0.tar.gz"), sha256=sha(data)), ctx)
    assert entry["size"] == len(data)


def test_404_fails_at_once(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "BACKOFF", 5.0)  # a retry would show in the time taken
    ctx = ctx_for(tmp_path)
    url = server.url("nope.tar.gz")
    start = time.monotonic()
    with pytest.raises(FetchError) as e:
        tarball.lock("xen", TarballSource(url=url), ctx)
    assert time.monotonic() - start < 2
    assert one_line(e, "lock xen: ") == f"lock xen: {url}: HTTP 404 Not Found"
    assert len(server.requests_for("nope.tar.gz")) == 1


def test_server_error_is_retried(server: Server, tmp_path: Path) -> None:
    data = xen_tarball(server)
    ctx = ctx_for(tmp_path)
    entry = tarball.lock("xen", TarballSource(url=server.url("flaky/xen-4.19.0.tar.gz")), ctx)
    assert entry["sha256"] == sha(data)
    assert len(server.requests_for("flaky/xen-4.19.0.tar.gz")) == 2


def test_offline_with_empty_store_is_missing(server: Server, tmp_path: Path) -> None:
    data = xen_tarball(server)
    url = server.url("xen-4.19.0.tar.gz")
    ctx = ctx_for(tmp_path, offline=True)
    entry = {"kind": "tarball", "url": url, "sha256": sha(data), "size": len(data)}
    with pytest.raises(Missing) as e:
        tarball.fetch("xen", TarballSource(url=url), entry, ctx)
    assert url in one_line(e, "fetch xen: ")
    with pytest.raises(Missing):
        tarball.lock("xen", TarballSource(url=url), ctx)
    assert server.seen == []


def test_offline_after_fetch_needs_no_server(server: Server, tmp_path: Path) -> None:
    xen_tarball(server)
    url = server.url("xen-4.19.0.tar.gz")
    ctx = ctx_for(tmp_path)
    source = TarballSource(url=url)
    entry = tarball.lock("xen", source, ctx)
    tarball.fetch("xen", source, entry, ctx)
    server.stop()
    ctx.offline = True
    tarball.fetch("xen", source, entry, ctx)
    ctx.offline = False  # a stored blob means no network even when online
    tarball.fetch("xen", source, entry, ctx)
    tree = tarball.unpack(entry, ctx, tmp_path / "src")
    assert (tree / "README").read_bytes() == b"xen\n"


def test_mirror_map_rewrites_but_lock_keeps_canonical_url(server: Server, tmp_path: Path) -> None:
    data = make_tarball(server.root / "pvdrivers/win/9.0.0/xenbus.tar", {"xenbus/xenbus.sys": b"driver"}, "")
    canonical = "https://xenbits.xen.org/pvdrivers/win/9.0.0/xenbus.tar"
    ctx = ctx_for(tmp_path, mirrors={"https://xenbits.xen.org/": server.base})
    entry = tarball.lock("win-xenbus", TarballSource(url=canonical), ctx)
    assert entry["url"] == canonical
    assert entry["sha256"] == sha(data)
    assert len(server.requests_for("pvdrivers/win/9.0.0/xenbus.tar")) == 1
    fresh = ctx_for(tmp_path, "store2", mirrors=ctx.mirrors)
    tarball.fetch("win-xenbus", TarballSource(url=canonical), entry, fresh)
    assert tarball.fetched(entry, fresh)


def test_concurrent_fetches_share_one_download(server: Server, tmp_path: Path) -> None:
    data = xen_tarball(server)
    url = server.url("slow/xen-4.19.0.tar.gz")
    entry = {"kind": "tarball", "url": url, "sha256": sha(data), "size": len(data)}
    ctx = ctx_for(tmp_path)
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            tarball.fetch("xen", TarballSource(url=url), entry, ctx_for(tmp_path))  # one store, two contexts
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert [p.name for p in blobs(ctx)] == [sha(data)]
    assert len(server.requests_for("slow/xen-4.19.0.tar.gz")) == 1
    assert partials(ctx) == []


def test_progress_counts_the_bytes(server: Server, tmp_path: Path) -> None:
    data = xen_tarball(server)

    class Counting(Task):
        done = 0
        total: int | None = None

        def __init__(self) -> None:
            super().__init__(None, None)

        def advance(self, amount: int) -> None:
            Counting.done += amount

        def reset(self, completed: int = 0, total: int | None = None) -> None:
            Counting.done, Counting.total = completed, total

    class Recorder(Reporter):
        descriptions: list[str] = []

        @contextmanager
        def transfer(self, description: str, total: int | None = None) -> Iterator[Task]:
            self.descriptions.append(description)
            yield Counting()

    ctx = ctx_for(tmp_path)
    ctx.progress = Recorder(quiet=True)
    tarball.lock("xen", TarballSource(url=server.url("cut/xen-4.19.0.tar.gz")), ctx)
    assert Recorder.descriptions == ["lock xen", "lock xen"]  # cut, then resumed
    assert Counting.done == Counting.total == len(data)


# --- signatures --------------------------------------------------------------------


@dataclass
class Keys:
    good: Path  # armored public key file
    good_home: Path
    good_fpr: str
    other_home: Path


def gpg(home: Path, *args: str | Path) -> str:
    """gpg in a throwaway home: GNUPGHOME goes to the subprocess only, never ~/.gnupg."""
    env = {"GNUPGHOME": str(home)}
    return run(["gpg", "--batch", *args], what="test gpg", env=env, capture=True).stdout.decode()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    homes = []
    for name in ("good", "other"):
        home = tmp_path_factory.mktemp(f"gpg-{name}")
        home.chmod(0o700)
        gpg(home, "--passphrase", "", "--quick-gen-key", f"{name} <{name}@example.invalid>", "ed25519", "sign", "never")
        homes.append(home)
    good_home, other_home = homes
    pub = good_home / "good.asc"
    pub.write_text(gpg(good_home, "--armor", "--export"))
    fpr = next(
        line.split(":")[9]
        for line in gpg(good_home, "--with-colons", "--list-keys").splitlines()
        if line.startswith("fpr:")
    )
    yield Keys(pub, good_home, fpr, other_home)
    for home in homes:
        run(["gpgconf", "--kill", "gpg-agent"], what="test gpg", env={"GNUPGHOME": str(home)}, check=False)


def sign(home: Path, file: Path, out: Path) -> None:
    gpg(home, "--yes", "--armor", "--output", out, "--detach-sign", file)


def test_good_signature_is_locked_and_checked_again(server: Server, tmp_path: Path, keys: Keys) -> None:
    data = xen_tarball(server)
    sign(keys.good_home, server.root / "xen-4.19.0.tar.gz", server.root / "xen-4.19.0.tar.gz.asc")
    url = server.url("xen-4.19.0.tar.gz")
    source = TarballSource(url=url, verify=Verify(keys=[str(keys.good)], signature="xen-4.19.0.tar.gz.asc"))
    ctx = ctx_for(tmp_path)
    entry = tarball.lock("xen", source, ctx)
    sig = (server.root / "xen-4.19.0.tar.gz.asc").read_bytes()
    assert entry["sha256"] == sha(data)
    assert entry["signature"] == {"url": url + ".asc", "sha256": sha(sig), "signer": keys.good_fpr}
    assert tarball.keeps(entry, ctx).blobs == {sha(data), sha(sig)}

    fresh = ctx_for(tmp_path, "store2")
    tarball.fetch("xen", source, entry, fresh)
    assert tarball.fetched(entry, fresh)
    assert sorted(p.name for p in blobs(fresh)) == sorted([sha(data), sha(sig)])


def test_signature_by_another_key_refused_nothing_stored(server: Server, tmp_path: Path, keys: Keys) -> None:
    data = xen_tarball(server)
    sign(keys.other_home, server.root / "xen-4.19.0.tar.gz", server.root / "xen-4.19.0.tar.gz.asc")
    url = server.url("xen-4.19.0.tar.gz")
    source = TarballSource(url=url, verify=Verify(keys=[str(keys.good)], signature=url + ".asc"))
    ctx = ctx_for(tmp_path)
    with pytest.raises(FetchError) as e:
        tarball.lock("xen", source, ctx)
    assert "signature does not verify" in one_line(e, "lock xen: ")
    assert blobs(ctx) == []
    assert partials(ctx) == []

    # A blob that was already in the store is not this call's to delete; the signature still is not stored.
    tarball.lock("xen", TarballSource(url=url), ctx)
    with pytest.raises(FetchError):
        tarball.lock("xen", source, ctx)
    assert [p.name for p in blobs(ctx)] == [sha(data)]


def test_fetch_refuses_a_swapped_signature(server: Server, tmp_path: Path, keys: Keys) -> None:
    xen_tarball(server)
    tar = server.root / "xen-4.19.0.tar.gz"
    sign(keys.good_home, tar, server.root / "good.asc")
    sign(keys.other_home, tar, server.root / "other.asc")
    source = TarballSource(url=server.url(tar.name), verify=Verify(keys=[str(keys.good)], signature="good.asc"))
    entry = tarball.lock("xen", source, ctx_for(tmp_path))
    other = (server.root / "other.asc").read_bytes()
    swapped = {**entry, "signature": {**entry["signature"], "url": server.url("other.asc"), "sha256": sha(other)}}
    fresh = ctx_for(tmp_path, "store2")
    with pytest.raises(FetchError) as e:
        tarball.fetch("xen", source, swapped, fresh)
    one_line(e, "fetch xen: ")
    assert blobs(fresh) == []

    stale = {k: v for k, v in entry.items() if k != "signature"}
    with pytest.raises(FetchError) as e:
        tarball.fetch("xen", source, stale, fresh)
    assert "lock entry has none" in one_line(e, "fetch xen: ")


# --- unpack ------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["", "gz", "xz", "bz2"])
def test_unpack_returns_the_single_top_directory(tmp_path: Path, compression: str) -> None:
    ctx = ctx_for(tmp_path)
    path = tmp_path / "in" / "t.tar"
    make_tarball(path, {"./pkg-1.0/a.txt": b"a", "./pkg-1.0/sub/b.txt": b"b"}, compression)
    entry = {"kind": "tarball", "url": "http://x/t.tar", "sha256": ctx.store.add_blob(path)}
    tree = tarball.unpack(entry, ctx, tmp_path / "out")
    assert tree == tmp_path / "out" / "pkg-1.0"
    assert (tree / "sub" / "b.txt").read_bytes() == b"b"


def test_unpack_returns_dest_for_several_top_entries(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path)
    path = tmp_path / "t.tar.gz"
    make_tarball(path, {"a/x": b"x", "README": b"r"})
    entry = {"kind": "tarball", "url": "http://x/t.tar.gz", "sha256": ctx.store.add_blob(path)}
    assert tarball.unpack(entry, ctx, tmp_path / "out") == tmp_path / "out"
    assert (tmp_path / "out" / "README").read_bytes() == b"r"


def test_unpack_refuses_a_path_outside_dest(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path)
    path = tmp_path / "evil.tar"
    make_tarball(path, {"../escaped": b"no"}, "")
    entry = {"kind": "tarball", "url": "http://x/evil.tar", "sha256": ctx.store.add_blob(path)}
    with pytest.raises(Exception) as e:
        tarball.unpack(entry, ctx, tmp_path / "out")
    one_line(e, "unpack http://x/evil.tar: ")
    assert not (tmp_path / "escaped").exists()


def test_prebuilt_is_locked_and_copied_as_is(server: Server, tmp_path: Path) -> None:
    data = os.urandom(4096)
    (server.root / "xenvif.msi").write_bytes(data)
    url = server.url("xenvif.msi")
    ctx = ctx_for(tmp_path)
    entry = tarball.lock("win-xenvif", PrebuiltSource(prebuilt=url, sha256=sha(data)), ctx)
    assert entry == {"kind": "prebuilt", "url": url, "sha256": sha(data), "size": len(data)}
    got = tarball.unpack(entry, ctx, tmp_path / "out")
    assert got == tmp_path / "out" / "xenvif.msi"
    assert got.read_bytes() == data
    got.write_bytes(b"changed by a build")  # a copy: the store is untouched
    assert ctx.store.blob_path(sha(data)).read_bytes() == data


def test_prebuilt_url_without_a_file_name_refused(tmp_path: Path) -> None:
    with pytest.raises(FetchError) as e:
        tarball.lock("fw", PrebuiltSource(prebuilt="http://127.0.0.1:1/dir/"), ctx_for(tmp_path))
    one_line(e, "lock fw: ")
