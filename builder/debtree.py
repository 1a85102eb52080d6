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
from .run import CommandError, as_builder, builder, give, run

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


def compose(spec: TreeSpec, repo: Path, work: Path, log_path: Path, hide: Sequence[Path]) -> Path:
    """mmdebstrap spec from repo alone into work/tree, in a user namespace; the tree's path.

    mmdebstrap's unshare mode: dpkg and every maintainer script run as root only inside
    a user namespace of the build account (the caller, or `xenspin` when xenspin runs
    as root), never as the host's root. The tree belongs to that namespace (its files
    are owned by the account's subordinate ids): work on it with `in_namespace`.
    """
    if not AUTOMOUNT.is_dir():
        raise TreeError(f"compose: {AUTOMOUNT} is missing (mmdebstrap >= 1.3 needed; run `xenspin setup`)")
    who = builder()
    give(work, who)
    tree = work / "tree"
    cmd = [
        "mmdebstrap",
        "--mode=unshare",
        f"--variant={spec.variant}",
        "--format=directory",
        "--include=" + ",".join(spec.packages),
        "--aptopt=Apt::Install-Recommends false",
        *(f"--dpkgopt={o}" for o in DPKG_OPTIONS),
        f"--dpkgopt={BUILD_ONLY}",
        f"--hook-dir={AUTOMOUNT}",
        spec.suite,
        tree,
        f"deb [trusted=yes] file://{repo} ./",
    ]
    env = {"SOURCE_DATE_EPOCH": str(spec.epoch), "LC_ALL": "C.UTF-8", "TMPDIR": str(work), "HOME": str(work)}
    try:
        run(
            as_builder(cmd, who, reach=[work], hide=hide),
            what="rootfs: mmdebstrap",
            log_path=log_path,
            env=env,
            inherit_env=False,
        )
    except CommandError as e:
        raise TreeError(str(e)) from None
    return tree


def in_namespace(cmd: Sequence[str], work: Path, log_path: Path, hide: Sequence[Path], what: str) -> None:
    """cmd as root of the build account's user namespace (the mapping mmdebstrap made the tree with)."""
    who = builder()
    try:
        run(
            as_builder(["mmdebstrap", "--unshare-helper", *cmd], who, reach=[work], hide=hide),
            what=what,
            log_path=log_path,
            env={"LC_ALL": "C.UTF-8", "TMPDIR": str(work), "HOME": str(work)},
            inherit_env=False,
        )
    except CommandError as e:
        raise TreeError(str(e)) from None
