"""The distribution manifest: its model, loading with spins, and validation.

The dataclasses below are the single declaration of distro.yaml. The loader reads a
file and everything it `extends:`, loads each component's recipe, merges them by the
rules documented in docs/manifest.md, and builds the model; every error names a file and line.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from xenspin_installer.grammar import CONTROL, URL_CHAR, Grammar, optional, text_line

from . import config, dataschema, yamlfile
from .dataschema import field
from .errors import Loc, ManifestError, XenspinError
from .yamlfile import LDict, LList

# --- the model -------------------------------------------------------------------

# --- grammars: what each string may hold, by where it ends up ------------------------------
# Each is the loader's check and the schema's "pattern"; see xenspin_installer/grammar.py.

# Goes into /etc/hostname, file names, the ISO's file name and os-release's ID.
NAME = Grammar(r"[a-z0-9][a-z0-9.+-]{0,62}", "lowercase letters, digits, '-', '.', '+', at most 63")
# In the ISO's file name and os-release; {{ date }} is the only template (nothing else reaches Jinja2).
DATE = r"\{\{ *date *\}\}"
VERSION = Grammar(
    rf"([A-Za-z0-9]|{DATE})([A-Za-z0-9.+~_-]|{DATE}){{0,63}}",
    "letters, digits, '.', '+', '~', '_', '-' and {{ date }}, starting with a letter or digit",
)
# Double-quoted os-release values (a shell file) and text overlays put into /etc/issue (whose
# getty reads \ escapes): no ", \, $ or `. A description may hold ' ("ACME's Xen host").
VENDOR = text_line(128, '"\\$`')
DESCRIPTION = text_line(256, '"\\$`')
# A boot menu title: GRUB quotes it with ', ISOLINUX takes the rest of the line.
LABEL = text_line(64, "\"'\\$`")
ONE_LINE = text_line(256)
ENV_VALUE = text_line(4096)  # a step variable: one line, long enough for a list of packages
VOLUME_ID = Grammar(r"[A-Z0-9_]{1,32}", "1 to 32 of A-Z, 0-9, _")
# One path component once {name} and {version} are put in (they hold no /): no /, not . or ..
FILE_NAME = Grammar(r"(?![.-])[A-Za-z0-9._+~-]{1,255}", "a file name: A-Z a-z 0-9 . _ + ~ -, not starting with . or -")
FILE_NAME_TEMPLATE = Grammar(
    r"(?![.-])([A-Za-z0-9._+~-]|\{name\}|\{version\}){1,128}",
    "a file name: A-Z a-z 0-9 . _ + ~ -, {name} and {version}, not starting with . or -",
)
# A Xen or Linux command line as GRUB (unquoted words), ISOLINUX (the rest of the line, '---'
# splits mboot.c32's modules) and a double-quoted shell variable (/etc/default/grub.d) all read
# it the same: no quotes, $, ;, &, |, <, >, #, {, }, globs or control characters.
CMDLINE = Grammar(
    r"(?!(.* )?---( |$))[A-Za-z0-9_.,:=/+@%~() -]{0,1024}",
    "command line words of A-Z a-z 0-9 _ . , : = / + @ % ~ ( ) -, at most 1024 characters, no '---' word",
)
COMPONENT = Grammar(r"[a-z0-9][a-z0-9-]{0,63}", "lowercase letters, digits, '-'")
DEB_NAME = Grammar(r"[a-z0-9][a-z0-9+.-]{1,127}", "a Debian package name: a-z 0-9 + - .")
_ALT = r"[a-z0-9][a-z0-9+.-]{0,127}(:[a-z0-9-]{1,32})?( *\( *(<<|<=|=|>=|>>) *[A-Za-z0-9.+~:-]{1,128} *\))?"
# One Depends: item of DEBIAN/control: "a", "a (>= 1)", "a | b".
RELATION = Grammar(rf"{_ALT}( *\| *{_ALT}){{0,15}}", "a Debian package relation, e.g. foo (>= 1.0) | bar")
DEB_VERSION = Grammar(r"([0-9]{1,9}:)?[A-Za-z0-9][A-Za-z0-9.+~-]{0,127}", "a Debian version, e.g. 4.17.5-1")
STEP_NAME = Grammar(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", "letters, digits, '.', '_', '-'")
SCRIPT = Grammar(r"[^\x00]*", "a shell script (no NUL characters)")
ENV_NAME = Grammar(r"[A-Z][A-Z0-9_]{0,63}", "an upper-case shell variable name, e.g. PACKAGES")
# What xenspin itself gives every step: a recipe's env: cannot change them.
STEP_ENV = (
    "SRC",
    "SRCPKG",
    "OUT",
    "DEBS",
    "DEPS",
    "PATCHES",
    "BUILD",
    "HOME",
    "JOBS",
    "LC_ALL",
    "SOURCE_DATE_EPOCH",
    "PATH",
)
# Relative, no ".." part: it names a file the step left under $OUT.
OUT_PATH = Grammar(rf"(?!/)(?!(.*/)?\.\.(/|$))[^{CONTROL}]{{1,4096}}", "a path inside $OUT")
# Manifest paths are confined after resolving (manifest.confine); the grammar keeps them one line.
PATH = Grammar(f"[^{CONTROL}]{{0,4096}}", "a path without control characters")
# A URL is a single word of sources.list, a git or curl argument: a scheme, no spaces or quotes.
# No file:// URLs: in a manifest or recipe that would be a host path, read by the host for
# whoever wrote the spin. The user maps a URL to a local copy with --mirror or config mirrors.
URL = Grammar(rf"https?://{URL_CHAR}{{1,2048}}", "an http:// or https:// URL (map it to a local copy with --mirror)")
GIT_URL = Grammar(
    rf"(https?|git|ssh)://{URL_CHAR}{{1,2048}}|[A-Za-z0-9._-]{{1,64}}@[A-Za-z0-9.-]{{1,255}}:(?!-){URL_CHAR}{{1,2048}}",
    "a git URL: http(s)://, git://, ssh:// or user@host:path (map it to a local copy with --mirror)",
)
# A git argument: never an option (leading -), never a range (..).
REF = Grammar(r"(?!-)(?!.*\.\.)[A-Za-z0-9._/+@,=%-]{1,255}", "a branch, tag or commit, not starting with -")
SHA256 = Grammar(r"[0-9a-f]{64}", "64 lowercase hex digits")
SUITE = Grammar(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}", "a suite name, e.g. bookworm-security")
AREA = Grammar(r"[a-z0-9][a-z0-9-]{0,63}", "an archive area, e.g. main")
# An SPDX licence expression; AND binds before OR, as in Debian's copyright format, so none
# needs parentheses (that format has none). Written into each package's copyright file.
_SPDX_ID = r"(?!(?:AND|OR|WITH)(?: |$))[A-Za-z0-9.+-]{1,64}"
_SPDX_TERM = rf"{_SPDX_ID}(?: WITH {_SPDX_ID})?"
LICENSE = Grammar(
    rf"{_SPDX_TERM}(?: (?:AND|OR) {_SPDX_TERM}){{0,15}}",
    "an SPDX licence expression without parentheses, e.g. GPL-2.0-only or LGPL-2.1-only WITH OCaml-LGPL-linking-exception",
)
# A Debian archive section, maybe in an area: admin, kernel, contrib/net.
SECTION = Grammar(
    r"(?:(?:contrib|non-free|non-free-firmware)/)?[a-z][a-z0-9-]{0,31}", "a Debian section, e.g. admin or kernel"
)
# A package description: the synopsis, then maybe the extended description's lines (a YAML block).
PACKAGE_DESCRIPTION = Grammar(
    rf"[^{CONTROL}]{{0,200}}(?:\n[^{CONTROL}]{{0,200}}){{0,100}}\n?",
    "a one-line synopsis of at most 200 characters, then maybe lines of the extended description",
)


@dataclass(frozen=True)
class Verify:
    """Signatures a source must carry, checked against the named keys only."""

    keys: list[Annotated[str, PATH]] = field(
        "armored OpenPGP public key files, relative to the file naming them", factory=list, path=True
    )
    tag: bool = field("the git ref must be a tag signed by one of the keys", False)
    commit: bool = field("the locked git commit must be signed by one of the keys", False)
    signature: Annotated[str, optional(URL)] = field("URL of a detached OpenPGP signature of the tarball", "")


@dataclass(frozen=True)
class GitSource:
    """A git repository at a branch, tag or commit."""

    DISCRIMINATED = True
    git: Annotated[str, GIT_URL] = field("repository URL (mirrors may rewrite it)")
    ref: Annotated[str, REF] = field("branch, tag or commit to build", "HEAD")
    verify: Verify | None = field("signatures required", None)

    @property
    def kind(self) -> str:
        return "git"


@dataclass(frozen=True)
class TarballSource:
    """A source tarball fetched over HTTP and unpacked."""

    DISCRIMINATED = True
    url: Annotated[str, URL] = field("tarball URL (mirrors may rewrite it)")
    sha256: Annotated[str, optional(SHA256)] = field("expected sha256; empty means trust on first lock", "")
    verify: Verify | None = field("signatures required", None)

    @property
    def kind(self) -> str:
        return "tarball"


@dataclass(frozen=True)
class PrebuiltSource:
    """A file fetched over HTTP and used as it is (not unpacked)."""

    DISCRIMINATED = True
    prebuilt: Annotated[str, URL] = field("artifact URL (mirrors may rewrite it)")
    sha256: Annotated[str, optional(SHA256)] = field("expected sha256; empty means trust on first lock", "")
    verify: Verify | None = field("signatures required", None)

    @property
    def kind(self) -> str:
        return "prebuilt"


@dataclass(frozen=True)
class DebianSource:
    """A Debian source package from the base archive, verified through the archive's signed index."""

    DISCRIMINATED = True
    debian: Annotated[str, DEB_NAME] = field("source package name")
    version: Annotated[str, optional(DEB_VERSION)] = field("exact version; empty means the suite's current one", "")

    @property
    def kind(self) -> str:
        return "debian"


