"""The dom0 root filesystem: locked .debs + built .debs + overlays + hooks -> squashfs, packages.json, boot/.

The stage is keyed by its inputs (the locked set, the built components' keys, the
overlays' and hooks' content, the manifest's rootfs, branding and boot sections, the
epoch and the format), so a spin that only changes an overlay recomposes the rootfs
without rebuilding a component. Composition runs offline from the store; the steps
after mmdebstrap (dom0 setup, branding, overlays, hooks, scrubbing) are plain Python
over the tree, and the squashfs is written with mtimes clamped, sorted, reproducible.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from xenspin_installer import DISK_INITRD

from . import debtree, lazy, overlays, typed
from .context import Context
from .errors import XenspinError
from .lock import Lock
from .manifest import Distro
from .packagesets import LIVE_PACKAGES, stale_sets
from .packagesets import files as set_files
from .run import CommandError, run, sandbox
from .stage import Needs, Pending, Stage, stage_key
from .store import Store, sha256_file, sha256_json

deb822 = lazy.module("debian.deb822")  # imported when the rootfs is composed (see builder/lazy.py)

FORMAT = 5  # what the stage writes; bump to recompose every rootfs
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
            "rootfs": typed.to_data(d.rootfs, relative_to=self.base),
            "set": sha256_json(set_files(self.lock, "rootfs")),
            "built": dict(sorted(self.built.items())),
            "content": overlays.digest([Path(p) for p in d.rootfs.overlays], [Path(h) for h in d.rootfs.hooks]),
            "branding": [d.name, d.version, d.vendor, d.description],
            "boot": typed.to_data(d.iso.boot),
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
        return str(entry["commit"])[:12]
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
    """
    d = inp.distro
    logs = store.log_dir("rootfs", key[:12])
    if logs.exists():
        shutil.rmtree(logs)
    logs.mkdir(parents=True)
    timer = _Timer()
    say(f"rootfs {key[:12]}: compose ({len(set_files(inp.lock, 'rootfs'))} locked packages)")
    # Templates first: a bad overlay fails in a second, before any tree exists.
    entries = overlays.read([Path(p) for p in d.rootfs.overlays], template_context(inp, key))
    locked = set_files(inp.lock, "rootfs")
    repo_debs, names, built_debs = _repo_contents(store, locked, debs)
    work = store.tmp_dir("rootfs-work")
    try:
        repo = debtree.local_repo(repo_debs, work / "repo", d.base.suite, d.name)
        tree = work / "tree"
        spec = debtree.TreeSpec(
            suite=d.base.suite,
            variant=d.rootfs.variant,
            packages=tuple(names),
            sources=tuple(f"deb {m} {s} {' '.join(d.base.areas)}" for m, s in d.base.archives()),
            epoch=inp.epoch,
        )
        timer.mark("repo")
        debtree.compose(spec, repo, tree, logs / "01-mmdebstrap.log")
        timer.mark("mmdebstrap")
        setup_dom0(d, tree, logs / "02-dom0.log")
        brand(inp, key, tree)
        overlays.lay(entries, tree)
        timer.mark("configure")
        overlays.run_hooks(
            [Path(h) for h in d.rootfs.hooks], tree, logs, {"SOURCE_DATE_EPOCH": str(inp.epoch), "LC_ALL": "C.UTF-8"}
        )
        timer.mark("hooks")
        scrub(tree)
        export_boot(tree, out / "boot")
        disk_initrd(tree, out / "boot", inp.epoch, logs / "03-disk-initrd.log")
        timer.mark("initrd")
        packages = installed(tree, locked, built_debs)
        (out / "packages.json").write_text(json.dumps(packages, indent=2, sort_keys=True) + "\n")
        timer.mark("scrub")
        squash(tree, out / "rootfs.squashfs", d.rootfs, inp.epoch, logs / "04-mksquashfs.log")
        timer.mark("squashfs")
    finally:
        shutil.rmtree(work, ignore_errors=True)
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
    out: list[tuple[str, Path]] = []
    missing = []
    for name, info in sorted(locked.items()):
        if name in built:
            continue
        blob = store.blob_path(info["sha256"])
        if not blob.is_file():
            missing.append(f"{name} {info['version']}")
        out.append((Path(info["filename"]).name, blob))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise RootfsError(f"rootfs: {len(missing)} locked .debs are not in the store: {shown} (run `xenspin fetch`)")
    out += [(built[n][0].name, built[n][0]) for n in sorted(built)]
    return out, sorted(set(locked) | set(built)), built


# --- inside the tree -----------------------------------------------------------------------


def _write(tree: Path, rel: str, text: str, mode: int = 0o644) -> Path:
    """Write /rel in the tree, following the tree's own symlinks as the image would (/etc/os-release)."""
    path = overlays.inside(tree, PurePosixPath(rel), "xenspin")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.xenspin-tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return path


def _link(tree: Path, rel: str, target: str) -> None:
    path = tree / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    os.symlink(target, path)


