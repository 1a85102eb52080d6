"""The interactive installer: plain prompts on a console, answers checked by the answerfile's own rules."""

from __future__ import annotations

import getpass
from collections.abc import Callable
from typing import IO

from .answerfile import Answerfile, AnswerfileError, Node, build
from .disks import Disk, candidates, check_writable, describe_plan, has_layout, plan


class Console:
    """Questions on one console; input and output given so tests can drive it."""

    def __init__(self, inp: IO[str], out: IO[str], secret: Callable[[str], str] | None = None) -> None:
        self.inp, self.out = inp, out
        self.secret = secret or (lambda prompt: getpass.getpass(prompt, stream=out))

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def ask(self, prompt: str, default: str = "") -> str:
        shown = f"{prompt} [{default}]: " if default else f"{prompt}: "
        self.out.write(shown)
        self.out.flush()
        line = self.inp.readline()
        if not line:
            raise EOFError("console closed")
        return line.strip() or default

    def pick(self, prompt: str, choices: list[str], default: str = "") -> str:
        while True:
            got = self.ask(f"{prompt} ({'/'.join(choices)})", default)
            if got in choices:
                return got
            self.say(f"  please answer one of {', '.join(choices)}")


def _valid(data: dict, keys: str) -> Answerfile | str:
    """An Answerfile from the answers so far, or the problem with the newest one."""

    def node(v):
        if isinstance(v, dict):
            return Node({k: node(x) for k, x in v.items()}, 0, "answer")
        if isinstance(v, list):
            return Node([node(x) for x in v], 0, "answer")
        return Node(v, 0, "answer")

    try:
        return build(Answerfile, node(data), "")
    except AnswerfileError as e:
        return f"{e.field}: {e.message}" if e.field.split(".")[0] in keys.split() else ""


def interview(c: Console, disks: list[Disk]) -> Answerfile | None:
    """Ask for each setting; returns the answers once confirmed, None when the user declines."""
    data: dict = {"root": {"ssh-keys": ["ssh-ed25519 AAAA placeholder"]}}

    def ask_until(key: str, prompt: str, default: str, setter=None) -> None:
        while True:
            value = c.ask(prompt, default)
            (setter or (lambda v: data.__setitem__(key, v)))(value)
            problem = _valid(data, key)
            if not isinstance(problem, str) or not problem:
                return
            c.say(f"  {problem}")

    offered = candidates(disks)  # not the install medium, the answers disk, a CD, a loop device or a read-only disk
    if not offered:
        c.say("no disk to install to was found")
        return None
    c.say("Disks you can install to:")
    for d in offered:
        held = d.contents()
        c.say(f"  {d.describe()}" + (f" holds {', '.join(held)}" if held else " (empty)"))
    names = [d.name for d in offered]
    disk_name = c.pick("Install to disk", names, names[0] if len(names) == 1 else "")
    disk = next(d for d in offered if d.name == disk_name)
    if has_layout(disk):
        what = c.pick(
            f"{disk.path} holds a xenspin installation: upgrade it (keeps its settings, data and guests; the "
            "release in use stays bootable), restore the release it kept, or install fresh (erases it)",
            ["upgrade", "restore", "install"],
            "upgrade",
        )
        if what != "install":
            return Answerfile(mode=what, disk=disk.path) if c.ask(f"Type yes to {what} {disk.path}") == "yes" else None
    data["disk"] = disk.path
    data["wipe"] = bool(disk.contents())
    ask_until("hostname", "Host name", "xenspin")
    mode = c.pick("Network", ["dhcp", "static"], "dhcp")
    data["network"] = {"mode": mode}
    if mode == "static":
        ask_until(
            "network",
            "Address with prefix (e.g. 192.0.2.10/24)",
            "",
            lambda v: data["network"].__setitem__("address", v),
        )
        ask_until("network", "Gateway", "", lambda v: data["network"].__setitem__("gateway", v) if v else None)
        ask_until(
            "network", "Name servers (space separated)", "", lambda v: data["network"].__setitem__("dns", v.split())
        )
    how = c.pick("Root logs in with", ["password", "ssh-key"], "password")
    if how == "password":
        while True:
            pw = c.secret("Root password: ")
            if pw and pw == c.secret("Again: "):
                data["root"] = {"password": pw}
                break
            c.say("  the passwords are empty or differ; again")
    else:
        ask_until("root", "SSH public key", "", lambda v: data.__setitem__("root", {"ssh-keys": [v]}))
    ask_until("timezone", "Time zone", "UTC")
    ask_until("keymap", "Keyboard layout", "us")
    answer = _valid(data, "")
    assert isinstance(answer, Answerfile)
    return answer if confirm(c, answer, disk) else None


def confirm(c: Console, answer: Answerfile, disk: Disk) -> bool:
    """Show what will be erased and the new layout; only 'yes' goes on."""
    check_writable(disk, wipe=True)
    held = disk.contents()
    c.say("")
    c.say(f"This ERASES {disk.describe()}" + (f", which holds: {', '.join(held)}" if held else " (it holds nothing)"))
    c.say("New layout:")
    for line in describe_plan(disk, plan(disk.size, local_storage=answer.local_storage)):
        c.say("  " + line)
    c.say(f"Host {answer.hostname}, network {answer.network.mode}, time zone {answer.timezone}, keymap {answer.keymap}")
    return c.ask("Type yes to install") == "yes"
