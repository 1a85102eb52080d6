"""Locked package sets: the exact .debs a stage installs, resolved by apt against the locked, verified indexes.

A set is declared once here (`package_sets`) and lives in distro.lock under `sets:`:
for each .deb its name, version, architecture, source package, archive (suite and
mirror), filename and sha256. The sha256 comes from the Packages index the signed
InRelease names, so fetching a set is verified by the archive's own chain.

Resolving is apt's job, not ours: `mmdebstrap --simulate` runs apt over a flat
repository made of the verified Packages paragraphs (offline, in seconds) and prints
apt's `Inst NAME (VERSION ARCHIVE [ARCH])` lines. Built components take part as
stand-in paragraphs carrying their `depends:`, so their runtime dependencies are
locked too; they are not archive packages and stay out of the set.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import aptrepo, debtree, lazyimport
from .context import Context
from .errors import XenspinError
from .lock import Lock
from .manifest import Distro, Package
from .sources import FetchError, Missing, debian
from .store import sha256_json

# Imported when a set is resolved or fetched, not on every run (see builder/lazyimport.py).
deb822 = lazyimport.module("debian.deb822")


def Version(text: str) -> Any:  # noqa: N802 (stands in for debian_support.Version)
    from debian.debian_support import Version as _Version

    return _Version(text)


FORMAT = 1  # how a set is resolved and recorded; bump to resolve every set again

# What the ISO needs to boot the rootfs as a live system. The installer purges them from
# the installed disk, which boots with the initrd the rootfs stage made without them.
LIVE_PACKAGES = ("live-boot", "live-boot-initramfs-tools")

# Boot loaders the ISO stage unpacks (no closure: only these .debs, for their files).
ISO_BOOT_PACKAGES = (
    "isolinux",
    "syslinux-common",
    "grub-efi-amd64-bin",
    "grub-pc-bin",
    "grub-common",
    "mtools",
    "dosfstools",
)

STAND_IN_SHA256 = hashlib.sha256(b"\n").hexdigest()  # a built package's stand-in file: one newline
_INST = re.compile(r"^Inst (\S+) \((\S+) \S+ \[(\S+)\]\)", re.M)


class SetError(XenspinError):
    pass


@dataclass(frozen=True)
class SetSpec:
    """What a set asks for: apt resolves `include` (with `built` stand-ins) to a closure, or takes it as is."""

    name: str
    include: tuple[str, ...]  # NAME or NAME=VERSION
    variant: str = "minbase"
    closure: bool = True
    # (package, relations) of built components: their Depends, Provides, Conflicts and Replaces
    # lines, so apt resolves their runtime needs and refuses what they cannot sit beside.
    built: tuple[tuple[str, str], ...] = ()
    archive: str = ""  # the locked InRelease sha256s: a new archive state means a new resolution

    @property
    def inputs(self) -> str:
        """The digest a lock entry records: it goes stale when any input changes."""
        return sha256_json({"format": FORMAT, "spec": _data(self)})


def _data(spec: SetSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "include": list(spec.include),
        "variant": spec.variant,
        "closure": spec.closure,
        "built": [list(b) for b in spec.built],
        "archive": spec.archive,
    }


def package_sets(distro: Distro, lock: Lock) -> dict[str, SetSpec]:
    """Every package set the pipeline installs, by name: the one place a stage declares its .debs.

    rootfs: the manifest's packages, the live-boot pair, the archive components at
    their locked versions, and the built components (their depends resolved too).
    iso: the boot loaders the ISO stage unpacks, without their dependencies.
    buildroot-*: each build root (a component's build-depends on minbase), shared by
    the components asking for the same packages.
    A manifest with no rootfs.packages (components only, as in tests) has no rootfs or
    iso set; one whose components build nothing needs no binary index at all.
    """
    ident = debian.archive_ident(lock.archive)
    sets: dict[str, SetSpec] = {}
    if distro.rootfs.packages:
        include: list[str] = list(distro.rootfs.packages) + list(LIVE_PACKAGES)
        built: list[tuple[str, str]] = []
        for name, comp in sorted(distro.components.items()):
            entry = lock.components.get(name)
            if entry is None:
                continue
            if entry.get("kind") == "archive":
                include += [f"{pkg}={info['version']}" for pkg, info in sorted(entry["packages"].items())]
            elif comp.package is not None and comp.steps and not comp.build_only:
                built.append((comp.package.name, relations(comp.package)))
        sets["rootfs"] = SetSpec(
            "rootfs", tuple(dict.fromkeys(include)), distro.rootfs.variant, True, tuple(built), ident
        )
        sets["iso"] = SetSpec("iso", ISO_BOOT_PACKAGES, "", False, (), ident)
    for comp, name in root_sets(distro, lock).items():
        include = tuple(sorted(set(distro.components[comp].build_depends)))
        sets.setdefault(name, SetSpec(name, include, ROOT_VARIANT, True, (), ident))
    return sets


# --- build roots ----------------------------------------------------------------------------

ROOT_VARIANT = "minbase"  # a build root is minbase plus the component's build-depends


def root_set(build_depends: list[str] | tuple[str, ...]) -> str:
    """The name of the set a build root with these build-depends is composed from (named by its content,
    so components asking for the same packages share it, and renaming a component keeps it)."""
    include = sorted(set(build_depends))
    return "buildroot-" + sha256_json({"variant": ROOT_VARIANT, "include": include})[:12]


def root_sets(distro: Distro, lock: Lock, names: set[str] | None = None) -> dict[str, str]:
    """Component -> build root set, for the (named) components that run build steps on a locked source."""
    out = {}
    for name, comp in sorted(distro.components.items()):
        entry = lock.components.get(distro.origin(name))
        if names is not None and name not in names:
            continue
        if entry is not None and entry.get("kind") != "archive" and comp.steps:
            out[name] = root_set(comp.build_depends)
    return out


def root_tree(lock: Lock, build_depends: list[str]) -> debtree.TreeSpec:
    """The build root for these build-depends: exactly the .debs its locked set names.

    Its key is those .debs (name, version, architecture, sha256) and nothing of the
    archive's state: the same lock gives the same root on any machine, any day, and a
    root changes only when the lock does. Without a locked set (a lock from before build
    roots were locked) the spec has no .debs and making it says to lock again.
    """
    name = root_set(build_depends)
    debs = tuple(
        debtree.LockedDeb(pkg, info["version"], info["architecture"], info["filename"], info["sha256"])
        for pkg, info in sorted(files(lock, name).items())
    )
    return debtree.TreeSpec(
        suite=lock.archive.get("suite", ""),
        variant=ROOT_VARIANT,
        packages=tuple(sorted(set(build_depends))),
        debs=debs,
        set=name,
    )


def relations(package: Package) -> str:
    """A built package's relation fields, as its stand-in paragraph carries them."""
    fields = [
        ("Depends", package.depends),
        ("Provides", package.provides),
        ("Conflicts", package.conflicts),
        ("Replaces", package.replaces),
    ]
    return "".join(f"{name}: {', '.join(items)}\n" for name, items in fields if items)


def stale_sets(distro: Distro, lock: Lock) -> list[str]:
    """Sets whose lock entry is missing or was resolved from other inputs."""
    have = lock.sets
    return [n for n, spec in package_sets(distro, lock).items() if (have.get(n) or {}).get("inputs") != spec.inputs]


# --- resolving (needs the verified indexes: network at lock time) -------------------------


def resolve(spec: SetSpec, ctx: Context, scratch: Path, log_path: Path) -> dict[str, Any]:
    """The lock entry of one set: {inputs, packages: {name: {...}}}."""
    index = debian.verified_index(ctx, "binary")
    closure = _apt_closure(spec, index, ctx, scratch, log_path) if spec.closure else None
    chosen = closure if closure is not None else [(n, "", "") for n in spec.include]
    packages: dict[str, Any] = {}
    for name, version, arch in chosen:
        packages[name] = _entry(spec, index, ctx, name, version, arch)
    return {"inputs": spec.inputs, "packages": dict(sorted(packages.items()))}


def _entry(spec: SetSpec, index: debian.Index, ctx: Context, name: str, version: str, arch: str) -> dict[str, Any]:
    """The verified paragraph of name (at version when given) as a lock entry."""
    paras = [(m, deb822.Packages(p)) for m, p in index.get(name, [])]
    fits = [
        (m, p) for m, p in paras if (not version or p["Version"] == version) and (not arch or p["Architecture"] == arch)
    ]
    if not fits:
        want = f"{name} {version}".strip()
        raise SetError(f"lock set {spec.name}: {want} is not in the verified index of {ctx.base.suite}")
    mirror, para = max(fits, key=lambda mp: Version(mp[1]["Version"]))
    source = str(para.get("Source", name)).split(" ")[0]
    suite = dict((m, s) for m, s in ctx.base.archives()).get(mirror, ctx.base.suite)
    return {
        "version": str(para["Version"]),
        "architecture": str(para["Architecture"]),
        "source": source,
        "archive": suite,
        "mirror": mirror,
        "filename": str(para["Filename"]),
        "sha256": str(para["SHA256"]),
        "size": int(para["Size"]),
    }


def _apt_closure(
    spec: SetSpec, index: debian.Index, ctx: Context, scratch: Path, log_path: Path
) -> list[tuple[str, str, str]]:
    """apt's own answer: (name, version, arch) of everything mmdebstrap would install."""
    stand_ins = {}
    paragraphs = [para for _name, paras in sorted(index.items()) for _mirror, para in paras]
    for pkg, fields in spec.built:
        # A stand-in for a built package: only its relations matter to apt.
        paragraphs.append(
            f"Package: {pkg}\nVersion: 0\nArchitecture: {ctx.base.architecture}\nPriority: optional\n"
            f"Filename: {pkg}.deb\nSize: 1\nSHA256: {STAND_IN_SHA256}\n{fields}"
        )
        stand_ins[f"{pkg}.deb"] = b"\n"
    repo = aptrepo.from_paragraphs(scratch / "index", paragraphs, stand_ins, ctx.base.suite, "resolve")
    include = tuple(spec.include) + tuple(pkg for pkg, _ in spec.built)
    tree = debtree.TreeSpec(suite=ctx.base.suite, variant=spec.variant, packages=include)
    log_path.unlink(missing_ok=True)
    status, out = debtree.simulate(tree, repo, scratch, log_path, what=f"lock set {spec.name}: apt resolve")
    built = {pkg for pkg, _ in spec.built}
    if status != 0:
        log_path.write_text(out)
        items = unmet(out)
        why = "; ".join(items) or f"mmdebstrap --simulate failed with exit status {status}"
        hint = (
            " (a package xenspin builds replaces what the set needs from the archive)"
            if any(item.split()[0] in built and " conflicts with " in item for item in items)
            else ""
        )
        raise SetError(f"lock set {spec.name}: apt cannot resolve it: {why}{hint}; log: {log_path}")
    seen: dict[str, tuple[str, str, str]] = {}
    for m in _INST.finditer(out):
        if m.group(1) not in built:
            seen[m.group(1)] = (m.group(1), m.group(2), m.group(3))
    if not seen:
        raise SetError(f"lock set {spec.name}: apt chose no packages; log: {log_path}")
    return sorted(seen.values())


_UNMET = re.compile(r"^ (?:(\S+) +: |\s+)(Depends|PreDepends|Conflicts|Breaks): (\S+)", re.M)


def unmet(apt_output: str) -> list[str]:
    """apt's "unmet dependencies" block, one item per package: "a conflicts with b, c", "d depends on e"."""
    block = apt_output.partition("The following packages have unmet dependencies:")[2]
    items: dict[str, dict[str, list[str]]] = {}
    package = ""
    for m in _UNMET.finditer(block.partition("\nE: ")[0]):
        package = m.group(1) or package
        relation = {"Conflicts": "conflicts with", "Breaks": "breaks"}.get(m.group(2), "depends on")
        items.setdefault(package, {}).setdefault(relation, []).append(m.group(3))
    return [f"{pkg} {rel} {', '.join(names)}" for pkg, rels in items.items() for rel, names in rels.items()]


def resolve_all(distro: Distro, lock: Lock, ctx: Context, names: list[str] | None = None) -> dict[str, Any]:
    """Lock entries for the named sets (all stale ones when None); others kept as they are."""
    specs = package_sets(distro, lock)
    todo = stale_sets(distro, lock) if names is None else names
    sets = {n: v for n, v in (lock.sets).items() if n in specs}
    for name in todo:
        scratch = ctx.store.tmp_dir("set-" + name)
        try:
            sets[name] = resolve(specs[name], ctx, scratch, ctx.store.log_dir("lock", f"set-{name}.log"))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return dict(sorted(sets.items()))


# --- fetching ----------------------------------------------------------------------------


@dataclass
class SetFetch:
    fetched: list[str] = field(default_factory=list)
    present: int = 0


def files(lock: Lock, name: str) -> dict[str, dict[str, Any]]:
    """The locked .debs of a set: package -> entry."""
    return ((lock.sets).get(name) or {}).get("packages") or {}


def fetch(lock: Lock, ctx: Context, jobs: int = 4, only: set[str] | None = None) -> SetFetch:
    """Put every locked .deb of every set (of the sets named in only) in the store, each verified by its locked sha256.

    A .deb the mirror no longer has comes from the snapshot archive by its locked version (debian.download).
    """
    report = SetFetch()
    todo: dict[str, tuple[str, debian.ArchiveFile]] = {}
    for set_name in sorted(lock.sets):
        if only is not None and set_name not in only:
            continue
        for pkg, info in files(lock, set_name).items():
            if ctx.store.has_blob(info["sha256"]):
                report.present += 1
                continue
            todo[info["sha256"]] = (pkg, debian.binary_file(pkg, info, ctx.base.mirror))
    if todo and ctx.offline:
        names = sorted(p for p, _ in todo.values())
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        raise Missing(f"offline: {len(names)} locked .debs missing from the store: {shown}")
    quiet = dataclasses.replace(ctx, progress=None)  # one line for the set, not a bar per .deb
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {
            pool.submit(debian.download, f, quiet, f"fetch set: {pkg}", ctx.say): pkg
            for _sha, (pkg, f) in sorted(todo.items())
        }
        for fut in concurrent.futures.as_completed(futures):
            fut.result()
            report.fetched.append(futures[fut])
    report.fetched.sort()
    return report


def share(lock: Lock, ctx: Context, names: set[str]) -> None:
    """The named sets' .debs the store holds, to the remote cache (for a build on workers)."""
    if ctx.remote is not None and ctx.remote.writable:
        for name in sorted(names):
            for info in files(lock, name).values():
                ctx.remote.offer_blob(ctx.store, info["sha256"])


def keeps(lock: Lock) -> set[str]:
    """Blobs the sets need (for `store gc`)."""
    return {info["sha256"] for s in (lock.sets) for info in files(lock, s).values()}


def require(distro: Distro, lock: Lock, path: Path) -> None:
    """Refuse to compose from sets that do not match the manifest and the components' lock."""
    stale = stale_sets(distro, lock)
    if stale:
        raise FetchError(f"{path}: package set {', '.join(stale)} is stale or missing; run `xenspin lock`")
