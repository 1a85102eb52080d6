"""Debian source packages ("debian") and binary packages ("archive") from the base archive.

Trust runs from the keyring named by the manifest, never from the transport: InRelease
is checked with gpgv and only the text gpgv verified is read; the Release file names
the sha256 of each index (Sources.xz, Packages.xz), and each index names the sha256 of
every file a lock entry records. fetch downloads exactly those sha256s.
"""

from __future__ import annotations

import email.utils
import lzma
import posixpath
import re
import shutil
import tarfile
import tempfile
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from .. import dataschema, lazyimport, safetar
from ..run import run
from . import Context, FetchError, Gone, Keeps, Provenance, Refused, link_blob, verified_blob

T = TypeVar("T")


# A no-op build checks what the store holds and never parses an index or downloads.
deb822 = lazyimport.module("debian.deb822")
http = lazyimport.module("builder.sources.http")


def Version(text: str) -> Any:  # noqa: N802 (stands in for debian_support.Version)
    from debian.debian_support import Version as _Version

    return _Version(text)


_SHA256 = re.compile(r"[0-9a-f]{64}")
_PARAGRAPHS = re.compile(r"\n[ \t]*\n")
_PACKAGE = re.compile(r"^Package:[ \t]*(\S+)", re.M)
_memo_guard = threading.Lock()


# --- the signed archive state ------------------------------------------------------


def archive_state(ctx: Context) -> dict[str, Any]:
    """Which archive a lock was made against: mirror, suite, the signed Release's date and the InRelease
    hash, for the base suite and (under "updates") for each suite laid over it."""
    base = ctx.base

    def make() -> dict[str, Any]:
        states = []
        for mirror, suite in base.archives():
            release, sha = _release(ctx, mirror, suite)
            states.append({"mirror": mirror, "suite": suite, "date": release.get("Date", ""), "inrelease-sha256": sha})
        state: dict[str, Any] = dict(states[0])
        if states[1:]:
            state["updates"] = states[1:]
        return state

    return _memo(ctx, f"debian:state:{base.archives()}:{base.keyring}", make)


def archive_ident(state: dict[str, Any]) -> str:
    """The locked state of every suite in one string: their InRelease sha256s ("" before a lock)."""
    shas = [state.get("inrelease-sha256", "")] + [u.get("inrelease-sha256", "") for u in state.get("updates", [])]
    return ",".join(shas) if any(shas) else ""


def _release(ctx: Context, mirror: str, suite: str) -> tuple[deb822.Release, str]:
    """The verified Release paragraph and the InRelease blob's sha256, once per run."""
    key = f"debian:release:{mirror}:{suite}:{ctx.base.keyring}"
    return _memo(ctx, key, lambda: _load_release(ctx, mirror, suite))


def _load_release(ctx: Context, mirror: str, suite: str) -> tuple[deb822.Release, str]:
    base = ctx.base
    what = f"archive {suite}"
    keyring = Path(base.keyring).absolute()
    if not keyring.is_file():
        raise FetchError(f"{what}: keyring {keyring} does not exist (base.keyring)")
    url = f"{mirror}/dists/{suite}/InRelease"
    verified: list[deb822.Release] = []

    def check(path: Path) -> None:
        # Runs before the file becomes a blob: refused bytes never enter the store.
        release = deb822.Release(_gpgv(path, keyring, ctx, what=what))
        if suite not in (release.get("Suite"), release.get("Codename")):
            raise Refused(
                f"{what}: {ctx.url(url)} is signed but describes suite {release.get('Suite')!r} "
                f"(codename {release.get('Codename')!r}), not {suite!r}; nothing stored"
            )
        verified.append(release)

    sha = http.download(url, ctx, what=f"{what}: InRelease", check=check)
    release = verified[-1]
    valid_until = release.get("Valid-Until")
    if valid_until and _parse_date(valid_until) < datetime.now(UTC):
        raise Refused(f"{what}: the signed Release expired at {valid_until} (a stale or replayed archive)")
    return release, sha


