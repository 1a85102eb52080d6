"""The git source kind against real local repositories and real OpenPGP keys (no network)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from conftest import Keys, git, one_line, sh

from builder import build
from builder.errors import GitError, XenspinError
from builder.gpg import SignatureError
from builder.manifest import Component, GitSource, Verify
from builder.progress import Reporter
from builder.run import DIE_WITH_PARENT
from builder.sources import Context, FetchError, Keeps, Missing, Refused
from builder.sources import git as gitsrc
from builder.stage import Scheduler, Stage
from builder.store import Store

CANON = "https://xenbits.xen.org/git-http/xen.git"


@dataclass(frozen=True)
class Upstream:
    path: Path
    c1: str  # signed by the good key; branch stable; tags light, annotated, v1.0 (good), wrong (bad)
    c2: str  # signed by the bad key; branch other
    c3: str  # unsigned; main (upstream's HEAD)
    c4: str  # on no branch or tag, only refs/pull/1/head

    @property
    def url(self) -> str:
        return self.path.as_uri()

    def git(self, *args: str, key: str = "", keys: Keys | None = None) -> str:
        return git(self.path, *args, keys=keys, key=key)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Upstream:
    path = tmp_path_factory.mktemp("template") / "upstream"
    path.mkdir()
    up = Upstream(path, "", "", "", "")
    up.git("init", "-q", "-b", "main")
    (path / "README").write_text("xen\n")
    (path / "build.sh").write_text("#!/bin/sh\necho hi\n")
    (path / "build.sh").chmod(0o755)
    (path / "link").symlink_to("README")
    (path / ".gitattributes").write_text("dropped.txt export-ignore\n")
    (path / "dropped.txt").write_text("export-ignore must not drop me\n")
    up.git("add", "-A")
    up.git("commit", "-q", "-S", "-m", "one", key=keys.good, keys=keys)
    c1 = up.git("rev-parse", "HEAD")
    up.git("branch", "stable")
    up.git("tag", "light")
    up.git("tag", "-a", "-m", "annotated", "annotated")
    up.git("tag", "-s", "-m", "v1.0", "v1.0", key=keys.good, keys=keys)
    up.git("tag", "-s", "-m", "wrong", "wrong", key=keys.bad, keys=keys)
    (path / "README").write_text("xen 2\n")
    up.git("commit", "-q", "-a", "-S", "-m", "two", key=keys.bad, keys=keys)
    c2 = up.git("rev-parse", "HEAD")
    up.git("branch", "other")
    (path / "README").write_text("xen 3\n")
    up.git("commit", "-q", "-a", "-m", "three")
    c3 = up.git("rev-parse", "HEAD")
    c4 = up.git("commit-tree", "-p", c3, "-m", "pull request", "HEAD^{tree}")
    up.git("update-ref", "refs/pull/1/head", c4)
    return Upstream(path, c1, c2, c3, c4)


@pytest.fixture
def up(template: Upstream, tmp_path: Path) -> Upstream:
    """A private copy of the upstream repository, free to be changed by the test."""
    dest = tmp_path / "upstream"
    shutil.copytree(template.path, dest, symlinks=True)
    return replace(template, path=dest)


def make_ctx(tmp_path: Path, up: Upstream, store: str = "store", *, offline: bool = False, url: str = "") -> Context:
    return Context(
        store=Store(tmp_path / store), base=None, mirrors={CANON: url or up.url}, offline=offline, progress=None
    )


def src(ref: str, verify: Verify | None = None) -> GitSource:
    return GitSource(git=CANON, ref=ref, verify=verify)


# --- lock ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "commit", "distance"),
    [
        ("stable", "c1", 0),
        ("refs/heads/other", "c2", 1),
        ("main", "c3", 2),
        ("HEAD", "c3", 2),
        ("refs/pull/1/head", "c4", 3),
    ],
)
def test_lock_branch_and_refs(up: Upstream, tmp_path: Path, ref: str, commit: str, distance: int) -> None:
    entry = gitsrc.lock("xen", src(ref), make_ctx(tmp_path, up))
    describe = {"tag": "v1.0", "distance": distance}  # the tags light, annotated and wrong hold no version
    assert entry == {"kind": "git", "url": CANON, "ref": ref, "commit": getattr(up, commit), "describe": describe}


@pytest.mark.parametrize("form", ["full", "short", "upper", "off-branch"])
def test_lock_commit_id(up: Upstream, tmp_path: Path, form: str) -> None:
    sha = up.c4 if form == "off-branch" else up.c2
    ref = {"short": sha[:10], "upper": sha.upper()}.get(form, sha)
    entry = gitsrc.lock("xen", src(ref), make_ctx(tmp_path, up))
    assert entry["commit"] == sha and "tag" not in entry


def test_lock_tags(up: Upstream, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, up)
    light = gitsrc.lock("xen", src("light"), ctx)
    describe = {"tag": "v1.0", "distance": 0}  # light holds no version: the release tag on its commit
    assert light == {"kind": "git", "url": CANON, "ref": "light", "commit": up.c1, "tag": "light", "describe": describe}
    annotated = gitsrc.lock("xen", src("refs/tags/annotated"), ctx)
    assert annotated["tag"] == "annotated" and annotated["commit"] == up.c1
    assert annotated["tag-object"] == up.git("rev-parse", "annotated") != up.c1


def test_lock_unknown_ref(up: Upstream, tmp_path: Path) -> None:
    with pytest.raises(FetchError) as e:
        gitsrc.lock("xen", src("no-such-branch"), make_ctx(tmp_path, up))
    assert "no branch, tag or commit 'no-such-branch'" in one_line(e, "lock xen: ")


def test_lock_refuses_option_like_ref(up: Upstream, tmp_path: Path) -> None:
    with pytest.raises(FetchError) as e:
        gitsrc.lock("xen", src("--upload-pack=touch /tmp/x"), make_ctx(tmp_path, up))
    one_line(e, "lock xen: bad git ref")


def test_lock_unreachable_upstream_leaves_no_mirror(up: Upstream, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, up, url=(tmp_path / "nowhere").as_uri())
    with pytest.raises(FetchError) as e:
        gitsrc.lock("xen", src("main"), ctx)
    assert "git fetch" in one_line(e, "lock xen: ")
    assert not ctx.store.git_path(CANON).exists()
    assert list((ctx.store.root / "tmp").iterdir()) == []


def test_lock_offline(up: Upstream, tmp_path: Path) -> None:
    with pytest.raises(Missing) as e:
        gitsrc.lock("xen", src("main"), make_ctx(tmp_path, up, offline=True))
    one_line(e, "lock xen: offline")


# --- fetch -----------------------------------------------------------------------------


def test_fetch_then_offline_refetch(up: Upstream, tmp_path: Path) -> None:
    entry = gitsrc.lock("xen", src("v1.0"), make_ctx(tmp_path, up, "lock-store"))
    ctx = make_ctx(tmp_path, up)
    assert not gitsrc.fetched(entry, ctx)
    gitsrc.fetch("xen", src("v1.0"), entry, ctx)
    assert gitsrc.fetched(entry, ctx)
    # Upstream gone and offline: the store alone serves the fetch.
    gone = make_ctx(tmp_path, up, offline=True, url=(tmp_path / "nowhere").as_uri())
    gitsrc.fetch("xen", src("v1.0"), entry, gone)
    assert gitsrc.fetched(entry, gone)
    assert gitsrc.keeps(entry, gone) == Keeps(git=frozenset({CANON}))


def test_offline_empty_store_is_missing(up: Upstream, tmp_path: Path) -> None:
    entry = gitsrc.lock("xen", src("main"), make_ctx(tmp_path, up, "lock-store"))
    with pytest.raises(Missing) as e:
        gitsrc.fetch("xen", src("main"), entry, make_ctx(tmp_path, up, offline=True))
    msg = one_line(e, "fetch xen: offline")
    assert CANON in msg and up.c3 in msg


def test_fetch_gets_commit_no_longer_on_a_branch(up: Upstream, tmp_path: Path) -> None:
    """A locked branch that was since force-pushed: the commit is asked for by id."""
    entry = gitsrc.lock("xen", src("other"), make_ctx(tmp_path, up, "lock-store"))
    up.git("branch", "-f", "other", up.c3)
    ctx = make_ctx(tmp_path, up)
    gitsrc.fetch("xen", src("other"), entry, ctx)
    assert gitsrc.fetched(entry, ctx)


def test_fetch_commit_gone_upstream(up: Upstream, tmp_path: Path) -> None:
    entry = gitsrc.lock("xen", src("refs/pull/1/head"), make_ctx(tmp_path, up, "lock-store"))
    up.git("update-ref", "-d", "refs/pull/1/head")
    up.git("gc", "-q", "--prune=now")
    with pytest.raises(FetchError) as e:
        gitsrc.fetch("xen", src("refs/pull/1/head"), entry, make_ctx(tmp_path, up))
    assert f"no longer has commit {up.c4}" in one_line(e, "fetch xen: ")


def test_locked_commits_survive_gc_in_the_mirror(up: Upstream, tmp_path: Path) -> None:
    up.git("branch", "topic", up.c4)
    ctx = make_ctx(tmp_path, up)
    entry = gitsrc.lock("xen", src("topic"), ctx)
    up.git("branch", "-D", "topic")
    gitsrc.lock("xen", src("main"), ctx)  # prunes refs/heads/topic from the mirror
    sh("git", "--git-dir", ctx.store.git_path(CANON), "gc", "-q", "--prune=now")
    assert gitsrc.fetched(entry, ctx)


@pytest.mark.parametrize("tag", ["annotated", "light"])
def test_moved_tag_is_refused(up: Upstream, tmp_path: Path, tag: str) -> None:
    lock_ctx = make_ctx(tmp_path, up, "lock-store")
    entry = gitsrc.lock("xen", src(tag), lock_ctx)
    up.git("tag", "-f", *(["-a", "-m", "moved"] if tag == "annotated" else []), tag, up.c3)
    ctx = make_ctx(tmp_path, up)
    for _ in range(2):  # and a retry, now served from the store, is refused too
        with pytest.raises(FetchError) as e:
            gitsrc.fetch("xen", src(tag), entry, ctx)
        assert one_line(e, "fetch xen: ") == f"fetch xen: tag {tag} moved: locked at {up.c1}, now {up.c3}"
    # The store that locked still holds the old tag: no network, nothing to refuse...
    gitsrc.fetch("xen", src(tag), entry, lock_ctx)
    # ...until the mirror learns of the move.
    gitsrc.lock("xen", src("main"), lock_ctx)
    with pytest.raises(FetchError):
        gitsrc.fetch("xen", src(tag), entry, lock_ctx)


def test_remade_tag_on_same_commit_is_refused(up: Upstream, tmp_path: Path) -> None:
    entry = gitsrc.lock("xen", src("annotated"), make_ctx(tmp_path, up, "lock-store"))
    up.git("tag", "-f", "-a", "-m", "remade", "annotated", up.c1)
    with pytest.raises(FetchError) as e:
        gitsrc.fetch("xen", src("annotated"), entry, make_ctx(tmp_path, up))
    assert "(same commit)" in one_line(e, "fetch xen: tag annotated moved: locked at tag object")


def test_deleted_tag_is_refused(up: Upstream, tmp_path: Path) -> None:
    entry = gitsrc.lock("xen", src("light"), make_ctx(tmp_path, up, "lock-store"))
    up.git("tag", "-d", "light")
    with pytest.raises(FetchError) as e:
        gitsrc.fetch("xen", src("light"), entry, make_ctx(tmp_path, up))
    one_line(e, "fetch xen: tag light is gone upstream")


# --- signatures ------------------------------------------------------------------------


def tag_verify(*keyfiles: Path) -> Verify:
    return Verify(keys=[str(k) for k in keyfiles], tag=True)


def commit_verify(*keyfiles: Path) -> Verify:
    return Verify(keys=[str(k) for k in keyfiles], commit=True)


def test_signed_tag_with_the_right_key(up: Upstream, tmp_path: Path, keys: Keys) -> None:
    source = src("v1.0", tag_verify(keys.good_file))
    entry = gitsrc.lock("xen", source, make_ctx(tmp_path, up, "lock-store"))
    assert entry["tag"] == "v1.0" and entry["commit"] == up.c1 and "tag-object" in entry
    ctx = make_ctx(tmp_path, up)
    gitsrc.fetch("xen", source, entry, ctx)
    gitsrc.fetch("xen", source, entry, replace(ctx, offline=True))
    # Any one of the named keys will do.
    either = src("wrong", tag_verify(keys.good_file, keys.bad_file))
    gitsrc.fetch("xen", either, gitsrc.lock("xen", either, ctx), ctx)


@pytest.mark.parametrize(("tag", "why"), [("light", "is a lightweight tag"), ("annotated", "is not signed")])
def test_unsigned_tag_is_refused(up: Upstream, tmp_path: Path, keys: Keys, tag: str, why: str) -> None:
    source = src(tag, tag_verify(keys.good_file))
    with pytest.raises(SignatureError) as e:
        gitsrc.lock("xen", source, make_ctx(tmp_path, up, "lock-store"))
    assert why in one_line(e, f"lock xen: tag {tag} ")
    # Locked without verify, then fetched with it: refused, and refused again from the store.
    entry = gitsrc.lock("xen", src(tag), make_ctx(tmp_path, up, "lock-store"))
    ctx = make_ctx(tmp_path, up)
    for _ in range(2):
        with pytest.raises(SignatureError) as e:
            gitsrc.fetch("xen", source, entry, ctx)
        assert why in one_line(e, f"fetch xen: tag {tag} ")


def test_tag_signed_by_the_wrong_key_is_refused(up: Upstream, tmp_path: Path, keys: Keys) -> None:
    source = src("wrong", tag_verify(keys.good_file))
    with pytest.raises(SignatureError) as e:
        gitsrc.lock("xen", source, make_ctx(tmp_path, up, "lock-store"))
    assert "which is not among verify.keys" in one_line(e, "lock xen: tag wrong is signed by key ")
    entry = gitsrc.lock("xen", src("wrong"), make_ctx(tmp_path, up, "lock-store"))
    with pytest.raises(SignatureError):
        gitsrc.fetch("xen", source, entry, make_ctx(tmp_path, up))


def test_signed_tag_under_another_name_is_refused(up: Upstream, tmp_path: Path, keys: Keys) -> None:
    """An old signed release re-published as a new tag name is not that release."""
    up.git("update-ref", "refs/tags/v2.0", up.git("rev-parse", "v1.0"))
    with pytest.raises(SignatureError) as e:
        gitsrc.lock("xen", src("v2.0", tag_verify(keys.good_file)), make_ctx(tmp_path, up))
    assert "made as 'v1.0'" in one_line(e, "lock xen: tag v2.0 ")


def test_verify_tag_needs_a_tag(up: Upstream, tmp_path: Path, keys: Keys) -> None:
    with pytest.raises(SignatureError) as e:
        gitsrc.lock("xen", src("stable", tag_verify(keys.good_file)), make_ctx(tmp_path, up))
    one_line(e, "lock xen: verify.tag needs a signed tag, but ref 'stable' is not a tag")


@pytest.mark.parametrize(
    ("ref", "why"),
    [("stable", None), ("other", "is signed by key "), ("main", "is not signed")],
)
def test_signed_commit(up: Upstream, tmp_path: Path, keys: Keys, ref: str, why: str | None) -> None:
    source = src(ref, commit_verify(keys.good_file))
    if why is None:
        entry = gitsrc.lock("xen", source, make_ctx(tmp_path, up, "lock-store"))
        gitsrc.fetch("xen", source, entry, make_ctx(tmp_path, up))
        return
    with pytest.raises(SignatureError) as e:
        gitsrc.lock("xen", source, make_ctx(tmp_path, up, "lock-store"))
    assert why in one_line(e, "lock xen: commit ")
    entry = gitsrc.lock("xen", src(ref), make_ctx(tmp_path, up, "lock-store"))
    with pytest.raises(SignatureError) as e:
        gitsrc.fetch("xen", source, entry, make_ctx(tmp_path, up))
    assert why in one_line(e, "fetch xen: commit ")


def test_missing_key_file(up: Upstream, tmp_path: Path) -> None:
    with pytest.raises(SignatureError) as e:
        gitsrc.lock("xen", src("v1.0", tag_verify(tmp_path / "nokey.asc")), make_ctx(tmp_path, up))
    one_line(e, "lock xen: key file")


# --- the store -------------------------------------------------------------------------


def test_mirror_map_keeps_the_recipe_url(up: Upstream, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, up)
    ctx.mirrors = {"https://xenbits.xen.org/git-http/": up.path.parent.as_uri() + "/"}
    (up.path.parent / "xen.git").symlink_to(up.path)
    entry = gitsrc.lock("xen", src("stable"), ctx)
    assert entry["url"] == CANON and entry["commit"] == up.c1
    mirror = ctx.store.git_path(CANON)
    assert [p.name for p in (ctx.store.root / "git").iterdir()] == [mirror.name]
    assert sh("git", "--git-dir", mirror, "config", "remote.origin.url") == CANON
    fresh = replace(ctx, store=Store(tmp_path / "fresh"))
    gitsrc.fetch("xen", src("stable"), entry, fresh)
    assert gitsrc.fetched(entry, fresh)


def test_a_recipe_url_cannot_climb_out_of_a_mirror_on_this_machine(up: Upstream, tmp_path: Path) -> None:
    """Mirrored to a directory here, https://xenbits.xen.org/git-http/../../x.git would be a host path."""
    ctx = make_ctx(tmp_path, up)
    mirror_dir = tmp_path / "mirror" / "git-http"
    mirror_dir.mkdir(parents=True)
    ctx.mirrors = {"https://xenbits.xen.org/git-http/": mirror_dir.as_uri() + "/"}
    (tmp_path / "private.git").symlink_to(up.path)  # a repository of the host's, beside the mirror
    source = GitSource(git="https://xenbits.xen.org/git-http/../../private.git", ref="stable")
    with pytest.raises(XenspinError, match=r"'\.\.' would lead out of the mirror file://"):
        gitsrc.lock("xen", source, ctx)
    assert not (ctx.store.root / "git").exists() or list((ctx.store.root / "git").iterdir()) == []


