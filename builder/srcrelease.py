"""Source releases: NAME-VERSION-source/ beside the ISO, every locked source that went into it.

    NAME-VERSION-source/
      SHA256SUMS                   every other file's sha256 (`sha256sum -c SHA256SUMS` in the directory)
      index.json, index.md         each source: name, version, licence, files and their sha256, what is missing
      distro.lock                  the lock it was made from (the lock file's own name)
      components/NAME.bundle       a git component: the locked commit and its history (`git clone` takes it)
      components/NAME/FILE         a tarball or prebuilt component: the locked file (and its signature)
      components/NAME.tar.gz       an in-tree component: its tree, reproducibly packed
      debian/pool/...              Debian source packages (.dsc, orig and debian tarballs): a `debian:`
                                   component's, and those of every .deb on the ISO (the lock's `sources:`)

It is a stage (kind `srcrelease`) made from the lock and the store alone: its key is the lock,
the in-tree trees' digests, the components' licences and which Debian source files the store
lacks (and why), so a no-op build finds it and the same lock gives the same bytes. The Debian
files are fetched before it (`fetch`), verified by the sha256s the lock took from the signed
Sources index; one neither the mirror nor the snapshot archive gives is listed as missing
rather than failing the build (`--strict` makes it fail). `publish` links the stage's tree
into out/; `import_release` takes a release's files back into a store (`xenspin fetch --from`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import debsources, licence, sbom
from .context import Context
from .errors import XenspinError
from .lock import Lock
from .manifest import Distro
from .sources import FetchError, Refused, debian, module
from .sources import path as path_source
from .stage import Needs, Stage
from .store import sha256_file

KIND = "srcrelease"
STAGE_ID = f"{KIND}:release"
FORMAT = 1  # what the stage writes; bump to write every source release again
INDEX_JSON = "index.json"
INDEX_MD = "index.md"
SUMS = "SHA256SUMS"


class SourceReleaseError(XenspinError):
    pass


def dir_name(name: str, version: str) -> str:
    """NAME-VERSION-source, beside NAME-VERSION-amd64.iso."""
    return f"{name}-{version}-source"


# --- fetching the Debian sources' files --------------------------------------------------


@dataclass
class Gaps:
    """The Debian source files the store lacks after fetching: sha256 -> why (one short, stable phrase)."""

    missing: dict[str, str] = field(default_factory=dict)
    fetched: int = 0
    present: int = 0


def fetch(lock: Lock, ctx: Context, jobs: int = 4) -> Gaps:
    """Every file of the lock's Debian sources into the store (mirror, then the snapshot archive), each
    checked against its locked sha256; what cannot be had is listed, not raised. A file whose bytes
    differ from the lock is refused and stops the build, as for any locked file."""
    gaps = Gaps()
    todo: dict[str, debian.ArchiveFile] = {}
    for entry in debsources.entries(lock).values():
        for f in debian.source_files(entry, ctx.base.mirror) if "files" in entry else []:
            if ctx.store.has_blob(f.sha256):
                gaps.present += 1
            elif ctx.offline:
                gaps.missing[f.sha256] = "offline: not in the store"
            else:
                todo[f.sha256] = f
    quiet = dataclasses.replace(ctx, progress=None)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(debian.download, f, quiet, f"source {f.name}", ctx.say): f for f in todo.values()}
        for fut in concurrent.futures.as_completed(futures):
            f = futures[fut]
            try:
                fut.result()
                gaps.fetched += 1
            except debian.NotArchived as e:
                gaps.missing[f.sha256] = f"the mirror: {e.mirror}; the snapshot archive: {e.snapshot}"
            except Refused:
                raise
            except FetchError as e:
                gaps.missing[f.sha256] = f"not fetched: {str(e).rsplit(': ', 1)[-1]}"
    return gaps


def incomplete(lock: Lock, gaps: Gaps) -> list[str]:
    """Each locked Debian source the release will lack files of (or all of), as NAME VERSION."""
    out = []
    for entry in debsources.entries(lock).values():
        files = (entry.get("files") or {}).values()
        if "missing" in entry or any(f["sha256"] in gaps.missing for f in files):
            out.append(f"{entry['package']} {entry['version']}")
    return sorted(out)


# --- the stage ---------------------------------------------------------------------------


@dataclass
class Inputs:
    """Everything the release holds or says, as plain data (its key), but the Debian packages' licences."""

    name: str
    version: str
    epoch: int
    lock: dict[str, str]  # file (its name), sha256
    archive: dict[str, Any]
    components: dict[str, dict[str, Any]]  # name -> entry, tree digest, licence, version
    debian: dict[str, dict[str, Any]]  # the lock's sources: packages
    missing: dict[str, str]  # sha256 -> why
    left_out: dict[str, str]


