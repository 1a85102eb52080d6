"""The answerfile model, its checks, and the in-ISO name.

The dataclasses below are the one declaration: `build` makes them from parsed nodes
(readanswer.py reads YAML into nodes, xmlanswer.py XenServer's XML), and the builder's
`xenspin schema --answerfile` turns the same fields into JSON Schema (their metadata
has the shape builder/dataschema.py reads: help and key; each string's grammar is its
Annotated type, see grammar.py).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from . import InstallerError, boundedyaml
from .grammar import CONTROL, URL_CHAR, Grammar, bare, grammars, optional, printable

MISSING = dataclasses.MISSING
MAX_BYTES = 1024 * 1024

# Where a baked-in answerfile lives on the ISO (and so under the live medium).
ISO_DIR = "xenspin"


def iso_answerfile_name(source: Path) -> str:
    """The path inside the ISO for an answerfile baked in from source (keeps its format)."""
    return f"{ISO_DIR}/answerfile.{'xml' if answer_format(source) == 'xml' else 'yaml'}"


def answer_format(path: Path) -> str:
    """'xml' or 'yaml', by the file's name, else by its first non-blank character."""
    if path.suffix.lower() == ".xml":
        return "xml"
    if path.suffix.lower() in (".yaml", ".yml"):
        return "yaml"
    try:
        head = path.read_bytes()[:4096].lstrip()
    except OSError:
        return "yaml"
    return "xml" if head.startswith(b"<") else "yaml"


def field(help: str, default: Any = MISSING, *, key: str | None = None, factory: Any = MISSING) -> Any:
    """A dataclass field with the help text shown in errors and the schema."""
    meta = {"help": help, "key": key, "path": False}
    if factory is not MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class AnswerfileError(InstallerError):
    """A bad answerfile: one line `FILE:LINE: FIELD: problem (expected ...)`."""

    def __init__(self, file: str, line: int, field: str, message: str) -> None:
        field = printable(field)  # a key may hold a newline: the error stays one line
        self.file, self.line, self.field, self.message = file, line, field, message
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")

    def __str__(self) -> str:
        return self.args[0]


# --- grammars: what each string may hold (the schema's "pattern", the loader's check) ---------

