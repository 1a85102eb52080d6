"""The dom0 root filesystem: locked .debs + built .debs + overlays + hooks -> squashfs, packages.json, boot/.

The stage is keyed by its inputs (the locked set, the built components' keys, the
overlays' and hooks' content, the manifest's rootfs, branding and boot sections, the
epoch and the format), so a spin that only changes an overlay recomposes the rootfs
without rebuilding a component. Composition runs offline from the store and as the
build account, never as the host's root: mmdebstrap's unshare mode installs the
packages in a user namespace, and in that namespace builder/intree.sh lays xenspin's
files and the overlays (one tar computed here), runs the spin's hooks, scrubs, exports
boot/ and writes the squashfs (mtimes clamped, sorted, reproducible). The host only
prepares data and takes plain files back.
"""

from __future__ import annotations

import io
import json
import shlex
import shutil
import stat
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from xenspin_installer import DISK_INITRD

from . import aptrepo, dataschema, debtree, lazyimport, overlays
from .context import Context
from .errors import XenspinError
from .lock import Lock
from .manifest import Distro
from .packagesets import LIVE_PACKAGES, stale_sets
from .packagesets import files as set_files
from .run import builder, give, grant
from .sources import module
from .stage import Needs, Pending, Stage, stage_key
from .store import Store, remove_tree, sha256_file, sha256_json

deb822 = lazyimport.module("debian.deb822")  # imported when the rootfs is composed (see builder/lazyimport.py)

FORMAT = 7  # what the stage writes; bump to recompose every rootfs
KIND = "rootfs"
STAGE_ID = "rootfs:rootfs"
# Default levels (rootfs.compression-level 0): zstd 3 gave ~240 MB in 3 s, 15 ~213 MB in 35 s on a
# bigger tree (field notes); this tree leaves the initrd, docs and translations out.
DEFAULT_LEVEL = {"zstd": 9, "gzip": 9}
SSH_KEYGEN_UNIT = "xenspin-ssh-keygen.service"


class RootfsError(XenspinError):
    pass


@dataclass(frozen=True)
class Inputs:
    """Everything the rootfs is made of, known before anything runs."""

    distro: Distro
    lock: Lock
    built: dict[str, str]  # component -> build key, for components whose .debs go in
    base: Path  # the manifest's directory (paths in the key are relative to it)
    epoch: int

    def data(self) -> dict[str, Any]:
        """The canonical inputs of the stage's key."""
        d = self.distro
        return {
            "rootfs": dataschema.to_data(d.rootfs, relative_to=self.base),
            "set": sha256_json(set_files(self.lock, "rootfs")),
            "built": dict(sorted(self.built.items())),
            "content": overlays.digest([Path(p) for p in d.rootfs.overlays], [Path(h) for h in d.rootfs.hooks]),
            "branding": [d.name, d.version, d.vendor, d.description],
            "boot": dataschema.to_data(d.iso.boot),
            "sources": d.base.archives(),
            "epoch": self.epoch,
        }


def stage(ctx: Context, distro: Distro, lock: Lock, jobs: dict[str, Any], build_id: Callable[[str], str]) -> Stage:
    """The rootfs node of the pipeline graph: after every component build, keyed by its inputs."""
    epoch = ctx.source_date_epoch(lock.archive)
    made = [n for n, job in jobs.items() if job.action != "none"]

    def inputs(needs: Needs) -> dict[str, Any]:
        if "rootfs" in stale_sets(distro, lock):
            raise Pending("the rootfs package set is not locked for these inputs (`xenspin lock`)")
        built = {n: needs[build_id(n)].key for n in made}
        return Inputs(distro, lock, built, ctx.project, epoch).data()

    def make(tmp: Path, needs: Needs) -> dict:
        built = {n: needs[build_id(n)].key for n in made}
        debs: dict[Path, str] = {}
        for n in made:
            done = needs[build_id(n)]
            assert done.path is not None and done.meta is not None
            debs.update({done.path / d: sha for d, sha in done.meta.get("sha256", {}).items()})
        inp = Inputs(distro, lock, built, ctx.project, epoch)
        key = stage_key(FORMAT, inp.data())
        return make_rootfs(inp, key, ctx.store, debs, tmp, ctx.say)

    return Stage(KIND, "rootfs", FORMAT, inputs, make, after=tuple(build_id(n) for n in jobs), clamp=epoch)


