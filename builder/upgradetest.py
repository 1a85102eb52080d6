"""`xenspin test upgrade OLD.iso NEW.iso`: install OLD, change the host, upgrade it with NEW, check what
survived and that NEW runs, then restore OLD and check that it runs again. One VM, one disk, six boots,
all over the serial line with installtest's harness.

The changes stand for what an upgrade must keep: a file in /etc and a logical volume on the local
storage group (a guest's disk) holding data. Each boot from an ISO has an answer disk of its own:
the install's answers (the given answerfile or the test's own), then `mode: upgrade` and
`mode: restore` naming the same disk, each with a fresh test login. The installer sets the test
login of the upgrade's answer disk in the upgraded root; a restore changes nothing in the restored
root, so OLD's install login logs in there again.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from xenspin_installer.disks import VG_NAME

from . import installtest, vmdrives, vmtest
from .errors import XenspinError
from .installtest import INSTALLED, Answers, InstallResult, Timeout, vm
from .run import run

UPGRADED = "xenspin upgraded on"
RESTORED = "xenspin restored on"
MARK = "/etc/xenspin-upgrade-test"
LV = "xenspin-upgrade-test"
POWEROFF_TIMEOUT = 600.0


def iso_version(iso: Path) -> str:
    """VERSION of /etc/os-release in the ISO's root filesystem image, read in place (no copy of the squashfs)."""
    where = run(
        ["xorriso", "-indev", iso, "-find", "/live/filesystem.squashfs", "-exec", "report_lba", "--"],
        what=f"test upgrade: find the root filesystem image in {iso.name}",
        capture=True,
    )
    found = re.search(rb"File data lba:\s*\d+\s*,\s*(\d+)\s*,", where.stdout + where.stderr)
    if found is None:
        raise XenspinError(f"test upgrade: {iso}: no /live/filesystem.squashfs (not a xenspin ISO)")
    release = run(
        ["unsquashfs", "-o", str(int(found[1]) * 2048), "-cat", iso, "etc/os-release"],
        what=f"test upgrade: read os-release in {iso.name}",
        capture=True,
    )
    version = os_release_version(release.stdout.decode(errors="replace"))
    if not version:
        raise XenspinError(f"test upgrade: {iso}: its /etc/os-release gives no VERSION")
    return version


def os_release_version(text: str) -> str:
    for ln in text.splitlines():
        key, _, value = ln.partition("=")
        if key.strip() == "VERSION":
            return value.strip().strip('"')
    return ""


def mode_answers(mode: str, disk: str) -> Answers:
    """The answers of an upgrade or a restore: the mode and the disk (root's login is the installed one)."""
    return Answers("answerfile.yaml", f"# xenspin test upgrade\nmode: {mode}\ndisk: {disk}\n".encode(), disk)


def change_command(token: str) -> str:
    """The host changes an upgrade must keep: a file in /etc and a logical volume holding data."""
    return (
        f"echo {token} > {MARK} && lvcreate -q -y -L 8M -n {LV} {VG_NAME} >/dev/null && "
        f"printf %s {token} | dd of=/dev/{VG_NAME}/{LV} conv=fsync status=none && sync && echo changes-made"
    )


def look_command(token: str) -> str:
    """What the host holds of the changes, and its VERSION."""
    return (
        f"vgchange -q -ay {VG_NAME} >/dev/null; echo mark=$(cat {MARK}); "
        f"echo lv=$(head -c {len(token)} /dev/{VG_NAME}/{LV}); . /etc/os-release; echo version=$VERSION"
    )


def look_problems(out: str, token: str, version: str, *, lv: bool = True) -> list[str]:
    """What look_command showed against what was written and the VERSION expected (pure)."""
    seen = dict(re.findall(r"^(mark|lv|version)=(.*)$", out, re.M))
    problems = []
    if seen.get("mark", "").strip() != token:
        problems.append(f"{MARK}: expected {token}, found {seen.get('mark', '').strip()!r}")
    if lv and seen.get("lv", "").strip() != token:
        problems.append(f"/dev/{VG_NAME}/{LV}: expected {token}, found {seen.get('lv', '').strip()!r}")
    if seen.get("version", "").strip() != version:
        problems.append(f"VERSION: expected {version}, found {seen.get('version', '').strip()!r}")
    return problems


