"""Every Debian tree xenspin makes, with the one mmdebstrap caller.

One spec type (`TreeSpec`), three uses:
- build roots: from the base archive at its locked state, kept in the store as a lazy
  stage keyed by the spec; components with the same build-depends share one root;
- the rootfs base: composed offline from a flat repository of exactly the locked and
  built .debs, so the same lock gives the same tree after the archive has moved on;
- apt's answer for a package set: `mmdebstrap --simulate` over a repository of the
  verified index (nothing installed, nothing run).

mmdebstrap's unshare mode: dpkg and every maintainer script run as root only inside a
user namespace of the build account (the caller, or `xenspin` when xenspin runs as
root), never as the host's root. Such a tree belongs to that namespace (its files are
owned by the account's subordinate ids): work on it with `in_namespace`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .context import Context
from .errors import XenspinError
from .run import CommandError, as_builder, builder, give, run
from .sources import FetchError, debian
from .stage import Stage, stage_key

ROOT_FORMAT = 2  # bump when what a build root holds changes (2: made in the build account's user namespace)
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
class TreeSpec:
    """A Debian tree: its packages and variant, and the archive state they come from.

    `archives` are (mirror, suite) pairs for a tree made from the network (the base
    suite first, then the suites laid over it); a tree composed from a local flat
    repository has none.
    """

    suite: str
    variant: str
    packages: tuple[str, ...]
    archives: tuple[tuple[str, str], ...] = ()
    areas: tuple[str, ...] = ()
    archive: str = ""  # the locked InRelease sha256s (debian.archive_ident)

    def sources(self, url: Callable[[str], str]) -> list[str]:
        """mmdebstrap's mirror arguments: one sources.list line per suite, mirrors mapped by url."""
        return [f"deb {url(mirror)} {suite} {' '.join(self.areas)}" for mirror, suite in self.archives]

    def inputs(self) -> dict[str, Any]:
        """The canonical inputs of a build root's key."""
        return {
            "mounts": MOUNTS,
            "archives": self.archives,
            "areas": self.areas,
            "archive": self.archive,
            "variant": self.variant,
            "packages": self.packages,
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


# --- build roots: from the archive, kept in the store ------------------------------------


def root_spec(base: Any, archive_state: dict[str, Any], packages: list[str], variant: str = "minbase") -> TreeSpec:
    """The root with packages, from the manifest's base archive at its locked state."""
    archives = tuple(base.archives())
    return TreeSpec(
        suite=archives[0][1],
        variant=variant,
        packages=tuple(sorted(set(packages))),
        archives=archives,
        areas=tuple(base.areas),
        archive=debian.archive_ident(archive_state),
    )


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
    """mmdebstrap the root into tmp/root; the object records that top directory."""
    short = _name(spec)[:12]
    if ctx.offline:
        raise TreeError(
            f"build root {short} ({', '.join(spec.packages) or 'minbase'}) is not in the store "
            "and --offline forbids mmdebstrap"
        )
    suites = "+".join(suite for _, suite in spec.archives)
    say(f"build root {short}: mmdebstrap {suites} {' '.join(spec.packages)}")
    _check_archive(ctx, spec, say)
    _mmdebstrap(
        spec,
        tmp / "root",
        spec.sources(ctx.url),
        [
            "--quiet",
            "--customize-hook=mkdir -p " + " ".join(f'"$1{m}"' for m in MOUNTS),
            '--customize-hook=rm -rf "$1/var/cache/apt"/*.bin "$1/var/lib/apt/lists"/*_*',
        ],
        work=tmp,
        what=f"build root {short}",
        log_path=ctx.store.log_dir("buildroot", short + ".log"),
        hide=[ctx.store.root],
    )
    return {"top": "root", "packages": list(spec.packages)}


def _check_archive(ctx: Context, spec: TreeSpec, say: Callable[[str], None]) -> None:
    """Say so when the archive has moved on since the lock: mmdebstrap can only use its current state."""
    if not spec.archive:
        return
    try:
        now = debian.archive_state(ctx)
    except FetchError:
        return  # mmdebstrap will report an unreachable archive itself
    if debian.archive_ident(now) != spec.archive:
        suites = "+".join(suite for _, suite in spec.archives)
        say(
            f"warning: {suites} changed since it was locked; build root {_name(spec)[:12]} gets today's package versions"
        )


# --- trees from a local repository: the rootfs, and apt's resolution ------------------------


def compose(spec: TreeSpec, repo: Path, work: Path, log_path: Path, hide: Sequence[Path], epoch: int) -> Path:
    """spec's tree from the flat repository repo alone, at work/tree; the tree's path.

    mmdebstrap reads a file:// repository only through its file-mirror-automount hook,
    and the repository's line does not stay in the image.
    """
    if not AUTOMOUNT.is_dir():
        raise TreeError(f"compose: {AUTOMOUNT} is missing (mmdebstrap >= 1.3 needed; run `xenspin setup`)")
    tree = work / "tree"
    try:
        _mmdebstrap(
            spec,
            tree,
            [f"deb [trusted=yes] file://{repo} ./"],
            [
                "--format=directory",
                "--aptopt=Apt::Install-Recommends false",
                *(f"--dpkgopt={o}" for o in DPKG_OPTIONS),
                f"--dpkgopt={BUILD_ONLY}",
                f"--hook-dir={AUTOMOUNT}",
            ],
            work=work,
            what="rootfs: mmdebstrap",
            log_path=log_path,
            hide=hide,
            env={"SOURCE_DATE_EPOCH": str(epoch)},
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
