"""Untrusted code in a real build: a spin's hook and a package's maintainer script attack the host (slow).

A spin of the default distribution adds a component whose package has a postinst, and
a hook. Both try what an attacker would: write into the host through /proc/1/root, read
the host's environment, reach the network, plant symlinks for xenspin's own steps to
follow (machine-id, /var/log, a kernel in /boot). The build runs; none of it reaches
the host, and what the image holds comes from the image.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import DEFAULT_EPOCH, DefaultBuild

from builder import cli

pytestmark = pytest.mark.slow

EVIL_RECIPE = """\
description: a package whose maintainer script attacks the build host
build-depends: [python3]
source:
  path: evil
steps:
  - name: stage
    run: |
      mkdir -p "$OUT/usr/share/evil" "$OUT/DEBIAN"
      cp "$SRC/README" "$OUT/usr/share/evil/README"
      cp "$SRC/postinst" "$OUT/DEBIAN/postinst"
      chmod 755 "$OUT/DEBIAN/postinst"
package:
  name: evil-pkg
  description: attacks the build host from its postinst
"""

POSTINST = """\
#!/bin/sh
for t in /proc/1/root/tmp /proc/1/root/var/tmp /proc/1/root/root /proc/1/root{project}; do
    echo pwned > "$t/postinst-{mark}" 2>/dev/null || true
done
exit 0
"""

HOOK = """\
#!/bin/sh
echo "$1" > "$1/etc/hook-arg"
pwd > /etc/hook-pwd
env | sort > /etc/hook-env
if bash -c 'echo x > /dev/tcp/127.0.0.1/{port}' 2>/dev/null; then echo reached; else echo unreachable; fi > /etc/hook-net
for t in /proc/1/root/tmp /proc/1/root/root /proc/1/root{project}; do
    echo pwned > "$t/hook-{mark}" 2>/dev/null || true
done
ln -sf {host_file} /etc/machine-id
rm -rf /var/log && ln -s {host_dir} /var/log
ln -s /etc/hostname /boot/vmlinuz-zzz
"""


@pytest.fixture(scope="module")
def hostile(default_build: DefaultBuild, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The hostile spin built into the session store; what the test checks afterwards."""
    project = default_build.project
    host = tmp_path_factory.mktemp("host")
    mark = secrets.token_hex(6)
    host_file = host / "machine-id"
    host_file.write_text("keep\n")
    host_dir = host / "logs"
    host_dir.mkdir()
    (host_dir / "keep.log").write_text("keep\n")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.setblocking(False)
    port = listener.getsockname()[1]

    (project / "components/evil").mkdir()
    (project / "components/evil/README").write_text("evil\n")
    (project / "components/evil/postinst").write_text(POSTINST.format(mark=mark, project=host))
    (project / "components/evil.yaml").write_text(EVIL_RECIPE)
    hook = project / "hooks/attack.sh"
    hook.parent.mkdir()
    hook.write_text(HOOK.format(mark=mark, port=port, project=host, host_file=host_file, host_dir=host_dir))
    hook.chmod(0o755)
    spin = project / "hostile.yaml"
    spin.write_text(
        "extends: distro.yaml\nname: hostile\ncomponents:\n  evil: {}\nrootfs:\n  hooks: [hooks/attack.sh]\n"
    )
    secret = "XENSPIN_TEST_SECRET"
    argv = ["-f", str(spin), "--store", str(default_build.store), "--out", str(project / "out-hostile"), "--json"]
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setenv("SOURCE_DATE_EPOCH", DEFAULT_EPOCH)
        mp.setenv(secret, mark)
        code = cli.main([*argv, "build"])
    assert code == 0, err.getvalue()
    report = json.loads(out.getvalue())
    rootfs = Path(report["rootfs"]["path"])
    with contextlib.suppress(BlockingIOError):
        listener.accept()
        pytest.fail("a hook reached 127.0.0.1")
    listener.close()
    return {"mark": mark, "host": host, "rootfs": rootfs, "project": project, "secret": secret}


def image_file(rootfs: Path, path: str) -> str:
    return subprocess.run(
        ["unsquashfs", "-cat", str(rootfs / "rootfs.squashfs"), path], capture_output=True, text=True, check=True
    ).stdout


def test_maintainer_scripts_and_hooks_cannot_write_on_the_host(hostile: dict) -> None:
    mark = hostile["mark"]
    for where in (Path("/tmp"), Path("/var/tmp"), Path("/root"), hostile["host"], Path("/")):
        for who in ("postinst", "hook"):
            assert not (where / f"{who}-{mark}").exists(), where / f"{who}-{mark}"


def test_hooks_run_in_the_tree_without_the_hosts_environment_or_network(hostile: dict) -> None:
    rootfs = hostile["rootfs"]
    assert image_file(rootfs, "etc/hook-arg").strip() == "/"  # the tree is / and $1
    assert image_file(rootfs, "etc/hook-pwd").strip() == "/"
    env = image_file(rootfs, "etc/hook-env")
    assert hostile["mark"] not in env and hostile["secret"] not in env
    assert {line.split("=", 1)[0] for line in env.splitlines()} <= {
        "PATH", "LC_ALL", "SOURCE_DATE_EPOCH", "HOME", "TMPDIR", "PWD", "SHLVL", "_", "OLDPWD",
    }  # fmt: skip
    assert image_file(rootfs, "etc/hook-net").strip() == "unreachable"


def test_xenspins_own_steps_follow_no_symlink_out_of_the_tree(hostile: dict) -> None:
    host = hostile["host"]
    assert (host / "machine-id").read_text() == "keep\n"  # scrub did not truncate it
    assert (host / "logs/keep.log").read_text() == "keep\n"  # nor empty the directory
    # /boot/vmlinuz-zzz -> /etc/hostname resolves in the image: its hostname, never the host's
    assert (hostile["rootfs"] / "boot/vmlinuz").read_bytes() == b"hostile\n"


def test_the_image_has_its_own_resolver_and_records_setuid_files(default_build: DefaultBuild) -> None:
    resolv = (default_build.tree / "etc/resolv.conf").read_text()
    assert "nameserver" not in resolv and resolv.startswith("# Written by xenspin")
    assert (default_build.tree / "etc/hostname").read_text() == "xenspin\n"
    packages = {p["name"]: p for p in json.loads((default_build.rootfs / "packages.json").read_text())}
    assert packages["mount"]["setuid"] == ["/usr/bin/mount", "/usr/bin/umount"]
    found = subprocess.run(
        ["find", str(default_build.tree), "-type", "f", "-perm", "/6000"], capture_output=True, text=True, check=True
    ).stdout.split()
    recorded = {f for p in packages.values() for f in p.get("setuid", [])}
    assert {"/" + os.path.relpath(f, default_build.tree) for f in found} == recorded
