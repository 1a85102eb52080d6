"""Source releases (srcrelease.py) and the lock's Debian sources (debsources.py), without the network.

A small distribution with a git component (a local repository behind the mirror map), a
tarball (the tests' HTTP server) and an in-tree one; its lock's `sources:` names Debian source
packages the server's archive has, drops, or never had. The slow test at the end builds it,
then rebuilds a component from the release alone in a store of its own.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import UNREACHABLE, Keys, Server, commit, git, mirror_args, new_repo, one_line, snapshot_add, write

from builder import cli, debsources, fetch, lock, manifest, nightly, packagesets, pipeline, safetar, srcrelease
from builder.context import Context
from builder.errors import XenspinError
from builder.lock import Lock
from builder.manifest import Base
from builder.sources import module
from builder.sources import path as path_source
from builder.stage import Scheduler
from builder.store import Store

MIRROR = "http://deb.debian.org/debian"
GIT = "https://git.example.invalid/hello.git"
TARBALL = "https://files.example.invalid/greet-1.0.tar.gz"

DISTRO = """\
name: tiny
version: "1.0"
components:
  hello: {}
  greet: {}
  note: {}
installer:
  component: note
"""

RECIPES = {
    "components/hello.yaml": f"""\
source: {{git: {GIT}, ref: v1.0}}
steps:
  - name: stage
    run: install -D -m 0644 "$SRC/README" "$OUT/usr/share/hello/README"
package: {{name: hello-xs}}
""",
    "components/greet.yaml": f"""\
source: {{url: {TARBALL}}}
steps:
  - name: stage
    run: install -D -m 0644 "$SRC/greet.txt" "$OUT/usr/share/greet/greet.txt"
package: {{name: greet-xs}}
""",
    "components/note.yaml": """\
source: {path: note}
steps:
  - name: stage
    run: install -D -m 0755 "$SRC/bin/note" "$OUT/usr/bin/note"
package: {name: note-xs}
""",
    "components/note/bin/note": "#!/bin/sh\necho note\n",
    "components/note/README": "an in-tree component\n",
}


def tarball(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_project(where: Path, server: Server) -> dict[str, str]:
    """The small distribution at where/project, its git upstream, its tarball on the server; the mirror map."""
    project = where / "project"
    (project / "components").mkdir(parents=True)
    (project / "distro.yaml").write_text(DISTRO)
    write(project, RECIPES)
    (project / "components/note/bin/note").chmod(0o755)
    upstream = new_repo(where / "git" / "hello.git", "hello one\n")
    git(upstream, "tag", "-a", "-m", "release 1.0", "v1.0")
    commit(upstream, "after the release\n")  # the branch moves on; the lock keeps the tag
    (server.root / "files").mkdir(exist_ok=True)
    (server.root / "files/greet-1.0.tar.gz").write_bytes(tarball({"greet-1.0/greet.txt": b"greetings\n"}))
    return {
        "https://git.example.invalid/": (where / "git").as_uri() + "/",
        "https://files.example.invalid/": server.url("files/"),
        f"{MIRROR}/": server.url("debian/"),
        "https://snapshot.debian.org/": server.url("snapshot/"),
    }


def dsc(name: str, version: str, files: dict[str, bytes]) -> bytes:
    sums = "".join(f" {hashlib.sha256(d).hexdigest()} {len(d)} {n}\n" for n, d in files.items())
    return f"Format: 3.0 (native)\nSource: {name}\nVersion: {version}\nChecksums-Sha256:\n{sums}".encode()


def source_package(name: str, version: str) -> dict[str, bytes]:
    """A native source package's files: the .dsc and its tarball."""
    tar = {f"{name}_{version}.tar.xz": lzma.compress(f"{name} {version}\n".encode())}
    return {f"{name}_{version}.dsc": dsc(name, version, tar), **tar}


def sources_entry(name: str, version: str, files: dict[str, bytes], binaries: list[str]) -> dict:
    return {
        "package": name,
        "version": version,
        "mirror": MIRROR,
        "directory": f"pool/main/{name[0]}/{name}",
        "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in files.items()},
        "binaries": binaries,
    }


def publish(server: Server, entry: dict, files: dict[str, bytes]) -> None:
    for n, d in files.items():
        dest = server.root / "debian" / entry["directory"] / n
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(d)