@dataclass(frozen=True)
class ArchiveSource:
    """Binary packages taken from the base archive unchanged."""

    DISCRIMINATED = True
    archive: list[Annotated[str, DEB_NAME]] = field("binary package names")

    @property
    def kind(self) -> str:
        return "archive"


@dataclass(frozen=True)
class PathSource:
    """A source tree kept in this repository."""

    DISCRIMINATED = True
    path: Annotated[str, PATH] = field("directory, relative to the file naming it", path=True)

    @property
    def kind(self) -> str:
        return "path"


@dataclass(frozen=True)
class ComponentSource:
    """Another component's locked source, built again by this recipe: one source, locked once.

    How Xen's tools come from the very tree its hypervisor is built from.
    """

    DISCRIMINATED = True
    component: Annotated[str, COMPONENT] = field("the component whose source this one builds from")

    @property
    def kind(self) -> str:
        return "component"


Source = GitSource | TarballSource | PrebuiltSource | DebianSource | ArchiveSource | PathSource | ComponentSource
# Source kinds a recipe can build from (another component may share them).
BUILDABLE = ("git", "tarball", "debian", "path")


@dataclass(frozen=True)
class Step:
    """One build command, run in the build root with $SRC read-only and $OUT writable."""

    name: Annotated[str, STEP_NAME] = field("short name, used for the log file")
    run: Annotated[str, SCRIPT] = field("shell script run by /bin/sh -e")


