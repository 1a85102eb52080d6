"""`xenspin test install`: an unattended install from the ISO onto a fresh disk, then the disk alone
boots Xen, `xl list` shows Domain-0 and a PV guest prints its marker, all over the serial line.
On a host carrying the XCP toolstack, xapi's daemons, `xe` and a XenAPI login are checked too.

The VM comes from vmtest's QEMU helpers; what is added here is a serial line both ways
(a QEMU socket chardev that also logs to a file) and the conversation held over it.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xenspin_installer.answerfile import Answerfile
from xenspin_installer.disks import VG_NAME
from xenspin_installer.install import TEST_LOGIN_ADDED
from xenspin_installer.readanswer import parse_yaml

from . import testguest, vmdrives, vmtest
from .answercheck import iso_name, validate
from .errors import XenspinError
from .iso import UnreadableIso, read_files
from .run import run, spawn, stop

INSTALL_TIMEOUT = 3600.0  # an install under TCG on a busy 2-core machine took over 20 minutes
BOOT_TIMEOUT = 1800.0
DISK_SIZE = "8G"
BANNER = "xenspin installer:"
INSTALLED = "xenspin installed on"
FAILED = "xenspin install failed"
FAILURES = (FAILED, "xenspin upgrade failed", "xenspin restore failed")
DOWN = "\x1b[B"
KERNEL_LOG = re.compile(r"^\[\s*\d+\.\d+\] ")
PROMPT = ":~# "  # a uid-0 login's shell prompt in its home directory
MENU = "Unattended install"  # an entry title of the ISO's menus (builder/iso.py MODES)


class Timeout(Exception):
    """The awaited text did not show up on the serial line."""

    def __init__(self, text: str, why: str) -> None:
        super().__init__(text)
        self.text, self.why = text, why


class SerialLine:
    """The VM's first serial port: read from the log QEMU writes, typed through its socket."""

    def __init__(self, sock_path: Path, log: Path, proc) -> None:
        self.log, self.proc = log, proc
        self.pos = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock.connect(str(sock_path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if proc.poll() is not None:
                    raise XenspinError(
                        f"test install: QEMU exited with status {proc.returncode} at once; see {log.parent}"
                    ) from None
                if time.monotonic() > deadline:
                    raise XenspinError(f"test install: QEMU's serial socket {sock_path} did not open") from None
                time.sleep(0.2)
        # QEMU also sends the output down the socket; drain it so the guest never blocks.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        with contextlib.suppress(OSError):
            while self.sock.recv(65536):
                pass

    def text(self) -> str:
        return self.log.read_bytes().decode(errors="replace")

    def expect(self, *texts: str, timeout: float, poll: float = 0.5) -> str:
        """Wait for any of texts after what was already matched; returns the one seen."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.text()
            hits = [(seen.find(t, self.pos), t) for t in texts if seen.find(t, self.pos) >= 0]
            if hits:
                at, hit = min(hits)
                self.pos = at + len(hit)
                return hit
            if self.proc.poll() is not None:
                raise Timeout(texts[0], f"QEMU exited with status {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise Timeout(texts[0], f"within {timeout:.0f} s")
            time.sleep(poll)

    def send(self, text: str, pace: float = 0.05) -> None:
        """Type text, a character at a time (serial consoles drop what comes too fast)."""
        for ch in text:
            self.sock.sendall(ch.encode())
            time.sleep(pace)

    def keys(self, *keys: str, pace: float = 0.5) -> None:
        """Press keys, each (an escape sequence too) sent whole: menus read a sequence only when it comes at once."""
        for key in keys:
            self.sock.sendall(key.encode())
            time.sleep(pace)

    def wait_exit(self, timeout: float) -> None:
        """Wait for the VM to power off by itself (QEMU runs with -no-reboot)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise Timeout("power-off", f"within {timeout:.0f} s of the install's end")
            time.sleep(0.5)

    def command(self, cmd: str, timeout: float) -> str:
        """Run a shell command at the logged-in prompt; its output (the markers are made by the
        shell, so the echo of what was typed never matches them)."""
        self.expect(PROMPT, timeout=300)  # what is typed before the prompt is lost (a guest's console just closed)
        self.send(f"echo XS-BEGIN-$((6*7)); {cmd}; echo XS-END-$((6*7))\r")
        self.expect("XS-BEGIN-42", timeout=60)
        start = self.pos
        self.expect("XS-END-42", timeout=timeout)
        out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.text()[start : self.pos - len("XS-END-42")])
        # the console also carries the kernel's messages: "[  259.077482] io scheduler bfq registered"
        lines = [ln for ln in out.replace("\r", "").split("\n") if not KERNEL_LOG.match(ln)]
        return "\n".join(lines).strip()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass
class InstallResult:
    """How one firmware's install and boot went."""

    firmware: str
    passed: bool
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)
    missing: str | None = None
    why: str = ""
    logs: Path | None = None
    kind: str = "install"  # install, upgrade (`test upgrade`), interactive (`test install --interactive`)

    @classmethod
    def ended(
        cls, firmware: str, kind: str, t0: float, steps: dict[str, float], logs: Path, failed: Timeout | None = None
    ) -> InstallResult:
        """The result of a run that started at t0 and passed, or stopped at failed."""
        seconds, rounded = round(time.monotonic() - t0, 1), _rounded(steps)
        if failed is None:
            return cls(firmware, True, seconds, rounded, logs=logs, kind=kind)
        return cls(firmware, False, seconds, rounded, failed.text, failed.why, logs, kind)

    def line(self) -> str:
        steps = ", ".join(f"{k} at {v:.0f} s" for k, v in self.steps.items())
        if self.passed:
            return f"PASS {self.kind} {self.firmware}: {steps} (total {self.seconds:.0f} s; logs: {self.logs})"
        return f"FAIL {self.kind} {self.firmware}: no {self.missing!r} {self.why} after {self.seconds:.0f} s ({steps or 'nothing'}; logs: {self.logs})"