@pytest.fixture
def tiny(tmp_path: Path, server: Server) -> tuple[Context, manifest.Distro, Lock]:
    """The small distribution locked and fetched into a store; its lock's sources name four Debian
    sources: foo (on the mirror), qux (only in the snapshot archive), bar (nowhere), baz (not in the index)."""
    mirrors = make_project(tmp_path, server)
    path = tmp_path / "project/distro.yaml"
    distro = manifest.load(path)
    ctx = Context(store=Store(tmp_path / "store"), base=Base(suite="trixie"), mirrors=mirrors, manifest=path)
    current, _ = lock.resolve(distro, None, ctx)
    fetch.fetch(distro, current, ctx)
    foo, qux, bar = source_package("foo", "1.0"), source_package("qux", "2.1-1"), source_package("bar", "2.0")
    entries = {
        "foo_1.0": sources_entry("foo", "1.0", foo, ["foo", "libfoo1"]),
        "qux_2.1-1": sources_entry("qux", "2.1-1", qux, ["qux"]),
        "bar_2.0": sources_entry("bar", "2.0", bar, ["bar"]),
        "baz_3.0": {"package": "baz", "version": "3.0", "binaries": ["baz"], "missing": "not in the signed index"},
    }
    publish(server, entries["foo_1.0"], foo)
    for n, d in qux.items():
        (tmp_path / n).write_bytes(d)
    snapshot_add(server.root / "snapshot", "mr/package/qux/2.1-1/srcfiles", {n: tmp_path / n for n in qux})
    current.sources = {"inputs": "x", "packages": entries}
    lock.write(path.with_suffix(".lock"), current)
    return ctx, distro, current


def release(ctx: Context, distro: manifest.Distro, current: Lock, **kw: object) -> tuple[Path, dict, bool]:
    """Fetch the Debian sources' files, run the stage; its tree, metadata and whether it was made."""
    gaps = srcrelease.fetch(current, ctx)
    stage = srcrelease.stage(ctx, distro, current, lock.lock_path(ctx.manifest), gaps, dict(kw))  # type: ignore[arg-type]
    done = Scheduler(ctx.store, [stage]).run()[srcrelease.STAGE_ID]
    assert done.done.path is not None and done.done.meta is not None
    return done.done.path, done.done.meta, done.made


def files_in(tree: Path) -> dict[str, bytes]:
    return {p.relative_to(tree).as_posix(): p.read_bytes() for p in sorted(tree.rglob("*")) if p.is_file()}


def test_holds_every_source_the_lock_names_and_nothing_else(tiny) -> None:
    ctx, distro, current = tiny
    top, meta, made = release(ctx, distro, current)
    assert made and top.name == "tiny-1.0-source"
    assert sorted(files_in(top)) == [
        "SHA256SUMS",
        "components/greet/greet-1.0.tar.gz",
        "components/hello.bundle",
        "components/note.tar.gz",
        "debian/pool/main/f/foo/foo_1.0.dsc",
        "debian/pool/main/f/foo/foo_1.0.tar.xz",
        "debian/pool/main/q/qux/qux_2.1-1.dsc",
        "debian/pool/main/q/qux/qux_2.1-1.tar.xz",
        "distro.lock",
        "index.json",
        "index.md",
    ]
    # SHA256SUMS covers every other file, as sha256sum checks it
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=top, check=True)
    assert len((top / "SHA256SUMS").read_text().splitlines()) == 10
    assert (top / "distro.lock").read_bytes() == lock.lock_path(ctx.manifest).read_bytes()
    # the locked files, byte for byte
    tar = files_in(top)["components/greet/greet-1.0.tar.gz"]
    assert hashlib.sha256(tar).hexdigest() == current.components["greet"]["sha256"]
    assert meta["incomplete"] == ["bar 2.0", "baz 3.0"] and meta["missing_files"] == 2


