"""Trust: each attack of issue 7 tried as an attacker would, refused with one line, its evidence nowhere.

Fast tests work on manifests, locks and the store; the ones marked slow run real
bubblewrap builds in one build root shared by the whole session.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from conftest import TINY_RECIPE, Keys, Server, git, write

from builder import aptrepo, cli, outputcheck
from builder.run import sandbox
from builder.sources import Refused, http, verified_blob
from builder.store import Store

SECRET = "hunter2-not-for-ci-logs"

DISTRO = """\
name: tiny
version: "1.0"
components:
  hello: {}
installer:
  component: hello
"""

RECIPE = TINY_RECIPE


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny distribution with one in-tree component, in its own directory under tmp_path."""
    root = tmp_path / "project"
    write(root, {"distro.yaml": DISTRO, "components/hello.yaml": RECIPE, "components/hello/note": "hello\n"})
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A host file outside the project standing in for /etc/shadow."""
    path = tmp_path / "host" / "shadow"
    write(tmp_path, {"host/shadow": f"root:{SECRET}:20228:0:99999:7:::\n"})
    return path


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI expecting exit 2 and one error line (after any progress lines); return that line."""
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.endswith(" ...")]
    progress = ("lock: ", "build ", "built ", "fetch")
    assert all(line.startswith(progress) for line in lines[:-1]), err
    return lines[-1]


def objects(store: Path) -> list[Path]:
    """What the store holds under objects/ (builds, build roots, source trees, repositories)."""
    return sorted((store / "objects").glob("*/*"))


def nowhere(text: str, *roots: Path) -> None:
    """text is in no file under roots."""
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = Path(dirpath, name)
                if path.is_symlink() or not path.is_file():
                    continue
                assert text.encode() not in path.read_bytes(), path


# --- 2. confinement: paths a manifest names stay in the project ------------------------


def test_source_path_climbing_out_is_refused_before_any_build(project: Path, secret: Path, capsys, tmp_path) -> None:
    write(project, {"components/hello.yaml": RECIPE.replace("{path: hello}", "{path: ../../host}")})
    line = refused(capsys, "--store", str(tmp_path / "store"), "build")
    assert line.startswith("components/hello.yaml:1: components.hello.source.path: ")
    assert "lies outside the project" in line
    assert not objects(tmp_path / "store")
    nowhere(SECRET, tmp_path / "store", project)


def test_in_tree_symlink_to_host_directory_is_refused(project: Path, secret: Path, capsys, tmp_path) -> None:
    os.symlink(secret.parent, project / "components/hostlink")
    write(project, {"components/hello.yaml": RECIPE.replace("{path: hello}", "{path: hostlink}")})
    line = refused(capsys, "--store", str(tmp_path / "store"), "build")
    assert line.startswith("components/hello.yaml:1: components.hello.source.path: ")
    assert "lies outside the project" in line
    assert not objects(tmp_path / "store")


@pytest.mark.parametrize(
    ("where", "text", "field"),
    [
        ("distro.yaml", "rootfs:\n  overlays: [/etc]\n", "rootfs.overlays[0]"),
        ("distro.yaml", "rootfs:\n  hooks: [../host/shadow]\n", "rootfs.hooks[0]"),
        ("distro.yaml", "installer:\n  component: hello\n  answerfile: ../host/shadow\n", "installer.answerfile"),
        ("distro.yaml", "base:\n  keyring: ../host/shadow\n", "base.keyring"),
        ("components/hello.yaml", "patches: [../../host/shadow]\n", "components.hello.patches[0]"),
        (
            "components/hello.yaml",
            "source:\n  git: https://example.invalid/x.git\n  verify: {keys: [../../host/shadow], tag: true}\n",
            "components.hello.source.verify.keys[0]",
        ),
    ],
)
def test_every_path_field_is_confined(project: Path, secret: Path, capsys, where: str, text: str, field: str) -> None:
    path = project / where
    body = path.read_text()
    if where == "distro.yaml":
        body = body.replace("installer:\n  component: hello\n", "") + text
    else:
        body = text + body.split("\n", 1)[1]
    path.write_text(body)
    line = refused(capsys, "validate")
    assert f": {field}: " in line and "lies outside the project" in line, line
    assert line.startswith(where + ":")
    assert SECRET not in line


