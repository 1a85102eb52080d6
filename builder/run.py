"""The one place that starts processes: logs each command, keeps its output, turns failure into one error."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from .errors import XenspinError

log = logging.getLogger("xenspin.run")

TAIL_LINES = 20
# The user a build step runs as inside its sandbox: no capabilities, no way back to root.
SANDBOX_UID = 1000
# Every child dies with the thread that started it (kill -9 of xenspin included), so a
# killed run leaves nothing running; children stay in xenspin's process group, so Ctrl-C
# and a kill of the group reach them too. A command prefix, not a preexec_fn: those are
# unsafe with threads (-j runs builds in threads).
DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL", "--"]
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Who runs untrusted code when xenspin itself runs as root: this system account (made by
# `xenspin setup`, with subordinate ids for mmdebstrap's user namespace), never root.
BUILD_USER = "xenspin"


class CommandError(XenspinError):
    """A command failed; the message names what it was for, its status and where its log is."""

    def __init__(self, what: str, cmd: Sequence[str], status: int, log_path: Path | None, tail: str) -> None:
        self.what = what
        self.cmd = list(cmd)
        self.status = status
        self.log_path = log_path
        self.tail = tail
        where = f"; log: {log_path}" if log_path else ""
        if status < 0:  # killed: by the OOM killer, a timeout, someone's kill
            msg = f"{what}: was killed by signal {_signal_name(-status)}{where}"
        else:
            msg = f"{what}: failed with exit status {status}{where}"
        # The log's "$ command" lines are for the log; the message shows what the command said.
        said = [line for line in tail.rstrip().splitlines() if not line.startswith("$ ")]
        if said:
            msg += "\n" + "\n".join("  | " + line for line in said[-TAIL_LINES:])
        super().__init__(msg)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def quote(cmd: Sequence[str | os.PathLike]) -> str:
    return " ".join(shlex.quote(str(c)) for c in cmd)


def run(
    cmd: Sequence[str | os.PathLike],
    *,
    what: str,
    log_path: Path | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str | None] | None = None,
    input: bytes | None = None,
    capture: bool = False,
    stdout: IO[bytes] | None = None,
    check: bool = True,
    timeout: float | None = None,
    inherit_env: bool = True,
) -> subprocess.CompletedProcess:
    """Run cmd; its output goes to log_path (appended) or is captured.

    `what` says what the command is for ("fetch xen", "build xen: compile"); it heads
    the error message when the command fails. env is added to xenspin's environment;
    a variable set to None is removed from it. With inherit_env=False the command sees
    only `env` and a plain PATH: nothing of the user's environment (a CI secret, a
    proxy) reaches what runs untrusted code. With stdout (an open file), the
    command's standard output goes there and its standard error is captured (and
    appended to log_path when given): for output too big to hold in memory.
    """
    argv = [str(c) for c in cmd]
    log.debug("$ %s", quote(argv))
    if shutil.which(argv[0]) is None:
        raise XenspinError(f"{what}: {argv[0]} is not installed (run `xenspin setup`)")
    shown = argv
    argv = [*DIE_WITH_PARENT, *argv] if shutil.which(DIE_WITH_PARENT[0]) else argv
    full_env = _environment(env, inherit_env)
    if stdout is not None:
        proc = subprocess.run(
            argv, cwd=cwd, env=full_env, input=input, stdout=stdout, stderr=subprocess.PIPE, timeout=timeout
        )
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as f:
                f.write(f"$ {quote(shown)}\n".encode() + proc.stderr)
        if check and proc.returncode != 0:
            raise CommandError(what, shown, proc.returncode, log_path, proc.stderr.decode(errors="replace"))
        return proc
    if log_path is not None and not capture:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as f:
            f.write(f"$ {quote(shown)}\n".encode())
            f.flush()
            proc = subprocess.run(
                argv,
                cwd=cwd,
                env=full_env,
                input=input,
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        if check and proc.returncode != 0:
            raise CommandError(what, shown, proc.returncode, log_path, _tail(log_path))
        return proc
    proc = subprocess.run(argv, cwd=cwd, env=full_env, input=input, capture_output=True, timeout=timeout)
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as f:
            f.write(f"$ {quote(shown)}\n".encode() + proc.stdout + proc.stderr)
    if check and proc.returncode != 0:
        raise CommandError(
            what, shown, proc.returncode, log_path, (proc.stderr or proc.stdout).decode(errors="replace")
        )
    return proc


def _environment(env: Mapping[str, str | None] | None, inherit: bool = True) -> dict[str, str] | None:
    """xenspin's environment with env laid over it (None removes a variable); None when env is None.

    Without inherit, only env and a plain PATH.
    """
    if not inherit:
        return {k: v for k, v in {"PATH": SANDBOX_PATH, **(env or {})}.items() if v is not None}
    if env is None:
        return None
    full = {**os.environ, **env}
    return {k: v for k, v in full.items() if v is not None}


@contextlib.contextmanager
def stream(cmd: Sequence[str | os.PathLike], *, what: str) -> Iterator[IO[bytes]]:
    """Run cmd with its standard output a pipe the caller reads as it comes (never held whole in memory).

    What the caller leaves unread is drained; a failed command is a CommandError (its stderr as the
    tail). An exception in the caller kills the command and goes on.
    """
    argv = [str(c) for c in cmd]
    log.debug("$ %s |", quote(argv))
    if shutil.which(argv[0]) is None:
        raise XenspinError(f"{what}: {argv[0]} is not installed (run `xenspin setup`)")
    full = [*DIE_WITH_PARENT, *argv] if shutil.which(DIE_WITH_PARENT[0]) else argv
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        try:
            yield proc.stdout
            while proc.stdout.read(1 << 16):
                pass
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            status = proc.wait()
        if status != 0:
            err.seek(0)
            raise CommandError(what, argv, status, None, err.read(8192).decode(errors="replace"))


def spawn(
    cmd: Sequence[str | os.PathLike], *, what: str, log_path: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen:
    """Start cmd in its own process group, its output appended to log_path; for long-lived
    processes a caller watches (a VM). Stop it with stop(), which ends the whole group."""
    argv = [str(c) for c in cmd]
    log.debug("$ %s &", quote(argv))
    if shutil.which(argv[0]) is None:
        raise XenspinError(f"{what}: {argv[0]} is not installed (run `xenspin setup`)")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as f:
        f.write(f"$ {quote(argv)}\n".encode())
        f.flush()
        return subprocess.Popen(
            [*DIE_WITH_PARENT, *argv] if shutil.which(DIE_WITH_PARENT[0]) else argv,  # a killed xenspin ends its VM
            env={**os.environ, **env} if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen, grace: float = 5.0) -> int:
    """End a spawned process and everything it started (its process group): TERM, then KILL."""
    if proc.poll() is None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
    return proc.wait()


def _tail(path: Path, size: int = 8192) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - size))
        return f.read().decode(errors="replace")


def sandbox(
    root: Path,
    *,
    ro: Mapping[str, Path] = {},
    rw: Mapping[str, Path] = {},
    env: Mapping[str, str] = {},
    cwd: str = "/",
    network: bool = False,
) -> list[str]:
    """The bubblewrap prefix that runs a command in `root`, read-only, with only `rw` writable.

    Everything is unshared (no network unless asked), /tmp is private, the process
    dies with xenspin, and the environment is exactly `env` plus a sane PATH. The
    command runs as an unprivileged user (SANDBOX_UID) in its own user namespace with
    every capability dropped and no further user namespaces: as root inside bwrap it
    would keep every capability and could remount its read-only binds writable. The
    caller's uid maps to SANDBOX_UID, so the `rw` directories the caller made are the
    step's own to write.
    """
    argv = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns"]
    argv += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--cap-drop", "ALL"]
    argv += ["--die-with-parent", "--new-session", "--hostname", "xenspin"]
    argv += ["--ro-bind", str(root), "/"]
    if network:
        argv.append("--share-net")
    argv += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for dest, src in ro.items():
        argv += ["--ro-bind", str(src), dest]
    for dest, src in rw.items():
        argv += ["--bind", str(src), dest]
    argv += ["--clearenv", "--setenv", "PATH", SANDBOX_PATH]
    for key, value in sorted(env.items()):
        argv += ["--setenv", key, value]
    argv += ["--chdir", cwd]
    return argv


# --- who runs untrusted code ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Builder:
    """The account that runs what a spin or a package supplies: the caller, or BUILD_USER for root."""

    uid: int
    gid: int
    name: str
    subuid: int = -1  # the first subordinate ids: root in mmdebstrap's user namespace (-1: none)
    subgid: int = -1

    @property
    def switches(self) -> bool:
        """Whether xenspin (as root) hands the work to another account."""
        return self.uid != os.geteuid()


def builder() -> Builder:
    """The caller when it is not root; the `xenspin` account when it is (so nothing untrusted runs as root)."""
    if os.geteuid() != 0:
        pw = pwd.getpwuid(os.getuid())
    else:
        try:
            pw = pwd.getpwnam(BUILD_USER)
        except KeyError:
            raise XenspinError(
                f"the build account {BUILD_USER!r} does not exist (run `xenspin setup`: as root, xenspin runs "
                "every untrusted step as that account, never as root)"
            ) from None
    return Builder(pw.pw_uid, pw.pw_gid, pw.pw_name, _first_subid("uid", pw.pw_name), _first_subid("gid", pw.pw_name))


def subid_ranges(text: str) -> dict[str, tuple[int, int]]:
    """/etc/subuid's (or subgid's) entries: name -> (first, count)."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            out.setdefault(parts[0], (int(parts[1]), int(parts[2])))
    return out


