"""Overlays and hooks: how vendors brand and extend the dom0 without forking xenspin.

An overlay is a directory laid over the tree in declared order: files owned by root,
modes kept, `NAME.j2` rendered with Jinja2 (StrictUndefined) to NAME. Everything is
read and rendered before any tree exists (`read`), so an undefined variable or a
symlink that climbs out of the rootfs fails in a second, not after mmdebstrap.
Hooks are scripts run in declared order with the tree as $1, each with its own log.

An overlay is untrusted input read on the host. Templates render in Jinja2's
immutable sandbox and load (include, import, extends) only regular files of their
own overlay, never through a symlink. Nothing is opened before lstat says it is a
regular file (a fifo or device would block or never end), and then only with
O_NOFOLLOW. A setuid or setgid file must be named in rootfs.setuid.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import stat
import traceback
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from . import lazyimport
from .errors import XenspinError
from .outputcheck import kind_of
from .store import sha256_json

jinja2 = lazyimport.module("jinja2")  # imported when an overlay has a template (see builder/lazyimport.py)
jinja2_sandbox = lazyimport.module("jinja2.sandbox")

# How a file an overlay or hook supplies is opened, once lstat said it is a regular file:
# never through a symlink, and never blocking (should it have become a fifo meanwhile).
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
SETID = stat.S_ISUID | stat.S_ISGID


class OverlayError(XenspinError):
    """An overlay or hook refused or failed: one line naming the file."""


@dataclass(frozen=True)
class Entry:
    """One thing an overlay puts in the tree, at a path relative to the tree's root."""

    path: PurePosixPath
    kind: str  # "dir", "file" or "symlink"
    mode: int
    data: bytes = b""  # a file's bytes (rendered for templates)
    target: str = ""  # a symlink's target
    origin: str = ""  # the overlay file it came from, for messages


# --- reading (pure: no tree needed) -----------------------------------------------------


def digest(overlays: list[Path], hooks: list[Path]) -> str:
    """The content of every overlay and hook (names, kinds, modes, bytes, link targets): part of the rootfs key."""
    items: list[Any] = []
    for root in overlays:
        for path in _walk(root):
            st = path.lstat()
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                items.append([str(root.name), rel, "l", os.readlink(path)])
            elif stat.S_ISDIR(st.st_mode):
                items.append([str(root.name), rel, "d", stat.S_IMODE(st.st_mode)])
            elif stat.S_ISREG(st.st_mode):
                items.append([str(root.name), rel, "f", stat.S_IMODE(st.st_mode), _sha256(path)])
            else:
                raise OverlayError(_not_allowed(path, st.st_mode))
    for hook in hooks:
        items.append(["hook", hook.name, _hook_sha256(hook)])
    return sha256_json(items)


def _not_allowed(path: Path, mode: int) -> str:
    return f"{path}: is {kind_of(mode)} (expected a regular file, directory or symlink in an overlay)"


