"""Licences between SPDX and Debian's machine-readable copyright format (DEP-5), both ways.

Pure functions over text. The SBOM asks for a licence per package, and the Debian
copyright file is the only place a .deb says it: `declared` reads it as an SPDX
expression. A file that is not in the machine-readable format gives NOASSERTION
(guessing from free text would be worse than saying nothing); a licence name with no
clean SPDX identifier becomes a LicenseRef. The packages xenspin builds say their
licence in that file too, from a recipe's SPDX `license:` (`dep5`, `common_licence`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

NOASSERTION = "NOASSERTION"

# DEP-5's short names (and common spellings of them in Debian) -> SPDX identifiers.
# A trailing "+" in DEP-5 means "or any later version".
_VERSIONED = {
    "gpl": "GPL",
    "lgpl": "LGPL",
    "agpl": "AGPL",
    "gfdl": "GFDL",
    "gfdl-niv": "GFDL",
}
_NAMES = {
    "apache-1.0": "Apache-1.0",
    "apache-1.1": "Apache-1.1",
    "apache-2.0": "Apache-2.0",
    "artistic": "Artistic-1.0",
    "artistic-1.0": "Artistic-1.0",
    "artistic-2.0": "Artistic-2.0",
    "bsd-2-clause": "BSD-2-Clause",
    "bsd-3-clause": "BSD-3-Clause",
    "bsd-4-clause": "BSD-4-Clause",
    "cc0-1.0": "CC0-1.0",
    "expat": "MIT",
    "mit": "MIT",
    "isc": "ISC",
    "zlib": "Zlib",
    "mpl-1.1": "MPL-1.1",
    "mpl-2.0": "MPL-2.0",
    "python-2.0": "Python-2.0",
    "psf-2": "PSF-2.0",
    "zpl-2.1": "ZPL-2.1",
    "ofl-1.1": "OFL-1.1",
    "unicode-dfs-2016": "Unicode-DFS-2016",
    "curl": "curl",
    "openssl": "OpenSSL",
    "ssleay": "SSLeay-standalone",
    "x11": "X11",
    "bsl-1.0": "BSL-1.0",
    "wtfpl": "WTFPL",
    "0bsd": "0BSD",
}
# "LICENCE with X exception" -> SPDX exception identifiers, where one is unambiguous.
_EXCEPTIONS = {
    "autoconf": "Autoconf-exception-generic",
    "autoconf-3.0": "Autoconf-exception-3.0",
    "bison": "Bison-exception-2.2",
    "classpath": "Classpath-exception-2.0",
    "font": "Font-exception-2.0",
    "gcc-runtime": "GCC-exception-3.1",
    "gcc-runtime-3.1": "GCC-exception-3.1",
    "libtool": "Libtool-exception",
    "linux-syscall-note": "Linux-syscall-note",
    "ocaml-linking": "OCaml-LGPL-linking-exception",
    "ocaml-lgpl-linking": "OCaml-LGPL-linking-exception",
}


@dataclass(frozen=True)
class SpdxIds:
    """The SPDX licence list, lower-case spelling -> identifier (the SBOM fills it from the
    license-expression package; tests pass a few)."""

    licences: dict[str, str] = field(default_factory=dict)
    exceptions: dict[str, str] = field(default_factory=dict)


NONE = SpdxIds()
_VERSION = re.compile(r"(?P<base>[a-z-]+?)-?(?P<ver>\d+(?:\.\d+)?)(?P<plus>\+?)$")
_REF_CHARS = re.compile(r"[^A-Za-z0-9.-]+")


def is_machine_readable(text: str) -> bool:
    """DEP-5 files begin with a Format: field naming the copyright format."""
    head = text.lstrip().split("\n\n", 1)[0]
    return bool(re.search(r"(?im)^format:\s*\S*(copyright-format|dep5|dep-5)", head))


def paragraphs(text: str) -> list[dict[str, str]]:
    """The file's paragraphs as field -> first line of the value (continuation lines dropped)."""
    out: list[dict[str, str]] = []
    for block in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line[0] in " \t#":
                continue
            name, sep, value = line.partition(":")
            if sep and " " not in name:
                fields[name.strip().lower()] = value.strip()
        if fields:
            out.append(fields)
    return out