def setup_dom0(d: Distro, tree: Path, log_path: Path) -> None:
    """Networking, ssh host keys on first boot, a serial getty on hvc0, Xen's GRUB defaults, services."""
    # DHCP on the NICs (en*, eth*) with systemd-networkd; ifupdown keeps only lo.
    _write(
        tree,
        "/etc/systemd/network/50-xenspin-dhcp.network",
        "# Written by xenspin: DHCP on the wired NICs.\n[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n",
    )
    _link(
        tree,
        "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
        "/lib/systemd/system/systemd-networkd.service",
    )
    _link(
        tree,
        "/etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
        "/lib/systemd/system/systemd-networkd.socket",
    )
    # ssh host keys: none in the image; this one unit makes them on first boot, before sshd.
    _write(
        tree,
        f"/etc/systemd/system/{SSH_KEYGEN_UNIT}",
        "[Unit]\nDescription=Generate SSH host keys on first boot (xenspin)\n"
        "ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key\nBefore=ssh.service\n\n"
        "[Service]\nType=oneshot\nExecStart=/usr/bin/ssh-keygen -A\nRemainAfterExit=yes\n\n"
        "[Install]\nWantedBy=multi-user.target\n",
    )
    _link(
        tree, f"/etc/systemd/system/multi-user.target.wants/{SSH_KEYGEN_UNIT}", f"/etc/systemd/system/{SSH_KEYGEN_UNIT}"
    )
    _link(
        tree,
        "/etc/systemd/system/getty.target.wants/serial-getty@hvc0.service",
        "/lib/systemd/system/serial-getty@.service",
    )
    boot = d.iso.boot
    lines = [
        "# Written by xenspin from the manifest's iso.boot: Xen's defaults for GRUB's Xen entries.",
        f'GRUB_CMDLINE_XEN_DEFAULT="{boot.xen_cmdline}"',
        f'GRUB_CMDLINE_LINUX_XEN_REPLACE_DEFAULT="{boot.dom0_cmdline}"',
    ]
    if boot.serial:
        lines += ['GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"', 'GRUB_TERMINAL="console serial"']
    _write(tree, "/etc/default/grub.d/xen.cfg", "\n".join(lines) + "\n")
    # Debian's Xen tools start from /etc/init.d/xen (xenstored, xenconsoled, xen-init-dom0); make sure it is on.
    if (tree / "etc/init.d/xen").exists():
        run(["chroot", tree, "update-rc.d", "xen", "defaults"], what="rootfs: enable xen", log_path=log_path)