def stage(ctx: Context, distro: Distro, lock: Lock, lock_file: Path, gaps: Gaps, left_out: dict[str, str]) -> Stage:
    """The source release as a stage: made from the lock, the store and the in-tree sources only."""
    lock_bytes = lock_file.read_bytes()  # once: the key and the copy in the release are the same bytes
    epoch = ctx.source_date_epoch(lock.archive)

    def inputs_of() -> Inputs:
        comps: dict[str, dict[str, Any]] = {}
        for name, entry in sorted(lock.components.items()):
            comp = distro.components.get(name)
            if comp is None or name in left_out:
                continue
            kind = module(comp.source.kind)
            here = kind.in_tree(comp.source)
            tree = path_source.digest(here) if here is not None else ""
            comps[name] = {
                "entry": entry,
                "tree": tree,
                "licence": getattr(comp, "license", "") or licence.NOASSERTION,
                "version": _version(kind, entry, tree),
            }
        wanted = {f["sha256"] for e in debsources.entries(lock).values() for f in (e.get("files") or {}).values()}
        return Inputs(
            name=distro.name,
            version=distro.version,
            epoch=epoch,
            lock={"file": lock_file.name, "sha256": hashlib.sha256(lock_bytes).hexdigest()},
            archive={k: lock.archive[k] for k in ("mirror", "suite", "date") if k in lock.archive},
            components=comps,
            debian=debsources.entries(lock),
            missing={sha: why for sha, why in sorted(gaps.missing.items()) if sha in wanted},
            left_out=dict(sorted(left_out.items())),
        )

    def make(tmp: Path, _needs: Needs) -> dict[str, Any]:
        inp = inputs_of()
        top = tmp / dir_name(inp.name, inp.version)
        top.mkdir()
        return write(top, inp, lock_bytes, ctx, lock)

    return Stage(KIND, "release", FORMAT, lambda _needs: dataclasses.asdict(inputs_of()), make, clamp=epoch)


def _version(kind: Any, entry: dict[str, Any], tree: str) -> str:
    """What names a component's source's version: its upstream version, an in-tree source's tree digest,
    archive packages' versions."""
    if tree:
        return f"tree {tree[:12]}"
    debs = entry.get("packages") if kind.debs(entry) is not None else None
    if debs:
        return ", ".join(sorted({str(p["version"]) for p in debs.values()}))
    return kind.upstream_version(entry)