def test_concurrent_fetches_share_one_mirror(up: Upstream, tmp_path: Path, keys: Keys) -> None:
    source = src("v1.0", tag_verify(keys.good_file))
    entry = gitsrc.lock("xen", source, make_ctx(tmp_path, up, "lock-store"))
    ctx = make_ctx(tmp_path, up)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            gitsrc.fetch("xen", source, entry, ctx)
            gitsrc.lock("xen", src("main"), ctx)
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(list((ctx.store.root / "git").iterdir())) == 1
    assert list((ctx.store.root / "tmp").iterdir()) == []
    sh("git", "--git-dir", ctx.store.git_path(CANON), "fsck", "--strict", "--no-dangling")
    assert gitsrc.fetched(entry, ctx)


def test_export_writes_the_exact_tree(up: Upstream, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, up)
    entry = gitsrc.lock("xen", src("stable"), ctx)
    dest = gitsrc.export(entry, ctx, tmp_path / "src")
    assert sorted(p.name for p in dest.iterdir()) == [".gitattributes", "README", "build.sh", "dropped.txt", "link"]
    assert (dest / "README").read_text() == "xen\n"
    assert os.access(dest / "build.sh", os.X_OK) and not os.access(dest / "README", os.X_OK)
    assert os.readlink(dest / "link") == "README"
    assert (dest / "dropped.txt").is_file()  # upstream's export-ignore does not apply
    assert int((dest / "README").stat().st_mtime) == 1704164645  # the commit's time, not now
    assert list((ctx.store.root / "tmp").iterdir()) == []


