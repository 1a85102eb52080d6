"""Git sources: a ref locked to a commit, kept in a bare mirror in the store, signatures checked.

One bare mirror per canonical repository URL lives at Store.git_path(url); the mirror
map only changes where it is fetched from. Every touch of a mirror holds that mirror's
lock, and a new mirror is built in the store's tmp/ and renamed into place, so a
half-cloned mirror never sits at its final path.

An upstream may be a shallow repository (a mirror made with --depth): fetches accept
the shallow roots it sends (--update-shallow), so the store's mirror is then shallow too.

Locking records, beside the commit, the release tag nearest it and how far past that tag
it lies (`describe`), read from the mirror's tags once; the version of what is built
from the commit comes from that record (`upstream_version`), never from the mirror again.

Locked commits (and tag objects) are pinned under refs/xenspin/keep/ in the mirror:
upstream may force-push or delete the ref they came from, and git's automatic gc
would otherwise prune them, breaking a later offline build.

Every git process starts through run.run (logged, dies with xenspin) from `_git`,
which gives it no system or user configuration, no hooks and none of the caller's
GIT_* variables that change what git reads (GIT_DIR, GIT_OBJECT_DIRECTORY, injected
config, ...): a mirror answers the same for every user. Git checks object ids when
objects arrive, never when it reads them back, so `export` hashes again every object
it is about to write out (`_check_objects`).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from .. import cache, gpg, safetar
from ..errors import GitError, git_failed, git_said
from ..gpg import SignatureError
from ..manifest import GitSource
from ..progress import Reporter
from ..run import run
from ..store import Store, sha256_file, sha256_json
from . import Context, FetchError, Keeps, Missing, Provenance, Refused, debian_upstream

log = logging.getLogger("xenspin.git")

REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
UPSTREAM_HEAD = "refs/xenspin/HEAD"  # where upstream's HEAD is fetched when ref is "HEAD"
KEEP = "refs/xenspin/keep/"
# No credential prompts: a run must fail, not hang waiting for a password nobody types;
# a transfer slower than 1 KB/s for a minute is a dead link, not a slow one. No system
# or user configuration (an insteadOf, a hooksPath, an attributesFile would change what a
# mirror holds or exports), no system gitattributes, no replace refs.
GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_HTTP_LOW_SPEED_LIMIT": "1000",
    "GIT_HTTP_LOW_SPEED_TIME": "60",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_ATTR_NOSYSTEM": "1",
    "GIT_NO_REPLACE_OBJECTS": "1",
}
# The caller's GIT_* variables that only say how to reach a server (ssh, TLS, proxy) or
# trace git are kept; every other GIT_* variable is removed for git's run.
GIT_ENV_KEPT = ("GIT_SSH", "GIT_SSL_", "GIT_PROXY_", "GIT_HTTP_", "GIT_CURL_", "GIT_TRACE")
# No hooks run, whatever a mirror's hooks/ holds; gc in the foreground, under the mirror's lock.
GIT_CONFIG = ("-c", f"core.hooksPath={os.devnull}", "-c", "gc.autoDetach=false")
# $GIT_DIR/info/attributes beats in-tree .gitattributes: export the exact tree of the
# commit, not one rewritten by export-ignore/export-subst, eol conversion or filters.
EXACT_TREE = "* -text -eol -ident -filter -working-tree-encoding -export-subst -export-ignore\n"
# A shallow upstream's roots are taken (and the mirror's shallow list updated), not refused.
FETCH_OPTIONS = ("--update-shallow", "--no-write-fetch-head", "--quiet")
HEX = re.compile(r"[0-9a-f]{4,64}")
FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# `git describe --long` output: TAG-DISTANCE-gCOMMIT (the tag itself may hold dashes).
DESCRIBED = re.compile(r"(?P<tag>.+)-(?P<distance>[0-9]+)-g(?P<commit>[0-9a-f]+)")


# --- the protocol ---------------------------------------------------------------------


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
        _keep(path, entry, what)
        if described := _describe(path, entry, what):
            entry["describe"] = described
        _offer(ctx, path, entry, what)
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
        upstream = False
        if not _holds(path, entry):
            if ctx.offline:
                raise Missing(f"{what}: offline, and the store lacks commit {commit} of {url}")
            if not _from_cache(ctx, path, entry, what):
                # Branches and tags only: the locked commit is asked for by id if they lack it,
                # and a ref locked from refs/pull/... may be long gone.
                _update(ctx, url, path, REFSPECS, what)
                upstream = True
        _check_tag(path, entry, what)
        if not _holds(path, entry):
            _fetch_commit(ctx, url, path, commit)
            upstream = True
        if not _holds(path, entry):
            raise FetchError(f"{what}: {ctx.url(url)} no longer has commit {commit} (locked from {entry['ref']!r})")
        _verify(source, entry, path, what)
        _keep(path, entry, what)
        if upstream:
            _offer(ctx, path, entry, what)


def share(name: str, entry: dict[str, Any], ctx: Context) -> None:
    """The locked commit from the store's mirror to the remote cache as a bundle, unless it is there
    (a build on workers: they take it from the cache, not upstream)."""
    url = entry["url"]
    path = ctx.store.git_path(url)
    with _mirror_lock(ctx, url):
        if _holds(path, entry):
            _offer(ctx, path, entry, f"share {name}")


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
            return _rev(path, f"refs/tags/{tag}^{{commit}}")
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
    """Write the tree of the locked commit into dest (created if missing); file times are the commit's.

    Every object written out is hashed again first: one changed in the mirror since it
    was fetched is refused, and the mirror removed (the next fetch gets it again).
    """
    url, commit = entry["url"], entry["commit"]
    what = f"export {url}"
    path = ctx.store.git_path(url)
    with _mirror_lock(ctx, url):
        if not _holds(path, entry):
            raise Missing(f"{what}: the store lacks commit {commit} (fetch it first)")
        with _discard_refused(path):
            _check_objects(ctx.store, path, commit, what)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        tar = ctx.store.tmp_path("export")
        try:
            with open(tar, "wb") as f:
                proc = _git(path, "archive", "--format=tar", commit, what=what, stdout=f, check=False)
            if proc.returncode != 0:
                raise FetchError(
                    f"{what}: git archive {commit} failed: {git_said(proc.stderr.decode(errors='replace'))}"
                )
            with tarfile.open(tar) as t:
                safetar.extract(t, dest, exact_modes=True)
        finally:
            tar.unlink(missing_ok=True)
    return dest


def tree(entry: dict[str, Any], ctx: Context, dest: Path) -> Path:
    return export(entry, ctx, dest)


# --- source releases ------------------------------------------------------------------

BUNDLE_HEADER = b"# v2 git bundle\n"


def release_files(name: str, entry: dict[str, Any], ctx: Context, dest: Path, epoch: int) -> dict[str, str]:
    """components/NAME.bundle: the locked commit with its history (and tag object), which `git clone` and
    `xenspin fetch --from` take; its objects hashed again first, as an export does.

    A mirror made from a shallow upstream lacks the commit's early history, and git cannot
    make a bundle others can fetch without it: the commit's tree goes instead, as
    components/NAME-COMMIT12.tar.gz.
    """
    url, commit = entry["url"], entry["commit"]
    what = f"source release {name}"
    path = ctx.store.git_path(url)
    out = dest / "components"
    out.mkdir(parents=True, exist_ok=True)
    with _mirror_lock(ctx, url):
        if not _holds(path, entry):
            raise Missing(f"{what}: the store lacks commit {commit} of {url} (fetch it first)")
        with _discard_refused(path):
            _check_objects(ctx.store, path, commit, what)
        if _shallow_below(path, commit, what):
            rel = f"components/{name}-{commit[:12]}.tar.gz"
            _tree_tar(path, commit, f"{name}-{commit[:12]}", dest / rel, what)
        else:
            rel = f"components/{name}.bundle"
            _bundle(path, entry, dest / rel, what)
    return {rel: sha256_file(dest / rel)}


def _bundle(path: Path, entry: dict[str, Any], dest: Path, what: str) -> None:
    """A v2 bundle of the locked commit: HEAD, the locked tag and branch at it; a pack written the same way
    every time (one thread, no bytes reused from the mirror's own packs), so one lock gives one bundle."""
    commit, tag_object = entry["commit"], entry.get("tag-object")
    refs = [("HEAD", commit)]
    if entry.get("tag"):
        refs.append((f"refs/tags/{entry['tag']}", tag_object or commit))
    ref = entry.get("ref", "")
    if ref.startswith("refs/heads/") or not (
        ref.startswith("refs/") or ref == "HEAD" or entry.get("tag") or HEX.fullmatch(ref.lower())
    ):
        refs.append((ref if ref.startswith("refs/heads/") else f"refs/heads/{ref}", commit))
    tips = [commit, *([tag_object] if tag_object else [])]
    objects = _git(path, "rev-list", "--objects", *tips, what=what).stdout
    with open(dest, "wb") as f:
        f.write(BUNDLE_HEADER + "".join(f"{sha} {name}\n" for name, sha in refs).encode() + b"\n")
        f.flush()
        _git(
            path,
            "pack-objects",
            "--stdout",
            "--quiet",
            "--threads=1",
            "--no-reuse-object",
            "--delta-base-offset",
            what=what,
            input=objects,
            stdout=f,
        )


def _shallow_below(path: Path, commit: str, what: str) -> bool:
    """Whether the commit's history reaches a root the mirror holds shallow (its parents not fetched)."""
    shallow = path / "shallow"
    if not shallow.is_file():
        return False
    roots = set(shallow.read_text().split())
    return any(c in roots for c in _out(path, "rev-list", commit, what=what).split())


def _tree_tar(path: Path, commit: str, prefix: str, dest: Path, what: str) -> None:
    """The commit's tree as git archive writes it (times: the commit's), gzipped without a name or time."""
    raw = dest.with_name(dest.name + ".tar")
    try:
        with open(raw, "wb") as f:
            _git(path, "archive", "--format=tar", f"--prefix={prefix}/", commit, what=what, stdout=f)
        with (
            open(raw, "rb") as src,
            open(dest, "wb") as out,
            gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz,
        ):
            shutil.copyfileobj(src, gz, 1 << 20)
    finally:
        raw.unlink(missing_ok=True)


def import_files(name: str, entry: dict[str, Any], ctx: Context, release: Path) -> None:
    """The locked commit (and tag) from a source release's components/NAME.bundle into the store's mirror.

    Only objects and the locked tag come in (a tag the mirror holds elsewhere is not moved:
    git refuses, and the fetch that follows names it); git checks every object's id as it
    takes it, and the fetch then checks tags and signatures as for any upstream.
    """
    bundle = release / "components" / f"{name}.bundle"
    if not bundle.is_file():
        return  # a tree, not a history: the fetch says what the store lacks
    url = entry["url"]
    path = ctx.store.git_path(url)
    with _mirror_lock(ctx, url), _discard_refused(path):
        if _holds(path, entry):
            return
        _take_bundle(ctx, entry, bundle, f"fetch {name} from {bundle}")
        _keep(path, entry, what=f"fetch {name} from {bundle}")


def _take_bundle(ctx: Context, entry: dict[str, Any], bundle: Path, what: str) -> None:
    """The locked commit (and its tag) from a bundle file into the store's mirror, made if missing.

    The caller holds the mirror's lock. Only objects and the locked tag come in (a tag the
    mirror holds elsewhere is not moved: git refuses); git checks every object's id as it
    takes it. A source release's bundle and the remote cache's come in this way.
    """
    url = entry["url"]
    path = ctx.store.git_path(url)
    specs = [entry["commit"], *([f"refs/tags/{entry['tag']}:refs/tags/{entry['tag']}"] if entry.get("tag") else [])]

    def fill(repo: Path) -> None:
        proc = _git(repo, "fetch", *FETCH_OPTIONS, str(bundle.absolute()), *specs, what=what, check=False)
        if proc.returncode != 0:
            raise FetchError(f"{what}: git fetch failed: {git_said(proc.stderr.decode(errors='replace'))}")

    if path.is_dir():
        fill(path)
    else:

        def make(tmp: Path) -> None:
            tmp.chmod(0o755)
            _git(None, "init", "--quiet", "--bare", "--template=", str(tmp), what=what)
            _configure(tmp, url, what)
            fill(tmp)

        ctx.store.create(path, make, hint="git")


def summary(entry: dict[str, Any]) -> str:
    return f"{entry['commit'][:12]} ({entry.get('ref', '')})"


def provenance(entry: dict[str, Any]) -> Provenance:
    """git URL at REF, the full commit, and where it lies from the nearest release tag."""
    ref = entry.get("ref", "")
    pinned = f"git {entry['url']}{f' at {ref}' if ref else ''}, commit {entry['commit']}"
    described = entry.get("describe") or {}
    tag, distance = described.get("tag"), described.get("distance", 0)
    if tag and distance:
        pinned += f", {distance} commit{'s' if distance > 1 else ''} after tag {tag}"
    elif tag and tag != ref:
        pinned += f", tagged {tag}"
    return Provenance(entry["url"], pinned)


def upstream_version(entry: dict[str, Any]) -> str:
    """The Debian upstream version of the locked commit, from the entry's `describe` (see describe_version).

    An entry locked before `describe` was recorded, or with no release tag behind its
    commit, gives 0~git<commit12>.
    """
    described = entry.get("describe") or {}
    return describe_version(described.get("tag"), described.get("distance", 0), entry["commit"])


def describe_version(tag: str | None, distance: int, commit: str) -> str:
    """A Debian upstream version for commit, distance commits past release tag tag.

    - at the tag: the tag as a version, `RELEASE-4.20.4` -> `4.20.4`, `4.21.0-rc2` ->
      `4.21.0~rc2` (the rules are sources.debian_upstream's);
    - N commits past it: `<version>+git<N>.<commit12>`, `4.20.4+git3.9611e26eff42`:
      after the tag's version, before the next release (4.20.4 < 4.20.4+git3.… <
      4.20.5), later snapshots of one release after earlier ones;
    - no tag, or one with no digit: `0~git<commit12>`, before any release.
    """
    version = debian_upstream(tag) if tag else None
    if version is None:
        return "0~git" + commit[:12]
    return version if distance == 0 else f"{version}+git{distance}.{commit[:12]}"


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


def _git(
    path: Path | None,
    *args: str,
    what: str,
    check: bool = True,
    input: bytes | None = None,
    stdout: IO[bytes] | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run git on the mirror at path (or none), through run.run; its output captured, or to stdout.

    With check, a failure is one GitError line naming what it was for and what git said.
    """
    cmd = ["git", *GIT_CONFIG, *([f"--git-dir={path}"] if path is not None else []), *args]
    proc = run(cmd, what=what, env=_env(env), input=input, capture=stdout is None, stdout=stdout, check=False)
    if check and proc.returncode != 0:
        raise GitError(git_failed(what, args, proc.returncode, proc.stderr.decode(errors="replace")))
    return proc


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """git's environment: the caller's GIT_* variables removed (but transport ones), GIT_ENV set."""
    dropped: dict[str, str | None] = {
        k: None for k in os.environ if k.startswith("GIT_") and not k.startswith(GIT_ENV_KEPT)
    }
    return {**dropped, **GIT_ENV, **(extra or {})}


def _out(path: Path, *args: str, what: str) -> str:
    """git's standard output (stripped); GitError when it fails."""
    return _git(path, *args, what=what).stdout.decode(errors="replace").strip()


def _update(ctx: Context, url: str, path: Path, refspecs: tuple[str, ...], what: str) -> None:
    """Fetch refspecs from the (mirror-mapped) url; a new mirror is built aside and renamed in."""
    if path.is_dir():
        _fetch(ctx, url, path, refspecs, what)
        return

    def make(tmp: Path) -> None:
        tmp.chmod(0o755)
        # No templates: a mirror holds no hooks, samples or not.
        _git(None, "init", "--quiet", "--bare", "--template=", str(tmp), what=what)
        _configure(tmp, url, what)
        _fetch(ctx, url, tmp, refspecs, what)

    ctx.store.create(path, make, hint="git")


def _configure(path: Path, url: str, what: str) -> None:
    """Record what the mirror mirrors (for people looking at the store) and how it is exported."""
    _git(path, "config", "remote.origin.url", url, what=what)
    _git(path, "config", "--replace-all", "remote.origin.fetch", REFSPECS[0], what=what)
    _git(path, "config", "--add", "remote.origin.fetch", REFSPECS[1], what=what)
    _git(path, "config", "remote.origin.prune", "true", what=what)
    # gc in the foreground, while we still hold the mirror's lock.
    _git(path, "config", "gc.autoDetach", "false", what=what)
    info = path / "info"
    info.mkdir(exist_ok=True)
    (info / "attributes").write_text(EXACT_TREE)


def _fetch(ctx: Context, url: str, path: Path, refspecs: tuple[str, ...], what: str) -> None:
    real = ctx.url(url)
    _check_inputs(what, real, "HEAD")
    log.info("%s: fetching %s", what, real)
    with (ctx.progress or Reporter(quiet=True)).transfer(f"{what}: git {real}"):
        proc = _git(path, "fetch", *FETCH_OPTIONS, "--prune", real, *refspecs, what=what, check=False)
    if proc.returncode != 0:
        raise FetchError(f"{what}: git fetch {real} failed: {git_said(proc.stderr.decode(errors='replace'))}")


def _fetch_commit(ctx: Context, url: str, path: Path, sha: str) -> None:
    """Ask for one commit by id: it may be reachable from no branch or tag any more."""
    real = ctx.url(url)
    proc = _git(path, "fetch", *FETCH_OPTIONS, real, sha, what=f"fetch {sha}", check=False)
    if proc.returncode != 0:
        log.info("fetching %s from %s by id failed: %s", sha, real, git_said(proc.stderr.decode(errors="replace")))


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
    return all(_git(path, "cat-file", "-e", w, what="look up " + w, check=False).returncode == 0 for w in wanted)


def _keep(path: Path, entry: dict[str, Any], what: str) -> None:
    for sha in filter(None, (entry["commit"], entry.get("tag-object"))):
        _git(path, "update-ref", KEEP + sha, sha, what=what)


# --- through the remote cache: the locked commit as a bundle ----------------------------


def _bundle_key(entry: dict[str, Any]) -> str:
    return sha256_json({k: entry.get(k) for k in ("url", "commit", "tag", "tag-object")})


def _bundle_refs(entry: dict[str, Any]) -> list[str]:
    """What the cache's bundle of a locked commit names: the keep refs, and the tag (fetch checks it)."""
    refs = [KEEP + sha for sha in filter(None, (entry["commit"], entry.get("tag-object")))]
    return refs + ([f"refs/tags/{entry['tag']}"] if entry.get("tag") else [])


def _from_cache(ctx: Context, path: Path, entry: dict[str, Any], what: str) -> bool:
    """The locked commit from the remote cache's bundle into the mirror; whether the mirror now holds it.

    Taken as a source release's bundle is (`_take_bundle`): git checks every object's id,
    and fetch then checks the tag and the signatures as for an upstream fetch. A bundle
    that does not do is reported, and upstream asked instead.
    """
    if ctx.remote is None:
        return False
    scratch = ctx.store.tmp_dir("gitbundle")
    try:
        if ctx.remote.fill(cache.GIT_KIND, _bundle_key(entry), scratch, ctx.store) is None:
            return False
        _take_bundle(ctx, entry, scratch / "bundle", f"{what}: the remote cache's bundle")
        _check_tag(path, entry, what)
        return _holds(path, entry)
    except (GitError, FetchError, OSError) as e:
        log.info("%s: the cache's bundle did not do: %s", what, e)
        ctx.say(f"warning: {what}: the remote cache's bundle of {entry['commit'][:12]} did not do; fetching upstream")
        return False
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _offer(ctx: Context, path: Path, entry: dict[str, Any], what: str) -> None:
    """The locked commit (its whole history, the tag) as a bundle to the remote cache, unless it is there.

    `git bundle create` reuses the mirror's deltas: seconds for Xen's history, where the
    source release's reproducible bundle (`_bundle`) packs it again on one thread. A
    mirror from a shallow upstream cannot bundle the history: the cache goes without.
    """
    remote = ctx.remote
    if remote is None or not remote.writable or _shallow_below(path, entry["commit"], what):
        return
    if remote.has_record(cache.GIT_KIND, _bundle_key(entry)):
        return
    scratch = ctx.store.tmp_dir("gitbundle")
    try:
        refs = _bundle_refs(entry)
        proc = _git(path, "bundle", "create", "--quiet", str(scratch / "bundle"), *refs, what=what, check=False)
        if proc.returncode != 0:
            log.info("%s: no bundle for the cache: %s", what, git_said(proc.stderr.decode(errors="replace")))
            return
        remote.put_tree(cache.GIT_KIND, _bundle_key(entry), scratch, {"url": entry["url"], "commit": entry["commit"]})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- checking what is exported --------------------------------------------------------

TREE, GITLINK = "40000", "160000"  # tree entry modes; every other mode names a blob


def _check_objects(store: Store, path: Path, commit: str, what: str) -> None:
    """Hash again the commit and every tree and blob under it; Refused naming the first that does not match.

    Git verifies ids when objects arrive (index-pack), not when it reads them back: an
    object changed in the mirror afterwards would be exported as it is. The listing
    comes from git (ls-tree), but only objects whose bytes match their ids are walked,
    from the locked commit down, so a changed tree cannot hide a changed blob.
    """
    new = hashlib.sha1 if len(commit) == 40 else hashlib.sha256
    listing = _git(path, "ls-tree", "-r", "-t", "-z", "--full-tree", commit, what=what, check=False)
    if listing.returncode != 0:
        raise _corrupt(what, path, commit, git_said(listing.stderr.decode(errors="replace")))
    ids = {commit, commit + "^{tree}"}  # cat-file reads revisions: the root tree, by its id
    for record in listing.stdout.split(b"\0"):
        if record:
            _mode, kind, oid = record.split(b"\t", 1)[0].split(b" ")
            if kind != b"commit":  # a submodule's commit is not in this repository
                ids.add(oid.decode())
    bodies: dict[str, tuple[str, bytes]] = {}  # commits and trees: their bytes, to walk
    hashed: dict[str, str] = {}  # every object whose bytes match its id -> its type
    scratch = store.tmp_path("check")
    try:
        with open(scratch, "w+b") as out:
            proc = _git(
                path,
                "cat-file",
                "--batch",
                what=what,
                input="".join(i + "\n" for i in sorted(ids)).encode(),
                stdout=out,
                check=False,
            )
            if proc.returncode != 0:
                raise _corrupt(what, path, commit, git_said(proc.stderr.decode(errors="replace")))
            out.seek(0)
            while header := out.readline():
                oid, kind, size = (header.decode(errors="replace").split() + ["", ""])[:3]
                if kind == "missing" or not size.isdigit():
                    raise _corrupt(what, path, oid, "it is missing")
                h = new(f"{kind} {size}\0".encode())
                keep = kind in ("commit", "tree")
                body = bytearray()
                left = int(size)
                while left:
                    chunk = out.read(min(left, 1 << 20))
                    if not chunk:
                        raise _corrupt(what, path, oid, "git cut its bytes short")
                    h.update(chunk)
                    if keep:
                        body += chunk
                    left -= len(chunk)
                out.read(1)  # the newline after each object
                if h.hexdigest() != oid:
                    raise _corrupt(what, path, oid, f"its bytes hash to {h.hexdigest()}")
                hashed[oid] = kind
                if keep:
                    bodies[oid] = (kind, bytes(body))
    finally:
        scratch.unlink(missing_ok=True)
    _walk_checked(commit, bodies, hashed, len(commit) // 2, what, path)


def _walk_checked(
    commit: str, bodies: dict[str, tuple[str, bytes]], hashed: dict[str, str], size: int, what: str, path: Path
) -> None:
    """From the commit down, every object reached must be one whose bytes were hashed, of the type its parent says."""
    kind, body = bodies.get(commit, ("", b""))
    first = body.split(b"\n", 1)[0].decode(errors="replace")
    if kind != "commit" or not first.startswith("tree "):
        raise _corrupt(what, path, commit, "it is not a commit")
    todo = [first.removeprefix("tree ")]
    while todo:
        tree = todo.pop()
        if hashed.get(tree) != "tree":
            raise _corrupt(what, path, tree, "it is not among the trees git listed")
        data = bodies[tree][1]
        at = 0
        while at < len(data):
            space = data.index(b" ", at)
            nul = data.index(b"\0", space)
            mode = data[at:space].decode()
            oid = data[nul + 1 : nul + 1 + size].hex()
            at = nul + 1 + size
            if mode == TREE:
                todo.append(oid)
            elif mode != GITLINK and hashed.get(oid) != "blob":
                raise _corrupt(what, path, oid, "it is not among the blobs git listed")


def _corrupt(what: str, path: Path, oid: str, why: str) -> Refused:
    return Refused(
        f"{what}: object {oid} in the store's mirror {path.name} does not match its id ({why}): "
        "changed behind xenspin's back; removed the mirror, `xenspin fetch` gets it again"
    )


# --- resolving -----------------------------------------------------------------------


def _describe(path: Path, entry: dict[str, Any], what: str) -> dict[str, Any] | None:
    """The release tag the locked commit is nearest and the commits past it: {"tag": ..., "distance": N}.

    A locked tag whose name holds a version is that tag, at distance 0. Otherwise `git
    describe` picks among the mirror's tags (annotated or lightweight) that hold a digit;
    a commit with none behind it (in a shallow mirror: none in the history it holds)
    has no record, and the lock goes on without one.
    """
    commit, tag = entry["commit"], entry.get("tag")
    if tag and debian_upstream(tag):
        return {"tag": tag, "distance": 0}
    args = ("describe", "--tags", "--long", "--abbrev=40", "--match=*[0-9]*", commit)
    proc = _git(path, *args, what=what, check=False)
    found = DESCRIBED.fullmatch(proc.stdout.decode(errors="replace").strip())
    if proc.returncode != 0 or found is None or not commit.startswith(found["commit"]):
        log.info("%s: no release tag behind %s: %s", what, commit, git_said(proc.stderr.decode(errors="replace")))
        return None
    return {"tag": found["tag"], "distance": int(found["distance"])}


def _rev(path: Path, spec: str) -> str | None:
    proc = _git(path, "rev-parse", "--verify", "--quiet", spec, what="resolve " + spec, check=False)
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def _resolve(path: Path, ref: str, what: str) -> dict[str, str] | None:
    """The commit (and tag) ref names in the mirror: a tag, then a branch, then a commit id, as git does."""
    if ref == "HEAD":
        commit = _rev(path, UPSTREAM_HEAD + "^{commit}")
        return {"commit": commit} if commit else None
    if ref.startswith("refs/tags/"):
        tag = ref.removeprefix("refs/tags/")
    elif not ref.startswith("refs/") and _rev(path, f"refs/tags/{ref}"):
        tag = ref
    else:
        tag = None
    if tag is not None:
        return _resolve_tag(path, tag, what)
    if ref.startswith("refs/"):
        commit = _rev(path, ref + "^{commit}")
    elif _rev(path, f"refs/heads/{ref}"):
        commit = _rev(path, f"refs/heads/{ref}^{{commit}}")
    elif HEX.fullmatch(ref.lower()):
        commit = _rev(path, ref.lower() + "^{commit}")
        if commit and not commit.startswith(ref.lower()):
            commit = None
    else:
        commit = None
    return {"commit": commit} if commit else None


def _resolve_tag(path: Path, tag: str, what: str) -> dict[str, str] | None:
    target = _rev(path, f"refs/tags/{tag}")
    if target is None:
        return None
    commit = _rev(path, target + "^{commit}")
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
    target = _rev(path, f"refs/tags/{tag}")
    if target is None:
        raise Refused(f"{what}: tag {tag} is gone upstream: locked at {locked}")
    now = _rev(path, target + "^{commit}")
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
    body = _out(path, "cat-file", "tag", obj, what=what)
    named = next((line[4:] for line in body.splitlines() if line.startswith("tag ")), None)
    if named != tag:
        raise SignatureError(f"{what}: tag {tag} is a tag object made as {named!r}, not {tag!r}")


def _check_signature(path: Path, cmd: str, obj: str, home: Path, subject: str, option: str) -> None:
    proc = _git(
        path,
        "-c",
        "gpg.program=gpg",
        "-c",
        "gpg.minTrustLevel=undefined",
        cmd,
        "--raw",
        obj,
        what=subject,
        env={"GNUPGHOME": str(home)},
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