def test_recipe_outside_the_project_is_refused(project: Path, tmp_path: Path, capsys) -> None:
    write(tmp_path, {"elsewhere/hello.yaml": RECIPE})
    write(project, {"distro.yaml": DISTRO.replace("hello: {}", "hello: {recipe: ../elsewhere/hello.yaml}")})
    line = refused(capsys, "validate")
    assert line.startswith("distro.yaml:4: components.hello.recipe: ") and "lies outside the project" in line


def test_spin_and_vendor_repository_may_name_files_of_the_chain(project: Path, tmp_path: Path, capsys) -> None:
    """spins/x.yaml names ../overlays/acme; a vendor repo extending ../project/distro.yaml names files in either."""
    (project / "overlays/acme").mkdir(parents=True)
    write(project, {"spins/x.yaml": "extends: ../distro.yaml\nrootfs:\n  overlays+: [../overlays/acme]\n"})
    write(
        tmp_path,
        {
            "vendor/spin.yaml": "extends: ../project/distro.yaml\n"
            "rootfs:\n  overlays: [../project/overlays/acme, mine]\n  hooks: [hooks/h.sh]\n",
            "vendor/hooks/h.sh": "#!/bin/sh\n",
        },
    )
    (tmp_path / "vendor/mine").mkdir()
    assert cli.main(["-f", "spins/x.yaml", "validate"]) == 0
    assert cli.main(["-f", str(tmp_path / "vendor/spin.yaml"), "validate"]) == 0


def test_validate_checks_overlays_and_hooks_exist(project: Path, capsys) -> None:
    write(project, {"distro.yaml": DISTRO + "rootfs:\n  overlays: [overlays/none]\n"})
    line = refused(capsys, "validate")
    assert line.startswith("distro.yaml:8: rootfs.overlays[0]: ") and "does not exist (expected a directory)" in line
    write(project, {"distro.yaml": DISTRO + "rootfs:\n  hooks: [hooks/none.sh]\n"})
    line = refused(capsys, "validate")
    assert line.startswith("distro.yaml:8: rootfs.hooks[0]: ") and "does not exist (expected a file)" in line


# --- 6. a file that is not a manifest is never echoed ----------------------------------


def test_extends_host_file_is_refused_unread(project: Path, secret: Path, capsys) -> None:
    write(project, {"spins/x.yaml": f"extends: {secret}\n"})
    line = refused(capsys, "-f", "spins/x.yaml", "validate")
    assert line == f"spins/x.yaml:1: extends: {secret} is not a manifest file (expected a .yaml or .yml file)"


@pytest.mark.parametrize(
    "content",
    [
        f"root:{SECRET}:20228:0:99999:7:::\n",  # a scalar
        f"- root:{SECRET}\n",  # a list
        f"{SECRET}: 1\nroot: x\n",  # a mapping with no known field
    ],
)
def test_file_that_is_no_manifest_is_named_never_echoed(project: Path, capsys, content: str) -> None:
    write(project, {"spins/secret.yaml": content, "spins/x.yaml": "extends: secret.yaml\n"})
    line = refused(capsys, "-f", "spins/x.yaml", "validate")
    assert line.startswith("spins/secret.yaml:1: ")
    assert SECRET not in line and "root:" not in line


def test_recipe_that_is_no_recipe_is_never_echoed(project: Path, capsys) -> None:
    write(project, {"components/hello.yaml": f"{SECRET}: x\n"})
    line = refused(capsys, "validate")
    assert line.startswith("components/hello.yaml:1: not a recipe") and SECRET not in line


