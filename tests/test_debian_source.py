"""The debian and archive source kinds, mostly against the real Debian archive (bookworm main).

Tests marked network fetch Sources.xz and Packages.xz (~9 MB each) once per session into a
shared store; tests that need an empty store or a hostile mirror make their own. The others
need no network: a local archive signed with a test key, served by the conftest's server.
"""

from __future__ import annotations

import copy
import hashlib
import json
import lzma
import re
import subprocess
from pathlib import Path

import pytest
import requests
from conftest import Keys, Server
from debian.debian_support import Version

from builder.manifest import ArchiveSource, Base, DebianSource, Update
from builder.sources import Context, FetchError, Missing, Refused
from builder.sources import debian as deb
from builder.sources import http as http_mod
from builder.store import Store

MIRROR = Base().mirror
INRELEASE = f"{MIRROR}/dists/bookworm/InRelease"


@pytest.fixture(scope="session")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Context:
    """One store and one per-run cache for the session, so each index is downloaded and split once."""
    return Context(store=Store(tmp_path_factory.mktemp("store")), base=Base())


@pytest.fixture(scope="session")
def xen(ctx: Context) -> dict:
    return deb.lock("xen", DebianSource(debian="xen"), ctx)


@pytest.fixture(scope="session")
def xen_fetched(ctx: Context, xen: dict) -> dict:
    deb.fetch("xen", DebianSource(debian="xen"), xen, ctx)
    return xen


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any HTTP request fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network used: {args[1:3]}")

    monkeypatch.setattr(requests.Session, "request", refuse)


def blobs(store: Store) -> list[Path]:
    return sorted((store.root / "blobs" / "sha256").glob("*/*"))


# --- the signed archive state ------------------------------------------------------


@pytest.mark.network
def test_archive_state_is_signed_release(ctx: Context) -> None:
    state = deb.archive_state(ctx)
    assert state["mirror"] == MIRROR
    assert state["suite"] == "bookworm"
    assert re.fullmatch(r"\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d UTC", state["date"])
    assert re.fullmatch(r"[0-9a-f]{64}", state["inrelease-sha256"])
    assert ctx.store.has_blob(state["inrelease-sha256"])  # the InRelease is kept, verified
    assert deb.archive_state(ctx) is state  # memoized for the run


@pytest.mark.network
def test_tampered_inrelease_is_refused_and_dropped(ctx: Context, server: Server, tmp_path: Path) -> None:
    genuine = ctx.store.blob_path(deb.archive_state(ctx)["inrelease-sha256"]).read_bytes()
    tampered = genuine.replace(b"\nLabel: Debian\n", b"\nLabel: Debiam\n", 1)
    assert tampered != genuine
    (server.root / "InRelease").write_bytes(tampered)
    local = Context(store=Store(tmp_path / "store"), base=Base(), mirrors={INRELEASE: server.url("InRelease")})
    with pytest.raises(Refused, match=r"^archive bookworm: InRelease refused by gpgv .*BAD signature") as e:
        deb.archive_state(local)
    assert "\n" not in str(e.value)
    assert not local.store.has_blob(hashlib.sha256(tampered).hexdigest())
    assert blobs(local.store) == []
    assert list((local.store.root / "tmp").iterdir()) == []  # no partial, no gpgv scratch


@pytest.mark.network
def test_inrelease_unsigned_by_keyring_is_refused(tmp_path: Path) -> None:
    """The real archive's InRelease against a keyring holding some other key."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--passphrase", ""]
    subprocess.run(
        [*gpg, "--quick-gen-key", "Other <o@example.invalid>", "ed25519", "sign", "never"],
        check=True,
        capture_output=True,
    )
    other = tmp_path / "other.gpg"
    other.write_bytes(subprocess.run([*gpg, "--export"], check=True, capture_output=True).stdout)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=True)
    local = Context(store=Store(tmp_path / "store"), base=Base(keyring=str(other)))
    with pytest.raises(Refused, match="no good signature from a key in the keyring"):
        deb.archive_state(local)
    assert blobs(local.store) == []


@pytest.mark.network
def test_genuine_release_of_another_suite_is_refused(tmp_path: Path) -> None:
    """A mirror answering bookworm with trixie's (validly signed) InRelease must not pass."""
    local = Context(
        store=Store(tmp_path / "store"),
        base=Base(),
        mirrors={INRELEASE: f"{MIRROR}/dists/trixie/InRelease"},
    )
    with pytest.raises(Refused, match=r"describes suite .*not 'bookworm'"):
        deb.archive_state(local)
    assert blobs(local.store) == []


