"""XenServer / XCP-ng XML answerfiles, read into the same Answerfile as the YAML form.

Every element and attribute of XenServer's answerfile format (its host installer's
doc/answerfile.txt) is decided here, one of three ways:

- honoured: read into the model (an NTP server, a name server, the disk...);
- warned: ignoring it is harmless; one line `FILE:LINE: warning: WHAT: what xenspin does
  instead`, and the install goes on;
- refused: going on would install something other than what the file asks for (Open
  vSwitch, a RAID mirror, GRUB in a partition): one AnswerfileError naming FILE:LINE.

docs/answerfiles.md has the same decisions as a table; a test holds it to ELEMENTS.
"""

from __future__ import annotations

import ipaddress
import typing
from dataclasses import dataclass, field
from xml.parsers import expat

from .answerfile import LIMITS, Answerfile, AnswerfileError, Node, build

SCRIPT_STAGES = ("installation-start", "filesystem-populated", "installation-complete")
# XenServer's installation@mode -> the model's mode; reinstall has no counterpart (refused).
MODES = {"fresh": "install", "upgrade": "upgrade", "restore": "restore"}
TRUE, FALSE = ("yes", "true", "1"), ("no", "false", "0")
# The elements of XenServer's format (and old names it still reads) this module decides on.
ELEMENTS = (
    "primary-disk",
    "guest-disk",
    "guest-disks",
    "keymap",
    "root-password",
    "source",
    "driver-source",
    "selected-multiversion-drivers",
    "script",
    "post-install-script",
    "install-failed-script",
    "admin-interface",
    "name-server",
    "nameserver",
    "hostname",
    "timezone",
    "time-config-method",
    "ntp",
    "ntp-server",
    "ntp-servers",
    "bootloader",
    "network-backend",
    "existing-installation",
    "backup-disk",
    "ui-confirmation-prompt",
    "ssh-mode",
    "service",
    "fcoe-interface",
)
# What an upgrade or a restore leaves as the host has it: these only shape a fresh install.
HOST_SETTINGS = (
    "primary-disk",
    "guest-disk",
    "guest-disks",
    "keymap",
    "root-password",
    "admin-interface",
    "name-server",
    "nameserver",
    "hostname",
    "timezone",
    "time-config-method",
    "ntp",
    "ntp-server",
    "ntp-servers",
    "ssh-mode",
    "service",
)
# Given at most once.
SINGLE = (
    "primary-disk",
    "keymap",
    "root-password",
    "timezone",
    "hostname",
    "admin-interface",
    "ntp",
    "time-config-method",
    "bootloader",
    "network-backend",
    "existing-installation",
    "backup-disk",
    "ui-confirmation-prompt",
    "ssh-mode",
)


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
    """The XML answerfile as an Answerfile, and one warning line for each thing not used."""
    return _Reader(file).read(read_tree(text, file))


