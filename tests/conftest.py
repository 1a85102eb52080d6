"""Fixtures and helpers shared by the test files: what a test may touch, git repositories, OpenPGP keys,
an HTTP server, one_line.

Every test (and every session or module fixture) runs with HOME, XDG_CONFIG_HOME and XDG_CACHE_HOME
in a directory of its own: none reads the user's config.yaml or writes the user's store. A run that
leaves anything in the checkout fails (see pytest_sessionfinish). Tests marked `root` are skipped
for other users.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from builder import cli
from builder.run import run

ROOT = Path(__file__).resolve().parent.parent  # the checkout: tests read it, never write it

# --- what a test may touch ----------------------------------------------------------------


def hermetic_env(mp: pytest.MonkeyPatch, where: Path) -> Path:
    """HOME, xenspin's config (XDG_CONFIG_HOME) and default store (XDG_CACHE_HOME), and the user's git and
    GnuPG settings, all under where: empty, so nothing of the user's is read or written. The working
    directory too: a command run without --out writes ./out there, never into the checkout. Returns HOME."""
    home = where / "home"
    home.mkdir()
    mp.chdir(where)
    mp.setenv("HOME", str(home))
    mp.setenv("XDG_CONFIG_HOME", str(where / "config"))
    mp.setenv("XDG_CACHE_HOME", str(where / "cache"))
    mp.setenv("GNUPGHOME", str(where / "gnupg"))  # no such directory: no keyring to trust by accident
    mp.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
    return home


@pytest.fixture(scope="session", autouse=True)
def hermetic_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The same for session and module fixtures (made before a test's own): the default build, the spins.

    They share the `store` fixture through --store, not through XDG_CACHE_HOME.
    """
    with pytest.MonkeyPatch.context() as mp:
        yield hermetic_env(mp, tmp_path_factory.mktemp("user"))