def write(top: Path, inp: Inputs, lock_bytes: bytes, ctx: Context, lock: Lock) -> dict[str, Any]:
    """Fill top with the release; return the stage's metadata (its top directory, counts, what is missing)."""
    sums: dict[str, str] = {}
    components = []
    for name, c in inp.components.items():
        entry = c["entry"]
        files = module(entry["kind"]).release_files(name, entry, ctx, top, inp.epoch)
        sums.update(files)
        components.append(
            {
                "name": name,
                "kind": entry["kind"],
                "version": c["version"],
                "licence": c["licence"],
                "locked": {k: v for k, v in entry.items() if k not in ("recipe", "keys")},
                "files": _records(top, files),
            }
        )
    licences = _licences(lock, ctx)
    packages = []
    for key, entry in sorted(inp.debian.items()):
        what = f"source release: Debian source {entry['package']} {entry['version']}"
        files = debian.pool_files(entry, ctx, top, what) if "files" in entry else {}
        sums.update(files)
        have = set(files.values())
        missing = [
            {"file": fn, "sha256": f["sha256"], "why": inp.missing.get(f["sha256"], "not in the store")}
            for fn, f in sorted((entry.get("files") or {}).items())
            if f["sha256"] not in have
        ]
        if "files" in entry and not missing:
            debian.check_dsc(f"source release: {key}", entry, ctx)  # the .dsc names exactly the locked files
        record: dict[str, Any] = {
            "name": entry["package"],
            "version": entry["version"],
            "licence": _joined([licences.get(b, licence.NOASSERTION) for b in entry.get("binaries", [])]),
            "binaries": entry.get("binaries", []),
            "files": _records(top, files),
            "missing": missing,
        }
        if entry.get("built-using"):
            record["built_using"] = entry["built-using"]
        if "missing" in entry:
            record["missing_source"] = entry["missing"]
        packages.append(record)
    (top / inp.lock["file"]).write_bytes(lock_bytes)
    sums[inp.lock["file"]] = inp.lock["sha256"]
    incomplete = [f"{p['name']} {p['version']}" for p in packages if p["missing"] or "missing_source" in p]
    index = {
        "name": inp.name,
        "version": inp.version,
        "lock": inp.lock,
        "archive": inp.archive,
        "components": components,
        "debian": packages,
        "left_out": inp.left_out,
        "incomplete": {
            "packages": len(incomplete),
            "files": sum(len(p["missing"]) for p in packages),
            "names": incomplete,
        },
    }
    (top / INDEX_JSON).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (top / INDEX_MD).write_text(markdown(index))
    for name in (INDEX_JSON, INDEX_MD):
        sums[name] = sha256_file(top / name)
    (top / SUMS).write_text("".join(f"{sha}  {rel}\n" for rel, sha in sorted(sums.items())))
    size = sum((top / rel).stat().st_size for rel in sums)
    return {
        "top": top.name,
        "files": len(sums) + 1,
        "bytes": size,
        "packages": len(packages),
        "incomplete": incomplete,
        "missing_files": index["incomplete"]["files"],
    }


def _records(top: Path, files: dict[str, str]) -> list[dict[str, Any]]:
    return [{"path": rel, "sha256": sha, "size": (top / rel).stat().st_size} for rel, sha in sorted(files.items())]


def _licences(lock: Lock, ctx: Context) -> dict[str, str]:
    """Each shipped .deb's declared licence (its copyright file, as the SBOM reads it), from the store."""
    debs = [
        {"name": pkg, "sha256": info["sha256"]}
        for set_name in debsources.SHIPPED
        for pkg, info in sorted(((lock.sets.get(set_name) or {}).get("packages") or {}).items())
    ]
    if not debs:
        return {}
    store = ctx.store
    return sbom.licences(debs, lambda p: store.blob_path(p["sha256"]) if store.has_blob(p["sha256"]) else None)


def _joined(expressions: list[str]) -> str:
    """One licence for a source from its binaries': the same for all (the usual case), else them all ANDed."""
    known = sorted({e for e in expressions if e != licence.NOASSERTION})
    if not known:
        return licence.NOASSERTION
    if len(known) == 1:
        return known[0]
    return " AND ".join(f"({e})" if " " in e else e for e in known)


