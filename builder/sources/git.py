"""Git sources: a ref locked to a commit, kept in a bare mirror in the store, signatures checked.

One bare mirror per canonical repository URL lives at Store.git_path(url); the mirror
map only changes where it is fetched from. Every touch of a mirror holds that mirror's
lock, and a new mirror is built in the store's tmp/ and renamed into place, so a
half-cloned mirror never sits at its final path.

Locked commits (and tag objects) are pinned under refs/xenspin/keep/ in the mirror:
upstream may force-push or delete the ref they came from, and git's automatic gc
would otherwise prune them, breaking a later offline build.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import git as gitpython

from .. import gpg, tarballs
from ..gpg import SignatureError
from ..manifest import GitSource
from ..progress import Reporter
from ..run import run
from . import Context, FetchError, Keeps, Missing, Refused

log = logging.getLogger("xenspin.git")

REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
UPSTREAM_HEAD = "refs/xenspin/HEAD"  # where upstream's HEAD is fetched when ref is "HEAD"
KEEP = "refs/xenspin/keep/"
# No credential prompts: a run must fail, not hang waiting for a password nobody types;
# and a transfer slower than 1 KB/s for a minute is a dead link, not a slow one.
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_HTTP_LOW_SPEED_LIMIT": "1000", "GIT_HTTP_LOW_SPEED_TIME": "60"}
# $GIT_DIR/info/attributes beats in-tree .gitattributes: export the exact tree of the
# commit, not one rewritten by export-ignore/export-subst, eol conversion or filters.
EXACT_TREE = "* -text -eol -ident -filter -working-tree-encoding -export-subst -export-ignore\n"
HEX = re.compile(r"[0-9a-f]{4,64}")
FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


# --- the protocol ---------------------------------------------------------------------

FOLLOWS_ARCHIVE = False


def lock(name: str, source: GitSource, ctx: Context) -> dict[str, Any]:
    """Resolve source.ref upstream to a commit (and tag object); check signatures when asked."""
    what = f"lock {name}"
    url, ref = source.git, source.ref
    _check_inputs(what, url, ref)
    if ctx.offline:
        raise Missing(f"{what}: offline, and resolving ref {ref!r} needs {url}")
    path = ctx.store.git_path(url)
    with _mirror_lock(ctx, url), _discard_refused(path):
        _update(ctx, url, path, REFSPECS + _extra_refspecs(ref), what)
        entry = _resolve(path, ref, what)
        if entry is None and FULL_SHA.fullmatch(ref.lower()):
            _fetch_commit(ctx, url, path, ref.lower())
            entry = _resolve(path, ref, what)
        if entry is None:
            raise FetchError(f"{what}: {url} has no branch, tag or commit {ref!r}")
        entry = {"kind": "git", "url": url, "ref": ref, **entry}
        _verify(source, entry, path, what)
        _keep(path, entry)
    return entry


def fetch(name: str, source: GitSource, entry: dict[str, Any], ctx: Context) -> None:
    """Make the mirror hold exactly the locked commit; refuse a moved tag or a bad signature.

    The network is used only when the mirror lacks the commit. The tag and signature
    checks run against the mirror every time, so a fetch refused once stays refused.
    """
    what = f"fetch {name}"
    url, commit = entry["url"], entry["commit"]
    _check_inputs(what, url, entry["ref"])
    path = ctx.store.git_path(url)
    with _mirror_lock(ctx, url), _discard_refused(path):
        if not _holds(path, entry):
            if ctx.offline:
                raise Missing(f"{what}: offline, and the store lacks commit {commit} of {url}")
            # Branches and tags only: the locked commit is asked for by id if they lack it,
            # and a ref locked from refs/pull/... may be long gone.
            _update(ctx, url, path, REFSPECS, what)
        _check_tag(path, entry, what)
        if not _holds(path, entry):
            _fetch_commit(ctx, url, path, commit)
        if not _holds(path, entry):
            raise FetchError(f"{what}: {ctx.url(url)} no longer has commit {commit} (locked from {entry['ref']!r})")
        _verify(source, entry, path, what)
        _keep(path, entry)


def tag_now(name: str, entry: dict[str, Any], ctx: Context) -> str | None:
    """The commit a locked tag names upstream now; None when it is no tag or upstream cannot be reached."""
    tag = entry.get("tag")
    if not tag or ctx.offline:
        return None
    url = entry["url"]
    path = ctx.store.git_path(url)
    try:
        with _mirror_lock(ctx, url):
            _update(ctx, url, path, REFSPECS, f"lock {name}")
            with _repo(path) as repo:
                return _rev(repo, f"refs/tags/{tag}^{{commit}}")
    except FetchError as e:
        log.info("lock %s: cannot look at tag %s upstream: %s", name, tag, e)
        return None


def fetched(entry: dict[str, Any], ctx: Context) -> bool:
    """Whether the mirror already holds the locked commit (and tag object)."""
    return _holds(ctx.store.git_path(entry["url"]), entry)


def keeps(entry: dict[str, Any], ctx: Context) -> Keeps:
    """The mirror of the canonical URL; gc keeps it whole."""
    return Keeps(git=frozenset({entry["url"]}))


def export(entry: dict[str, Any], ctx: Context, dest: Path) -> Path:
    """Write the tree of the locked commit into dest (created if missing); file times are the commit's."""
    url, commit = entry["url"], entry["commit"]
    path = ctx.store.git_path(url)
    if not _holds(path, entry):
        raise Missing(f"export {url}: the store lacks commit {commit} (fetch it first)")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tar = ctx.store.tmp_path("export")
    try:
        with _repo(path) as repo, open(tar, "wb") as f:
            status, _, err = repo.git.archive(
                "--format=tar", commit, output_stream=f, with_extended_output=True, with_exceptions=False
            )
        if status != 0:
            raise FetchError(f"export {url}: git archive {commit} failed: {_last_line(err)}")
        with tarfile.open(tar) as t:
            tarballs.extract(t, dest, exact_modes=True)
    finally:
        tar.unlink(missing_ok=True)
    return dest


