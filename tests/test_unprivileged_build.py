"""The default distribution built by an ordinary account gives the same ISO as the build as root (slow).

The test makes an account (it needs root for that, the build does not), gives it
subordinate ids with `xenspin setup --user`, and runs `xenspin build` as that account
in a store of its own. The checkout may sit where the account cannot look (/root), so
the account sees it through the same view xenspin gives its build account.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DEFAULT_EPOCH, ROOT, copy_project

from builder import host
from builder.run import Builder, as_builder, run

pytestmark = [pytest.mark.slow, pytest.mark.root]  # making an account needs root

USER = "xenspin-test-user"


@pytest.fixture(scope="module")
def account() -> Iterator[Builder]:
    made = False
    try:
        pwd.getpwnam(USER)
    except KeyError:
        run(["useradd", "--no-create-home", "--shell", "/bin/sh", USER], what="test: make an account", capture=True)
        made = True
    host.setup([USER])
    pw = pwd.getpwnam(USER)
    who = Builder(pw.pw_uid, pw.pw_gid, USER)
    yield who
    if made:
        run(["userdel", USER], what="test: remove the account", capture=True, check=False)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def test_an_ordinary_account_builds_the_same_iso(account: Builder, default_iso: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="xenspin-unprivileged.", dir="/var/tmp"))
    try:
        os.chmod(work, 0o755)
        manifest = copy_project(work)
        subprocess.run(["chown", "-R", f"{account.uid}:{account.gid}", str(work)], check=True)
        xenspin = Path(sys.executable).parent / "xenspin"
        cmd = [str(xenspin), "-f", str(manifest), "--store", str(work / "store"), "--out", str(work / "out"), "build"]
        env = {"SOURCE_DATE_EPOCH": DEFAULT_EPOCH, "HOME": str(work), "LC_ALL": "C.UTF-8"}
        proc = run(
            as_builder(cmd, account, reach=[work, ROOT, Path(sys.prefix)]),
            what="test: build as an ordinary account",
            env=env,
            inherit_env=False,
            capture=True,
            check=False,
        )
        out = proc.stdout.decode() + proc.stderr.decode()
        assert proc.returncode == 0, out[-4000:]
        (iso,) = sorted((work / "out").glob("*-amd64.iso"))
        assert iso.stat().st_uid == account.uid  # the account wrote it, not root
        assert sha256(iso) == sha256(default_iso), out[-2000:]
    finally:
        shutil.rmtree(work, ignore_errors=True)