@dataclass(frozen=True)
class Package:
    """How the staged output tree becomes a Debian package."""

    name: Annotated[str, DEB_NAME] = field("binary package name")
    depends: list[Annotated[str, RELATION]] = field("runtime dependencies (Debian package relations)", factory=list)
    provides: list[Annotated[str, RELATION]] = field("virtual packages it stands for (Provides:)", factory=list)
    conflicts: list[Annotated[str, RELATION]] = field(
        "packages that cannot be installed beside it (Conflicts:)", factory=list
    )
    replaces: list[Annotated[str, RELATION]] = field("packages whose files it takes over (Replaces:)", factory=list)
    description: Annotated[str, PACKAGE_DESCRIPTION] = field(
        "the synopsis, a line; the lines after it (a YAML block) open the extended description, which xenspin"
        " ends with where the package was built from",
        "",
    )
    section: Annotated[str, SECTION] = field("Debian archive section (Section:), e.g. admin, kernel", "misc")
    priority: Literal["required", "important", "standard", "optional"] = field(
        "Debian priority (Priority:)", "optional"
    )


@dataclass(frozen=True)
class Component:
    """One part of the distribution: where its source is and how it is built."""

    source: Source = field("where the source comes from")
    description: Annotated[str, ONE_LINE] = field("what the component is", "")
    license: Annotated[str, optional(LICENSE)] = field(
        "the upstream licence, an SPDX expression (AND binds before OR); its package's copyright file says it"
        " (empty: not stated)",
        "",
    )
    optional: bool = field("a build may leave it out when its source cannot be had (--strict refuses)", False)
    build_depends: list[Annotated[str, DEB_NAME]] = field("Debian packages in the build root", factory=list)
    after: list[Annotated[str, COMPONENT]] = field("components that must be built first", factory=list)
    steps: list[Step] = field("build commands, in order", factory=list)
    patches: list[Annotated[str, PATH]] = field(
        "patch files, relative to the file naming them; the steps find them at $PATCHES as 01-NAME, 02-NAME, ...",
        factory=list,
        path=True,
    )
    env: dict[Annotated[str, ENV_NAME], Annotated[str, ENV_VALUE]] = field(
        "variables the steps see beside xenspin's own ($SRC, $OUT, ...), e.g. which packages of the source to build",
        factory=dict,
    )
    build_only: bool = field(
        "its packages serve the builds after it (they find them at $DEPS) and are never installed or shipped", False
    )
    outputs: list[Annotated[str, OUT_PATH]] = field(
        "paths under $OUT that a successful build must produce", factory=list
    )
    package: Package | None = field("package the staged $OUT tree as this .deb", None)
    debs: list[Annotated[str, DEB_NAME]] = field(
        "packages the steps build themselves into $DEBS (e.g. with dpkg-buildpackage); nothing else may be there",
        factory=list,
    )
    setuid: list[Annotated[str, OUT_PATH]] = field("paths under $OUT allowed to be setuid or setgid", factory=list)
    recipe: Annotated[str, PATH] = field(
        "the recipe file (default components/NAME.yaml beside the file naming it)", "", path=True
    )

    def check(self, raw: LDict, path: str) -> None:
        """Step names name log files: each once (their grammar is checked as they are read); env names none of
        xenspin's own variables."""
        seen: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            if step.name in seen:
                loc = raw["steps"][i].loc_of("name")
                raise ManifestError(
                    loc, f"{path}.steps[{i}].name", f"{step.name!r} again (steps[{seen[step.name]}] has it)"
                )
            seen[step.name] = i
        for name in self.env:
            if name in STEP_ENV:
                raise ManifestError(raw["env"].loc_of(name), f"{path}.env.{name}", "is set by xenspin for every step")


@dataclass(frozen=True)
class Update:
    """A suite laid over the base suite: its packages win when their version is higher."""

    suite: Annotated[str, SUITE] = field("suite name, e.g. bookworm-security")
    mirror: Annotated[str, optional(URL)] = field("its archive URL (empty: the base mirror)", "")