def _gpgv(inrelease: Path, keyring: Path, ctx: Context, *, what: str) -> str:
    """The text of inrelease that gpgv verified against keyring alone; Refused if no good signature."""
    scratch = ctx.store.tmp_dir("gpgv")
    try:
        home = scratch / "home"
        home.mkdir(mode=0o700)
        out = scratch / "Release"
        proc = run(
            ["gpgv", "--homedir", home, "--keyring", keyring, "--status-fd", "1", "--output", out, inrelease],
            what=f"{what}: verify InRelease",
            capture=True,
            check=False,
        )
        status = proc.stdout.decode(errors="replace").splitlines()
        good = [line for line in status if line.startswith("[GNUPG:] GOODSIG ")]
        bad = [line for line in status if line.startswith("[GNUPG:] BADSIG ")]
        # Like apt: one good signature by a key in the keyring suffices (a key may be missing
        # after a rotation), but a bad signature from any key condemns the file.
        if bad or not good:
            reason = "a BAD signature" if bad else "no good signature from a key in the keyring"
            raise Refused(f"{what}: InRelease refused by gpgv --keyring {keyring}: {reason}; nothing stored")
        return out.read_text(encoding="utf-8")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _parse_date(value: str) -> datetime:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        raise FetchError(f"archive: unreadable date {value!r} in the signed Release") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# --- indexes -----------------------------------------------------------------------


Index = dict[str, list[tuple[str, str]]]  # package name -> (mirror, paragraph text) of every suite


def verified_index(ctx: Context, kind: str) -> Index:
    """Paragraphs of every suite's and area's Sources ("source") or Packages ("binary") by package name, once per run."""
    base = ctx.base
    key = f"debian:{kind}:{base.archives()}:{base.keyring}:{base.architecture}:{','.join(base.areas)}"
    return _memo(ctx, key, lambda: _load_index(ctx, kind))


def _load_index(ctx: Context, kind: str) -> Index:
    base = ctx.base
    index: Index = {}
    for mirror, suite in base.archives():
        release, _ = _release(ctx, mirror, suite)
        listed = {item["name"]: item for item in release.get("SHA256", [])}
        by_hash = release.get("Acquire-By-Hash", "").lower() == "yes"
        for area in base.areas:
            name = f"{area}/source/Sources.xz" if kind == "source" else f"{area}/binary-{base.architecture}/Packages.xz"
            item = listed.get(name)
            if item is None:
                raise FetchError(f"archive {suite}: the signed Release lists no {name} (base.areas: {area!r}?)")
            sha = _index_blob(ctx, mirror, suite, name, item["sha256"], by_hash)
            with lzma.open(ctx.store.blob_path(sha)) as f:
                text = f.read().decode("utf-8")
            # Split first and leave deb822 the paragraphs a lock asks for: parsing all of
            # bookworm's ~60k paragraphs with deb822 takes seconds and much memory.
            for para in _PARAGRAPHS.split(text):
                m = _PACKAGE.search(para)
                if m:
                    index.setdefault(m.group(1), []).append((mirror, para))
    return index


def _index_blob(ctx: Context, mirror: str, suite: str, name: str, sha256: str, by_hash: bool) -> str:
    """Download an index the Release names, by hash when the archive offers it (immune to a mirror update mid-run)."""
    dists = f"{mirror}/dists/{suite}"
    what = f"archive {suite}: {name}"
    if by_hash:
        url = f"{dists}/{posixpath.dirname(name)}/by-hash/SHA256/{sha256}"
        try:
            return http.download(url, ctx, sha256=sha256, what=what)
        except Gone:
            pass  # only a mirror without by-hash falls back; a mismatch or a dead network is raised
    return http.download(f"{dists}/{name}", ctx, sha256=sha256, what=what)


def _memo(ctx: Context, key: str, make: Callable[[], T]) -> T:
    """ctx.cache[key], made once even when components are locked from several threads."""
    with _memo_guard:
        guard = ctx.cache.setdefault(key + ":lock", threading.Lock())
    with guard:
        if key not in ctx.cache:
            ctx.cache[key] = make()
        return ctx.cache[key]


# --- lock --------------------------------------------------------------------------

FOLLOWS_ARCHIVE = True  # both kinds are read from the base archive's signed indexes


def lock(name: str, source: Any, ctx: Context) -> dict[str, Any]:
    """Resolve a DebianSource or ArchiveSource to exact files and their sha256s from the signed indexes."""
    if source.kind == "debian":
        return _lock_source(name, source, ctx)
    if source.kind == "archive":
        return _lock_binaries(name, source, ctx)
    raise FetchError(f"lock {name}: the debian module does not handle {source.kind!r} sources")


def _where(ctx: Context) -> str:
    base = ctx.base
    return f"{'+'.join(suite for _, suite in base.archives())} {'/'.join(base.areas)}"


