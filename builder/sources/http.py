"""HTTP downloads into the store: retries with backoff, resume of a cut transfer, sha256 checked."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import requests
import urllib3

from ..progress import Reporter, Task
from ..store import StoreError, sha256_file, sha256_text
from . import Context, FetchError, Gone, Missing, Refused

log = logging.getLogger("xenspin.http")

ATTEMPTS = 5  # failures in a row before giving up; an attempt that got bytes resets the count
MAX_REQUESTS = 50  # hard cap per file, so a server that trickles and cuts cannot loop forever
BACKOFF = 0.5  # seconds, doubled each failure in a row
MAX_BACKOFF = 30.0
TIMEOUT = (15, 60)  # connect, read
CHUNK = 1 << 16

# Transport failures worth another attempt; anything else is a bug or a local problem.
_RETRYABLE = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)


class _Retry(Exception):
    """This attempt failed in a way another attempt may fix."""


def download(
    url: str,
    ctx: Context,
    *,
    sha256: str = "",
    what: str,
    check: Callable[[Path], None] | None = None,
) -> str:
    """Fetch url (after the mirror map) into the store; return the blob's sha256.

    With sha256 given, a stored blob is used as it is and a download that does not
    match is refused with nothing stored. A cut transfer resumes with a Range request,
    within this run's retries and across runs (the partial file is kept in tmp/, with
    the server's validator so a file changed in between is fetched whole again).

    check, if given, is called on the complete file before it enters the store (or on
    the stored blob when it is already there); if it raises, nothing new is stored.
    This is how a signature is checked without a bad file ever becoming a blob.

    With a remote cache (ctx.remote), a file pinned by sha256 is taken from the cache
    before upstream, under the same checks; a file downloaded from upstream is sent to it.
    """
    store = ctx.store
    sha256 = sha256.strip().lower()
    if sha256 and store.has_blob(sha256):
        return _stored(ctx, sha256, check)
    if ctx.offline:
        raise Missing(f"{what}: offline and the store lacks {url}" + (f" (sha256 {sha256})" if sha256 else ""))
    real = ctx.url(url)
    key = sha256_text(real)[:32]  # by the URL actually fetched: two recipes mirrored to one URL share it
    with store.locked("dl-" + key):
        if sha256 and store.has_blob(sha256):
            return _stored(ctx, sha256, check)
        if sha256 and ctx.remote is not None and ctx.remote.fetch_blob(store, sha256, f"{what}: {url}", check):
            return sha256
        partial = store.root / "tmp" / f"partial-{key}"
        resumed = _fetch_to(real, partial, ctx, what)
        digest = sha256_file(partial)
        if sha256 and digest != sha256 and resumed:
            # The kept start may be from another version of the file; one whole try before refusing.
            log.info("%s: resumed download of %s does not match; fetching it whole", what, real)
            _discard(partial)
            _fetch_to(real, partial, ctx, what)
            digest = sha256_file(partial)
        if sha256 and digest != sha256:
            _discard(partial)
            raise Refused(f"{what}: {real}: sha256 mismatch: got {digest}, expected {sha256}; nothing stored")
        if check is not None:
            try:
                check(partial)
            except BaseException:
                _discard(partial)
                raise
        _meta(partial).unlink(missing_ok=True)
        try:
            digest = store.add_blob(partial, digest, what=f"{what}: {real}")
        except StoreError as e:
            raise Refused(str(e)) from None
    if ctx.remote is not None:
        ctx.remote.offer_blob(store, digest)
    return digest


def get_json(url: str, ctx: Context, *, what: str) -> Any:
    """A small JSON document from url (after the mirror map), not stored: an index to look a file up in.

    Gone when the server has no such document; FetchError for anything else that fails.
    """
    if ctx.offline:
        raise Missing(f"{what}: offline; cannot ask {url}")
    real = ctx.url(url)
    last = ""
    for attempt in range(ATTEMPTS):
        try:
            r = requests.get(real, timeout=TIMEOUT, headers={"Accept": "application/json"})
        except requests.exceptions.ConnectionError as e:
            if _unresolvable(e):
                raise FetchError(
                    f"{what}: {real}: host {urllib.parse.urlsplit(real).hostname} does not resolve"
                ) from None
            last = _reason(e)
        except _RETRYABLE as e:
            last = " ".join(str(e).split()) or e.__class__.__name__
        else:
            if r.status_code in (404, 410):
                raise Gone(f"{what}: {real}: HTTP {r.status_code} {r.reason}")
            if r.status_code == 200:
                try:
                    return r.json()
                except ValueError:
                    raise FetchError(f"{what}: {real}: not JSON") from None
            if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
                raise FetchError(f"{what}: {real}: HTTP {r.status_code} {r.reason}")
            last = f"HTTP {r.status_code} {r.reason}"
        time.sleep(min(BACKOFF * 2**attempt, MAX_BACKOFF))
    raise FetchError(f"{what}: {real}: failed after {ATTEMPTS} attempts: {last}")


def _stored(ctx: Context, sha256: str, check: Callable[[Path], None] | None) -> str:
    if check is not None:
        check(ctx.store.blob_path(sha256))
    return sha256


def _fetch_to(url: str, partial: Path, ctx: Context, what: str) -> bool:
    """Complete the file at partial from url; return whether it was pieced together from several responses."""
    if url.startswith("file:"):  # a mirror on this machine (the user's map; a recipe cannot name one)
        _copy_local(url, partial, ctx, what)
        return False
    validator = _load_validator(partial)
    if partial.exists() and not validator:
        # Without an ETag or Last-Modified nothing tells whether the server's file changed since.
        _discard(partial)
    resumed = partial.exists()
    failures = 0
    delay = BACKOFF
    last = ""
    host = urllib.parse.urlsplit(url).hostname or url
    unresolved = ctx.cache.setdefault("http-unresolved-hosts", set())
    if host in unresolved:
        raise FetchError(f"{what}: {url}: host {host} does not resolve (seen earlier in this run)")
    with requests.Session() as session:
        for _ in range(MAX_REQUESTS):
            before = partial.stat().st_size if partial.exists() else 0
            wait: float | None = None
            try:
                _attempt(session, url, partial, ctx, what, validator)
                return resumed
            except FetchError:
                raise
            except requests.exceptions.ConnectionError as e:
                if _unresolvable(e):
                    # No answer from DNS is not a flaky link: say so now rather than after minutes of retries.
                    unresolved.add(host)
                    raise FetchError(f"{what}: {url}: host {host} does not resolve") from None
                last = f"cannot connect to {host}: {_reason(e)}"
            except (_Retry, *_RETRYABLE) as e:
                last = " ".join(str(e).split()) or e.__class__.__name__
                wait = getattr(e, "retry_after", None)
            resumed = True
            validator = _load_validator(partial)
            after = partial.stat().st_size if partial.exists() else 0
            if after > before:  # progress: a flaky link, not a dead one
                failures, delay = 0, BACKOFF
            failures += 1
            log.info("%s: %s: attempt failed (%d of %d in a row): %s", what, url, failures, ATTEMPTS, last)
            if failures >= ATTEMPTS:
                break
            time.sleep(min(wait if wait is not None else delay, MAX_BACKOFF))
            delay *= 2
    raise FetchError(f"{what}: {url}: failed after {failures} attempts in a row: {last}")


def _copy_local(url: str, partial: Path, ctx: Context, what: str) -> None:
    """The file a file:// mirror holds, copied whole to partial.

    Opened without blocking and checked before partial is made: a FIFO or a directory there
    is refused at once, with nothing left in the store's tmp/.
    """
    path = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError as e:
        raise Gone(f"{what}: {url}: {e.strerror or e}") from None
    except OSError as e:
        raise FetchError(f"{what}: {url}: {e.strerror or e}") from None
    with open(fd, "rb") as src:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FetchError(f"{what}: {url}: not a regular file")
        with _open(partial, "wb", what) as f, _progress(ctx, what, info.st_size) as task:
            while chunk := src.read(CHUNK):
                _write(f, chunk, partial, what)
                task.advance(len(chunk))


def _unresolvable(e: BaseException) -> bool:
    """Whether DNS answered that the host has no address (EAI_NONAME): final, unlike a failed lookup.

    "Temporary failure in name resolution" (EAI_AGAIN: the resolver timed out or failed) is a
    flaky link and is retried like one: a busy resolver once failed a whole build here.
    """
    text = repr(e)
    return "Name or service not known" in text or "No address associated with hostname" in text


def _reason(e: BaseException) -> str:
    """The innermost reason of a requests/urllib3 connection error, without the pool's wrapping."""
    inner: BaseException | None = e
    while inner is not None and inner.__context__ is not None and not isinstance(inner, OSError):
        inner = inner.__context__
    text = str(inner or e)
    return text.rsplit(": ", 1)[-1].strip("()'\" ") or e.__class__.__name__


