"""Component builds through the real path: mmdebstrap build roots, bubblewrap steps, .debs, cache keys.

Slow: the first test to need a build root makes it with mmdebstrap against the
Debian archive; every later test in the run reuses it from the session's store.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import new_repo

from builder import build as build_module
from builder import cli
from builder.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.network]  # build roots come from the archive

HELLO_C = '#include <stdio.h>\nint main(void) { puts("hello from xenspin"); return 0; }\n'

DISTRO = """\
name: tiny
version: "1.0"
components:
  hello: {}
  greeter: {}
  solo: {}
installer:
  component: solo
"""

STAMP = 'echo "start $(date +%s.%N)"'
END = 'echo "end $(date +%s.%N)"'

RECIPES = {
    "hello": f"""\
source: {{path: hello}}
build-depends: [build-essential]
steps:
  - name: compile
    run: |
      {STAMP}
      mkdir -p "$OUT/usr/bin"
      gcc -O2 -o "$OUT/usr/bin/hello" "$SRC/hello.c"
      sleep 2
      {END}
outputs: [usr/bin/hello]
package: {{name: hello-xs, description: a greeting in C}}
""",
    "greeter": f"""\
source: {{path: greeter}}
build-depends: [build-essential]
after: [hello]
steps:
  - name: stage
    run: |
      {STAMP}
      install -D -m 0755 "$SRC/greet" "$OUT/usr/bin/greet"
package: {{name: greet-xs, depends: [hello-xs]}}
""",
    "solo": f"""\
source: {{path: solo}}
steps:
  - name: stage
    run: |
      {STAMP}
      install -D -m 0644 "$SRC/note" "$OUT/usr/share/solo/note"
package: {{name: solo-xs}}
""",
}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "distro.yaml").write_text(DISTRO)
    for name, recipe in RECIPES.items():
        (tmp_path / "components").mkdir(exist_ok=True)
        (tmp_path / "components" / f"{name}.yaml").write_text(recipe)
        (tmp_path / "components" / name).mkdir()
    (tmp_path / "components/hello/hello.c").write_text(HELLO_C)
    (tmp_path / "components/greeter/greet").write_text("#!/bin/sh\nexec hello\n")
    (tmp_path / "components/solo/note").write_text("solo\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def build(store: Path, capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    code = cli.main(["--store", str(store), "--json", "build", *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def fail(store: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = cli.main(["--store", str(store), "build", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()  # progress lines (lock:, build root ...) come first; the error is last
    start = next(i for i, line in enumerate(lines) if re.match(r"build [\w-]+: ", line))
    return "\n".join(lines[start:])


def log_times(store: Path, name: str) -> tuple[float, float]:
    """(first start, last end-or-start) stamped into a component's step logs."""
    logs = sorted((store / "logs/build" / name).glob("*/*.log"), key=lambda p: p.stat().st_mtime)
    stamps = [float(m) for p in logs for m in re.findall(r"^(?:start|end) (\d+\.\d+)$", p.read_text(), re.M)]
    return min(stamps), max(stamps)


def test_tiny_c_component_builds_to_a_working_deb(project: Path, store: Path, capsys, tmp_path: Path) -> None:
    report = build(store, capsys, "-j", "2")
    assert sorted(report["built"]) == ["greeter", "hello", "solo"]
    (deb,) = report["debs"]["hello"]
    listing = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True, check=True).stdout
    assert "./usr/bin/hello" in listing
    unpacked = tmp_path / "unpacked"
    subprocess.run(["dpkg-deb", "-x", deb, unpacked], check=True)
    assert subprocess.run([unpacked / "usr/bin/hello"], capture_output=True, text=True).stdout == "hello from xenspin\n"
    fields = subprocess.run(["dpkg-deb", "-f", report["debs"]["greeter"][0]], capture_output=True, text=True).stdout
    assert "Package: greet-xs" in fields and "Depends: hello-xs" in fields
    packages = (Path(report["repo"]) / "Packages").read_text()
    assert {"hello-xs", "greet-xs", "solo-xs"} <= set(re.findall(r"^Package: (\S+)", packages, re.M))
    published = project / "out/repo"  # the user's copy, under --out
    assert (published / "Packages").read_text() == packages and (published / Path(deb).name).is_file()
    assert list((store / "logs/build/hello").glob("*/01-compile.log"))
    # parallel, yet greeter (after: hello) started only once hello had finished
    hello_start, hello_end = log_times(store, "hello")
    greeter_start, _ = log_times(store, "greeter")
    assert greeter_start >= hello_end