def run_upgrade_test(
    old: Path,
    new: Path,
    firmware: vmtest.Firmware,
    out: Path,
    answerfile: Path | None = None,
    *,
    kvm: bool = False,
    report: Callable[[InstallResult], None] = lambda _result: None,
) -> list[InstallResult]:
    """`xenspin test upgrade`: logs in out/test-upgrade; report hears the result."""
    result = upgrade(old, new, firmware, out / "test-upgrade", answerfile, kvm=kvm)
    report(result)
    return [result]


def upgrade(
    old: Path, new: Path, firmware: vmtest.Firmware, logs: Path, answerfile: Path | None = None, *, kvm: bool = False
) -> InstallResult:
    for iso in (old, new):
        if not iso.is_file():
            raise XenspinError(f"test upgrade: {iso}: no such file")
    answers = installtest.answers_for(answerfile)
    rig = installtest.Rig(firmware, logs, vmdrives.plan(answers.disk), kvm=kvm, what="test upgrade")
    old_version, new_version = iso_version(old), iso_version(new)
    device, disk = rig.drives.device, answers.disk or rig.drives.device
    installed, old_login = installtest.answer_disk(logs, f"{firmware}-install", answers, rig.log)
    upgraded, new_login = installtest.answer_disk(logs, f"{firmware}-upgrade", mode_answers("upgrade", disk), rig.log)
    restored, _ = installtest.answer_disk(logs, f"{firmware}-restore", mode_answers("restore", disk), rig.log)
    token = secrets.token_hex(8)
    steps: dict[str, float] = {}
    t0 = time.monotonic()

    def check(line: installtest.SerialLine, what: str, version: str, *, lv: bool = True) -> None:
        problems = look_problems(line.command(look_command(token), timeout=120), token, version, lv=lv)
        if problems:
            raise Timeout(what, f"({'; '.join(problems)})")

    try:
        with vm(rig.argv_for(old, installed), logs, f"{firmware}-install") as line:
            installtest.run_installer(line, old, INSTALLED, device)
            steps["installed"] = time.monotonic() - t0
            line.wait_exit(timeout=180)
        with vm(rig.argv_for(None, installed), logs, f"{firmware}-old") as line:
            installtest.log_in(line, old_login.user, old_login.password, t0, steps)
            line.command("dmesg -n 1", timeout=60)  # the kernel's messages would land amid the answers
            installtest.check_settings(line, answers.answer)
            if "changes-made" not in line.command(change_command(token), timeout=300):
                raise Timeout("changes-made", f"(writing {MARK} and the logical volume {VG_NAME}/{LV})")
            steps["changed"] = time.monotonic() - t0
            line.send("poweroff\r")
            line.wait_exit(timeout=POWEROFF_TIMEOUT)
        with vm(rig.argv_for(new, upgraded), logs, f"{firmware}-upgrade") as line:
            installtest.run_installer(line, new, UPGRADED, device)
            steps["upgraded"] = time.monotonic() - t0
            line.wait_exit(timeout=180)
        with vm(rig.argv_for(None, upgraded), logs, f"{firmware}-upgraded") as line:
            installtest.login_and_check(line, new_login, t0, steps, " (new)")
            line.command("dmesg -n 1", timeout=60)
            check(line, "the changes after the upgrade", new_version)
            steps["kept"] = time.monotonic() - t0
            line.send("poweroff\r")
            line.wait_exit(timeout=POWEROFF_TIMEOUT)
        with vm(rig.argv_for(new, restored), logs, f"{firmware}-restore") as line:
            installtest.run_installer(line, new, RESTORED, device)
            steps["restored"] = time.monotonic() - t0
            line.wait_exit(timeout=180)
        with vm(rig.argv_for(None, installed), logs, f"{firmware}-restored") as line:
            installtest.log_in(line, old_login.user, old_login.password, t0, steps, "login (old)")
            installtest.domain0(line, t0, steps, "Domain-0 (old)")
            line.command("dmesg -n 1", timeout=60)
            check(line, "OLD after the restore", old_version)
    except Timeout as e:
        return InstallResult.ended(firmware, "upgrade", t0, steps, logs, e)
    finally:
        rig.close()
    return InstallResult.ended(firmware, "upgrade", t0, steps, logs)