def test_deeply_nested_yaml_is_one_line(project: Path, capsys) -> None:
    write(project, {"distro.yaml": DISTRO + "description: " + "[" * 5000 + "]" * 5000 + "\n"})
    line = refused(capsys, "validate")
    assert line == "distro.yaml:7: nested deeper than 32 levels (expected a manifest)"


# --- helpers for sources: a local HTTP server, local git repositories, OpenPGP keys ---

CANON = "https://git.example.invalid/drv.git"
CANON_HTTP = "https://files.example.invalid/"


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads that fail retry at once."""
    monkeypatch.setattr(http, "BACKOFF", 0.01)


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    """A git repository with tag v1 on its first commit and a second commit on main."""
    repo = tmp_path / "upstream"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "note").write_text("one\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")
    git(repo, "tag", "-a", "-m", "v1", "v1")
    (repo / "note").write_text("two\n")
    git(repo, "commit", "-q", "-a", "-m", "two")
    return repo


GIT_RECIPE = """\
source:
  git: {url}
  ref: v1
{verify}optional: true
steps:
  - name: stage
    run: install -D -m 0644 "$SRC/note" "$OUT/usr/share/drv/note"
package: {{name: drv-xs}}
"""


def git_project(project: Path, verify: str = "") -> None:
    write(
        project,
        {
            "distro.yaml": DISTRO.replace("  hello: {}\n", "  hello: {}\n  drv: {}\n"),
            "components/drv.yaml": GIT_RECIPE.format(url=CANON, verify=verify),
        },
    )


def xs(capsys: pytest.CaptureFixture[str], store: Path, *argv: str, mirror: str = "", code: int = 0) -> str:
    """Run xenspin with this store (and mirror map); return stderr (and stdout) after checking the exit status."""
    extra = ["--mirror", f"{CANON}={mirror}"] if mirror else []
    got = cli.main(["--store", str(store), *extra, *argv])
    out = capsys.readouterr()
    assert got == code, out.err
    assert "Traceback" not in out.err
    return out.err + out.out


# --- 3. a refusal outlives the run; keys are part of the lock entry ---------------------


def test_moved_tag_stays_refused_and_lock_reports_it(project: Path, upstream: Path, tmp_path: Path, capsys) -> None:
    git_project(project)
    store, url = tmp_path / "store", upstream.as_uri()
    xs(capsys, store, "lock", mirror=url)
    old = git(upstream, "rev-parse", "v1^{commit}")
    new = git(upstream, "rev-parse", "main")
    git(upstream, "tag", "-f", "-a", "-m", "v1 again", "v1", "main")
    # A fresh store fetches the moved tag: refused, for an optional component too; and again.
    other = tmp_path / "other"
    for _ in range(2):
        err = xs(capsys, other, "fetch", mirror=url, code=2)
        assert err.strip().splitlines()[-1] == f"fetch drv: tag v1 moved: locked at {old}, now {new}"
        assert not list((other / "git").glob("*.git")), "the refused mirror stays in the store"
    err = xs(capsys, other, "build", "drv", mirror=url, code=2)
    assert "tag v1 moved" in err and not objects(other)
    # lock says so and keeps the pin; --update refuses to re-pin without --allow-moved-tags.
    err = xs(capsys, store, "lock", mirror=url)
    assert f"warning: drv: tag v1 moved: {old} -> {new} (kept the locked commit" in err
    err = xs(capsys, store, "lock", "--update", "drv", mirror=url, code=2)
    assert (
        err.strip().splitlines()[-1]
        == f"lock drv: tag v1 moved: {old} -> {new}; not re-pinned (--allow-moved-tags re-pins it)"
    )
    assert old in (project / "distro.lock").read_text()
    xs(capsys, store, "lock", "--update", "drv", "--allow-moved-tags", mirror=url)
    assert new in (project / "distro.lock").read_text()


def test_untrusted_signer_stays_refused(project: Path, upstream: Path, keys: Keys, tmp_path: Path, capsys) -> None:
    """Keys rotated to one that did not sign the tag: the entry is stale, re-checked, refused, and stays so."""
    shutil.copy(keys.home / "good.asc", project / "components/release.asc")
    git(upstream, "tag", "-f", "-s", "-m", "v1", "v1", "v1^{commit}", keys=keys, key=keys.good)
    git_project(project, verify="  verify: {keys: [release.asc], tag: true}\n")
    store, url = tmp_path / "store", upstream.as_uri()
    xs(capsys, store, "lock", mirror=url)
    assert "release.asc:" in (project / "distro.lock").read_text()  # the key's digest is in the entry
    assert "already in the store: drv" in xs(capsys, store, "fetch", "drv", mirror=url)
    shutil.copy(keys.home / "bad.asc", project / "components/release.asc")  # the trusted key changes
    err = xs(capsys, store, "fetch", "drv", mirror=url, code=2)
    assert "stale for drv (verify.keys changed since it was locked)" in err
    for _ in range(2):
        err = xs(capsys, store, "lock", mirror=url, code=2)
        assert err.strip().splitlines()[-1].endswith("which is not among verify.keys (verify.tag)"), err
        assert not list((store / "git").glob("*.git"))
    xs(capsys, store, "build", "drv", mirror=url, code=2)
    assert not objects(store)


# --- 4. a refusal is an error for an optional component too -----------------------------


@pytest.fixture
def www(server: Server) -> tuple[Path, str]:
    """The conftest's HTTP server: (its directory, its base URL)."""
    return server.root, server.base


