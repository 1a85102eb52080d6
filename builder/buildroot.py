"""Debian trees made by mmdebstrap from the locked archive: build roots (and the rootfs base alike).

A root is keyed by the archives it comes from, the locked archive state, the
variant and the package list; components with the same build-depends share one
root, made once and kept in the store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .context import Context
from .errors import XenspinError
from .run import as_builder, builder, give, run
from .sources import FetchError, module
from .stage import Stage, stage_key

FORMAT = 2  # bump when what a root holds changes (2: made in the build account's user namespace)
MOUNTS = ("/src", "/srcpkg", "/out", "/debs", "/build")


class BuildRootError(XenspinError):
    """A build root cannot be had (offline, or mmdebstrap failed)."""


@dataclass(frozen=True)
class RootSpec:
    """A Debian tree: the archive state and the packages in it."""

    archives: tuple[tuple[str, str], ...]  # (mirror, suite): the base suite, then update suites
    areas: tuple[str, ...]
    archive: str  # the locked InRelease sha256s (archive_ident)
    variant: str
    packages: tuple[str, ...]

    def sources(self, url: Callable[[str], str]) -> list[str]:
        """mmdebstrap's mirror arguments: one sources.list line per suite, mirrors mapped by url."""
        return [f"deb {url(mirror)} {suite} {' '.join(self.areas)}" for mirror, suite in self.archives]

    def inputs(self) -> dict[str, Any]:
        """The canonical inputs of the root's key."""
        return {"mounts": MOUNTS, **dataclasses.asdict(self)}

    @property
    def key(self) -> str:
        return stage_key(FORMAT, self.inputs())


def archive_ident(state: dict[str, Any]) -> str:
    """The locked state of every suite in one string: their InRelease sha256s."""
    shas = [state.get("inrelease-sha256", "")] + [u.get("inrelease-sha256", "") for u in state.get("updates", [])]
    return ",".join(shas) if any(shas) else ""


def spec(base: Any, archive_state: dict[str, Any], packages: list[str], variant: str = "minbase") -> RootSpec:
    """The root with packages, from the manifest's base archive at its locked state."""
    return RootSpec(
        archives=tuple(base.archives()),
        areas=tuple(base.areas),
        archive=archive_ident(archive_state),
        variant=variant,
        packages=tuple(sorted(set(packages))),
    )


def stage(ctx: Context, root: RootSpec, say: Callable[[str], None]) -> Stage:
    """The stage making root: lazy, so a build found in the store never makes its root again."""
    return Stage(
        kind="buildroot",
        name=_name(root),
        format=FORMAT,
        inputs=lambda _needs: root.inputs(),
        make=lambda tmp, _needs: make(ctx, root, tmp, say),
        lazy=True,
    )


def stage_id(root: RootSpec) -> str:
    return f"buildroot:{_name(root)}"


def _name(root: RootSpec) -> str:
    return root.key[:16]


def make(ctx: Context, root: RootSpec, tmp: Path, say: Callable[[str], None]) -> dict:
    """mmdebstrap root into tmp/root; the object records that top directory."""
    short = _name(root)[:12]
    if ctx.offline:
        raise BuildRootError(
            f"build root {short} ({', '.join(root.packages) or 'minbase'}) is not in the store "
            "and --offline forbids mmdebstrap"
        )
    suites = "+".join(suite for _, suite in root.archives)
    say(f"build root {short}: mmdebstrap {suites} {' '.join(root.packages)}")
    _check_archive(ctx, root, say)
    # Unshare mode: the packages' maintainer scripts run as root only in a user namespace
    # of the build account, whose root is the account's first subordinate id: that id
    # owns the tree (read-only in the sandbox; `store gc` removes it in such a namespace).
    give(tmp, who := builder())
    cmd = ["mmdebstrap", "--mode=unshare", f"--variant={root.variant}", "--quiet"]
    if root.packages:
        cmd.append("--include=" + ",".join(root.packages))
    cmd += [
        "--customize-hook=mkdir -p " + " ".join(f'"$1{m}"' for m in MOUNTS),
        '--customize-hook=rm -rf "$1/var/cache/apt"/*.bin "$1/var/lib/apt/lists"/*_*',
        root.archives[0][1],
        tmp / "root",
        *root.sources(ctx.url),
    ]
    run(
        as_builder(cmd, who, reach=[tmp], hide=[ctx.store.root]),
        what=f"build root {short}",
        log_path=ctx.store.log_dir("buildroot", short + ".log"),
        env={"LC_ALL": "C.UTF-8", "TMPDIR": str(tmp), "HOME": str(tmp)},
        inherit_env=False,
    )
    return {"top": "root", "packages": list(root.packages)}


def _check_archive(ctx: Context, root: RootSpec, say: Callable[[str], None]) -> None:
    """Say so when the archive has moved on since the lock: mmdebstrap can only use its current state."""
    if not root.archive:
        return
    try:
        now = module("debian").archive_state(ctx)
    except FetchError:
        return  # mmdebstrap will report an unreachable archive itself
    if archive_ident(now) != root.archive:
        suites = "+".join(suite for _, suite in root.archives)
        say(
            f"warning: {suites} changed since it was locked; build root {_name(root)[:12]} gets today's package versions"
        )
