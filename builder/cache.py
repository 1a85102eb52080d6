"""The remote cache: stage outputs and sources shared by every machine that builds the same locks.

A stage's key names its output on any machine, so a cache keyed the same way lets one
machine take what another made. It speaks the HTTP protocol of Bazel's remote caches
(GET/PUT /cas/SHA256 for blobs, GET/PUT /ac/KEY for records; nginx with WebDAV and
bazel-remote serve it) or S3 (any S3-compatible store), one backend protocol, two
implementations.

A store object becomes a record: its kind and key, the metadata its maker recorded,
its files (path, type, mode, time, size, sha256, link target), the host that made it,
when, and optionally an OpenPGP signature. Each file's bytes are a blob in the CAS
under their sha256, so the .debs a build and the repository share are stored and
moved once, and a blob the local store holds already (a locked .deb) is not
downloaded. A writer uploads the blobs first and the record last: a reader never sees
a record whose blobs are not all there. A reader checks every blob's sha256 as it
arrives; a record that fails (a blob missing or changed, a path that would leave the
object, a signature `--cache-trust signed` does not accept) is reported and ignored,
and the stage is made here.

The pure part (record format, keys, the checks of a record's file list) comes first;
the I/O (the backends, `Remote`: one run's use of one cache) after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import posixpath
import socket
import stat
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from . import __version__, gpg, lazyimport
from .errors import XenspinError
from .store import CHUNK, Store, sha256_file, sha256_json, write_json

requests = lazyimport.module("requests")  # imported when a cache is first asked (a no-op build asks none)
urllib3 = lazyimport.module("urllib3")

log = logging.getLogger("xenspin.cache")

RECORD_FORMAT = 1  # the record's layout; bump it and every record is looked up under new keys
# Stage kinds worth sharing (docs/cache.md says why): what a build needs, never its build root.
KINDS = frozenset({"build", "repo", "rootfs", "iso", "sbom"})
GIT_KIND = "gitsource"  # a git source's locked commit, as a bundle
STATS = "cache-stats.json"  # in the store: the last run's counters (`xenspin cache stats`)
TRUST = ("any", "signed")
SCHEMES = ("http", "https", "s3")
MAX_RECORD = 64 << 20  # a record is a file list; one larger than this is refused unread
TIMEOUT = (10, 120)  # connect, read (seconds)
ATTEMPTS = 3


class CacheError(XenspinError):
    """The cache cannot be reached or answered wrongly (one line)."""


class BadRecord(Exception):
    """A record this run will not use; the message says why."""


class Uncacheable(Exception):
    """An object that cannot go into the cache (a device node, an unreadable file); says which."""


# --- the record (pure) ----------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One name in an object: a directory, a regular file (its blob) or a symbolic link."""

    path: str
    type: str  # "dir", "file", "link"
    mode: int = 0  # permission bits (0o777 at most)
    mtime: int = 0
    size: int = 0
    sha256: str = ""
    target: str = ""  # a link's target, relative and inside the object

    def data(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "type": self.type, "mtime": self.mtime}
        if self.type == "link":
            d["target"] = self.target
        else:
            d["mode"] = self.mode
        if self.type == "file":
            d |= {"size": self.size, "sha256": self.sha256}
        return d


@dataclass(frozen=True)
class Record:
    """A record as read back: what it says, the exact bytes that were signed, and the signature."""

    kind: str
    key: str
    meta: dict[str, Any]
    entries: list[Entry]
    host: str
    created: str
    text: bytes
    signature: str | None

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)


def ac_key(kind: str, key: str) -> str:
    """The record's name in the cache (/ac/NAME): the stage's kind and key under this record format."""
    return sha256_json({"xenspin-record": RECORD_FORMAT, "kind": kind, "key": key})