def tarball(path: Path, text: str) -> str:
    """A tarball holding drv/note; returns its sha256."""
    staging = path.parent / "staging" / "drv"
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "note").write_text(text)
    with tarfile.open(path, "w") as tar:
        tar.add(staging, arcname="drv")
    return hashlib.sha256(path.read_bytes()).hexdigest()


TAR_RECIPE = """\
source:
  url: https://files.example.invalid/drv.tar
optional: true
steps:
  - name: stage
    run: install -D -m 0644 "$SRC/note" "$OUT/usr/share/drv/note"
package: {name: drv-xs}
"""


def test_optional_tampered_tarball_fails_fetch_and_build(project: Path, www, tmp_path: Path, capsys) -> None:
    root, base = www
    tarball(root / "drv.tar", "good\n")
    write(project, {"distro.yaml": DISTRO.replace("  hello: {}\n", "  hello: {}\n  drv: {}\n")})
    write(project, {"components/drv.yaml": TAR_RECIPE})
    store, mirror = tmp_path / "store", ["--mirror", f"{CANON_HTTP}={base}"]
    assert cli.main(["--store", str(store), *mirror, "lock"]) == 0
    capsys.readouterr()
    bad = tarball(root / "drv.tar", "evil\n")  # upstream (or a mirror) serves other bytes
    for argv in (["fetch"], ["build", "drv"]):
        line = refused(capsys, "--store", str(tmp_path / "fresh"), *mirror, *argv)
        assert line.startswith("fetch drv: ") and f"sha256 mismatch: got {bad}" in line
    assert not list((tmp_path / "fresh/blobs").rglob("*.*")) and not list((tmp_path / "fresh/blobs/sha256").glob("*/*"))
    assert not objects(tmp_path / "fresh") and not (project / "out").exists()
    # Only an unreachable source leaves an optional component out.
    (root / "drv.tar").unlink()
    assert cli.main(["--store", str(tmp_path / "fresh"), *mirror, "fetch"]) == 0
    assert "warning: left out optional component drv: " in capsys.readouterr().err


# --- 5. what a step leaves in $DEBS and $OUT is checked --------------------------------


