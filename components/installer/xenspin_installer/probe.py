"""What disks the machine has, from `lsblk --json`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .disks import Disk
from .run import Runner

COLUMNS = "PATH,SIZE,TYPE,MODEL,PTTYPE,FSTYPE,RO,MOUNTPOINTS"


def parse_lsblk(text: str, live_sources: set[str] = frozenset()) -> list[Disk]:
    """Disks from lsblk's JSON; live_sources are devices backing the live medium."""
    return [_disk(d, live_sources) for d in json.loads(text).get("blockdevices", [])]


def _disk(d: dict[str, Any], live: set[str]) -> Disk:
    children = tuple(_disk(c, live) for c in d.get("children") or [])
    mounts = tuple(m for m in (d.get("mountpoints") or [d.get("mountpoint")]) if m)
    path = d.get("path") or "/dev/" + d.get("name", "")
    return Disk(
        path=path,
        size=int(d.get("size") or 0),
        type=d.get("type") or "",
        model=(d.get("model") or "").strip(),
        pttype=d.get("pttype") or "",
        fstype=d.get("fstype") or "",
        readonly=d.get("ro") in (True, "1", 1),
        children=children,
        mountpoints=mounts,
        holds_live_medium=path in live or any(c.holds_live_medium for c in children),
    )


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
    out = runner.run(["lsblk", "--json", "--bytes", "--output", COLUMNS], "list disks", capture=True)
    return parse_lsblk(out, live_medium_devices())