@pytest.fixture(autouse=True)
def hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each test's own empty HOME, config and cache (a test may set any of them again itself)."""
    return hermetic_env(monkeypatch, tmp_path_factory.mktemp("user"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked root (loop devices, chroot, mknod, chown, the build account) are skipped for other users."""
    if os.geteuid() == 0:
        return
    for item in items:
        if item.get_closest_marker("root") is not None:
            item.add_marker(pytest.mark.skip(reason="needs root (marker root)"))


# What a test could leave in the checkout: files beside the manifests, out/, locks (spins/*.lock is ignored by git).
WATCHED = ("distro.yaml", "distro.lock", "spins", "components", "overlays")
TOOLS = re.compile(r"^!! (\.venv/|.*\.egg-info/|.*__pycache__/|\.pytest_cache/|\.ruff_cache/)$")
Checkout = tuple[frozenset[str], dict[str, int]]
CHECKOUT = pytest.StashKey[Checkout | None]()


def checkout_state() -> Checkout | None:
    """git's view of the checkout (untracked and ignored entries too), and the times of the watched files."""
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--ignored"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        return None  # not a git checkout (an unpacked sdist): nothing to compare
    status = frozenset(line for line in proc.stdout.splitlines() if not TOOLS.match(line))
    times = {}
    for name in WATCHED:
        top = ROOT / name
        for path in [top, *top.rglob("*")] if top.is_dir() else [top]:
            if "__pycache__" in path.parts:  # Python's own, as git status above
                continue
            with contextlib.suppress(FileNotFoundError):
                times[str(path.relative_to(ROOT))] = path.lstat().st_mtime_ns
    return status, times


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[CHECKOUT] = checkout_state()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run that wrote into the checkout (a lock, out/, a file beside a manifest) fails, naming what changed."""
    before = session.config.stash.get(CHECKOUT, None)
    after = checkout_state() if before is not None else None
    if before is None or after is None:
        return
    changed = sorted(before[0] ^ after[0])
    changed += sorted(p for p in before[1].keys() | after[1].keys() if before[1].get(p) != after[1].get(p))
    if not changed:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(f"the tests wrote into the checkout {ROOT}: " + "; ".join(changed), red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


# An address where nothing listens: a connection there is refused at once, on any machine, online or not.
UNREACHABLE = "http://127.0.0.1:9/"
# The default distribution's optional upstreams (guest tools on xenbits; GitHub for spins) mapped there,
# so a build leaves them out whether or not the machine reaches the Internet.
OPTIONAL_UPSTREAMS = {"https://xenbits.xen.org/": UNREACHABLE, "https://github.com/": UNREACHABLE}


def mirror_args(mirrors: dict[str, str]) -> list[str]:
    """--mirror FROM=TO options for a mirror map."""
    return [arg for src, dst in mirrors.items() for arg in ("--mirror", f"{src}={dst}")]


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for the whole run, so each build root is made once and shared by every build test."""
    return tmp_path_factory.mktemp("store")


def one_line(what: str | pytest.ExceptionInfo, prefix: str = "") -> str:
    """The single line a user sees for an expected failure (stderr text or a raised error): no traceback."""
    text = str(what.value) if isinstance(what, pytest.ExceptionInfo) else what
    lines = [line for line in text.splitlines() if line.strip()]
    assert "Traceback" not in text, text
    assert len(lines) == 1, text
    assert lines[0].startswith(prefix), text
    return lines[0]


# Real upstream repositories carried beside the checkout (../shared/mirror, listed in its INDEX.tsv).
SHARED_MIRROR = ROOT.parent / "shared" / "mirror"
XEN_GIT = "https://xenbits.xen.org/git-http/xen.git"
DEFAULT_EPOCH = "1767225600"  # the epoch test_xen.py builds with, so the session store shares every object


@dataclass(frozen=True)
class DefaultBuild:
    """The default distribution built once per run: its project copy, store and outputs."""

    project: Path  # a copy of the repository's distro.yaml, distro.lock, components/ and overlays/
    manifest: Path
    store: Path
    report: dict  # `xenspin --json build`
    rootfs: Path  # the rootfs stage's output: rootfs.squashfs, packages.json, boot/
    tree: Path  # rootfs.squashfs unpacked (read it, do not change it)


# A one-file component the small test distributions build: an in-tree source and one step.
TINY_RECIPE = """\
source: {path: hello}
steps:
  - name: stage
    run: install -D -m 0644 "$SRC/note" "$OUT/usr/share/hello/note"
package: {name: hello-xs}
"""


def write(root: Path, files: dict[str, str]) -> None:
    """Write each file (its parents made) under root."""
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def copy_project(dest: Path) -> Path:
    """The repository's default distribution copied into dest (read-only data; nothing points back)."""
    for name in ("distro.yaml", "distro.lock"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("components", "overlays"):
        shutil.copytree(ROOT / name, dest / name, symlinks=True)
    return dest / "distro.yaml"


@pytest.fixture(scope="session")
def default_build(store: Path, tmp_path_factory: pytest.TempPathFactory) -> DefaultBuild:
    """`xenspin build` of the default distribution, once per session, shared by the rootfs, ISO and installer tests.

    Slow and needs the archive on a cold store: only slow/network tests may use it. The optional
    upstreams (the guest tools) are mapped to an address where nothing listens, so they are left
    out on any machine, online or not.
    """
    project = tmp_path_factory.mktemp("default-distro")
    manifest = copy_project(project)
    argv = ["-f", str(manifest), "--store", str(store), "--out", str(project / "out")]
    argv += [*mirror_args(OPTIONAL_UPSTREAMS), "--json", "build"]
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setenv("SOURCE_DATE_EPOCH", DEFAULT_EPOCH)
        code = cli.main(argv)
    assert code == 0, err.getvalue()
    report = json.loads(out.getvalue())
    rootfs = Path(report["rootfs"]["path"])
    tree = project / "tree"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(tree), str(rootfs / "rootfs.squashfs")], check=True)
    return DefaultBuild(project, manifest, store, report, rootfs, tree)


@pytest.fixture(scope="session")
def default_iso(default_build: DefaultBuild) -> Path:
    """The default distribution's ISO in its out/, as `xenspin build` published it."""
    images = sorted((default_build.project / "out").glob("*-amd64.iso"))
    assert [p.name for p in images] == ["xenspin-0.1-amd64.iso"]
    return images[0]


# --- git -----------------------------------------------------------------------------

# Hermetic git: no user or system config, fixed identities and dates.
BASE_ENV = {
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "GIT_AUTHOR_DATE": "2024-01-02T03:04:05Z",
    "GIT_COMMITTER_DATE": "2024-01-02T03:04:05Z",
}


def sh(*args: str | os.PathLike, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command with the hermetic git environment; its stdout, stripped."""
    return run(list(args), what="test", cwd=cwd, env={**BASE_ENV, **(env or {})}, capture=True).stdout.decode().strip()


def git(repo: Path, *args: str, keys: Keys | None = None, key: str = "") -> str:
    """git in repo; with key, tags and commits made with -s/-S are signed by that key of keys."""
    signing = ["-c", f"user.signingkey={key}", "-c", "gpg.program=gpg"] if key else []
    env = {"GNUPGHOME": str(keys.home)} if keys else {}
    return sh("git", "-C", repo, *signing, *args, env=env)


def commit(repo: Path, text: str, name: str = "README") -> str:
    """Write text to a file, commit it; the new commit's id."""
    (repo / name).write_text(text)
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", text)
    return git(repo, "rev-parse", "HEAD")


def new_repo(path: Path, text: str = "one") -> Path:
    """A git repository at path (branch main) with one commit."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    commit(path, text)
    return path


# --- OpenPGP keys ----------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    """Two generated signing keys in one throwaway GnuPG home (never ~/.gnupg)."""

    home: Path
    good: str  # fingerprints
    bad: str
    good_file: Path  # armored public keys
    bad_file: Path

    def gpg(self, *args: str | os.PathLike) -> str:
        return sh("gpg", "--batch", *args, env={"GNUPGHOME": str(self.home)})


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    env = {"GNUPGHOME": str(home)}
    fprs = {}
    for who in ("good", "bad"):
        uid = f"Test {who} <{who}@example.invalid>"
        sh("gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never", env=env)
        listing = sh("gpg", "--batch", "--with-colons", "--list-keys", f"<{who}@example.invalid>", env=env)
        fprs[who] = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        (home / f"{who}.asc").write_text(sh("gpg", "--batch", "--armor", "--export", fprs[who], env=env) + "\n")
    yield Keys(home, fprs["good"], fprs["bad"], home / "good.asc", home / "bad.asc")
    sh("gpgconf", "--kill", "all", env=env)


# --- an HTTP server ------------------------------------------------------------------
# It serves files from server.root and misbehaves on purpose by URL prefix: /cut/ drops
# the connection half way on the first request, /cutnorange/ does that and then ignores
# Range, /tamper/ serves altered bytes, /flaky/ answers 503 once, /slow/ waits before the
# body, /gzenc/ labels a .gz file with Content-Encoding: gzip. Everything else is a plain
# file server with Range and ETag support.

MODES = {"cut", "cutnorange", "tamper", "flaky", "slow", "gzenc"}


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
        # A query names nothing here (the snapshot archive's listings take ?fileinfo=1): the path decides.
        path = urllib.parse.unquote(self.path.split("?", 1)[0])
        mode, _, rest = path.lstrip("/").partition("/")
        if mode not in MODES:
            mode, rest = "plain", path.lstrip("/")
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


# --- the carried upstream Xen -------------------------------------------------------------


@pytest.fixture(scope="session")
def xen_mirror(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The mirror map to a writable copy of the carried Xen repository (shallow: RELEASE-4.20.4, stable-4.20).

    The carried copy lacks the refs/ directory git needs to take it for a repository.
    """
    carried = SHARED_MIRROR / "xenbits.xen.org"
    if not (carried / "git-http/xen.git").is_dir():
        pytest.skip(f"no carried Xen repository at {carried}")
    dest = tmp_path_factory.mktemp("mirror") / "xenbits.xen.org"
    shutil.copytree(carried, dest, symlinks=True)
    for root, dirs, files in os.walk(dest):
        for name in [".", *dirs, *files]:
            p = Path(root, name)
            p.chmod(p.stat().st_mode | 0o200)
    (dest / "git-http/xen.git/refs").mkdir(exist_ok=True)
    return {"https://xenbits.xen.org/": dest.as_uri() + "/"}


# --- Debian's snapshot archive, as the tests serve it -----------------------------------------


def snapshot_add(root: Path, listing: str, files: dict[str, Path], arch: str = "") -> None:
    """Publish files (name -> path) at root as snapshot.debian.org serves them: /file/SHA1 and the
    machine-readable listing (e.g. mr/binary/NAME/VERSION/binfiles) naming each by its sha1."""
    where = root / listing
    doc = json.loads(where.read_text()) if where.is_file() else {"_comment": "test", "result": [], "fileinfo": {}}
    for name, path in files.items():
        sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
        (root / "file").mkdir(parents=True, exist_ok=True)
        if not (root / "file" / sha1).exists():
            shutil.copyfile(path, root / "file" / sha1)
        doc["result"].append({"hash": sha1, **({"architecture": arch} if arch else {})})
        doc["fileinfo"][sha1] = [
            {"archive_name": "debian", "first_seen": "20250101T000000Z", "name": name, "path": "/pool", "size": 1}
        ]
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_text(json.dumps(doc))