def scan(root: Path) -> list[Entry]:
    """Every name below root (sorted; root itself is not one) as entries; files hashed, links not followed.

    Uncacheable for a device, fifo or socket, or a file this account cannot read.
    """
    out: list[Entry] = []

    def walk(directory: Path, rel: str) -> None:
        with os.scandir(directory) as it:
            names = sorted(it, key=lambda e: e.name)
        for e in names:
            path = f"{rel}{e.name}"
            st = e.stat(follow_symlinks=False)
            mtime = int(st.st_mtime)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(e.path)
                if link_escapes(path, target):
                    raise Uncacheable(f"{path}: a link out of the object ({target})")
                out.append(Entry(path, "link", mtime=mtime, target=target))
            elif stat.S_ISDIR(st.st_mode):
                out.append(Entry(path, "dir", stat.S_IMODE(st.st_mode) & 0o777, mtime))
                walk(Path(e.path), path + "/")
            elif stat.S_ISREG(st.st_mode):
                try:
                    digest = sha256_file(Path(e.path))
                except PermissionError:
                    raise Uncacheable(f"{path}: not readable by this account") from None
                out.append(Entry(path, "file", stat.S_IMODE(st.st_mode) & 0o777, mtime, st.st_size, digest))
            else:
                raise Uncacheable(f"{path}: a device, fifo or socket")

    walk(root, "")
    return out


def link_escapes(path: str, target: str) -> bool:
    """Whether a link at path (relative to the object) to target leads out of the object (safetar's rule)."""
    if not target or target.startswith("/") or "\0" in target:
        return True
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return resolved == ".." or resolved.startswith("../")


def body(kind: str, key: str, meta: dict[str, Any], entries: list[Entry], host: str, created: str) -> bytes:
    """The record's canonical bytes: what a signature covers."""
    data = {
        "xenspin-cache": RECORD_FORMAT,
        "kind": kind,
        "key": key,
        "meta": meta,
        "files": [e.data() for e in entries],
        "host": host,
        "created": created,
        "xenspin": __version__,
    }
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def encode(text: bytes, signature: str | None) -> bytes:
    """What /ac/ holds: the record's bytes as a string (so the signed bytes survive) and the signature."""
    return json.dumps({"record": text.decode(), "signature": signature}, sort_keys=True).encode()


def decode(data: bytes, kind: str, key: str) -> Record:
    """A record read from the cache for kind and key; BadRecord when it is not one, or is another's."""
    try:
        outer = json.loads(data)
        text = outer["record"].encode()
        signature = outer.get("signature")
        inner = json.loads(text)
        if inner.get("xenspin-cache") != RECORD_FORMAT:
            raise BadRecord(f"record format {inner.get('xenspin-cache')!r}, not {RECORD_FORMAT}")
        if inner["kind"] != kind or inner["key"] != key:
            raise BadRecord(f"the record is for {inner['kind']}:{str(inner['key'])[:12]}, not this stage")
        if not isinstance(inner["meta"], dict) or not (signature is None or isinstance(signature, str)):
            raise BadRecord("not a record (meta or signature of the wrong type)")
        entries = check_entries(inner["files"])
        return Record(kind, key, inner["meta"], entries, str(inner["host"]), str(inner["created"]), text, signature)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BadRecord(f"not a record ({e.__class__.__name__}: {e})") from None


HEX64 = frozenset("0123456789abcdef")


def check_entries(raw: Any) -> list[Entry]:
    """A record's file list, each name checked before anything is written (BadRecord on the first bad one).

    Names are relative and normal (no '', '.', '..', leading '/', NUL), each once, sorted
    so a directory comes before what it holds, each below the object or a directory the
    list declares (never a link: links are made last, so nothing is ever written through
    one); links point inside the object; files carry a sha256 and a size; modes are
    permission bits only (no setuid, setgid or sticky bit).
    """
    if not isinstance(raw, list):
        raise BadRecord("files: not a list")
    out: list[Entry] = []
    dirs: set[str] = set()
    seen: set[str] = set()
    last = ""
    for item in raw:
        if not isinstance(item, dict):
            raise BadRecord("files: an entry is not a mapping")
        path, kind = item.get("path"), item.get("type")
        if not isinstance(path, str) or not path or "\0" in path or path.startswith("/"):
            raise BadRecord(f"files: bad name {path!r}")
        if posixpath.normpath(path) != path or path.split("/")[0] in (".", ".."):
            raise BadRecord(f"files: {path!r} is not a plain name inside the object")
        if path in seen or path < last:
            raise BadRecord(f"files: {path!r} twice or out of order")
        parent = posixpath.dirname(path)
        if parent and parent not in dirs:
            raise BadRecord(f"files: {path!r} is in {parent!r}, which the record does not make a directory")
        seen.add(path)
        last = path
        mtime = item.get("mtime", 0)
        if not isinstance(mtime, int) or isinstance(mtime, bool):
            raise BadRecord(f"files: {path}: bad time")
        if kind == "link":
            target = item.get("target")
            if not isinstance(target, str) or link_escapes(path, target):
                raise BadRecord(f"files: {path}: a link out of the object ({target!r})")
            out.append(Entry(path, "link", mtime=mtime, target=target))
            continue
        mode = item.get("mode")
        if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o777:
            raise BadRecord(f"files: {path}: bad mode {mode!r}")
        if kind == "dir":
            dirs.add(path)
            out.append(Entry(path, "dir", mode, mtime))
        elif kind == "file":
            size, digest = item.get("size"), item.get("sha256")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadRecord(f"files: {path}: bad size")
            if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= HEX64:
                raise BadRecord(f"files: {path}: bad sha256")
            out.append(Entry(path, "file", mode, mtime, size, digest))
        else:
            raise BadRecord(f"files: {path}: unknown type {kind!r}")
    return out


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the backends ---------------------------------------------------------------------