def template_context(inp: Inputs, key: str) -> dict[str, Any]:
    """What overlay templates see: the distribution, its components with locked versions, the build."""
    d = inp.distro
    comps = {}
    for name, entry in sorted(inp.lock.components.items()):
        if name in d.components:
            entry = inp.lock.components.get(d.origin(name), entry)  # a shared source: the entry that pins it
            comps[name] = {
                "version": locked_version(entry),
                "kind": entry.get("kind", ""),
                "key": inp.built.get(name, ""),
            }
    return {
        "distro": {"name": d.name, "version": d.version, "vendor": d.vendor, "description": d.description},
        "components": comps,
        "build": {
            "id": key[:12],
            "key": key,
            "epoch": inp.epoch,
            "date": datetime.fromtimestamp(inp.epoch, UTC).strftime("%Y-%m-%d"),
            "lock_digest": lock_digest(inp.lock),
        },
    }


def locked_version(entry: dict[str, Any]) -> str:
    kind = entry.get("kind")
    if kind == "debian":
        return str(entry["version"])
    if kind == "git":
        return f"{module('git').upstream_version(entry)} ({entry['commit'][:12]})"
    if kind == "archive":
        return ", ".join(f"{n} {p['version']}" for n, p in sorted(entry["packages"].items()))
    if kind in ("tarball", "prebuilt"):
        return str(entry.get("sha256", ""))[:12]
    if kind == "path":
        return "in-tree"
    return str(kind or "")


def lock_digest(lock: Lock) -> str:
    return sha256_json({"archive": lock.archive, "components": lock.components, "sets": lock.sets})


# --- making it -----------------------------------------------------------------------------