def make_deb(dest: Path, package: str, arch: str = "amd64") -> Path:
    root = dest.parent.parent / "staging" / f"deb-{package}-{arch}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: {arch}\nMaintainer: T <t@example.invalid>\nDescription: t\n"
    )
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", root, dest], check=True, capture_output=True)
    return dest


@pytest.fixture
def step_dirs(tmp_path: Path) -> tuple[Path, Path]:
    out, debs = tmp_path / "out", tmp_path / "debs"
    (out / "usr/bin").mkdir(parents=True)
    debs.mkdir()
    return out, debs


def check(out: Path, debs: Path, **kw: object) -> str:
    args = {"packages": ["good-xs"], "architecture": "amd64", **kw}
    with pytest.raises(outputcheck.OutputRefused) as e:
        outputcheck.check("evil", "stage", out, debs, **args)  # type: ignore[arg-type]
    assert "\n" not in str(e.value)
    return str(e.value)


def test_debs_may_hold_only_declared_packages(step_dirs: tuple[Path, Path], secret: Path) -> None:
    out, debs = step_dirs
    make_deb(debs / "good.deb", "good-xs")
    outputcheck.check("evil", "stage", out, debs, packages=["good-xs"], architecture="amd64")
    (debs / "x.deb").symlink_to(secret)
    assert check(out, debs) == "build evil: step stage: $DEBS/x.deb is a symlink (expected only .deb files)"
    (debs / "x.deb").unlink()
    (debs / "x.deb").symlink_to(secret.parent)  # a symlink to a directory once crashed every later build
    assert "$DEBS/x.deb is a symlink" in check(out, debs)
    (debs / "x.deb").unlink()
    (debs / "dir.deb").mkdir()
    assert check(out, debs) == "build evil: step stage: $DEBS/dir.deb is not a regular file (expected only .deb files)"
    (debs / "dir.deb").rmdir()
    shutil.copy(secret, debs / "shadow.deb")
    assert check(out, debs) == "build evil: step stage: $DEBS/shadow.deb is not a package dpkg-deb can read"
    (debs / "shadow.deb").unlink()
    make_deb(debs / "other.deb", "libc6")
    assert "$DEBS/other.deb is package 'libc6', which the recipe does not declare (debs: good-xs)" in check(out, debs)
    (debs / "other.deb").unlink()
    make_deb(debs / "arm.deb", "good-xs", "arm64")
    assert "$DEBS/arm.deb is for architecture 'arm64' (expected amd64 or all)" in check(out, debs)


def test_out_may_hold_no_devices_setuid_or_escaping_symlinks(step_dirs: tuple[Path, Path]) -> None:
    out, debs = step_dirs
    (out / "usr/bin/tool").write_text("#!/bin/sh\n")
    (out / "usr/bin/alt").symlink_to("/etc/alternatives/alt")  # absolute: a path of the installed system
    (out / "usr/bin/rel").symlink_to("../../usr/bin/tool")
    outputcheck.check("evil", "stage", out, debs, packages=[], architecture="amd64")
    (out / "usr/bin/up").symlink_to("../../../shadow")
    assert (
        check(out, debs) == "build evil: step stage: $OUT/usr/bin/up is a symlink to ../../../shadow, which leaves $OUT"
    )
    (out / "usr/bin/up").unlink()
    (out / "usr/bin/tool").chmod(0o4755)
    assert check(out, debs) == (
        "build evil: step stage: $OUT/usr/bin/tool is setuid or setgid (the recipe's setuid: does not name it)"
    )
    outputcheck.check("evil", "stage", out, debs, packages=[], architecture="amd64", setuid=["usr/bin/tool"])
    if os.geteuid() == 0:
        os.mknod(out / "usr/bin/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        assert check(out, debs, setuid=["usr/bin/tool"]) == (
            "build evil: step stage: $OUT/usr/bin/null is a device node (not allowed in $OUT)"
        )


# --- 1. a store blob changed behind xenspin's back is refused, not built ----------------


