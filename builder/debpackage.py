"""What xenspin writes into every package it makes, besides the staged tree.

A Debian maintainer's package says what it is and where it came from: the control file
(Section, Priority, a synopsis and an extended description), the machine-readable
copyright file `/usr/share/doc/PKG/copyright` (the recipe's `license:` and the source's
own licence files), a `changelog.Debian.gz` saying what was built from what (the exact
source, xenspin's build key) and `DEBIAN/md5sums`. Everything they hold comes from the
build's key inputs, so the same key gives the same bytes.

The text functions are pure. `licence_files` reads the source tree and `doc_dir` makes
directories in the staged tree, both written by others (an upstream, a recipe's steps):
neither follows a link found there.
"""

from __future__ import annotations

import datetime
import email.utils
import gzip
import hashlib
import os
import re
import stat
import textwrap
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path

from . import licence, outputcheck
from .errors import XenspinError
from .manifest import Component
from .sources import Provenance

COPYRIGHT_FORMAT = "https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
COMMON_LICENSES = "/usr/share/common-licenses"
# The source's licence files: at its top, named as upstreams name them (COPYING, LICENSE.txt, ...).
LICENCE_FILE = re.compile(r"(?:COPYING|LICEN[CS]E|COPYRIGHT|NOTICE)(?:[._-][A-Za-z0-9.+-]{0,32})?", re.I)
NOT_LICENCE = (".py", ".c", ".h", ".ml", ".mli", ".sh", ".go", ".rs", ".js", ".html", ".in")
MAX_LICENCE_FILE = 256 << 10  # bigger is no licence statement; left out
MAX_LICENCE_FILES = 8
WIDTH = 79  # lintian warns about longer description and changelog lines
# Every control character but the newline: a licence file's form feeds, escapes and CRs go.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_COPYRIGHT_LINE = re.compile(r"^\s*(?:copyright\b|\(c\)|©).*\b(?:19|20)\d\d\b", re.I)


class PackageError(XenspinError):
    """The staged tree cannot take the package's documentation (a link where a directory must be)."""


@dataclass(frozen=True)
class Built:
    """What a package says about how it was made; every field comes from the build's key inputs."""

    package: str
    version: str
    maintainer: str
    suite: str  # the changelog's distribution: the manifest's base suite
    epoch: int  # the changelog's date: SOURCE_DATE_EPOCH
    key: str  # xenspin's build key
    provenance: Provenance
    patches: tuple[tuple[str, str], ...] = ()  # (file name, sha256) given to the steps


# --- the control file --------------------------------------------------------------------


def control_file(comp: Component, version: str, arch: str, maintainer: str, built_from: str = "") -> str:
    """DEBIAN/control: the recipe's package fields, Section, Priority and the description."""
    pkg = comp.package
    assert pkg is not None
    lines = [
        f"Package: {pkg.name}",
        f"Version: {version}",
        f"Architecture: {arch}",
        f"Maintainer: {maintainer}",
    ]
    for header, relations in [
        ("Depends", pkg.depends),
        ("Provides", pkg.provides),
        ("Conflicts", pkg.conflicts),
        ("Replaces", pkg.replaces),
    ]:
        if relations:
            lines.append(f"{header}: " + ", ".join(relations))
    lines += [f"Section: {pkg.section}", f"Priority: {pkg.priority}"]
    lines.append("Description: " + description(pkg.name, pkg.description, built_from))
    return "\n".join(lines) + "\n"


def description(name: str, text: str, built_from: str) -> str:
    """The Description: value: the recipe's synopsis (its first line), its further lines as the
    extended description, then a paragraph saying where the package was built from.

    Lintian wants an extended description: the last paragraph is always there.
    """
    lines = text.rstrip().split("\n") if text.strip() else []
    synopsis = lines[0].strip() if lines and lines[0].strip() else f"{name}, built by xenspin"
    body = [line.rstrip() for line in lines[1:]]
    while body and not body[0].strip():
        body.pop(0)
    made_lines = _wrap(f"Built by xenspin from {built_from}." if built_from else "Built by xenspin.")
    return synopsis + "\n" + _continued([*body, "", *made_lines] if body else made_lines)


def _continued(lines: list[str]) -> str:
    """Lines as a deb822 multi-line value: each indented by a space, an empty one as " ."."""
    return "\n".join(f" {line}" if line.strip() else " ." for line in lines)