def make_rootfs(
    inp: Inputs, key: str, store: Store, debs: dict[Path, str], out: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    """Compose into out/: rootfs.squashfs, packages.json, boot/; return what the store records beside it.

    debs: the built .debs with their recorded sha256s. Each step logs under logs/rootfs/KEY/.
    The host only prepares data (the local repository, one tar of xenspin's files and
    the overlays, the hooks) and takes the results back as plain files; everything that
    runs on the tree runs in mmdebstrap's user namespace (see builder/intree.sh).
    """
    d = inp.distro
    logs = store.log_dir("rootfs", key[:12])
    if logs.exists():
        shutil.rmtree(logs)
    logs.mkdir(parents=True)
    timer = _Timer()
    say(f"rootfs {key[:12]}: compose ({len(set_files(inp.lock, 'rootfs'))} locked packages)")
    # Templates first: a bad overlay fails in a second, before any tree exists.
    entries = overlays.read([Path(p) for p in d.rootfs.overlays], template_context(inp, key), setuid=d.rootfs.setuid)
    layer = dom0_entries(d) + brand_entries(inp, key) + entries
    locked = set_files(inp.lock, "rootfs")
    repo_debs, names, built_debs = _repo_contents(store, locked, debs)
    work = store.tmp_dir("rootfs-work")
    try:
        repo = aptrepo.local(repo_debs, work / "repo", d.base.suite, d.name)
        _prepare(inp, work, repo, layer)
        spec = debtree.TreeSpec(suite=d.base.suite, variant=d.rootfs.variant, packages=tuple(names))
        timer.mark("repo")
        tree = debtree.compose(
            spec,
            repo,
            work / "tree",
            work,
            logs / "01-mmdebstrap.log",
            hide=[store.root],
            what="rootfs: mmdebstrap",
            options=[*(f"--dpkgopt={o}" for o in debtree.DPKG_OPTIONS), f"--dpkgopt={debtree.BUILD_ONLY}"],
            env={"SOURCE_DATE_EPOCH": str(inp.epoch)},
        )
        timer.mark("mmdebstrap")
        try:
            debtree.in_namespace(
                ["sh", str(work / "intree.sh"), str(tree), str(work)],
                work,
                logs / "02-intree.log",
                hide=[store.root],
                what="rootfs: configure, hooks, boot files, squashfs",
            )
        except debtree.TreeError as e:
            failed = work / "failed-hook"
            if failed.is_file() and not failed.is_symlink():
                name = failed.read_text().strip()
                raise overlays.OverlayError(
                    f"rootfs hook {name[3:]} failed; log: {logs / f'hook-{name}.log'}"
                ) from None
            raise RootfsError(str(e)) from None
        finally:
            _take_logs(work / "logs", logs)
        timer.mark("in-tree")
        made = _take(work / "out", out)
        packages = installed(made["dpkg-status"], locked, built_debs)
        setuid = setuid_files(made["setuid"], made["owners"])
        _check_setuid(setuid, d.rootfs.setuid)
        for p in packages:
            if p["name"] in setuid:
                p["setuid"] = setuid[p["name"]]
        (out / "packages.json").write_text(json.dumps(packages, indent=2, sort_keys=True) + "\n")
        timer.mark("facts")
    finally:
        remove_tree(work)
    say(f"rootfs {key[:12]}: done ({', '.join(f'{k} {v} s' for k, v in timer.steps.items())})")
    return {
        "squashfs": "rootfs.squashfs",
        "sha256": sha256_file(out / "rootfs.squashfs"),
        "size": (out / "rootfs.squashfs").stat().st_size,
        "boot": sorted(p.name for p in (out / "boot").iterdir()),
        "packages": len(packages),
        "seconds": timer.steps,
        "logs": str(logs),
    }


INTREE = Path(__file__).with_name("intree.sh")


def _prepare(inp: Inputs, work: Path, repo: Path, layer: list[overlays.Entry]) -> None:
    """Everything the in-namespace steps read, as data in work/, and the directories they write, the build account's."""
    d = inp.distro
    (work / "layer.tar").write_bytes(layer_tar(layer, inp.epoch))
    hooks = work / "hooks"
    hooks.mkdir()
    for i, hook in enumerate([Path(h) for h in d.rootfs.hooks], 1):
        data, executable = overlays.read_hook(hook)
        dest = hooks / f"{i:02d}-{hook.name}"
        dest.write_bytes(data)
        dest.chmod(0o755 if executable else 0o644)
    shutil.copyfile(INTREE, work / "intree.sh")
    level = d.rootfs.compression_level or DEFAULT_LEVEL.get(d.rootfs.compression)
    params = {
        "epoch": str(inp.epoch),
        "repo": str(repo),
        "hooknet": "--share-net" if d.rootfs.hooks_network else "",
        "compression": d.rootfs.compression,
        "level": f"-Xcompression-level {level}" if level else "",
        "scrub": SCRUB.replace("@BUILD_ONLY@", debtree.BUILD_ONLY),
        "export_boot": EXPORT_BOOT,
        "disk_initrd": DISK_INITRD_SH.replace("@DISK_INITRD@", DISK_INITRD).replace(
            "@LIVE_LISTS@", " ".join(f"/var/lib/dpkg/info/{p}.list" for p in LIVE_PACKAGES)
        ),
    }
    (work / "params").write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in params.items()))
    # What the in-namespace steps write: directories the namespace's root may write in.
    who = builder()
    for sub in ("out", "out/boot", "out/initrd", "logs"):
        (work / sub).mkdir()
        grant(give(work / sub, who), who)


def _take(src: Path, dest: Path) -> dict[str, str]:
    """The in-namespace steps' results into dest (squashfs, boot/), checked to be plain files; the facts files' text."""
    facts = {}
    for name in ("dpkg-status", "setuid", "owners"):
        facts[name] = _regular(src / name).read_text(encoding="utf-8", errors="replace")
    (dest / "boot").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_regular(src / "rootfs.squashfs"), dest / "rootfs.squashfs")  # copies: the namespace owns these
    for f in [*sorted((src / "boot").iterdir()), *sorted((src / "initrd").iterdir())]:
        shutil.copyfile(_regular(f), dest / "boot" / f.name)
    return facts


def _regular(path: Path) -> Path:
    st = path.lstat()
    if not stat.S_ISREG(st.st_mode):
        raise RootfsError(f"rootfs: {path.name} from the tree is not a regular file (refused)")
    return path


def _take_logs(src: Path, dest: Path) -> None:
    if not src.is_dir():
        return
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.is_symlink():
            shutil.copyfile(f, dest / f.name)


