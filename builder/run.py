"""The one place that starts processes: logs each command, keeps its output, turns failure into one error."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
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
) -> subprocess.CompletedProcess:
    """Run cmd; its output goes to log_path (appended) or is captured.

    `what` says what the command is for ("fetch xen", "build xen: compile"); it heads
    the error message when the command fails. env is added to xenspin's environment;
    a variable set to None is removed from it. With stdout (an open file), the
    command's standard output goes there and its standard error is captured (and
    appended to log_path when given): for output too big to hold in memory.
    """
    argv = [str(c) for c in cmd]
    log.debug("$ %s", quote(argv))
    if shutil.which(argv[0]) is None:
        raise XenspinError(f"{what}: {argv[0]} is not installed (run `xenspin setup`)")
    shown = argv
    argv = [*DIE_WITH_PARENT, *argv] if shutil.which(DIE_WITH_PARENT[0]) else argv
    full_env = _environment(env)
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


def _environment(env: Mapping[str, str | None] | None) -> dict[str, str] | None:
    """xenspin's environment with env laid over it (None removes a variable); None when env is None."""
    if env is None:
        return None
    full = {**os.environ, **env}
    return {k: v for k, v in full.items() if v is not None}


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
    argv += ["--clearenv", "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"]
    for key, value in sorted(env.items()):
        argv += ["--setenv", key, value]
    argv += ["--chdir", cwd]
    return argv
