"""Overlays and hooks: how vendors brand and extend the dom0 without forking xenspin.

An overlay is a directory laid over the tree in declared order: files owned by root,
modes kept, `NAME.j2` rendered with Jinja2 (StrictUndefined) to NAME. Everything is
read and rendered before any tree exists (`read`), so an undefined variable or a
symlink that climbs out of the rootfs fails in a second, not after mmdebstrap.
Hooks are scripts run in declared order with the tree as $1, each with its own log.
"""

from __future__ import annotations

import os
import stat
import traceback
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from . import lazy
from .errors import XenspinError
from .run import CommandError, run
from .store import sha256_file, sha256_json

jinja2 = lazy.module("jinja2")  # imported when an overlay has a template (see builder/lazy.py)


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
            else:
                items.append([str(root.name), rel, "f", stat.S_IMODE(st.st_mode), sha256_file(path)])
    for hook in hooks:
        items.append(["hook", hook.name, sha256_file(hook) if hook.is_file() else ""])
    return sha256_json(items)


def read(overlays: list[Path], context: dict[str, Any]) -> list[Entry]:
    """Every entry of the overlays in order, templates rendered; OverlayError names the first bad file."""
    entries: list[Entry] = []
    for root in overlays:
        if not root.is_dir():
            raise OverlayError(f"{root}: overlay is not a directory")
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(root)),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=False,
        )
        for path in _walk(root):
            rel = PurePosixPath(path.relative_to(root).as_posix())
            st = path.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                if _climbs_out(rel.parent, target):
                    raise OverlayError(f"{path}: symlink to {target} escapes the rootfs (expected a target inside it)")
                entries.append(Entry(rel, "symlink", 0o777, target=target, origin=str(path)))
            elif stat.S_ISDIR(st.st_mode):
                entries.append(Entry(rel, "dir", mode, origin=str(path)))
            elif stat.S_ISREG(st.st_mode) and rel.suffix == ".j2":
                data = _render(env, rel.as_posix(), path, context)
                entries.append(Entry(rel.with_suffix(""), "file", mode, data=data, origin=str(path)))
            elif stat.S_ISREG(st.st_mode):
                entries.append(Entry(rel, "file", mode, data=path.read_bytes(), origin=str(path)))
            else:
                raise OverlayError(f"{path}: not a file, directory or symlink (expected one of those in an overlay)")
    return entries


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


def _render(env: jinja2.Environment, name: str, path: Path, context: dict[str, Any]) -> bytes:
    try:
        return env.get_template(name).render(**context).encode()
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


# --- laying over a tree -----------------------------------------------------------------


def lay(entries: list[Entry], tree: Path) -> None:
    """Put entries into tree, owned by root, modes kept; paths resolve as inside the tree (chroot-like)."""
    for entry in entries:
        parent = inside(tree, entry.path.parent, entry.origin)
        dest = parent / entry.path.name
        if entry.kind == "dir":
            if dest.is_symlink():  # the tree's /lib -> usr/lib: lay into what the link names
                dest = inside(tree, entry.path, entry.origin)
            dest.mkdir(exist_ok=True)
            os.chown(dest, 0, 0)
            os.chmod(dest, entry.mode)
            continue
        if dest.is_dir() and not dest.is_symlink():
            raise OverlayError(f"{entry.origin}: the tree has a directory at /{entry.path} (expected a file there)")
        tmp = dest.with_name(f".{dest.name}.xenspin-tmp")
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
        if entry.kind == "symlink":
            os.symlink(entry.target, tmp)
            os.lchown(tmp, 0, 0)
        else:
            tmp.write_bytes(entry.data)
            os.chown(tmp, 0, 0)
            os.chmod(tmp, entry.mode)
        os.replace(tmp, dest)


def inside(tree: Path, rel: PurePosixPath, origin: str) -> Path:
    """tree/rel with every symlink on the way resolved as the running image would (absolute ones from tree)."""
    current = PurePosixPath("/")
    todo = list(rel.parts)
    hops = 0
    while todo:
        part = todo.pop(0)
        if part in ("", ".", "/"):
            continue
        if part == "..":
            if current == PurePosixPath("/"):
                raise OverlayError(f"{origin}: /{rel} escapes the rootfs through '..' (expected a path inside it)")
            current = current.parent
            continue
        candidate = tree / str(current / part).lstrip("/")
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise OverlayError(f"{origin}: /{rel}: too many symlinks in the tree")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = PurePosixPath("/")
            todo = list(PurePosixPath(target).parts) + todo
            continue
        current = current / part
    return tree / str(current).lstrip("/")


# --- hooks ------------------------------------------------------------------------------


def run_hooks(hooks: list[Path], tree: Path, log_dir: Path, env: dict[str, str]) -> None:
    """Each hook in order as `HOOK TREE`; the first failure ends the stage with one line naming it."""
    for i, hook in enumerate(hooks, 1):
        if not hook.is_file():
            raise OverlayError(f"{hook}: hook does not exist (rootfs.hooks)")
        log_path = log_dir / f"hook-{i:02d}-{hook.name}.log"
        log_path.unlink(missing_ok=True)
        cmd = [str(hook), str(tree)] if os.access(hook, os.X_OK) else ["/bin/sh", str(hook), str(tree)]
        try:
            run(cmd, what=f"rootfs hook {hook}", log_path=log_path, env=env)
        except CommandError as e:
            raise OverlayError(f"rootfs hook {hook} failed with exit status {e.status}; log: {log_path}") from None