@contextlib.contextmanager
def vm(argv_for: Callable[[Path, Path], list[str]], logs: Path, name: str) -> Iterator[SerialLine]:
    """Run QEMU with a two-way serial line; stopped (the whole process group) on the way out."""
    serial_log, sock = logs / f"{name}.serial.log", logs / f"{name}.serial.sock"
    serial_log.write_bytes(b"")
    sock.unlink(missing_ok=True)
    argv = argv_for(serial_log, sock)
    proc = spawn(argv, what=f"test install {name}", log_path=logs / f"{name}.qemu.log")
    line = None
    try:
        line = SerialLine(sock, serial_log, proc)
        yield line
    finally:
        if line is not None:
            line.close()
        stop(proc)
        sock.unlink(missing_ok=True)


def menu_downs(image: Path) -> int:
    """How many entries come before 'unattended-serial' in the ISO's menu (ISOLINUX and GRUB list them alike)."""
    try:
        cfg = read_files(image, ["isolinux/isolinux.cfg"]).get("isolinux/isolinux.cfg", b"")
    except UnreadableIso:  # not an ISO 9660 image (QEMU says what it makes of it)
        cfg = b""
    labels = re.findall(r"^label (\S+)", cfg.decode(errors="replace"), re.M)
    # an ISO without ISOLINUX (UEFI only): its GRUB menu lists the serial entries first, unattended second
    return labels.index("unattended-serial") if "unattended-serial" in labels else 1


def log_in(line: SerialLine, user: str, password: str, t0: float, steps: dict[str, float], step: str = "login") -> None:
    """Wait for the login prompt and log in on the serial console."""
    line.expect("login:", timeout=BOOT_TIMEOUT)
    steps[step] = time.monotonic() - t0
    line.send(user + "\r")
    line.expect("Password:", timeout=60)
    line.send(password + "\r")
    line.expect(PROMPT, timeout=120)
    line.pos = max(0, line.pos - len(PROMPT))  # left to be awaited again: SerialLine.command waits for a prompt