def test_export_needs_a_fetch(up: Upstream, tmp_path: Path) -> None:
    entry = gitsrc.lock("xen", src("main"), make_ctx(tmp_path, up, "lock-store"))
    with pytest.raises(Missing) as e:
        gitsrc.export(entry, make_ctx(tmp_path, up), tmp_path / "src")
    one_line(e, f"export {CANON}: the store lacks commit {up.c3}")


# --- git through the process gateway -----------------------------------------------------

# Every process Python starts, seen by an audit hook (a real observation, no mock): the
# hook is installed once and records only while a test asks it to.
STARTED: list[tuple[list[str], dict[str, str] | None]] = []
AUDITING: list[bool] = []


def _audit(event: str, args: tuple) -> None:
    if event == "subprocess.Popen" and AUDITING:
        _exe, argv, _cwd, env = args
        STARTED.append(
            ([os.fsdecode(a) for a in argv], {os.fsdecode(k): os.fsdecode(v) for k, v in env.items()} if env else None)
        )


@pytest.fixture
def started() -> Iterator[list[tuple[list[str], dict[str, str] | None]]]:
    if not getattr(sys, "_xenspin_audit", False):
        sys.addaudithook(_audit)
        sys._xenspin_audit = True  # type: ignore[attr-defined]
    STARTED.clear()
    AUDITING.append(True)
    try:
        yield STARTED
    finally:
        AUDITING.clear()


