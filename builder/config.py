"""The user's settings (not the distribution's): the config file and the environment, read here only."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import dataschema, yamlfile
from .dataschema import field
from .errors import XenspinError


@dataclass(frozen=True)
class CacheConfig:
    """The remote cache this machine shares stage outputs and sources through (docs/cache.md)."""

    url: str = field(
        "http(s)://HOST[:PORT]/PATH (Bazel's HTTP cache protocol: nginx with WebDAV, bazel-remote) or s3://BUCKET[/PREFIX]",
        "",
    )
    endpoint: str = field("s3:// only: the endpoint URL of an S3-compatible store (default: boto3's own)", "")
    read_only: bool = field(
        "only read the cache, never write it (for clients whose builds others must not take)", False
    )
    trust: Literal["any", "signed"] = field(
        "which records to use: any, or only those signed by a key of keyring", "any"
    )
    keyring: list[str] = field(
        "armored OpenPGP public keys whose signatures `trust: signed` accepts (relative to this file)", factory=list
    )
    sign_key: str = field(
        "OpenPGP key of $GNUPGHOME that signs the records this machine writes (e.g. the release key)", ""
    )
    host_id: str = field("the name the records this machine writes give as their maker (default: the host name)", "")


@dataclass(frozen=True)
class Config:
    """~/.config/xenspin/config.yaml: settings of this machine, not of the distribution."""

    mirrors: dict[str, str] = field("URL prefix -> replacement prefix, like git's url.X.insteadOf", factory=dict)
    store: str = field("store directory (default $XDG_CACHE_HOME/xenspin/store)", "")
    sign_key: str = field(
        "OpenPGP key (fingerprint, id or address in $GNUPGHOME) that signs each build's SHA256SUMS", ""
    )
    cache: CacheConfig = field("the remote cache shared with other machines", factory=CacheConfig)


def default_store() -> Path:
    """$XDG_CACHE_HOME/xenspin/store (~/.cache/xenspin/store)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "xenspin" / "store"


def epoch_from_env() -> int | None:
    """$SOURCE_DATE_EPOCH when it is a number, else None: the one place it is read."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(value) if value.isdigit() else None


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "xenspin" / "config.yaml"


def load(path: Path | None = None) -> Config:
    """The user's config, or the defaults when the file does not exist."""
    path = path or config_path()
    if not path.exists():
        return Config()
    raw = yamlfile.load(path)
    cfg = dataschema.parse_dataclass(Config, raw, raw.loc, "")
    keys = [str(path.parent / os.path.expanduser(k)) for k in cfg.cache.keyring]
    return dataclasses.replace(cfg, cache=dataclasses.replace(cfg.cache, keyring=keys))


def parse_mirror(text: str) -> tuple[str, str]:
    """A --mirror FROM=TO option."""
    src, sep, dst = text.partition("=")
    if not sep or not src or not dst:
        raise XenspinError(f"--mirror {text!r}: expected FROM=TO (e.g. https://github.com/=file:///srv/git/)")
    return src, dst