@contextlib.contextmanager
def open_regular(path: Path, what: str = "an overlay") -> Iterator[IO[bytes]]:
    """path opened for reading if it is a regular file (lstat, then O_NOFOLLOW and fstat); else one line."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise OverlayError(f"{path}: is {kind_of(st.st_mode)} (expected a regular file in {what})")
        fd = os.open(path, OPEN_FLAGS)
    except OSError as e:
        raise OverlayError(f"{path}: {e.strerror} (expected a regular file in {what})") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # changed between lstat and open
            raise OverlayError(f"{path}: is {kind_of(mode)} (expected a regular file in {what})")
        yield f


def _sha256(path: Path, what: str = "an overlay") -> str:
    h = hashlib.sha256()
    with open_regular(path, what) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hook_sha256(hook: Path) -> str:
    """A hook's content; "" when it is missing (read_hook names it). A symlink is read at its
    target (the manifest confined that to the project), which must be a regular file."""
    if not os.path.lexists(hook):
        return ""
    real = Path(os.path.realpath(hook)) if hook.is_symlink() else hook
    return _sha256(real, "rootfs.hooks")


def read(overlays: list[Path], context: dict[str, Any], *, setuid: Collection[str] = ()) -> list[Entry]:
    """Every entry of the overlays in order, templates rendered; OverlayError names the first bad file.

    setuid: the image paths (/usr/bin/x) whose files may be setuid or setgid (rootfs.setuid).
    """
    entries: list[Entry] = []
    allowed = {"/" + p.strip("/") for p in setuid}
    for root in overlays:
        if not root.is_dir():
            raise OverlayError(f"{root}: overlay is not a directory")
        env = None  # made for the first template: Jinja2 is imported only when an overlay has one
        for path in _walk(root):
            rel = PurePosixPath(path.relative_to(root).as_posix())
            st = path.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                if _climbs_out(rel.parent, target):
                    raise OverlayError(f"{path}: symlink to {target} escapes the rootfs (expected a target inside it)")
                entries.append(Entry(rel, "symlink", 0o777, target=target, origin=str(path)))
            elif not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise OverlayError(_not_allowed(path, st.st_mode))
            else:
                template = stat.S_ISREG(st.st_mode) and rel.suffix == ".j2"
                dest = rel.with_suffix("") if template else rel
                if mode & SETID and f"/{dest}" not in allowed:
                    raise OverlayError(
                        f"{path}: setuid or setgid (mode {mode:04o}; rootfs.setuid does not name /{dest})"
                    )
                if stat.S_ISDIR(st.st_mode):
                    entries.append(Entry(rel, "dir", mode, origin=str(path)))
                elif template:
                    if env is None:
                        env = sandbox(root)
                    data = _render(env, rel.as_posix(), path, context)
                    entries.append(Entry(dest, "file", mode, data=data, origin=str(path)))
                else:
                    with open_regular(path) as f:
                        data = f.read()
                    entries.append(Entry(rel, "file", mode, data=data, origin=str(path)))
    return entries


# --- templates: Jinja2's sandbox, loading only the overlay's own regular files -----------


def sandbox(root: Path) -> Any:
    """The environment an overlay's templates render in: no attribute or call reaches Python's
    internals (jinja2.sandbox, immutable), and include/import/extends load only regular files
    inside root, never through a symlink (OverlayLoader)."""
    return jinja2_sandbox.ImmutableSandboxedEnvironment(
        loader=_loader_class()(root),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


@functools.cache
def _loader_class() -> type:
    """OverlayLoader, made on first use (a class of Jinja2's, and Jinja2 is imported lazily)."""

    class OverlayLoader(jinja2.BaseLoader):
        """Templates of one overlay: NAME resolved inside root as a chroot would, refusing what leaves it."""

        def __init__(self, root: Path) -> None:
            self.root = root

        def get_source(self, environment: Any, template: str) -> tuple[str, str, Any]:
            path, data = template_file(self.root, template)
            try:
                source = data.decode()
            except UnicodeDecodeError:
                raise OverlayError(f"{path}: not UTF-8 text (expected a template)") from None
            return source, str(path), lambda: True

    return OverlayLoader


def template_file(root: Path, name: str) -> tuple[Path, bytes]:
    """The path and bytes of template NAME of the overlay at root.

    NAME is relative to root ('etc/parts/motd.inc'); no absolute name, no '..', no
    symlink on the way (each component is looked at with lstat through a directory
    descriptor, never followed), and the last must be a regular file (opened with
    O_NOFOLLOW). A missing one is jinja2.TemplateNotFound, so `ignore missing` works.
    """
    parts = name.split("/")
    if name.startswith("/") or "\0" in name or any(p in ("", ".", "..") for p in parts):
        raise OverlayError(
            f"template {name!r}: not a path inside the overlay (expected a name relative to {root}, without '..')"
        )
    why = "templates load only regular files of their own overlay, never through a symlink"
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise OverlayError(f"{root}: {e.strerror} (expected an overlay directory)") from None
    try:
        for i, part in enumerate(parts):
            here = root.joinpath(*parts[: i + 1])
            try:
                mode = os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
            except (FileNotFoundError, NotADirectoryError):
                raise jinja2.TemplateNotFound(name) from None
            if i < len(parts) - 1:
                if not stat.S_ISDIR(mode):
                    raise OverlayError(f"{here}: is {kind_of(mode)} ({why})")
                sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = sub
                continue
            if not stat.S_ISREG(mode):
                raise OverlayError(f"{here}: is {kind_of(mode)} ({why})")
            with os.fdopen(os.open(part, OPEN_FLAGS, dir_fd=fd), "rb") as f:
                mode = os.fstat(f.fileno()).st_mode
                if not stat.S_ISREG(mode):
                    raise OverlayError(f"{here}: is {kind_of(mode)} ({why})")
                return here, f.read()
    except jinja2.TemplateNotFound:  # an OSError too, but the one Jinja2 wants
        raise
    except OSError as e:  # a component changed under us: O_NOFOLLOW refused a new symlink
        raise OverlayError(f"{root / name}: {e.strerror} ({why})") from None
    finally:
        os.close(fd)
    raise AssertionError("unreachable")


def _walk(root: Path) -> list[Path]:
    """Everything under root, sorted, parents before children, symlinks not followed."""
    out: list[Path] = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            out.append(Path(dirpath) / name)
    return sorted(out, key=lambda p: p.relative_to(root).parts)


def _climbs_out(parent: PurePosixPath, target: str) -> bool:
    """Whether a relative link target at parent climbs above the root (absolute ones resolve inside the image)."""
    if target.startswith("/"):
        return False
    depth = len(parent.parts)
    for part in PurePosixPath(target).parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return True
    return False


def _render(env: Any, name: str, path: Path, context: dict[str, Any]) -> bytes:
    try:
        return env.get_template(name).render(**context).encode()
    except OverlayError as e:  # the loader refused what the template includes: say which line asked
        line = _template_line(e, path)
        raise OverlayError(f"{path}:{line}: {e}" if line else str(e)) from None
    except jinja2_sandbox.SecurityError as e:
        line = _template_line(e, path)
        where = f"{path}:{line}" if line else str(path)
        raise OverlayError(f"{where}: refused by the template sandbox: {str(e).rstrip('.')}") from None
    except jinja2.TemplateNotFound as e:
        line = _template_line(e, path)
        where = f"{path}:{line}" if line else str(path)
        raise OverlayError(f"{where}: template {e.name!r} does not exist (expected a file of the overlay)") from None
    except jinja2.TemplateSyntaxError as e:
        raise OverlayError(f"{path}:{e.lineno}: template syntax: {e.message}") from None
    except jinja2.UndefinedError as e:
        line = _template_line(e, path)
        where = f"{path}:{line}" if line else str(path)
        known = ", ".join(sorted(context))
        raise OverlayError(
            f"{where}: undefined variable: {e.message} (expected one of {known} and their fields)"
        ) from None
    except jinja2.TemplateError as e:
        raise OverlayError(f"{path}: template: {e}") from None


def _template_line(e: BaseException, path: Path) -> int:
    """The template line an error came from: Jinja2 puts the template's frames in the traceback."""
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == str(path)]
    return lines[-1] if lines and lines[-1] else 0


def read_hook(hook: Path) -> tuple[bytes, bool]:
    """A hook's bytes and whether it is executable, read as its digest was (a symlink at its target)."""
    if not os.path.lexists(hook):
        raise OverlayError(f"{hook}: hook does not exist (rootfs.hooks)")
    real = Path(os.path.realpath(hook)) if hook.is_symlink() else hook
    with open_regular(real, "rootfs.hooks") as f:
        return f.read(), bool(os.fstat(f.fileno()).st_mode & 0o111)
