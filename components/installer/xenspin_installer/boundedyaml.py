"""YAML composed only when it fits: nesting depth and node count, aliases counted as expanded.

A YAML alias is a reference, so a few hundred bytes of nested aliases ("billion laughs")
stand for billions of values once anything walks the document: the installer's model
builder and the builder's located values both would. And PyYAML's composer recurses
once per nesting level, so 200,000 `[` end in a RecursionError. The parser's event
stream is flat and built without recursion; it is walked here first, with a stack of
our own, counting every value as often as aliases repeat it and every level as deep as
aliases reach. Only a document within the limits is composed. Used by the installer
(in a 1 GiB dom0) for answerfiles and by the builder for manifests: one implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml


@dataclass(frozen=True)
class Limits:
    """How deep and how large a document may be, and what it is called in an error."""

    max_depth: int
    max_nodes: int
    what: str  # "a manifest", "an answerfile"


class LimitError(Exception):
    """A document over a limit: the line (1-based) where it went over, and the problem."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass
class _Open:
    """A collection being read: its anchor, and its own size and height as expanded so far."""

    anchor: str | None
    nodes: int = 1
    height: int = 1


def check(text: str, limits: Limits) -> None:
    """Refuse text nested deeper or expanding to more values than limits allow (LimitError).

    Syntax errors are left to PyYAML (yaml.MarkedYAMLError), as composing would raise them.
    """
    done: dict[str, tuple[int, int]] = {}  # anchor -> (nodes, height) of its finished value
    stack: list[_Open] = []
    total = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(stack) + 1 > limits.max_depth:
                raise LimitError(line, f"nested deeper than {limits.max_depth} levels (expected {limits.what})")
            stack.append(_Open(event.anchor))
            total += 1
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            closed = stack.pop()
            if closed.anchor is not None:
                done[closed.anchor] = (closed.nodes, closed.height)
            _add(stack, closed.nodes, closed.height)
        elif isinstance(event, yaml.AliasEvent):
            if any(o.anchor == event.anchor for o in stack):
                raise LimitError(line, "recursive alias (a value that contains itself)")
            nodes, height = done.get(event.anchor or "", (1, 0))  # an unknown anchor: the composer says so
            if len(stack) + height > limits.max_depth:
                raise LimitError(line, f"nested deeper than {limits.max_depth} levels (expected {limits.what})")
            total += nodes
            _add(stack, nodes, height)
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                done[event.anchor] = (1, 0)
            total += 1
            _add(stack, 1, 0)
        if total > limits.max_nodes:
            raise LimitError(line, f"document expands to over {limits.max_nodes} values (an alias bomb?)")


def _add(stack: list[_Open], nodes: int, height: int) -> None:
    """Count a finished value (nodes as expanded, height in levels) into the collection holding it."""
    if stack:
        stack[-1].nodes += nodes
        stack[-1].height = max(stack[-1].height, height + 1)


def compose(text: str, limits: Limits) -> yaml.Node | None:
    """The document's node graph (None when empty), after check() found it within limits."""
    check(text, limits)
    return yaml.compose(text, Loader=yaml.SafeLoader)