def test_index_says_name_version_licence_sha256_and_what_is_missing(tiny) -> None:
    ctx, distro, current = tiny
    top, meta, _ = release(ctx, distro, current, **{"win-extra": "not in the lock (its source could not be resolved)"})
    index = json.loads((top / "index.json").read_text())
    comps = {c["name"]: c for c in index["components"]}
    assert sorted(comps) == ["greet", "hello", "note"]
    assert comps["hello"]["version"] == "1.0" and comps["greet"]["version"] == "1.0"
    assert comps["hello"]["locked"]["commit"] == current.components["hello"]["commit"]
    assert {c["licence"] for c in comps.values()} == {"NOASSERTION"}
    assert comps["greet"]["files"] == [
        {
            "path": "components/greet/greet-1.0.tar.gz",
            "sha256": current.components["greet"]["sha256"],
            "size": current.components["greet"]["size"],
        }
    ]
    debs = {p["name"]: p for p in index["debian"]}
    assert debs["foo"]["binaries"] == ["foo", "libfoo1"] and not debs["foo"]["missing"]
    assert [f["path"] for f in debs["qux"]["files"]] == [
        "debian/pool/main/q/qux/qux_2.1-1.dsc",
        "debian/pool/main/q/qux/qux_2.1-1.tar.xz",
    ]
    assert [m["file"] for m in debs["bar"]["missing"]] == ["bar_2.0.dsc", "bar_2.0.tar.xz"]
    assert (
        debs["bar"]["missing"][0]["why"] == "the mirror: HTTP 404 Not Found; the snapshot archive: HTTP 404 Not Found"
    )
    assert debs["baz"]["missing_source"] == "not in the signed index"
    assert index["incomplete"] == {"packages": 2, "files": 2, "names": ["bar 2.0", "baz 3.0"]}
    assert index["left_out"] == {"win-extra": "not in the lock (its source could not be resolved)"}
    md = (top / "index.md").read_text()
    assert f"| hello | 1.0 | NOASSERTION | components/hello.bundle | {comps['hello']['files'][0]['sha256']} |" in md
    assert "| bar | 2.0 | NOASSERTION | bar_2.0.dsc: missing (the mirror: HTTP 404 Not Found;" in md
    line = srcrelease.summary(meta)
    assert line == (
        "source release: 2 of 4 Debian source packages incomplete "
        "(2 files neither the mirror nor the snapshot archive gave): bar 2.0, baz 3.0"
    )


def test_same_lock_same_bytes_and_a_second_build_finds_it(tiny, tmp_path: Path) -> None:
    ctx, distro, current = tiny
    first, _, made = release(ctx, distro, current)
    assert made
    again, _, made = release(ctx, distro, current)
    assert not made and again == first  # a no-op build does not write it again
    # Another store, its mirror packed another way: the same bytes, bundle included.
    other = Context(store=Store(tmp_path / "store2"), base=ctx.base, mirrors=ctx.mirrors, manifest=ctx.manifest)
    fetch.fetch(distro, current, other)
    mirror = other.store.git_path(GIT)
    subprocess.run(["git", f"--git-dir={mirror}", "repack", "-a", "-d", "-f", "--depth=3", "-q"], check=True)
    second, _, _ = release(other, distro, current)
    assert files_in(second) == files_in(first)


def test_bundle_and_tarball_give_the_locked_source_back(tiny, tmp_path: Path) -> None:
    ctx, distro, current = tiny
    top, _, _ = release(ctx, distro, current)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(top / "components/hello.bundle"), str(clone)], check=True)
    assert (clone / "README").read_text() == "hello one\n"  # HEAD: the locked commit, not the branch's tip
    tags = subprocess.run(["git", "-C", str(clone), "tag"], capture_output=True, text=True, check=True).stdout
    assert tags.split() == ["v1.0"]
    unpacked = tmp_path / "unpacked"
    with tarfile.open(top / "components/note.tar.gz") as tar:
        names = tar.getnames()
        assert names == sorted(names, key=lambda n: n.split("/")) and {m.mtime for m in tar.getmembers()} == {0}
        safetar.extract(tar, unpacked, exact_modes=True)  # Debian 12's Python 3.11.2 has no extraction filters
    here = ctx.project / "components/note"
    assert path_source.digest(unpacked / "components/note") == path_source.digest(here)


def test_fetch_from_a_release_fills_a_new_store_offline(tiny, tmp_path: Path, capsys) -> None:
    ctx, distro, current = tiny
    top, _, _ = release(ctx, distro, current)
    shutil.rmtree(tmp_path / "git")  # the upstream is gone
    store = tmp_path / "store3"
    # the components named: this lock has no build roots' sets (the archive is not at hand here)
    argv = ["-f", str(ctx.manifest), "--store", str(store), "--offline", "fetch", "hello", "greet", "note"]
    assert cli.main([*argv, "--from", str(top)]) == 0, capsys.readouterr().err
    said = capsys.readouterr()
    assert "files into the store; git: hello" in said.err and "fetched: greet, hello" in said.out
    new = Context(store=Store(store), base=ctx.base, manifest=ctx.manifest, offline=True)
    exported = module("git").tree(current.components["hello"], new, tmp_path / "export")
    assert (exported / "README").read_text() == "hello one\n"
    assert all(new.store.has_blob(f["sha256"]) for f in current.sources["packages"]["foo_1.0"]["files"].values())