def tree(entry: dict[str, Any], ctx: Context, dest: Path) -> Path:
    return export(entry, ctx, dest)


def in_tree(source: Any) -> Path | None:
    return None


def debs(entry: dict[str, Any]) -> dict[str, str] | None:
    return None


def binary_packages(source: Any) -> list[str]:
    return []


def srcpkg(entry: dict[str, Any]) -> dict[str, str]:
    return {}


def summary(entry: dict[str, Any]) -> str:
    return f"{entry['commit'][:12]} ({entry.get('ref', '')})"


def upstream_version(entry: dict[str, Any]) -> str:
    return "0~git" + entry["commit"][:12]


# --- the mirror ----------------------------------------------------------------------


@contextlib.contextmanager
def _mirror_lock(ctx: Context, url: str) -> Iterator[None]:
    """Exclusive use of one mirror: two runs never fetch into it at once."""
    with ctx.store.locked("git-" + ctx.store.git_path(url).stem):
        yield


@contextlib.contextmanager
def _discard_refused(path: Path) -> Iterator[None]:
    """A mirror that offered a moved tag or a bad signature is removed: the refusal outlives the run."""
    try:
        yield
    except Refused:
        shutil.rmtree(path, ignore_errors=True)
        raise


@contextlib.contextmanager
def _repo(path: Path) -> Iterator[gitpython.Repo]:
    repo = gitpython.Repo(str(path))
    repo.git.update_environment(**GIT_ENV)
    try:
        yield repo
    finally:
        repo.close()


def _git(repo: gitpython.Repo, cmd: str, *args: str) -> tuple[int, str, str]:
    """Run a git subcommand in repo; (status, stdout, stderr), never raising."""
    return getattr(repo.git, cmd.replace("-", "_"))(*args, with_extended_output=True, with_exceptions=False)


def _update(ctx: Context, url: str, path: Path, refspecs: tuple[str, ...], what: str) -> None:
    """Fetch refspecs from the (mirror-mapped) url; a new mirror is built aside and renamed in."""
    if path.is_dir():
        _fetch(ctx, url, path, refspecs, what)
        return

    def make(tmp: Path) -> None:
        tmp.chmod(0o755)
        repo = gitpython.Repo.init(str(tmp), bare=True)
        try:
            _configure(repo, url)
        finally:
            repo.close()
        _fetch(ctx, url, tmp, refspecs, what)

    ctx.store.create(path, make, hint="git")


def _configure(repo: gitpython.Repo, url: str) -> None:
    """Record what the mirror mirrors (for people looking at the store) and how it is exported."""
    repo.create_remote("origin", url)
    repo.git.config("--replace-all", "remote.origin.fetch", REFSPECS[0])
    repo.git.config("--add", "remote.origin.fetch", REFSPECS[1])
    repo.git.config("remote.origin.prune", "true")
    # gc in the foreground, while we still hold the mirror's lock.
    repo.git.config("gc.autoDetach", "false")
    info = Path(repo.git_dir) / "info"
    info.mkdir(exist_ok=True)
    (info / "attributes").write_text(EXACT_TREE)


