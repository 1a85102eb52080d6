"""A Debian tree composed offline: mmdebstrap over a flat apt repository of exactly the given .debs.

The repository holds the locked .debs from the store and the built ones; nothing
comes from the network, so the same lock gives the same tree after the archive has
moved on. mmdebstrap reads a file:// repository only through its file-mirror-automount
hook, and the repository's line must not stay in the image: the image gets the base
archive's lines instead (for `apt-get update` on a running host).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import XenspinError
from .packagesets import write_release
from .run import CommandError, run

AUTOMOUNT = Path("/usr/share/mmdebstrap/hooks/file-mirror-automount")

# A dom0 is an appliance: no manuals, docs or translations (62 MB of the tree), copyright files kept.
# mmdebstrap also writes these to the image's dpkg.cfg.d, so later installs keep to them.
DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)
BUILD_ONLY = "force-unsafe-io"  # no fsync per file while composing: the tree is thrown away on failure


class TreeError(XenspinError):
    pass


@dataclass(frozen=True)
class TreeSpec:
    """What goes into the tree: suite, variant, package names (all present in the repository), apt lines."""

    suite: str
    variant: str
    packages: tuple[str, ...]
    sources: tuple[str, ...]  # sources.list lines the finished image keeps
    epoch: int


def local_repo(debs: Sequence[tuple[str, Path]], dest: Path, suite: str, origin: str) -> Path:
    """A flat apt repository at dest holding these .debs (hard links, by file name), with Packages and Release."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, deb in debs:
        target = dest / name
        if target.exists():
            raise TreeError(f"local repository: two .debs named {name}")
        try:
            os.link(deb, target)
        except OSError:
            shutil.copy2(deb, target)
    packages = run(["apt-ftparchive", "packages", "."], what="local repository: Packages", cwd=dest, capture=True)
    (dest / "Packages").write_bytes(packages.stdout)
    write_release(dest, suite, origin)
    return dest


def compose(spec: TreeSpec, repo: Path, tree: Path, log_path: Path) -> None:
    """mmdebstrap spec into the directory tree from repo alone; the repo's traces removed after."""
    if not AUTOMOUNT.is_dir():
        raise TreeError(f"compose: {AUTOMOUNT} is missing (mmdebstrap >= 1.3 needed; run `xenspin setup`)")
    sources = "\n".join(spec.sources) + "\n"
    cmd = [
        "mmdebstrap",
        "--mode=root",
        f"--variant={spec.variant}",
        "--format=directory",
        "--include=" + ",".join(spec.packages),
        "--aptopt=Apt::Install-Recommends false",
        *(f"--dpkgopt={o}" for o in DPKG_OPTIONS),
        f"--dpkgopt={BUILD_ONLY}",
        f"--hook-dir={AUTOMOUNT}",
        # The image names the real archive, never the build's file:// repository.
        f'--customize-hook=printf %s {_sh_quote(sources)} > "$1/etc/apt/sources.list"',
        spec.suite,
        str(tree),
        f"deb [trusted=yes] file://{repo} ./",
    ]
    env = {"SOURCE_DATE_EPOCH": str(spec.epoch), "LC_ALL": "C.UTF-8"}
    try:
        run(cmd, what="rootfs: mmdebstrap", log_path=log_path, env=env)
    except CommandError as e:
        raise TreeError(str(e)) from None
    _drop_mountpoint(tree, repo)
    _drop_build_only(tree)


def _drop_build_only(tree: Path) -> None:
    """The image keeps the path excludes mmdebstrap wrote to dpkg.cfg.d, but not the build's unsafe io."""
    cfg = tree / "etc/dpkg/dpkg.cfg.d/99mmdebstrap"
    if cfg.is_file():
        kept = [line for line in cfg.read_text().splitlines() if line.strip() != BUILD_ONLY]
        cfg.write_text("".join(line + "\n" for line in kept))


def _drop_mountpoint(tree: Path, repo: Path) -> None:
    """The automount hook leaves the repository's (now empty) mount point directories in the tree."""
    inside = tree / str(repo).lstrip("/")
    while inside != tree and inside.is_dir() and not inside.is_symlink() and not any(inside.iterdir()):
        inside.rmdir()
        inside = inside.parent


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