@dataclass(frozen=True)
class Base:
    """The Debian archive the distribution is made from."""

    suite: Annotated[str, SUITE] = field("Debian suite", "bookworm")
    mirror: Annotated[str, URL] = field("archive URL", "http://deb.debian.org/debian")
    keyring: Annotated[str, PATH] = field(
        "keyring that signs the archive's InRelease", "/usr/share/keyrings/debian-archive-keyring.gpg", path=True
    )
    architecture: Literal["amd64"] = field("Debian architecture", "amd64")
    areas: list[Annotated[str, AREA]] = field("archive areas", factory=lambda: ["main"])
    updates: list[Update] = field(
        "suites over the base one (security, stable updates), same keyring and areas", factory=list
    )

    def archives(self) -> list[tuple[str, str]]:
        """(mirror, suite) of the base suite, then of each update suite."""
        return [(self.mirror, self.suite)] + [(u.mirror or self.mirror, u.suite) for u in self.updates]


@dataclass(frozen=True)
class Rootfs:
    """The dom0 root filesystem."""

    variant: Literal["essential", "apt", "required", "minbase", "important", "standard"] = field(
        "mmdebstrap variant", "minbase"
    )
    packages: list[Annotated[str, DEB_NAME]] = field("archive packages installed besides the components", factory=list)
    overlays: list[Annotated[str, PATH]] = field(
        "directories laid over the tree (*.j2 files rendered)", factory=list, path=True
    )
    hooks: list[Annotated[str, PATH]] = field(
        "scripts run after the packages are in, in a sandbox with the tree as / (and $1), no network",
        factory=list,
        path=True,
    )
    hooks_network: bool = field("give the hooks the network (default: none)", False)
    compression: Literal["zstd", "xz", "gzip"] = field("squashfs compression", "zstd")
    compression_level: int = field("squashfs compression level (0: xenspin's default for the compression)", 0)
    setuid: list[Annotated[str, PATH]] = field(
        "absolute paths in the image (/usr/bin/x) that overlay files or hooks may make setuid or setgid", factory=list
    )

    def check(self, raw: LDict, path: str) -> None:
        """setuid: names absolute, normalised paths of the image."""
        for i, item in enumerate(self.setuid):
            parts = item.split("/")
            if parts[0] or not item.isprintable() or any(p in ("", ".", "..") for p in parts[1:]):
                raise ManifestError(
                    raw["setuid"].loc_of(i),
                    f"{path}.setuid[{i}]",
                    f"{item!r} (expected an absolute path in the image, such as /usr/bin/tool, without '..')",
                )


@dataclass(frozen=True)
class Installer:
    """The installer that runs in dom0 from the ISO."""

    component: Annotated[str, COMPONENT] = field("the component that provides the installer", "installer")
    answerfile: Annotated[str, PATH] = field("answerfile built into the ISO for unattended installs", "", path=True)


@dataclass(frozen=True)
class Boot:
    """How the ISO boots Xen."""

    bios: bool = field("boot on BIOS machines (El Torito, isohybrid)", True)
    uefi: bool = field("boot on UEFI machines", True)
    timeout: int = field("seconds the boot menu waits", 5)
    serial: bool = field("menu and consoles on the first serial port too", True)
    xen_cmdline: Annotated[str, CMDLINE] = field(
        "Xen command line", "console=com1,vga com1=115200 dom0_mem=1024M,max:1024M"
    )
    dom0_cmdline: Annotated[str, CMDLINE] = field("dom0 kernel command line", "console=hvc0")


@dataclass(frozen=True)
class Iso:
    """The installer ISO."""

    volume_id: Annotated[str, VOLUME_ID] = field("ISO volume id (at most 32 of A-Z 0-9 _)", "XENSPIN")
    label: Annotated[str, LABEL] = field("title shown in the boot menu", "xenspin")
    filename: Annotated[str, FILE_NAME_TEMPLATE] = field(
        "output file name, {name} and {version} substituted", "{name}-{version}-amd64.iso"
    )
    boot: Boot = field("boot settings", factory=Boot)


@dataclass(frozen=True)
class Xen:
    """Xen's two halves, checked to come from one Xen source: xl must speak its hypervisor's interface."""

    hypervisor: Annotated[str, COMPONENT] = field("the component that ships the hypervisor", "xen")
    tools: Annotated[str, COMPONENT] = field(
        "the component that ships xl, libxenlight, xenstored and the hotplug scripts", "xen-tools"
    )
    mixed: bool = field(
        "allow the hypervisor and the tools to come from different Xen sources or versions (xl may not start guests)",
        False,
    )


@dataclass(frozen=True)
class Nightly:
    """What `xenspin build --nightly` keeps: dated builds under OUT/nightly, the oldest dropped once a new one is complete."""

    keep: int = field("how many nightly builds to keep (at least 1; `build --keep N` overrides it)", 7)

    def check(self, raw: LDict, path: str) -> None:
        if self.keep < 1:
            where = f"{path}.keep" if path else "keep"
            raise ManifestError(raw.loc_of("keep"), where, f"got {self.keep} (expected at least 1)")