def _lock_source(name: str, source: Any, ctx: Context) -> dict[str, Any]:
    where = _where(ctx)
    index = verified_index(ctx, "source")
    paras = [deb822.Sources(p) for _, p in index.get(source.debian, [])]
    mirrors = {id(p): m for p, (m, _) in zip(paras, index.get(source.debian, []), strict=True)}
    if not paras:
        hint = dataschema.did_you_mean(source.debian, list(index))
        raise FetchError(f"lock {name}: no source package {source.debian!r} in {where}{hint}")
    if source.version:
        chosen = [p for p in paras if p["Version"] == source.version]
        if not chosen:
            have = ", ".join(sorted({p["Version"] for p in paras}, key=Version))
            raise FetchError(f"lock {name}: {source.debian} has no version {source.version!r} in {where} (has {have})")
        para = chosen[0]
    else:
        # Extra-Source-Only paragraphs stay in the archive for Built-Using; they are not current.
        current = [p for p in paras if p.get("Extra-Source-Only", "no") != "yes"] or paras
        para = max(current, key=lambda p: Version(p["Version"]))
    files = {f["name"]: {"sha256": f["sha256"], "size": int(f["size"])} for f in para.get("Checksums-Sha256", [])}
    if not any(f.endswith(".dsc") for f in files):
        raise FetchError(f"lock {name}: {source.debian} {para['Version']} lists no .dsc in Checksums-Sha256")
    return {
        "kind": "debian",
        "package": source.debian,
        "version": str(para["Version"]),
        "mirror": mirrors[id(para)],
        "directory": str(para["Directory"]),
        "files": files,
    }


def _lock_binaries(name: str, source: Any, ctx: Context) -> dict[str, Any]:
    where = f"{_where(ctx)} {ctx.base.architecture}"
    index = verified_index(ctx, "binary")
    packages: dict[str, Any] = {}
    for pkg in source.archive:
        paras = [(m, deb822.Packages(p)) for m, p in index.get(pkg, [])]
        if not paras:
            hint = dataschema.did_you_mean(pkg, list(index))
            raise FetchError(f"lock {name}: no binary package {pkg!r} in {where}{hint}")
        mirror, para = max(paras, key=lambda mp: Version(mp[1]["Version"]))
        # "Source: xen" or, for a rebuilt binary, "Source: xen (4.17.5+72-1)": which source at which version.
        source, _, version = str(para.get("Source", pkg)).partition(" (")
        packages[pkg] = {
            "mirror": mirror,
            "source": source,
            **({"source_version": version.rstrip(")")} if version else {}),
            "version": str(para["Version"]),
            "filename": str(para["Filename"]),
            "sha256": str(para["SHA256"]),
            "size": int(para["Size"]),
        }
    return {"kind": "archive", "packages": packages}


# --- the source of a binary package ------------------------------------------------

_RELATION = re.compile(r"^\s*([a-z0-9][a-z0-9+.-]*)\s*\(\s*=\s*([^)\s]+)\s*\)\s*$")


def binary_source(para: Any) -> tuple[str, str]:
    """(source package, source version) of a verified Packages paragraph.

    "Source: xen" is built from xen at the binary's own version; "Source: linux-signed-amd64
    (6.12.117+1)" names the source version (a binNMU's or a signed template's); no Source
    field means a source of the binary's own name and version.
    """
    name, _, version = str(para.get("Source", para["Package"])).partition(" (")
    return name.strip(), version.rstrip(")").strip() or str(para["Version"])


def built_using(para: Any) -> list[tuple[str, str]]:
    """The (source, version) pairs a paragraph's Built-Using field names: sources whose code the binary
    carries (a signed kernel's unsigned source, a statically linked library's)."""
    out = []
    for item in str(para.get("Built-Using", "")).split(","):
        m = _RELATION.match(item)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def source_entry(index: Index, package: str, version: str) -> dict[str, Any] | None:
    """The files of source package at exactly version, from a verified Sources index (as a `debian` lock
    entry names them: package, version, mirror, directory, files); None when the index lacks it."""
    for mirror, text in index.get(package, []):
        para = deb822.Sources(text)
        if para["Version"] != version:
            continue
        files = {f["name"]: {"sha256": f["sha256"], "size": int(f["size"])} for f in para.get("Checksums-Sha256", [])}
        return {
            "package": package,
            "version": version,
            "mirror": mirror,
            "directory": str(para["Directory"]),
            "files": dict(sorted(files.items())),
        }
    return None