def test_changed_store_blob_is_refused_and_removed(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    blob = tmp_path / "f"
    blob.write_text("real bytes\n")
    sha = store.add_blob(blob)
    assert verified_blob(store, sha, "build x: f") == store.blob_path(sha)
    store.blob_path(sha).write_text("poisoned\n")
    with pytest.raises(Refused, match=r"^build x: f: store blob [0-9a-f]{64} was changed behind xenspin's back"):
        verified_blob(store, sha, "build x: f")
    assert not store.blob_path(sha).exists()


def test_sandbox_drops_root() -> None:
    """The one place the bubblewrap command line is made: an unprivileged user, no capabilities, no new userns."""
    argv = sandbox(Path("/nonexistent"), ro={"/src": Path("/s")}, rw={"/out": Path("/o")})
    line = " ".join(argv)
    assert "--unshare-all --unshare-user --disable-userns --uid 1000 --gid 1000 --cap-drop ALL" in line
    assert "--ro-bind /nonexistent / " in line and "--ro-bind /s /src" in line and "--bind /o /out" in line


# --- end to end: real bubblewrap builds in the session's shared build root ---------------

# The marker is assembled at run time, so the script's own text (in the step log) does not hold it.
MARK = 'M="xs-escape-$(printf %s marker-7f3a)"'
ESCAPE = f"""\
source: {{path: hello}}
steps:
  - name: escape
    run: |
      {MARK}
      id -u; grep CapEff /proc/self/status
      for d in / /src /usr; do mount -o remount,rw,bind "$d" 2>/dev/null && echo "REMOUNTED $d" || true; done
      for f in /m /src/m /usr/m /etc/m /srcpkg/m /tmp/../m; do echo "$M" 2>/dev/null >"$f" && echo "WROTE $f" || true; done
      unshare -r true 2>/dev/null && echo "NEW USERNS" || true
      install -D -m 0644 "$SRC/note" "$OUT/usr/share/hello/note"
package: {{name: hello-xs}}
"""


@pytest.mark.slow
@pytest.mark.network
def test_step_cannot_remount_or_write_outside_its_outputs(project: Path, store: Path, capsys) -> None:
    write(project, {"components/hello.yaml": ESCAPE})
    assert cli.main(["--store", str(store), "build"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    (log,) = (store / "logs/build/hello").glob("*/01-escape.log")
    said = log.read_text()
    assert "\n1000\n" in said and "CapEff:\t0000000000000000" in said
    assert not re.search(r"^(REMOUNTED|WROTE|NEW USERNS)", said, re.M), said
    nowhere("xs-escape-marker-7f3a", store, project)


EVIL_DEBS = """\
source: {path: hello}
steps:
  - name: stage
    run: |
      install -D -m 0644 "$SRC/note" "$OUT/usr/share/hello/note"
      ln -s /etc/shadow "$DEBS/x.deb"
package: {name: hello-xs}
"""


@pytest.mark.slow
@pytest.mark.network
def test_symlink_in_debs_is_refused_and_never_published(project: Path, store: Path, capsys) -> None:
    write(project, {"components/hello.yaml": EVIL_DEBS})
    before = set((store / "objects/build").glob("*")) if (store / "objects/build").is_dir() else set()
    line = refused(capsys, "--store", str(store), "build")
    assert line.startswith("build hello: step stage: $DEBS/x.deb is a symlink (expected only .deb files)"), line
    assert set((store / "objects/build").glob("*")) == before
    assert not (project / "out/repo").exists()
    assert not [p for p in store.rglob("x.deb")]


@pytest.mark.slow
@pytest.mark.network
def test_tarball_changed_in_the_store_is_refused_not_built(project: Path, store: Path, www, capsys) -> None:
    root, base = www
    sha = tarball(root / "drv.tar", "good\n")
    write(project, {"distro.yaml": DISTRO.replace("  hello: {}\n", "  hello: {}\n  drv: {}\n")})
    write(project, {"components/drv.yaml": TAR_RECIPE.replace("optional: true\n", "")})
    mirror = ["--mirror", f"{CANON_HTTP}={base}"]
    assert cli.main(["--store", str(store), *mirror, "lock"]) == 0
    capsys.readouterr()
    blob = Store(store).blob_path(sha)
    tarball(root / "poisoned.tar", "poisoned-by-xs-test\n")
    shutil.copy(root / "poisoned.tar", blob)  # changed behind xenspin's back (same name, other bytes)
    line = refused(capsys, "--store", str(store), *mirror, "--offline", "build", "drv")
    assert f"store blob {sha} was changed behind xenspin's back" in line
    assert not blob.exists()
    nowhere("poisoned-by-xs-test", store / "objects")
    # The next (online) run fetches the real bytes again and builds them.
    assert cli.main(["--store", str(store), *mirror, "build", "drv"]) == 0, capsys.readouterr().err


# --- 7. smaller: publishing into one out/ at once -------------------------------------


def test_two_publishes_into_one_out_take_turns(tmp_path: Path) -> None:
    repos = []
    for i in range(2):
        r = tmp_path / f"repo{i}"
        r.mkdir()
        (r / "Packages").write_text(f"repo {i}\n")
        (r / "Release").write_text(f"release {i}\n")
        repos.append(r)
    errors: list[BaseException] = []

    def publish_many(r: Path) -> None:
        try:
            for _ in range(50):
                with aptrepo.out_lock(tmp_path / "out"):
                    aptrepo.publish(r, tmp_path / "out/repo")
        except BaseException as e:  # noqa: BLE001 - any failure is the finding
            errors.append(e)

    threads = [threading.Thread(target=publish_many, args=(r,)) for r in repos]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    packages = (tmp_path / "out/repo/Packages").read_text()
    assert (tmp_path / "out/repo/Release").read_text() == packages.replace("repo", "release")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["repo"]


@pytest.mark.parametrize(
    "code",
    [
        "from builder.run import run; run(['sleep', '{arg}'], what='t')",
        # spawn: a long-lived child in its own session (QEMU in `test boot` and `test install`)
        "import time; from builder.run import spawn; spawn(['sleep', '{arg}'], what='t', log_path=__import__('pathlib').Path('{log}')); time.sleep(60)",
    ],
    ids=["run", "spawn"],
)
def test_killed_run_leaves_no_children(tmp_path: Path, code: str) -> None:
    """kill -9 of xenspin: what it started through run.py (a build step, a VM) dies with it."""
    arg = str(4171 + len(code))  # a sleep no other test starts
    parent = subprocess.Popen([sys.executable, "-c", code.format(arg=arg, log=tmp_path / "log")])
    try:
        deadline = time.monotonic() + 20
        while not (child := sleeper(arg)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child, "the child never started"
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 5
    while sleeper(arg) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sleeper(arg)


def sleeper(arg: str) -> list[int]:
    """Pids of live `sleep ARG` processes."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if argv[:2] == [b"sleep", arg.encode()] and state != "Z":
            pids.append(int(proc.name))
    return pids


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("", "xenspin: argument --store: expected a directory, got an empty string (see xenspin --help)"),
        ("file", "store {project}/file: cannot create {project}/file/blobs/sha256: Not a directory"),
    ],
    ids=["empty", "file"],
)
def test_unusable_store_is_one_line(project: Path, bad: str, says: str, capsys, tmp_path: Path) -> None:
    """A locked project, so `fetch` gets as far as the store: an empty --store or a file there is one line."""
    assert cli.main(["--store", str(tmp_path / "store"), "lock"]) == 0
    capsys.readouterr()
    (project / "file").write_text("not a directory\n")
    try:
        code = cli.main(["--store", bad, "fetch"])
    except SystemExit as e:  # argument errors leave through argparse, as one line
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.strip() == says.format(project=project), err
    assert (project / "file").read_text() == "not a directory\n"
