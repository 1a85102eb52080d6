"""`xenspin lock`, `fetch`, `store` as a user drives them: real local git repositories, a real store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import commit, git

from builder import cli
from builder.store import sha256_json

UPSTREAM = "https://git.example.invalid/hello.git"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A manifest with a git component (upstream reached through a mirror), an in-tree one and an optional one."""
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    git(upstream, "init", "-q", "-b", "main")
    commit(upstream, "one")
    (tmp_path / "p/components/tree").mkdir(parents=True)
    (tmp_path / "p/components/tree/file").write_text("in-tree\n")
    (tmp_path / "p/distro.yaml").write_text(
        "name: t\nversion: '1'\ninstaller: {component: tree}\ncomponents:\n"
        f"  hello:\n    source: {{git: {UPSTREAM}, ref: main}}\n"
        "  tree:\n    source: {path: components/tree}\n"
        "  gone:\n    optional: true\n    source: {git: https://unreachable.example.invalid/x.git}\n"
    )
    config = tmp_path / "config/xenspin"
    config.mkdir(parents=True)
    (config / "config.yaml").write_text(f"mirrors:\n  {UPSTREAM}: file://{upstream}\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path / "p")
    return tmp_path


def xs(capsys: pytest.CaptureFixture[str], *args: str, code: int = 0) -> tuple[str, str]:
    got = cli.main(["--store", "../store", *args])
    out = capsys.readouterr()
    assert got == code, out.err
    assert "Traceback" not in out.err
    return out.out, out.err


def entries(path: str = "distro.lock") -> dict:
    return yaml.safe_load(Path(path).read_text())["components"]


def test_lock_pins_and_keeps(project: Path, capsys) -> None:
    first = git(project / "upstream", "rev-parse", "HEAD")
    out, err = xs(capsys, "lock")
    assert f"locked  hello: {first[:12]} (main)" in out
    assert "warning: left out optional component gone" in err
    locked = entries()
    assert (
        locked["hello"]["commit"] == first and locked["hello"]["url"] == UPSTREAM
    )  # the recipe's URL, not the mirror's
    assert locked["tree"] == {"kind": "path", "path": "components/tree", "recipe": locked["tree"]["recipe"]}
    assert "gone" not in locked
    text = Path("distro.lock").read_text()
    xs(capsys, "lock")
    assert Path("distro.lock").read_text() == text  # stable: same input, same bytes
    second = commit(project / "upstream", "two")
    out, _ = xs(capsys, "lock")
    assert "kept    hello" in out and entries()["hello"]["commit"] == first  # like cargo: kept until asked
    out, _ = xs(capsys, "lock", "--update", "hello")
    assert entries()["hello"]["commit"] == second


def test_changed_recipe_is_stale(project: Path, capsys) -> None:
    xs(capsys, "lock")
    git(project / "upstream", "tag", "v1")
    manifest = Path("distro.yaml")
    manifest.write_text(manifest.read_text().replace("ref: main", "ref: v1"))
    _, err = xs(capsys, "fetch", code=2)
    assert err.strip() == "distro.lock: stale for hello (recipe changed since it was locked); run `xenspin lock`"
    out, _ = xs(capsys, "lock")
    assert "locked  hello" in out and "(was stale: recipe changed)" in out
    assert entries()["hello"]["tag"] == "v1"


def test_fetch_offline_and_store(project: Path, capsys) -> None:
    xs(capsys, "lock")
    _, err = xs(capsys, "--store", "../empty", "fetch", "--offline", code=2)
    assert err.startswith("offline: 1 missing from the store: ") and "hello" in err and UPSTREAM in err
    out, _ = xs(capsys, "fetch")
    assert "already in the store: hello, tree" in out  # lock resolved main in the store's mirror
    (project / "config/xenspin/config.yaml").write_text("mirrors: {}\n")  # upstream now unreachable
    out, _ = xs(capsys, "fetch", "--offline")
    assert "already in the store: hello, tree" in out
    out, _ = xs(capsys, "store", "du")
    assert "git" in out and "total" in out
    # gc keeps what the lock needs, then drops the mirror once the component is gone
    out, _ = xs(capsys, "store", "gc")
    assert list((project / "store/git").glob("*.git"))
    manifest = Path("distro.yaml")
    manifest.write_text(
        manifest.read_text().split("  hello:")[0] + "  tree:" + manifest.read_text().split("  tree:")[1]
    )
    xs(capsys, "lock")
    out, _ = xs(capsys, "store", "gc")
    assert "removed git" in out and not list((project / "store/git").glob("*.git"))


def test_strict_refuses_to_leave_out(project: Path, capsys) -> None:
    _, err = xs(capsys, "--strict", "lock", code=2)
    progress, error = err.strip().splitlines()  # what it was doing, then one line of error
    assert progress == "lock gone: git https://unreachable.example.invalid/x.git ..."
    assert error.startswith("lock gone: git fetch https://unreachable.example.invalid/x.git failed: ")


def test_command_line_mirror_overrides_config(project: Path, capsys, tmp_path: Path) -> None:
    (project / "config/xenspin/config.yaml").write_text("mirrors: {}\n")
    xs(capsys, "lock", code=2)
    xs(capsys, "--mirror", f"{UPSTREAM}=file://{project / 'upstream'}", "lock")
    assert entries()["hello"]["url"] == UPSTREAM


def test_two_fetches_at_once_share_one_store(project: Path, capsys) -> None:
    xs(capsys, "lock")
    env = {**os.environ}
    cmd = [sys.executable, "-m", "builder", "--store", "../store", "fetch"]
    procs = [
        subprocess.Popen(cmd, cwd=project / "p", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert [r[2] for r in results] == [0, 0], results
    (mirror,) = (project / "store/git").glob("*.git")
    subprocess.run(["git", "--git-dir", str(mirror), "fsck", "--strict"], check=True, capture_output=True)
    assert not list((project / "store/tmp").iterdir()) or all(
        p.name.startswith("partial") for p in (project / "store/tmp").iterdir()
    )


def test_bad_mirror_option(project: Path, capsys) -> None:
    _, err = xs(capsys, "--mirror", "nonsense", "lock", code=2)
    assert err.strip() == "--mirror 'nonsense': expected FROM=TO (e.g. https://github.com/=file:///srv/git/)"


def test_bad_config_file_names_its_line(project: Path, capsys) -> None:
    (project / "config/xenspin/config.yaml").write_text("mirrors:\n  a: b\nmirorrs: {}\n")
    _, err = xs(capsys, "lock", code=2)
    assert err.strip().endswith("config.yaml:3: mirorrs: unknown field; did you mean 'mirrors'?")


def test_lock_json_report(project: Path, capsys) -> None:
    out, _ = xs(capsys, "--json", "lock")
    report = json.loads(out)
    assert sorted(report["resolved"]) == ["hello", "tree"] and list(report["left_out"]) == ["gone"]


def test_a_changed_base_archive_makes_archive_entries_stale(tmp_path: Path) -> None:
    """Archive and Debian-source entries go stale when the base's suites change; others do not."""
    from builder import lock, manifest

    (tmp_path / "tree").mkdir()
    (tmp_path / "distro.yaml").write_text(
        "name: t\nversion: '1'\ninstaller: {component: tree}\ncomponents:\n"
        "  tree:\n    source: {path: tree}\n"
        "  xen:\n    source: {debian: xen}\n"
        "  xl:\n    source: {archive: [xen-utils-4.17]}\n"
        "  gone:\n    optional: true\n    source: {git: https://unreachable.example.invalid/x.git}\n"
        "xen: {tools: xl, mixed: true}\n"
    )
    distro = manifest.load(tmp_path / "distro.yaml")
    current = lock.Lock(
        archive={"mirror": distro.base.mirror, "suite": distro.base.suite},
        components={
            n: {"kind": "x", "recipe": lock.recipe_digest(distro.components[n], tmp_path)}
            for n in ("tree", "xen", "xl")
        },
    )
    assert lock.stale(distro, current, tmp_path) == {"gone": "not locked"}
    (tmp_path / "spin.yaml").write_text(
        "extends: distro.yaml\nbase:\n  updates: [{suite: bookworm-updates}]\n"
        "components:\n  xen:\n    source: {git: https://xenbits.xen.org/git-http/xen.git, ref: stable-4.17}\n"
    )
    why = lock.stale(manifest.load(tmp_path / "spin.yaml"), current, tmp_path)
    assert why["xl"] == "base archive (mirror, suite or updates) changed since it was locked"
    assert why["xen"] == "recipe changed since it was locked"  # a git source now
    assert "tree" not in why


def test_gc_on_a_shared_store_keeps_what_other_manifests_use(project: Path, capsys) -> None:
    """Vendors keep the base and several spins in one store: a spin's gc must not wipe the base's sources."""
    xs(capsys, "lock")
    xs(capsys, "fetch")  # registers distro.yaml's gc root: its git mirror of hello
    Path("b.yaml").write_text(
        "name: b\nversion: '1'\ninstaller: {component: tree}\ncomponents:\n  tree:\n    source: {path: components/tree}\n"
    )
    xs(capsys, "-f", "b.yaml", "lock")
    out, _ = xs(capsys, "-f", "b.yaml", "store", "gc")
    assert f"kept what {project / 'p/distro.yaml'} uses" in out
    assert list((project / "store/git").glob("*.git"))
    (project / "config/xenspin/config.yaml").write_text("mirrors: {}\n")  # upstream now unreachable
    out, _ = xs(capsys, "fetch", "--offline")
    assert "already in the store: hello, tree" in out
    # a root not refreshed for longer than --older-than is dropped (distro.yaml still exists)
    root = next(p for p in (project / "store/roots").iterdir() if "distro.yaml" in p.read_text())
    os.utime(root, (0, 0))
    out, _ = xs(capsys, "-f", "b.yaml", "store", "gc", "--older-than", "30")
    assert f"dropped gc root {project / 'p/distro.yaml'}: not used for over 30 days" in out
    assert "removed git" in out and not list((project / "store/git").glob("*.git"))


def test_verified_stamps_in_du_and_gc(project: Path, capsys) -> None:
    """verified/ stamps are an area of `store du`; gc removes those no live root uses, with what they vouch for."""
    xs(capsys, "lock")
    xs(capsys, "fetch")
    stamps = project / "store/verified"
    live = {name: sha256_json(entry) for name, entry in entries().items()}
    assert sorted(p.name for p in stamps.iterdir()) == sorted(live.values())
    out, _ = xs(capsys, "store", "du")
    assert re.search(r"^verified +2 entries", out, re.M), out
    (stamps / ("0" * 64)).write_text("verified\n")  # a stamp of an entry no lock holds any more
    out, _ = xs(capsys, "store", "gc")
    assert re.search(r"^removed verified +1 entries", out, re.M), out
    assert sorted(p.name for p in stamps.iterdir()) == sorted(live.values())
    # hello leaves the manifest: its mirror is collected, and the stamp that vouched for it
    manifest = Path("distro.yaml")
    manifest.write_text(
        manifest.read_text().split("  hello:")[0] + "  tree:" + manifest.read_text().split("  tree:")[1]
    )
    xs(capsys, "lock")
    out, _ = xs(capsys, "store", "gc")
    assert "removed git" in out and re.search(r"^removed verified +1 entries", out, re.M), out
    assert [p.name for p in stamps.iterdir()] == [live["tree"]]


def test_gc_drops_the_root_of_a_manifest_that_is_gone(project: Path, capsys) -> None:
    xs(capsys, "lock")
    xs(capsys, "fetch")
    Path("b.yaml").write_text(Path("distro.yaml").read_text())
    xs(capsys, "-f", "b.yaml", "lock")
    Path("distro.yaml").unlink()
    out, _ = xs(capsys, "-f", "b.yaml", "store", "gc")
    assert f"dropped gc root {project / 'p/distro.yaml'}: the manifest is gone" in out
    assert list((project / "store/git").glob("*.git"))  # b.yaml uses the same mirror: kept
    assert len(list((project / "store/roots").iterdir())) == 1
