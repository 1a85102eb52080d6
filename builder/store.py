"""The content-addressed store every stage reads from and writes to.

Layout under the store root:
    blobs/sha256/ab/abcd...      files by the sha256 of their bytes (tarballs, .dsc, .deb)
    git/<sha256 of url>.git      bare git mirrors, one per repository URL
    objects/<kind>/<key>/        stage outputs (build roots, component builds) by cache key
    objects/<kind>/<key>.json    what the object's maker recorded (top directory, .deb digests,
                                 a tree's digest); written last, so it marks the object complete
    verified/<sha256 of entry>   stamps: every check a lock entry demands passed for what is stored
    roots/<sha256>.json          gc roots: what each manifest building into this store uses
    tmp/<hint>.<pid>.<random>    scratch; everything is written here first, then renamed
    cache-stats.json             the last run's use of the remote cache (builder/cache.py)
    locks/                       flock files

Nothing appears under its final name until it is complete: writers fill a
temporary path and rename it into place. `Store.obtain` is that sequence, once,
for every object a stage makes. Scratch is named with the writer's pid, so the
next run removes what a killed one left behind. A shared lock on the store is held by
every run and an exclusive one by `gc`, so a collection never pulls an object
from under a build; per-object locks stop two runs fetching the same thing twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import XenspinError
from .run import run

CHUNK = 1 << 20
META = ".json"  # suffix of an object's metadata file, beside it


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(root: Path, *, modes: int = 0o7777, skip: frozenset[str] = frozenset()) -> str:
    """sha256 of a tree's canonical form: every name, kind, mode, file's bytes and link target.

    One record per entry below root (root itself is not one), in sorted order, NUL
    separated (no name or link target holds a NUL). Links are not followed. modes masks
    the permission bits recorded (0o111: only the execute bits, for a checkout whose
    other bits follow the user's umask); names in skip are left out wherever they are.
    """
    h = hashlib.sha256()

    def walk(directory: str, rel: bytes) -> None:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if e.name in skip:
                continue
            name = rel + os.fsencode(e.name)
            mode = e.stat(follow_symlinks=False).st_mode
            perm = b"%o" % (stat.S_IMODE(mode) & modes)
            if stat.S_ISLNK(mode):
                h.update(b"l\0" + name + b"\0" + os.fsencode(os.readlink(e.path)) + b"\0")
            elif stat.S_ISDIR(mode):
                h.update(b"d\0" + name + b"\0" + perm + b"\0")
                walk(e.path, name + b"/")
            elif stat.S_ISREG(mode):
                h.update(b"f\0" + name + b"\0" + perm + b"\0" + sha256_file(Path(e.path)).encode() + b"\0")
            else:  # a device, fifo or socket: its type and mode, never opened
                h.update(b"o\0" + name + b"\0" + b"%o" % (stat.S_IFMT(mode) | stat.S_IMODE(mode) & modes) + b"\0")

    walk(str(root), b"")
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_json(data: object) -> str:
    """The digest of plain data in one canonical JSON form: the basis of every key and lock digest."""
    return sha256_text(json.dumps(data, sort_keys=True, separators=(",", ":")))


class StoreError(XenspinError):
    pass


@dataclass(frozen=True)
class Usage:
    """Space used by one area of the store."""

    area: str
    entries: int
    bytes: int


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    # --- paths ---------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / "sha256" / sha256[:2] / sha256

    def has_blob(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def git_path(self, url: str) -> Path:
        return self.root / "git" / (sha256_text(url)[:32] + ".git")

    def stamp_path(self, name: str) -> Path:
        """A verified/ stamp: name is the sha256 of the lock entry it vouches for."""
        return self.root / "verified" / name

    def object_path(self, kind: str, key: str) -> Path:
        return self.root / "objects" / kind / key

    def meta(self, kind: str, key: str) -> dict | None:
        """What the object's maker recorded, or None when the object is not (completely) in the store."""
        try:
            return json.loads(self.object_path(kind, key).with_suffix(META).read_text())
        except FileNotFoundError:
            return None

    def has(self, kind: str, key: str) -> bool:
        return self.object_path(kind, key).with_suffix(META).is_file()

    def content(self, kind: str, key: str, meta: dict) -> Path:
        """The object's useful path: its directory, or the top directory its maker recorded."""
        return self.object_path(kind, key) / meta.get("top", "")

    def log_dir(self, *parts: str) -> Path:
        return self.root.joinpath("logs", *parts)

    def _ensure(self) -> None:
        if not self.root.name and self.root == Path(self.root.anchor):
            raise StoreError(f"store {self.root}: refusing a filesystem root as the store")
        for sub in ("blobs/sha256", "git", "objects", "tmp", "locks", "roots"):
            try:
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                raise StoreError(f"store {self.root}: {self.root / sub} exists and is not a directory") from None
            except OSError as e:
                raise StoreError(f"store {self.root}: cannot create {self.root / sub}: {e.strerror}") from None

    # --- locking -------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, name: str, *, shared: bool = False, wait: bool = True) -> Iterator[None]:
        """Hold flock on locks/NAME; shared or exclusive."""
        self._ensure()
        path = self.root / "locks" / (name.replace("/", "_") + ".lock")
        with open(path, "a+") as f:
            flags = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
            try:
                fcntl.flock(f, flags | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise StoreError(f"store {self.root} is busy (another xenspin holds {name})") from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def session(self) -> Iterator[Store]:
        """The shared lock every run holds while it uses the store; first, what killed runs left in tmp/."""
        with self.locked("store", shared=True):
            self.clean_tmp()
            yield self

    def clean_tmp(self) -> list[Path]:
        """Remove scratch whose writer (the pid in its name) is dead; kept partial downloads have no pid."""
        removed = []
        for path in (self.root / "tmp").glob("*.*.*"):
            pid = path.name.rsplit(".", 2)[1]
            if pid.isdigit() and not _alive(int(pid)):
                _remove(path)
                removed.append(path)
        return removed

    # --- writing -------------------------------------------------------------------

    def tmp_path(self, hint: str = "") -> Path:
        """A fresh temporary file name inside the store (same filesystem, so rename is atomic)."""
        self._ensure()
        fd, name = tempfile.mkstemp(prefix=f"{hint}.{os.getpid()}.", dir=self.root / "tmp")
        os.close(fd)
        return Path(name)

    def tmp_dir(self, hint: str = "") -> Path:
        """A fresh scratch directory named HINT.PID.RANDOM, so a later run can tell a dead writer's."""
        self._ensure()
        return Path(tempfile.mkdtemp(prefix=f"{hint}.{os.getpid()}.", dir=self.root / "tmp"))

    def obtain(
        self,
        kind: str,
        key: str,
        make: Callable[[Path], dict | None],
        *,
        clamp: int | None = None,
        check: Callable[[Path, dict], bool] | None = None,
    ) -> Path:
        """The object KIND/KEY, made once: look up, lock, make under tmp/, clamp times, record, rename.

        make(tmp) fills the fresh directory tmp and returns metadata to record beside
        the object (e.g. {"top": "xen-4.17"} for a tree whose useful part is one
        directory, or the digests of .debs so nothing re-hashes them). The metadata
        file is written last and marks the object complete. With clamp, no time in
        the tree is later than it (reproducible outputs). With check, an object found
        in the store is checked (check(object directory, metadata), under the object's
        lock) before it is used; one that fails (check says why) is removed and made
        again. Returns the object's content path (its directory, or the recorded top
        directory in it).
        """
        meta = self.meta(kind, key)
        if meta is not None and check is None:
            return self.content(kind, key, meta)
        dest = self.object_path(kind, key)
        with self.locked(f"{kind}-{key[:32]}"):
            meta = self.meta(kind, key)
            if meta is not None and (check is None or check(dest, meta)):
                return self.content(kind, key, meta)
            # No metadata beside a directory: a run killed between the two renames. Or one
            # that failed its check. Either way, gone before it is made again.
            dest.with_suffix(META).unlink(missing_ok=True)
            if dest.exists() or dest.is_symlink():
                _remove(dest)
            meta = self.create(dest, make, hint=kind, clamp=clamp)
            write_json(dest.with_suffix(META), meta)
        return self.content(kind, key, meta)

    def adopt(self, kind: str, key: str, fill: Callable[[Path], dict | None]) -> dict | None:
        """The object KIND/KEY taken from elsewhere (a remote cache) if fill has it; its metadata, or None.

        The same lifecycle as obtain, under the object's lock: fill(tmp) writes the
        object into a fresh scratch directory and returns its metadata, or None when it
        has nothing (the scratch is then removed and nothing changes). An object already
        in the store is kept and its metadata returned.
        """
        dest = self.object_path(kind, key)
        with self.locked(f"{kind}-{key[:32]}"):
            meta = self.meta(kind, key)
            if meta is not None:
                return meta
            dest.with_suffix(META).unlink(missing_ok=True)
            if dest.exists() or dest.is_symlink():
                _remove(dest)
            tmp = self.tmp_dir(kind)
            try:
                meta = fill(tmp)
                if meta is None:
                    return None
                os.chmod(tmp, 0o755)
                self.commit_dir(tmp, dest)
            finally:
                if tmp.exists():
                    _remove(tmp)
            write_json(dest.with_suffix(META), meta)
        return meta

    def create(self, dest: Path, make: Callable[[Path], dict | None], *, hint: str, clamp: int | None = None) -> dict:
        """Make a directory at dest through tmp/ and a rename; the caller holds dest's lock.

        The part of `obtain` also used for what is not a keyed object (a new git mirror):
        make fills a fresh scratch directory, which is renamed into place only when
        make returns; if it raises, the scratch is removed and dest is untouched.
        """
        tmp = self.tmp_dir(hint)
        try:
            meta = make(tmp) or {}
            if clamp is not None:
                clamp_times(tmp, clamp)
            # Readable like every other store file: the build account reads objects it is shown
            # (a source tree bound as $SRC), and mkdtemp made the scratch 0700.
            os.chmod(tmp, 0o755)
            self.commit_dir(tmp, dest)
        finally:
            if tmp.exists():
                _remove(tmp)
        return meta

    def add_blob(self, path: Path, expected: str | None = None, *, what: str = "file") -> str:
        """Move the file at path into the store under its sha256; refuse it if expected differs.

        The caller's file is consumed either way: a rejected file is deleted, never stored.
        """
        digest = sha256_file(path)
        if expected and digest != expected:
            path.unlink(missing_ok=True)
            raise StoreError(f"{what}: sha256 mismatch: got {digest}, expected {expected}; nothing stored")
        dest = self.blob_path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o644)
        os.replace(path, dest)
        return digest

    def commit_dir(self, tmp: Path, dest: Path) -> Path:
        """Rename a finished temporary tree into place; if another run won the race, keep theirs."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    # --- accounting ----------------------------------------------------------------

    def usage(self) -> list[Usage]:
        """Entries and bytes per area: blobs, git mirrors, each object kind, verified/ stamps, logs, scratch."""
        areas: list[tuple[str, list[Path]]] = [
            ("blobs", sorted((self.root / "blobs" / "sha256").glob("*/*"))),
            ("git", sorted((self.root / "git").glob("*.git"))),
        ]
        objects = self.root / "objects"
        if objects.is_dir():
            for kind in sorted(objects.iterdir()):
                areas.append((f"objects/{kind.name}", sorted(p for p in kind.iterdir() if p.suffix != META)))
        areas.append(("verified", sorted((self.root / "verified").glob("*"))))
        areas.append(("logs", sorted((self.root / "logs").glob("*"))))
        areas.append(("tmp", sorted((self.root / "tmp").glob("*"))))
        return [Usage(name, len(paths), sum(_size(p) for p in paths)) for name, paths in areas]

    # --- gc roots and collection ---------------------------------------------------

    def root_file(self, manifest: Path) -> Path:
        return self.root / "roots" / (sha256_text(str(manifest)) + META)

    def register(self, root: Root) -> None:
        """Record what one manifest's lock and plan use, so a gc run by any manifest keeps it."""
        self._ensure()
        write_json(self.root_file(root.manifest), root.to_data())

    def roots(self) -> list[tuple[Path, Root | None]]:
        """Every registered root (None for an unreadable file)."""
        out: list[tuple[Path, Root | None]] = []
        for path in sorted((self.root / "roots").glob("*" + META)):
            try:
                out.append((path, Root.from_data(json.loads(path.read_text()))))
            except (ValueError, KeyError, TypeError):
                out.append((path, None))
        return out

    def gc(self, current: Root | None = None, *, older_than_days: float | None = None) -> GcResult:
        """Delete what no live root keeps, and stale scratch.

        current (the manifest gc was run for) is registered first. A root whose
        manifest is gone is dropped, and so is one not refreshed for older_than_days
        (its manifest not built, fetched or locked since); what is left is the union
        of the live roots. Takes the store's exclusive lock: waits for running builds,
        and no build starts until it is done.
        """
        result = GcResult()
        with self.locked("store"):
            if current is not None:
                self.register(current)
            keep = Root(Path("/"))
            cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
            for path, root in self.roots():
                if root is None:
                    path.unlink()
                    result.dropped.append(f"{path.name}: unreadable")
                elif current is not None and root.manifest == current.manifest:
                    keep = keep.union(root)
                elif not root.manifest.is_file():
                    path.unlink()
                    result.dropped.append(f"{root.manifest}: the manifest is gone")
                elif cutoff is not None and path.stat().st_mtime < cutoff:
                    path.unlink()
                    result.dropped.append(f"{root.manifest}: not used for over {older_than_days:g} days")
                else:
                    keep = keep.union(root)
                    result.kept.append(str(root.manifest))
            result.removed = self._sweep(keep)
        return result

    def _sweep(self, keep: Root) -> list[Usage]:
        removed: dict[str, list[int]] = {}

        def drop(area: str, path: Path) -> None:
            size = _size(path)
            _remove(path)
            entry = removed.setdefault(area, [0, 0])
            entry[0] += 1
            entry[1] += size

        for blob in (self.root / "blobs" / "sha256").glob("*/*"):
            if blob.name not in keep.blobs:
                drop("blobs", blob)
        keep_git_paths = {self.git_path(u).name for u in keep.git}
        for repo in (self.root / "git").glob("*.git"):
            if repo.name not in keep_git_paths:
                drop("git", repo)
        objects = self.root / "objects"
        if objects.is_dir():
            for kind in objects.iterdir():
                for obj in kind.iterdir():
                    key = obj.name.removesuffix(META)
                    if (kind.name, key) not in keep.objects:
                        drop(f"objects/{kind.name}", obj)
        # A stamp vouches for what one lock entry names; the roots that keep the stamp keep
        # that too, so a stamp outlives neither its objects nor the last root using it.
        for stamp in (self.root / "verified").glob("*"):
            if stamp.name not in keep.stamps:
                drop("verified", stamp)
        cutoff = time.time() - 60
        for tmp in (self.root / "tmp").glob("*"):
            if tmp.lstat().st_mtime < cutoff:
                drop("tmp", tmp)
        return [Usage(area, n, b) for area, (n, b) in sorted(removed.items())]


@dataclass(frozen=True)
class Root:
    """A gc root: what one manifest's current lock and plan use (as Nix's gcroots)."""

    manifest: Path
    blobs: frozenset[str] = frozenset()
    git: frozenset[str] = frozenset()  # canonical repository URLs
    objects: frozenset[tuple[str, str]] = frozenset()  # (kind, key)
    stamps: frozenset[str] = frozenset()  # names of verified/ stamps

    def union(self, other: Root) -> Root:
        return Root(
            self.manifest,
            self.blobs | other.blobs,
            self.git | other.git,
            self.objects | other.objects,
            self.stamps | other.stamps,
        )

    def to_data(self) -> dict:
        return {
            "manifest": str(self.manifest),
            "blobs": sorted(self.blobs),
            "git": sorted(self.git),
            "objects": sorted([k, v] for k, v in self.objects),
            "stamps": sorted(self.stamps),
        }

    @classmethod
    def from_data(cls, data: dict) -> Root:
        return cls(
            Path(data["manifest"]),
            frozenset(data["blobs"]),
            frozenset(data["git"]),
            frozenset((k, v) for k, v in data["objects"]),
            frozenset(data.get("stamps", ())),  # roots written before stamps were kept: none
        )


@dataclass
class GcResult:
    removed: list[Usage] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # roots dropped, and why
    kept: list[str] = field(default_factory=list)  # other manifests whose roots were kept


def write_json(path: Path, data: object) -> None:
    """Write JSON atomically (tmp + rename beside it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def clamp_times(tree: Path, epoch: int) -> None:
    """No time in tree later than epoch (links not followed): the same inputs give the same bytes."""
    for dirpath, dirs, files in os.walk(tree):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if st.st_mtime > epoch:
                os.utime(full, (epoch, epoch), follow_symlinks=False)
    os.utime(tree, (epoch, epoch))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        remove_tree(path)
    else:
        path.unlink(missing_ok=True)


def remove_tree(path: Path) -> None:
    """rm -rf path, also what a killed mmdebstrap left there owned by subordinate ids.

    An ordinary user cannot remove those files itself; it removes them inside a user
    namespace of the same mapping (mmdebstrap's --unshare-helper), as root there.
    """
    shutil.rmtree(path, ignore_errors=True)
    if (path.exists() or path.is_symlink()) and os.geteuid() != 0 and shutil.which("mmdebstrap"):
        run(
            ["mmdebstrap", "--unshare-helper", "rm", "-rf", "--", str(path)],
            what=f"remove {path}",
            capture=True,
            check=False,
        )


def _size(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        try:
            return path.lstat().st_size
        except FileNotFoundError:
            return 0
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total