# --- fetch and the store -----------------------------------------------------------


@dataclass(frozen=True)
class ArchiveFile:
    """One file a lock entry names: where the mirror had it, its sha256, and how the snapshot archive finds it."""

    url: str
    sha256: str
    lookup: str  # snapshot.debian.org's listing of the package version holding it (see SNAPSHOT)

    @property
    def name(self) -> str:
        return posixpath.basename(self.url)


# Debian's snapshot archive keeps every file the archive ever published; mirrors drop superseded
# versions within days. Its machine-readable listings name a file's sha1, and /file/SHA1 serves it;
# the lock's sha256 still decides. Mirror-mappable like any URL (`--mirror https://snapshot.debian.org/=...`).
SNAPSHOT = "https://snapshot.debian.org"


def binary_file(pkg: str, info: dict[str, Any], mirror: str) -> ArchiveFile:
    """A locked .deb (a package set's or an archive component's)."""
    lookup = f"mr/binary/{_q(pkg)}/{_q(info['version'])}/binfiles?fileinfo=1"
    return _checked(ArchiveFile(f"{info.get('mirror', mirror)}/{info['filename']}", info["sha256"], lookup))


def _q(text: str) -> str:
    return urllib.parse.quote(str(text), safe="")


def _checked(f: ArchiveFile) -> ArchiveFile:
    # A hash is also a store path: anything but 64 hex digits could point outside blobs/.
    if not isinstance(f.sha256, str) or not _SHA256.fullmatch(f.sha256):
        raise Refused(f"lock entry: {f.url}: sha256 {f.sha256!r} is not 64 lowercase hex digits")
    return f


def source_files(entry: dict[str, Any], mirror: str) -> list[ArchiveFile]:
    """The files of a locked Debian source package (a `debian` component's entry, or one of the lock's
    `sources:`): package, version, directory and files, as the signed Sources index named them."""
    where = entry.get("mirror", mirror)
    lookup = f"mr/package/{_q(entry['package'])}/{_q(entry['version'])}/srcfiles?fileinfo=1"
    return [
        _checked(ArchiveFile(f"{where}/{entry['directory']}/{fn}", f["sha256"], lookup))
        for fn, f in entry.get("files", {}).items()
    ]


def _files(entry: dict[str, Any], mirror: str) -> list[ArchiveFile]:
    """Every file the entry names (mirror: where entries made before updates: came from); refuses malformed hashes."""
    if entry.get("kind") == "debian":
        return source_files(entry, mirror)
    if entry.get("kind") == "archive":
        return [binary_file(pkg, p, mirror) for pkg, p in entry["packages"].items()]
    raise FetchError(f"lock entry: kind {entry.get('kind')!r} is not debian or archive")


def download(f: ArchiveFile, ctx: Context, what: str, say: Callable[[str], None] | None = None) -> str:
    """A locked archive file into the store: from its mirror, else (gone from there) from the snapshot archive.

    Either way the bytes must have the locked sha256; the snapshot's listing only says where to look.
    """
    try:
        return http.download(f.url, ctx, sha256=f.sha256, what=what)
    except Gone as gone:
        mirror_said = str(gone)
    listing = f"{SNAPSHOT}/{f.lookup}"
    unreachable = ctx.cache.get(_SNAPSHOT_DOWN)
    if unreachable:  # asked once this run and it did not answer: do not wait on it for every file
        raise NotArchived(
            f"{mirror_said}; not in the snapshot archive either: {unreachable} (earlier in this run)",
            _said(mirror_said),
            unreachable,
        )
    try:
        found = http.get_json(listing, ctx, what=f"{what}: snapshot archive")
        sha1 = _snapshot_hash(found, f.name)
        if sha1 is None:
            raise Gone(f"{what}: {ctx.url(listing)} does not list {f.name}")
        sha = http.download(f"{SNAPSHOT}/file/{sha1}", ctx, sha256=f.sha256, what=f"{what} (snapshot)")
    except Refused:
        raise
    except FetchError as e:
        if not isinstance(e, Gone):
            ctx.cache.setdefault(_SNAPSHOT_DOWN, _said(str(e)))
        raise NotArchived(
            f"{mirror_said}; not in the snapshot archive either: {e}", _said(mirror_said), _said(str(e))
        ) from None
    (say or ctx.say)(f"{what}: gone from the mirror; fetched from the snapshot archive by its locked version")
    return sha


