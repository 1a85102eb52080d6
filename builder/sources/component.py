"""A source shared with another component: nothing of its own to lock or fetch.

The lock entry only names the component whose entry pins the source, so the source is
locked once; builds resolve it to that entry (build.origin) and unpack its tree once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import Context, FetchError


def lock(name: str, source: Any, ctx: Context) -> dict[str, Any]:
    return {"kind": "component", "component": source.component}


def fetch(name: str, source: Any, entry: dict[str, Any], ctx: Context) -> None:
    """The other component's fetch fills the store."""


def fetched(entry: dict[str, Any], ctx: Context) -> bool:
    return True


def tree(entry: dict[str, Any], ctx: Context, dest: Path) -> Path:
    raise FetchError(f"the source of {entry['component']} is unpacked as that component's tree")


def summary(entry: dict[str, Any]) -> str:
    return f"the source of {entry['component']}"