def test_second_build_runs_no_step(project: Path, store: Path, capsys) -> None:
    build(store, capsys)
    logs = {p: p.stat().st_mtime_ns for p in (store / "logs/build").rglob("*.log")}
    report = build(store, capsys)
    assert report["built"] == [] and sorted(report["cached"]) == ["greeter", "hello", "solo"]
    assert {p: p.stat().st_mtime_ns for p in (store / "logs/build").rglob("*.log")} == logs
    assert cli.main(["--store", str(store), "plan"]) == 0
    components, graph = capsys.readouterr().out.split("stage graph: ")
    assert components.count("[hit ") == 3 and "[miss" not in components
    # the graph: three builds, two build roots (build-essential, minbase), the repository; nothing to run
    assert graph.startswith("6 stages, 0 to run") and "[miss" not in graph and "pending" not in graph
    # gc keeps what this plan uses: builds, roots, sources, the repository
    assert cli.main(["--store", str(store), "store", "gc"]) == 0
    capsys.readouterr()
    report = build(store, capsys)
    assert report["built"] == [] and len(report["cached"]) == 3


def test_change_rebuilds_it_and_its_dependants_only(project: Path, store: Path, capsys) -> None:
    build(store, capsys)
    (project / "components/hello/hello.c").write_text(HELLO_C.replace("hello from", "hi from"))
    assert cli.main(["--store", str(store), "plan"]) == 0
    plan = capsys.readouterr().out
    assert (
        re.search(r"hello .*\[miss", plan) and re.search(r"greeter .*\[miss", plan) and re.search(r"solo .*\[hit", plan)
    )
    report = build(store, capsys)
    assert sorted(report["built"]) == ["greeter", "hello"] and report["cached"] == ["solo"]
    recipe = project / "components/solo.yaml"
    recipe.write_text(recipe.read_text().replace('solo/note"', 'solo/note.txt"'))
    report = build(store, capsys)
    assert report["built"] == ["solo"] and sorted(report["cached"]) == ["greeter", "hello"]


def test_network_is_refused_inside_a_step(project: Path, store: Path, capsys) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    socket.create_connection(("127.0.0.1", port), timeout=5).close()  # reachable from the host
    server.accept()[0].close()
    (project / "components/solo.yaml").write_text(
        f"source: {{path: solo}}\nsteps:\n  - name: connect\n    run: bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}'\n"
    )
    err = fail(store, capsys, "solo")
    first = err.splitlines()[0]
    assert first.startswith("build solo: step connect: failed with exit status 1; log: ")
    log = Path(first.split("; log: ")[1]).read_text()
    # the step has its own empty network namespace: the host's listener is not there
    assert "Connection refused" in log or "Network is unreachable" in log
    server.settimeout(0.5)
    with pytest.raises(TimeoutError):
        server.accept()
    server.close()


def test_failing_step_names_component_step_status_and_log(project: Path, store: Path, capsys) -> None:
    build(store, capsys, "hello")
    (project / "components/greeter.yaml").write_text(
        "source: {path: greeter}\nafter: [hello]\nsteps:\n"
        "  - name: prepare\n    run: echo fine\n"
        "  - name: compile\n    run: |\n      echo about to fail >&2\n      exit 3\n"
    )
    err = fail(store, capsys)
    first = err.splitlines()[0]
    assert first.startswith("build greeter: step compile: failed with exit status 3; log: ")
    assert "02-compile.log" in first and "about to fail" in err
    assert Path(first.split("; log: ")[1]).is_file()
    # what finished before stays in the store: hello is not rebuilt when greeter is fixed
    (project / "components/greeter.yaml").write_text(RECIPES["greeter"].replace("name: stage", "name: fixed"))
    report = build(store, capsys)
    assert "hello" in report["cached"] and "greeter" in report["built"]


def test_source_is_read_only_and_failed_builds_leave_nothing(project: Path, store: Path, capsys) -> None:
    (project / "components/solo.yaml").write_text(
        'source: {path: solo}\nsteps:\n  - name: scribble\n    run: touch "$SRC/scribbled"\n'
    )
    before = set((store / "objects/build").iterdir()) if (store / "objects/build").exists() else set()
    err = fail(store, capsys, "solo")
    assert "Read-only file system" in err
    assert not (project / "components/solo/scribbled").exists()
    assert set((store / "objects/build").iterdir()) == before
    assert not list((store / "tmp").glob("build-solo*"))