def licence_names(text: str) -> list[str]:
    """The distinct License: short expressions of the header and Files paragraphs, in file order.

    Stand-alone License paragraphs (a licence's full text, no Files:) only explain names
    already used, so they are left out.
    """
    seen: list[str] = []
    for i, para in enumerate(paragraphs(text)):
        value = para.get("license", "")
        if not value or (i > 0 and "files" not in para):
            continue
        if value not in seen:
            seen.append(value)
    return seen


def licence_ref(name: str) -> str:
    """LicenseRef-NAME with only the characters SPDX allows in an identifier ("+" spelt "plus")."""
    return "LicenseRef-" + (_REF_CHARS.sub("-", name.replace("+", "-plus")).strip("-") or "unknown")


def spdx_id(name: str, known: SpdxIds = NONE) -> str | None:
    """One DEP-5 licence name as an SPDX identifier, or None when none maps cleanly.

    known holds the SPDX list, for names already spelt as SPDX identifiers.
    """
    key = name.strip().lower()
    if key in _NAMES:
        return _NAMES[key]
    m = _VERSION.match(key)
    if m and m["base"] in _VERSIONED:
        ver = m["ver"] if "." in m["ver"] else m["ver"] + ".0"
        base = _VERSIONED[m["base"]]
        if base == "GFDL" and m["base"] == "gfdl-niv":
            return None  # no invariant sections: SPDX spells that per version, not cleanly
        return f"{base}-{ver}-{'or-later' if m['plus'] else 'only'}"
    if m and m["base"] in ("apache", "mpl", "artistic", "cc0") and not m["plus"]:
        return _NAMES.get(f"{m['base']}-{m['ver']}") or _NAMES.get(f"{m['base']}-{m['ver']}.0")
    return known.licences.get(key)


def _term(term: str, known: SpdxIds) -> str:
    """One licence, maybe `with X exception`, as SPDX (an unmapped one as a LicenseRef)."""
    name, sep, rest = _split_with(term)
    ident = spdx_id(name, known)
    if not sep:
        return ident or licence_ref(name)
    rest = rest.strip()
    base = re.sub(r"\s+exception$", "", rest, flags=re.I).lower()
    exc = (
        known.exceptions.get(rest.lower())
        or _EXCEPTIONS.get(base)
        or next((e for e in known.exceptions.values() if dep5_exception(e).lower() == rest.lower()), None)
    )
    if ident and exc:
        return f"{ident} WITH {exc}"
    return licence_ref(f"{name}-with-{rest}")


def _split_with(term: str) -> tuple[str, str, str]:
    parts = re.split(r"\s+with\s+", term.strip(), maxsplit=1, flags=re.I)
    return (parts[0], "with", parts[1]) if len(parts) == 2 else (parts[0], "", "")


def expression(dep5: str, known: SpdxIds = NONE) -> str:
    """A DEP-5 License: short expression as an SPDX expression.

    DEP-5: "and" binds tighter than "or", and a comma before an operator ends a group
    ("A or B, and C" is (A or B) and C).
    """
    text = re.sub(r"\s+", " ", dep5.strip())
    if not text or text.upper() == NOASSERTION:  # a copyright file saying it states no licence
        return NOASSERTION
    parts = re.split(r",\s*(and|or)\s+", text, flags=re.I)
    out = _plain(parts[0], known)
    for op, group in zip(parts[1::2], parts[2::2], strict=True):
        right = _plain(group, known)
        out = f"{_group(out)} {op.upper()} {_group(right)}"
    return out


def _group(expr: str) -> str:
    return f"({expr})" if " AND " in expr or " OR " in expr else expr


def _plain(text: str, known: SpdxIds) -> str:
    """An expression without DEP-5 commas: ORs of ANDs of licences."""
    ors = re.split(r" or ", text, flags=re.I)
    out = []
    for alt in ors:
        ands = [_term(t, known) for t in re.split(r" and ", alt, flags=re.I) if t.strip()]
        joined = " AND ".join(dict.fromkeys(ands))
        out.append(f"({joined})" if len(ands) > 1 and len(ors) > 1 else joined)
    return " OR ".join(dict.fromkeys(out))


def declared(text: str | None, known: SpdxIds = NONE) -> str:
    """The package's licence: every licence its copyright file names, ANDed, each once, in file
    order; NOASSERTION when it has no machine-readable copyright file (or names no licence)."""
    if not text or not is_machine_readable(text):
        return NOASSERTION
    terms: list[str] = []
    for name in licence_names(text):
        expr = expression(name, known)
        if expr == NOASSERTION:
            continue
        terms += [f"({expr})"] if " OR " in expr else expr.split(" AND ")
    terms = list(dict.fromkeys(terms))
    if len(terms) == 1 and terms[0].startswith("("):
        return terms[0][1:-1]
    return " AND ".join(terms) if terms else NOASSERTION