# --- the copyright file ----------------------------------------------------------------


def copyright_file(
    upstream: str,
    package: str,
    spdx: str,
    provenance: Provenance,
    files: list[tuple[str, str]],
    common: Container[str],
) -> str:
    """/usr/share/doc/PKG/copyright in Debian's machine-readable format.

    `Files: *` under the recipe's licence (spdx, in the format's names: GPL-2.0-only is
    GPL-2); a License paragraph for each licence named. A licence whose text the build
    root has in /usr/share/common-licenses (common: the file names there) points at it;
    any other, or one with an exception, carries the source's licence files (files: name
    and text) as its text. When no paragraph took those files, they follow `Files: *` as
    its Comment, so the upstream's own statement (Xen's COPYING) ships either way; a file
    that is the full text of a licence Debian carries is not repeated. An empty spdx is
    NOASSERTION: the recipe states no licence.
    """
    files = [(name, clean(text)) for name, text in files]
    terms = licence.terms(spdx) if spdx else []
    pointers = {t: licence.common_licence(t[0]) for t in terms}
    pointers = {t: f if f is not None and f in common else None for t, f in pointers.items()}
    take_files = not terms or any(f is None or t[1] for t, f in pointers.items())
    shipped = files if take_files else [(n, t) for n, t in files if not _full_licence_text(t)]
    header = [
        f"Format: {COPYRIGHT_FORMAT}",
        f"Upstream-Name: {upstream}",
        f"Source: {provenance.where}",
        "Comment:"
        + _wrapped(
            f"{package} is built by xenspin from {provenance.pinned}; changelog.Debian.gz says so too."
            + (f" The recipe states its licence as the SPDX expression {spdx}." if spdx else "")
        ),
    ]
    holders = _holders(files) or ["the authors of the source; its files name them"]
    main = [
        "Files: *",
        "Copyright: " + holders[0] + ("\n" + _continued(holders[1:]) if holders[1:] else ""),
        f"License: {licence.dep5(spdx) if spdx else licence.NOASSERTION}",
    ]
    if shipped and not take_files:
        main.append("Comment: The source's own licence statement:\n" + _continued(_files_text(shipped)))
    paragraphs = ["\n".join(header), "\n".join(main)]
    if not terms:
        text = ["The recipe states no licence (its license: field is empty)."]
        paragraphs.append(f"License: {licence.NOASSERTION}\n" + _continued(text + _source_text(shipped)))
    for (name, exc), common_file in pointers.items():
        text = [f"SPDX: {name} WITH {exc}." if exc else f"SPDX: {name}."]
        if common_file is not None:
            text += _wrap(f"On Debian systems, the complete text of {name} is in {COMMON_LICENSES}/{common_file}.")
        if common_file is None or exc:
            text += _source_text(shipped)
        paragraphs.append(f"License: {licence.dep5_term(name, exc)}\n" + _continued(text))
    return "\n\n".join(paragraphs) + "\n"


def _wrapped(text: str) -> str:
    """A long field value: on the lines after the field name, each indented."""
    return "\n" + _continued(_wrap(text))


def _wrap(text: str, indent: str = "") -> list[str]:
    """text in lines that stay within WIDTH once indented (a URL or a digest is never broken)."""
    return textwrap.wrap(
        text,
        WIDTH - 1,
        initial_indent=indent,
        subsequent_indent=" " * len(indent),
        break_long_words=False,
        break_on_hyphens=False,
    )


def _source_text(files: list[tuple[str, str]]) -> list[str]:
    if not files:
        return ["", "The source has no licence file at its top; its files state their licence themselves."]
    return ["", "The source's licence files:", "", *_files_text(files)]


def _files_text(files: list[tuple[str, str]]) -> list[str]:
    out: list[str] = []
    for name, text in files:
        out += [*([""] if out else []), f"{name}:", "", *text.split("\n")]
    return out


def _holders(files: list[tuple[str, str]]) -> list[str]:
    """The copyright notices (a line naming a year) of the licence files, each once, at most 20."""
    seen: list[str] = []
    for _, text in files:
        for line in text.split("\n"):
            line = " ".join(line.split())
            if _COPYRIGHT_LINE.match(line) and line not in seen and len(line) <= 200:
                seen.append(line)
    return seen[:20]


