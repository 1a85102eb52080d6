"""`xenspin test upgrade` and `test install --interactive` with QEMU left out: the answers they bring,
what they type and what they read back (pure parts and a scripted serial line)."""

from __future__ import annotations

import pytest

from builder import cli, interactivetest, upgradetest
from builder.installtest import Timeout


def test_the_upgrade_and_restore_answers_name_the_mode_and_the_disk() -> None:
    a = upgradetest.mode_answers("upgrade", "sda")
    assert a.name == "answerfile.yaml" and a.disk == "sda"
    assert a.data.decode().splitlines()[1:] == ["mode: upgrade", "disk: sda"]
    assert b"root" not in upgradetest.mode_answers("restore", "/dev/vda").data


def test_the_version_comes_from_os_release() -> None:
    text = 'PRETTY_NAME="xenspin 0.2"\nNAME="xenspin"\nVERSION="0.2"\nVERSION_ID="0.2"\n'
    assert upgradetest.os_release_version(text) == "0.2"
    assert upgradetest.os_release_version("NAME=x\n") == ""


def test_what_survived_is_compared_with_what_was_written() -> None:
    token = "0123456789abcdef"
    out = f"mark={token}\nlv={token}\nversion=0.2\n"
    assert upgradetest.look_problems(out, token, "0.2") == []
    problems = upgradetest.look_problems(f"mark=\nlv={token[:4]}\nversion=0.1\n", token, "0.2")
    assert [p.split(":")[0] for p in problems] == [
        "/etc/xenspin-upgrade-test",
        "/dev/xenspin-local/xenspin-upgrade-test",
        "VERSION",
    ]
    assert upgradetest.look_problems(f"mark={token}\nlv=\nversion=0.1\n", token, "0.1", lv=False) == []
    # the commands write and read the same places
    assert upgradetest.MARK in upgradetest.change_command(token) and upgradetest.LV in upgradetest.look_command(token)


class TypedLine:
    """A serial line that shows the installer's prompts one by one as they are answered."""

    def __init__(self, prompts: list[str]) -> None:
        self.prompts, self.typed, self.pos, self.shown = prompts, [], 0, ""

    def expect(self, *texts: str, timeout: float, poll: float = 0.5) -> str:
        self.shown = self.prompts.pop(0)
        self.pos = 0
        return next(t for t in texts if self.shown.startswith(t))

    def text(self) -> str:
        return self.shown

    def send(self, text: str, pace: float = 0.05) -> None:
        self.typed.append(text)


def test_the_interview_answers_each_prompt_by_its_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interactivetest.time, "sleep", lambda _s: None)
    line = TypedLine(
        [
            "Install to disk (vda) [vda]: ",
            "Host name [xenspin]: ",
            "Network (dhcp/static) [dhcp]: ",
            "Root logs in with (password/ssh-key) [password]: ",
            "Root password: ",
            "Again: ",
            "Time zone [UTC]: ",
            "Keyboard layout [us]: ",
            "Type yes to install: ",
        ]
    )
    asked = interactivetest.interview(line, "pw")  # type: ignore[arg-type]
    assert len(asked) == 9
    assert line.typed == ["\r", "xenspin-typed\r", "\r", "\r", "pw\r", "pw\r", "\r", "\r", "yes\r"]


def test_a_disk_prompt_without_a_default_gets_the_disk_typed() -> None:
    assert interactivetest.answer_for(interactivetest.DISK, " (vda/sda): ", "pw") == "vda\r"


def test_a_refused_answer_stops_the_interview(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interactivetest.time, "sleep", lambda _s: None)
    line = TypedLine(["Install to disk (vda) [vda]: ", "Host name [xenspin]: ", "Host name [xenspin]: "])
    with pytest.raises(Timeout) as e:
        interactivetest.interview(line, "pw")  # type: ignore[arg-type]
    assert "'Host name' was asked again" in e.value.why


def test_the_cli_refuses_an_answerfile_with_interactive(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    iso = tmp_path / "x.iso"
    iso.write_bytes(b"")
    argv = ["--out", str(tmp_path), "test", "install", str(iso), "--interactive", "--answerfile", str(iso)]
    assert cli.main(argv) != 0
    assert "takes no --answerfile" in capsys.readouterr().err


def test_the_cli_names_a_missing_iso_for_the_upgrade(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--out", str(tmp_path), "test", "upgrade", str(tmp_path / "old.iso"), str(tmp_path / "new.iso")]
    assert cli.main(argv) != 0
    assert "old.iso: no such file" in capsys.readouterr().err


class Console:
    """A VM's serial console behind QEMU's socket: answers the login and runs what is typed at its prompt."""

    def __init__(self, tmp_path) -> None:
        import socket
        import threading

        self.sock_path, self.log = tmp_path / "s.sock", tmp_path / "s.log"
        self.log.write_text("host login: ")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(self.sock_path))
        self.server.listen(1)
        threading.Thread(target=self.serve, daemon=True).start()

    def say(self, text: str) -> None:
        with self.log.open("a") as f:
            f.write(text)

    def serve(self) -> None:
        import subprocess

        conn, _ = self.server.accept()
        typed = ""
        replies = iter(["Password: ", "\r\nroot@host:~# "])
        while data := conn.recv(1024):
            typed += data.decode()
            while "\r" in typed:
                entered, typed = typed.split("\r", 1)
                self.say(entered + "\r\n")
                reply = next(replies, None)
                if reply is None:  # at the prompt: run it as a shell would
                    out = subprocess.run(["sh", "-c", entered], capture_output=True, text=True).stdout
                    reply = out.replace("\n", "\r\n") + "root@host:~# "
                self.say(reply)


class Running:
    def poll(self) -> None:
        return None


def test_a_command_right_after_the_login_finds_its_prompt(tmp_path) -> None:
    """log_in waits for the shell's prompt and leaves it for SerialLine.command, which waits for one before typing."""
    from builder.installtest import SerialLine, log_in

    console = Console(tmp_path)
    line = SerialLine(console.sock_path, console.log, Running())
    try:
        steps: dict[str, float] = {}
        log_in(line, "xenspin-test", "pw", 0.0, steps)
        assert "login" in steps
        assert line.command("echo mark=$((40+2))", timeout=10) == "mark=42"
        assert line.command("echo again", timeout=10) == "again"
    finally:
        line.close()
