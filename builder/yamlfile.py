"""YAML loading that remembers the line every value came from.

PyYAML's composer gives nodes with marks; we turn them into plain dicts and lists
that carry a location per key and item, so that every later error (a wrong type
three spins deep, an `after:` naming nothing) can point at the right line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from xenspin_installer import boundedyaml

from .errors import Loc, ManifestError

MAX_FILE_BYTES = 4 * 1024 * 1024
# A manifest has hundreds of nodes; a billion-laughs document expands to billions.
MAX_NODES = 100_000
# A manifest nests a handful of levels; PyYAML's composer recurses once per level.
MAX_DEPTH = 32
# Checked on the parser's events before anything is composed (the installer's loader, shared).
LIMITS = boundedyaml.Limits(max_depth=MAX_DEPTH, max_nodes=MAX_NODES, what="a manifest")


class LDict(dict):
    """A mapping with the location of itself and of each of its values."""

    def __init__(self, loc: Loc) -> None:
        super().__init__()
        self.loc = loc
        self.locs: dict[str, Loc] = {}
        self.raw: dict[str, str | None] = {}

    def put(self, key: str, value: Any, loc: Loc, raw: str | None = None) -> None:
        self[key] = value
        self.locs[key] = loc
        self.raw[key] = raw

    def loc_of(self, key: str) -> Loc:
        return self.locs.get(key, self.loc)


class LList(list):
    """A sequence with the location of itself and of each item."""

    def __init__(self, loc: Loc) -> None:
        super().__init__()
        self.loc = loc
        self.locs: list[Loc] = []
        self.raw: list[str | None] = []

    def push(self, value: Any, loc: Loc, raw: str | None = None) -> None:
        self.append(value)
        self.locs.append(loc)
        self.raw.append(raw)

    def loc_of(self, index: int) -> Loc:
        return self.locs[index] if index < len(self.locs) else self.loc


def read_text(path: Path, field: str = "") -> str:
    """Read a manifest file as UTF-8 text, refusing what is not a text file."""
    loc = Loc(path)
    if not path.exists():
        raise ManifestError(loc, field, "no such file")
    if not path.is_file():
        raise ManifestError(loc, field, "not a regular file (expected a YAML file)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ManifestError(loc, field, f"cannot read: {e.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ManifestError(loc, field, f"file is {len(data)} bytes (expected at most {MAX_FILE_BYTES})")
    if b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        raise ManifestError(Loc(path, line), field, "binary data (expected a UTF-8 YAML text file)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ManifestError(
            Loc(path, line), field, f"byte 0x{data[e.start]:02x} is not UTF-8 (expected a UTF-8 text file)"
        ) from None
    return text.removeprefix("\ufeff")


def load(path: Path) -> LDict:
    """Load one YAML file whose top level must be a mapping."""
    text = read_text(path)
    try:
        node = boundedyaml.compose(text, LIMITS)
    except boundedyaml.LimitError as e:
        raise ManifestError(Loc(path, e.line), "", e.message) from None
    except yaml.MarkedYAMLError as e:
        raise _syntax_error(path, text, e) from None
    except yaml.YAMLError as e:  # pragma: no cover - PyYAML marks all parse errors
        raise ManifestError(Loc(path), "", f"YAML error: {e}") from None
    if node is None:
        raise ManifestError(Loc(path), "", "file is empty (expected a mapping of fields)")
    value = _Converter(path).convert(node, "")
    if not isinstance(value, LDict):
        # Never echo the value: the file may not be a manifest at all (a secret named by a hostile spin).
        kind = "a list" if isinstance(value, LList) else "a scalar"
        raise ManifestError(
            Loc(path, node.start_mark.line + 1), "", f"top level is {kind} (expected a mapping of fields)"
        )
    return value


def _syntax_error(path: Path, text: str, e: yaml.MarkedYAMLError) -> ManifestError:
    mark = e.problem_mark or e.context_mark
    problem = e.problem or e.context or "YAML syntax error"
    if "'\\t'" in problem or (mark is not None and _tab_at(text, mark)):
        return ManifestError(
            Loc(path, mark.line + 1 if mark else 0), "", "tab character in indentation (YAML indents with spaces only)"
        )
    if "expected a single document" in problem or "but found another document" in problem:
        return ManifestError(
            Loc(path, mark.line + 1 if mark else 0), "", "more than one YAML document (expected exactly one)"
        )
    # An unclosed bracket or quote is found at the end of the file; where it opened helps more.
    if e.context_mark is not None and "<stream end>" in problem:
        mark = e.context_mark
    context = f" ({e.context}, line {e.context_mark.line + 1})" if e.context and e.context_mark and e.problem else ""
    return ManifestError(Loc(path, mark.line + 1 if mark else 0), "", f"YAML syntax error: {problem}{context}")


def _tab_at(text: str, mark: yaml.Mark) -> bool:
    lines = text.splitlines()
    if 0 <= mark.line < len(lines):
        line = lines[mark.line]
        return "\t" in line[: len(line) - len(line.lstrip(" \t"))] or line[mark.column : mark.column + 1] == "\t"
    return False


class _Converter:
    """Turn composed nodes into LDict/LList/scalars, checking what YAML lets through.

    Recursive: boundedyaml has bounded the depth and the size as aliases expand them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.constructor = yaml.SafeLoader("")

    def loc(self, node: yaml.Node) -> Loc:
        return Loc(self.path, node.start_mark.line + 1)

    def convert(self, node: yaml.Node, field: str) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, field)
        if isinstance(node, yaml.SequenceNode):
            out = LList(self.loc(node))
            for i, item in enumerate(node.value):
                sub = f"{field}[{i}]"
                out.push(self.convert(item, sub), self.loc(item), _raw(item))
            return out
        out = LDict(self.loc(node))
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ManifestError(self.loc(key_node), field, "YAML merge keys (<<) are not supported (use extends:)")
            if not isinstance(key_node, yaml.ScalarNode):
                raise ManifestError(self.loc(key_node), field, "a key must be a plain string")
            key = key_node.value
            sub = f"{field}.{key}" if field else key
            if key in out:
                first = out.loc_of(key).line
                raise ManifestError(self.loc(key_node), sub, f"duplicate key (first given on line {first})")
            value = self.convert(value_node, sub)
            out.put(key, value, self.loc(key_node), _raw(value_node))
        return out

    def scalar(self, node: yaml.ScalarNode, field: str) -> Any:
        if node.tag == "tag:yaml.org,2002:timestamp":
            return node.value  # keep dates as the text the user wrote
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as e:
            raise ManifestError(self.loc(node), field, f"bad value: {getattr(e, 'problem', e)}") from None


def _raw(node: yaml.Node) -> str | None:
    """The text of a plain scalar, so `version: 1.10` can still mean "1.10"."""
    if isinstance(node, yaml.ScalarNode) and node.style is None:
        return node.value
    return None
