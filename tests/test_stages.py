"""The store's one object lifecycle and the stage scheduler, with real files, processes and locks."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from builder.stage import Done, Pending, Scheduler, Stage, resolve, stage_key
from builder.store import Store, tree_digest


def test_obtain_makes_once_records_metadata_and_top(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    calls = []

    def make(tmp: Path) -> dict:
        calls.append(tmp)
        (tmp / "xen-4.17").mkdir()
        (tmp / "xen-4.17/Makefile").write_text("all:\n")
        return {"top": "xen-4.17", "debs": ["a.deb"]}

    first = store.obtain("src", "k1", make)
    assert first == store.object_path("src", "k1") / "xen-4.17" and (first / "Makefile").is_file()
    assert store.meta("src", "k1") == {"top": "xen-4.17", "debs": ["a.deb"]}
    assert store.obtain("src", "k1", make) == first and len(calls) == 1
    assert not list((store.root / "tmp").iterdir())


def test_failed_make_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")

    def make(tmp: Path) -> dict:
        (tmp / "half").write_text("half-written")
        raise RuntimeError("step failed")

    with pytest.raises(RuntimeError):
        store.obtain("build", "k", make)
    assert not store.object_path("build", "k").exists() and not store.has("build", "k")
    assert not list((store.root / "tmp").iterdir())


def test_clamped_times(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")

    def make(tmp: Path) -> None:
        (tmp / "d").mkdir()
        (tmp / "d/f").write_text("x")
        os.symlink("f", tmp / "d/l")

    path = store.obtain("rootfs", "k", make, clamp=1_000_000)
    for p in (path, path / "d", path / "d/f"):
        assert p.stat().st_mtime == 1_000_000
    assert (path / "d/l").lstat().st_mtime == 1_000_000


def test_directory_without_metadata_is_made_again(tmp_path: Path) -> None:
    """A run killed between the two renames left a directory but no metadata: it is not taken as complete."""
    store = Store(tmp_path / "store")
    store.object_path("build", "k").mkdir(parents=True)
    (store.object_path("build", "k") / "partial").write_text("")
    path = store.obtain("build", "k", lambda tmp: (tmp / "whole").write_text("") and None)
    assert sorted(p.name for p in path.iterdir()) == ["whole"]


KILLED = """
import sys, time
from pathlib import Path
from builder.store import Store, tree_digest
store = Store(Path(sys.argv[1]))
def make(tmp):
    (tmp / "big").write_text("x" * 1000)
    print("making", flush=True)
    time.sleep(60)
with store.session():
    store.obtain("build", "k", make)
