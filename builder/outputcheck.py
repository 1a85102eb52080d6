"""What a build step may leave behind: checked before anything it made reaches the store.

A step is untrusted code. Its $DEBS may hold only regular .deb files that dpkg-deb
reads, of packages the recipe declares, for the distribution's architecture (or
all); its $OUT no device nodes, fifos or sockets, no setuid/setgid file the recipe
does not name, and no symlink that climbs out of the tree. Anything else is refused
with one line naming the component, the step and the file, and nothing is committed.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import tarfile
from collections.abc import Collection, Iterator
from pathlib import Path

from .errors import XenspinError
from .run import CommandError, run, stream


class OutputRefused(XenspinError):
    """A step left something in $OUT or $DEBS that is not allowed there."""


def kind_of(mode: int) -> str:
    """What a file of this st_mode is, for messages: "a fifo", "a device node", "a symlink"."""
    kinds = (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISFIFO, "a fifo"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device node"),
        (stat.S_ISBLK, "a device node"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def check(
    component: str,
    step: str,
    out: Path,
    debs: Path,
    *,
    packages: Collection[str],
    architecture: str,
    setuid: Collection[str] = (),
) -> None:
    """Refuse what the step left in out ($OUT) and debs ($DEBS) that breaks the rules above."""
    what = f"build {component}: step {step}"
    check_out(what, out, setuid)
    check_debs(what, debs, packages, architecture, setuid)


def check_out(what: str, out: Path, setuid: Collection[str] = ()) -> None:
    for dirpath, dirs, files in os.walk(out):
        for name in dirs + files:
            path = Path(dirpath, name)
            rel = path.relative_to(out).as_posix()
            st = path.lstat()
            mode = st.st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                raise OutputRefused(f"{what}: $OUT/{rel} is a device node (not allowed in $OUT)")
            if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                raise OutputRefused(f"{what}: $OUT/{rel} is a fifo or socket (not allowed in $OUT)")
            if stat.S_ISLNK(mode):
                if leaves(out, path):
                    target = os.readlink(path)
                    raise OutputRefused(f"{what}: $OUT/{rel} is a symlink to {target}, which leaves $OUT")
                continue
            if mode & (stat.S_ISUID | stat.S_ISGID) and rel not in setuid:
                raise OutputRefused(f"{what}: $OUT/{rel} is setuid or setgid (the recipe's setuid: does not name it)")


def leaves(root: Path, link: Path) -> bool:
    """Whether a symlink under root climbs above root, reading root as the installed system's /.

    An absolute target (/etc/alternatives/x) names a path of the system the package is
    installed on, so it stays inside; a relative one may not climb past the top.
    """
    target = os.readlink(link)
    if os.path.isabs(target):
        return False
    rel_dir = link.parent.relative_to(root)
    resolved = os.path.normpath(os.path.join(rel_dir, target))
    return resolved == ".." or resolved.startswith("../")


def check_debs(
    what: str, debs: Path, packages: Collection[str], architecture: str, setuid: Collection[str] = ()
) -> None:
    for path in sorted(debs.iterdir()):
        name = path.name
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise OutputRefused(f"{what}: $DEBS/{name} is {kind} (expected only .deb files)")
        if not name.endswith(".deb"):
            raise OutputRefused(f"{what}: $DEBS/{name} is not a .deb (expected only .deb files)")
        proc = run(
            ["dpkg-deb", "--field", path, "Package", "Architecture"],
            what=f"{what}: read $DEBS/{name}",
            capture=True,
            check=False,
        )
        fields = dict(line.split(": ", 1) for line in proc.stdout.decode(errors="replace").splitlines() if ": " in line)
        if proc.returncode != 0 or "Package" not in fields:
            raise OutputRefused(f"{what}: $DEBS/{name} is not a package dpkg-deb can read")
        package, arch = fields["Package"].strip(), fields.get("Architecture", "").strip()
        if package not in packages:
            declared = ", ".join(sorted(packages)) or "none"
            raise OutputRefused(
                f"{what}: $DEBS/{name} is package {package!r}, which the recipe does not declare (debs: {declared})"
            )
        if arch not in (architecture, "all"):
            raise OutputRefused(f"{what}: $DEBS/{name} is for architecture {arch!r} (expected {architecture} or all)")
        check_deb_members(what, path, f"$DEBS/{name}", setuid)


def check_deb_members(what: str, deb: Path, shown: str, setuid: Collection[str] = ()) -> None:
    """The members of a .deb, read as tar streams from dpkg-deb and never extracted.

    Its control part (DEBIAN) holds regular files only; its data no device node or fifo,
    and no setuid or setgid file or directory the recipe's setuid: does not name (a hard
    link to one counts as one). shown names the .deb in messages.
    """
    allowed = {posixpath.normpath(s.strip("/")) for s in setuid}
    with _tar(what, deb, shown, "--ctrl-tarfile") as tar:
        for member in tar:
            if _rel(member.name) == "." and member.isdir():
                continue
            if not member.isreg():
                raise OutputRefused(
                    f"{what}: {shown}: DEBIAN/{printable(_rel(member.name))} is {_tar_kind(member)}"
                    " (expected only regular files in a package's control part)"
                )
    modes: dict[str, int] = {}
    with _tar(what, deb, shown, "--fsys-tarfile") as tar:
        for member in tar:
            rel = _rel(member.name)
            if member.ischr() or member.isblk() or member.isfifo():
                raise OutputRefused(
                    f"{what}: {shown}: /{printable(rel)} is {_tar_kind(member)} (not allowed in a package a step makes)"
                )
            if member.issym():
                continue
            mode = modes.get(_rel(member.linkname), 0) if member.islnk() else member.mode
            modes[rel] = mode
            if mode & (stat.S_ISUID | stat.S_ISGID) and rel not in allowed:
                raise OutputRefused(
                    f"{what}: {shown}: /{printable(rel)} is setuid or setgid (the recipe's setuid: does not name it)"
                )


@contextlib.contextmanager
def _tar(what: str, deb: Path, shown: str, part: str) -> Iterator[tarfile.TarFile]:
    """One part of a .deb as a tar stream from dpkg-deb (never extracted); refused if it cannot be read."""
    try:
        with (
            stream(["dpkg-deb", part, deb], what=f"{what}: read {shown}") as f,
            tarfile.open(fileobj=f, mode="r|") as tar,
        ):
            yield tar
    except (CommandError, tarfile.TarError):
        raise OutputRefused(f"{what}: {shown} is not a package dpkg-deb can read") from None


def _rel(name: str) -> str:
    """A tar member's path relative to the package's root: './usr/bin/x' -> 'usr/bin/x', './' -> '.'."""
    return posixpath.normpath("./" + name.lstrip("/"))


def printable(name: str) -> str:
    """A file name as a message shows it: as is, or quoted when it holds a newline or other control."""
    return name if name.isprintable() else repr(name)


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.ischr() or member.isblk():
        return "a device node"
    if member.isfifo():
        return "a fifo"
    if member.issym():
        return f"a symlink to {printable(member.linkname)}"
    if member.islnk():
        return "a hard link"
    if member.isdir():
        return "a directory"
    return "not a regular file"