def test_a_tampered_release_file_is_refused(tiny, tmp_path: Path, capsys) -> None:
    """SHA256SUMS only says where to look: the lock's sha256 decides, and a changed file is not stored."""
    ctx, distro, current = tiny
    top, _, _ = release(ctx, distro, current)
    copy = tmp_path / "copy"
    shutil.copytree(top, copy)
    tar = copy / "components/greet/greet-1.0.tar.gz"
    tar.unlink()
    tar.write_bytes(b"not the locked bytes")
    store = tmp_path / "store4"
    argv = ["-f", str(ctx.manifest), "--store", str(store), "--offline", "fetch", "greet", "--from", str(copy)]
    capsys.readouterr()
    assert cli.main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "greet-1.0.tar.gz: sha256 mismatch" in last and last.endswith("nothing stored")
    assert not Store(store).has_blob(current.components["greet"]["sha256"])


def test_strict_refuses_an_incomplete_release(tiny) -> None:
    ctx, distro, current = tiny
    with pytest.raises(XenspinError) as e:
        pipeline.source_release(distro, ctx, current, lock.lock_path(ctx.manifest), {}, strict=True)
    assert one_line(e) == "--strict: the source release would lack 2 Debian sources: bar 2.0, baz 3.0"


def test_publish_replaces_the_release_in_out(tiny, tmp_path: Path) -> None:
    ctx, distro, current = tiny
    top, _, _ = release(ctx, distro, current)
    out = tmp_path / "out"
    out.mkdir()
    (out / "tiny-1.0-source").mkdir()
    (out / "tiny-1.0-source/stale").write_text("from before\n")
    dest = srcrelease.publish(top, out)
    assert files_in(dest) == files_in(top)
    assert sorted(p.name for p in out.iterdir()) == ["tiny-1.0-source"]


def test_a_shallow_mirror_gives_the_commits_tree(tmp_path: Path, server: Server) -> None:
    mirrors = make_project(tmp_path, server)
    shallow = tmp_path / "shallow"
    subprocess.run(
        [
            "git",
            "clone",
            "-q",
            "--bare",
            "--depth=1",
            "--no-single-branch",
            (tmp_path / "git/hello.git").as_uri(),
            str(shallow),
        ],
        check=True,
    )
    shutil.rmtree(tmp_path / "git/hello.git")
    shutil.move(shallow, tmp_path / "git/hello.git")
    path = tmp_path / "project/distro.yaml"
    distro = manifest.load(path)
    ctx = Context(store=Store(tmp_path / "store"), base=Base(suite="trixie"), mirrors=mirrors, manifest=path)
    current, _ = lock.resolve(distro, None, ctx)
    entry = current.components["hello"]
    module("git").fetch("hello", distro.components["hello"].source, entry, ctx)
    got = module("git").release_files("hello", entry, ctx, tmp_path / "rel", 0)
    name = f"components/hello-{entry['commit'][:12]}.tar.gz"
    assert list(got) == [name]
    with tarfile.open(tmp_path / "rel" / name) as tar:
        assert tar.extractfile(f"hello-{entry['commit'][:12]}/README").read() == b"hello one\n"


# --- the lock's sources: from the signed indexes ---------------------------------------------------


def signed_archive(dists: Path, keys: Keys, packages: str, sources: str) -> Path:
    """dists/trixie with Packages.xz and Sources.xz, its InRelease clearsigned by keys.good; a keyring of that key."""
    listed = []
    for name, text in (("main/binary-amd64/Packages.xz", packages), ("main/source/Sources.xz", sources)):
        data = lzma.compress(text.encode())
        (dists / name).parent.mkdir(parents=True, exist_ok=True)
        (dists / name).write_bytes(data)
        listed.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {name}\n")
    (dists / "Release").write_text(
        "Origin: Debian\nSuite: stable\nCodename: trixie\nDate: Sat, 05 Dec 2026 00:00:00 UTC\n"
        "Architectures: amd64\nComponents: main\nSHA256:\n" + "".join(listed)
    )
    keys.gpg("--yes", "--local-user", keys.good, "--output", dists / "InRelease", "--clearsign", dists / "Release")
    keyring = dists.parent / "keyring.gpg"
    keys.gpg("--yes", "--output", keyring, "--export", keys.good)
    return keyring