def domain0(line: SerialLine, t0: float, steps: dict[str, float], step: str = "Domain-0") -> None:
    line.send("xl list\r")
    line.expect("Domain-0", timeout=120)
    steps[step] = time.monotonic() - t0


def login_and_check(
    line: SerialLine, login: testguest.Login, t0: float, steps: dict[str, float], suffix: str = ""
) -> None:
    """Log in with the test's own login (uid 0; root is as the answerfile made it), then Domain-0 and a guest.
    suffix: added to the steps' names (a run with several boots)."""
    log_in(line, login.user, login.password, t0, steps, "login" + suffix)
    domain0(line, t0, steps, "Domain-0" + suffix)
    line.send(
        "mount -o ro LABEL=XSANSWER /mnt && K=$(ls /boot/vmlinuz-* | tail -n 1) && "
        'xl create -c /dev/null \'name="guest"\' "kernel=\\"$K\\"" \'ramdisk="/mnt/guest.gz"\' '
        "'memory=256' 'extra=\"console=hvc0\"'\r"
    )
    line.expect(testguest.GUEST_MARKER, timeout=300)
    steps["guest" + suffix] = time.monotonic() - t0


# The XCP toolstack's daemons on a host that carries it (spins/xcp.yaml), in their start order.
XCP_DAEMONS = ("message-switch", "forkexecd", "v6d", "squeezed", "xcp-networkd", "xenopsd-xc", "xcp-rrdd", "xapi")
XCP_FIRSTBOOT = "/var/lib/xenspin/xcp-firstboot.done"
XCP_TIMEOUT = 1800.0  # xapi's first start, network-init and the SR under TCG


def check_toolstack(line: SerialLine, t0: float, steps: dict[str, float], root_password: str | None) -> None:
    """On a host with xapi: its daemons active, `xe` answering for the host, the control domain, the
    local SR (a disk made on it and removed) and the management network, and (root's password known)
    a XenAPI login over HTTPS."""
    # the kernel's messages on the console would land amid the answers
    quiet = "dmesg -n 1; test -x /opt/xensource/bin/xe && echo carried || echo absent"
    if line.command(quiet, timeout=60) != "carried":
        return
    wait = f"for i in $(seq {int(XCP_TIMEOUT)}); do [ -e {XCP_FIRSTBOOT} ] && break; sleep 1; done"
    states = line.command(f"{wait}; systemctl is-active {' '.join(XCP_DAEMONS)} | paste -sd' '", XCP_TIMEOUT + 60)
    if states.split() != ["active"] * len(XCP_DAEMONS):
        raise Timeout("xapi active", f"(systemctl is-active {' '.join(XCP_DAEMONS)}: {states!r})")
    steps["xapi"] = time.monotonic() - t0
    asks = {
        "xe host-list": ("xe host-list params=name-label --minimal", r"\S"),
        "xe vm-list": ("xe vm-list is-control-domain=true params=name-label --minimal", r"^Control domain"),
        "xe sr-list": ("xe sr-list type=lvm params=name-label,physical-size --minimal", r"^Local storage"),
        "xe network-list": ("xe network-list params=bridge --minimal", r"\b(xenbr\d+|br\w+)\b"),
        # a 16 MiB disk on the local SR (sm makes a VHD volume with blktap's vhd-util), then gone again
        "xe vdi-create": (
            "SR=$(xe sr-list type=lvm params=uuid --minimal) && "
            "V=$(xe vdi-create sr-uuid=$SR name-label=xenspin-test virtual-size=16MiB type=user) && "
            "xe vdi-param-get uuid=$V param-name=virtual-size && xe vdi-destroy uuid=$V",
            r"^16777216$",
        ),
    }
    for what, (cmd, want) in asks.items():
        out = line.command(cmd, timeout=300)
        if not re.search(want, out, re.M) or "rror" in out:
            raise Timeout(what, f"(answered {out!r})")
    steps["xe"] = time.monotonic() - t0
    if root_password is None:
        return
    login = (
        'python3 -c \'import XenAPI; s = XenAPI.Session("https://localhost", ignore_ssl=True); '
        f's.xenapi.login_with_password("root", "{root_password}", "1.0", "xenspin-test"); '
        'print("XenAPI", s.xenapi.pool.get_all()[0].startswith("OpaqueRef:")); s.xenapi.session.logout()\''
    )
    out = line.command(login, timeout=300)
    if "XenAPI True" not in out:
        raise Timeout("XenAPI login", f"(over HTTPS as root: {out[-300:]!r})")
    steps["XenAPI"] = time.monotonic() - t0