def markdown(index: dict[str, Any]) -> str:
    """index.md: the index as tables a person reads, one row per file."""
    lines = [
        f"# {index['name']} {index['version']}: source release",
        "",
        f"Every source that went into {index['name']} {index['version']}, as `{index['lock']['file']}` locks it. "
        f"Check the files with `sha256sum -c {SUMS}` in this directory.",
        "",
        "## Components",
        "",
        "| name | version | licence | file | sha256 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in index["components"]:
        rows = c["files"] or [{"path": _no_files(c), "sha256": ""}]
        for f in rows:
            lines.append(f"| {c['name']} | {c['version']} | {c['licence']} | {f['path']} | {f['sha256']} |")
    inc = index["incomplete"]
    lines += [
        "",
        f"## Debian source packages ({len(index['debian'])}, {inc['packages']} incomplete)",
        "",
        "| name | version | licence | file | sha256 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for p in index["debian"]:
        head = f"| {p['name']} | {p['version']} | {p['licence']} "
        if "missing_source" in p:
            lines.append(f"{head}| missing: {p['missing_source']} | |")
        for f in p["files"]:
            lines.append(f"{head}| {f['path']} | {f['sha256']} |")
        for m in p["missing"]:
            lines.append(f"{head}| {m['file']}: missing ({m['why']}) | {m['sha256']} |")
    if index["left_out"]:
        lines += ["", "## Left out of this build", ""]
        lines += [f"- {name}: {why}" for name, why in index["left_out"].items()]
    return "\n".join(line.replace("\n", " ") for line in lines) + "\n"


def _no_files(c: dict[str, Any]) -> str:
    if c["kind"] == "archive":
        return "(Debian binary packages: their sources are below)"
    if c["kind"] == "component":
        return f"(the source of {c['locked'].get('component')})"
    return "(none)"


# --- out/ ----------------------------------------------------------------------------------


def publish(made: Path, out: Path) -> Path:
    """Put a copy of the stage's tree (hard links where out/ shares the store's filesystem) at
    out/NAME-VERSION-source, replacing the one there only once complete. Call under aptrepo.out_lock(out)."""
    dest = out / made.name
    tmp = out / f".{made.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(made, tmp, copy_function=_link)
    old = out / f".{made.name}.old{os.getpid()}"
    if dest.exists():
        os.rename(dest, old)
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def summary(meta: dict[str, Any]) -> str | None:
    """The one line a build prints when the release lacks something, else None."""
    names = meta.get("incomplete") or []
    if not names:
        return None
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return (
        f"source release: {len(names)} of {meta.get('packages', 0)} Debian source packages incomplete "
        f"({meta.get('missing_files', 0)} files neither the mirror nor the snapshot archive gave): {shown}"
    )


# --- into a store ---------------------------------------------------------------------------


@dataclass
class Imported:
    """What `fetch --from` took from a release into the store."""

    blobs: int = 0
    git: list[str] = field(default_factory=list)  # components whose mirror it filled


def import_release(distro: Distro, lock: Lock, ctx: Context, release: Path, needed: set[str]) -> Imported:
    """Take a source release's files into the store: each whose sha256 is one the lock needs (needed) and
    the store lacks becomes a blob (its bytes checked: SHA256SUMS only says where to look), each git
    component's bundle goes into its mirror. The fetch that follows checks all of it against the lock."""
    sums = release / SUMS
    if not sums.is_file():
        raise SourceReleaseError(f"{release}: no {SUMS}: not a source release")
    got = Imported()
    for line in sums.read_text().splitlines():
        sha, _, rel = line.partition("  ")
        if sha not in needed or ctx.store.has_blob(sha) or ".." in rel.split("/") or rel.startswith("/"):
            continue
        src = release / rel
        if not src.is_file():
            continue
        tmp = ctx.store.tmp_path("import")
        shutil.copyfile(src, tmp)
        try:
            ctx.store.add_blob(tmp, sha, what=f"fetch --from {release}: {rel}")
        except XenspinError as e:
            raise Refused(str(e)) from None
        got.blobs += 1
    for name, entry in sorted(lock.components.items()):
        if name not in distro.components:
            continue
        kind = module(distro.components[name].source.kind)
        if not kind.fetched(entry, ctx):
            kind.import_files(name, entry, ctx, release)  # what is no blob: a git history
            if kind.fetched(entry, ctx):
                got.git.append(name)
    return got
