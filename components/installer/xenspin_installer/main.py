"""The installer's entry: what mode the kernel command line asks for, where answers come from, then install.

python3 -m xenspin_installer [--mode install|unattended|rescue] [--answerfile F] [--disk D]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

from . import InstallerError
from .answerfile import Answerfile, redacted
from .disks import choose, choose_installed
from .install import LIVE_MEDIUM, SQUASHFS, Installer, decide
from .probe import probe
from .readanswer import load
from .run import Runner
from .sources import Found, cmdline_args, find, read_test_login
from .ui import Console, interview

LOG = Path("/var/log/xenspin-install.log")
LOCK = Path("/run/xenspin-installer.lock")
FAILED = "xenspin install failed"


def distribution(os_release: Path = Path("/etc/os-release")) -> str:
    """'NAME VERSION' of the distribution this installer belongs to."""
    info = {}
    try:
        for line in os_release.read_text().splitlines():
            k, _, v = line.partition("=")
            info[k] = v.strip().strip('"')
    except OSError:
        pass
    return info.get("PRETTY_NAME") or " ".join(x for x in (info.get("NAME"), info.get("VERSION")) if x) or "xenspin"


def booted_on_serial(cmdline: dict[str, str]) -> bool:
    """Whether dom0's main console (the last console=) is a serial one: the ISO's serial menu entries.

    An install with no serial-console answer (XML answerfiles have none) is set up the way it was booted.
    """
    return cmdline.get("console", "").startswith(("hvc", "ttyS"))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xenspin-installer", description="Install a xenspin Xen host onto a disk.")
    p.add_argument(
        "--mode", choices=["install", "unattended", "rescue"], help="default: xenspin.mode= on the kernel command line"
    )
    p.add_argument("--answerfile", type=Path, help="answerfile (YAML or XenServer XML); implies unattended")
    p.add_argument("--disk", help="target disk, overriding the answerfile's")
    p.add_argument("--squashfs", type=Path, default=SQUASHFS, help="root filesystem image to install")
    p.add_argument("--medium", type=Path, default=LIVE_MEDIUM, help="the install medium (file: URLs, baked answerfile)")
    p.add_argument("--log", type=Path, default=LOG, help="install log")
    p.add_argument("--cmdline", type=Path, default=Path("/proc/cmdline"), help=argparse.SUPPRESS)
    p.add_argument("--console", help="the tty this instance runs on (from the systemd unit)")
    p.add_argument("--check", action="store_true", help="validate the answerfile and plan; write nothing")
    p.add_argument(
        "--test-login",
        type=Path,
        metavar="FILE",
        help="with --answerfile: add the test login whose password hash FILE holds (as an XSANSWER disk's xenspin-test-login)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except InstallerError as e:
        print(f"xenspin installer: {e}", file=sys.stderr, flush=True)
        if args.console:  # on the live system's console: say so plainly (the other consoles follow the log)
            with contextlib.suppress(OSError), open(args.log, "a") as f:
                f.write(f"xenspin installer: {e}\n{FAILED}\n")
            print(f"{FAILED}; the log is {args.log}; here is a shell", flush=True)
            os.execv("/bin/bash", ["/bin/bash", "--login"])
        return e.exit_code
    except KeyboardInterrupt:
        print("xenspin installer: interrupted", file=sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    cmdline = cmdline_args(args.cmdline.read_text()) if args.cmdline.is_file() else {}
    mode = args.mode or cmdline.get("xenspin.mode", "install")
    if args.answerfile:
        mode = "unattended"
    print(f"xenspin installer: {distribution()}", flush=True)
    if mode == "rescue":
        print("rescue mode: a root shell; the installer is `python3 -m xenspin_installer`", flush=True)
        os.execv("/bin/bash", ["/bin/bash", "--login"])
    interactive = not (mode == "unattended" or cmdline.get("answerfile"))
    if args.console:
        if interactive:  # the user picks the console by pressing Enter on it
            input(f"Press Enter to install on this console ({args.console}) ")
        take_console(args.console, args.log, None if interactive else main_console(cmdline))
    runner = Runner(args.log, dry_run=args.check)
    runner.log(f"xenspin installer started on {time.strftime('%Y-%m-%d %H:%M:%S')} in mode {mode}")
    answer, login = (None, None) if interactive else unattended_answers(args, cmdline, runner)
    disks = probe(runner)
    if answer is None:
        answer = interview(Console(sys.stdin, sys.stdout), disks)
        if answer is None:
            runner.say("nothing was written; the installer stops")
            return 1
    if args.disk:
        answer.disk = args.disk
    if answer.serial_console is None and answer.mode == "install":  # an upgrade keeps the host's
        answer.serial_console = booted_on_serial(cmdline)
    if answer.mode == "install":
        chosen = choose(disks, answer.disk, interactive=interactive, resolve=os.path.realpath).disk
    else:
        chosen = choose_installed(disks, answer.disk, resolve=os.path.realpath)
    assert chosen is not None  # an interview always names the disk
    layout = decide(answer, chosen)
    runner.log(f"answers: {redacted(answer)}")
    if args.check:
        what = "install to" if answer.mode == "install" else answer.mode
        runner.say(f"would {what} {chosen.describe()} (nothing written)")
        return 0
    done = Installer(answer, layout, runner, args.squashfs, medium=args.medium, test_login=login).run()
    runner.say(f"{done}; {answer.finish} now")
    finish(answer, args)
    return 0


def unattended_answers(
    args: argparse.Namespace, cmdline: dict[str, str], runner: Runner
) -> tuple[Answerfile, str | None]:
    """The answers, and the password hash of a test login when the answers' source brings one."""
    if args.answerfile:
        login = None
        if args.test_login:
            login = read_test_login(args.test_login.parent, args.test_login.name, "--test-login")
        found = Found(args.answerfile, str(args.answerfile), login)
    else:
        found = find(cmdline, args.medium, runner)
        if found is None:
            raise InstallerError(
                "unattended install: no answerfile (answerfile= on the kernel command line, a disk labelled XSANSWER, or one built into the ISO)"
            )
    runner.say(f"answerfile from {found.origin}")
    answer, warnings = load(found.path)
    for w in warnings:
        runner.say(w)
    return answer, found.test_login


def main_console(cmdline: dict[str, str]) -> str:
    """The tty of dom0's main console (the last console=): where an unattended install reports."""
    name = cmdline.get("console", "tty0").split(",")[0]
    return "tty1" if name == "tty0" else name


def take_console(console: str, log: Path, owner: str | None) -> None:
    """One installer for several consoles; the others follow its log.

    owner: the console that runs an unattended install (the main one); None (interactive,
    or the main console has no installer on it): the first to take the lock.
    """
    if owner and owner != console and Path(f"/dev/{owner}").exists():
        follow(log)
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        follow(log)
    os.write(fd, console.encode())


def follow(log: Path) -> NoReturn:
    print(f"the installer runs on another console; following its log {log}", flush=True)
    os.execvp("tail", ["tail", "-F", "-n", "+1", str(log)])


def finish(answer: Answerfile, args: argparse.Namespace) -> None:
    if args.console:  # run by the unit on the live system; otherwise (tests, by hand) leave the machine be
        os.execvp("systemctl", ["systemctl", answer.finish])