class _Reader:
    """One pass over the document: model nodes for what is honoured, warnings, or the one refusal."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.mode = "install"
        self.top: dict[str, Node] = {}
        self.network: dict[str, Node] = {}
        self.rootpw: dict[str, Node] = {}
        self.dns: list[Node] = []
        self.hooks: list[Node] = []
        self.seen: dict[str, El] = {}
        self.warnings: list[str] = []

    # --- helpers ----------------------------------------------------------------------

    def node(self, value: object, el: El) -> Node:
        return Node(value, el.line, self.file)

    def refuse(self, el: El, where: str, message: str) -> typing.NoReturn:
        raise AnswerfileError(self.file, el.line, where, message)

    def warn(self, el: El, where: str, reason: str) -> None:
        self.warnings.append(f"{self.file}:{el.line}: warning: {where}: {reason}")

    def flag(self, el: El, name: str, default: bool, *aliases: str) -> bool:
        """A yes/no attribute, as XenServer reads them (yes, true, 1 / no, false, 0)."""
        for a in (name, *aliases):
            if a in el.attrs:
                v = el.attrs[a].strip().lower()
                if v in TRUE or v in FALSE:
                    return v in TRUE
                self.refuse(el, f"{el.tag}@{a}", f"{el.attrs[a]!r} (expected yes or no)")
        return default

    def unknown_attrs(self, el: El, known: tuple[str, ...]) -> None:
        for a in el.attrs:
            if a not in known:
                self.warn(el, f"{el.tag}@{a}", "not an attribute of XenServer's answerfile format; ignored")

    # --- the document -----------------------------------------------------------------

    def read(self, root: El) -> tuple[Answerfile, list[str]]:
        self.read_root(root)
        for el in root.children:
            if el.tag in SINGLE:
                if el.tag in self.seen:
                    self.refuse(el, el.tag, f"given twice (first on line {self.seen[el.tag].line})")
                self.seen[el.tag] = el
        ntp = self.read_time(root)
        for el in root.children:
            if self.mode != "install" and el.tag in HOST_SETTINGS:
                self.warn(el, el.tag, f"not used by an {self.mode}: it keeps the host's settings")
                continue
            handler = getattr(self, "el_" + el.tag.replace("-", "_"), None)
            if el.tag not in ELEMENTS or handler is None:
                self.warn(el, el.tag, "not an element of XenServer's answerfile format; ignored")
                continue
            handler(el)
        if self.mode == "upgrade" and "disk" not in self.top:
            self.refuse(root, "existing-installation", "missing (expected the disk of the installation to upgrade)")
        return self.build(root, ntp), self.warnings

    def read_root(self, root: El) -> None:
        if root.tag == "upgrade":  # XenServer reads it as <installation>: a fresh install unless mode= says otherwise
            self.refuse(root, "upgrade", 'ambiguous root element (expected <installation mode="upgrade">)')
        if root.tag == "restore":
            self.mode = "restore"
            self.unknown_attrs(root, ())
            return
        if root.tag != "installation":
            self.refuse(root, root.tag, "unexpected root element (expected <installation>)")
        mode = root.attrs.get("mode", "fresh")
        if mode == "reinstall":
            self.refuse(
                root,
                "installation mode",
                "'reinstall' (back up the host, then install fresh) is not supported: xenspin keeps no backup "
                'of an erased host; use mode="fresh" to erase and install, or mode="upgrade" to keep the host',
            )
        if mode not in MODES:
            self.refuse(root, "installation mode", f"{mode!r} is not supported (expected fresh, upgrade or restore)")
        self.mode = MODES[mode]
        for a in ("srtype", "sr-type"):
            srtype = root.attrs.get(a, "lvm")
            if srtype != "lvm":
                self.warn(
                    root,
                    f"installation@{a}",
                    f"{srtype!r}: xenspin makes local storage as the LVM group xenspin-local (an lvm SR); "
                    "for thin provisioning make a thin pool in it after the install",
                )
        if "netinstall-gpg-check" in root.attrs:
            self.warn(
                root,
                "installation@netinstall-gpg-check",
                "xenspin installs from its own medium, checked when the ISO was built; nothing is fetched to check",
            )
        self.unknown_attrs(root, ("mode", "srtype", "sr-type", "netinstall-gpg-check"))

    def build(self, root: El, ntp: Node | None) -> Answerfile:
        top = self.top
        top["mode"] = self.node(self.mode, root)
        if self.dns:
            self.network["dns"] = Node(self.dns, self.dns[0].line, self.file)
        if self.network:
            where = self.seen.get("admin-interface")
            self.top["network"] = Node(self.network, where.line if where else self.dns[0].line, self.file)
        if ntp is not None:
            top["ntp"] = ntp
        pw = self.seen.get("root-password")
        top["root"] = Node(self.rootpw, pw.line if pw else root.line, self.file)
        if self.hooks:
            top["hooks"] = Node(self.hooks, self.hooks[0].line, self.file)
        return build(Answerfile, Node(top, root.line, self.file), "")

    # --- disks ------------------------------------------------------------------------

    def el_primary_disk(self, el: El) -> None:
        disk = el.text.strip()
        if disk.startswith("iscsi:"):
            self.refuse(el, "primary-disk", "an iSCSI boot disk (iscsi:...) is not supported (expected a local disk)")
        self.top["disk"] = self.node(disk, el)
        self.top["wipe"] = self.node(True, el)  # a fresh install names the disk to overwrite, as in XenServer
        self.top["local-storage"] = self.node(self.flag(el, "guest-storage", True, "gueststorage"), el)
        if not self.flag(el, "sr-at-end", True):
            self.warn(el, "primary-disk@sr-at-end", "xenspin always puts the local storage at the end of the disk")
        keep = el.attrs.get("preserve-first-partition", "").strip().lower()
        if keep in ("true", "yes"):
            self.refuse(
                el,
                "primary-disk@preserve-first-partition",
                f"{el.attrs['preserve-first-partition']!r}: xenspin erases the whole disk and keeps no partition "
                '(expected "false", or install to a disk whose contents may go)',
            )
        if keep == "if-utility":
            self.warn(
                el,
                "primary-disk@preserve-first-partition",
                "xenspin erases the whole disk: a utility partition is not kept (back it up first if you need it)",
            )
        elif keep not in ("", "false", "no"):
            self.refuse(el, "primary-disk@preserve-first-partition", f"{keep!r} (expected true, false or if-utility)")
        if self.flag(el, "swraid", False):
            self.refuse(
                el,
                "primary-disk@swraid",
                "software RAID is not supported (xenspin installs to one disk; use a hardware RAID volume as the disk)",
            )
        fs = el.attrs.get("fs-type", "ext4")
        if fs != "ext4":
            self.warn(el, "primary-disk@fs-type", f"{fs!r}: xenspin's root filesystem is ext4")
        self.unknown_attrs(
            el, ("guest-storage", "gueststorage", "sr-at-end", "preserve-first-partition", "swraid", "fs-type")
        )

    def el_guest_disk(self, el: El) -> None:
        self.refuse(
            el,
            el.tag,
            "local storage on other disks is not supported (xenspin puts it on the primary disk only); "
            "leave it out and add the disk to the LVM group xenspin-local after the install (vgextend)",
        )

    el_guest_disks = el_guest_disk

    def el_existing_installation(self, el: El) -> None:
        if self.mode == "install":
            self.warn(el, el.tag, "not used by a fresh install (it names the disk of an upgrade or restore)")
            return
        self.top["disk"] = self.node(el.text.strip(), el)
        if "fs-type" in el.attrs:
            self.warn(el, "existing-installation@fs-type", "not used: xenspin reads the installed host's filesystem")

    def el_backup_disk(self, el: El) -> None:
        if self.mode != "restore":
            self.warn(el, el.tag, f"not used by an {self.mode}: it names the disk of a restore")
        elif "existing-installation" in self.seen:
            self.warn(el, el.tag, "not used: <existing-installation> names the disk")
        else:
            self.top["disk"] = self.node(el.text.strip(), el)

    # --- the host ---------------------------------------------------------------------

    def el_keymap(self, el: El) -> None:
        self.top["keymap"] = self.node(el.text.strip(), el)

    def el_timezone(self, el: El) -> None:
        self.top["timezone"] = self.node(el.text.strip(), el)

    def el_hostname(self, el: El) -> None:
        self.top["hostname"] = self.node(el.text.strip(), el)

    def el_root_password(self, el: El) -> None:
        kind = el.attrs.get("type", "plaintext")
        if kind not in ("plaintext", "hash"):
            self.refuse(el, "root-password@type", f"{kind!r} (expected plaintext or hash)")
        if kind == "hash" and el.text.strip() == "!!":
            self.refuse(
                el,
                "root-password",
                "'!!' (set the password at first boot) is not supported: xenspin sets it now "
                "(expected a hash from `openssl passwd -6`)",
            )
        self.rootpw["password-hash" if kind == "hash" else "password"] = self.node(el.text.strip(), el)

    def el_ssh_mode(self, el: El) -> None:
        mode = el.text.strip().lower()
        if mode == "off":
            self.refuse(
                el,
                "ssh-mode",
                "'off' is not supported: a xenspin host runs sshd "
                "(to turn it off, a filesystem-populated script: systemctl --root=$1 disable ssh)",
            )
        if mode not in ("on", "auto"):
            self.refuse(el, "ssh-mode", f"{mode!r} (expected on, off or auto)")

    def el_service(self, el: El) -> None:
        self.warn(
            el,
            "service",
            f"{el.attrs.get('name', '')!r} is a XenServer service name; a filesystem-populated script "
            "sets the services of a xenspin host (systemctl --root=$1 enable|disable UNIT)",
        )

    def el_ui_confirmation_prompt(self, el: El) -> None:
        v = el.text.strip().lower()
        if v in TRUE:
            self.refuse(
                el,
                el.tag,
                "xenspin's unattended install asks nothing before it erases the disk; "
                "boot the interactive installer to confirm, or leave this out",
            )
        if v not in FALSE:
            self.refuse(el, el.tag, f"{v!r} (expected true or false)")

    # --- the install medium and scripts --------------------------------------------------

    def el_source(self, el: El) -> None:
        kind = el.attrs.get("type", "local")
        if kind != "local":
            self.warn(
                el,
                "source",
                f"type {kind!r}: xenspin installs the root filesystem on its own medium; "
                "no repository is read (boot the ISO of the release you want)",
            )

    def el_driver_source(self, el: El) -> None:
        self.warn(
            el,
            el.tag,
            "driver packs (XenServer RPMs) cannot be loaded: a xenspin host has Debian's kernel modules "
            "and firmware; add driver or firmware packages to rootfs.packages of the build",
        )

    el_selected_multiversion_drivers = el_driver_source

    def el_fcoe_interface(self, el: El) -> None:
        self.refuse(el, el.tag, "FCoE is not supported (expected a local disk)")

    def el_script(self, el: El) -> None:
        stage = el.attrs.get("stage", "")
        if stage == "packages-installed":
            self.warn(
                el,
                "script@stage",
                "'packages-installed' runs at filesystem-populated (xenspin unpacks a whole root filesystem; "
                "both get the target's mount point as $1)",
            )
            stage = "filesystem-populated"
        if stage not in SCRIPT_STAGES:
            self.refuse(el, "script@stage", f"{stage!r} (expected one of {', '.join(SCRIPT_STAGES)})")
        self.hook(el, stage)

    def el_post_install_script(self, el: El) -> None:
        self.hook(el, "filesystem-populated")

    def hook(self, el: El, stage: str) -> None:
        kind = el.attrs.get("type", "url")
        if kind == "nfs" or el.text.strip().startswith("nfs:"):
            self.refuse(
                el,
                f"{el.tag}@type",
                "scripts on NFS are not fetched (expected an http://, https:// or file:/ URL; file: on the medium)",
            )
        if kind != "url":
            self.refuse(el, f"{el.tag}@type", f"{kind!r} (expected url)")
        self.hooks.append(self.node({"stage": self.node(stage, el), "url": self.node(el.text.strip(), el)}, el))

    def el_install_failed_script(self, el: El) -> None:
        self.warn(
            el,
            el.tag,
            "xenspin runs no script when an install fails "
            "(the console and the installer's /var/log/xenspin-install.log say why); "
            'for a script after a good install use <script stage="installation-complete">',
        )

    # --- boot and network ---------------------------------------------------------------

    def el_bootloader(self, el: El) -> None:
        location = el.attrs.get("location", "mbr")
        if location == "partition":
            self.refuse(
                el,
                "bootloader@location",
                "'partition' is not supported: xenspin partitions the disk GPT and puts GRUB in the disk's "
                "boot code with a BIOS boot partition (and on the ESP for UEFI); a partition's boot sector "
                'would need a second boot loader to chain to it (expected location="mbr")',
            )
        if location != "mbr":
            self.refuse(el, "bootloader@location", f"{location!r} (expected mbr)")
        loader = el.text.strip()
        if loader not in ("", "grub2"):
            self.refuse(el, "bootloader", f"{loader!r} is not supported: xenspin boots with GRUB 2 (expected grub2)")
        if self.flag(el, "write-boot-entry", False):
            self.warn(
                el,
                "bootloader@write-boot-entry",
                "xenspin writes no UEFI boot entry: the firmware finds GRUB at the removable path EFI/BOOT/BOOTX64.EFI",
            )
        self.unknown_attrs(el, ("location", "write-boot-entry"))

    def el_network_backend(self, el: El) -> None:
        backend = el.text.strip()
        if backend in ("openvswitch", "vswitch"):
            self.refuse(
                el,
                "network-backend",
                f"{backend!r} is not supported: this distribution carries no Open vSwitch; use bridge",
            )
        if backend != "bridge":
            self.refuse(el, "network-backend", f"{backend!r} (expected bridge)")

    def el_name_server(self, el: El) -> None:
        self.dns.append(self.node(el.text.strip(), el))

    el_nameserver = el_name_server

    def el_admin_interface(self, el: El) -> None:
        self.network.update(_admin_interface(self, el))

    # --- time ---------------------------------------------------------------------------

    def el_ntp(self, el: El) -> None:
        """<ntp>, <ntp-server> and <ntp-servers> are read together, before the loop (read_time)."""

    el_ntp_server = el_ntp_servers = el_ntp

    def el_time_config_method(self, el: El) -> None:
        method = el.text.strip().lower()
        if method != "ntp":
            self.warn(
                el,
                el.tag,
                f"{method!r}: a xenspin host keeps its time with systemd-timesyncd "
                '(to turn it off: <ntp source="none"/>)',
            )

    def read_time(self, root: El) -> Node | None:
        """The model's ntp: servers, [] (none), or None (DHCP's, else Debian's pool), as <ntp> and its servers say."""
        ntp = self.seen.get("ntp")
        servers = [c for c in root.children if c.tag in ("ntp-server", "ntp-servers")]
        if ntp is not None:
            servers += [c for c in ntp.children if c.tag in ("ntp-server", "ntp-servers")]
            for c in ntp.children:
                if c.tag not in ("ntp-server", "ntp-servers"):
                    self.warn(c, f"ntp/{c.tag}", "not an element of XenServer's answerfile format; ignored")
        if self.mode != "install":
            return None  # warned about with the other host settings
        source = "manual" if servers else "default"
        if ntp is not None:
            given = {a: ntp.attrs[a] for a in ("source", "mode") if a in ntp.attrs}
            if len(set(given.values())) > 1:
                self.refuse(ntp, "ntp", "source= and mode= disagree (expected one of them)")
            if not given:
                self.refuse(ntp, "ntp@source", "missing (expected dhcp, default, manual or none)")
            source = next(iter(given.values()))
            self.unknown_attrs(ntp, ("source", "mode"))
        if source not in ("dhcp", "default", "manual", "none"):
            self.refuse(ntp, "ntp@source", f"{source!r} (expected dhcp, default, manual or none)")
        if servers and source != "manual":
            self.refuse(
                servers[0],
                servers[0].tag,
                f'given with <ntp source="{source}"> (expected source="manual", as in XenServer)',
            )
        if source == "manual":
            if not servers:
                self.refuse(ntp, "ntp", 'source="manual" names no <ntp-server> (expected at least one)')
            return Node([self.node(c.text.strip(), c) for c in servers], servers[0].line, self.file)
        if source == "none":
            return self.node([], ntp)
        admin = self.seen.get("admin-interface")
        dhcp = admin is None or admin.attrs.get("proto", "dhcp") == "dhcp"
        if source == "dhcp" and not dhcp:
            self.warn(
                ntp,
                "ntp@source",
                "'dhcp' with a static admin-interface: no lease names servers, so systemd-timesyncd uses "
                'Debian\'s pool (give <ntp-server> with source="manual" for your own)',
            )
        if source == "default" and ntp is not None and dhcp:
            self.warn(
                ntp,
                "ntp@source",
                "'default': systemd-timesyncd uses Debian's pool, but time servers a DHCP lease names come first",
            )
        return None