# What leaves every image: the build host's and this build's traces. Run in the tree (box).
SCRUB = r"""set -eu
cd /
for p in etc/ssh/ssh_host_* var/lib/apt/lists/* var/cache/apt/*.bin var/cache/apt/archives/*.deb \
         var/cache/ldconfig/aux-cache var/cache/debconf/*-old var/lib/dpkg/*-old var/lib/dbus/machine-id \
         var/lib/systemd/random-seed etc/*- var/tmp/* var/tmp/.[!.]* run/*; do
    case "$p" in */partial) continue ;; esac
    if [ -e "$p" ] || [ -L "$p" ]; then rm -rf -- "$p"; fi
done
if [ -d var/log ] && [ ! -L var/log ]; then find var/log -xdev ! -type d -delete; fi
find usr/lib -maxdepth 1 -name 'python3*' -type d | while read -r d; do
    find "$d" -xdev -name __pycache__ -type d -prune -exec rm -rf {} +
done
if [ -f etc/dpkg/dpkg.cfg.d/99mmdebstrap ]; then sed -i '/^@BUILD_ONLY@$/d' etc/dpkg/dpkg.cfg.d/99mmdebstrap; fi
rm -f etc/machine-id
: >etc/machine-id
"""

# boot/ for the ISO: xen.gz, xen.efi, vmlinuz, initrd.img (live-boot's). Run in the tree, /tmp/out bound.
EXPORT_BOOT = r"""set -eu
first() { ls -1d -- "$@" 2>/dev/null | LC_ALL=C sort | head -n 1; }
last() { ls -1d -- "$@" 2>/dev/null | LC_ALL=C sort | tail -n 1; }
cd /boot
xen=$(first xen-xenspin*.gz)
[ -n "$xen" ] || xen=$(first xen*.gz)
if [ -z "$xen" ]; then echo "no Xen hypervisor (/boot/xen*.gz) in the tree (is the xen component built?)"; exit 3; fi
cp -L -- "$xen" /tmp/out/xen.gz
efi=$(first "${xen%.gz}.efi")
[ -n "$efi" ] || efi=$(first xen*.efi)
if [ -n "$efi" ]; then cp -L -- "$efi" /tmp/out/xen.efi; fi
kernel=$(last vmlinuz-*)
initrd=$(last initrd.img-*)
if [ -z "$kernel" ] || [ -z "$initrd" ]; then echo "no kernel and initrd in /boot (is linux-image-amd64 in the set?)"; exit 4; fi
cp -L -- "$kernel" /tmp/out/vmlinuz
cp -L -- "$initrd" /tmp/out/initrd.img
rm -f -- /boot/initrd.img-*
for l in /initrd.img /initrd.img.old /boot/initrd.img /boot/initrd.img.old; do
    if [ -L "$l" ]; then rm -f -- "$l"; fi
done
"""

# The installed disk's initramfs, made here at native speed (under TCG in the installer it
# took minutes) with live-boot's initramfs parts set aside and put back. Run in the tree,
# its own output directory bound at /tmp/out: the initramfs hooks see nothing else of ours.
DISK_INITRD_SH = r"""set -eu
set -- /lib/modules/*
if [ "$#" -ne 1 ] || [ ! -d "$1" ]; then echo "expected one kernel in /lib/modules, found: $*"; exit 5; fi
version=${1##*/}
aside=/.xenspin-aside
mkdir "$aside"
cat @LIVE_LISTS@ 2>/dev/null \
    | grep -E '^/(usr/share|etc)/initramfs-tools/' | grep -v '/\.\./' | LC_ALL=C sort -u >/tmp/live || true
while read -r f; do
    if [ -f "$f" ] && [ ! -L "$f" ]; then mkdir -p "$aside${f%/*}"; mv -- "$f" "$aside$f"; echo "$f"; fi
done </tmp/live >/tmp/moved
mkinitramfs -o "/tmp/out/@DISK_INITRD@$version" "$version"
while read -r f; do mv -- "$aside$f" "$f"; done </tmp/moved
rm -rf -- "$aside"
"""


class _Timer:
    def __init__(self) -> None:
        self.last = time.monotonic()
        self.steps: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.steps[name] = round(now - self.last, 1)
        self.last = now


def _deb_name(path: Path) -> str:
    return path.name.split("_", 1)[0]