def binary(name: str, version: str, extra: str = "") -> str:
    return (
        f"Package: {name}\nVersion: {version}\nArchitecture: amd64\n{extra}"
        f"Filename: pool/main/{name[0]}/{name}/{name}_{version}_amd64.deb\nSize: 1\nSHA256: {'0' * 64}\n"
    )


def source(name: str, version: str, files: dict[str, bytes]) -> str:
    sums = "".join(f" {hashlib.sha256(d).hexdigest()} {len(d)} {n}\n" for n, d in files.items())
    return f"Package: {name}\nVersion: {version}\nDirectory: pool/main/{name[0]}/{name}\nChecksums-Sha256:\n{sums}"


def test_lock_resolves_each_shipped_debs_source(tmp_path: Path, server: Server, keys: Keys) -> None:
    """Source: with a version (a binNMU, a signed template), Built-Using, a source the index lacks;
    build roots' sets are left out."""
    packages = "\n".join(
        [
            binary("libfoo1", "1.0+b1", "Source: foo (1.0)\n"),
            binary("foo", "1.0"),
            binary("linux-image-amd64", "6.12-1", "Source: linux-signed (6.12+1)\nBuilt-Using: linux (= 6.12-1)\n"),
            binary("orphan", "9"),
            binary("gcc", "14"),
        ]
    )
    foo, signed, linux = (
        source_package("foo", "1.0"),
        source_package("linux-signed", "6.12+1"),
        source_package("linux", "6.12-1"),
    )
    sources = "\n".join(
        [source("foo", "1.0", foo), source("linux-signed", "6.12+1", signed), source("linux", "6.12-1", linux)]
    )
    keyring = signed_archive(server.root / "debian/dists/trixie", keys, packages, sources)
    ctx = Context(
        store=Store(tmp_path / "store"),
        base=Base(suite="trixie", keyring=str(keyring)),
        mirrors={f"{MIRROR}/": server.url("debian/")},
    )

    def deb(name: str, version: str) -> dict:
        return {"version": version, "architecture": "amd64", "source": name, "sha256": "0" * 64}

    current = Lock(
        sets={
            "rootfs": {
                "packages": {
                    "foo": deb("foo", "1.0"),
                    "libfoo1": deb("libfoo1", "1.0+b1"),
                    "orphan": deb("orphan", "9"),
                }
            },
            "iso": {"packages": {"linux-image-amd64": deb("linux-image-amd64", "6.12-1")}},
            "buildroot-0123": {"packages": {"gcc": deb("gcc", "14")}},
        }
    )
    assert debsources.stale(current)
    current.sources = debsources.resolve(current, ctx)
    assert not debsources.stale(current)
    got = debsources.entries(current)
    assert sorted(got) == ["foo_1.0", "linux-signed_6.12+1", "linux_6.12-1", "orphan_9"]
    assert got["foo_1.0"]["binaries"] == ["foo", "libfoo1"]
    assert got["foo_1.0"]["files"]["foo_1.0.dsc"]["sha256"] == hashlib.sha256(foo["foo_1.0.dsc"]).hexdigest()
    assert got["linux_6.12-1"]["built-using"] == ["linux-image-amd64"] and got["linux_6.12-1"]["binaries"] == []
    assert got["orphan_9"]["missing"] == "not in the signed Sources index of trixie main"
    assert (
        "missing" not in got["linux-signed_6.12+1"]
        and got["linux-signed_6.12+1"]["directory"] == "pool/main/l/linux-signed"
    )
    # the sets change: stale again; the entries still wanted are kept as they are
    current.sets["rootfs"]["packages"].pop("orphan")
    assert debsources.stale(current)
    again = debsources.resolve(current, ctx)
    assert sorted(again["packages"]) == ["foo_1.0", "linux-signed_6.12+1", "linux_6.12-1"]
    assert again["packages"]["foo_1.0"] == got["foo_1.0"]
    assert "4 Debian source packages" in debsources.summary(Lock(sets=current.sets, sources=current.sources))


def test_nightly_index_links_the_source_release(tmp_path: Path) -> None:
    root = tmp_path / "nightly"

    def build(out: Path) -> None:
        (out / "demo-0.1-amd64.iso").write_bytes(b"iso")
        (out / "demo-0.1-source/components").mkdir(parents=True)
        (out / "demo-0.1-source/components/x.tar.gz").write_bytes(b"12345")
        (out / "demo-0.1-source/SHA256SUMS").write_text("x\n")

    nightly.run(root, build, keep=2, title="demo", date="20260101")
    index = json.loads((root / "index.json").read_text())
    assert index["builds"][0]["sources"] == {"name": "demo-0.1-source/", "href": "20260101/demo-0.1-source/", "size": 7}
    assert '<a href="20260101/demo-0.1-source/">sources</a>' in (root / "index.html").read_text()