def test_missing_keyring_is_one_line(tmp_path: Path) -> None:
    local = Context(store=Store(tmp_path / "store"), base=Base(keyring=str(tmp_path / "none.gpg")))
    with pytest.raises(FetchError, match=r"^archive bookworm: keyring .*none.gpg does not exist"):
        deb.archive_state(local)


@pytest.fixture
def requested(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every URL asked for over HTTP during the test (the request itself goes on)."""
    urls: list[str] = []
    real = requests.Session.request

    def record(self: requests.Session, method: str, url: str, *args: object, **kwargs: object) -> requests.Response:
        urls.append(url)
        return real(self, method, url, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", record)
    return urls


XEN_NEW, XEN_OLD = "4.17.5+23-ga4e5191dc0-1", "4.17.3+10-g091466ba55-1"


def source_paragraph(version: str, files: dict[str, bytes]) -> str:
    """A Sources paragraph for xen at version, listing files (name -> bytes) by sha256 and size."""
    sums = "".join(f" {hashlib.sha256(d).hexdigest()} {len(d)} {n}\n" for n, d in files.items())
    return (
        f"Package: xen\nVersion: {version}\nFormat: 3.0 (quilt)\nDirectory: pool/main/x/xen\nChecksums-Sha256:\n{sums}"
    )


def signed_archive(dists: Path, keys: Keys, sources: str) -> tuple[Path, str]:
    """A plain mirror's dists/bookworm (no by-hash/ directory, though its Release offers it), its InRelease
    clearsigned by keys.good; a keyring holding only that key and Sources.xz's sha256."""
    xz = lzma.compress(sources.encode())
    (dists / "main/source").mkdir(parents=True)
    (dists / "main/source/Sources.xz").write_bytes(xz)
    sha = hashlib.sha256(xz).hexdigest()
    (dists / "Release").write_text(
        "Origin: Debian\nLabel: Debian\nSuite: oldstable\nCodename: bookworm\n"
        "Date: Sat, 05 Dec 2026 00:00:00 UTC\nAcquire-By-Hash: yes\nArchitectures: amd64\nComponents: main\n"
        f"SHA256:\n {sha} {len(xz)} main/source/Sources.xz\n"
    )
    keys.gpg("--yes", "--local-user", keys.good, "--output", dists / "InRelease", "--clearsign", dists / "Release")
    (dists / "Release").unlink()
    keyring = dists.parent.parent.parent / "archive-keyring.gpg"
    keys.gpg("--yes", "--output", keyring, "--export", keys.good)
    return keyring, sha


def test_mirror_without_by_hash_falls_back(server: Server, keys: Keys, requested: list[str], tmp_path: Path) -> None:
    """A plain local mirror (no by-hash/) still works, and every URL goes through the mirror map: the mirror
    saw each request (by-hash first, then the plain path), and no other host was asked."""
    new = {f"xen_{XEN_NEW}.dsc": b"dsc\n", f"xen_{XEN_NEW.rsplit('-', 1)[0]}.orig.tar.xz": b"orig\n"}
    old = {f"xen_{XEN_OLD}.dsc": b"old dsc\n"}
    sources = source_paragraph(XEN_OLD, old) + "\n" + source_paragraph(XEN_NEW, new)
    keyring, sha = signed_archive(server.root / "debian/dists/bookworm", keys, sources)
    local = Context(
        store=Store(tmp_path / "store"), base=Base(keyring=str(keyring)), mirrors={MIRROR: server.url("debian")}
    )
    entry = deb.lock("xen", DebianSource(debian="xen"), local)
    assert entry == {
        "kind": "debian",
        "package": "xen",
        "version": XEN_NEW,
        "mirror": MIRROR,  # the canonical archive, not the mirror
        "directory": "pool/main/x/xen",
        "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in new.items()},
    }
    dists = "/debian/dists/bookworm"
    assert [s.path for s in server.seen] == [
        f"{dists}/InRelease",
        f"{dists}/main/source/by-hash/SHA256/{sha}",  # not there: 404, then the plain path
        f"{dists}/main/source/Sources.xz",
    ]
    assert requested and all(url.startswith(server.base) for url in requested), requested


# --- lock --------------------------------------------------------------------------


@pytest.mark.network
def test_lock_debian_xen(xen: dict) -> None:
    assert xen["kind"] == "debian"
    assert xen["package"] == "xen"
    assert xen["version"].startswith("4.17")
    assert xen["directory"] == "pool/main/x/xen"
    names = list(xen["files"])
    assert any(n.endswith(".dsc") for n in names)
    assert any(re.search(r"\.orig\.tar\.\w+$", n) for n in names)
    for f in xen["files"].values():
        assert re.fullmatch(r"[0-9a-f]{64}", f["sha256"])
        assert isinstance(f["size"], int) and f["size"] > 0
    assert json.loads(json.dumps(xen)) == xen  # plain data


@pytest.mark.network
def test_lock_exact_version_reuses_indexes(ctx: Context, xen: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_mod, "download", lambda *a, **k: pytest.fail("downloaded again"))
    again = deb.lock("xen", DebianSource(debian="xen", version=xen["version"]), ctx)
    assert again == xen


@pytest.mark.network
def test_lock_unknown_version_lists_versions(ctx: Context, xen: dict) -> None:
    with pytest.raises(FetchError, match=r"^lock xen: xen has no version '1\.0-1' in bookworm main \(has .*4\.17"):
        deb.lock("xen", DebianSource(debian="xen", version="1.0-1"), ctx)


@pytest.mark.network
def test_lock_unknown_source_suggests(ctx: Context) -> None:
    with pytest.raises(FetchError, match=r"^lock kernel: no source package 'linux-signd-amd64' .*'linux-signed-amd64'"):
        deb.lock("kernel", DebianSource(debian="linux-signd-amd64"), ctx)


@pytest.mark.network
def test_lock_archive(ctx: Context) -> None:
    entry = deb.lock("dom0", ArchiveSource(archive=["linux-image-amd64", "xen-utils-4.17"]), ctx)
    assert entry["kind"] == "archive"
    assert set(entry["packages"]) == {"linux-image-amd64", "xen-utils-4.17"}
    assert entry["packages"]["xen-utils-4.17"]["version"].startswith("4.17")
    for name, p in entry["packages"].items():
        assert p["version"]
        assert p["filename"].startswith("pool/main/") and p["filename"].endswith("_amd64.deb")
        assert p["filename"].split("/")[-1].startswith(name + "_")
        assert re.fullmatch(r"[0-9a-f]{64}", p["sha256"])
    assert json.loads(json.dumps(entry)) == entry
    deb.fetch("dom0", None, entry, ctx)
    assert deb.fetched(entry, ctx)


@pytest.mark.network
def test_lock_unknown_binary_suggests(ctx: Context) -> None:
    with pytest.raises(FetchError) as e:
        deb.lock("dom0", ArchiveSource(archive=["linux-image-amd64", "xen-utils-4.71"]), ctx)
    msg = str(e.value)
    assert msg.startswith("lock dom0: no binary package 'xen-utils-4.71' in bookworm main amd64")
    assert "did you mean 'xen-utils-4.17'?" in msg
    assert "\n" not in msg


# --- fetch -------------------------------------------------------------------------


@pytest.mark.network
def test_fetch_then_fetched(ctx: Context, xen_fetched: dict) -> None:
    assert deb.fetched(xen_fetched, ctx)
    shas = {f["sha256"] for f in xen_fetched["files"].values()}
    assert deb.keeps(xen_fetched, ctx).blobs == frozenset(shas)
    assert all(ctx.store.has_blob(s) for s in shas)


@pytest.mark.network
def test_offline_fetch_uses_the_store(ctx: Context, xen_fetched: dict, no_network: None) -> None:
    offline = Context(store=ctx.store, base=Base(), offline=True)
    deb.fetch("xen", DebianSource(debian="xen"), xen_fetched, offline)
    assert deb.fetched(xen_fetched, offline)


@pytest.mark.network
def test_offline_empty_store_is_missing(xen: dict, tmp_path: Path, no_network: None) -> None:
    offline = Context(store=Store(tmp_path / "store"), base=Base(), offline=True)
    assert not deb.fetched(xen, offline)
    dsc = next(n for n in xen["files"] if n.endswith(".dsc"))
    with pytest.raises(Missing, match=rf"^fetch xen: .*offline and the store lacks .*{re.escape(dsc)}"):
        deb.fetch("xen", DebianSource(debian="xen"), xen, offline)


@pytest.mark.network
def test_changed_sha256_is_refused_and_nothing_stored(xen: dict, tmp_path: Path) -> None:
    dsc = next(n for n in xen["files"] if n.endswith(".dsc"))
    forged = {**xen, "files": {dsc: {**xen["files"][dsc], "sha256": "0" * 64}}}
    local = Context(store=Store(tmp_path / "store"), base=Base())
    with pytest.raises(FetchError, match=r"^fetch xen: .*sha256 mismatch.*nothing stored"):
        deb.fetch("xen", DebianSource(debian="xen"), forged, local)
    assert blobs(local.store) == []
    assert list((local.store.root / "tmp").iterdir()) == []


@pytest.mark.network
def test_malformed_sha256_is_refused(ctx: Context, xen: dict, no_network: None) -> None:
    """A hash is a store path too: a lock file naming ../../ must not reach outside blobs/."""
    bad = copy.deepcopy(xen)
    next(iter(bad["files"].values()))["sha256"] = "../../../../etc/passwd"
    with pytest.raises(Refused, match="is not 64 lowercase hex digits"):
        deb.fetch("xen", DebianSource(debian="xen"), bad, ctx)
    with pytest.raises(Refused):
        deb.fetched(bad, ctx)


@pytest.mark.network
def test_dsc_must_agree_with_the_lock(ctx: Context, xen_fetched: dict, no_network: None) -> None:
    partial = copy.deepcopy(xen_fetched)
    debian_tar = next(n for n in partial["files"] if ".debian.tar." in n)
    del partial["files"][debian_tar]
    with pytest.raises(
        Refused, match=rf"^fetch xen: .*\.dsc disagrees with the locked files on {re.escape(debian_tar)}"
    ):
        deb.fetch("xen", DebianSource(debian="xen"), partial, ctx)


# --- unpack ------------------------------------------------------------------------


@pytest.mark.network
def test_unpack_takes_upstream_only(ctx: Context, xen_fetched: dict, tmp_path: Path) -> None:
    tree = deb.unpack(xen_fetched, ctx, tmp_path / "src")
    assert tree.parent == tmp_path / "src"
    assert tree.name.startswith("xen-4.17")
    assert (tree / "xen" / "Makefile").is_file()
    assert not (tree / "debian").exists()
    assert [p.name for p in (tmp_path / "src").iterdir()] == [tree.name]  # no scratch left behind


SECURITY = "http://deb.debian.org/debian-security"


@pytest.mark.network
def test_update_suites_win_with_higher_versions(ctx: Context, xen: dict, tmp_path: Path) -> None:
    """With bookworm-security laid over bookworm, each package comes from whichever suite has the higher version."""
    base = Base(updates=[Update(suite="bookworm-security", mirror=SECURITY)])
    both = Context(store=ctx.store, base=base)
    state = deb.archive_state(both)
    assert state["suite"] == "bookworm" and [u["suite"] for u in state["updates"]] == ["bookworm-security"]
    assert len(state["updates"][0]["inrelease-sha256"]) == 64
    entry = deb.lock("xen", DebianSource(debian="xen"), both)
    assert Version(entry["version"]) >= Version(xen["version"])
    assert entry["mirror"] == (SECURITY if Version(entry["version"]) > Version(xen["version"]) else xen["mirror"])
    tools_entry = deb.lock("xl", ArchiveSource(archive=["xen-utils-4.17"]), both)
    tools = tools_entry["packages"]["xen-utils-4.17"]
    assert tools["version"] == entry["version"]  # the archive builds the tools from the same source
    assert tools["mirror"] == entry["mirror"]
    # (this build farm is served the security suite's .debs but not its source files)
    deb.fetch("xl", ArchiveSource(archive=["xen-utils-4.17"]), tools_entry, both)
    assert deb.fetched(tools_entry, both)