def _attempt(session: requests.Session, url: str, partial: Path, ctx: Context, what: str, validator: str) -> None:
    """One request, appending to or replacing partial; returns only when partial is complete."""
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"Accept-Encoding": "identity"}  # the bytes as stored on the server, never re-encoded
    if have:
        headers["Range"] = f"bytes={have}-"
        if validator:
            headers["If-Range"] = validator
    with session.get(url, headers=headers, stream=True, timeout=TIMEOUT) as r:
        code = r.status_code
        if code == 416 and have:
            size = _range_total(r.headers.get("Content-Range", ""))
            if size == have:
                return  # already complete; the sha256 check decides
            _discard(partial)
            raise _Retry(f"server refused the range (file is {size} bytes, kept {have}); starting over")
        if code in (404, 410):
            raise Gone(f"{what}: {url}: HTTP {code} {r.reason}")
        if 400 <= code < 500 and code not in (408, 429):
            raise FetchError(f"{what}: {url}: HTTP {code} {r.reason}")
        if code >= 400:
            err = _Retry(f"HTTP {code} {r.reason}")
            err.retry_after = _retry_after(r.headers.get("Retry-After", ""))  # type: ignore[attr-defined]
            raise err
        if code == 206 and have:
            content_range = r.headers.get("Content-Range", "")
            start = _range_start(content_range)
            if start != have:
                _discard(partial)
                raise _Retry(f"server answered a range request for byte {have} from byte {start}; starting over")
            mode, total = "ab", _range_total(content_range)
        elif code == 200:
            # The whole file: a server that ignores Range, or one whose file changed (If-Range).
            mode, have, total = "wb", 0, _int(r.headers.get("Content-Length", ""))
            _save_validator(partial, _validator(r.headers))
        else:
            raise _Retry(f"unexpected HTTP {code} {r.reason}")
        got = have
        with _open(partial, mode, what) as f, _progress(ctx, what, total) as task:
            task.reset(have, total)
            for chunk in r.raw.stream(CHUNK, decode_content=False):
                _write(f, chunk, partial, what)
                got += len(chunk)
                task.advance(len(chunk))
        if total is not None and got != total:
            if got > total:
                _discard(partial)
            raise _Retry(f"connection closed at {got} of {total} bytes")