def test_missing_output_is_an_error(project: Path, store: Path, capsys) -> None:
    recipe = project / "components/solo.yaml"
    recipe.write_text(recipe.read_text() + "outputs: [usr/share/solo/absent]\n")
    err = fail(store, capsys, "solo")
    assert err.startswith("build solo: the steps did not produce usr/share/solo/absent")


NATIVE = {
    # Rules-Requires-Root: no: steps run unprivileged, and this package needs no (fake)root to build.
    "debian/control": "Source: native-xs\nMaintainer: T <t@example.invalid>\nStandards-Version: 4.6.2\n"
    "Rules-Requires-Root: no\n\n"
    "Package: native-xs\nArchitecture: all\nDescription: built by dpkg-buildpackage\n test package\n",
    "debian/changelog": "native-xs (1.0) unstable; urgency=medium\n\n  * Initial.\n\n"
    " -- T <t@example.invalid>  Thu, 01 Jan 2026 00:00:00 +0000\n",
    "debian/source/format": "3.0 (native)\n",
    "debian/rules": "#!/usr/bin/make -f\nbuild build-arch build-indep:\nclean:\n\trm -rf debian/tmp debian/files\n"
    "binary binary-arch binary-indep:\n\tinstall -D -m 0644 greeting debian/tmp/usr/share/native-xs/greeting\n"
    "\tinstall -d debian/tmp/DEBIAN\n\tdpkg-gencontrol -pnative-xs\n\tdpkg-deb --build debian/tmp ..\n",
    "greeting": "hello\n",
}


def test_component_built_with_dpkg_buildpackage(project: Path, store: Path, capsys) -> None:
    for rel, text in NATIVE.items():
        path = project / "components/native" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (project / "components/native/debian/rules").chmod(0o755)
    (project / "components/native.yaml").write_text(
        "source: {path: native}\nbuild-depends: [build-essential]\nsteps:\n  - name: dpkg-buildpackage\n    run: |\n"
        '      cp -a "$SRC" "$BUILD/native"\n      cd "$BUILD/native" && dpkg-buildpackage -b -uc -us\n'
        '      mv "$BUILD"/*.deb "$DEBS/"\n'
        "debs: [native-xs]\n"
    )
    (project / "distro.yaml").write_text(DISTRO.replace("  solo: {}\n", "  solo: {}\n  native: {}\n"))
    report = build(store, capsys, "native")
    (deb,) = report["debs"]["native"]
    assert Path(deb).name == "native-xs_1.0_all.deb"
    listing = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True, check=True).stdout
    assert "./usr/share/native-xs/greeting" in listing
    assert "Package: native-xs\n" in (Path(report["repo"]) / "Packages").read_text()