_SNAPSHOT_DOWN = "debian:snapshot-unreachable"


class NotArchived(FetchError):
    """A locked file gone from the mirror that the snapshot archive does not give either; what each said, in short."""

    def __init__(self, message: str, mirror: str, snapshot: str) -> None:
        super().__init__(message)
        self.mirror = mirror
        self.snapshot = snapshot


def _said(message: str) -> str:
    """The last words of an error line (after its URL): "HTTP 404 Not Found", "host X does not resolve"."""
    return message.rsplit(": ", 1)[-1]


def _snapshot_hash(listing: Any, filename: str) -> str | None:
    """The sha1 under which a snapshot listing (mr/.../binfiles or srcfiles with fileinfo) holds filename."""
    if not isinstance(listing, dict):
        return None
    info = listing.get("fileinfo") or {}
    for item in listing.get("result") or []:
        sha1 = item.get("hash") if isinstance(item, dict) else None
        if not isinstance(sha1, str) or not re.fullmatch(r"[0-9a-f]{40}", sha1):
            continue
        if any(isinstance(x, dict) and x.get("name") == filename for x in info.get(sha1) or []):
            return sha1
    return None


def fetch(name: str, source: Any, entry: dict[str, Any], ctx: Context) -> None:
    """Fill the store with exactly the locked files; a file whose sha256 differs is refused and not stored."""
    for f in _files(entry, ctx.base.mirror):
        download(f, ctx, f"fetch {name}: {f.name}")
    if entry["kind"] == "debian":
        check_dsc(name, entry, ctx)


def check_dsc(name: str, entry: dict[str, Any], ctx: Context) -> None:
    """The .dsc must list the same files as the archive's Sources (defence in depth)."""
    files = entry["files"]
    dscs = [fn for fn in files if fn.endswith(".dsc")]
    if len(dscs) != 1:
        raise FetchError(f"fetch {name}: the lock entry names {len(dscs)} .dsc files (expected 1)")
    with open(ctx.store.blob_path(files[dscs[0]]["sha256"]), "rb") as f:
        dsc = deb822.Dsc(f)
    listed = {f["name"]: (f["sha256"], int(f["size"])) for f in dsc.get("Checksums-Sha256", [])}
    locked = {fn: (f["sha256"], int(f["size"])) for fn, f in files.items() if fn != dscs[0]}
    if listed != locked:
        differ = sorted(set(listed.items()) ^ set(locked.items()))
        raise Refused(f"fetch {name}: {dscs[0]} disagrees with the locked files on {differ[0][0]}")


def fetched(entry: dict[str, Any], ctx: Context) -> bool:
    """Whether every file of the entry is in the store (presence only: blobs were verified on the way in)."""
    return all(ctx.store.has_blob(f.sha256) for f in _files(entry, ctx.base.mirror))


def keeps(entry: dict[str, Any], ctx: Context) -> Keeps:
    return Keeps(blobs=frozenset(f.sha256 for f in _files(entry, ctx.base.mirror)))


# --- unpacking ---------------------------------------------------------------------


