#!/usr/bin/env python3
"""Benchmark of `xenspin build` on the default distribution (not a test; prints figures).

Scenarios, side by side: a cold build into an empty store, a no-op rebuild (as a
user runs it: a fresh `xenspin` process), a rebuild after one component's recipe
changed, and the peak RSS of the xenspin process itself (build steps excluded).

    .venv/bin/python bench/build.py [--keep DIR]

It works on a copy of the repository's manifest, recipes and lock in a temporary
directory, so the checkout is never touched. Targets: no-op under 0.5 s, an overlay change recomposing only the
rootfs (under 90 s, squashfs under 200 MB), a change
rebuilding only the component and what builds after it, peak RSS under 300 MB.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder import cli  # noqa: E402


def copy_project(dest: Path) -> Path:
    for name in ("distro.yaml", "distro.lock"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("components", "overlays"):
        shutil.copytree(ROOT / name, dest / name)
    return dest / "distro.yaml"


def in_process(manifest: Path, store: Path, *args: str) -> tuple[float, dict]:
    """Run `xenspin build` in this process (so its RSS is ours); return (seconds, report)."""
    import contextlib
    import io

    out = io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stdout(out):
        code = cli.main(["-f", str(manifest), "--store", str(store), "--json", "build", *args])
    seconds = time.monotonic() - start
    if code != 0:
        sys.exit(f"bench: build failed (exit {code})")
    return seconds, json.loads(out.getvalue())


def as_user(manifest: Path, store: Path) -> tuple[float, dict]:
    """Run `xenspin build` as a user does: a new process, imports and all."""
    exe = Path(sys.executable).parent / "xenspin"
    start = time.monotonic()
    proc = subprocess.run(
        [str(exe), "-f", str(manifest), "--store", str(store), "--json", "build"], capture_output=True, text=True
    )
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"bench: no-op build failed: {proc.stderr.strip()}")
    return seconds, json.loads(proc.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="use (and keep) this directory instead of a temporary one")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="xenspin-bench."))
    work.mkdir(parents=True, exist_ok=True)
    project, store = work / "project", work / "store"
    if project.exists():
        shutil.rmtree(project)
    if store.exists():
        shutil.rmtree(store)
    project.mkdir()
    manifest = copy_project(project)

    rows = []
    seconds, report = in_process(manifest, store, "-j", "2")
    rows.append(("cold build (-j 2)", seconds, report))
    seconds, report = as_user(manifest, store)
    rows.append(("no-op rebuild (new process)", seconds, report))
    noop = seconds
    recipe = project / "components/xen.yaml"
    recipe.write_text(recipe.read_text().replace("XEN_DOMAIN=xenspin.invalid", "XEN_DOMAIN=bench.invalid"))
    seconds, report = in_process(manifest, store, "-j", "2")
    rows.append(("xen recipe changed", seconds, report))
    changed = report
    motd = project / "overlays/dom0/etc/motd.j2"
    motd.write_text(motd.read_text() + "bench\n")
    seconds, report = in_process(manifest, store, "-j", "2")
    rows.append(("overlay changed", seconds, report))
    overlay = report
    rootfs = overlay["rootfs"]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"{'scenario':<30} {'wall':>9}  {'built':<28} up to date")
    for name, secs, rep in rows:
        print(
            f"{name:<30} {secs:>8.2f}s  {', '.join(sorted(rep['built'])) or '-':<28} {', '.join(sorted(rep['cached'])) or '-'}"
        )
    print(f"{'peak RSS of xenspin':<30} {rss_mb:>7.0f} MB")
    steps = ", ".join(f"{k} {v} s" for k, v in rootfs["seconds"].items())
    print(f"{'rootfs stage (.debs in store)':<30} {rootfs['wall']:>8.2f}s  ({steps})")
    print(f"{'rootfs.squashfs':<30} {rootfs['size'] / 1e6:>7.0f} MB  ({rootfs['packages']} packages)")
    checks = [
        ("no-op rebuild under 0.5 s", noop < 0.5),
        ("change rebuilds xen and what builds after it only", sorted(changed["built"]) == ["xen", "xl"]),
        ("peak RSS under 300 MB", rss_mb < 300),
        ("overlay change rebuilds no component, recomposes the rootfs", overlay["built"] == [] and rootfs["made"]),
        ("rootfs stage under 90 s with its .debs in the store", rootfs["wall"] < 90),
        ("rootfs.squashfs under 200 MB", rootfs["size"] < 200e6),
    ]
    for what, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {what}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
