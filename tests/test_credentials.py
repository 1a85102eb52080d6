"""Root's password: not built into an ISO in plain text unless asked, never in the installer's log or
errors; `xenspin test install` logs in with a throwaway login of its own, so any answerfile can be tested.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import one_line
from xenspin_installer import InstallerError
from xenspin_installer.answerfile import Answerfile, Root, redacted
from xenspin_installer.disks import Disk, GiB, plan
from xenspin_installer.install import LOG_ON_TARGET, TEST_LOGIN_ADDED, TEST_USER, Installer, Layout
from xenspin_installer.main import parser, unattended_answers
from xenspin_installer.run import CommandFailed, Runner
from xenspin_installer.sources import TEST_LOGIN, read_test_login

from builder import cli, installtest, pipeline, testguest
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


def add_tool(tree: Path, name: str) -> None:
    """The host's tool, at the same path in tree, with the libraries it loads."""
    tool = Path(shutil.which(name) or pytest.skip(f"{name} is not installed"))
    for path in [tool] + [
        Path(lib)
        for lib in re.findall(r"(/\S+) \(0x", subprocess.run(["ldd", tool], capture_output=True, text=True).stdout)
    ]:
        dest = tree / str(path).lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            shutil.copy2(path.resolve(), dest)


def target_tree(tree: Path, *tools: str) -> Path:
    """A root filesystem to chroot into: the accounts of a fresh image and the tools the installer runs."""
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (tree / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (tree / "etc/group").write_text("root:x:0:\n")
    (tree / "etc/gshadow").write_text("root:*::\n")
    if Path("/etc/login.defs").is_file():
        shutil.copy("/etc/login.defs", tree / "etc/login.defs")
    for tool in ("env", *tools):
        add_tool(tree, tool)
    return tree


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
        workdir=tmp_path,
    )
    inst.mnt = tree
    return inst


@pytest.mark.root  # chroot
def test_a_failing_chpasswd_in_the_target_leaks_no_hash(tmp_path: Path) -> None:
    busybox = testguest.BUSYBOX if testguest.BUSYBOX.is_file() else pytest.skip("busybox-static is not installed")
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


def shadow_of(tree: Path) -> dict[str, str]:
    return {line.split(":")[0]: line.split(":")[1] for line in (tree / "etc/shadow").read_text().splitlines()}


@pytest.mark.root  # chroot
@pytest.mark.parametrize("root", [Root(password_hash=HASH), Root(ssh_keys=[KEY])], ids=["hashed", "keys-only"])
def test_the_test_login_is_added_beside_root_which_stays_as_given(tmp_path: Path, root: Root) -> None:
    """With the real useradd and chpasswd, in a chroot: TEST_USER is uid 0 with the harness's hash;
    root is exactly what the answerfile made it (its hash, or the image's locked password and the keys)."""
    tree = target_tree(tmp_path / "tree", "useradd", "chpasswd")
    login = testguest.throwaway_login()
    inst = installer(tmp_path, tree, Answerfile(root=root), test_login=login.hash)
    inst.set_root_login()
    inst.add_test_login(login.hash)
    inst.copy_log()
    passwd = (tree / "etc/passwd").read_text().splitlines()
    assert passwd[0] == "root:x:0:0:root:/root:/bin/bash"
    assert passwd[1] == f"{TEST_USER}:x:0:0:xenspin test install:/root:/bin/bash"
    shadow = shadow_of(tree)
    assert shadow[TEST_USER] == login.hash
    assert shadow["root"] == (HASH if root.password_hash else "*")
    if root.ssh_keys:
        assert (tree / "root/.ssh/authorized_keys").read_text() == KEY + "\n"
    for log in (tmp_path / "install.log", tree / LOG_ON_TARGET):
        text = log.read_text()
        assert login.hash not in text and HASH not in text and login.password not in text
        assert f"$ chroot {tree} env" in text and "chpasswd --encrypted" in text
    assert oct((tree / LOG_ON_TARGET).stat().st_mode & 0o777) == "0o600"


def test_the_test_login_file_is_one_hash_never_echoed(tmp_path: Path) -> None:
    disk = tmp_path / "answers"
    disk.mkdir()
    (disk / TEST_LOGIN).write_text(HASH + "\n")
    assert read_test_login(disk, TEST_LOGIN, "/dev/sda (label XSANSWER)") == HASH
    for bad in ("letmein\n", f"{HASH}\n{HASH}\n", "x" * 5000):
        (disk / TEST_LOGIN).write_text(bad)
        with pytest.raises(InstallerError) as e:
            read_test_login(disk, TEST_LOGIN, "/dev/sda (label XSANSWER)")
        line = one_line(e, "/dev/sda (label XSANSWER): xenspin-test-login: is not one crypt(3) password hash")
        assert "letmein" not in line and HASH not in line
    secret = tmp_path / "secret"  # a link on the answer disk reads inside the disk, never the live system
    secret.write_text(HASH + "\n")
    (disk / TEST_LOGIN).unlink()
    (disk / TEST_LOGIN).symlink_to(secret)
    with pytest.raises(InstallerError) as e:
        read_test_login(disk, TEST_LOGIN, "here")
    assert "a symlink to" in one_line(e) and "missing" in str(e.value)


def test_installer_takes_the_test_login_only_with_its_answers(tmp_path: Path) -> None:
    answer = tmp_path / "a.yaml"
    answer.write_text(f"root:\n  ssh-keys: ['{KEY}']\n")
    (tmp_path / "login").write_text(HASH + "\n")
    runner = Runner(tmp_path / "install.log", out=io.StringIO())
    args = parser().parse_args(["--answerfile", str(answer), "--test-login", str(tmp_path / "login")])
    got, login = unattended_answers(args, {}, runner)
    assert got.root.ssh_keys == [KEY] and login == HASH
    args = parser().parse_args(["--answerfile", str(answer)])
    assert unattended_answers(args, {}, runner)[1] is None
    assert HASH not in (tmp_path / "install.log").read_text()


