"""Nightly builds' pure parts (names, retention, what is re-locked, the index) and run() with a fake build.

The index page is loaded in headless Chromium (`xenspin setup` installs it): every link must
resolve to a file of the nightly tree and the newest build must come first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from conftest import ROOT, one_line, write

from builder import manifest, nightly
from builder.errors import XenspinError
from builder.lock import Lock

# --- names and retention ------------------------------------------------------------------


def test_names_and_order() -> None:
    names = ["20260102", "latest", "index.html", "20260101-3", ".20260103.partial", "20260101", "20260101-10"]
    assert nightly.builds_in(names) == ["20260102", "20260101-10", "20260101-3", "20260101"]
    assert nightly.next_name(names, "20260103") == "20260103"
    assert nightly.next_name(names, "20260101") == "20260101-11"
    assert nightly.next_name(names, "20260102") == "20260102-2"
    assert nightly.next_name([], "20260102") == "20260102"


@pytest.mark.parametrize(
    "existing, new, keep, deleted",
    [
        (["20260101", "20260102", "20260103"], "20260103", 2, ["20260101"]),
        (["20260101", "20260102", "20260103"], "20260103", 3, []),
        (["20260101", "20260102", "20260103", "20260104"], "20260104", 1, ["20260101", "20260102", "20260103"]),
        (["20260101", "20260101-2", "20260101-3"], "20260101-3", 2, ["20260101"]),
        # A build dated before the others (a SOURCE_DATE_EPOCH in the past) is still kept: it is the new one.
        (["20250101", "20260101", "20260102"], "20250101", 2, ["20260101"]),
        (["20260101"], "20260101", 1, []),
        (["20260101", "latest", "index.html"], "20260102", 5, []),
    ],
)
def test_retention(existing: list[str], new: str, keep: int, deleted: list[str]) -> None:
    assert nightly.to_delete([*existing, new] if new not in existing else existing, new, keep) == deleted


def test_retention_needs_one() -> None:
    with pytest.raises(ValueError):
        nightly.to_delete(["20260101"], "20260101", 0)


def test_tracked_branches() -> None:
    spin = manifest.load(ROOT / "spins/nightly.yaml")
    assert nightly.tracked(spin, None) == ["xen"]  # xen-tools builds xen's source: one entry to re-lock
    tag_locked = Lock(components={"xen": {"kind": "git", "commit": "c" * 40, "tag": "stable-4.20"}})
    assert nightly.tracked(spin, tag_locked) == []  # that ref turned out to be a tag: tags stay
    xen = spin.components["xen"]
    pinned = dataclasses.replace(xen, source=dataclasses.replace(xen.source, ref="a" * 40))
    assert nightly.tracked(dataclasses.replace(spin, components={**spin.components, "xen": pinned}), None) == []
    assert nightly.tracked(manifest.load(ROOT / "distro.yaml"), None) == []  # archive and Debian sources only


def test_keep_from_the_manifest(tmp_path: Path) -> None:
    write(tmp_path, {"spin.yaml": f"extends: {ROOT / 'spins/nightly.yaml'}\nnightly:\n  keep: 3\n"})
    assert manifest.load(tmp_path / "spin.yaml").nightly.keep == 3
    assert manifest.load(ROOT / "spins/nightly.yaml").nightly.keep == 7
    write(tmp_path, {"bad.yaml": f"extends: {ROOT / 'distro.yaml'}\nnightly:\n  keep: 0\n"})
    with pytest.raises(XenspinError) as e:
        manifest.load(tmp_path / "bad.yaml")
    assert one_line(e).endswith("bad.yaml:3: nightly.keep: got 0 (expected at least 1)")


# --- the index -------------------------------------------------------------------------


def entry(name: str, latest: bool = False, notes: bool = True) -> nightly.Entry:
    return nightly.Entry(
        name=name,
        version=f"0.1.99~nightly{name[:8]}",
        iso=nightly.Link("x.iso", f"{name}/x.iso", 300 << 20),
        sha256="ab" * 32,
        files=[nightly.Link("SHA256SUMS", f"{name}/SHA256SUMS", 100)],
        sbom=nightly.Link("x.spdx.json", f"{name}/x.spdx.json", 10),
        notes=nightly.Link(nightly.NOTES, f"{name}/{nightly.NOTES}", 10) if notes else None,
        latest=latest,
    )


def test_index_data_newest_first() -> None:
    data = nightly.index_data([entry("20260101"), entry("20260102", latest=True), entry("20260101-2")], "T")
    assert [b["name"] for b in data["builds"]] == ["20260102", "20260101-2", "20260101"]
    assert data["latest"] == "20260102"
    first = data["builds"][0]
    assert first["iso"] == {"name": "x.iso", "href": "20260102/x.iso", "size": 300 << 20}
    assert first["sbom"]["href"] == "20260102/x.spdx.json" and first["release_notes"]["name"] == nightly.NOTES


def test_index_html_escapes_and_links() -> None:
    data = nightly.index_data([entry("20260101", latest=True, notes=False)], "<b>acme</b> & co")
    page = nightly.index_html(data)
    assert "<title>&lt;b&gt;acme&lt;/b&gt; &amp; co</title>" in page
    assert '<a href="20260101/x.iso">x.iso</a><br>300.0 MiB' in page
    assert '<a href="latest/">20260101</a>' in page
    assert "release notes</a>" not in page  # no notes: no link to a file that is not there
    assert nightly.index_html(nightly.index_data([], "T")).count("<tr") == 1  # the header row only


# --- run() with a fake build -----------------------------------------------------------------


def fake_build(version: str = "0.1", fail: str = "") -> Callable[[Path], None]:
    """A stand-in for `xenspin build` into a directory: a few small files as a build publishes them."""

    def build(out: Path) -> None:
        image = out / f"demo-{version}-amd64.iso"
        image.write_bytes(b"iso " + version.encode())
        if fail:
            raise XenspinError(fail)
        sha = hashlib.sha256(image.read_bytes()).hexdigest()
        info = {"name": "demo", "version": version, "iso": {"file": image.name, "sha256": sha, "size": 7}}
        (out / "build-info.json").write_text(json.dumps(info))
        (out / "demo.spdx.json").write_text("{}")
        (out / "SHA256SUMS").write_text(f"{sha}  {image.name}\n")

    return build


def tree(root: Path) -> dict[str, list[str]]:
    return {p.name: sorted(c.name for c in p.iterdir()) for p in sorted(root.iterdir()) if p.is_dir()}


def test_run_keeps_n_and_moves_latest(tmp_path: Path) -> None:
    root = tmp_path / "nightly"
    done = [nightly.run(root, fake_build(f"0.{i}"), keep=2, title="demo", date="20260101") for i in range(1, 5)]
    assert [d.name for d in done] == ["20260101", "20260101-2", "20260101-3", "20260101-4"]
    assert [d.deleted for d in done] == [[], [], ["20260101"], ["20260101-2"]]
    assert sorted(p.name for p in root.iterdir()) == ["20260101-3", "20260101-4", "index.html", "index.json", "latest"]
    assert os.readlink(root / "latest") == "20260101-4"
    index = json.loads((root / "index.json").read_text())
    assert [b["name"] for b in index["builds"]] == ["20260101-4", "20260101-3"]
    assert index["builds"][0]["version"] == "0.4" and index["builds"][0]["sbom"]["href"] == "20260101-4/demo.spdx.json"
    assert done[0].previous is None and done[3].previous == "20260101-3"


def test_failed_build_leaves_latest(tmp_path: Path) -> None:
    root = tmp_path / "nightly"
    nightly.run(root, fake_build("0.1"), keep=2, title="demo", date="20260101")
    before = (tree(root), (root / "index.html").read_text(), os.readlink(root / "latest"))
    with pytest.raises(XenspinError) as e:
        nightly.run(
            root, fake_build("0.2", fail="rootfs: hook 10-x failed (exit 1)"), keep=2, title="demo", date="20260102"
        )
    assert one_line(e) == "rootfs: hook 10-x failed (exit 1) (nightly 20260102 failed; latest still 20260101)"
    assert (tree(root), (root / "index.html").read_text(), os.readlink(root / "latest")) == before
    assert not list(root.glob(".*"))  # its scratch is gone


def test_killed_build_is_cleaned_next_time(tmp_path: Path) -> None:
    root = tmp_path / "nightly"
    nightly.run(root, fake_build("0.1"), keep=2, title="demo", date="20260101")
    (root / ".20260102.partial").mkdir()  # what a SIGKILLed run leaves
    (root / ".20260102.partial/half.iso").write_bytes(b"half")
    assert nightly.current_latest(root) == "20260101"
    nightly.run(root, fake_build("0.2"), keep=2, title="demo", date="20260102")
    assert sorted(p.name for p in root.iterdir()) == ["20260101", "20260102", "index.html", "index.json", "latest"]


def test_one_nightly_at_a_time(tmp_path: Path) -> None:
    root = tmp_path / "nightly"

    def nested(out: Path) -> None:
        nightly.run(root, fake_build(), keep=2, title="demo", date="20260101")

    with pytest.raises(XenspinError, match="another nightly is running there"):
        nightly.run(root, nested, keep=2, title="demo", date="20260101")


def test_release_notes_against_the_previous_nightly(tmp_path: Path) -> None:
    """The notes function hears the previous build's directory and the new one's; the first build has none."""
    root = tmp_path / "nightly"

    def notes(old: Path, new: Path) -> str:
        return f"{old.name} -> {new.name}: demo changed"

    first = nightly.run(root, fake_build("0.1"), keep=3, title="demo", date="20260101", notes=notes)
    assert first.notes == "release notes: no previous nightly to compare with"
    second = nightly.run(root, fake_build("0.2"), keep=3, title="demo", date="20260102")
    assert second.notes == "release notes: not asked for" and not (root / "20260102" / nightly.NOTES).exists()
    third = nightly.run(root, fake_build("0.3"), keep=3, title="demo", date="20260103", notes=notes)
    assert third.notes == f"release notes: {nightly.NOTES} (changes since 20260102)"
    assert (root / "20260103" / nightly.NOTES).read_text() == "20260102 -> .20260103.partial: demo changed\n"
    index = json.loads((root / "index.json").read_text())
    assert index["builds"][0]["release_notes"]["href"] == f"20260103/{nightly.NOTES}"


# --- the page in a browser ---------------------------------------------------------------------


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.rows: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"] or "")
        if tag == "tr" and a.get("id"):
            self.rows.append(a["id"] or "")


def test_index_page_in_chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chromium = shutil.which("chromium") or pytest.skip("chromium is not installed (`xenspin setup` installs it)")
    root = tmp_path / "nightly"
    for day in ("20260101", "20260102", "20260102", "20260103"):
        nightly.run(root, fake_build(f"0.1~{day}"), keep=3, title="demo nightly", date=day)
    (root / "20260103" / nightly.NOTES).write_text("notes\n")
    nightly.write_index(root, "demo nightly")
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", (root / "index.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = Links()
    page.feed(proc.stdout)
    assert page.rows == ["20260103", "20260102-2", "20260102"]  # newest first, the oldest deleted
    assert "latest/" in page.hrefs and f"20260103/{nightly.NOTES}" in page.hrefs
    assert len(page.hrefs) == 1 + 3 * 4 + 1  # latest/, per build ISO, SUMS, build-info, SBOM; one notes
    for href in page.hrefs:
        assert (root / unquote(href)).exists(), href
    assert (root / "latest").resolve() == (root / "20260103").resolve()


# --- re-locking branches -------------------------------------------------------------------


def test_relock_moves_branches_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A branch is re-resolved to its tip; a tag stays where it was locked (local repositories, a mirror map)."""
    from conftest import commit, git

    from builder import cli, lock
    from builder.context import Context
    from builder.store import Store

    upstream = tmp_path / "upstream"
    upstream.mkdir()
    git(upstream, "init", "-q", "-b", "main")
    first = commit(upstream, "one")
    git(upstream, "tag", "v1")
    url = "https://git.example.invalid/hello.git"
    write(
        tmp_path / "p",
        {
            "components/tree/file": "in-tree\n",
            "distro.yaml": "name: t\nversion: '1'\ninstaller: {component: tree}\ncomponents:\n"
            f"  hello:\n    source: {{git: {url}, ref: main}}\n"
            f"  pinned:\n    source: {{git: {url}, ref: v1}}\n"
            "  tree:\n    source: {path: components/tree}\n",
        },
    )
    path = tmp_path / "p/distro.yaml"
    mirror = f"{url}=file://{upstream}"
    assert cli.main(["-f", str(path), "--store", str(tmp_path / "store"), "--mirror", mirror, "lock"]) == 0
    second = commit(upstream, "two")
    distro = manifest.load(path)
    ctx = Context(Store(tmp_path / "store"), distro.base, {url: f"file://{upstream}"}, manifest=path)
    lines = nightly.relock(distro, ctx, strict=False)
    assert lines == [f"nightly: re-locked hello (main): {first[:12]} -> {second[:12]}"]
    locked = lock.read(lock.lock_path(path))
    assert locked is not None
    assert locked.components["hello"]["commit"] == second and locked.components["pinned"]["commit"] == first
    assert nightly.relock(distro, ctx, strict=False) == [f"nightly: re-locked hello (main): {second[:12]} (unchanged)"]
    offline = dataclasses.replace(ctx, offline=True)
    assert nightly.relock(distro, offline, strict=False) == [
        "nightly: --offline: branches not re-locked, kept at their locked commits: hello"
    ]