def test_every_git_process_starts_through_run(up: Upstream, tmp_path: Path, started, caplog, keys: Keys) -> None:
    """lock, fetch, tag checks, signatures and export: each git is run.run's (logged, dies with xenspin), hermetic."""
    caplog.set_level(logging.DEBUG, logger="xenspin.run")
    source = src("v1.0", tag_verify(keys.good_file))
    entry = gitsrc.lock("xen", source, make_ctx(tmp_path, up, "lock-store"))
    ctx = make_ctx(tmp_path, up)
    gitsrc.fetch("xen", source, entry, ctx)
    gitsrc.tag_now("xen", entry, ctx)
    gitsrc.export(entry, ctx, tmp_path / "src")
    gits = [(argv, env) for argv, env in started if "git" in argv[:6]]
    subcommands = {a for argv, _ in gits for a in argv if a in ("init", "fetch", "verify-tag", "archive", "cat-file")}
    assert subcommands == {"init", "fetch", "verify-tag", "archive", "cat-file"}
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("$ git ")]
    assert len(logged) == len(gits)
    for argv, env in gits:
        assert argv[: len(DIE_WITH_PARENT) + 1] == [*DIE_WITH_PARENT, "git"], argv
        assert f"core.hooksPath={os.devnull}" in argv, argv
        assert env is not None
        assert env["GIT_CONFIG_GLOBAL"] == os.devnull and env["GIT_CONFIG_NOSYSTEM"] == "1", argv
        assert env["GIT_TERMINAL_PROMPT"] == "0" and env["GIT_NO_REPLACE_OBJECTS"] == "1", argv