def _first_subid(kind: str, name: str) -> int:
    try:
        text = Path(f"/etc/sub{kind}").read_text()
    except OSError:
        return -1
    return subid_ranges(text).get(name, (-1, 0))[0]


def grant(path: Path, who: Builder) -> Path:
    """Let root of the build account's user namespace (its first subordinate id) write in path, and nobody else.

    An ACL entry, not a world-writable mode: the namespace's root is "other" to the
    directory, and so is every other local account.
    """
    if who.subuid < 0 or who.subgid < 0:
        raise XenspinError(
            f"the account {who.name} has no subordinate ids in /etc/subuid and /etc/subgid "
            f"(run `xenspin setup --user {who.name}` as root)"
        )
    run(
        ["setfacl", "-m", f"u:{who.subuid}:rwx,g:{who.subgid}:rwx", str(path)],
        what=f"grant {path} to the build namespace",
        capture=True,
    )
    return path


def give(path: Path, who: Builder) -> Path:
    """Make a scratch directory xenspin made the build account's, open to the ids of its user namespace.

    0755: mmdebstrap works in it as subordinate ids too, not only as the account.
    """
    if who.switches:
        os.chown(path, who.uid, who.gid)
    os.chmod(path, 0o755)
    return path


def take_back(path: Path) -> None:
    """What the build account wrote under path becomes the caller's again (root's), links not followed."""
    uid, gid = os.geteuid(), os.getegid()
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)
    os.chown(path, uid, gid, follow_symlinks=False)