def test_optional_component_whose_source_is_gone_is_left_out(project: Path, store: Path, capsys) -> None:
    upstream = new_repo(project / "upstream")
    (project / "components/extra.yaml").write_text(
        "optional: true\nsource: {git: https://git.example.invalid/extra.git, ref: HEAD}\n"
        'steps:\n  - name: stage\n    run: cp -a "$SRC/." "$OUT/"\npackage: {name: extra-xs}\n'
    )
    (project / "distro.yaml").write_text(DISTRO.replace("  solo: {}\n", "  solo: {}\n  extra: {}\n"))
    mirror = f"https://git.example.invalid/extra.git=file://{upstream}"
    assert cli.main(["--store", str(store), "--mirror", mirror, "lock"]) == 0
    capsys.readouterr()
    shutil.rmtree(
        Store(store).git_path("https://git.example.invalid/extra.git")
    )  # the store loses it; upstream is gone
    code = cli.main(["--store", str(store), "--json", "build"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "warning: left out optional component extra: " in out.err
    report = json.loads(out.out)
    assert "extra" not in report["debs"] and "hello" in report["debs"]
    assert cli.main(["--store", str(store), "--strict", "build"]) == 2


DEPS_RECIPES = {
    # base <- mid <- app: app finds both (what it builds after, directly or not) at $DEPS.
    "base": 'source: {path: base}\nbuild-only: true\nsteps:\n  - name: stage\n    run: install -D -m 0644 "$SRC/note" "$OUT/usr/share/base/note"\npackage: {name: base-xs}\n',
    "mid": 'source: {path: mid}\nbuild-only: true\nafter: [base]\nsteps:\n  - name: stage\n    run: install -D -m 0644 "$SRC/note" "$OUT/usr/share/mid/note"\npackage: {name: mid-xs}\n',
    "app": """\
source: {path: app}
after: [mid]
env: {GREETING: "hi there"}
patches: [app/fix.patch, app/more.patch]
steps:
  - name: stage
    run: |
      ! touch "$DEPS/mine" 2>/dev/null
      for deb in "$DEPS"/*.deb; do dpkg-deb -x "$deb" "$BUILD/sys"; done
      mkdir -p "$OUT/usr/share/app"
      cat "$BUILD/sys/usr/share/base/note" "$BUILD/sys/usr/share/mid/note" >"$OUT/usr/share/app/notes"
      echo "$GREETING" >>"$OUT/usr/share/app/notes"
      ls "$DEPS" >"$OUT/usr/share/app/deps"
      cd "$PATCHES" && cat 01-fix.patch 02-more.patch >"$OUT/usr/share/app/patches"
package: {name: app-xs}
""",
}


def test_a_build_finds_its_deps_patches_and_env_and_build_only_packages_ship_nowhere(
    project: Path, store: Path, capsys, tmp_path: Path
) -> None:
    for name, recipe in DEPS_RECIPES.items():
        (project / "components" / f"{name}.yaml").write_text(recipe)
        (project / "components" / name).mkdir()
        (project / "components" / name / "note").write_text(f"{name}\n")
    (project / "components/app/fix.patch").write_text("fix\n")
    (project / "components/app/more.patch").write_text("more\n")
    names = "".join(f"  {n}: {{}}\n" for n in DEPS_RECIPES)
    (project / "distro.yaml").write_text(DISTRO.replace("  solo: {}\n", "  solo: {}\n" + names))
    report = build(store, capsys, "app")
    assert sorted(report["built"]) == ["app", "base", "mid"]
    unpacked = tmp_path / "app"
    subprocess.run(["dpkg-deb", "-x", report["debs"]["app"][0], unpacked], check=True)
    assert (unpacked / "usr/share/app/notes").read_text() == "base\nmid\nhi there\n"
    assert (unpacked / "usr/share/app/patches").read_text() == "fix\nmore\n"  # in the recipe's order
    deps = (unpacked / "usr/share/app/deps").read_text().split()
    assert [d.split("_")[0] for d in deps] == ["base-xs", "mid-xs"]  # read-only: the step wrote nothing there
    packages = (Path(report["repo"]) / "Packages").read_text()
    assert re.findall(r"^Package: (\S+)", packages, re.M) == ["app-xs"]  # build-only packages ship nowhere

    # A build-only package changed in the store since it was built is refused, not used.
    (base_deb,) = (Path(p) for p in report["debs"]["base"])
    base_deb.chmod(0o644)
    with open(base_deb, "ab") as f:
        f.write(b"\0")
    recipe = project / "components/app.yaml"
    recipe.write_text(recipe.read_text().replace("hi there", "hello again"))
    line = fail(store, capsys, "app")
    assert re.fullmatch(
        rf"build app: {base_deb.name} of base changed in the store since it was built \(remove .*\)", line
    )


def test_a_patch_changed_after_the_key_was_made_is_refused(
    project: Path, store: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The steps get the patch bytes the key names or nothing: a patch edited between the key and the
    copy (a race no test can time, so the edit rides on the key's computation) stops the build."""
    (project / "components/app.yaml").write_text(
        'source: {path: app}\npatches: [app/fix.patch]\nsteps:\n  - name: stage\n    run: install -D "$PATCHES/01-fix.patch" "$OUT/fix"\npackage: {name: app-xs}\n'
    )
    (project / "components/app").mkdir()
    patch = project / "components/app/fix.patch"
    patch.write_text("fix\n")
    (project / "distro.yaml").write_text(DISTRO.replace("  solo: {}\n", "  solo: {}\n  app: {}\n"))
    real = build_module.component_inputs
    edits = iter(range(1, 100))

    def then_edited(*args, **kwargs):  # each time a key is computed, the file changes right after
        inputs = real(*args, **kwargs)
        patch.write_text(f"edit {next(edits)}\n")
        return inputs

    monkeypatch.setattr(build_module, "component_inputs", then_edited)
    line = fail(store, capsys, "app")
    assert line == f"build app: patch {patch} changed while the build started; build again"