def _fetch(ctx: Context, url: str, path: Path, refspecs: tuple[str, ...], what: str) -> None:
    real = ctx.url(url)
    _check_inputs(what, real, "HEAD")
    log.info("%s: fetching %s", what, real)
    with _repo(path) as repo, (ctx.progress or Reporter(quiet=True)).transfer(f"{what}: git {real}"):
        status, _, err = _git(repo, "fetch", "--prune", "--no-write-fetch-head", "--quiet", real, *refspecs)
    if status != 0:
        raise FetchError(f"{what}: git fetch {real} failed: {_last_line(err)}")


def _fetch_commit(ctx: Context, url: str, path: Path, sha: str) -> None:
    """Ask for one commit by id: it may be reachable from no branch or tag any more."""
    real = ctx.url(url)
    with _repo(path) as repo:
        status, _, err = _git(repo, "fetch", "--no-write-fetch-head", "--quiet", real, sha)
    if status != 0:
        log.info("fetching %s from %s by id failed: %s", sha, real, _last_line(err))


def _extra_refspecs(ref: str) -> tuple[str, ...]:
    """Refs outside heads and tags are fetched by name: upstream's HEAD, refs/pull/..., refs/changes/..."""
    if ref == "HEAD":
        return (f"+HEAD:{UPSTREAM_HEAD}",)
    if ref.startswith("refs/") and not ref.startswith(("refs/heads/", "refs/tags/")):
        return (f"+{ref}:{ref}",)
    return ()


def _holds(path: Path, entry: dict[str, Any]) -> bool:
    if not path.is_dir():
        return False
    wanted = [entry["commit"] + "^{commit}"]
    if entry.get("tag-object"):
        wanted.append(entry["tag-object"] + "^{tag}")
    with _repo(path) as repo:
        return all(_git(repo, "cat-file", "-e", w)[0] == 0 for w in wanted)


def _keep(path: Path, entry: dict[str, Any]) -> None:
    with _repo(path) as repo:
        for sha in filter(None, (entry["commit"], entry.get("tag-object"))):
            repo.git.update_ref(KEEP + sha, sha)


# --- resolving -----------------------------------------------------------------------


def _rev(repo: gitpython.Repo, spec: str) -> str | None:
    status, out, _ = _git(repo, "rev-parse", "--verify", "--quiet", spec)
    return out.strip() if status == 0 else None


def _resolve(path: Path, ref: str, what: str) -> dict[str, str] | None:
    """The commit (and tag) ref names in the mirror: a tag, then a branch, then a commit id, as git does."""
    with _repo(path) as repo:
        if ref == "HEAD":
            commit = _rev(repo, UPSTREAM_HEAD + "^{commit}")
            return {"commit": commit} if commit else None
        if ref.startswith("refs/tags/"):
            tag = ref.removeprefix("refs/tags/")
        elif not ref.startswith("refs/") and _rev(repo, f"refs/tags/{ref}"):
            tag = ref
        else:
            tag = None
        if tag is not None:
            return _resolve_tag(repo, tag, what)
        if ref.startswith("refs/"):
            commit = _rev(repo, ref + "^{commit}")
        elif _rev(repo, f"refs/heads/{ref}"):
            commit = _rev(repo, f"refs/heads/{ref}^{{commit}}")
        elif HEX.fullmatch(ref.lower()):
            commit = _rev(repo, ref.lower() + "^{commit}")
            if commit and not commit.startswith(ref.lower()):
                commit = None
        else:
            commit = None
        return {"commit": commit} if commit else None


def _resolve_tag(repo: gitpython.Repo, tag: str, what: str) -> dict[str, str] | None:
    target = _rev(repo, f"refs/tags/{tag}")
    if target is None:
        return None
    commit = _rev(repo, target + "^{commit}")
    if commit is None:
        raise FetchError(f"{what}: tag {tag} does not point at a commit")
    entry = {"commit": commit, "tag": tag}
    if target != commit:
        entry["tag-object"] = target
    return entry