def two_way_serial(argv: list[str], log: Path, sock: Path) -> list[str]:
    """vmtest's command line with its first serial port on a socket we type into, still logged to log."""
    at = argv.index("-serial")
    chardev = f"socket,id=ser0,path={sock},server=on,wait=off,logfile={log}"
    return [*argv[:at], "-chardev", chardev, "-serial", "chardev:ser0", *argv[at + 2 :]]


# One NIC, as a host has: QEMU's user network with its DHCP server, restricted (nothing outside the VM).
NIC = "user,model=virtio-net-pci,restrict=on"
FILLER_SIZE = "64M"  # a blank disk that only holds a name (vmdrives: the letters before the target's)


@dataclass(frozen=True)
class Answers:
    """The answerfile handed to the VM: its name on the answer disk, its bytes as given, and the disk it names."""

    name: str
    data: bytes
    disk: str = ""  # the answerfile's disk: ("" for the only disk)
    answer: Answerfile | None = None  # the answers as the installer reads them (None: not ours to read)


def answers_for(path: Path | None) -> Answers:
    """The given answerfile (checked, and passed on byte for byte), or the default.

    Any root login will do (a hashed password, SSH keys only): the test logs in with a
    login of its own (testguest.Login), so it needs nothing from the answerfile.
    """
    if path is None:
        text = testguest.default_answerfile()
        return Answers("answerfile.yaml", text.encode(), "", parse_yaml(text, "answerfile.yaml"))
    data = path.read_bytes()
    answer, _warnings = validate(path)
    return Answers(Path(iso_name(path)).name, data, answer.disk, answer)


def answer_disk(logs: Path, name: str, answers: Answers, log: Path) -> tuple[Path, testguest.Login]:
    """An XSANSWER disk: the answerfile, the test login's hash (a fresh password) and the guest initrd."""
    login = testguest.throwaway_login()
    files = {
        answers.name: answers.data,
        **testguest.login_file(login),
        "guest.gz": testguest.guest_initrd(testguest.BUSYBOX.read_bytes()),
    }
    return testguest.answer_disk(logs / f"{name}.answers.img", files, log), login


class Rig:
    """One firmware's VM across its boots: the machine, the UEFI variables, the target disk, the blank
    fillers and the drive plan that gives the target the answerfile's name."""

    def __init__(
        self,
        firmware: vmtest.Firmware,
        logs: Path,
        drives: vmdrives.DrivePlan,
        *,
        kvm: bool = False,
        what: str = "test install",
    ) -> None:
        self.firmware, self.logs, self.drives, self.what = firmware, logs, drives, what
        logs.mkdir(parents=True, exist_ok=True)
        self.log = logs / f"{firmware}.harness.log"
        self.log.write_text("")
        self.disk = logs / f"{firmware}.disk.qcow2"
        self.disk.unlink(missing_ok=True)
        self.files: dict[str, Path] = {"target": self.disk}
        run(
            ["qemu-img", "create", "-q", "-f", "qcow2", self.disk, DISK_SIZE],
            what=f"{what}: make the disk",
            log_path=self.log,
        )
        for d in drives.by_role("filler"):
            self.files[d.id] = logs / f"{firmware}.{d.id}.qcow2"
            run(
                ["qemu-img", "create", "-q", "-f", "qcow2", self.files[d.id], FILLER_SIZE],
                what=f"{what}: make a blank disk",
                log_path=self.log,
            )
        self.m = vmtest.Machine(firmware, kvm=kvm)
        self.ovmf = self.vars_copy = None
        if firmware == "uefi":
            self.ovmf = vmtest.find_ovmf()
            if self.ovmf.vars is not None:
                self.vars_copy = logs / f"{firmware}.OVMF_VARS.fd"
                shutil.copyfile(self.ovmf.vars, self.vars_copy)

    def argv_for(self, iso: Path | None, answers: Path) -> Callable[[Path, Path], list[str]]:
        """The QEMU command line of a boot from iso (None: from the disk), with the answer disk answers."""

        def argv(serial_log: Path, sock: Path) -> list[str]:
            base = vmtest.qemu_argv(
                iso.absolute() if iso else None, self.m, serial_log, self.ovmf, self.vars_copy, nic=NIC
            )
            files = {**self.files, "answers": answers}
            return two_way_serial(base, serial_log, sock) + self.drives.argv(files, boot_disk=iso is None)

        return argv

    def close(self) -> None:
        if self.vars_copy is not None:
            self.vars_copy.unlink(missing_ok=True)


