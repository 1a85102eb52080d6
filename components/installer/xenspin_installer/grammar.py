"""What a string field may hold, declared once beside the field: `Annotated[str, GRAMMAR]`.

Strings from manifests and answerfiles end up in file names, config files, boot menus
and command lines, each of which has characters that end a line, close a quote or
start a second entry. A grammar is one regular expression in the subset that Python
and JSON Schema (ECMA-262) read alike, so the loader refuses exactly what the schema's
"pattern" refuses. The builder reads the same objects (its dataschema.py), so this module
has no dependencies: it runs in dom0 too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin

# Characters that end or split a line somewhere: C0 and C1 controls (newline, NUL, escape,
# NEL) and the Unicode line and paragraph separators. A class body, for use inside [...].
CONTROL = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
# What a URL never holds unescaped (RFC 3986), and the quotes and whitespace that would end it.
URL_CHAR = "[^\\s" + CONTROL + "\"'\\\\<>^`{|}]"
SHOWN = 60  # characters of a refused value an error echoes


@dataclass(frozen=True)
class Grammar:
    """A regular expression a whole value must match, and the words an error says were expected.

    secret: the value is never echoed (a password).
    """

    body: str
    expected: str
    secret: bool = False

    @property
    def pattern(self) -> str:
        """The JSON Schema "pattern": anchored, since a schema pattern matches anywhere."""
        return f"^(?:{self.body})$"

    def ok(self, value: str) -> bool:
        return re.fullmatch(self.body, value) is not None

    def refusal(self, value: str) -> str:
        """The problem part of the one-line error for a value this grammar refuses."""
        if self.secret:
            return f"is not allowed (expected {self.expected})"
        shown = repr(value) if len(value) <= SHOWN else repr(value[:SHOWN]) + "..."
        return f"{shown} (expected {self.expected})"


def printable(text: str) -> str:
    """text with its control characters escaped (\\n, \\x1b): an error about a key or value stays one line."""
    return re.sub(f"[{CONTROL}]", lambda m: repr(m.group())[1:-1], text)


def optional(g: Grammar) -> Grammar:
    """g, or the empty string (a field whose empty default means "not given")."""
    return Grammar(f"(?:{g.body})?", g.expected, g.secret)


def text_line(max_len: int, forbid: str = "") -> Grammar:
    """One line of at most max_len characters, none of them a control character or one of forbid.

    forbid lists the quote characters of the file format the value is written into.
    """
    banned = "".join("\\" + c if c in "\\]^-[" else c for c in forbid)
    without = f", without {' '.join(forbid)}" if forbid else ""
    return Grammar(f"[^{CONTROL}{banned}]{{0,{max_len}}}", f"one line of at most {max_len} characters{without}")


def grammars(tp: Any) -> list[Grammar]:
    """The grammars an Annotated type carries (none for a plain type)."""
    if get_origin(tp) is Annotated:
        return [g for g in get_args(tp)[1:] if isinstance(g, Grammar)]
    return []


def bare(tp: Any) -> Any:
    """tp without its Annotated grammar."""
    return get_args(tp)[0] if get_origin(tp) is Annotated else tp


def grammar_of(tp: Any) -> Grammar | None:
    """The grammar of a string field or of the items of a list field, for schema descriptions."""
    found = grammars(tp)
    if found:
        return found[0]
    if get_origin(tp) is list:
        return grammar_of(get_args(tp)[0])
    return None