# --- rebuilding from the release alone ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.network  # build roots come from the Debian archive
def test_rebuild_from_the_release_alone_gives_the_same_debs(
    tmp_path: Path, server: Server, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Build with --sources; the upstreams go away; in a new project (the recipes, the lock and the
    in-tree source unpacked from the release) and a new store, `fetch --from` the release, then an
    offline build: every component's .deb is the same bytes."""
    mirrors = {k: v for k, v in make_project(tmp_path, server).items() if "debian.org" not in k}
    project = tmp_path / "project"
    argv = ["-f", str(project / "distro.yaml"), "--store", str(store), "--out", str(tmp_path / "out")]
    assert cli.main([*argv, *mirror_args(mirrors), "--json", "build", "--sources"]) == 0, capsys.readouterr().err
    first = json.loads(capsys.readouterr().out)
    top = Path(first["sources"]["path"])
    assert top == tmp_path / "out/tiny-1.0-source"
    current = lock.read(project / "distro.lock")
    assert current is not None and not current.sources  # no rootfs: no Debian packages shipped
    assert sorted(files_in(top)) == [
        "SHA256SUMS",
        "components/greet/greet-1.0.tar.gz",
        "components/hello.bundle",
        "components/note.tar.gz",
        "distro.lock",
        "index.json",
        "index.md",
    ]
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=top, check=True)

    shutil.rmtree(tmp_path / "git")
    server.stop()
    again = tmp_path / "again"
    (again / "components").mkdir(parents=True)
    for name in ("distro.yaml", "distro.lock", *(n for n in RECIPES if n.endswith(".yaml"))):
        shutil.copyfile(project / name, again / name)
    with tarfile.open(top / "components/note.tar.gz") as tar:
        safetar.extract(tar, again)
    gone = {"https://git.example.invalid/": UNREACHABLE, "https://files.example.invalid/": UNREACHABLE}
    fresh = ["-f", str(again / "distro.yaml"), "--store", str(tmp_path / "store2"), "--out", str(again / "out")]
    assert cli.main([*fresh, *mirror_args(gone), "fetch", "--from", str(top)]) == 0, capsys.readouterr().err
    assert "git: hello" in capsys.readouterr().err
    assert cli.main([*fresh, "--offline", "--json", "build"]) == 0, capsys.readouterr().err
    second = json.loads(capsys.readouterr().out)
    assert sorted(second["built"]) == ["greet", "hello", "note"]
    for comp in ("greet", "hello", "note"):
        (one,), (two,) = first["debs"][comp], second["debs"][comp]
        assert Path(one).read_bytes() == Path(two).read_bytes(), comp


def test_offline_build_sources_needs_the_section_in_the_lock(tmp_path: Path, server: Server) -> None:
    """A lock from before `sources:` (sets locked, no section): --sources resolves it, which --offline cannot."""
    make_project(tmp_path, server)
    path = tmp_path / "project/distro.yaml"
    path.write_text(DISTRO + "rootfs:\n  packages: [less]\n")
    distro = manifest.load(path)
    ctx = Context(store=Store(tmp_path / "store"), base=Base(suite="trixie"), manifest=path, offline=True)
    current = Lock(components={n: {"kind": "path", "path": f"components/{n}"} for n in distro.components})
    for n, comp in distro.components.items():
        current.components[n]["recipe"] = lock.recipe_digest(comp, path.parent)
    less = {"version": "1", "architecture": "amd64", "source": "less", "filename": "l.deb", "sha256": "0" * 64}
    current.sets = {
        n: {"inputs": s.inputs, "packages": {"less": less}}
        for n, s in packagesets.package_sets(distro, current).items()
    }
    lock.write(path.with_suffix(".lock"), current)
    assert debsources.stale(current)
    same = pipeline.current_lock(distro, path.with_suffix(".lock"), ctx, strict=False, say=print)
    assert same == current  # without --sources nothing is missing
    with pytest.raises(XenspinError) as e:
        pipeline.current_lock(distro, path.with_suffix(".lock"), ctx, strict=False, say=print, sources=True)
    assert one_line(e).endswith(
        "distro.lock: without the Debian sources of its package sets (`xenspin lock` adds them); "
        "--offline forbids resolving sources"
    )