@dataclass(frozen=True)
class Distro:
    """A Xen distribution: the top level of distro.yaml or a spin."""

    name: Annotated[str, NAME] = field("distribution name (lowercase letters, digits, - and .)")
    version: Annotated[str, VERSION] = field("version; {{ date }} renders as the build date (YYYYMMDD)")
    components: dict[Annotated[str, COMPONENT], Component] = field("the components by name")
    vendor: Annotated[str, VENDOR] = field("who makes it", "")
    description: Annotated[str, DESCRIPTION] = field("one line about it", "")
    extends: Annotated[str, PATH] = field("a manifest this one overrides (a spin)", "", path=True)
    base: Base = field("the Debian archive", factory=Base)
    rootfs: Rootfs = field("the dom0 root filesystem", factory=Rootfs)
    installer: Installer = field("the installer", factory=Installer)
    iso: Iso = field("the installer ISO", factory=Iso)
    xen: Xen = field("which components are Xen's hypervisor and tools", factory=Xen)
    nightly: Nightly = field("nightly builds (`xenspin build --nightly`)", factory=Nightly)

    def check(self, raw: LDict, path: str) -> None:
        """Checks across fields: references between components, cycles (each field's grammar is checked as read)."""
        comps = raw.get("components", LDict(raw.loc))
        for name, comp in self.components.items():
            for i, dep in enumerate(comp.after):
                if dep not in self.components:
                    after = comps[name]["after"]
                    hint = dataschema.did_you_mean(dep, list(self.components))
                    raise ManifestError(
                        after.loc_of(i), f"components.{name}.after[{i}]", f"names no component {dep!r}{hint}"
                    )
        owners: dict[str, str] = {}
        for name, comp in self.components.items():
            if comp.package is None:
                continue
            other = owners.setdefault(comp.package.name, name)
            if other != name:
                loc = comps[name]["package"].loc_of("name")
                raise ManifestError(
                    loc, f"components.{name}.package.name", f"{comp.package.name!r} is also {other}'s package"
                )
        cycle = find_cycle({n: c.after for n, c in self.components.items()})
        if cycle:
            first = cycle[0]
            raise ManifestError(
                comps[first].loc_of("after"), f"components.{first}.after", "dependency cycle: " + " -> ".join(cycle)
            )
        if self.installer.component not in self.components:
            inst = raw.get("installer")
            loc = inst.loc_of("component") if isinstance(inst, LDict) else raw.loc
            hint = dataschema.did_you_mean(self.installer.component, list(self.components))
            raise ManifestError(loc, "installer.component", f"names no component {self.installer.component!r}{hint}")
        for name, comp in self.components.items():
            if isinstance(comp.source, ComponentSource):
                self._check_shared(name, comp.source.component, comps[name])
        self._check_xen(raw)

    def _check_shared(self, name: str, other: str, raw: LDict) -> None:
        """source: {component: X} names another component whose source is one a recipe can build."""
        loc = raw["source"].loc_of("component")
        where = f"components.{name}.source.component"
        if other not in self.components or other == name:
            hint = dataschema.did_you_mean(other, [n for n in self.components if n != name])
            raise ManifestError(loc, where, f"names no other component {other!r}{hint}")
        kind = self.components[other].source.kind
        if kind not in BUILDABLE:
            raise ManifestError(
                loc,
                where,
                f"{other}'s source is {kind}: (expected a component whose source is one of {', '.join(BUILDABLE)})",
            )

    def _check_xen(self, raw: LDict) -> None:
        """The hypervisor and the tools come from one Xen source, unless xen.mixed says otherwise.

        Decided here when the sources say it (a shared `component:` source, or two different
        kinds); two archive sources are compared at lock time, where their versions are known.
        """
        xen, comps = self.xen, raw.get("components", LDict(raw.loc))
        given = raw.get("xen") if isinstance(raw.get("xen"), LDict) else None
        if given is None and xen.hypervisor not in self.components:
            return  # no Xen at all (a manifest of other components)
        for role in ("hypervisor", "tools"):
            name = getattr(xen, role)
            if name not in self.components and not (role == "tools" and xen.mixed):
                if given is not None and role in given:
                    loc = given.loc_of(role)
                else:  # the default names: point at the half that is there
                    loc = comps.loc_of(xen.hypervisor) if xen.hypervisor in comps else raw.loc
                hint = dataschema.did_you_mean(name, list(self.components))
                raise ManifestError(
                    loc,
                    f"xen.{role}",
                    f"names no component {name!r}{hint} (expected the component that ships the Xen {role})",
                )
        if xen.mixed or xen.tools not in self.components:
            return
        hv, tools = self.components[xen.hypervisor].source, self.components[xen.tools].source
        if hv.kind == tools.kind == "archive":
            return
        if isinstance(tools, ComponentSource) and tools.component in (xen.hypervisor, getattr(hv, "component", None)):
            return  # the tools build the hypervisor's own source, or both share a third's
        loc = comps[xen.tools].loc_of("source")
        raise ManifestError(
            loc,
            f"components.{xen.tools}.source",
            f"the Xen tools ({source_words(tools)}) and the hypervisor {xen.hypervisor} ({source_words(hv)}) "
            f"come from different Xen sources (expected source: {{component: {xen.hypervisor}}}, "
            "or xen.mixed: true to allow it)",
        )

    def origin(self, name: str) -> str:
        """The component whose lock entry pins name's source: itself, unless its source is `component: OTHER`."""
        source = self.components[name].source
        return source.component if isinstance(source, ComponentSource) else name

    @property
    def iso_filename(self) -> str:
        return self.iso.filename.format(name=self.name, version=self.version)


def source_words(source: Source) -> str:
    """A source in a few words, for messages."""
    if isinstance(source, GitSource):
        return f"git {source.git} {source.ref}"
    if isinstance(source, TarballSource | PrebuiltSource):
        return f"{source.kind} {getattr(source, 'url', '') or getattr(source, 'prebuilt', '')}"
    if isinstance(source, DebianSource):
        return f"Debian source {source.debian} {source.version}".rstrip()
    if isinstance(source, ArchiveSource):
        return "archive " + ", ".join(source.archive)
    if isinstance(source, ComponentSource):
        return f"the source of {source.component}"
    return f"path {source.path}"


