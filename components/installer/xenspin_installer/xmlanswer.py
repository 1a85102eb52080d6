"""XenServer / XCP-ng XML answerfiles, read into the same Answerfile as the YAML form.

Fields that apply to a xenspin host are taken; elements and attributes that do not
are named in one warning rather than dropped in silence.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from xml.parsers import expat

from .answerfile import LIMITS, Answerfile, AnswerfileError, Node, build

SCRIPT_STAGES = ("installation-start", "filesystem-populated", "installation-complete")


@dataclass
class El:
    """An XML element with the line it starts on (ElementTree keeps no lines)."""

    tag: str
    attrs: dict[str, str]
    line: int
    text: str = ""
    children: list[El] = field(default_factory=list)


def read_tree(text: str, file: str) -> El:
    """The document as Els, refusing a DTD (so no entity can expand) and trees deeper or larger than
    an answerfile's LIMITS. expat does not recurse, and neither do these handlers."""
    parser = expat.ParserCreate()
    stack: list[El] = []
    top: list[El] = []
    count = 0

    def refuse(*_: object) -> None:
        raise AnswerfileError(file, parser.CurrentLineNumber, "", "DTDs and entities are not accepted")

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal count
        count += 1
        line = parser.CurrentLineNumber
        if len(stack) >= LIMITS.max_depth:
            raise AnswerfileError(
                file, line, "", f"nested deeper than {LIMITS.max_depth} levels (expected {LIMITS.what})"
            )
        if count > LIMITS.max_nodes:
            raise AnswerfileError(file, line, "", f"holds over {LIMITS.max_nodes} elements (expected {LIMITS.what})")
        el = El(tag, dict(attrs), line)
        (stack[-1].children if stack else top).append(el)
        stack.append(el)

    def end(tag: str) -> None:
        stack.pop()

    def data(s: str) -> None:
        if stack:
            stack[-1].text += s

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = data
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    try:
        parser.Parse(text, True)
    except expat.ExpatError as e:
        raise AnswerfileError(file, e.lineno, "", f"not valid XML: {expat.ErrorString(e.code)}") from None
    return top[0]


def _prefix(mask: str) -> int | None:
    try:
        return ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
    except ValueError:
        return None