def refs(expr: str) -> list[str]:
    """The LicenseRef identifiers an expression uses (each needs its own entry in an SPDX document)."""
    return sorted(set(re.findall(r"LicenseRef-[A-Za-z0-9.-]+", expr)))


# --- SPDX to DEP-5 (the copyright files of the packages xenspin builds) ---------------------

# SPDX identifiers Debian's copyright format spells otherwise (the versioned GNU licences: below).
_DEP5_NAMES = {
    "MIT": "Expat",
    "BSD-2-Clause": "BSD-2-clause",
    "BSD-3-Clause": "BSD-3-clause",
    "BSD-4-Clause": "BSD-4-clause",
    "Artistic-1.0": "Artistic",
}
_GNU = re.compile(r"(?P<name>A?GPL|LGPL|GFDL)-(?P<ver>\d(?:\.\d)?)-(?P<kind>only|or-later)")
# The licence texts Debian's base-files carries in /usr/share/common-licenses, by SPDX identifier
# (the versioned file only: GPL, LGPL and GFDL are links to the newest version). Not BSD: Policy
# deprecates pointing at it, its copyright holder being the University of California.
COMMON_LICENCES = {
    "GPL-1.0": "GPL-1",
    "GPL-2.0": "GPL-2",
    "GPL-3.0": "GPL-3",
    "LGPL-2.0": "LGPL-2",
    "LGPL-2.1": "LGPL-2.1",
    "LGPL-3.0": "LGPL-3",
    "GFDL-1.2": "GFDL-1.2",
    "GFDL-1.3": "GFDL-1.3",
    "Apache-2.0": "Apache-2.0",
    "Artistic-1.0": "Artistic",
    "CC0-1.0": "CC0-1.0",
    "MPL-1.1": "MPL-1.1",
    "MPL-2.0": "MPL-2.0",
}


def dep5_name(ident: str) -> str:
    """An SPDX licence identifier as Debian's copyright format names it: GPL-2.0-only -> GPL-2,
    LGPL-2.1-or-later -> LGPL-2.1+, MIT -> Expat; one the format does not name stays as it is.
    `spdx_id` reads each back."""
    m = _GNU.fullmatch(ident)
    if m:
        return f"{m['name']}-{m['ver'].removesuffix('.0')}{'+' if m['kind'] == 'or-later' else ''}"
    return _DEP5_NAMES.get(ident, ident)


def dep5_exception(ident: str) -> str:
    """An SPDX exception as Debian's format words it, "NAME exception": OCaml-LGPL-linking-exception ->
    OCaml-LGPL-linking exception, Linux-syscall-note -> Linux-syscall-note exception."""
    return re.sub(r"-exception(?=-|$)", "", ident, count=1) + " exception"


def terms(spdx: str) -> list[tuple[str, str]]:
    """The (licence, exception or "") terms of an SPDX expression without parentheses, each once, in order."""
    out: list[tuple[str, str]] = []
    for term in re.split(r" (?:AND|OR) ", spdx.strip()):
        name, _, exc = term.partition(" WITH ")
        if name and (name, exc) not in out:
            out.append((name, exc))
    return out


def dep5_term(name: str, exc: str) -> str:
    return f"{dep5_name(name)} with {dep5_exception(exc)}" if exc else dep5_name(name)


def dep5(spdx: str) -> str:
    """An SPDX expression without parentheses as a DEP-5 License: value (AND binds before OR in both)."""
    parts = re.split(r" (AND|OR) ", spdx.strip())
    out = [dep5_term(*_with(parts[0]))]
    for op, term in zip(parts[1::2], parts[2::2], strict=True):
        out += [op.lower(), dep5_term(*_with(term))]
    return " ".join(out)


def _with(term: str) -> tuple[str, str]:
    name, _, exc = term.partition(" WITH ")
    return name, exc


def common_licence(ident: str) -> str | None:
    """The file of /usr/share/common-licenses holding the licence's text (GPL-2.0-or-later -> GPL-2), or None."""
    m = _GNU.fullmatch(ident)
    key = f"{m['name']}-{m['ver'] if '.' in m['ver'] else m['ver'] + '.0'}" if m else ident
    return COMMON_LICENCES.get(key)