HOSTNAME = Grammar(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", "letters, digits and -, at most 63")
# A name under /dev: no "." or ".." part, so it cannot climb out of /dev.
DISK = optional(
    Grammar(
        r"(/dev/)?(?!(.*/)?\.\.?(/|$))[A-Za-z0-9][A-Za-z0-9/_.:+-]{0,254}",
        "a disk name, e.g. sda, /dev/sda or /dev/disk/by-id/...",
    )
)
# The kernel's rule (1 to 15 bytes, no /, :, whitespace, not . or ..) narrowed to what
# systemd-networkd's Name= reads literally: no globs (* ? [), no ! (negation), no quotes.
IFNAME = optional(
    Grammar(
        r"(?!\.\.?$)(?!-)[A-Za-z0-9_.-]{1,15}", "a Linux interface name: 1 to 15 of A-Z a-z 0-9 _ . - (not . or ..)"
    )
)
# Only the characters of IPv4 and IPv6 addresses: ipaddress also takes an IPv6 zone ("%anything").
IP = Grammar(r"[0-9A-Fa-f.:]{2,45}", "an IP address")
ADDRESS = optional(Grammar(r"[0-9A-Fa-f.:]{2,45}(/[0-9]{1,3})?", "an address with prefix length, e.g. 192.0.2.10/24"))
# chpasswd reads one "user:password" per line: a newline would set a second account's password.
PASSWORD = Grammar(f"[^{CONTROL}]{{0,256}}", "a password of at most 256 characters on one line", secret=True)
HASH = optional(
    Grammar(r"\$(1|5|6|y|2[aby]|gy|7)\$[./A-Za-z0-9$=,-]{1,512}", "a crypt hash like $6$... or $y$...", True)
)
# One authorized_keys line: no options (from=..., command=...), a comment without control characters.
SSH_KEY = Grammar(
    rf"(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-[A-Za-z0-9@.-]+) [A-Za-z0-9+/]+={{0,3}}( [^{CONTROL}]{{0,512}})?",
    "an SSH public key on one line, e.g. ssh-ed25519 AAAA... comment",
)
TIMEZONE = Grammar(
    r"(?!.*\.\.)[A-Za-z][A-Za-z0-9_+-]{0,63}(/[A-Za-z0-9_+-]{1,64}){0,3}", "a zone name like Europe/Berlin"
)
# A time server as systemd-timesyncd's NTP= reads it (space-separated): a DNS name of
# labels joined by dots, or an IPv4 or IPv6 address (checked further by Answerfile.check).
NTP_SERVER = Grammar(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
    r"|(?=[0-9A-Fa-f:.]{2,45}$)[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*",
    "a host name like pool.ntp.org or an IP address",
)
KEYMAP = Grammar(r"[a-z][a-z0-9_-]{0,31}", "a layout name like us or de")
# file:/PATH is looked up on the install medium: no ".." part climbs out of it.
HOOK_URL = Grammar(
    rf"https?://{URL_CHAR}{{1,2048}}|file:/(?!(.*/)?\.\.(/|$)){URL_CHAR}{{1,2048}}",
    "http://, https:// or file:/PATH",
)


@dataclass
class Network:
    """How the management interface gets its address."""

    mode: Literal["dhcp", "static"] = field("dhcp or static", "dhcp")
    interface: Annotated[str, IFNAME] = field("interface name; empty: the first wired interface", "")
    address: Annotated[str, ADDRESS] = field("static: address with prefix length, e.g. 192.0.2.10/24", "")
    gateway: Annotated[str, optional(IP)] = field("static: default gateway", "")
    dns: list[Annotated[str, IP]] = field("name servers (static; with dhcp they override the lease's)", factory=list)

    def check(self, node: Node, path: str) -> None:
        if self.mode == "static" and not self.address:
            fail(node, f"{path}.address", "missing (expected an address with prefix length for static)")
        if self.address:
            try:
                ipaddress.ip_interface(self.address)
            except ValueError:
                fail(
                    node.at("address"),
                    f"{path}.address",
                    f"{self.address!r} is not an address (expected e.g. 192.0.2.10/24)",
                )
            if "/" not in self.address:
                fail(
                    node.at("address"),
                    f"{path}.address",
                    f"{self.address!r} has no prefix length (expected e.g. 192.0.2.10/24)",
                )
        for key, values in (("gateway", [self.gateway] if self.gateway else []), ("dns", self.dns)):
            for v in values:
                try:
                    ipaddress.ip_address(v)
                except ValueError:
                    fail(node.at(key), f"{path}.{key}", f"{v!r} is not an IP address")


@dataclass
class Root:
    """How root logs in: a password (plain or hashed), SSH keys, or both."""

    password: Annotated[str, PASSWORD] = field("plain password; stored hashed on the target", "")
    password_hash: Annotated[str, HASH] = field("crypt(3) hash, e.g. from `openssl passwd -6`", "")
    ssh_keys: list[Annotated[str, SSH_KEY]] = field("public keys for /root/.ssh/authorized_keys", factory=list)

    def check(self, node: Node, path: str) -> None:
        if self.password and self.password_hash:
            fail(node.at("password-hash"), f"{path}.password-hash", "given with password (expected only one)")


@dataclass
class Hook:
    """A script run at one stage of the install (as XenServer's <script>)."""

    stage: Literal["installation-start", "filesystem-populated", "installation-complete"] = field(
        "when it runs; the last two get the target's mount point as $1"
    )
    url: Annotated[str, HOOK_URL] = field("http://, https:// or file:/PATH (file: on the install medium)")


@dataclass
class Answerfile:
    """An unattended install of a xenspin host."""

    mode: Literal["install", "upgrade", "restore"] = field(
        "install (fresh, erases the disk), upgrade (keeps the host's settings and data; the previous release stays "
        "bootable) or restore (boot the release kept by the last upgrade again)",
        "install",
    )
    disk: Annotated[str, DISK] = field(
        "the target disk (sda, /dev/sda, /dev/disk/by-id/...); empty: the only disk (upgrade, restore: the only one "
        "holding an installation)",
        "",
    )
    wipe: bool = field("erase the disk even if it holds partitions or filesystems", False)
    local_storage: bool = field("the rest of the disk as the LVM group xenspin-local for guests", True)
    hostname: Annotated[str, HOSTNAME] = field("host name", "xenspin")
    network: Network = field("management network", factory=Network)
    root: Root = field("root's login: password, password-hash or ssh-keys (one is needed)", factory=Root)
    timezone: Annotated[str, TIMEZONE] = field("time zone (a name under /usr/share/zoneinfo)", "UTC")
    ntp: list[Annotated[str, NTP_SERVER]] | None = field(
        "time servers for systemd-timesyncd (host names or IP addresses); not given: those DHCP hands out, "
        "else Debian's pool; []: none (time sync off)",
        None,
    )
    keymap: Annotated[str, KEYMAP] = field("console keyboard layout (XKB layout, e.g. us, de, fr)", "us")
    serial_console: bool | None = field(
        "Xen, dom0 and GRUB on the first serial port (com1, 115200); not given: as the installer was booted", None
    )
    hooks: list[Hook] = field("scripts run during the install", factory=list)
    finish: Literal["reboot", "poweroff"] = field("what to do when the install is done", "reboot")

    def check(self, node: Node, path: str) -> None:
        if self.mode != "install":
            return  # an upgrade keeps root's login as it is; a restore changes nothing in the root it boots
        if not (self.root.password or self.root.password_hash or self.root.ssh_keys):
            fail(node.at("root"), "root", "gives no way to log in (expected password, password-hash or ssh-keys)")
        for i, server in enumerate(self.ntp or []):
            if ":" in server or server.replace(".", "").isdigit():  # an address: a valid one
                try:
                    ipaddress.ip_address(server)
                except ValueError:
                    fail(node.at("ntp"), f"ntp[{i}]", f"{server!r} is not an IP address")

    @property
    def disk_path(self) -> str:
        return self.disk if not self.disk or self.disk.startswith("/") else "/dev/" + self.disk


# --- loading -------------------------------------------------------------------------


@dataclass
class Node:
    """A YAML value with its line: the loader's view of the document."""

    value: Any
    line: int
    file: str
    raw: str | None = None

    def at(self, key: str) -> Node:
        if isinstance(self.value, dict) and key in self.value:
            return self.value[key]
        return self


def fail(node: Node, field: str, message: str) -> typing.NoReturn:
    raise AnswerfileError(node.file, node.line, field, message)


# An answerfile nests three levels (hooks, a hook, its url) and holds tens of values.
LIMITS = boundedyaml.Limits(max_depth=10, max_nodes=10_000, what="an answerfile")


def yaml_key(f: dataclasses.Field) -> str:
    return f.metadata.get("key") or f.name.replace("_", "-")


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, str):
        return f"the string {v!r}"
    return repr(v)


