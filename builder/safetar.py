"""Safe extraction of tar archives: nothing lands outside the destination.

Python 3.11.4 and later have tarfile's extraction filters; Debian 12's python3
(3.11.2) does not. Where they exist they are used; elsewhere the same rules are
applied member by member before extraction, so every supported Python refuses an
absolute path, a `..` escape, a link pointing out of the tree, or a device file.
"""

from __future__ import annotations

import copy
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

HAVE_FILTERS = hasattr(tarfile, "data_filter")


def extract(tar: tarfile.TarFile, dest: Path, *, exact_modes: bool = False) -> None:
    """Extract every member of tar into dest, refusing any that would escape it (tarfile.TarError).

    exact_modes keeps the archived permission bits but setuid/setgid/sticky and
    group/other write (tarfile's "tar" filter, for a git tree); otherwise the "data"
    filter's rules apply: files owner-writable, the archive's owners not applied.
    """
    if HAVE_FILTERS:
        tar.extractall(dest, filter="tar" if exact_modes else "data")
        return
    members = list(checked(tar, Path(dest), exact_modes=exact_modes))
    tar.extractall(dest, members=members, numeric_owner=True)


def checked(tar: tarfile.TarFile, dest: Path, *, exact_modes: bool) -> Iterator[tarfile.TarInfo]:
    """The members of tar, each checked and copied with safe metadata (the rules of tarfile's filters)."""
    root = os.path.realpath(dest)
    for member in tar.getmembers():
        name = member.name.lstrip("/")  # as the filters do: /etc/x lands at dest/etc/x
        target = os.path.realpath(os.path.join(root, name))
        if os.path.commonpath([root, target]) != root:
            raise tarfile.TarError(f"{name}: would be extracted outside the destination")
        if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
            raise tarfile.TarError(f"{name}: device or special file in the archive")
        if member.issym() or member.islnk():
            link = member.linkname
            if os.path.isabs(link):
                raise tarfile.TarError(f"{name}: link to the absolute path {link}")
            base = os.path.dirname(target) if member.issym() else root
            if os.path.commonpath([root, os.path.realpath(os.path.join(base, link))]) != root:
                raise tarfile.TarError(f"{name}: link {link} points outside the destination")
        safe = copy.copy(member)
        safe.name = name
        # Both filters drop setuid/setgid/sticky and group/other write; "data" also makes
        # files owner-readable and -writable and does not apply the archive's owners.
        mode = member.mode & 0o777 & ~0o022
        if not exact_modes:
            if member.isfile() or member.isdir():
                mode |= 0o600 if member.isfile() else 0o700
            safe.uid = safe.gid = 0
            safe.uname = safe.gname = ""
        safe.mode = mode
        yield safe


def extract_tree(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract a tree whose links are data (a project's overlays hold `/etc/localtime -> /usr/...`) into
    the empty directory dest: links are made, never followed, never written through.

    Only directories, regular files and symbolic links are taken, each below a directory the
    archive made earlier (so never below a link), with its exact permission bits; anything
    else is tarfile.TarError naming it. Owners are not applied.
    """
    dirs: dict[str, int] = {".": 0o755}
    for member in tar:
        name = os.path.normpath(member.name)
        parts = name.split("/")
        if name == ".":
            continue
        if name.startswith("/") or ".." in parts:
            raise tarfile.TarError(f"{member.name}: would be extracted outside the destination")
        parent = os.path.dirname(name) or "."
        if parent not in dirs:
            raise tarfile.TarError(f"{member.name}: its directory is not a directory of the archive (a link?)")
        path = os.path.join(dest, name)
        mode = member.mode & 0o7777
        if member.isdir():
            os.mkdir(path, 0o700)
            dirs[name] = mode
        elif member.issym():
            os.symlink(member.linkname, path)
        elif member.isfile():
            src = tar.extractfile(member)
            assert src is not None
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out, src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
                os.fchmod(out.fileno(), mode)
        else:
            raise tarfile.TarError(f"{member.name}: not a directory, regular file or symbolic link")
    for name, mode in sorted(dirs.items(), reverse=True):  # children first: a read-only directory last
        os.chmod(os.path.join(dest, name), mode)
