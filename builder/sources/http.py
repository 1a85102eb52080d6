"""HTTP downloads into the store: retries with backoff, resume of a cut transfer, sha256 checked."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import requests

from ..progress import Reporter, Task
from ..store import StoreError, sha256_text
from . import Context, FetchError, Missing

log = logging.getLogger("xenspin.http")

ATTEMPTS = 5
BACKOFF = 0.5  # seconds, doubled each retry
TIMEOUT = (15, 60)  # connect, read


def download(url: str, ctx: Context, *, sha256: str = "", what: str) -> str:
    """Fetch url (after the mirror map) into the store; return the blob's sha256.

    With sha256 given, a stored blob is used as it is and a download that does not
    match is refused with nothing stored. A cut transfer resumes with a Range request,
    within this run's retries and across runs (the partial file is kept in tmp/).
    """
    store = ctx.store
    if sha256 and store.has_blob(sha256):
        return sha256
    if ctx.offline:
        raise Missing(f"{what}: offline and the store lacks {url}" + (f" (sha256 {sha256})" if sha256 else ""))
    real = ctx.url(url)
    with store.locked("dl-" + sha256_text(url)[:32]):
        if sha256 and store.has_blob(sha256):
            return sha256
        partial = store.root / "tmp" / ("partial-" + sha256_text(real)[:32])
        _fetch_to(real, partial, ctx, what)
        try:
            return store.add_blob(partial, sha256 or None, what=f"{what}: {real}")
        except StoreError as e:  # a mismatch: add_blob has already deleted the bytes
            raise FetchError(str(e)) from None


def _fetch_to(url: str, partial: Path, ctx: Context, what: str) -> None:
    session = requests.Session()
    delay = BACKOFF
    last = ""
    for attempt in range(1, ATTEMPTS + 1):
        have = partial.stat().st_size if partial.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with session.get(url, headers=headers, stream=True, timeout=TIMEOUT) as r:
                if r.status_code == 416 and have:
                    return  # already complete; the sha256 check decides
                if r.status_code in (404, 410, 401, 403):
                    raise FetchError(f"{what}: {url}: HTTP {r.status_code} {r.reason}")
                r.raise_for_status()
                if r.status_code == 206:
                    mode = "ab"
                else:
                    mode, have = "wb", 0
                length = r.headers.get("Content-Length")
                total = have + int(length) if length and length.isdigit() else None
                with open(partial, mode) as f, _progress(ctx, what, total) as task:
                    task.reset(have, total)
                    for chunk in r.iter_content(1 << 16):
                        f.write(chunk)
                        task.advance(len(chunk))
                got = partial.stat().st_size
                if total is not None and got < total:
                    raise requests.exceptions.ChunkedEncodingError(f"connection closed at {got} of {total} bytes")
                return
        except FetchError:
            raise
        except requests.RequestException as e:
            last = str(e) or e.__class__.__name__
            log.info("%s: attempt %d of %d failed: %s", what, attempt, ATTEMPTS, last)
            if attempt < ATTEMPTS:
                time.sleep(delay)
                delay *= 2
    raise FetchError(f"{what}: {url}: failed after {ATTEMPTS} attempts: {last}")


def _progress(ctx: Context, what: str, total: int | None) -> contextlib.AbstractContextManager[Task]:
    return (ctx.progress or Reporter(quiet=True)).transfer(what, total)