def parse_xml(text: str, file: str) -> tuple[Answerfile, list[str]]:
    """The XML answerfile as an Answerfile, and warnings for what was not used."""
    root = read_tree(text, file)
    ignored: list[str] = []

    def err(el: El, where: str, message: str) -> AnswerfileError:
        return AnswerfileError(file, el.line, where, message)

    if root.tag != "installation":
        raise err(root, root.tag, "unexpected root element (expected <installation>)")
    mode = root.attrs.get("mode", "fresh")
    if mode != "fresh":
        raise err(root, "installation mode", f"{mode!r} is not supported (expected fresh)")
    for a in root.attrs:
        if a not in ("mode", "srtype"):
            ignored.append(f"installation@{a}")
    if root.attrs.get("srtype", "lvm") not in ("lvm", "ext"):
        ignored.append("installation@srtype")

    n = lambda value, el: Node(value, el.line, file)  # noqa: E731
    top: dict[str, Node] = {}
    network: dict[str, Node] = {}
    rootpw: dict[str, Node] = {}
    dns: list[Node] = []
    hooks: list[Node] = []
    seen: dict[str, El] = {}
    for el in root.children:
        text_ = el.text.strip()
        if el.tag in ("primary-disk", "keymap", "root-password", "timezone", "hostname", "admin-interface"):
            if el.tag in seen:
                raise err(el, el.tag, f"given twice (first on line {seen[el.tag].line})")
            seen[el.tag] = el
        if el.tag == "primary-disk":
            top["disk"] = n(text_, el)
            top["wipe"] = n(True, el)  # a fresh install names the disk to overwrite, as in XenServer
            storage = el.attrs.get("guest-storage", el.attrs.get("gueststorage", "yes"))
            if storage not in ("yes", "no"):
                raise err(el, "primary-disk@guest-storage", f"{storage!r} (expected yes or no)")
            top["local-storage"] = n(storage == "yes", el)
            ignored += [f"primary-disk@{a}" for a in el.attrs if a not in ("guest-storage", "gueststorage")]
        elif el.tag == "keymap":
            top["keymap"] = n(text_, el)
        elif el.tag == "timezone":
            top["timezone"] = n(text_, el)
        elif el.tag == "hostname":
            top["hostname"] = n(text_, el)
        elif el.tag == "name-server":
            dns.append(n(text_, el))
        elif el.tag == "root-password":
            kind = el.attrs.get("type", "plaintext")
            if kind not in ("plaintext", "hash"):
                raise err(el, "root-password@type", f"{kind!r} (expected plaintext or hash)")
            rootpw["password-hash" if kind == "hash" else "password"] = n(text_, el)
        elif el.tag == "admin-interface":
            network.update(_admin_interface(el, file, ignored))
        elif el.tag == "script":
            stage = el.attrs.get("stage", "")
            if stage not in SCRIPT_STAGES:
                raise err(el, "script@stage", f"{stage!r} (expected one of {', '.join(SCRIPT_STAGES)})")
            if el.attrs.get("type", "url") != "url":
                raise err(el, "script@type", f"{el.attrs['type']!r} (expected url)")
            hooks.append(n({"stage": n(stage, el), "url": n(text_, el)}, el))
        elif el.tag == "source" and el.attrs.get("type") == "local":
            pass  # the install medium itself: what xenspin always installs from
        else:
            ignored.append(el.tag)
    if dns:
        network["dns"] = Node(dns, dns[0].line, file)
    if network:
        top["network"] = Node(network, seen["admin-interface"].line if "admin-interface" in seen else dns[0].line, file)
    top["root"] = Node(rootpw, seen["root-password"].line if "root-password" in seen else root.line, file)
    if hooks:
        top["hooks"] = Node(hooks, hooks[0].line, file)
    answer = build(Answerfile, Node(top, root.line, file), "")
    warnings = []
    if ignored:
        names = ", ".join(dict.fromkeys(f"<{i}>" if "@" not in i else i for i in ignored))
        warnings.append(f"{file}: warning: not used by xenspin: {names}")
    return answer, warnings


def _admin_interface(el: El, file: str, ignored: list[str]) -> dict[str, Node]:
    proto = el.attrs.get("proto", "dhcp")
    if proto not in ("dhcp", "static"):
        raise AnswerfileError(file, el.line, "admin-interface@proto", f"{proto!r} (expected dhcp or static)")
    out = {"mode": Node(proto, el.line, file)}
    if "name" in el.attrs:
        out["interface"] = Node(el.attrs["name"], el.line, file)
    ignored += [f"admin-interface@{a}" for a in el.attrs if a not in ("proto", "name")]
    parts = {c.tag: c for c in el.children}
    for c in el.children:
        if c.tag not in ("ipaddr", "subnet", "gateway"):
            ignored.append(f"admin-interface/{c.tag}")
    if proto == "static":
        for need in ("ipaddr", "subnet"):
            if need not in parts:
                raise AnswerfileError(file, el.line, f"admin-interface/{need}", "missing (expected for proto=static)")
        prefix = _prefix(parts["subnet"].text.strip())
        if prefix is None:
            c = parts["subnet"]
            raise AnswerfileError(file, c.line, "admin-interface/subnet", f"{c.text.strip()!r} (expected a netmask)")
        out["address"] = Node(f"{parts['ipaddr'].text.strip()}/{prefix}", parts["ipaddr"].line, file)
        if "gateway" in parts:
            out["gateway"] = Node(parts["gateway"].text.strip(), parts["gateway"].line, file)
    return out
