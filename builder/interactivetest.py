"""`xenspin test install --interactive`: the interactive installer used as a person uses it, over the
serial console: the ISO's default menu entry, each prompt read and answered by typing (slowly), the
default disk taken with Enter; then the disk boots and root logs in with the typed password.

Prompts are matched by their words (PROMPTS), in whatever order the installer asks them; one asked
twice (an answer refused) or a question not in PROMPTS stops the run with what was on the screen.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path

from . import installtest, testguest, vmdrives, vmtest
from .errors import XenspinError
from .installtest import INSTALLED, InstallResult, SerialLine, Timeout, vm

HOSTNAME = "xenspin-typed"
MENU_DEFAULT = "Install xenspin"  # the ISO menus' first entry: the interactive install on the serial console
PRESS_ENTER = "Press Enter"  # "Press Enter to install on this console (hvc0)"
DISK = "Install to disk"
CONFIRM = "Type yes"
PROMPTS = (
    DISK,
    "Host name",
    "Network (",
    "Root logs in with",
    "Root password",
    "Again",
    "Time zone",
    "Keyboard",
    CONFIRM,
)
REFUSED = ("please answer one of", "the passwords are empty or differ", "no disk to install to")
PACE = 0.15  # seconds a character: a person's typing, and a serial console that drops nothing


def answer_for(prompt: str, shown: str, password: str) -> str:
    """What a person types at prompt; shown: the prompt's line as far as it came (its [default], if any)."""
    if prompt == DISK:
        return "\r" if "[" in shown else "vda\r"  # Enter takes the only disk the installer offers
    return {"Host name": HOSTNAME, "Root password": password, "Again": password, CONFIRM: "yes"}.get(prompt, "") + "\r"


def interview(line: SerialLine, password: str) -> list[str]:
    """Answer the installer's questions until the confirmation; the prompts in the order they came."""
    asked: list[str] = []
    while True:
        hit = line.expect(*PROMPTS, *REFUSED, timeout=600)
        if hit in REFUSED:
            raise Timeout(
                PROMPTS[len(asked)] if len(asked) < len(PROMPTS) else CONFIRM, f"(the installer said {hit!r})"
            )
        if hit in asked:
            raise Timeout(f"the prompt after {asked[-1]!r}", f"({hit!r} was asked again: an answer was refused)")
        asked.append(hit)
        time.sleep(1)  # the rest of the prompt: its choices and [default]
        shown = line.text()[line.pos :].split("\n", 1)[0]
        line.send(answer_for(hit, shown, password), pace=PACE)
        if hit == CONFIRM:
            return asked


def interactive(iso: Path, firmware: vmtest.Firmware, logs: Path, *, kvm: bool = False) -> InstallResult:
    """The typed install onto a fresh disk (vda; an XSANSWER disk without answers beside it), then root's login."""
    if not iso.is_file():
        raise XenspinError(f"test install: {iso}: no such file")
    rig = installtest.Rig(firmware, logs, vmdrives.plan(""), kvm=kvm)
    files = {"guest.gz": testguest.guest_initrd(testguest.BUSYBOX.read_bytes())}  # no answerfile: never a target
    image = testguest.answer_disk(logs / f"{firmware}-interactive.answers.img", files, rig.log)
    password = secrets.token_urlsafe(12)  # typed on the serial console only
    steps: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        with vm(rig.argv_for(iso, image), logs, f"{firmware}-interactive") as line:
            line.expect(MENU_DEFAULT, timeout=300)
            time.sleep(1)
            line.keys("\r")
            line.expect(PRESS_ENTER, timeout=600)
            time.sleep(1)
            line.send("\r")
            interview(line, password)
            steps["asked"] = time.monotonic() - t0
            installtest.run_installer_done(line, INSTALLED, rig.drives.device)
            steps["installed"] = time.monotonic() - t0
            line.wait_exit(timeout=180)
        with vm(rig.argv_for(None, image), logs, f"{firmware}-typed-disk") as line:
            line.expect(f"{HOSTNAME} login:", timeout=installtest.BOOT_TIMEOUT)
            line.pos -= len("login:")  # log_in waits for it again
            installtest.log_in(line, "root", password, t0, steps)
            installtest.domain0(line, t0, steps)
    except Timeout as e:
        return InstallResult.ended(firmware, "interactive", t0, steps, logs, e)
    finally:
        rig.close()
    return InstallResult.ended(firmware, "interactive", t0, steps, logs)


def run_interactive_test(
    iso: Path,
    firmware: list[vmtest.Firmware],
    out: Path,
    *,
    kvm: bool = False,
    report: Callable[[InstallResult], None] = lambda _result: None,
) -> list[InstallResult]:
    results = []
    for fw in firmware:
        result = interactive(iso, fw, out / "test-install", kvm=kvm)
        report(result)
        results.append(result)
    return results