def unpack(entry: dict[str, Any], ctx: Context, dest: Path) -> Path:
    """Extract the upstream (orig) tarballs of a fetched debian entry into dest; return the source tree.

    The Debian packaging (debian.tar) is left out: the build starts from upstream.
    Component tarballs (orig-NAME.tar.*) land in NAME/ inside the tree, as dpkg-source does.
    """
    package = entry["package"]
    upstream = Version(entry["version"]).upstream_version
    prefix = f"{package}_{upstream}.orig"
    main = [fn for fn in entry["files"] if re.fullmatch(re.escape(prefix) + r"\.tar\.\w+", fn)]
    parts = {
        m.group(1): fn for fn in entry["files"] if (m := re.fullmatch(re.escape(prefix) + r"-([\w.-]+)\.tar\.\w+", fn))
    }
    if len(main) != 1:
        raise FetchError(f"unpack {package}: expected one {prefix}.tar.* in the lock entry, found {len(main)}")
    dest.mkdir(parents=True, exist_ok=True)
    tree = dest / f"{package}-{upstream}"
    for fn, inside in [(main[0], None), *sorted((fn, part) for part, fn in parts.items())]:
        # Extract beside dest (same filesystem, so the tree moves into place by a rename).
        scratch = Path(tempfile.mkdtemp(prefix=".unpack.", dir=dest))
        try:
            root = _extract(entry, ctx, fn, scratch)
            if inside is None:
                tree = dest / (root.name if root != scratch else tree.name)
                target = tree
            else:
                target = tree / inside
            if target.exists():
                raise FetchError(f"unpack {package}: {fn}: {target} already exists")
            root.rename(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return tree


def tree(entry: dict[str, Any], ctx: Context, dest: Path) -> Path:
    if entry["kind"] != "debian":
        raise FetchError("archive packages are used as they are, never unpacked to build from")
    return unpack(entry, ctx, dest)


def debs(entry: dict[str, Any]) -> dict[str, str] | None:
    if entry["kind"] != "archive":
        return None
    return {posixpath.basename(p["filename"]): p["sha256"] for p in entry["packages"].values()}


def binary_packages(source: Any) -> list[str]:
    return list(source.archive) if source.kind == "archive" else []


def release_files(name: str, entry: dict[str, Any], ctx: Context, dest: Path, epoch: int) -> dict[str, str]:
    """A Debian source's files under debian/ as the archive's pool lays them out (dpkg-source -x takes the .dsc)."""
    if entry["kind"] != "debian":
        return {}  # binary packages: their sources are the lock's `sources:` (debsources.py)
    return pool_files(entry, ctx, dest, f"source release {name}")


def pool_files(entry: dict[str, Any], ctx: Context, dest: Path, what: str) -> dict[str, str]:
    """The stored files of a locked source package at dest/debian/DIRECTORY/FILE: relative path -> sha256.

    Files the store lacks are left out (the caller lists them as missing).
    """
    directory = pool_directory(entry, what)
    out = {}
    for fn, f in sorted(entry.get("files", {}).items()):
        if "/" in fn or fn in (".", ".."):
            raise Refused(f"{what}: {fn!r} is not a file name")
        rel = f"debian/{directory}/{fn}"
        if (dest / rel).is_file():  # another entry's already (an orig tarball two revisions share)
            out[rel] = f["sha256"]
        elif ctx.store.has_blob(f["sha256"]):
            out[rel] = link_blob(ctx.store, f["sha256"], dest / rel, f"{what}: {fn}")
    return out


def pool_directory(entry: dict[str, Any], what: str) -> str:
    """The entry's pool directory (pool/main/x/xen), refused when it could lead out of a release."""
    directory = str(entry["directory"]).strip("/")
    if not directory or any(part in ("", ".", "..") for part in directory.split("/")):
        raise Refused(f"{what}: directory {entry['directory']!r} is not a pool directory")
    return directory


def srcpkg(entry: dict[str, Any]) -> dict[str, str]:
    return {name: info["sha256"] for name, info in entry["files"].items()} if entry["kind"] == "debian" else {}


def summary(entry: dict[str, Any]) -> str:
    if entry["kind"] == "archive":
        return ", ".join(f"{n} {p['version']}" for n, p in sorted(entry["packages"].items()))
    return f"{entry['package']} {entry['version']}"


def provenance(entry: dict[str, Any]) -> Provenance:
    if entry["kind"] == "archive":
        return Provenance(summary(entry), f"Debian's packages {summary(entry)}")
    where = f"{entry['mirror'].rstrip('/')}/{entry['directory']}"
    dsc = next(fn for fn in sorted(entry["files"]) if fn.endswith(".dsc"))
    return Provenance(
        where,
        f"Debian source package {entry['package']} {entry['version']} from {where},"
        f" {dsc} sha256 {entry['files'][dsc]['sha256']}",
    )


def upstream_version(entry: dict[str, Any]) -> str:
    if entry["kind"] != "debian":
        return "0"
    return entry["version"].split(":")[-1].rsplit("-", 1)[0]


def _extract(entry: dict[str, Any], ctx: Context, filename: str, scratch: Path) -> Path:
    """Unpack one tarball blob into scratch; return its single top directory, or scratch if it has none."""
    blob = verified_blob(ctx.store, entry["files"][filename]["sha256"], f"unpack {entry['package']}: {filename}")
    try:
        with tarfile.open(blob, "r:*") as tar:
            safetar.extract(tar, scratch)
    except (tarfile.TarError, OSError) as e:
        raise FetchError(f"unpack {entry['package']}: {filename}: {e}") from None
    top = list(scratch.iterdir())
    if len(top) == 1 and top[0].is_dir() and not top[0].is_symlink():
        return top[0]
    return scratch
