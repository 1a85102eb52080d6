"""What disks the machine has: `lsblk --json`, checked against the signatures on the devices themselves.

lsblk takes partition tables, filesystems and partition names from udev's database;
without udev (a container, early boot) it reports none, and lists partitions flat. So
partitions are grouped by their parent's kernel name, `wipefs --no-act` (which reads the
device) supplies what lsblk could not see (the safety rules must never miss a filesystem),
and `partx` reads the GPT's partition names (which root is in use: disks.py).
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from .disks import Disk, part_path
from .run import Runner

COLUMNS = "PATH,KNAME,PKNAME,SIZE,TYPE,MODEL,PTTYPE,FSTYPE,LABEL,PARTLABEL,RO,MOUNTPOINTS"
TABLES = {"gpt", "PMBR", "dos", "atari", "sun", "sgi", "bsd", "mac"}


def _flatten(devs: list[dict[str, Any]], parent: str | None = None) -> list[dict[str, Any]]:
    """Every device once, each knowing its parent's kernel name (from PKNAME or from the nesting)."""
    out = []
    for d in devs:
        if parent and not d.get("pkname"):
            d["pkname"] = parent
        out.append(d)
        out.extend(_flatten(d.get("children") or [], d.get("kname") or Path(d.get("path", "")).name))
    return out


def parse_lsblk(
    text: str,
    live_sources: set[str] = frozenset(),
    signatures: dict[str, list[tuple[str, str]]] | None = None,
    partnames: dict[str, str] | None = None,
) -> list[Disk]:
    """Whole devices with every device stacked on them as children.

    live_sources: devices backing the live medium. signatures: device path -> the
    (type, label) of the signatures wipefs found on it (partition tables, filesystems).
    partnames: partition path -> its GPT name, as partx read it.
    """
    signatures = signatures or {}
    partnames = partnames or {}
    entries = _flatten(json.loads(text).get("blockdevices", []))
    by_kname = {e.get("kname") or Path(e.get("path", "")).name: e for e in entries}

    def top_of(e: dict[str, Any]) -> dict[str, Any]:
        seen = set()
        while e.get("pkname") and e["pkname"] in by_kname and e["pkname"] not in seen:
            seen.add(e["pkname"])
            e = by_kname[e["pkname"]]
        return e

    tops: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        t = top_of(e)
        tops.setdefault(t["path"], [])
        if t is not e and e not in tops[t["path"]]:
            tops[t["path"]].append(e)
    entry_of = {e["path"]: e for e in entries}
    disks = []
    for path, kids in tops.items():
        children = tuple(_device(k, live_sources, signatures, partnames=partnames) for k in kids)
        disk = _device(entry_of[path], live_sources, signatures, children, partnames)
        disks.append(disk)
    return disks


def _device(
    d: dict[str, Any],
    live: set[str],
    sigs: dict[str, list[tuple[str, str]]],
    children: tuple[Disk, ...] = (),
    partnames: dict[str, str] | None = None,
) -> Disk:
    path = d["path"]
    found = [t for t, _ in sigs.get(path, [])]
    labels = tuple(lb for _, lb in sigs.get(path, []) if lb) + ((d["label"],) if d.get("label") else ())
    pttype = (
        d.get("pttype")
        or next((s for s in found if s in TABLES and s != "PMBR"), "")
        or ("mbr" if "PMBR" in found else "")
    )
    fstype = d.get("fstype") or next((s for s in found if s not in TABLES), "")
    mounts = tuple(m for m in (d.get("mountpoints") or [d.get("mountpoint")]) if m)
    return Disk(
        path=path,
        size=int(d.get("size") or 0),
        type=d.get("type") or "",
        model=(d.get("model") or "").strip(),
        pttype=pttype,
        fstype=fstype,
        readonly=d.get("ro") in (True, "1", 1),
        children=children,
        mountpoints=mounts,
        labels=labels,
        holds_live_medium=path in live or any(c.holds_live_medium for c in children),
        partlabel=d.get("partlabel") or (partnames or {}).get(path, ""),
        partn=_partn(path, d.get("pkname")),
    )


def _partn(path: str, parent: str | None) -> int:
    """A partition's number from its name (sda3, nvme0n1p3, loop0p3): Debian 12's lsblk has no PARTN column."""
    if not parent:
        return 0
    tail = Path(path).name.removeprefix(parent).removeprefix("p")
    return int(tail) if tail.isdigit() else 0


def parse_partx(disk: str, text: str) -> dict[str, str]:
    """Partition path -> GPT name from `partx -g -o NR,NAME -P DISK`."""
    out = {}
    for line in text.splitlines():
        fields = {k: v for k, _, v in (w.partition("=") for w in shlex.split(line))}
        if fields.get("NR", "").isdigit():
            out[part_path(disk, int(fields["NR"]))] = fields.get("NAME", "")
    return out


def parse_wipefs(text: str) -> list[tuple[str, str]]:
    """(type, label) of each signature `wipefs --no-act --json` found."""
    return [(s.get("type") or "", s.get("label") or "") for s in json.loads(text or "{}").get("signatures", [])]


def live_medium_devices(mounts: Path = Path("/proc/self/mounts")) -> set[str]:
    """Devices mounted as the live medium (/run/live/medium), so they are never candidates."""
    out = set()
    try:
        for line in mounts.read_text().splitlines():
            dev, where = line.split()[:2]
            if where.startswith("/run/live/medium") and dev.startswith("/dev/"):
                out.add(os.path.realpath(dev))
    except OSError:
        pass
    return out


def probe(runner: Runner) -> list[Disk]:
    runner.run(["udevadm", "settle", "--timeout=30"], "wait for udev to name the disks", check=False, writes=False)
    text = runner.run(["lsblk", "--json", "--bytes", "--output", COLUMNS], "list disks", capture=True, writes=False)
    sigs: dict[str, list[tuple[str, str]]] = {}
    names: dict[str, str] = {}
    for e in _flatten(json.loads(text).get("blockdevices", [])):
        if e.get("type") in ("disk", "loop", "part") and int(e.get("size") or 0) > 0:
            out = runner.run(
                ["wipefs", "--no-act", "--json", e["path"]],
                f"look for signatures on {e['path']}",
                capture=True,
                check=False,
                writes=False,
            )
            sigs[e["path"]] = parse_wipefs(out) if out.strip().startswith("{") else []
            if e.get("type") in ("disk", "loop") and any(t in ("gpt", "PMBR") for t, _ in sigs[e["path"]]):
                out = runner.run(
                    ["partx", "-g", "-o", "NR,NAME", "-P", e["path"]],
                    f"read the partition names of {e['path']}",
                    capture=True,
                    check=False,
                    writes=False,
                )
                names.update(parse_partx(e["path"], out))
    return parse_lsblk(text, live_medium_devices(), sigs, names)
