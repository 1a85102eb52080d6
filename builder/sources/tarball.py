"""The tarball and prebuilt kinds: one file over HTTP, pinned by sha256, optionally signed.

A tarball is a source archive unpacked at build time; a prebuilt is a file used as it
is (a Windows driver bundle, a firmware image). Both lock to the sha256 of the bytes;
with verify.signature the detached signature is locked too and checked against the
recipe's keys on every fetch, so a bad file never becomes a blob.
"""

from __future__ import annotations

import posixpath
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from .. import gpg, safetar
from ..errors import XenspinError
from ..manifest import PrebuiltSource, TarballSource
from . import PRERELEASE_WORDS, Context, FetchError, Keeps, Provenance, debian_upstream, http, link_blob, verified_blob

Source = TarballSource | PrebuiltSource

# File name endings that are no part of a version: archive, compression, package, .orig.
SUFFIXES = re.compile(r"(\.(tar|t?gz|t?xz|t?bz2?|t?zst|lz|lzma|Z|zip|orig|iso|img|bin|exe|msi|deb))+$")
# The version in a file name: after a - or _ (or at the start), an optional v, a digit; then
# more dash- or underscore-joined parts that start with a digit or a pre-release mark.
NAME_VERSION = re.compile(rf"(?:^|[-_])v?(\d[0-9A-Za-z.+~]*(?:[-_](?:\d|{PRERELEASE_WORDS})[0-9A-Za-z.+~]*)*)", re.I)
COMMIT_ID = re.compile(r"[0-9a-f]*[a-f][0-9a-f]*")  # a snapshot by commit id (GitHub's archive/<sha>.tar.gz)


def lock(name: str, source: Source, ctx: Context) -> dict[str, Any]:
    """Download the file (and its signature) and pin them; a recipe sha256 must match."""
    what = f"lock {name}"
    url = _url(source)
    if source.kind == "prebuilt":
        _basename(url, what)  # a URL with no file name would fail only at build time
    sig_url, keys = _signature(source, url, what)
    sha256, signature = _download(url, ctx, what=what, sha256=source.sha256, sig_url=sig_url, sig_sha256="", keys=keys)
    entry: dict[str, Any] = {
        "kind": source.kind,
        "url": url,
        "sha256": sha256,
        "size": ctx.store.blob_path(sha256).stat().st_size,
    }
    if signature:
        entry["signature"] = signature
    return entry


def fetch(name: str, source: Source, entry: dict[str, Any], ctx: Context) -> None:
    """Fill the store with exactly the locked bytes; the signature is checked again."""
    what = f"fetch {name}"
    sig_url, keys = _signature(source, entry["url"], what)
    locked_sig = entry.get("signature")
    if sig_url and not locked_sig:
        # A stale lock must not let an unsigned file through a recipe that now asks for a signature.
        raise FetchError(f"{what}: the recipe requires a signature but the lock entry has none; lock it again")
    _download(
        entry["url"],
        ctx,
        what=what,
        sha256=entry["sha256"],
        sig_url=locked_sig["url"] if locked_sig else "",
        sig_sha256=locked_sig["sha256"] if locked_sig else "",
        keys=keys,
    )


def fetched(entry: dict[str, Any], ctx: Context) -> bool:
    return all(ctx.store.has_blob(sha) for sha in keeps(entry, ctx).blobs)


def keeps(entry: dict[str, Any], ctx: Context) -> Keeps:
    blobs = {entry["sha256"]}
    if sig := entry.get("signature"):
        blobs.add(sig["sha256"])
    return Keeps(blobs=frozenset(blobs))


def unpack(entry: dict[str, Any], ctx: Context, dest: Path) -> Path:
    """Put the locked file under dest, ready to build from.

    A tarball is extracted (tarfile's "data" filter: nothing outside dest, no devices)
    and the result is dest, or the archive's single top-level directory if it has
    exactly one. A prebuilt is copied (never linked: a build must not reach the
    store) to dest/<file name of the URL>, and that file's path is returned.
    """
    url = entry["url"]
    what = f"unpack {url}"
    blob = verified_blob(ctx.store, entry["sha256"], what)
    dest.mkdir(parents=True, exist_ok=True)
    if entry["kind"] == "prebuilt":
        target = dest / _basename(url, what)
        shutil.copyfile(blob, target)
        return target
    try:
        with tarfile.open(blob, "r:*") as tar:
            safetar.extract(tar, dest)
            names = [m.name for m in tar.getmembers()]  # cached by extraction: no second pass
    except (tarfile.TarError, OSError) as e:
        raise XenspinError(f"{what}: {' '.join(str(e).split())}") from None
    tops = {_top(n) for n in names} - {""}
    if len(tops) == 1:
        only = dest / tops.pop()
        if only.is_dir() and not only.is_symlink():
            return only
    return dest