def _repo_contents(
    store: Store, locked: dict[str, dict[str, Any]], debs: dict[Path, str]
) -> tuple[list[tuple[str, Path]], list[str], dict[str, tuple[Path, str]]]:
    """The .debs of the local repository (the set's, minus those a build replaces), the names to install,
    and the built .debs (path, sha256) by package name. Built packages win over the archive's."""
    locked_shas = {info["sha256"] for info in locked.values()}
    # Archive components' .debs are in the set already (same bytes); the rest were built.
    built = {_deb_name(d): (d, sha) for d, sha in sorted(debs.items()) if sha not in locked_shas}
    wanted = [(n, i["version"], i["filename"], i["sha256"]) for n, i in sorted(locked.items()) if n not in built]
    out = aptrepo.locked_debs(store, wanted, "rootfs")
    out += [(built[n][0].name, built[n][0]) for n in sorted(built)]
    return out, sorted(set(locked) | set(built)), built


# --- what goes into the tree (pure: computed before any tree exists) -----------------------


def _file(path: str, text: str, mode: int = 0o644) -> overlays.Entry:
    return overlays.Entry(PurePosixPath(path.lstrip("/")), "file", mode, data=text.encode(), origin="xenspin")


def _symlink(path: str, target: str) -> overlays.Entry:
    return overlays.Entry(PurePosixPath(path.lstrip("/")), "symlink", 0o777, target=target, origin="xenspin")


def dom0_entries(d: Distro) -> list[overlays.Entry]:
    """Networking, ssh host keys on first boot, a serial getty on hvc0, Xen's GRUB defaults, apt's sources, DNS."""
    boot = d.iso.boot
    grub = [
        "# Written by xenspin from the manifest's iso.boot: Xen's defaults for GRUB's Xen entries.",
        f'GRUB_CMDLINE_XEN_DEFAULT="{boot.xen_cmdline}"',
        f'GRUB_CMDLINE_LINUX_XEN_REPLACE_DEFAULT="{boot.dom0_cmdline}"',
    ]
    if boot.serial:
        grub += ['GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"', 'GRUB_TERMINAL="console serial"']
    sources = "".join(f"deb {m} {s} {' '.join(d.base.areas)}\n" for m, s in d.base.archives())
    return [
        # DHCP on the NICs (en*, eth*) with systemd-networkd; ifupdown keeps only lo.
        _file(
            "/etc/systemd/network/50-xenspin-dhcp.network",
            "# Written by xenspin: DHCP on the wired NICs.\n[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n",
        ),
        _symlink(
            "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
            "/lib/systemd/system/systemd-networkd.service",
        ),
        _symlink(
            "/etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
            "/lib/systemd/system/systemd-networkd.socket",
        ),
        # ssh host keys: none in the image; this one unit makes them on first boot, before sshd.
        _file(
            f"/etc/systemd/system/{SSH_KEYGEN_UNIT}",
            "[Unit]\nDescription=Generate SSH host keys on first boot (xenspin)\n"
            "ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key\nBefore=ssh.service\n\n"
            "[Service]\nType=oneshot\nExecStart=/usr/bin/ssh-keygen -A\nRemainAfterExit=yes\n\n"
            "[Install]\nWantedBy=multi-user.target\n",
        ),
        _symlink(
            f"/etc/systemd/system/multi-user.target.wants/{SSH_KEYGEN_UNIT}", f"/etc/systemd/system/{SSH_KEYGEN_UNIT}"
        ),
        _symlink(
            "/etc/systemd/system/getty.target.wants/serial-getty@hvc0.service",
            "/lib/systemd/system/serial-getty@.service",
        ),
        _file("/etc/default/grub.d/xen.cfg", "\n".join(grub) + "\n"),
        # The image names the real archive, never the build's file:// repository.
        _file("/etc/apt/sources.list", sources),
        # Never the build host's resolver: the installer writes the answerfile's DNS, DHCP brings its own.
        _file("/etc/resolv.conf", "# Written by xenspin: the installer or DHCP sets the name servers.\n"),
    ]


