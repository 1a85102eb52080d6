"""Modules imported on first use.

A no-op `xenspin build` reads the lock and the store's metadata and runs nothing; it
need not pay for importing requests, python-debian or Jinja2 (a third of its time).
Modules that use those only when they do real work name them through `module()`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class _Lazy(ModuleType):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._target = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._target), attr)


def module(name: str) -> Any:
    """A stand-in for `import name` that imports it when an attribute is first read."""
    return _Lazy(name)