def _admin_interface(r: _Reader, el: El) -> dict[str, Node]:
    proto = el.attrs.get("proto", "dhcp")
    if proto == "none":
        r.refuse(el, "admin-interface@proto", "'none' (IPv6 only) is not supported (expected dhcp or static)")
    if proto not in ("dhcp", "static"):
        r.refuse(el, "admin-interface@proto", f"{proto!r} (expected dhcp or static)")
    out = {"mode": r.node(proto, el)}
    if "name" in el.attrs:
        out["interface"] = r.node(el.attrs["name"], el)
    elif "hwaddr" in el.attrs and proto == "static":
        r.refuse(
            el,
            "admin-interface@hwaddr",
            'is not read: xenspin names the interface (expected name="...", e.g. name="enp1s0")',
        )
    elif "hwaddr" in el.attrs:
        r.warn(el, "admin-interface@hwaddr", "not read: with dhcp every wired interface asks for a lease")
    if "vlan" in el.attrs:
        r.refuse(
            el,
            "admin-interface@vlan",
            "a tagged management VLAN is not supported (expected the management network untagged on the port)",
        )
    protov6 = el.attrs.get("protov6", "none")
    if protov6 == "static":
        r.refuse(
            el,
            "admin-interface@protov6",
            "'static' is not supported: xenspin writes no IPv6 address (expected none, dhcp or autoconf)",
        )
    if protov6 in ("dhcp", "autoconf"):
        r.warn(
            el,
            "admin-interface@protov6",
            f"{protov6!r}: IPv6 is as systemd-networkd sets it up, from router advertisements",
        )
    elif protov6 != "none":
        r.refuse(el, "admin-interface@protov6", f"{protov6!r} (expected none, dhcp or autoconf)")
    r.unknown_attrs(el, ("proto", "name", "hwaddr", "vlan", "protov6"))
    parts: dict[str, El] = {}
    for c in el.children:
        tag = {"ip": "ipaddr", "subnet-mask": "subnet"}.get(c.tag, c.tag)
        if tag in ("ipaddr", "subnet", "gateway"):
            parts[tag] = c
        elif c.tag in ("ipv6", "gatewayv6"):
            r.warn(c, f"admin-interface/{c.tag}", "not used: protov6 is not static")
        else:
            r.warn(c, f"admin-interface/{c.tag}", "not an element of XenServer's answerfile format; ignored")
    if proto == "static":
        for need in ("ipaddr", "subnet"):
            if need not in parts:
                r.refuse(el, f"admin-interface/{need}", "missing (expected for proto=static)")
        prefix = _prefix(parts["subnet"].text.strip())
        if prefix is None:
            c = parts["subnet"]
            r.refuse(c, "admin-interface/subnet", f"{c.text.strip()!r} (expected a netmask)")
        out["address"] = r.node(f"{parts['ipaddr'].text.strip()}/{prefix}", parts["ipaddr"])
        if "gateway" in parts:
            out["gateway"] = r.node(parts["gateway"].text.strip(), parts["gateway"])
    else:
        for c in parts.values():
            r.warn(c, f"admin-interface/{c.tag}", "not used: proto is dhcp")
    return out