def as_builder(
    cmd: Sequence[str | os.PathLike], who: Builder, *, reach: Sequence[Path], hide: Sequence[Path] = ()
) -> list[str]:
    """cmd run as the build account: unchanged for an ordinary caller.

    For root, cmd runs in a private mount namespace as BUILD_USER, which sees the
    host's system (to run mmdebstrap, bwrap) but of xenspin's files only `reach`:
    each directory in `hide` (the store) and each ancestor of a reach path the
    account could not enter (/root is 0700) is covered by an empty tmpfs, and the
    reach paths are bound back at their own paths. So a package's maintainer script,
    which mmdebstrap runs as that account mapped to root in a user namespace, cannot
    touch the store's other objects or anything of root's.
    """
    argv = [str(c) for c in cmd]
    if not who.switches:
        return argv
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        view_script(reach, _masks(reach, hide, who)),
        "xenspin-view",
        str(who.uid),
        str(who.gid),
        *argv,
    ]


def view_script(reach: Sequence[Path], masks: Sequence[Path]) -> str:
    """The shell script (run as root in a fresh mount namespace) that builds as_builder's view, then drops to the account.

    Each reach directory is opened first, so it can be bound back through its
    descriptor after a tmpfs has covered the way to it. $1 and $2 are the uid and gid.
    """
    reach = _outermost(reach)
    if len(reach) > 7:  # sh redirections take one-digit descriptors (3..9)
        raise XenspinError(f"internal: {len(reach)} paths for the build account's view (at most 7)")
    q = shlex.quote
    lines = ["set -eu"]
    lines += [f"exec {3 + i}< {q(str(p))}" for i, p in enumerate(reach)]
    for m in masks:
        mode = "1777" if str(m) in SHARED_WRITABLE else "0755"
        lines.append(f"mount -t tmpfs -o mode={mode},nosuid,nodev xenspin-view {q(str(m))}")
    for i, p in enumerate(reach):
        if any(_under(p, m) for m in masks):
            lines += [f"mkdir -p {q(str(p))}", f"mount --no-canonicalize --rbind /proc/self/fd/{3 + i} {q(str(p))}"]
        lines.append(f"exec {3 + i}<&-")
    lines += [
        "uid=$1 gid=$2",
        "shift 2",
        'exec setpriv --reuid="$uid" --regid="$gid" --clear-groups --pdeathsig KILL -- "$@"',
    ]
    return "\n".join(lines) + "\n"


def _outermost(paths: Sequence[Path]) -> list[Path]:
    """The paths, without those inside another of them (bound with it)."""
    ps = sorted({Path(os.path.abspath(p)) for p in paths}, key=lambda p: len(p.parts))
    out: list[Path] = []
    for p in ps:
        if not any(_under(p, o) for o in out):
            out.append(p)
    return out


def _under(path: Path, top: Path) -> bool:
    return path == top or top in path.parents


# Directories any account may write: a maintainer script mapped to a subordinate id could
# leave files there for the host to find, so the build account's view gets empty ones.
SHARED_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")


def _masks(reach: Sequence[Path], hide: Sequence[Path], who: Builder) -> list[Path]:
    """The directories to cover: `hide`, the shared writable ones, and for each reach path its
    topmost ancestor the account cannot enter."""
    masks = [Path(os.path.abspath(h)) for h in hide]
    masks += [Path(d) for d in SHARED_WRITABLE if os.path.isdir(d) and not os.path.islink(d)]
    for p in _outermost(reach):
        for ancestor in reversed(p.parents):  # from / down
            if not _can_enter(ancestor, who):
                masks.append(ancestor)
                break
    out: list[Path] = []
    for m in sorted(set(masks), key=lambda p: len(p.parts)):
        if not any(_under(m, o) for o in out):
            out.append(m)
    return out


def _can_enter(path: Path, who: Builder) -> bool:
    st = os.stat(path)
    if st.st_uid == who.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == who.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)
