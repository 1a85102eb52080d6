"""Files read from inside a .deb without unpacking it: its copyright file and Debian changelog.

The host only reads bytes here (an ar archive, then the data tarball as a stream): nothing
is written or extracted, so a package's own paths and links never touch the host's tree.
A package whose doc directory is a link to another package's (libgcc-s1 -> gcc-14-base)
says so, and the caller reads the other package.
"""

from __future__ import annotations

import gzip
import io
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path

from . import lazyimport
from .errors import XenspinError
from .run import run

arfile = lazyimport.module("debian.arfile")

# A changelog or copyright file bigger than this is not read (a hostile .deb could claim gigabytes).
MAX_FILE = 16 << 20
CHANGELOGS = ("changelog.Debian.gz", "changelog.gz")


class DebFileError(XenspinError):
    pass


@dataclass(frozen=True)
class DocFile:
    """What a .deb holds for one doc file: its text, or the package its doc directory links to."""

    text: str | None = None  # decoded (copyright_text, changelog_text)
    link: str | None = None  # the other package whose /usr/share/doc/ directory holds it
    data: bytes | None = None  # the raw bytes (doc_files)


def _data_tar(deb: Path) -> tarfile.TarFile:
    """The data tarball of deb as a forward-only stream."""
    try:
        ar = arfile.ArFile(str(deb))
        member = next((m for m in ar.getmembers() if m.name.startswith("data.tar")), None)
        if member is None:
            raise DebFileError(f"{deb}: not a .deb (no data.tar member)")
        if member.name.endswith(".zst"):  # tarfile cannot read zstd
            raw = member.read()
            data = run(["zstd", "-dc"], what=f"read {deb.name}", input=raw, capture=True).stdout
            return tarfile.open(fileobj=io.BytesIO(data), mode="r:")
        return tarfile.open(fileobj=member, mode="r|*")
    except (OSError, tarfile.TarError, ValueError) as e:
        raise DebFileError(f"{deb}: cannot read as a .deb ({e.__class__.__name__}: {e})") from None


def _norm(name: str) -> str:
    return posixpath.normpath("/" + name.lstrip("./")) if name not in (".", "./") else "/"


def doc_files(deb: Path, package: str, names: tuple[str, ...]) -> dict[str, DocFile]:
    """/usr/share/doc/PACKAGE/NAME for each of names that deb holds (one pass over the data tarball).

    A doc directory that is a symbolic link to a sibling directory gives DocFile(link=other)
    for every name (the files live in the other package).
    """
    doc = f"/usr/share/doc/{package}"
    wanted = {f"{doc}/{n}": n for n in names}
    found: dict[str, DocFile] = {}
    try:
        with _data_tar(deb) as tar:
            for m in tar:
                path = _norm(m.name)
                if path == doc and m.issym():
                    target = posixpath.normpath(posixpath.join("/usr/share/doc", m.linkname))
                    if posixpath.dirname(target) == "/usr/share/doc":
                        return {n: DocFile(link=posixpath.basename(target)) for n in names}
                    return {}
                name = wanted.get(path)
                if name is None:
                    continue
                if m.issym():  # a file linked elsewhere: common-licenses, another package's
                    found[name] = DocFile(link=_linked_package(path, m.linkname))
                elif m.isfile() and m.size <= MAX_FILE:
                    f = tar.extractfile(m)
                    if f is not None:
                        found[name] = DocFile(data=f.read())
                if len(found) == len(wanted):
                    break
    except (OSError, EOFError, tarfile.TarError) as e:
        raise DebFileError(f"{deb}: cannot read its data ({e.__class__.__name__}: {e})") from None
    return found


def _linked_package(path: str, target: str) -> str | None:
    """The package a /usr/share/doc/P/NAME link points into, if it points into a sibling doc directory."""
    full = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    parent = posixpath.dirname(full)
    return posixpath.basename(parent) if posixpath.dirname(parent) == "/usr/share/doc" else None


def copyright_text(deb: Path, package: str) -> DocFile | None:
    """The package's /usr/share/doc/PACKAGE/copyright, or None when the .deb has none."""
    got = doc_files(deb, package, ("copyright",)).get("copyright")
    if got is None or got.data is None:
        return got
    return DocFile(text=got.data.decode("utf-8", "replace"))


def changelog_text(deb: Path, package: str) -> DocFile | None:
    """The package's Debian changelog (changelog.Debian.gz, else changelog.gz), decompressed;
    None when the .deb has neither."""
    files = doc_files(deb, package, CHANGELOGS)
    got = next((files[n] for n in CHANGELOGS if n in files), None)
    if got is None or got.data is None:
        return got
    try:
        raw = gzip.GzipFile(fileobj=io.BytesIO(got.data)).read(MAX_FILE)
    except (OSError, EOFError) as e:
        raise DebFileError(f"{deb}: {package}'s changelog is not gzip ({e})") from None
    return DocFile(text=raw.decode("utf-8", "replace"))