def _check_tag(path: Path, entry: dict[str, Any], what: str) -> None:
    """The tag must still name what was locked: the same commit through the same tag object."""
    tag = entry.get("tag")
    if tag is None:
        return
    locked, locked_obj = entry["commit"], entry.get("tag-object")
    with _repo(path) as repo:
        target = _rev(repo, f"refs/tags/{tag}")
        if target is None:
            raise Refused(f"{what}: tag {tag} is gone upstream: locked at {locked}")
        now = _rev(repo, target + "^{commit}")
    if now != locked:
        raise Refused(f"{what}: tag {tag} moved: locked at {locked}, now {now or 'a non-commit ' + target}")
    now_obj = target if target != now else None
    if now_obj != locked_obj:
        raise Refused(
            f"{what}: tag {tag} moved: locked at tag object {locked_obj or '(lightweight)'}, "
            f"now {now_obj or '(lightweight)'} (same commit)"
        )


# --- signatures ----------------------------------------------------------------------


def _verify(source: GitSource, entry: dict[str, Any], path: Path, what: str) -> None:
    """Check what source.verify asks for against its keys only; SignatureError otherwise."""
    verify = source.verify
    if verify is None or not (verify.tag or verify.commit):
        return
    with gpg.keyring([Path(k) for k in verify.keys], what=what) as home:
        if verify.tag:
            tag = entry.get("tag")
            if tag is None:
                raise SignatureError(f"{what}: verify.tag needs a signed tag, but ref {entry['ref']!r} is not a tag")
            obj = entry.get("tag-object")
            if obj is None:
                raise SignatureError(f"{what}: tag {tag} is a lightweight tag, which carries no signature (verify.tag)")
            _check_tag_name(path, obj, tag, what)
            _check_signature(path, "verify-tag", obj, home, f"{what}: tag {tag}", "verify.tag")
        if verify.commit:
            commit = entry["commit"]
            _check_signature(path, "verify-commit", commit, home, f"{what}: commit {commit}", "verify.commit")


def _check_tag_name(path: Path, obj: str, tag: str, what: str) -> None:
    """A signed tag object names its tag: refuse one re-published under another name (an old release as new)."""
    with _repo(path) as repo:
        body = repo.git.cat_file("tag", obj)
    named = next((line[4:] for line in body.splitlines() if line.startswith("tag ")), None)
    if named != tag:
        raise SignatureError(f"{what}: tag {tag} is a tag object made as {named!r}, not {tag!r}")


def _check_signature(path: Path, cmd: str, obj: str, home: Path, subject: str, option: str) -> None:
    proc = run(
        ["git", f"--git-dir={path}", "-c", "gpg.program=gpg", "-c", "gpg.minTrustLevel=undefined", cmd, "--raw", obj],
        what=subject,
        env={"GNUPGHOME": str(home), **GIT_ENV},
        capture=True,
        check=False,
    )
    status = (proc.stdout + proc.stderr).decode(errors="replace")
    signers = gpg.valid_signers(status)
    if proc.returncode == 0 and signers:
        log.info("%s: good signature by %s", subject, signers[0])
        return
    raise SignatureError(f"{subject} {_why(status)} ({option})")


def _why(status: str) -> str:
    """Why gpg did not accept a signature, from its status lines."""
    seen: dict[str, list[str]] = {}
    for line in status.splitlines():
        if line.startswith("[GNUPG:] "):
            word, *args = line.split()[1:] or [""]
            seen.setdefault(word, args)
    if not seen:
        return "is not signed"
    if "BADSIG" in seen:
        return "has a bad signature (the signed object was altered)"
    if "REVKEYSIG" in seen:
        return f"is signed by revoked key {(seen['REVKEYSIG'] or ['?'])[0]}"
    if "EXPKEYSIG" in seen:
        return f"is signed by expired key {(seen['EXPKEYSIG'] or ['?'])[0]}"
    if "EXPSIG" in seen:
        return "has an expired signature"
    if "ERRSIG" in seen or "NO_PUBKEY" in seen:
        err = seen.get("ERRSIG", [])
        key = err[6] if len(err) > 6 and err[6] != "-" else (seen.get("NO_PUBKEY") or err or ["?"])[0]
        return f"is signed by key {key}, which is not among verify.keys"
    return "has a signature that does not verify against verify.keys"


# --- small helpers --------------------------------------------------------------------


def _check_inputs(what: str, url: str, ref: str) -> None:
    """Refuse values git would take as options (an injection, never a real URL or ref)."""
    if url.startswith("-") or not url.strip():
        raise FetchError(f"{what}: bad git URL {url!r}")
    if ref.startswith("-") or not ref.strip() or any(c.isspace() or ord(c) < 32 for c in ref):
        raise FetchError(f"{what}: bad git ref {ref!r}")


def _last_line(text: str) -> str:
    """The line of git's stderr that says what went wrong (fatal:/error:), else its last line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(("fatal:", "error:")):
            return line
    return lines[-1] if lines else "no message"