def _full_licence_text(text: str) -> bool:
    """Whether a file is the whole text of a licence Debian carries (the GNU licences', Apache's)."""
    return "TERMS AND CONDITIONS" in text and bool(
        re.search(r"GNU (?:LESSER |LIBRARY |AFFERO )?GENERAL PUBLIC LICENSE|Apache License", text, re.I)
    )


def licence_files(src: Path) -> list[tuple[str, str]]:
    """The licence files at the top of a source tree (name, text), sorted by name.

    Regular files only, opened without following a link (an upstream's COPYING -> /etc/shadow
    reads nothing of the host), at most MAX_LICENCE_FILES of at most MAX_LICENCE_FILE bytes;
    text decoded as UTF-8 (others replaced), tabs expanded, control characters dropped.
    """
    try:
        names = sorted(os.listdir(src))
    except OSError:
        return []
    out: list[tuple[str, str]] = []
    for name in names:
        if not LICENCE_FILE.fullmatch(name) or name.lower().endswith(NOT_LICENCE):
            continue
        try:
            fd = os.open(src / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:  # a link, gone, unreadable
            continue
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_LICENCE_FILE:
                continue
            data = f.read(MAX_LICENCE_FILE + 1)
        if len(data) > MAX_LICENCE_FILE:
            continue
        text = clean(data.decode("utf-8", "replace"))
        if text.strip():
            out.append((name, text))
        if len(out) == MAX_LICENCE_FILES:
            break
    return out


def clean(text: str) -> str:
    """Text fit for a copyright file: Unix lines without trailing blanks, tabs expanded, no control characters."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n").expandtabs())
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n"))


def common_licences(root: Path | None) -> Container[str]:
    """The licence texts the build root has in /usr/share/common-licenses (every one Debian ships when
    there is no root to look in)."""
    if root is None:
        return set(licence.COMMON_LICENCES.values())
    where = root / COMMON_LICENSES.lstrip("/")
    try:
        return {n for n in os.listdir(where) if stat.S_ISREG(os.lstat(where / n).st_mode)}
    except OSError:
        return set()


# --- the changelog -------------------------------------------------------------------------


def changelog(b: Built) -> bytes:
    """changelog.Debian.gz: one entry, the package's version in the manifest's suite, saying what it was
    built from; dated SOURCE_DATE_EPOCH, gzipped at level 9 with no name or time (gzip -9n)."""
    items = [f"Built by xenspin from {b.provenance.pinned}."]
    if b.patches:
        items.append("Patches given to the steps: " + ", ".join(f"{n} (sha256 {s})" for n, s in b.patches) + ".")
    items.append(f"xenspin build key {b.key}.")
    body = "\n".join(line for item in items for line in _wrap(item, "  * "))
    date = email.utils.format_datetime(datetime.datetime.fromtimestamp(b.epoch, datetime.UTC))
    text = f"{b.package} ({b.version}) {b.suite}; urgency=medium\n\n{body}\n\n -- {b.maintainer}  {date}\n"
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


# --- the staged tree -------------------------------------------------------------------


def doc_dir(component: str, staged: Path, package: str) -> Path:
    """usr/share/doc/PACKAGE in the staged tree, made where missing; a link or a non-directory on the way
    is refused (writing there would write through it)."""
    path = staged
    for part in ("usr", "share", "doc", package):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            path.mkdir(0o755)
            continue
        if not stat.S_ISDIR(mode):
            where = outputcheck.printable(str(path.relative_to(staged)))
            raise PackageError(
                f"build {component}: package: $OUT/{where} is {outputcheck.kind_of(mode)}"
                " (expected a directory: xenspin writes the package's copyright file and changelog there)"
            )
    return path


def md5sums(staged: Path) -> bytes:
    """DEBIAN/md5sums: every regular file of the tree but DEBIAN/, by path (what debsums and dpkg --verify read)."""
    sums: list[tuple[bytes, str]] = []
    for dirpath, dirs, files in os.walk(staged):
        if dirpath == str(staged):
            dirs[:] = [d for d in dirs if d != "DEBIAN"]
        for name in files:
            path = os.path.join(dirpath, name)
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            h = hashlib.md5(usedforsecurity=False)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(chunk)
            rel = os.fsencode(os.path.relpath(path, staged))
            if b"\n" not in rel:  # a name the format cannot hold
                sums.append((rel, h.hexdigest()))
    return b"".join(digest.encode() + b"  " + rel + b"\n" for rel, digest in sorted(sums))
