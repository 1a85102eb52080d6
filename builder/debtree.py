"""Every Debian tree xenspin makes, with the one mmdebstrap caller.

One spec type (`TreeSpec`), three uses:
- build roots: composed offline from their locked sets' .debs, kept in the store as a
  lazy stage keyed by those .debs; components with the same build-depends share one root;
- the rootfs base: composed offline from a flat repository of exactly the locked and
  built .debs;
Both never read the archive: the same lock gives the same tree after it has moved on.
- apt's answer for a package set: `mmdebstrap --simulate` over a repository of the
  verified index (nothing installed, nothing run).

mmdebstrap's unshare mode: dpkg and every maintainer script run as root only inside a
user namespace of the build account (the caller, or `xenspin` when xenspin runs as
root), never as the host's root. Such a tree belongs to that namespace (its files are
owned by the account's subordinate ids): work on it with `in_namespace`.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import aptrepo
from .context import Context
from .errors import XenspinError
from .run import CommandError, as_builder, builder, give, run
from .stage import Stage, stage_key

ROOT_FORMAT = 3  # bump when what a build root holds changes (2: made in the build account's user namespace; 3: composed from its locked set)
MOUNTS = ("/src", "/srcpkg", "/out", "/debs", "/build")  # a build root's mount points for the sandbox
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
    """A Debian tree cannot be had (offline, or mmdebstrap failed)."""


@dataclass(frozen=True)
class LockedDeb:
    """One .deb of a locked set, as a build root's key and its local repository name it."""

    name: str
    version: str
    architecture: str
    filename: str  # the archive's pool path
    sha256: str


@dataclass(frozen=True)
class TreeSpec:
    """A Debian tree: its packages and variant; for a build root, the locked .debs it is composed from."""

    suite: str
    variant: str
    packages: tuple[str, ...]
    debs: tuple[LockedDeb, ...] = ()  # a build root's locked set (packagesets.root_tree)
    set: str = ""  # that set's name in the lock

    def inputs(self) -> dict[str, Any]:
        """The canonical inputs of a build root's key: the locked .debs, never the archive's state."""
        return {
            "mounts": MOUNTS,
            "variant": self.variant,
            "packages": self.packages,
            "debs": [(d.name, d.version, d.architecture, d.sha256) for d in self.debs],
        }

    @property
    def key(self) -> str:
        return stage_key(ROOT_FORMAT, self.inputs())


def _mmdebstrap(
    spec: TreeSpec,
    target: Path | str,
    sources: Sequence[str],
    options: Sequence[str],
    *,
    work: Path,
    what: str,
    log_path: Path,
    hide: Sequence[Path] = (),
    env: Mapping[str, str] | None = None,
    simulate: bool = False,
) -> subprocess.CompletedProcess[bytes]:
    """The one mmdebstrap call: spec's tree at target from sources.

    A simulation only asks apt (as this process, nothing installed); anything else
    runs in the build account's user namespace, seeing work and not the store.
    """
    cmd = ["mmdebstrap", "--simulate", "--mode=root"] if simulate else ["mmdebstrap", "--mode=unshare"]
    cmd += [f"--variant={spec.variant}", *options]
    if spec.packages:
        cmd.append("--include=" + ",".join(spec.packages))
    cmd += [spec.suite, str(target), *sources]
    if simulate:
        return run(cmd, what=what, capture=True, log_path=log_path, check=False)
    who = builder()
    give(work, who)
    environ = {"LC_ALL": "C.UTF-8", "TMPDIR": str(work), "HOME": str(work), **(env or {})}
    return run(
        as_builder(cmd, who, reach=[work], hide=hide), what=what, log_path=log_path, env=environ, inherit_env=False
    )


# --- build roots: composed from their locked sets, kept in the store --------------------------


def root_stage(ctx: Context, spec: TreeSpec, say: Callable[[str], None]) -> Stage:
    """The stage making a build root: lazy, so a build found in the store never makes its root again."""
    return Stage(
        kind="buildroot",
        name=_name(spec),
        format=ROOT_FORMAT,
        inputs=lambda _needs: spec.inputs(),
        make=lambda tmp, _needs: make_root(ctx, spec, tmp, say),
        lazy=True,
    )


def root_stage_id(spec: TreeSpec) -> str:
    return f"buildroot:{_name(spec)}"


def _name(spec: TreeSpec) -> str:
    return spec.key[:16]


def make_root(ctx: Context, spec: TreeSpec, tmp: Path, say: Callable[[str], None]) -> dict:
    """Compose the root at tmp/root from its locked .debs in the store (no network); the object records that top."""
    short = _name(spec)[:12]
    asked = ", ".join(spec.packages) or spec.variant
    if not spec.debs:
        raise TreeError(f"build root {short} ({asked}): its package set is not locked; run `xenspin lock`")
    say(f"build root {short}: compose {len(spec.debs)} locked packages ({asked})")
    debs = aptrepo.locked_debs(
        ctx.store, [(d.name, d.version, d.filename, d.sha256) for d in spec.debs], f"build root {short}"
    )
    repo = aptrepo.local(debs, tmp / "repo", spec.suite, "xenspin-buildroot")
    try:
        compose(
            TreeSpec(suite=spec.suite, variant=spec.variant, packages=tuple(d.name for d in spec.debs)),
            repo,
            tmp / "root",
            tmp,
            ctx.store.log_dir("buildroot", short + ".log"),
            hide=[ctx.store.root],
            what=f"build root {short}",
            options=[
                "--quiet",
                "--customize-hook=mkdir -p " + " ".join(f'"$1{m}"' for m in MOUNTS),
                '--customize-hook=rm -rf "$1/var/cache/apt"/*.bin "$1/var/lib/apt/lists"/*_*',
            ],
        )
    finally:
        shutil.rmtree(tmp / "repo", ignore_errors=True)
    return {"top": "root", "packages": list(spec.packages), "set": spec.set}


# --- trees from a local repository: the rootfs, and apt's resolution ------------------------


def compose(
    spec: TreeSpec,
    repo: Path,
    tree: Path,
    work: Path,
    log_path: Path,
    hide: Sequence[Path],
    *,
    what: str,
    options: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Path:
    """spec's tree from the flat repository repo alone, at tree (inside work); the tree's path.

    The rootfs and every build root are made this way: no archive is read, so the same
    lock gives the same tree after the archive has moved on. mmdebstrap reads a file://
    repository only through its file-mirror-automount hook, and the repository's line
    does not stay in the image.
    """
    if not AUTOMOUNT.is_dir():
        raise TreeError(f"compose: {AUTOMOUNT} is missing (mmdebstrap >= 1.3 needed; run `xenspin setup`)")
    try:
        _mmdebstrap(
            spec,
            tree,
            [f"deb [trusted=yes] file://{repo} ./"],
            ["--format=directory", "--aptopt=Apt::Install-Recommends false", *options] + [f"--hook-dir={AUTOMOUNT}"],
            work=work,
            what=what,
            log_path=log_path,
            hide=hide,
            env=env,
        )
    except CommandError as e:
        raise TreeError(str(e)) from None
    return tree


def simulate(spec: TreeSpec, repo: Path, scratch: Path, log_path: Path, what: str) -> tuple[int, str]:
    """apt's plan for spec over the flat repository repo: (exit status, its output with the `Inst` lines)."""
    proc = _mmdebstrap(
        spec,
        scratch / "none.tar",
        [f"deb [trusted=yes] file://{repo} ./"],
        ["--verbose"],
        work=scratch,
        what=what,
        log_path=log_path,
        simulate=True,
    )
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")  # apt's Inst lines come on stderr


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