def run_installer(line: SerialLine, iso: Path, done: str, device: str) -> None:
    """Pick the unattended entry in the ISO's menu; wait for the installer to say done on device (the VM
    then stops: the installer powers off or reboots, and QEMU runs with -no-reboot)."""
    line.expect(MENU, timeout=300)
    time.sleep(1)
    line.keys(*[DOWN] * menu_downs(iso), "\r")
    line.expect(BANNER, timeout=600)
    run_installer_done(line, done, device)


def run_installer_done(line: SerialLine, done: str, device: str) -> None:
    """Wait for the installer's last word: done on device (else a Timeout naming what it said)."""
    if line.expect(done, *FAILURES, timeout=INSTALL_TIMEOUT) != done:
        raise Timeout(done, "(the installer failed; see the serial log)")
    said = re.compile(re.escape(done) + r" (\S+?)[;,(\s]").search(line.text(), max(0, line.pos - len(done)))
    on = said[1] if said else "?"
    if on != device:
        raise Timeout(f"{done} {device}", f"(the installer said {done} {on}: the VM's drives did not give that name)")


def run_install_test(
    iso: Path,
    firmware: Sequence[vmtest.Firmware],
    out: Path,
    answerfile: Path | None = None,
    *,
    kvm: bool = False,
    report: Callable[[InstallResult], None] = lambda _result: None,
) -> list[InstallResult]:
    """`xenspin test install`: one install and boot per firmware, logs in out/test-install; report hears each."""
    results = []
    for fw in firmware:
        result = install(iso, fw, out / "test-install", answerfile, kvm=kvm)
        report(result)
        results.append(result)
    return results


def install(
    iso: Path, firmware: vmtest.Firmware, logs: Path, answerfile: Path | None = None, *, kvm: bool = False
) -> InstallResult:
    """Install from iso onto a fresh qcow2, then boot the disk alone and start a guest; one InstallResult."""
    if not iso.is_file():
        raise XenspinError(f"test install: {iso}: no such file")
    answers = answers_for(answerfile)
    rig = Rig(firmware, logs, vmdrives.plan(answers.disk), kvm=kvm)
    image, login = answer_disk(logs, firmware, answers, rig.log)
    steps: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        with vm(rig.argv_for(iso, image), logs, f"{firmware}-install") as line:
            run_installer(line, iso, INSTALLED, rig.drives.device)
            if TEST_LOGIN_ADDED not in line.text():
                raise Timeout(TEST_LOGIN_ADDED, "from the installer: it predates the test's own login; rebuild the ISO")
            steps["installed"] = time.monotonic() - t0
            line.wait_exit(timeout=180)
        with vm(rig.argv_for(None, image), logs, f"{firmware}-disk") as line:
            login_and_check(line, login, t0, steps)
            # root's password is the test's own only with the test's own answers
            check_toolstack(line, t0, steps, testguest.TEST_PASSWORD if answerfile is None else None)
            check_settings(line, answers.answer)
    except Timeout as e:
        return InstallResult.ended(firmware, "install", t0, steps, logs, e)
    finally:
        rig.close()
    return InstallResult.ended(firmware, "install", t0, steps, logs)