def test_killed_xenspin_leaves_no_git_behind(tmp_path: Path) -> None:
    """kill -9 of xenspin while git waits on a silent server: the git process dies with it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()  # never accepts: git connects and waits for an answer that never comes
    url = f"git://127.0.0.1:{server.getsockname()[1]}/xen.git"
    code = (
        "from pathlib import Path\n"
        "from builder.manifest import GitSource\n"
        "from builder.sources import Context, git\n"
        "from builder.store import Store\n"
        f"ctx = Context(store=Store(Path({str(tmp_path / 'store')!r})), base=None, mirrors={{{CANON!r}: {url!r}}})\n"
        f"git.lock('xen', GitSource(git={CANON!r}, ref='main'), ctx)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 20
        while not (seen := _gits_fetching(url)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen, "git never started"
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while _gits_fetching(url) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = _gits_fetching(url)
        assert not left
    finally:
        parent.kill()
        parent.wait()
        for pid in _gits_fetching(url):
            os.kill(pid, signal.SIGKILL)
        server.close()


def _gits_fetching(url: str) -> list[int]:
    """Pids of live git processes fetching url."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if argv[0].endswith(b"git") and url.encode() in argv and state != "Z":
            pids.append(int(proc.name))
    return pids


def test_user_git_config_and_hooks_change_nothing(up: Upstream, tmp_path: Path, monkeypatch) -> None:
    """The user's git config (an insteadOf, a hooksPath), GIT_CONFIG_* in the environment and hooks in a mirror."""
    evil = tmp_path / "evil"
    evil.mkdir()
    sh("git", "init", "-q", "-b", "main", cwd=evil)
    (evil / "README").write_text("not xen\n")
    sh("git", "add", "README", cwd=evil)
    sh("git", "commit", "-q", "-m", "evil", cwd=evil)
    marker = tmp_path / "hook-ran"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for name in ("reference-transaction", "post-checkout", "pre-auto-gc"):
        (hooks / name).write_text(f"#!/bin/sh\necho {name} >> {marker}\n")
        (hooks / name).chmod(0o755)
    config = tmp_path / "gitconfig"
    config.write_text(f'[url "{evil.as_uri()}"]\n\tinsteadOf = {up.url}\n[core]\n\thooksPath = {hooks}\n')
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "core.hooksPath")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", str(hooks))
    ctx = make_ctx(tmp_path, up)
    entry = gitsrc.lock("xen", src("main"), ctx)
    assert entry["commit"] == up.c3
    shutil.copytree(hooks, ctx.store.git_path(CANON) / "hooks", dirs_exist_ok=True)
    gitsrc.fetch("xen", src("main"), entry, ctx)
    gitsrc.lock("xen", src("stable"), ctx)
    assert (gitsrc.export(entry, ctx, tmp_path / "src") / "README").read_text() == "xen 3\n"
    assert not marker.exists(), marker.read_text()


