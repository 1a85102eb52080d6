#!/usr/bin/env python3
"""Benchmark of `xenspin lock` and `fetch` on the default distribution (not a test; prints figures).

Into an empty store: lock from scratch, fetch, then an offline re-fetch as a user
runs it (a new process). Target: the offline re-fetch under 1 s. Works on a copy of
the manifest in a temporary directory; needs the Debian archive.

    .venv/bin/python bench/fetch.py [--no-record]

Each run appends its figures to bench/results/fetch.md (see bench/record.py).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import record

ROOT = Path(__file__).resolve().parent.parent
XENSPIN = Path(sys.executable).parent / "xenspin"


def timed(*args: str) -> float:
    start = time.monotonic()
    proc = subprocess.run([str(XENSPIN), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench: xenspin {' '.join(args)} failed: {proc.stderr.strip()}")
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    record.options(parser)
    args = parser.parse_args()
    run = record.Run("fetch")
    work = Path(tempfile.mkdtemp(prefix="xenspin-bench."))
    try:
        shutil.copy2(ROOT / "distro.yaml", work / "distro.yaml")
        shutil.copytree(ROOT / "components", work / "components")
        shutil.copytree(ROOT / "overlays", work / "overlays")
        common = ["-f", str(work / "distro.yaml"), "--store", str(work / "store")]
        rows = [
            ("lock (no lock yet)", timed(*common, "lock")),
            ("fetch (empty store)", timed(*common, "fetch")),
            ("fetch --offline (all present)", timed(*common, "fetch", "--offline")),
        ]
        for name, secs in rows:
            print(f"{name:<32} {secs:>7.2f} s")
        checks = [("offline re-fetch under 1 s", rows[-1][1] < 1.0)]
        return run.finish([(name, f"{secs:.2f} s") for name, secs in rows], checks, not args.no_record)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