# --- what the answers asked for, read back on the installed host --------------------------------

SETTINGS = {
    "hostname": "cat /etc/hostname",
    "timezone": "cat /etc/timezone",
    "addresses": "ip -4 -o addr; ip -4 route show default",
    "dns": "cat /etc/resolv.conf /etc/systemd/network/*.network",
    "ssh-keys": "cat /root/.ssh/authorized_keys",
    "keymap": "cat /etc/default/keyboard",
    "vgs": "vgs --noheadings -o vg_name",
    "ntp": "cat /etc/systemd/timesyncd.conf.d/*.conf",
}
SECTION = "XS-SECTION"


def settings_command() -> str:
    """One shell line printing each of SETTINGS after a line of its own (errors dropped: a missing file is
    empty). Short: it is typed a character at a time."""
    body = "; ".join(f"S {key}; {cmd}" for key, cmd in SETTINGS.items())
    return f"S() {{ echo {SECTION}-$1; }}; {{ {body}; }} 2>/dev/null"


def split_settings(out: str) -> dict[str, str]:
    """settings_command's output by key."""
    found: dict[str, str] = {}
    key = None
    for ln in out.splitlines():
        if ln.startswith(SECTION + "-"):
            key = ln.removeprefix(SECTION + "-").strip()
            found[key] = ""
        elif key is not None:
            found[key] += ln + "\n"
    return found


def _strings(value: object) -> list[str]:
    """Every string in value (a list, a dataclass, a string): the NTP servers, however the model holds them."""
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    if hasattr(value, "__dataclass_fields__"):
        return [s for f in value.__dataclass_fields__ for s in _strings(getattr(value, f))]
    return []


def settings_problems(answer: Answerfile, found: dict[str, str]) -> list[str]:
    """What the installed host shows against what the answers asked for (pure); one phrase per difference."""
    problems = []

    def want(key: str, ok: bool, expected: str) -> None:
        if not ok:
            problems.append(f"{key}: expected {expected}, the host has {found.get(key, '').strip()!r}")

    want("hostname", found.get("hostname", "").strip() == answer.hostname, answer.hostname)
    if answer.network.mode == "static":
        addrs = found.get("addresses", "")
        want("addresses", f"inet {answer.network.address} " in addrs, answer.network.address)
        if answer.network.gateway:
            want(
                "addresses", f"default via {answer.network.gateway} " in addrs, f"default via {answer.network.gateway}"
            )
    for server in answer.network.dns:
        want("dns", re.search(rf"(nameserver |DNS=){re.escape(server)}\b", found.get("dns", "")) is not None, server)
    for key in answer.root.ssh_keys:
        want("ssh-keys", key.strip() in found.get("ssh-keys", ""), key.split()[0] + " ...")
    want("keymap", f'XKBLAYOUT="{answer.keymap}"' in found.get("keymap", ""), f'XKBLAYOUT="{answer.keymap}"')
    if answer.local_storage:
        want("vgs", VG_NAME in found.get("vgs", "").split(), f"the volume group {VG_NAME}")
    ntp = found.get("ntp", "")
    for server in _strings(getattr(answer, "ntp", None)) if ntp.strip() else []:  # only once the installer writes it
        want("ntp", server in ntp, server)
    return problems


def check_settings(line: SerialLine, answer: Answerfile | None) -> None:
    """The installed host's name, address, name servers, root's keys, keymap, volume group and NTP servers
    as the answers asked (a Timeout naming the first difference)."""
    if answer is None:
        return
    problems = settings_problems(answer, split_settings(line.command(settings_command(), timeout=120)))
    if problems:
        raise Timeout(problems[0].split(":")[0], f"as the answers asked ({'; '.join(problems)})")


def _rounded(steps: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 1) for k, v in steps.items()}