def brand(inp: Inputs, key: str, tree: Path) -> None:
    """/etc/os-release, hostname, /etc/issue and /etc/xenspin/build-info.json from the manifest and the lock."""
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
    _write(tree, "/etc/os-release", "".join(f'{k}="{v}"\n' for k, v in fields.items()))
    _write(tree, "/etc/hostname", d.name + "\n")
    _write(
        tree, "/etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{d.name}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )
    _write(tree, "/etc/issue", f"{d.name} {d.version} \\n \\l\n\n")
    info = {
        "name": d.name,
        "version": d.version,
        "vendor": d.vendor,
        "rootfs-key": key,
        "lock-digest": lock_digest(inp.lock),
        "components": dict(sorted(inp.built.items())),
        "source-date-epoch": inp.epoch,
    }
    _write(tree, "/etc/xenspin/build-info.json", json.dumps(info, indent=2, sort_keys=True) + "\n")


SCRUB_GLOBS = [
    "etc/ssh/ssh_host_*",
    "var/lib/apt/lists/*",
    "var/cache/apt/*.bin",
    "var/cache/apt/archives/*.deb",
    "var/cache/ldconfig/aux-cache",
    "var/cache/debconf/*-old",
    "var/lib/dpkg/*-old",
    "var/lib/dbus/machine-id",
    "var/lib/systemd/random-seed",
    "etc/*-",
    "tmp/*",
    "var/tmp/*",
    "run/*",
]


def scrub(tree: Path) -> None:
    """No build-host traces: empty machine-id, no apt lists, no logs, no ssh host keys, no bytecode caches."""
    for pattern in SCRUB_GLOBS:
        for path in tree.glob(pattern):
            if path.name == "partial":
                continue
            _remove(path)
    for dirpath, _dirs, files in os.walk(tree / "var/log"):
        for name in files:
            os.unlink(os.path.join(dirpath, name))
    for cache in sorted(tree.glob("usr/lib/python3*/**/__pycache__")):  # .pyc bytes vary between runs
        shutil.rmtree(cache, ignore_errors=True)
    machine_id = tree / "etc/machine-id"
    machine_id.write_text("")  # systemd fills it on first boot


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def export_boot(tree: Path, dest: Path) -> None:
    """boot/ beside the squashfs for the ISO: xen.gz, xen.efi, vmlinuz, initrd.img (live-boot's).

    The live initrd leaves the tree (it is big and only the live system boots with it;
    `disk_initrd` makes the installed disk's); the kernel, its config and Xen stay for
    the installer.
    """
    dest.mkdir(parents=True, exist_ok=True)
    boot = tree / "boot"
    xens = sorted(boot.glob("xen-xenspin*.gz")) or sorted(boot.glob("xen*.gz"))
    if not xens:
        raise RootfsError("rootfs: no Xen hypervisor (/boot/xen*.gz) in the tree (is the xen component built?)")
    shutil.copy2(xens[0], dest / "xen.gz")
    efis = sorted(boot.glob(xens[0].name.removesuffix(".gz") + ".efi")) or sorted(boot.glob("xen*.efi"))
    if efis:
        shutil.copy2(efis[0], dest / "xen.efi")
    kernels = sorted(boot.glob("vmlinuz-*"))
    initrds = sorted(boot.glob("initrd.img-*"))
    if not kernels or not initrds:
        raise RootfsError("rootfs: no kernel and initrd in /boot (is linux-image-amd64 in the set?)")
    shutil.copy2(kernels[-1], dest / "vmlinuz")
    shutil.copy2(initrds[-1], dest / "initrd.img")
    for initrd in initrds:
        initrd.unlink()
    for link in ("initrd.img", "initrd.img.old"):
        for where in (tree, boot):
            if (where / link).is_symlink():
                (where / link).unlink()


def disk_initrd(tree: Path, dest: Path, epoch: int, log: Path) -> Path:
    """dest/disk-initrd.img-KVER: the initramfs the installed disk boots with, made here at native speed.

    It is what update-initramfs makes on the installed disk once live-boot is purged;
    made by the installer inside QEMU under TCG that took many minutes, so the
    installer copies this one instead. live-boot's initramfs hooks and scripts are
    moved aside while it is made (and put back: the live system keeps its packages
    whole), and mkinitramfs runs in the sandbox with the tree read-only and
    SOURCE_DATE_EPOCH set, so the same tree gives the same bytes.
    """
    versions = sorted(p.name for p in (tree / "lib/modules").iterdir()) if (tree / "lib/modules").is_dir() else []
    if len(versions) != 1:
        raise RootfsError(f"rootfs: expected one kernel in /lib/modules, found {versions or 'none'}")
    version = versions[0]
    aside = tree.parent / "live-initramfs-aside"
    moved = [rel for rel in live_initramfs_files(tree) if (tree / rel).is_file() and not (tree / rel).is_symlink()]
    for rel in moved:
        (aside / rel).parent.mkdir(parents=True, exist_ok=True)
        os.rename(tree / rel, aside / rel)
    try:
        env = {"SOURCE_DATE_EPOCH": str(epoch), "TMPDIR": "/tmp", "LC_ALL": "C.UTF-8"}
        argv = sandbox(tree, rw={"/tmp/out": dest}, env=env)
        run(
            [*argv, "mkinitramfs", "-o", f"/tmp/out/{DISK_INITRD}{version}", version],
            what="rootfs: disk initrd",
            log_path=log,
        )
    finally:
        for rel in moved:
            os.rename(aside / rel, tree / rel)
        shutil.rmtree(aside, ignore_errors=True)
    return dest / f"{DISK_INITRD}{version}"


def live_initramfs_files(tree: Path) -> list[str]:
    """What the live packages add to initramfs-tools (hooks, scripts, conf), by dpkg's file lists."""
    found: list[str] = []
    for package in LIVE_PACKAGES:
        listing = tree / "var/lib/dpkg/info" / f"{package}.list"
        if listing.is_file():
            for line in listing.read_text().splitlines():
                if line.startswith(("/usr/share/initramfs-tools/", "/etc/initramfs-tools/")) and ".." not in line:
                    found.append(line.lstrip("/"))
    return sorted(found)


def installed(
    tree: Path, locked: dict[str, dict[str, Any]], built: dict[str, tuple[Path, str]]
) -> list[dict[str, str]]:
    """Every package dpkg has installed in the tree, with the sha256 of the .deb it came from."""
    out = []
    with open(tree / "var/lib/dpkg/status", encoding="utf-8") as f:
        for para in deb822.Packages.iter_paragraphs(f, use_apt_pkg=False):
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


def squash(tree: Path, dest: Path, spec: Any, epoch: int, log_path: Path) -> None:
    """mksquashfs, reproducible: sorted entries, the creation time and every later mtime clamped to the epoch.

    Through SOURCE_DATE_EPOCH, not -mkfs-time/-all-time: mksquashfs refuses both at once,
    and a user's own SOURCE_DATE_EPOCH is in the environment.
    """
    cmd = ["mksquashfs", tree, dest, "-noappend", "-reproducible", "-comp", spec.compression, "-no-progress"]
    level = spec.compression_level or DEFAULT_LEVEL.get(spec.compression)
    if level:
        cmd += ["-Xcompression-level", str(level)]
    try:
        run(cmd, what="rootfs: mksquashfs", log_path=log_path, env={"SOURCE_DATE_EPOCH": str(epoch)})
    except CommandError as e:
        raise RootfsError(str(e)) from None
