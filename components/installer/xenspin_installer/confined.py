"""Names inside a tree the installer did not make, resolved as a chroot of that tree would.

The target's root filesystem comes from the squashfs, that is from the distribution's
packages, overlays and hooks; the install medium and the answer disk come from whoever
made them. A symlink in such a tree names a path *of that tree* (`boot/vmlinuz-zzz ->
/etc/shadow`, `etc -> /`), but the installer sees the tree mounted under a directory of
the live system, where the kernel would resolve the link against the live system: a
copy would read the live system's file (or a device: a whole disk) into the target, a
write would land outside the target.

So every name the installer itself reads, writes, copies, creates or removes in such
a tree goes through resolve(): a symlink is followed the way it would be after
chroot(2) into the tree (an absolute target starts again at the tree's root, `..`
stops at it), so the result is always a path inside the tree. What is then not what
the caller needs (no regular file where one is read, a link loop) is refused with
one line. Writes go through a fresh temporary name (O_EXCL, O_NOFOLLOW) renamed over
the final one, so a planted symlink there is replaced, never written through.

Commands run with `chroot` resolve names in the tree by themselves and need none of this.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path, PurePosixPath

from . import InstallerError

MAX_LINKS = 40  # as the kernel's limit on links followed in one lookup


class Refused(InstallerError):
    """A name in a tree that does not resolve, inside it, to what the installer needs."""


def _parts(rel: str | os.PathLike[str]) -> list[str]:
    return [p for p in PurePosixPath(rel).parts if p != "/"]


def resolve(root: Path, rel: str | os.PathLike[str], *, follow: bool = True) -> Path:
    """root/rel with every symlink on the way resolved inside root, as in a chroot of root.

    follow=False leaves a symlink in the last place as it is (to remove or replace it).
    Names that do not exist are kept as written (a file or directory about to be made).
    The result never leaves root (root itself is trusted as given).
    """
    todo = list(reversed(_parts(rel)))  # a stack: the next name on top
    done: list[str] = []  # names that exist and are no symlinks (or do not exist): `..` may pop them
    links = 0
    while todo:
        part = todo.pop()
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        here = root.joinpath(*done, part)
        try:
            st = os.lstat(here)
        except (FileNotFoundError, NotADirectoryError):
            done.append(part)
            continue
        if stat.S_ISLNK(st.st_mode) and (todo or follow):
            links += 1
            if links > MAX_LINKS:
                raise Refused(f"{root}: {PurePosixPath(rel)}: too many levels of symbolic links")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            todo.extend(reversed(_parts(target)))
            continue
        done.append(part)
    return root.joinpath(*done)


def _kind(path: Path) -> str:
    mode = _lstat_mode(path)
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a fifo"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "missing"


def _refusal(root: Path, rel: str | os.PathLike[str], got: Path, want: str = "a regular file") -> Refused:
    """One line: what was asked, what it is inside root, and the link that led there."""
    asked = root.joinpath(*_parts(rel))
    try:
        target = os.readlink(asked)
    except OSError:
        return Refused(f"{asked}: {_kind(got)}, not {want}; refusing it")
    return Refused(
        f"{asked}: a symlink to {target}, which inside {root} is {_kind(got)}, not {want} "
        "(links are followed only inside their tree); refusing it"
    )


def regular(root: Path, rel: str | os.PathLike[str]) -> Path:
    """The regular file root/rel names inside root; Refused for anything else (missing, a device, a loop)."""
    got = resolve(root, rel)
    if not stat.S_ISREG(_lstat_mode(got)):
        raise _refusal(root, rel, got)
    return got


def _lstat_mode(path: Path) -> int:
    try:
        return os.lstat(path).st_mode
    except OSError:
        return 0


def is_file(root: Path, rel: str | os.PathLike[str]) -> bool:
    return stat.S_ISREG(_lstat_mode(resolve(root, rel)))


def read_bytes(root: Path, rel: str | os.PathLike[str], limit: int | None = None) -> bytes:
    """The content of the regular file root/rel names inside root (at most limit bytes are read)."""
    with _open_regular(root, rel) as f:
        return f.read() if limit is None else f.read(limit)


def _open_regular(root: Path, rel: str | os.PathLike[str]):
    path = regular(root, rel)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:  # swapped for a link or a fifo since it was resolved
        raise Refused(f"{path}: cannot open it as a regular file: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _refusal(root, rel, path)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def mkdirs(root: Path, rel: str | os.PathLike[str]) -> Path:
    """Make the directory root/rel names inside root (and its parents); returns it."""
    path = resolve(root, rel)
    path.mkdir(parents=True, exist_ok=True)
    if resolve(root, rel) != path:  # a parent made just now cannot be a link; a race with the tree's own code
        raise Refused(f"{root}: {PurePosixPath(rel)}: changed while it was made")
    return path


def _temporary(directory: Path, name: str, mode: int) -> tuple[int, Path]:
    tmp = directory / f"{name}.xenspin-tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left by an earlier try or planted: a link is removed, never followed
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    return os.open(tmp, flags, mode), tmp


def write_bytes(root: Path, rel: str | os.PathLike[str], data: bytes, mode: int | None = 0o644) -> Path:
    """Write root/rel (inside root) through a temporary name; never half-written, never through a link.

    mode None keeps the mode of the file being replaced (0644 for a new one).
    """
    path = resolve(root, rel, follow=False)
    mkdirs(root, path.parent.relative_to(root))
    if mode is None:
        mode = stat.S_IMODE(os.lstat(path).st_mode) if stat.S_ISREG(_lstat_mode(path)) else 0o644
    fd, tmp = _temporary(path.parent, path.name, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def copy_file(
    src_root: Path,
    src_rel: str | os.PathLike[str],
    dst_root: Path,
    dst_rel: str | os.PathLike[str],
    mode: int | None = None,
) -> Path:
    """Copy the regular file src_rel of src_root (resolved inside it) to dst_rel of dst_root (resolved inside it).

    The copy keeps the source's permission bits (or takes mode) and its times, as shutil.copy2.
    """
    with _open_regular(src_root, src_rel) as src:
        st = os.fstat(src.fileno())
        path = resolve(dst_root, dst_rel, follow=False)
        mkdirs(dst_root, path.parent.relative_to(dst_root))
        fd, tmp = _temporary(path.parent, path.name, 0o600)
        try:
            with os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
                os.fchmod(dst.fileno(), stat.S_IMODE(st.st_mode) & 0o777 if mode is None else mode)
                os.utime(dst.fileno(), ns=(st.st_atime_ns, st.st_mtime_ns))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


def copy_tree(src_root: Path, src_rel: str | os.PathLike[str], dst_root: Path, dst_rel: str | os.PathLike[str]) -> int:
    """Copy the directory src_rel of src_root to dst_rel of dst_root; returns the number of files.

    Files and directories are copied; a symlink is copied as the regular file it names
    inside src_root (a link to anything else, a directory included, is refused), as are
    devices, fifos and sockets.
    """
    top = resolve(src_root, src_rel)
    if not stat.S_ISDIR(_lstat_mode(top)):
        raise _refusal(src_root, src_rel, top, "a directory")
    count = 0
    todo = [(top.relative_to(src_root).as_posix(), PurePosixPath(dst_rel))]
    while todo:
        src_dir, dst_dir = todo.pop()
        mkdirs(dst_root, dst_dir)
        with os.scandir(resolve(src_root, src_dir)) as entries:
            names = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in entries)
        for name, is_dir in names:
            if is_dir:
                todo.append((f"{src_dir}/{name}", dst_dir / name))
            else:
                copy_file(src_root, f"{src_dir}/{name}", dst_root, dst_dir / name)
                count += 1
    return count


def remove(root: Path, rel: str | os.PathLike[str]) -> None:
    """Remove root/rel (inside root): a file, a symlink (not what it names) or a whole directory."""
    path = resolve(root, rel, follow=False)
    mode = _lstat_mode(path)
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)  # never follows the links inside
    elif mode:
        path.unlink()