def find_cycle(graph: dict[str, list[str]]) -> list[str]:
    """A dependency cycle as [a, b, ..., a], or [] when the graph is acyclic."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for dep in graph.get(node, []):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and dep in graph:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def require_components(distro: Distro, names: list[str], what: str) -> None:
    """Refuse component names on the command line that the manifest does not have."""
    for name in names:
        if name not in distro.components:
            raise XenspinError(f"{what}: no component {name!r}{dataschema.did_you_mean(name, list(distro.components))}")


def build_order(distro: Distro) -> list[str]:
    """Components in an order where each comes after what it needs; ties by name."""
    done: list[str] = []
    pending = dict(sorted(distro.components.items()))
    while pending:
        ready = [n for n, c in pending.items() if all(d in done for d in c.after)]
        done.extend(ready)
        for n in ready:
            del pending[n]
    return done


# --- loading ---------------------------------------------------------------------


def load(path: Path | str) -> Distro:
    """Load a manifest (following extends:) into the model; ManifestError on bad input."""
    path = Path(path).absolute()
    raw, files = _load_chain(path, [], None)
    check_paths(Distro, raw, roots(files))
    distro = dataschema.parse_dataclass(Distro, raw, raw.loc, "")
    distro = dataclasses.replace(distro, version=_render_version(distro.version, raw))
    check_iso_filename(distro, raw)
    return distro


def chain_files(path: Path | str) -> list[Path]:
    """The manifest file and every manifest it extends (path first): what a copy of the project must hold."""
    return _load_chain(Path(path).absolute(), [], None)[1]


def check_iso_filename(distro: Distro, raw: LDict) -> None:
    """The ISO's file name as it will be written: one path component, whatever {name} and {version} hold."""
    name = distro.iso_filename
    if not FILE_NAME.ok(name):
        iso = raw.get("iso")
        loc = iso.loc_of("filename") if isinstance(iso, LDict) else raw.loc
        raise ManifestError(loc, "iso.filename", f"becomes {FILE_NAME.refusal(name)}")


# --- confinement -------------------------------------------------------------------

MANIFEST_SUFFIXES = (".yaml", ".yml")
# Keyrings the system's packages install; the archive keyring lives here.
SYSTEM_KEYRINGS = (Path("/usr/share/keyrings"),)
# What each path field must name once it exists (validate refuses a missing overlay or hook).
PATH_KINDS = {
    "overlays": "dir",
    "path": "dir",
    "hooks": "file",
    "answerfile": "file",
    "keys": "file",
    "patches": "file",
}


def roots(files: list[Path]) -> tuple[Path, ...]:
    """The directories files named by a manifest may lie under: those of the manifests in its extends chain."""
    return tuple(dict.fromkeys(Path(os.path.realpath(f.parent)) for f in files))


def confined(path: str, allowed: tuple[Path, ...]) -> bool:
    """Whether path, after resolving symlinks, lies under one of the allowed directories."""
    real = Path(os.path.realpath(path))
    return any(real == r or r in real.parents for r in allowed)


def confine(path: str, allowed: tuple[Path, ...], loc: Loc, field: str) -> None:
    """Refuse a path outside the project: `../../../etc`, `/etc`, an in-tree symlink to /etc."""
    if not confined(path, allowed):
        where = ", ".join(str(r) for r in allowed)
        raise ManifestError(loc, field, f"{path} lies outside the project (expected a path under {where})")


def check_paths(tp: Any, value: Any, allowed: tuple[Path, ...], path: str = "") -> None:
    """Every path field under value (made absolute by resolve_paths) confined to allowed, and there."""
    args = dataschema.union_args(tp)
    if args is not None:
        members = [a for a in args if a is not type(None)]
        if isinstance(value, LDict) and all(dataclasses.is_dataclass(m) for m in members) and len(members) > 1:
            members = [m for m in members if dataschema.discriminator(m) in value][:1]
        for m in members:
            check_paths(m, value, allowed, path)
        return
    if get_origin(tp) is dict and isinstance(value, LDict):
        for k, v in value.items():
            check_paths(get_args(tp)[1], v, allowed, f"{path}.{k}")
    elif get_origin(tp) is list and isinstance(value, LList):
        for i, v in enumerate(value):
            check_paths(get_args(tp)[0], v, allowed, f"{path}[{i}]")
    elif dataclasses.is_dataclass(tp) and isinstance(value, LDict):
        for f, ftp in dataschema.fields_of(tp):
            key = dataschema.yaml_key(f)
            if key not in value or key == "extends":  # extends is checked as the chain is read
                continue
            sub = f"{path}.{key}" if path else key
            if not f.metadata.get("path"):
                check_paths(ftp, value[key], allowed, sub)
                continue
            items = list(enumerate(value[key])) if isinstance(value[key], LList) else [(None, value[key])]
            for i, item in items:
                if not isinstance(item, str) or not item:
                    continue  # the model reports the wrong type
                loc = value[key].loc_of(i) if i is not None else value.loc_of(key)
                name = sub if i is None else f"{sub}[{i}]"
                extra = SYSTEM_KEYRINGS if key == "keyring" else ()
                confine(item, allowed + extra, loc, name)
                _check_exists(item, PATH_KINDS.get(key), loc, name)


