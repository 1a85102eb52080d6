"""`xenspin lock`, `fetch`, `store` as a user drives them: real local git repositories, a real store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from builder import cli

UPSTREAM = "https://git.example.invalid/hello.git"
ROOT = Path(__file__).resolve().parent.parent


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
    cmd = ["git", "-C", str(repo), "-c", "user.name=T", "-c", "user.email=t@example.invalid", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.strip()


def commit(repo: Path, text: str) -> str:
    (repo / "README").write_text(text)
    git(repo, "add", "README")
    git(repo, "commit", "-q", "-m", text)
    return git(repo, "rev-parse", "HEAD")


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


def test_a_changed_base_archive_makes_archive_entries_stale() -> None:
    from builder import lock, manifest

    current = lock.read(ROOT / "distro.lock")
    assert lock.stale(manifest.load(ROOT / "distro.yaml"), current, ROOT) == {
        n: "not locked" for n in ("win-xenbus", "win-xeniface", "win-xennet", "win-xenvbd", "win-xenvif", "xapi")
    }
    nightly = manifest.load(ROOT / "spins/nightly.yaml")  # adds bookworm-security and bookworm-updates
    why = lock.stale(nightly, current, ROOT)
    assert why["linux"] == why["xl"] == "base archive (mirror, suite or updates) changed since it was locked"
    assert why["xen"] == "recipe changed since it was locked"  # a git source now
    assert "installer" not in why
