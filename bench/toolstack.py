#!/usr/bin/env python3
"""Benchmark of the XCP toolstack spin (not a test; prints figures).

    .venv/bin/python bench/toolstack.py [--keep DIR] [--mirror DIR] [--no-record]

A cold `xenspin -f spins/xcp.yaml build` into an empty store, with GitHub and xenbits
mapped to the upstream repositories carried beside the checkout (../shared/mirror, or
--mirror DIR): the time of the whole build, of each toolstack component (dune, the OCaml
libraries, Xen's bindings, xen-api, sm), and the toolstack's share of the ISO (the size of
its packages against the ISO's). Works on copies in a temporary directory; the checkout
is never touched.

Issue 19 asks for both figures on 2 cores; each run appends them to
bench/results/toolstack.md (see bench/record.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import record
from iso import copy_project, xenspin

ROOT = Path(__file__).resolve().parent.parent
TOOLSTACK = ("ocaml-", "xen-ocaml", "xen-api", "sm", "blktap", "xcp-host")  # the components only the toolstack needs
SHIPPED = ("xen-api", "sm", "blktap", "xcp-host")  # the toolstack's packages on the host


def writable_mirror(carried: Path, dest: Path) -> Path:
    """A copy of the carried xenbits tree with the refs/ directory git needs (the carried copy lacks it)."""
    shutil.copytree(carried / "xenbits.xen.org", dest / "xenbits.xen.org", symlinks=True)
    (dest / "xenbits.xen.org/git-http/xen.git/refs/heads").mkdir(parents=True, exist_ok=True)
    (dest / "xenbits.xen.org/git-http/xen.git/refs/tags").mkdir(parents=True, exist_ok=True)
    return dest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="use (and keep) this directory instead of a temporary one")
    parser.add_argument("--mirror", type=Path, default=ROOT.parent / "shared" / "mirror")
    record.options(parser)
    args = parser.parse_args()
    run = record.Run("toolstack")
    figures: list[tuple[str, str]] = []
    checks: list[tuple[str, bool]] = []
    with record.workdir(args.keep, "xenspin-bench-toolstack.") as work:
        project, store, out, mirror = work / "project", work / "store", work / "out", work / "mirror"
        for d in (project, store, out, mirror):
            if d.exists():
                shutil.rmtree(d)
        project.mkdir()
        mirror.mkdir()
        copy_project(project)
        shutil.copytree(ROOT / "spins", project / "spins")
        writable_mirror(args.mirror, mirror)
        maps = [
            f"https://github.com/={(args.mirror / 'github.com').as_uri()}/",
            f"https://xenbits.xen.org/={(mirror / 'xenbits.xen.org').as_uri()}/",
        ]
        common = ["-f", str(project / "spins/xcp.yaml"), "--store", str(store), "--out", str(out)]
        common += [a for m in maps for a in ("--mirror", m)]
        cold, proc = xenspin(*common, "--json", "build")
        if proc.returncode != 0:
            sys.exit(f"bench: cold build failed:\n{proc.stderr}")
        report = json.loads(proc.stdout)
        print(f"cold build of the xcp spin to the ISO: {cold:.0f} s ({os.cpu_count()} cores)")
        figures.append(("cold build of the xcp spin to the ISO", f"{cold:.0f} s"))
        stages = json.loads((out / "build-info.json").read_text()).get("stages", {})
        seconds = {k.split(":", 1)[1]: v.get("seconds", 0) for k, v in stages.items() if k.startswith("build:")}
        ours = {k: s for k, s in seconds.items() if k.startswith(TOOLSTACK)}
        for name in ("ocaml-dune", "xen-ocaml", "xen-api", "sm"):
            figures.append((f"build {name}", f"{ours.get(name, 0):.0f} s"))
        libraries = sum(s for k, s in ours.items() if k.startswith("ocaml-") and k != "ocaml-dune")
        figures.append(("build the OCaml libraries (sum)", f"{libraries:.0f} s"))
        figures.append(("toolstack builds (sum, without build roots)", f"{sum(ours.values()):.0f} s"))
        print("toolstack builds:", ", ".join(f"{k} {v:.0f} s" for k, v in sorted(ours.items(), key=lambda kv: -kv[1])))
        (iso,) = sorted(out.glob("*-amd64.iso"))
        debs = [Path(p) for name in SHIPPED for p in report["debs"][name]]
        size = sum(d.stat().st_size for d in debs)
        share = size / iso.stat().st_size
        print(f"ISO {iso.stat().st_size / 1e6:.0f} MB; toolstack packages {size / 1e6:.0f} MB ({share:.0%})")
        figures.append(("ISO size", f"{iso.stat().st_size / 1e6:.0f} MB ({iso.name})"))
        figures.append(
            (
                "toolstack packages (xenspin-xapi, -sm, -blktap, -xcp-host; xz)",
                f"{size / 1e6:.0f} MB, {share:.0%} of the ISO",
            )
        )
        checks.append(("the ISO carries the toolstack", "xenspin-xapi" in (out / "packages.json").read_text()))
        return run.finish(figures, checks, not args.no_record)


if __name__ == "__main__":
    raise SystemExit(main())