def build(tp: Any, node: Node, path: str) -> Any:
    """Check node against tp and build the value; AnswerfileError naming the line and field."""
    v = node.value
    if dataclasses.is_dataclass(tp):
        if not isinstance(v, dict):
            fail(node, path or "(top)", f"got {_kind(v)} (expected a mapping)")
        hints = typing.get_type_hints(tp, include_extras=True)
        fields = {yaml_key(f): f for f in dataclasses.fields(tp)}
        for key, sub in v.items():
            if key not in fields:
                close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else f" (expected one of {', '.join(fields)})"
                fail(sub, f"{path}.{key}" if path else key, "unknown field" + hint)
        kwargs = {}
        for key, f in fields.items():
            sub_path = f"{path}.{key}" if path else key
            if key in v:
                kwargs[f.name] = build(hints[f.name], v[key], sub_path)
            elif f.default is MISSING and f.default_factory is MISSING:
                fail(node, sub_path, f"missing (expected {f.metadata['help']})")
        obj = tp(**kwargs)
        check = getattr(obj, "check", None)
        if check is not None:
            check(node, path)
        return obj
    if get_origin(tp) is Annotated:
        value = build(bare(tp), node, path)
        for g in grammars(tp):
            if not g.ok(value):
                fail(node, path, g.refusal(value))
        return value
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        return None if v is None else build(members[0], node, path)
    if v is None:
        fail(node, path, "is empty")
    if tp is str:
        if isinstance(v, str):
            return v
        if isinstance(v, (int, float)) and not isinstance(v, bool) and node.raw is not None:
            return node.raw
        fail(node, path, f"got {_kind(v)} (expected a string)")
    if tp is bool:
        if isinstance(v, bool):
            return v
        fail(node, path, f"got {_kind(v)} (expected true or false)")
    if get_origin(tp) is Literal:
        choices = get_args(tp)
        if v in choices:
            return v
        close = difflib.get_close_matches(str(v), list(choices), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        fail(node, path, f"got {_kind(v)} (expected one of {', '.join(choices)}){hint}")
    if get_origin(tp) is list:
        if isinstance(v, (str, int)) and bare(get_args(tp)[0]) is str:
            return [build(get_args(tp)[0], node, path)]  # one name server or key written without a list
        if not isinstance(v, list):
            fail(node, path, f"got {_kind(v)} (expected a list)")
        return [build(get_args(tp)[0], item, f"{path}[{i}]") for i, item in enumerate(v)]
    raise TypeError(f"answerfile.build: unsupported type {tp!r}")  # a programming error


def to_data(obj: Any) -> Any:
    """The answerfile as plain data keyed as in YAML (for logs and `validate-answerfile`)."""
    if dataclasses.is_dataclass(obj):
        return {yaml_key(f): to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_data(v) for v in obj]
    return obj


def redacted(answer: Answerfile) -> dict[str, Any]:
    """to_data without the password, plain or hashed, for the install log."""
    data = to_data(answer)
    for key in ("password", "password-hash"):
        if data["root"][key]:
            data["root"][key] = "(given)"
    return data
