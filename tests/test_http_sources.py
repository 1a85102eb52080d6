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
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import Keys, Server, one_line

from builder.errors import XenspinError
from builder.manifest import PrebuiltSource, TarballSource, Verify
from builder.progress import Reporter, Task
from builder.sources import Context, FetchError, Missing, http, tarball
from builder.store import Store


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


def test_mirror_on_this_machine_serves_tarballs_and_keeps_to_its_directory(tmp_path: Path) -> None:
    """A file:// mirror (the farm's carried upstreams) serves the file under it, verified like any
    download; a recipe URL climbing out of it with '..' reaches nothing else of the host's."""
    canon = "https://downloads.example.invalid/"
    data = make_tarball(tmp_path / "mirror/xen/xen-4.19.0.tar.gz", {"xen-4.19.0/README": b"xen\n"})
    (tmp_path / "secret").write_text("the host's\n")
    ctx = ctx_for(tmp_path, mirrors={canon: (tmp_path / "mirror").as_uri() + "/"})
    entry = tarball.lock("xen", TarballSource(url=canon + "xen/xen-4.19.0.tar.gz"), ctx)
    assert entry["sha256"] == sha(data) and entry["url"] == canon + "xen/xen-4.19.0.tar.gz"
    assert tarball.fetched(entry, ctx)
    with pytest.raises(FetchError, match="No such file"):
        tarball.lock("xen", TarballSource(url=canon + "xen/xen-9.tar.gz"), ctx)
    os.mkfifo(tmp_path / "mirror/xen/fifo.tar.gz")  # refused at once, not waited on
    with pytest.raises(FetchError, match="not a regular file"):
        tarball.lock("xen", TarballSource(url=canon + "xen/fifo.tar.gz"), ctx)
    assert partials(ctx) == []
    for climb in ("../secret", "xen/%2e%2e/../secret", "xen/..%2Fsecret"):
        with pytest.raises(XenspinError, match=r"'\.\.' would lead out of the mirror file://"):
            tarball.lock("xen", TarballSource(url=canon + climb), ctx)
    assert [p.name for p in blobs(ctx)] == [sha(data)]


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


def sign(keys: Keys, signer: str, file: Path, out: Path) -> None:
    keys.gpg("--yes", "--armor", "--local-user", signer, "--output", out, "--detach-sign", file)


def test_good_signature_is_locked_and_checked_again(server: Server, tmp_path: Path, keys: Keys) -> None:
    data = xen_tarball(server)
    sign(keys, keys.good, server.root / "xen-4.19.0.tar.gz", server.root / "xen-4.19.0.tar.gz.asc")
    url = server.url("xen-4.19.0.tar.gz")
    source = TarballSource(url=url, verify=Verify(keys=[str(keys.good_file)], signature="xen-4.19.0.tar.gz.asc"))
    ctx = ctx_for(tmp_path)
    entry = tarball.lock("xen", source, ctx)
    sig = (server.root / "xen-4.19.0.tar.gz.asc").read_bytes()
    assert entry["sha256"] == sha(data)
    assert entry["signature"] == {"url": url + ".asc", "sha256": sha(sig), "signer": keys.good}
    assert tarball.keeps(entry, ctx).blobs == {sha(data), sha(sig)}

    fresh = ctx_for(tmp_path, "store2")
    tarball.fetch("xen", source, entry, fresh)
    assert tarball.fetched(entry, fresh)
    assert sorted(p.name for p in blobs(fresh)) == sorted([sha(data), sha(sig)])


def test_signature_by_another_key_refused_nothing_stored(server: Server, tmp_path: Path, keys: Keys) -> None:
    data = xen_tarball(server)
    sign(keys, keys.bad, server.root / "xen-4.19.0.tar.gz", server.root / "xen-4.19.0.tar.gz.asc")
    url = server.url("xen-4.19.0.tar.gz")
    source = TarballSource(url=url, verify=Verify(keys=[str(keys.good_file)], signature=url + ".asc"))
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
    sign(keys, keys.good, tar, server.root / "good.asc")
    sign(keys, keys.bad, tar, server.root / "other.asc")
    source = TarballSource(url=server.url(tar.name), verify=Verify(keys=[str(keys.good_file)], signature="good.asc"))
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


# What glibc says for each (gai_strerror), as Python's socket module passes it on.
GAI_MESSAGES = {
    socket.EAI_AGAIN: "Temporary failure in name resolution",
    socket.EAI_NONAME: "Name or service not known",
}


def flaky_dns(monkeypatch: pytest.MonkeyPatch, host: str, failures: list[int]) -> list[str]:
    """Resolve host to the local server, after failing with each of failures (gaierror codes) in turn.

    A resolver that times out or fails under load cannot be made here for real; this stands in for it.
    """
    real = socket.getaddrinfo
    lookups: list[str] = []

    def getaddrinfo(name, port, *args, **kw):
        if name != host:
            return real(name, port, *args, **kw)
        lookups.append(name)
        if failures:
            code = failures.pop(0)
            raise socket.gaierror(code, GAI_MESSAGES[code])
        return real("127.0.0.1", port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


def test_a_failed_dns_lookup_is_retried_a_missing_host_is_not(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = xen_tarball(server)
    url = server.url("xen-4.19.0.tar.gz").replace("127.0.0.1", "archive.test")
    lookups = flaky_dns(monkeypatch, "archive.test", [socket.EAI_AGAIN, socket.EAI_AGAIN])
    entry = tarball.lock("xen", TarballSource(url=url), ctx_for(tmp_path))
    assert entry["sha256"] == sha(data) and len(lookups) == 3  # two failed lookups, then the file
    # "no such host" is an answer, not a flaky link: one lookup, and the run remembers it
    lookups = flaky_dns(monkeypatch, "archive.test", [socket.EAI_NONAME])
    ctx = ctx_for(tmp_path, "store2")
    with pytest.raises(FetchError) as e:
        tarball.lock("xen", TarballSource(url=url), ctx)
    assert "host archive.test does not resolve" in one_line(e, "lock xen: ") and len(lookups) == 1
    with pytest.raises(FetchError, match="seen earlier in this run"):
        tarball.lock("xen", TarballSource(url=url), ctx)
    assert len(lookups) == 1