class Backend:
    """One protocol, two stores: records by name (/ac/) and blobs by sha256 (/cas/).

    get_blob writes the bytes to a file and returns their sha256 as they arrived, so a
    blob is hashed once, while it is downloaded. Missing things are None or False; a
    failure to reach the cache or an answer that makes no sense is CacheError.
    """

    url: str

    def shown(self) -> str:
        """The URL as messages show it (no password)."""
        return self.url

    def get_record(self, name: str) -> bytes | None:
        raise NotImplementedError

    def put_record(self, name: str, data: bytes) -> None:
        raise NotImplementedError

    def has_blob(self, sha256: str) -> bool:
        raise NotImplementedError

    def get_blob(self, sha256: str, out: BinaryIO) -> str | None:
        """Write the blob to out; its sha256 as received, or None when the cache lacks it."""
        raise NotImplementedError

    def put_blob(self, sha256: str, path: Path) -> None:
        raise NotImplementedError


def _hashing_copy(chunks: Iterator[bytes], out: BinaryIO) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
        out.write(chunk)
    return h.hexdigest()


class HttpCache(Backend):
    """Bazel's HTTP cache protocol: GET/PUT/HEAD BASE/cas/SHA256 and BASE/ac/NAME (nginx WebDAV, bazel-remote).

    Credentials in the URL (https://user:password@host/...) or ~/.netrc, as requests takes them.
    """

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._local = threading.local()  # a requests session per thread (-j builds in threads)

    @property
    def _session(self) -> Any:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def shown(self) -> str:
        """The URL without its password."""
        parts = urllib.parse.urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    def _request(self, method: str, path: str, **kw: Any) -> Any:
        """One request with a few attempts on a dropped connection or a 5xx; 404 is an answer."""
        url = f"{self.url}/{path}"
        last = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(0.2 * 2**attempt)
                body = kw.get("data")
                if hasattr(body, "seek"):
                    body.seek(0)
            try:
                r = self._session.request(method, url, timeout=TIMEOUT, **kw)
            except requests.RequestException as e:
                last = " ".join(str(e).split()) or e.__class__.__name__
                continue
            if r.status_code >= 500:
                last = f"HTTP {r.status_code} {r.reason}"
                r.close()
                continue
            return r
        raise CacheError(f"cache {self.shown()}: {method} {path}: {last}")

    def _expect(self, r: Any, method: str, path: str, ok: tuple[int, ...]) -> None:
        if r.status_code not in ok:
            r.close()
            raise CacheError(f"cache {self.shown()}: {method} {path}: HTTP {r.status_code} {r.reason}")

    def get_record(self, name: str) -> bytes | None:
        with self._request("GET", f"ac/{name}", stream=True) as r:
            if r.status_code == 404:
                return None
            self._expect(r, "GET", f"ac/{name}", (200,))
            with self._transfer("GET", f"ac/{name}"):
                data = r.raw.read(MAX_RECORD + 1, decode_content=True)
            if len(data) > MAX_RECORD:
                raise CacheError(f"cache {self.shown()}: ac/{name}: a record over {MAX_RECORD >> 20} MiB")
            return data

    def put_record(self, name: str, data: bytes) -> None:
        r = self._request("PUT", f"ac/{name}", data=data)
        self._expect(r, "PUT", f"ac/{name}", (200, 201, 204))
        r.close()

    def has_blob(self, sha256: str) -> bool:
        r = self._request("HEAD", f"cas/{sha256}")
        r.close()
        if r.status_code == 404:
            return False
        self._expect(r, "HEAD", f"cas/{sha256}", (200,))
        return True

    def get_blob(self, sha256: str, out: BinaryIO) -> str | None:
        with self._request("GET", f"cas/{sha256}", stream=True, headers={"Accept-Encoding": "identity"}) as r:
            if r.status_code == 404:
                return None
            self._expect(r, "GET", f"cas/{sha256}", (200,))
            with self._transfer("GET", f"cas/{sha256}"):
                return _hashing_copy(r.raw.stream(CHUNK, decode_content=False), out)

    @contextlib.contextmanager
    def _transfer(self, method: str, path: str) -> Iterator[None]:
        """A body cut while it streams is the cache's failure; a local write error (a full disk) is not."""
        try:
            yield
        except (requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError) as e:
            raise CacheError(f"cache {self.shown()}: {method} {path}: {e}") from None

    def put_blob(self, sha256: str, path: Path) -> None:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            # Small files as bytes: requests sends an empty file object chunked, which servers refuse.
            body: Any = f.read() if size < CHUNK else f
            r = self._request("PUT", f"cas/{sha256}", data=body, headers={"Content-Length": str(size)})
        self._expect(r, "PUT", f"cas/{sha256}", (200, 201, 204))
        r.close()