def _check_exists(path: str, kind: str | None, loc: Loc, field: str) -> None:
    if kind is None:
        return
    p = Path(path)
    ok = p.is_dir() if kind == "dir" else p.is_file()
    if not ok:
        what = "does not exist" if not p.exists() else f"is not a {'directory' if kind == 'dir' else 'file'}"
        raise ManifestError(loc, field, f"{path} {what} (expected a {'directory' if kind == 'dir' else 'file'})")


def _require_manifest(doc: LDict, cls: type, what: str) -> None:
    """A file with no known top-level field is no manifest at all: say so without echoing a byte of it."""
    known = {dataschema.yaml_key(f) for f, _ in dataschema.fields_of(cls)}
    if not any(k in known or k[:-1] in known for k in doc):
        raise ManifestError(
            Loc(doc.loc.file, doc.loc.line),
            "",
            f"not a {what}: no known top-level field (expected some of {', '.join(sorted(known))})",
        )


# --- the chain ---------------------------------------------------------------------


def _load_chain(path: Path, chain: list[Path], via: tuple[Loc, str] | None) -> tuple[LDict, list[Path]]:
    """The merged document of path and what it extends, and the files of that chain (path first)."""
    if path in chain:
        names = " -> ".join(p.name for p in chain[chain.index(path) :] + [path])
        raise ManifestError(via[0], via[1], f"extends cycle: {names}")  # type: ignore[index]
    if via is not None:
        if path.is_dir():
            raise ManifestError(via[0], via[1], f"{path} is a directory (expected a manifest file)")
        if path.suffix not in MANIFEST_SUFFIXES:
            # Refused before a byte is read: extends: /etc/shadow must not even be opened.
            raise ManifestError(via[0], via[1], f"{path} is not a manifest file (expected a .yaml or .yml file)")
        if not path.is_file():
            raise ManifestError(via[0], via[1], f"{path} does not exist (expected a manifest file)")
    doc = yamlfile.load(path)
    _require_manifest(doc, Distro, "xenspin manifest")
    resolve_paths(Distro, doc, path.parent)
    base: LDict | None = None
    below: list[Path] = []
    ext = doc.get("extends")
    if ext is not None:
        if not isinstance(ext, str) or not ext:
            raise ManifestError(doc.loc_of("extends"), "extends", "expected a path to a manifest file")
        base, below = _load_chain(Path(ext), chain + [path], (doc.loc_of("extends"), "extends"))
    _load_recipes(doc, base, path, roots(chain + [path] + below))
    merged = merge(base, doc, ()) if base is not None else merge(LDict(doc.loc), doc, ())
    return merged, [path] + below


def _load_recipes(doc: LDict, base: LDict | None, path: Path, allowed: tuple[Path, ...]) -> None:
    """Replace each component entry of doc by its recipe with the entry's fields on top."""
    comps = doc.get("components")
    if not isinstance(comps, LDict):
        return  # the model reports the wrong type
    known = base.get("components", {}) if base is not None else {}
    for name, entry in list(comps.items()):
        where = f"components.{name}"
        if not COMPONENT.ok(name):  # before the name becomes the path of its recipe
            raise ManifestError(comps.loc_of(name), where, COMPONENT.refusal(name))
        if entry is None:
            if base is None:
                raise ManifestError(
                    comps.loc_of(name), where, "is empty (expected a mapping; use {} for a recipe's defaults)"
                )
            if name not in known:
                hint = dataschema.did_you_mean(name, list(known))
                raise ManifestError(comps.loc_of(name), where, f"removes no component{hint}")
            continue
        if not isinstance(entry, LDict):
            continue
        recipe = entry.get("recipe")
        if recipe is None and (name in known or "source" in entry):
            continue
        if recipe is None:
            recipe = str(path.parent / "components" / f"{name}.yaml")
            if not Path(recipe).is_file():
                raise ManifestError(
                    comps.loc_of(name),
                    where,
                    f"no recipe {Path(recipe)} (expected that file, a recipe: path or a source:)",
                )
        if not isinstance(recipe, str):
            raise ManifestError(entry.loc_of("recipe"), where + ".recipe", "expected a path to a recipe file")
        rpath = Path(recipe)
        rloc = entry.loc_of("recipe") if "recipe" in entry else comps.loc_of(name)
        if rpath.suffix not in MANIFEST_SUFFIXES:
            raise ManifestError(
                rloc, where + ".recipe", f"{rpath} is not a recipe file (expected a .yaml or .yml file)"
            )
        confine(str(rpath), allowed, rloc, where + ".recipe")
        if not rpath.is_file():
            what = "is a directory" if rpath.is_dir() else "does not exist"
            raise ManifestError(entry.loc_of("recipe"), where + ".recipe", f"{rpath} {what} (expected a recipe file)")
        rdoc = yamlfile.load(rpath)
        _require_manifest(rdoc, Component, "recipe")
        resolve_paths(Component, rdoc, rpath.parent)
        rdoc.put("recipe", str(rpath), rdoc.loc)
        over = LDict(entry.loc)
        for k, v in entry.items():
            if k != "recipe":
                over.put(k, v, entry.loc_of(k), entry.raw.get(k))
        # A recipe given in a spin replaces the component; otherwise the entry refines its recipe.
        comps.put(name, merge(rdoc, over, ("components", name)), comps.loc_of(name))