def brand_entries(inp: Inputs, key: str) -> list[overlays.Entry]:
    """/etc/os-release, hostname, hosts, /etc/issue and /etc/xenspin/build-info.json from the manifest and the lock."""
    d = inp.distro
    fields = {
        "PRETTY_NAME": f"{d.name} {d.version}",
        "NAME": d.name,
        "VERSION": d.version,
        "ID": d.name,
        "ID_LIKE": "debian",
        "VERSION_ID": d.version,
        "BUILD_ID": key[:12],
    }
    if d.vendor:
        fields["VENDOR_NAME"] = d.vendor
    info = {
        "name": d.name,
        "version": d.version,
        "vendor": d.vendor,
        "rootfs-key": key,
        "lock-digest": lock_digest(inp.lock),
        "components": dict(sorted(inp.built.items())),
        "source-date-epoch": inp.epoch,
    }
    return [
        _file("/etc/os-release", "".join(f'{k}="{v}"\n' for k, v in fields.items())),
        _file("/etc/hostname", d.name + "\n"),
        _file("/etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{d.name}\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
        _file("/etc/issue", f"{d.name} {d.version} \\n \\l\n\n"),
        _file("/etc/xenspin/build-info.json", json.dumps(info, indent=2, sort_keys=True) + "\n"),
    ]


def layer_tar(entries: list[overlays.Entry], epoch: int) -> bytes:
    """The entries as one tar, owned by root, modes kept, times at the epoch, in order (later ones win).

    Missing parent directories come first (0755), as `mkdir -p` would make them, so
    the tree's tar never guesses them.
    """
    buf = io.BytesIO()
    seen: set[PurePosixPath] = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for e in entries:
            for parent in reversed(e.path.parents[:-1]):
                if parent not in seen:
                    seen.add(parent)
                    tar.addfile(_info(parent, tarfile.DIRTYPE, 0o755, epoch))
            if e.kind == "dir":
                seen.add(e.path)
                tar.addfile(_info(e.path, tarfile.DIRTYPE, e.mode, epoch))
            elif e.kind == "symlink":
                info = _info(e.path, tarfile.SYMTYPE, 0o777, epoch)
                info.linkname = e.target
                tar.addfile(info)
            else:
                info = _info(e.path, tarfile.REGTYPE, e.mode, epoch)
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
    return buf.getvalue()


def _info(path: PurePosixPath, kind: bytes, mode: int, epoch: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path.as_posix())
    info.type, info.mode, info.mtime = kind, mode, epoch
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


# --- what the tree holds (read from the in-namespace steps' facts) -------------------------


MERGED_USR = ("/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/")


def setuid_files(found: str, owners: str) -> dict[str, list[str]]:
    """Every setuid/setgid file (`find -printf '%m %u %g %p'` lines) by the package owning it ("" for none)."""
    owner = {}
    for line in owners.splitlines():
        pkg, _, path = line.partition(" ")
        owner[path] = pkg.split(":")[0]
        if path.startswith(MERGED_USR):  # dpkg lists /bin/mount; merged /usr finds /usr/bin/mount
            owner.setdefault("/usr" + path, pkg.split(":")[0])
    out: dict[str, list[str]] = {}
    for line in found.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4:
            out.setdefault(owner.get(parts[3], ""), []).append(parts[3])
    return {k: sorted(v) for k, v in sorted(out.items())}


def _check_setuid(setuid: dict[str, list[str]], allowed: list[str]) -> None:
    """A setuid/setgid file no package owns (an overlay's, a hook's) must be listed in rootfs.setuid."""
    stray = [p for p in setuid.get("", []) if p not in allowed]
    if stray:
        raise RootfsError(
            f"rootfs: {stray[0]} is setuid or setgid and no package owns it (list it in rootfs.setuid to allow it)"
        )


def installed(
    status: str, locked: dict[str, dict[str, Any]], built: dict[str, tuple[Path, str]]
) -> list[dict[str, Any]]:
    """Every package dpkg has installed (its status file's text), with the sha256 of the .deb it came from."""
    out = []
    for para in deb822.Packages.iter_paragraphs(io.StringIO(status), use_apt_pkg=False):
        if not para.get("Status", "").endswith(" installed"):
            continue
        name, version = para["Package"], para["Version"]
        if name in built:
            sha = built[name][1]
        elif name in locked and locked[name]["version"] == version:
            sha = locked[name]["sha256"]
        else:
            raise RootfsError(f"rootfs: {name} {version} is installed but neither locked nor built")
        out.append(
            {
                "name": name,
                "version": version,
                "architecture": para["Architecture"],
                "source": para.get("Source", name).split(" ")[0],
                "sha256": sha,
            }
        )
    return sorted(out, key=lambda p: p["name"])