class S3Cache(Backend):
    """The same layout in an S3 bucket: s3://BUCKET/PREFIX/cas/SHA256 and .../ac/NAME (boto3).

    Credentials, region and endpoint come from boto3's usual places (AWS_* variables,
    ~/.aws/config); endpoint, when given, names an S3-compatible store (MinIO, Ceph, ...).
    """

    def __init__(self, url: str, endpoint: str = "") -> None:
        parts = urllib.parse.urlsplit(url)
        if not parts.netloc:
            raise CacheError(f"cache {url}: expected s3://BUCKET[/PREFIX]")
        self.url = url.rstrip("/")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.endpoint = endpoint
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:  # boto3's clients are thread-safe once made; making one is not
            if self._client is None:
                try:
                    import boto3
                    from botocore.config import Config
                except ImportError:
                    raise CacheError(
                        f"cache {self.url}: the S3 backend needs boto3: pip install 'xenspin[s3]'"
                    ) from None
                config = Config(retries={"max_attempts": ATTEMPTS, "mode": "standard"}, connect_timeout=TIMEOUT[0])
                # A session of its own: boto3's default one keeps the credentials it first found.
                session = boto3.session.Session()
                self._client = session.client("s3", endpoint_url=self.endpoint or None, config=config)
            return self._client

    def _key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        from boto3.exceptions import Boto3Error  # upload_file's S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as e:
            err = e.response.get("Error", {})
            raise CacheError(
                f"cache {self.url}: {what}: {err.get('Code', '?')} {err.get('Message', '')}".rstrip()
            ) from None
        except (BotoCoreError, Boto3Error, urllib3.exceptions.HTTPError, ConnectionError) as e:
            raise CacheError(f"cache {self.url}: {what}: {e}") from None

    @staticmethod
    def _missing(e: Exception) -> bool:
        code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
        return code in ("404", "NoSuchKey", "NotFound")

    def _get(self, path: str) -> Any:
        from botocore.exceptions import ClientError

        with self._errors(f"GET {path}"):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._key(path))
            except ClientError as e:
                if self._missing(e):
                    return None
                raise

    def get_record(self, name: str) -> bytes | None:
        got = self._get(f"ac/{name}")
        if got is None:
            return None
        if got.get("ContentLength", 0) > MAX_RECORD:
            raise CacheError(f"cache {self.url}: ac/{name}: a record over {MAX_RECORD >> 20} MiB")
        with self._errors(f"GET ac/{name}"):
            return got["Body"].read()

    def put_record(self, name: str, data: bytes) -> None:
        with self._errors(f"PUT ac/{name}"):
            self.client.put_object(Bucket=self.bucket, Key=self._key(f"ac/{name}"), Body=data)

    def has_blob(self, sha256: str) -> bool:
        from botocore.exceptions import ClientError

        with self._errors(f"HEAD cas/{sha256}"):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(f"cas/{sha256}"))
                return True
            except ClientError as e:
                if self._missing(e):
                    return False
                raise

    def get_blob(self, sha256: str, out: BinaryIO) -> str | None:
        got = self._get(f"cas/{sha256}")
        if got is None:
            return None
        with self._errors(f"GET cas/{sha256}"):
            return _hashing_copy(got["Body"].iter_chunks(CHUNK), out)

    def put_blob(self, sha256: str, path: Path) -> None:
        with self._errors(f"PUT cas/{sha256}"):
            self.client.upload_file(str(path), self.bucket, self._key(f"cas/{sha256}"))