@contextlib.contextmanager
def _open(path: Path, mode: str, what: str) -> Iterator[BinaryIO]:
    try:
        f = open(path, mode)  # noqa: SIM115 - closed below
    except OSError as e:
        raise FetchError(f"{what}: cannot write {path}: {e.strerror or e}") from None
    with f:
        yield f


def _write(f: BinaryIO, chunk: bytes, path: Path, what: str) -> None:
    """A write error (disk full) is local: no retry will fix it, so it must not look like a network one."""
    try:
        f.write(chunk)
    except OSError as e:
        raise FetchError(f"{what}: cannot write {path}: {e.strerror or e}") from None


def _meta(partial: Path) -> Path:
    return partial.with_name(partial.name + ".json")


def _discard(partial: Path) -> None:
    partial.unlink(missing_ok=True)
    _meta(partial).unlink(missing_ok=True)


def _validator(headers: requests.structures.CaseInsensitiveDict) -> str:
    """What If-Range may carry: a strong ETag, else Last-Modified; empty if the server gives neither."""
    etag = headers.get("ETag", "")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified", "")


def _load_validator(partial: Path) -> str:
    try:
        return str(json.loads(_meta(partial).read_text()).get("validator", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def _save_validator(partial: Path, validator: str) -> None:
    meta = _meta(partial)
    if validator:
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"validator": validator}))
    else:
        meta.unlink(missing_ok=True)


def _int(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None


def _range_start(content_range: str) -> int | None:
    m = re.match(r"\s*bytes\s+(\d+)-\d+/", content_range)
    return int(m.group(1)) if m else None


def _range_total(content_range: str) -> int | None:
    m = re.match(r"\s*bytes\s+[\d*-]+/(\d+)\s*$", content_range)
    return int(m.group(1)) if m else None


def _retry_after(text: str) -> float | None:
    return float(text) if text.strip().isdigit() else None


def _progress(ctx: Context, what: str, total: int | None) -> contextlib.AbstractContextManager[Task]:
    return (ctx.progress or Reporter(quiet=True)).transfer(what, total)
