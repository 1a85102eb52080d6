"""Root's password: not built into an ISO in plain text unless asked, never in the installer's log or errors."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import one_line
from xenspin_installer.answerfile import Answerfile, Root, redacted
from xenspin_installer.disks import Disk, GiB, plan
from xenspin_installer.install import Installer, Layout
from xenspin_installer.run import CommandFailed, Runner

from builder import cli, guest, pipeline
from builder.errors import XenspinError

HASH = "$6$salt$abcdefghijklmnopqrstuvwxyz0123456789./ABCDEFGHIJKLMNOP"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyOnlyForTheReadme0000000000000 admin@example"
PLAIN = "pl41n-s3cret"

DISTRO = """\
name: tiny
version: "1"
components:
  installer:
    source: {path: installer}
"""


def project(tmp_path: Path, baked: str | None = None) -> Path:
    (tmp_path / "installer").mkdir(exist_ok=True)
    text = DISTRO
    if baked is not None:
        (tmp_path / "host.yaml").write_text(baked)
        text += "installer:\n  answerfile: host.yaml\n"
    (tmp_path / "distro.yaml").write_text(text)
    return tmp_path / "distro.yaml"


def build(tmp_path: Path, *args: str) -> int:
    return cli.main(["-f", str(tmp_path / "distro.yaml"), "--store", str(tmp_path / "store"), "build", *args])


@pytest.fixture
def stop_before_building(monkeypatch: pytest.MonkeyPatch) -> None:
    """The build stops where it would start building: reaching it means the answerfile checks passed."""

    def stop(*args: object, **kwargs: object) -> None:
        raise XenspinError("test: the build starts here")

    monkeypatch.setattr(pipeline, "run_build", stop)


# --- 1. build --answerfile refuses a plain root password ----------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("answer.yaml", f"root:\n  password: {PLAIN}\n"),
        ("answer.xml", f"<installation><root-password>{PLAIN}</root-password></installation>"),
        ("answer.xml", f'<installation><root-password type="plaintext">{PLAIN}</root-password></installation>'),
    ],
)
def test_build_refuses_a_plain_root_password_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str
) -> None:
    project(tmp_path)
    (tmp_path / name).write_text(text)
    assert build(tmp_path, "--answerfile", str(tmp_path / name)) == 2
    err = capsys.readouterr().err
    line = one_line(err)
    assert f"{name}: root's password is plain text" in line
    assert "password-hash" in line and '<root-password type="hash">' in line and "openssl passwd -6" in line
    assert "--allow-plaintext-password" in line
    assert PLAIN not in err
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.iso"))


def test_a_manifest_answerfile_with_a_plain_password_is_refused_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project(tmp_path, baked=f"root: {{password: {PLAIN}}}\n")
    assert build(tmp_path) == 2
    assert "host.yaml: root's password is plain text" in one_line(capsys.readouterr().err)


def test_a_hashed_password_or_keys_build_and_the_flag_allows_a_plain_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stop_before_building: None
) -> None:
    project(tmp_path)
    for name, text in [
        ("hashed.yaml", f"root:\n  password-hash: '{HASH}'\n"),
        ("keys.yaml", f"root:\n  ssh-keys: ['{KEY}']\n"),
        ("hashed.xml", f'<installation><root-password type="hash">{HASH}</root-password></installation>'),
    ]:
        (tmp_path / name).write_text(text)
        assert build(tmp_path, "--answerfile", str(tmp_path / name)) == 2
        assert capsys.readouterr().err == "test: the build starts here\n", name
    (tmp_path / "plain.yaml").write_text(f"root: {{password: {PLAIN}}}\n")
    assert build(tmp_path, "--answerfile", str(tmp_path / "plain.yaml"), "--allow-plaintext-password") == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("plain.yaml: warning: root's plain password is built into the ISO, as asked")
    assert err[1:] == ["test: the build starts here"]


def test_validate_answerfile_warns_about_a_plain_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text(f"root: {{password: {PLAIN}}}\n")
    assert cli.main(["validate-answerfile", str(plain)]) == 0
    printed = capsys.readouterr()
    assert "plain.yaml: valid" in printed.out
    warning = one_line(printed.err, str(plain))
    assert "warning: root's password is plain text" in warning and "password-hash" in warning
    assert cli.main(["--json", "validate-answerfile", str(plain)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["valid"] and len(data["warnings"]) == 1 and data["answers"]["root"]["password"] == "(given)"
    hashed = tmp_path / "hashed.yaml"
    hashed.write_text(f"root:\n  password-hash: '{HASH}'\n")
    assert cli.main(["--json", "validate-answerfile", str(hashed)]) == 0
    printed = capsys.readouterr()
    data = json.loads(printed.out)
    assert data["warnings"] == [] and printed.err == ""
    assert data["answers"]["root"]["password-hash"] == "(given)" and HASH not in printed.out


# --- 2. the installer never logs a password ------------------------------------------------


def test_answers_in_the_log_hide_the_password_plain_or_hashed() -> None:
    for root in (Root(password=PLAIN), Root(password_hash=HASH)):
        shown = str(redacted(Answerfile(root=root)))
        assert PLAIN not in shown and HASH not in shown and "(given)" in shown


def test_a_failing_command_never_shows_its_secret_input(tmp_path: Path) -> None:
    runner = Runner(tmp_path / "install.log", out=io.StringIO())
    echo_and_fail = 'echo "chpasswd: line 1: cannot parse: $(cat)" >&2; exit 1'
    with pytest.raises(CommandFailed) as e:
        runner.run(["sh", "-c", echo_and_fail], "set root's password", input=f"root:{HASH}\n", secrets=[HASH])
    assert HASH not in str(e.value) and "cannot parse: root:(secret)" in str(e.value)
    log = (tmp_path / "install.log").read_text()
    assert HASH not in log and "cannot parse: root:(secret)" in log and "$ sh -c" in log


def can_chroot() -> None:
    if os.geteuid() != 0 or shutil.which("chroot") is None:
        pytest.skip("chroot needs root")


def installer(tmp_path: Path, tree: Path, answer: Answerfile, **kw: object) -> Installer:
    """An Installer working on tree (its target mounted, as it were) with a real Runner."""
    disk = Disk("/dev/vdz", 8 * GiB)
    runner = Runner(tmp_path / "install.log", out=io.StringIO())
    medium = tmp_path / "medium"
    inst = Installer(
        answer,
        Layout(disk, plan(disk.size, local_storage=False)),
        runner,
        medium / "live/x.squashfs",
        medium=medium,
        **kw,
    )
    os.rmdir(inst.mnt)
    inst.mnt = tree
    return inst


def test_a_failing_chpasswd_in_the_target_leaks_no_hash(tmp_path: Path) -> None:
    can_chroot()
    busybox = guest.BUSYBOX if guest.BUSYBOX.is_file() else pytest.skip("busybox-static is not installed")
    tree = tmp_path / "tree"
    for d in ("bin", "usr/bin", "usr/sbin"):
        (tree / d).mkdir(parents=True)
    shutil.copy(busybox, tree / "bin/busybox")
    (tree / "bin/sh").symlink_to("busybox")
    (tree / "usr/bin/env").symlink_to("/bin/busybox")
    chpasswd = tree / "usr/sbin/chpasswd"  # says what it was given, as a confused chpasswd might
    chpasswd.write_text('#!/bin/sh\necho "chpasswd: bad input: $(/bin/busybox cat)" >&2\nexit 1\n')
    chpasswd.chmod(0o755)
    inst = installer(tmp_path, tree, Answerfile(root=Root(password_hash=HASH)))
    with pytest.raises(CommandFailed) as e:
        inst.set_root_login()
    assert "set root's password: failed with exit status 1" in str(e.value) and "bad input: root:(secret)" in str(
        e.value
    )
    assert HASH not in str(e.value) and HASH not in (tmp_path / "install.log").read_text()
    inst.a = Answerfile(root=Root(password=PLAIN))
    with pytest.raises(CommandFailed) as e:
        inst.set_root_login()
    assert PLAIN not in str(e.value) and PLAIN not in (tmp_path / "install.log").read_text()