# --- 3. the harness: a throwaway login on the answer disk, the answerfile as given -------------


class FakeLine:
    """A serial line on which everything awaited shows up at once; what is typed is kept."""

    def __init__(self, said: str) -> None:
        self.sent: list[str] = []
        self.said = said
        self.pos = 0

    def text(self) -> str:
        return self.said

    def expect(self, *texts: str, timeout: float, poll: float = 0.5) -> str:
        return texts[0]

    def send(self, text: str, pace: float = 0.05) -> None:
        self.sent.append(text)

    def keys(self, *keys: str, pace: float = 0.5) -> None:
        pass

    def wait_exit(self, timeout: float) -> None:
        pass

    def command(self, cmd: str, timeout: float) -> str:
        self.sent.append(cmd)
        return "absent"  # a host without the XCP toolstack


def disk_file(image: Path, name: str) -> bytes:
    return subprocess.run(["mcopy", "-i", image, f"::/{name}", "-"], capture_output=True, check=True).stdout


def verifies(password: str, crypt_hash: str) -> bool:
    salt = crypt_hash.split("$")[2]
    again = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", salt, "-stdin"], input=password.encode(), capture_output=True, check=True
    )
    return again.stdout.decode().strip() == crypt_hash


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("answer.yaml", f"# mine, as I wrote it\nroot:\n  password-hash: '{HASH}'\nfinish: poweroff\n"),
        ("keys.yml", f"root:\n  ssh-keys:\n    - {KEY}\n"),
        ("answer.xml", f'<installation>\n<root-password type="hash">{HASH}</root-password>\n</installation>\n'),
        (None, None),
    ],
    ids=["hashed-yaml", "keys-only", "hashed-xml", "default"],
)
def test_test_install_logs_in_with_its_own_throwaway_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str | None, text: str | None
) -> None:
    """The whole harness with QEMU left out: what goes on the answer disk, what is typed at login."""
    lines: list[tuple[str, FakeLine]] = []

    @contextlib.contextmanager
    def fake_vm(argv_for, logs, name):
        lines.append(
            (
                name,
                FakeLine(
                    f"xenspin installer: x\n{TEST_LOGIN_ADDED} (uid 0) ...\nxenspin installed on /dev/vda; poweroff now\n"
                ),
            )
        )
        yield lines[-1][1]

    monkeypatch.setattr(installtest, "vm", fake_vm)
    monkeypatch.setattr(installtest, "check_settings", lambda line, answer: None)  # tests/test_vmdrives.py
    iso = tmp_path / "x.iso"
    iso.write_bytes(b"an ISO\n" * 1000)
    before = hashlib.sha256(iso.read_bytes()).hexdigest()
    answerfile = None
    if name is not None:
        answerfile = tmp_path / name
        answerfile.write_text(text)
    logs = tmp_path / "out/test-install"
    verdict = installtest.install(iso, "bios", logs, answerfile)
    assert verdict.passed and list(verdict.steps) == ["installed", "login", "Domain-0", "guest"]
    [(_, _), (disk_vm, line)] = lines
    assert disk_vm == "bios-disk"
    assert line.sent[0] == f"{TEST_USER}\r" and line.sent[2] == "xl list\r"
    password = line.sent[1].removesuffix("\r")
    image = logs / "bios.answers.img"
    on_disk = "answerfile.xml" if name and name.endswith(".xml") else "answerfile.yaml"
    mine = answerfile.read_bytes() if answerfile else testguest.default_answerfile().encode()
    assert disk_file(image, on_disk) == mine  # the user's answerfile, byte for byte
    crypt_hash = disk_file(image, TEST_LOGIN).decode()
    assert crypt_hash.endswith("\n") and crypt_hash.count("\n") == 1 and crypt_hash.startswith("$6$")
    assert verifies(password, crypt_hash.strip()) and not verifies(password + "x", crypt_hash.strip())
    assert len(password) >= 24 and re.fullmatch(r"[A-Za-z0-9_-]+", password)
    # the password is in no file: not in the logs, not on the answer disk, not in the ISO (unchanged)
    for path in [*logs.rglob("*"), iso, *(p for p in tmp_path.iterdir() if p.is_file())]:
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path
    assert hashlib.sha256(iso.read_bytes()).hexdigest() == before
    assert not any(p.name.startswith("bios.answers.img.") for p in logs.iterdir())  # no copies left beside the disk


def test_an_iso_whose_installer_adds_no_test_login_fails_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    @contextlib.contextmanager
    def fake_vm(argv_for, logs, name):
        yield FakeLine("xenspin installer: x\nxenspin installed on /dev/vda; poweroff now\n")

    monkeypatch.setattr(installtest, "vm", fake_vm)
    iso = tmp_path / "old.iso"
    iso.write_bytes(b"\0" * 2048)
    verdict = installtest.install(iso, "bios", tmp_path / "logs", None)
    assert not verdict.passed and verdict.missing == TEST_LOGIN_ADDED
    assert "predates the test's own login; rebuild the ISO" in verdict.line()


def test_each_run_gets_a_fresh_password() -> None:
    one, two = testguest.throwaway_login(), testguest.throwaway_login()
    assert one.password != two.password and one.hash != two.hash and one.user == two.user == TEST_USER
    assert one.password not in repr(one) and one.hash not in repr(one)