def tree(entry: dict[str, Any], ctx: Context, dest: Path) -> Path:
    """The unpacked tarball (its top directory), or the directory holding the prebuilt file."""
    got = unpack(entry, ctx, dest)
    return got if got.is_dir() else got.parent


def release_files(name: str, entry: dict[str, Any], ctx: Context, dest: Path, epoch: int) -> dict[str, str]:
    """The locked file (and its detached signature) under components/NAME/, named as upstream names them."""
    what = f"source release {name}"
    file = _basename(entry["url"], what)
    out = {f"components/{name}/{file}": entry["sha256"]}
    if sig := entry.get("signature"):
        sig_file = _basename(sig["url"], what)
        out[f"components/{name}/{sig_file if sig_file != file else file + '.sig'}"] = sig["sha256"]
    for rel, sha in out.items():
        link_blob(ctx.store, sha, dest / rel, f"{what}: {rel}")
    return out


def summary(entry: dict[str, Any]) -> str:
    return f"sha256 {entry['sha256'][:12]}, {entry.get('size', 0)} bytes"


def provenance(entry: dict[str, Any]) -> Provenance:
    what = "tarball" if entry["kind"] == "tarball" else "file"
    return Provenance(entry["url"], f"{what} {entry['url']}, sha256 {entry['sha256']}")


def upstream_version(entry: dict[str, Any]) -> str:
    """The version in the URL's file name, as a Debian upstream version; "0" when it has none.

    xen-4.20.4.tar.gz -> 4.20.4, foo_1.2.orig.tar.xz -> 1.2, v1.2.0.tar.gz -> 1.2.0,
    linux-6.1-rc3.tar.xz -> 6.1~rc3; a name that is a commit id gives "0".
    """
    return name_version(posixpath.basename(unquote(urlsplit(entry["url"]).path))) or "0"


def name_version(name: str) -> str | None:
    """The Debian upstream version a file name carries (sources.debian_upstream's rules), else None."""
    found = NAME_VERSION.search(SUFFIXES.sub("", name))
    if found is None or (len(found[1]) >= 7 and COMMIT_ID.fullmatch(found[1])):
        return None
    return debian_upstream(found[1])


# --- helpers -----------------------------------------------------------------------


def _url(source: Source) -> str:
    return source.prebuilt if isinstance(source, PrebuiltSource) else source.url


def _signature(source: Source, url: str, what: str) -> tuple[str, list[Path]]:
    """The detached signature's URL (relative ones against url) and the keys, or ("", [])."""
    verify = source.verify
    if verify is None:
        return "", []
    if verify.tag or verify.commit:
        raise FetchError(f"{what}: verify.tag and verify.commit apply to git sources; use verify.signature")
    if not verify.signature:
        raise FetchError(f"{what}: verify needs verify.signature (the URL of a detached signature)")
    if not verify.keys:
        raise FetchError(f"{what}: verify.signature needs verify.keys to check it against")
    sig_url = urljoin(url, verify.signature)
    if sig_url == url:
        raise FetchError(f"{what}: verify.signature names the file itself")
    return sig_url, [Path(k) for k in verify.keys]


def _download(
    url: str,
    ctx: Context,
    *,
    what: str,
    sha256: str,
    sig_url: str,
    sig_sha256: str,
    keys: list[Path],
) -> tuple[str, dict[str, str] | None]:
    """Download url (and its signature); return its sha256 and the signature's lock data.

    With a signature, the file's download runs inside the signature's pre-store check,
    and the gpg check inside the file's: if it fails, neither the file nor the
    signature is stored (one that was already in the store stays, untouched).
    """
    if not sig_url:
        return http.download(url, ctx, sha256=sha256, what=what), None
    got: dict[str, str] = {}

    def with_signature(sig: Path) -> None:
        def signed(blob: Path) -> None:
            got["signer"] = gpg.verify_detached(blob, sig, keys, what=what)  # Refused: never a left-out reason

        got["sha256"] = http.download(url, ctx, sha256=sha256, what=what, check=signed)

    sig_digest = http.download(sig_url, ctx, sha256=sig_sha256, what=f"{what}: signature", check=with_signature)
    return got["sha256"], {"url": sig_url, "sha256": sig_digest, "signer": got["signer"]}


def _basename(url: str, what: str) -> str:
    """The file name a URL ends in; refuse one that could name a path (or nothing)."""
    name = unquote(posixpath.basename(urlsplit(url).path))
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise FetchError(f"{what}: {url} does not end in a file name")
    return name


def _top(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return parts[0] if parts else ""