def test_git_failing_on_the_mirror_is_one_line(up: Upstream, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, up)
    entry = gitsrc.lock("xen", src("stable"), ctx)
    held = ctx.store.git_path(CANON) / f"refs/xenspin/keep/{up.c1}.lock"
    held.write_text("")  # a git killed while it held the ref
    with pytest.raises(GitError) as e:
        gitsrc.fetch("xen", src("stable"), entry, ctx)
    line = one_line(e, f"fetch xen: git update-ref refs/xenspin/keep/{up.c1} failed (exit 128): fatal: ")
    assert "File exists" in line


# --- objects changed in the mirror -------------------------------------------------------


def _loose(mirror: Path, oid: str) -> Path:
    path = mirror / "objects" / oid[:2] / oid[2:]
    assert path.is_file(), f"{oid} is not a loose object in the mirror"
    path.chmod(0o644)
    return path


@pytest.mark.parametrize("what", ["blob", "tree", "packed"])
def test_object_changed_in_the_mirror_is_refused_at_export(up: Upstream, tmp_path: Path, what: str) -> None:
    """A blob or tree rewritten in the mirror after the fetch (git reads it back unchecked) is never exported."""
    ctx = make_ctx(tmp_path, up)
    entry = gitsrc.lock("xen", src("stable"), ctx)  # c1: README is "xen\n"
    mirror = ctx.store.git_path(CANON)
    readme = up.git("rev-parse", f"{up.c1}:README")
    if what == "blob":
        _loose(mirror, readme).write_bytes(zlib.compress(b"blob 4\0own\n"))  # as long as "xen\n"
    elif what == "tree":  # c1's tree rewritten as c2's: README "xen 2"
        other = subprocess.run(["git", "cat-file", "tree", f"{up.c2}^{{tree}}"], cwd=up.path, capture_output=True)
        tree = _loose(mirror, up.git("rev-parse", f"{up.c1}^{{tree}}"))
        tree.write_bytes(zlib.compress(b"tree %d\0" % len(other.stdout) + other.stdout))
    else:
        sh("git", "--git-dir", mirror, "repack", "-adq")
        pack = next((mirror / "objects/pack").glob("*.pack"))
        index = sh("git", "verify-pack", "-v", pack.with_suffix(".idx"))
        line = next(row.split() for row in index.splitlines() if row.startswith(readme))
        offset, stored = int(line[4]), int(line[3])
        data = bytearray(pack.read_bytes())
        data[offset + stored - 2] ^= 0xFF  # inside the zlib stream's checksum
        pack.chmod(0o644)
        pack.write_bytes(bytes(data))
    with pytest.raises(Refused) as e:
        gitsrc.export(entry, ctx, tmp_path / "src")
    line = one_line(e, f"export {CANON}: object ")
    assert "does not match its id" in line and "`xenspin fetch` gets it again" in line
    assert not (tmp_path / "src" / "README").exists()
    assert not mirror.exists() and not gitsrc.fetched(entry, ctx)
    gitsrc.fetch("xen", src("stable"), entry, ctx)  # the real bytes again
    assert (gitsrc.export(entry, ctx, tmp_path / "again") / "README").read_text() == "xen\n"


