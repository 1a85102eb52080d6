#!/usr/bin/env python3
"""Benchmark of the default distribution's ISO (not a test; prints figures).

    .venv/bin/python bench/iso.py [--keep DIR] [--no-boot] [--firmware bios|uefi|both] [--no-record]

A cold `xenspin build` into an empty store (lock, fetch, component builds, rootfs, ISO),
a warm rebuild (nothing changed: a new process finding everything in the store), the
ISO's size, and the time to the prompt under QEMU TCG for each firmware, as a user runs
`xenspin test boot`. It works on a copy of the repository's manifest, recipes, overlays
and lock in a temporary directory, so the checkout is never touched.

Goals (issue 10): cold build under 128 s (half of Debian live-build's 255 s on 2 cores),
ISO under 300 MB (aim 250), each boot under 60 s. Each run appends its figures to
bench/results/iso.md (see bench/record.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import record

ROOT = Path(__file__).resolve().parent.parent


def copy_project(dest: Path) -> Path:
    for name in ("distro.yaml", "distro.lock"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("components", "overlays"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, dest / name)
    return dest / "distro.yaml"


def xenspin(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    exe = Path(sys.executable).parent / "xenspin"
    start = time.monotonic()
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True)
    return time.monotonic() - start, proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="use (and keep) this directory instead of a temporary one")
    parser.add_argument("--no-boot", action="store_true", help="skip the QEMU boots")
    parser.add_argument("--firmware", default="both", choices=["bios", "uefi", "both"])
    record.options(parser)
    args = parser.parse_args()
    run = record.Run("iso")
    with record.workdir(args.keep, "xenspin-bench-iso.") as work:
        return measure(args, run, work)


def measure(args: argparse.Namespace, run: record.Run, work: Path) -> int:
    figures: list[tuple[str, str]] = []
    checks: list[tuple[str, bool]] = []
    project, store, out = work / "project", work / "store", work / "out"
    for d in (project, store, out):
        if d.exists():
            shutil.rmtree(d)
    project.mkdir()
    manifest = copy_project(project)
    common = ["-f", str(manifest), "--store", str(store), "--out", str(out)]
    cold, proc = xenspin(*common, "build")
    if proc.returncode != 0:
        sys.exit(f"bench: cold build failed:\n{proc.stderr}")
    print(f"cold build to the ISO: {cold:.1f} s (goal < 128 s)")
    figures.append(("cold build to the ISO", f"{cold:.1f} s"))
    checks.append(("cold build under 128 s", cold < 128))
    info = out / "build-info.json"
    if info.is_file():
        stages = json.loads(info.read_text()).get("stages", {})
        slow = sorted(stages.items(), key=lambda kv: -kv[1].get("seconds", 0))[:5]
        slowest = ", ".join(f"{k} {v.get('seconds', 0)} s" for k, v in slow)
        print("slowest stages (cold):", slowest)
        figures.append(("slowest stages (cold)", slowest))
    warm, proc = xenspin(*common, "build")
    if proc.returncode != 0:
        sys.exit(f"bench: warm build failed:\n{proc.stderr}")
    print(f"warm rebuild:          {warm:.1f} s")
    figures.append(("warm rebuild", f"{warm:.1f} s"))
    images = sorted(out.glob("*-amd64.iso"))
    if not images:
        sys.exit(f"bench: no ISO in {out}")
    size = images[0].stat().st_size
    print(f"ISO size:              {size / 1e6:.0f} MB ({images[0].name}; goal < 300 MB, aim 250)")
    figures.append(("ISO size", f"{size / 1e6:.0f} MB ({images[0].name})"))
    checks.append(("ISO under 300 MB", size < 300e6))
    if not args.no_boot:
        _, proc = xenspin("--out", str(out), "--json", "test", "boot", str(images[0]), "--firmware", args.firmware)
        for v in json.loads(proc.stdout or "[]"):
            verdict = "PASS" if v["passed"] else "FAIL"
            print(f"boot to the prompt, {v['machine']}: {v['seconds']} s {verdict} (goal < 60 s)")
            figures.append((f"boot to the prompt, {v['machine']}", f"{v['seconds']} s, {verdict}"))
            checks.append((f"{v['machine']}: boots to the prompt under 60 s", v["passed"] and v["seconds"] < 60))
    return run.finish(figures, checks, not args.no_record)


if __name__ == "__main__":
    raise SystemExit(main())
