"""What an upgrade carries from the root in use to the new release's root: the host's identity,
its settings and its data, and nothing of the old release itself.

The rule for /etc: at install (and at each upgrade) the release's own /etc is recorded as
it came out of the root filesystem image (RELEASE_ETC: a sha256 per file, a target per
link). A file of the old root that is not in that record, or differs from it, was made or
changed on this host (by the installer, by the host's first boot, by its administrator) and
is carried; a file as the old release shipped it is left to the new release. Some trees are
carried whole (root's and the users' homes, xapi's database, /usr/local). The account files
are merged (the new release's system accounts, the host's root and users), and the files
that name the root itself (fstab, the installer's GRUB settings) are written anew.

Pure functions decide (tested without a disk); copy() does it without ever following a link:
the old root is walked as it is (a link is copied as a link), and every name in the new root
is resolved inside it (confined.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from . import confined

RELEASE_ETC = "var/lib/xenspin/release-etc.sha256"
# Carried whole, when the old root has them.
TREES = ("root", "home", "srv", "usr/local", "var/lib/xcp", "var/lib/xenspin")
# Never carried: written anew for the new root, or the old release's own record.
REMADE = frozenset(
    {
        "etc/fstab",
        "etc/default/grub.d/zz-xenspin.cfg",
        "etc/ld.so.cache",
        "etc/mtab",
        "etc/.pwd.lock",
        RELEASE_ETC,
    }
)
ACCOUNTS = {"etc/passwd": "etc/shadow", "etc/group": "etc/gshadow"}
FIRST_USER_ID = 1000
NOBODY = 65534


def entries(root: Path, top: str) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under root/top (top itself too), as names relative to root, without following a link."""
    start = root / top
    if not start.is_dir() or start.is_symlink():
        return
    yield top, os.lstat(start)
    for here, dirs, files in os.walk(start):  # os.walk never descends through a link
        rel = Path(here).relative_to(root)
        for name in sorted(dirs) + sorted(files):
            yield str(rel / name), os.lstat(Path(here) / name)


def digest(path: Path, st: os.stat_result) -> str | None:
    """What RELEASE_ETC records for an entry: sha256 of a file, link:TARGET of a link; None for the rest."""
    if stat.S_ISLNK(st.st_mode):
        return "link:" + os.readlink(path)
    if stat.S_ISREG(st.st_mode):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    return None


def record(root: Path) -> str:
    """RELEASE_ETC's text for the release /etc in root (as unpacked, before the installer writes to it)."""
    lines = []
    for rel, st in entries(root, "etc"):
        d = digest(root / rel, st)
        if d is not None:
            lines.append(f"{d}  {rel}")
    return "\n".join(lines) + "\n"


def parse_record(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        d, sep, rel = line.partition("  ")
        if sep:
            out[rel] = d
    return out


def carried(old: Path, release: dict[str, str]) -> list[str]:
    """The names (relative to the root) an upgrade copies from the old root, parents before children."""
    out = []
    for rel, st in entries(old, "etc"):
        if rel in REMADE or rel in ACCOUNTS or rel in ACCOUNTS.values():
            continue
        if stat.S_ISDIR(st.st_mode):
            continue  # made as the files in it need them, with their modes
        d = digest(old / rel, st)
        if d is None or release.get(rel) == d:
            continue
        out.append(rel)
    for top in TREES:
        out.extend(rel for rel, _ in entries(old, top) if rel not in REMADE)
    return out


# --- accounts ---------------------------------------------------------------------------


def _table(text: str) -> dict[str, str]:
    return {line.split(":", 1)[0]: line for line in text.splitlines() if line and not line.startswith("#")}


def _hosts_own(line: str) -> bool:
    """An account or group of this host rather than of a package: root, or an id of the users' range."""
    fields = line.split(":")
    try:
        n = int(fields[2])
    except (IndexError, ValueError):
        return False
    return n == 0 or FIRST_USER_ID <= n < NOBODY


def merge_table(new: str, old: str, *, members: bool = False) -> tuple[str, set[str]]:
    """The new release's accounts (or groups), with the host's own taken from old, and old's that
    the new release lacks kept. members: for groups, the members old added to a group both have.
    Returns the text and the names whose line came from old."""
    n, o = _table(new), _table(old)
    from_old: set[str] = set()
    out = []
    for name, line in n.items():
        if name in o and _hosts_own(o[name]):
            line = o[name]
            from_old.add(name)
        elif name in o and members:
            fields, old_fields = line.split(":"), o[name].split(":")
            if len(fields) == 4 and len(old_fields) == 4:
                have = [m for m in fields[3].split(",") if m]
                fields[3] = ",".join(have + [m for m in old_fields[3].split(",") if m and m not in have])
                line = ":".join(fields)
        out.append(line)
    for name, line in o.items():
        if name not in n:
            out.append(line)
            from_old.add(name)
    return "\n".join(out) + "\n", from_old


def merge_shadow(new: str, old: str, from_old: set[str]) -> str:
    """shadow (or gshadow) to match merge_table: old's line for each name whose entry came from old."""
    n, o = _table(new), _table(old)
    out = [o[name] if name in from_old and name in o else line for name, line in n.items()]
    out += [o[name] for name in o if name not in n and name in from_old]
    return "\n".join(out) + "\n"


# --- copying ----------------------------------------------------------------------------


def copy(old: Path, new: Path, names: list[str]) -> int:
    """Copy each name from old to new as it is (file, link or directory, with owner, mode and times).

    Parents missing in new are made with the old root's modes. Returns how many were copied.
    """
    count = 0
    for rel in names:
        src = old / rel
        st = os.lstat(src)
        parent = _parent(old, new, str(Path(rel).parent))
        dest = parent / Path(rel).name
        if stat.S_ISDIR(st.st_mode):
            if os.path.lexists(dest) and not (dest.is_dir() and not dest.is_symlink()):
                confined.remove(new, Path(rel))
            if not os.path.lexists(dest):
                os.mkdir(dest)
            _owner_mode(dest, st)
        elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            if os.path.isdir(dest) and not os.path.islink(dest):
                confined.remove(new, Path(rel))
            tmp = parent / f".{dest.name}.xenspin-upgrade"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), tmp)
            else:
                shutil.copyfile(src, tmp, follow_symlinks=False)
            _owner_mode(tmp, st)
            os.replace(tmp, dest)
        else:
            continue  # sockets, fifos, devices: nothing of the host's state
        count += 1
    return count


def _parent(old: Path, new: Path, rel: str) -> Path:
    """new/rel as a directory (made with old's modes where missing), resolved inside new."""
    if rel in ("", "."):
        return new
    made = confined.mkdirs(new, rel)
    src = old / rel
    if os.path.isdir(src) and not os.path.islink(src):
        _owner_mode(made, os.lstat(src))
    return made


def _owner_mode(path: Path, st: os.stat_result) -> None:
    os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