# --- the unpacked source tree --------------------------------------------------------------


@pytest.mark.parametrize("change", ["none", "byte", "added", "link", "mode", "removed"])
def test_source_tree_is_checked_each_time_a_build_takes_it(up: Upstream, tmp_path: Path, capsys, change: str) -> None:
    """objects/src/KEY changed after it was made is unpacked again, with a warning; unchanged, it is used as is."""
    ctx = make_ctx(tmp_path, up)
    ctx.progress = Reporter()
    entry = gitsrc.lock("xen", src("stable"), ctx)
    source = build._src_stage(ctx, "xen", Component(source=src("stable")), entry)
    seen: list[dict[str, tuple[bytes | str, int]]] = []

    def user(run: int) -> Stage:
        """A build that must be made (its key changes each run), so it takes the source tree."""

        def make(tmp: Path, needs) -> dict:
            tree = needs["src:xen"].path
            seen.append(
                {
                    p.name: (os.readlink(p) if p.is_symlink() else p.read_bytes(), p.lstat().st_mode)
                    for p in sorted(tree.iterdir())
                }
            )
            return {}

        return Stage("build", "xen", 1, inputs=lambda _needs: {"run": run}, make=make, uses=("src:xen",))

    first = Scheduler(ctx.store, [source, user(1)]).run()["src:xen"].done
    assert first.path is not None and first.meta is not None and len(first.meta["tree"]) == 64
    tree = first.path
    if change == "byte":
        (tree / "README").write_text("xen!")
    elif change == "added":
        (tree / "extra").write_text("")
    elif change == "link":
        (tree / "link").unlink()
        (tree / "link").symlink_to("build.sh")
    elif change == "mode":
        (tree / "README").chmod(0o755)
    elif change == "removed":
        (tree / "dropped.txt").unlink()
    capsys.readouterr()
    second = Scheduler(ctx.store, [source, user(2)]).run()["src:xen"]
    assert seen[1] == seen[0]
    err = capsys.readouterr().err
    if change == "none":
        assert not second.made and err == ""
        return
    where = f"objects/src/{first.key}"
    assert one_line(err) == (
        f"warning: {where}: the source tree of xen changed since it was unpacked; removed it, unpacking again"
    )
    assert second.made and ctx.store.meta("src", first.key) == first.meta