def backend(url: str, endpoint: str = "") -> Backend:
    """The backend a cache URL names: http(s)://HOST[:PORT]/PATH or s3://BUCKET[/PREFIX]."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme in ("http", "https"):
        return HttpCache(url)
    if scheme == "s3":
        return S3Cache(url, endpoint)
    raise CacheError(f"cache {url!r}: expected an http://, https:// or s3:// URL")


# --- one run's use of a cache ---------------------------------------------------------


@dataclass
class Stats:
    """What a run did with the cache (`xenspin cache stats` prints the last run's)."""

    cache: str = ""
    command: str = ""
    started: str = ""
    seconds: float = 0.0
    read_only: bool = False
    trust: str = "any"
    hits: int = 0  # records used (stage outputs and git sources)
    misses: int = 0  # records asked for and not there
    refused: int = 0  # records there and not used (a blob bad or missing, a signature, a bad name)
    uploads: int = 0  # records written
    blobs_down: int = 0
    bytes_down: int = 0
    seconds_down: float = 0.0  # in downloads (records and blobs), summed over threads
    blobs_local: int = 0  # blobs a record named that this machine had already (not downloaded)
    blobs_up: int = 0
    bytes_up: int = 0
    seconds_up: float = 0.0  # in uploads (records and blobs, with their HEADs), summed over threads
    sources_down: int = 0  # source files (tarballs, .debs) taken from the cache instead of upstream
    errors: int = 0  # failures to reach the cache (the run went on without it)
    notes: list[str] = field(default_factory=list)  # what was refused or failed, and why


class Remote:
    """One run's use of one cache: look up, restore and upload store objects, source blobs and git bundles.

    Never fails a build: a cache that cannot be reached is reported once and left alone
    for the rest of the run; a record that does not check out is reported and ignored.
    """

    def __init__(
        self,
        cache: Backend,
        *,
        read_only: bool = False,
        trust: str = "any",
        keyring: list[Path] | None = None,
        sign_key: str = "",
        host: str = "",
        say: Callable[[str], None] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        if trust not in TRUST:
            raise XenspinError(f"--cache-trust {trust}: expected one of {', '.join(TRUST)}")
        if trust == "signed" and not keyring:
            raise XenspinError("--cache-trust signed: name the keys records must be signed by (--cache-keyring FILE)")
        for k in keyring or []:
            if not Path(k).is_file():
                raise XenspinError(f"--cache-keyring {k}: no such file")
        self.backend = cache
        self.read_only = read_only
        self.trust = trust
        self.keyring = [Path(k) for k in keyring or []]
        self.sign_key = sign_key
        self.host = host or socket.gethostname()
        self.say = say or (lambda _m: None)  # progress
        self.warn = warn or self.say  # what was refused or failed
        self.stats = Stats(cache=self.shown, read_only=read_only, trust=trust, started=now())
        self.used = False  # asked at least once in this run
        self.down = ""  # why the cache was given up on in this run
        self._start = time.monotonic()
        self._lock = threading.Lock()
        self._present: set[str] = set()  # blobs known to be in the cache
        self._bad: set[str] = set()  # blobs that arrived with other bytes: always uploaded again
        self._have: dict[str, Path] = {}  # blobs restored in this run (sha256 -> a file holding them)
        self._filled: dict[tuple[str, str], Record] = {}  # records just written into a scratch directory

    @property
    def shown(self) -> str:
        return self.backend.shown()

    def wants(self, kind: str) -> bool:
        return kind in KINDS

    @property
    def writable(self) -> bool:
        """Whether this run sends anything: not read-only, and the cache not given up on."""
        return not self.read_only and not self.down

    # --- counting and reporting ---

    @contextlib.contextmanager
    def _timed(self, counter: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self._count(**{counter: time.monotonic() - start})

    def _count(self, **deltas: float) -> None:
        with self._lock:
            for name, n in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + n)

    def _note(self, text: str, *, counter: str | None = None) -> None:
        with self._lock:
            if counter:
                setattr(self.stats, counter, getattr(self.stats, counter) + 1)
            if len(self.stats.notes) < 50:
                self.stats.notes.append(text)
        self.warn(f"warning: {text}")

    def _failed(self, e: CacheError) -> None:
        """The cache is unreachable or broken: say so once and go on without it."""
        with self._lock:
            first = not self.down
            self.down = self.down or str(e)
        if first:
            self._note(f"{e}; going on without the cache", counter="errors")
        else:
            self._count(errors=1)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except CacheError as e:
            self._failed(e)

    def _ok(self) -> bool:
        self.used = True
        return not self.down

    # --- records ---

    def lookup(self, kind: str, key: str) -> Record | None:
        """The record for kind and key if the cache holds one this run accepts (blobs not checked)."""
        if not self._ok():
            return None
        with self._guard():
            with self._timed("seconds_down"):
                data = self.backend.get_record(ac_key(kind, key))
            if data is None:
                self._count(misses=1)
                return None
            try:
                record = decode(data, kind, key)
                self._check_trust(record)
            except BadRecord as e:
                self._note(f"cache: {kind}:{key[:12]}: {e}; record ignored", counter="refused")
                return None
            return record
        return None

    def has_record(self, kind: str, key: str) -> bool:
        """Whether the cache holds a record for kind and key (not read, not checked)."""
        if not self._ok():
            return False
        with self._guard():
            return self.backend.get_record(ac_key(kind, key)) is not None
        return False

    def _check_trust(self, record: Record) -> None:
        if self.trust != "signed":
            return
        if not record.signature:
            raise BadRecord(f"not signed (made by {record.host}), and --cache-trust is signed")
        with tempfile.TemporaryDirectory(prefix="xenspin-record.") as d:
            (Path(d) / "record").write_bytes(record.text)
            (Path(d) / "record.asc").write_text(record.signature)
            try:
                signer = gpg.verify_detached(
                    Path(d) / "record", Path(d) / "record.asc", self.keyring, what=f"cache record {record.kind}"
                )
            except gpg.SignatureError:
                raise BadRecord(
                    f"its signature (made by {record.host}) is not a good one by the cache keyring"
                ) from None
        log.info("cache: %s:%s signed by %s", record.kind, record.key[:12], signer)

    def fill(self, kind: str, key: str, tmp: Path, store: Store) -> dict[str, Any] | None:
        """Write the object's files from the cache into the empty directory tmp; its metadata, or None.

        None: no record, a record refused (said why), or the cache gone; tmp may then
        hold part of the object, for the caller to remove.
        """
        record = self.lookup(kind, key)
        if record is None:
            return None
        with self._guard():
            try:
                self._materialize(record, tmp, store)
            except BadRecord as e:
                self._note(f"cache: {kind}:{key[:12]} (made by {record.host}): {e}; record ignored", counter="refused")
                return None
            self._count(hits=1)
            self.say(f"cache: {kind}:{key[:12]} from {self.shown} (made by {record.host}, {_human(record.size)})")
            with self._lock:
                self._filled[(kind, key)] = record
            return record.meta
        return None

    def restore(self, store: Store, kind: str, key: str) -> dict[str, Any] | None:
        """Put the object kind/key into the store from the cache; its metadata, or None (then make it)."""
        if not self.wants(kind) or not self._ok():
            return None
        meta = store.adopt(kind, key, lambda tmp: self.fill(kind, key, tmp, store))
        with self._lock:
            record = self._filled.pop((kind, key), None)
            if meta is not None and record is not None:  # where its files are now: later objects link them
                where = store.object_path(kind, key)
                self._have.update({e.sha256: where / e.path for e in record.entries if e.type == "file"})
        return meta

    def _materialize(self, record: Record, tmp: Path, store: Store) -> None:
        """Directories and files first (each blob checked as it arrives), links last, then modes and times.

        check_entries has made sure every name's parent is a directory made here, and no
        link exists yet while anything is written: nothing is written outside tmp.
        """
        for e in record.entries:
            dest = tmp / e.path
            if e.type == "dir":
                os.mkdir(dest, 0o700)
            elif e.type == "file":
                self._blob_into(e, dest, store)
        for e in record.entries:
            if e.type == "link":
                os.symlink(e.target, tmp / e.path)
        for e in reversed(record.entries):  # a directory's time after what is in it
            dest = tmp / e.path
            if e.type != "link":
                os.chmod(dest, e.mode)
            os.utime(dest, (e.mtime, e.mtime), follow_symlinks=False)

    def _blob_into(self, e: Entry, dest: Path, store: Store) -> None:
        """The file e names at dest: linked from a blob restored earlier in this run or in the store, else downloaded."""
        with self._lock:
            earlier = self._have.get(e.sha256)
        if earlier is not None and _same_file(earlier, e) and _link(earlier, dest):
            self._count(blobs_local=1)
            return
        blob = store.blob_path(e.sha256)
        if store.has_blob(e.sha256) and sha256_file(blob) == e.sha256:
            # A locked .deb the store holds (an archive component's build is made of them): linked when
            # the object wants the blob's own mode (so setting it changes nothing), else copied.
            if not (stat.S_IMODE(blob.stat().st_mode) == e.mode and _link(blob, dest)):
                _copy(blob, dest)
            self._count(blobs_local=1)
            return
        with open(dest, "xb") as out, self._timed("seconds_down"):
            got = self.backend.get_blob(e.sha256, out)
        if got is None:
            raise BadRecord(f"blob {e.sha256[:16]}… of {e.path} is not in the cache")
        if got != e.sha256:
            with self._lock:
                self._bad.add(e.sha256)  # what this run makes is sent again over it
            if dest.stat().st_size < e.size:
                raise BadRecord(f"blob {e.sha256[:16]}… of {e.path} arrived cut short")
            raise BadRecord(f"blob {e.sha256[:16]}… of {e.path} arrived as sha256 {got[:16]}…: changed in the cache")
        self._count(blobs_down=1, bytes_down=e.size)

    def upload(self, store: Store, kind: str, key: str) -> None:
        """Send the store's object kind/key: its blobs first, then its record (unless read-only)."""
        if not self.wants(kind):
            return
        meta = store.meta(kind, key)
        if meta is not None:
            self.put_tree(kind, key, store.object_path(kind, key), meta)

    def put_tree(self, kind: str, key: str, root: Path, meta: dict[str, Any]) -> None:
        """The directory root as the record for kind and key, its blobs first."""
        if self.read_only or not self._ok():
            return
        try:
            entries = scan(root)
        except Uncacheable as e:
            self._note(f"cache: {kind}:{key[:12]}: not sent: {e}")
            return
        with self._guard():
            for e in entries:
                if e.type == "file":
                    self._put_blob(e.sha256, root / e.path)
            text = body(kind, key, meta, entries, self.host, now())
            signature = self._sign(text) if self.sign_key else None
            with self._timed("seconds_up"):
                self.backend.put_record(ac_key(kind, key), encode(text, signature))
            self._count(uploads=1)

    def _put_blob(self, sha256: str, path: Path) -> None:
        with self._lock:
            known = sha256 in self._present and sha256 not in self._bad
        if known:
            return
        with self._timed("seconds_up"):
            send = sha256 in self._bad or not self.backend.has_blob(sha256)
            if send:
                self.backend.put_blob(sha256, path)
        if send:
            self._count(blobs_up=1, bytes_up=path.stat().st_size)
        with self._lock:
            self._present.add(sha256)
            self._bad.discard(sha256)

    def _sign(self, text: bytes) -> str:
        from .release import sign  # the release signature's one gpg call

        with tempfile.TemporaryDirectory(prefix="xenspin-record.") as d:
            data = Path(d) / "record"
            data.write_bytes(text)
            return sign(data, self.sign_key, dest=Path(d) / "record.asc").read_text()

    # --- source blobs ---

    def fetch_blob(self, store: Store, sha256: str, what: str, check: Callable[[Path], None] | None = None) -> bool:
        """A source file the lock pins by sha256, from the cache into the store; whether it was there.

        Its bytes are checked against sha256 (and by check, a signature, when given)
        before it becomes a blob, exactly as a download from upstream is.
        """
        if not self._ok():
            return False
        partial = store.tmp_path("cache-blob")
        try:
            with self._guard():
                with open(partial, "wb") as out, self._timed("seconds_down"):
                    got = self.backend.get_blob(sha256, out)
                if got is None:
                    return False
                if got != sha256:
                    with self._lock:
                        self._bad.add(sha256)
                    self._note(f"cache: {what}: the cached copy is sha256 {got[:16]}…, not {sha256[:16]}…; ignored it")
                    self._count(refused=1)
                    return False
                if check is not None:
                    check(partial)
                store.add_blob(partial, sha256, what=what)
                self._count(sources_down=1, blobs_down=1, bytes_down=store.blob_path(sha256).stat().st_size)
                return True
            return False
        finally:
            partial.unlink(missing_ok=True)

    def offer_blob(self, store: Store, sha256: str) -> None:
        """A source file just downloaded from upstream, sent to the cache (unless read-only)."""
        if self.read_only or not self._ok() or not store.has_blob(sha256):
            return
        with self._guard():
            self._put_blob(sha256, store.blob_path(sha256))

    # --- the run's figures ---

    def save(self, store: Store, command: str) -> None:
        """Write this run's counters to the store (only when the run asked the cache anything)."""
        if not self.used:
            return
        self.stats.command = command
        self.stats.seconds = round(time.monotonic() - self._start, 2)
        self.stats.seconds_down = round(self.stats.seconds_down, 2)
        self.stats.seconds_up = round(self.stats.seconds_up, 2)
        with contextlib.suppress(OSError):
            store.root.mkdir(parents=True, exist_ok=True)
            write_json(store.root / STATS, dataclasses.asdict(self.stats))


def load_stats(store: Store) -> Stats | None:
    """The counters of the last run that used a cache with this store, or None."""
    try:
        data = json.loads((store.root / STATS).read_text())
    except (OSError, ValueError):
        return None
    known = {f.name for f in dataclasses.fields(Stats)}
    return Stats(**{k: v for k, v in data.items() if k in known})


def stats_lines(s: Stats) -> list[str]:
    """`xenspin cache stats` as text."""
    mode = ", read-only" if s.read_only else ""
    lines = [
        f"last run with the cache: {s.command} at {s.started}, {s.seconds} s ({s.cache}{mode}, trust {s.trust})",
        f"  records: {s.hits} hits, {s.misses} misses, {s.refused} refused, {s.uploads} uploaded",
        f"  down: {s.blobs_down} blobs, {_human(s.bytes_down)} in {s.seconds_down:.1f} s"
        f" ({s.sources_down} of them source files); {s.blobs_local} blobs already here",
        f"  up: {s.blobs_up} blobs, {_human(s.bytes_up)} in {s.seconds_up:.1f} s",
    ]
    if s.errors:
        lines.append(f"  errors: {s.errors} (the run went on without the cache)")
    lines += [f"  {n}" for n in s.notes]
    return lines


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _same_file(path: Path, e: Entry) -> bool:
    """A file restored earlier that may be linked for e: same size, mode and time (a link shares them)."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_size == e.size
        and stat.S_IMODE(st.st_mode) == e.mode
        and int(st.st_mtime) == e.mtime
    )


def _link(src: Path, dest: Path) -> bool:
    try:
        os.link(src, dest)
        return True
    except OSError:
        return False


def _copy(src: Path, dest: Path) -> None:
    with open(src, "rb") as f, open(dest, "xb") as out:
        while chunk := f.read(CHUNK):
            out.write(chunk)


def from_settings(
    url: str,
    *,
    endpoint: str = "",
    read_only: bool = False,
    trust: str = "any",
    keyring: list[Path] | None = None,
    sign_key: str = "",
    host: str = "",
    say: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Remote | None:
    """The run's Remote for a cache URL (None when there is none): nothing is asked of it yet."""
    if not url:
        return None
    return Remote(
        backend(url, endpoint),
        read_only=read_only,
        trust=trust,
        keyring=keyring,
        sign_key=sign_key,
        host=host,
        say=say,
        warn=warn,
    )