def resolve_paths(tp: Any, value: Any, base: Path) -> None:
    """Make every path field under value absolute against base (the directory of its file)."""
    args = dataschema.union_args(tp)
    if args is not None:
        members = [a for a in args if a is not type(None)]
        if isinstance(value, LDict) and all(dataclasses.is_dataclass(m) for m in members) and len(members) > 1:
            members = [m for m in members if dataschema.discriminator(m) in value][:1]
        for m in members:
            resolve_paths(m, value, base)
        return
    if get_origin(tp) is dict and isinstance(value, LDict):
        for v in value.values():
            resolve_paths(get_args(tp)[1], v, base)
    elif get_origin(tp) is list and isinstance(value, LList):
        for v in value:
            resolve_paths(get_args(tp)[0], v, base)
    elif dataclasses.is_dataclass(tp) and isinstance(value, LDict):
        for f, ftp in dataschema.fields_of(tp):
            key = dataschema.yaml_key(f)
            for k in (key, key + "+", key + "-"):
                if k not in value:
                    continue
                if f.metadata.get("path"):
                    value[k] = _absolute(value[k], base)
                else:
                    resolve_paths(ftp, value[k], base)


def _absolute(value: Any, base: Path) -> Any:
    if isinstance(value, str) and value and "://" not in value:
        return os.path.normpath(base / os.path.expanduser(value))
    if isinstance(value, LList):
        for i, v in enumerate(value):
            value[i] = _absolute(v, base)
    return value


def _atomic(path: tuple[str, ...]) -> bool:
    """Values replaced whole rather than merged: a component's source is one thing."""
    return len(path) == 3 and path[0] == "components" and path[2] == "source"


def merge(base: LDict, over: LDict, path: tuple[str, ...]) -> LDict:
    """over laid on base: mappings merge, lists and scalars replace, KEY+ appends, KEY- removes, null deletes."""
    out = LDict(base.loc)
    for k, v in base.items():
        out.put(k, v, base.loc_of(k), base.raw.get(k))
    for key, value in over.items():
        loc = over.loc_of(key)
        dotted = ".".join(path + (key,))
        if key[-1:] in ("+", "-") and len(key) > 1:
            name, op = key[:-1], key[-1]
            if not isinstance(value, LList):
                raise ManifestError(
                    loc,
                    dotted,
                    f"got {dataschema.kind_of(value)} (expected a list to {'append' if op == '+' else 'remove'})",
                )
            current = out.get(name)
            if current is not None and not isinstance(current, LList):
                raise ManifestError(
                    loc, dotted, f"the file extended has {dataschema.kind_of(current)} for {name} (expected a list)"
                )
            new = LList(loc)
            for i, item in enumerate(current or []):
                if op == "+" or item not in value:
                    new.push(item, current.loc_of(i), current.raw[i])
            if op == "+":
                for i, item in enumerate(value):
                    new.push(item, value.loc_of(i), value.raw[i])
            else:
                for i, item in enumerate(value):
                    if item not in (current or []):
                        raise ManifestError(
                            value.loc_of(i), f"{dotted}[{i}]", f"removes {item!r}, which {name} does not hold"
                        )
            out.put(name, new, loc)
        elif value is None and key in out:
            del out[key]
        elif isinstance(value, LDict) and not _atomic(path + (key,)):
            under = out.get(key)
            under = under if isinstance(under, LDict) else LDict(value.loc)
            out.put(key, merge(under, value, path + (key,)), loc)
        else:
            out.put(key, value, loc, over.raw.get(key))
    return out


def build_date() -> str:
    """What {{ date }} renders as (YYYYMMDD, UTC): $SOURCE_DATE_EPOCH's day, else today; nightly dirs use it too."""
    stamp = config.epoch_from_env()
    when = (
        datetime.datetime.fromtimestamp(stamp, datetime.UTC)
        if stamp is not None
        else datetime.datetime.now(datetime.UTC)
    )
    return when.strftime("%Y%m%d")


def _render_version(version: str, raw: LDict) -> str:
    if "{" not in version:
        return version
    # Here, not at the top: only a templated version needs Jinja2, and every run loads manifests.
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    # A manifest is untrusted: its template renders in Jinja2's sandbox (no attribute or call
    # reaches Python's internals) and sees `date` and nothing else, not even Jinja2's globals.
    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
    env.globals.clear()
    try:
        return env.from_string(version).render(date=build_date())
    except SecurityError as e:
        why = f"refused by the template sandbox: {e}"
    except jinja2.TemplateSyntaxError as e:
        why = f"bad template: {e.message}"
    except jinja2.TemplateError as e:
        why = f"bad template: {e.message or type(e).__name__}"
    why = " ".join(why.split()).rstrip(".")  # one line, whatever the template held
    raise ManifestError(raw.loc_of("version"), "version", f"{why} (expected {{{{ date }}}} only)")


def json_schema() -> dict[str, Any]:
    """JSON Schema of one manifest file; required fields and references are checked after merging."""
    title = "xenspin manifest (distro.yaml, a spin, or a component recipe under $defs/Component)"
    return dataschema.document(Distro, "distro", title)[0]


def field_table_markdown() -> str:
    """The documentation's table of manifest fields, generated from the model."""
    return dataschema.markdown_table(Distro)