"""


def test_killed_run_leaves_scratch_that_the_next_run_removes(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(store.root)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "making\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (left,) = (store.root / "tmp").iterdir()
    assert left.name.startswith(f"build.{proc.pid}.")
    (store.root / "tmp/partial-0123").write_text("a resumable download: no pid, kept")
    mine = store.tmp_dir("mine")  # a live writer's scratch is kept
    with store.session():
        assert sorted(p.name for p in (store.root / "tmp").iterdir()) == sorted(["partial-0123", mine.name])
        path = store.obtain("build", "k", lambda tmp: (tmp / "done").write_text("") and None)
    assert (path / "done").exists()


def test_two_threads_make_one_object_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    calls = []

    def make(tmp: Path) -> None:
        calls.append(1)
        time.sleep(0.3)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(store.obtain, "repo", "k", make) for _ in range(3)]
    paths = [f.result() for f in futures]  # a thread's exception is raised here, not lost
    assert calls == [1]
    assert len(set(paths)) == 1 and paths[0].is_dir()  # each caller got the one object


# --- the scheduler ---------------------------------------------------------------------------


ends: dict[str, float] = {}


def stage(name: str, log: list, *, after=(), uses=(), lazy=False, fail=False, inputs=None) -> Stage:
    def make(tmp: Path, needs) -> dict:
        log.append((name, time.monotonic()))
        if fail:
            raise RuntimeError(f"{name} failed")
        time.sleep(0.5)
        ends[name] = time.monotonic()
        (tmp / "out").write_text(name)
        return {"name": name, "needs": sorted(needs)}

    return Stage(
        "test",
        name,
        1,
        inputs or (lambda needs: {"name": name, "needs": {k: v.key for k, v in sorted(needs.items())}}),
        make,
        after=tuple(after),
        uses=tuple(uses),
        lazy=lazy,
    )


def test_scheduler_runs_along_dependencies_in_parallel(tmp_path: Path) -> None:
    store, log = Store(tmp_path / "store"), []
    stages = [
        stage("a", log),
        stage("b", log),
        stage("c", log, after=["test:a", "test:b"]),
    ]
    out = Scheduler(store, stages, jobs=2).run()
    assert all(o.made for o in out.values())
    started = dict(log)
    assert started["a"] < ends["b"] and started["b"] < ends["a"]  # a and b at once
    assert started["c"] >= max(ends["a"], ends["b"])  # c once both had finished
    assert out["test:c"].done.meta == {"name": "c", "needs": ["test:a", "test:b"]}
    again = Scheduler(store, stages, jobs=2).run()
    assert not any(o.made for o in again.values()) and len(log) == 3


def test_lazy_stage_is_made_only_for_a_stage_that_must_be_made(tmp_path: Path) -> None:
    store, log = Store(tmp_path / "store"), []
    root = stage("root", log, lazy=True)
    stages = [root, stage("x", log, uses=["test:root"])]
    Scheduler(store, stages).run()
    assert [n for n, _ in log] == ["root", "x"]
    root_key = root.key({})
    # the root is gone from the store; x is found by key, and the root is not made again
    store.object_path("test", root_key).with_suffix(".json").unlink()
    Scheduler(store, stages).run()
    assert [n for n, _ in log] == ["root", "x"]
    plan = {p.stage.name: p.hit for p in resolve(store, stages)}
    assert plan == {"root": False, "x": True}


def test_pending_key_and_first_failure(tmp_path: Path) -> None:
    store, log = Store(tmp_path / "store"), []

    def late(needs) -> dict:
        if needs["test:a"].meta is None:
            raise Pending("needs a's output")
        return {"from": needs["test:a"].meta["name"]}

    stages = [stage("a", log), stage("late", log, after=["test:a"], inputs=late)]
    assert [(p.stage.name, p.hit) for p in resolve(store, stages)] == [("a", False), ("late", None)]
    Scheduler(store, stages).run()
    assert [(p.stage.name, p.hit) for p in resolve(store, stages)] == [("a", True), ("late", True)]
    # a stage after a pending one is pending too, whatever its inputs would read (the plan of a stale lock)
    chain = [*stages, stage("next", log, after=["test:late"], inputs=lambda needs: {"late": needs["test:late"].key})]
    assert [(p.stage.name, p.hit) for p in resolve(Store(tmp_path / "empty"), chain)][1:] == [
        ("late", None),
        ("next", None),
    ]
    broken = [stage("bad", log, fail=True), stage("never", log, after=["test:bad"])]
    with pytest.raises(RuntimeError, match="bad failed"):
        Scheduler(store, broken).run()
    assert "never" not in [n for n, _ in log]


def test_key_is_format_and_inputs() -> None:
    assert stage_key(1, {"a": 1}) != stage_key(2, {"a": 1}) != stage_key(1, {"a": 2})
    assert stage_key(1, {"a": 1, "b": 2}) == stage_key(1, {"b": 2, "a": 1})
    assert Done("k").path is None


def test_plan_shows_the_stage_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from builder import cli

    (tmp_path / "a").mkdir()
    (tmp_path / "a/f").write_text("x\n")
    (tmp_path / "distro.yaml").write_text(
        'name: d\nversion: "1"\ninstaller: {component: a}\ncomponents:\n'
        '  a:\n    source: {path: a}\n    steps: [{name: s, run: "true"}]\n'
    )
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--store", "st", "lock"]) == 0
    capsys.readouterr()
    assert cli.main(["--store", "st", "plan"]) == 0
    graph = capsys.readouterr().out.split("stage graph: ")[1].splitlines()
    assert graph[0] == "3 stages, 2 to run"  # the build root is lazy: made only if build:a runs
    assert re.match(r" +buildroot:\w{16} +\[miss \w{12}\] lazy$", graph[1])
    assert re.match(r" +build:a +\[miss \w{12}\]  needs buildroot:\w{16} \(if made\)$", graph[2])
    assert re.match(r" +repo:repo +\[pending +\]  needs build:a$", graph[3])
    assert cli.main(["--store", "st", "--json", "plan"]) == 0
    nodes = json.loads(capsys.readouterr().out)["graph"]
    assert [(n["kind"], n["hit"], n["lazy"]) for n in nodes] == [
        ("buildroot", False, True),
        ("build", False, False),
        ("repo", None, False),
    ]


def test_gc_waits_for_a_running_build_and_keeps_live_roots(tmp_path: Path) -> None:
    from builder.store import Root

    store = Store(tmp_path / "store")
    live, gone = tmp_path / "live.yaml", tmp_path / "gone.yaml"
    live.write_text("")
    store.obtain("build", "used", lambda tmp: None)
    store.obtain("build", "old", lambda tmp: None)
    store.register(Root(live, objects=frozenset({("build", "used")})))
    store.register(Root(gone, objects=frozenset({("build", "old")})))
    finished = threading.Event()
    result = []
    with store.session():  # a build in progress holds the store's shared lock
        t = threading.Thread(target=lambda: (result.append(store.gc()), finished.set()))
        t.start()
        time.sleep(0.5)
        assert not finished.is_set()  # gc waits for it
    t.join(10)
    (res,) = result
    assert res.dropped == [f"{gone}: the manifest is gone"] and res.kept == [str(live)]
    assert store.has("build", "used") and not store.has("build", "old")
    assert not store.object_path("build", "old").exists()


def test_a_lazy_stage_named_in_after_is_run(tmp_path: Path) -> None:
    store, log = Store(tmp_path / "store"), []
    stages = [stage("tools", log, lazy=True), stage("image", log, after=["test:tools"])]
    out = Scheduler(store, stages).run()
    assert [n for n, _ in log] == ["tools", "image"] and out["test:image"].done.meta["needs"] == ["test:tools"]


def test_tree_digest_is_names_kinds_modes_bytes_and_link_targets(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "dir/empty").mkdir(parents=True)
    (tree / "dir/file").write_text("one\n")
    (tree / "run.sh").write_text("#!/bin/sh\n")
    (tree / "run.sh").chmod(0o755)
    (tree / "link").symlink_to("dir/file")
    (tree / "dirlink").symlink_to("dir")
    os.mkfifo(tree / "fifo")  # recorded as what it is, never opened (it would block)
    before = tree_digest(tree)
    assert tree_digest(tree) == before and len(before) == 64
    changes = [
        lambda: (tree / "dir/file").write_text("onE\n"),  # a byte
        lambda: (tree / "dir/new").write_text(""),  # a file added
        lambda: (tree / "dir/empty2").mkdir(),  # an empty directory added
        lambda: ((tree / "link").unlink(), (tree / "link").symlink_to("run.sh")),  # a link retargeted
        lambda: (tree / "run.sh").chmod(0o744),  # a mode
        lambda: ((tree / "dir/file").unlink(), (tree / "dir/file").symlink_to("../run.sh")),  # a kind
        lambda: (tree / "dir/file").rename(tree / "dir/file2"),  # a name
    ]
    seen = {before}
    for change in changes:
        change()
        seen.add(tree_digest(tree))
    assert len(seen) == len(changes) + 1
    # Only the execute bits, when asked (a checkout's other bits follow the umask); names skipped anywhere.
    (tree / "dir/file2").chmod(0o600)
    masked = tree_digest(tree, modes=0o111)
    (tree / "dir/file2").chmod(0o664)
    assert tree_digest(tree, modes=0o111) == masked != tree_digest(tree)
    skipped = tree_digest(tree, skip=frozenset({"__pycache__"}))
    (tree / "dir/__pycache__").mkdir()
    assert tree_digest(tree, skip=frozenset({"__pycache__"})) == skipped != tree_digest(tree, skip=frozenset())
