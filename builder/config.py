"""The user's settings (not the distribution's): mirrors, read from the XDG config dir."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import located, typed
from .errors import XenspinError
from .typed import field


@dataclass(frozen=True)
class Config:
    """~/.config/xenspin/config.yaml: settings of this machine, not of the distribution."""

    mirrors: dict[str, str] = field("URL prefix -> replacement prefix, like git's url.X.insteadOf", factory=dict)
    store: str = field("store directory (default $XDG_CACHE_HOME/xenspin/store)", "")


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "xenspin" / "config.yaml"


def load(path: Path | None = None) -> Config:
    """The user's config, or the defaults when the file does not exist."""
    path = path or config_path()
    if not path.exists():
        return Config()
    raw = located.load(path)
    return typed.parse_dataclass(Config, raw, raw.loc, "")


def parse_mirror(text: str) -> tuple[str, str]:
    """A --mirror FROM=TO option."""
    src, sep, dst = text.partition("=")
    if not sep or not src or not dst:
        raise XenspinError(f"--mirror {text!r}: expected FROM=TO (e.g. https://github.com/=file:///srv/git/)")
    return src, dst
