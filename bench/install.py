#!/usr/bin/env python3
"""Benchmark of an install (not a test; prints figures).

    .venv/bin/python bench/install.py ISO [--firmware bios|uefi|both] [--upgrade NEW.iso] [--keep DIR] [--no-record]

Runs `xenspin test install` on ISO under QEMU TCG for each firmware, as a user does:
the unattended install from the ISO, the power-off, the boot from the disk alone, the
login, `xl list` showing Domain-0 and a PV guest printing its marker. Prints the time
of each step from the VM's start and the total per firmware. With --upgrade, then
`xenspin test upgrade ISO NEW.iso` under the first firmware: install, change, upgrade,
check, restore, check.

Goal (issue 11): install + reboot + guest under 4 minutes per firmware (bar 6).
Goal (issue 20): an upgrade run under twice the install run of the same firmware.
Each run appends its figures to bench/results/install.md (see bench/record.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import record

GOAL, BAR = 240, 360


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("iso", type=Path, help="the installer ISO (`xenspin build` writes it)")
    parser.add_argument("--firmware", default="both", choices=["bios", "uefi", "both"])
    parser.add_argument("--upgrade", type=Path, metavar="NEW", help="also time `xenspin test upgrade ISO NEW`")
    parser.add_argument("--keep", type=Path, help="keep the VM logs and disks in this directory")
    record.options(parser)
    args = parser.parse_args()
    if not args.iso.is_file():
        sys.exit(f"bench: no ISO at {args.iso}")
    run = record.Run("install")
    figures: list[tuple[str, str]] = [("ISO", f"{args.iso.name}, {args.iso.stat().st_size / 1e6:.0f} MB")]
    checks: list[tuple[str, bool]] = []
    with record.workdir(args.keep, "xenspin-bench-install.") as work:
        exe = Path(sys.executable).parent / "xenspin"
        cmd = [str(exe), "--out", str(work), "--json", "test", "install", str(args.iso), "--firmware", args.firmware]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if not proc.stdout.strip():
            sys.exit(f"bench: xenspin test install failed:\n{proc.stderr}")
        for v in json.loads(proc.stdout):
            steps = ", ".join(f"{k} {s:.0f} s" for k, s in v["steps"].items())
            verdict = "PASS" if v["passed"] else f"FAIL (no {v['missing']!r} {v['why']})"
            mark = "within goal" if v["seconds"] < GOAL else "within bar" if v["seconds"] < BAR else "over the bar"
            print(f"{v['firmware']}: {v['seconds']:.0f} s {verdict}, {mark} (goal < {GOAL} s, bar {BAR} s): {steps}")
            figures.append((f"{v['firmware']}: total", f"{v['seconds']:.0f} s, {verdict}"))
            figures.append((f"{v['firmware']}: steps from the VM's start", steps))
            checks.append((f"{v['firmware']}: installed, booted from disk, Domain-0 and a PV guest", v["passed"]))
            checks.append((f"{v['firmware']}: under {GOAL} s (goal)", v["passed"] and v["seconds"] < GOAL))
            checks.append((f"{v['firmware']}: under {BAR} s (bar)", v["passed"] and v["seconds"] < BAR))
        installs = {v["firmware"]: v for v in json.loads(proc.stdout)}
        if args.upgrade:
            fw = next(iter(installs))
            cmd = [str(exe), "--out", str(work), "--json", "test", "upgrade", str(args.iso), str(args.upgrade)]
            proc = subprocess.run([*cmd, "--firmware", fw], capture_output=True, text=True)
            if not proc.stdout.strip():
                sys.exit(f"bench: xenspin test upgrade failed:\n{proc.stderr}")
            (u,) = json.loads(proc.stdout)
            steps = ", ".join(f"{k} {s:.0f} s" for k, s in u["steps"].items())
            verdict = "PASS" if u["passed"] else f"FAIL (no {u['missing']!r} {u['why']})"
            ratio = u["seconds"] / installs[fw]["seconds"]
            print(f"upgrade {fw}: {u['seconds']:.0f} s {verdict}, {ratio:.2f} x the install (goal < 2): {steps}")
            figures.append((f"upgrade {fw}: total", f"{u['seconds']:.0f} s, {verdict} ({ratio:.2f} x the install)"))
            figures.append((f"upgrade {fw}: steps from the first VM's start", steps))
            checks.append((f"upgrade {fw}: installed, changed, upgraded (kept), restored", u["passed"]))
            checks.append((f"upgrade {fw}: under 2 x the install (goal)", u["passed"] and ratio < 2))
        return run.finish(figures, checks, not args.no_record)


if __name__ == "__main__":
    raise SystemExit(main())
