#!/usr/bin/env python3
"""Benchmark of builds on Dask workers against a local -j2 build (not a test; prints figures).

    .venv/bin/python bench/workers.py [--sources STORE] [--keep DIR] [--no-record]

Both builds start cold (no stage output anywhere) from a store holding only the default
distribution's sources: hard links to the blobs of STORE (e.g. a store a build used), or,
without --sources, a `xenspin fetch` made first and not timed.

1. local: `xenspin build -j2`, no cache;
2. workers: nginx with WebDAV as the cache, `dask scheduler` and two `xenspin worker`
   processes on this machine, each with an empty store of its own, and `xenspin build
   --scheduler` from a client store holding the sources.

It reports both wall times, where the workers' time went (each stage's time on its
worker, the bytes through the cache) and checks that the two ISOs are the same bytes.
Results are appended to bench/results/workers.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import record
from cache import build, copy_project, iso_sha, start_nginx, stats, xenspin

DASK = Path(sys.executable).parent / "dask"


def seeded(store: Path, sources: Path) -> Path:
    """A store holding the sources' blobs (hard links) and nothing else."""
    (store / "blobs").mkdir(parents=True)
    subprocess.run(["cp", "-al", str(sources / "blobs/sha256"), str(store / "blobs/")], check=True)
    return store


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=Path, help="a store whose blobs hold the sources (hard-linked, not timed)")
    parser.add_argument("--keep", type=Path, help="use (and keep) this directory instead of a temporary one")
    record.options(parser)
    args = parser.parse_args()
    run = record.Run("workers")
    with record.workdir(args.keep, "xenspin-bench-workers.") as work:
        for d in ("project", "sources", "local", "client", "w1", "w2", "out-local", "out-workers", "nginx"):
            shutil.rmtree(work / d, ignore_errors=True)
        (work / "project").mkdir()
        manifest = copy_project(work / "project")
        sources = args.sources
        if sources is None:
            sources = work / "sources"
            took, proc = xenspin("-f", str(manifest), "--store", str(sources), "fetch")
            if proc.returncode != 0:
                sys.exit(f"bench: fetch failed:\n{proc.stderr}")
            print(f"fetched the sources in {took:.0f} s (not timed)")
        env_epoch = os.environ.setdefault("SOURCE_DATE_EPOCH", "1700000000")
        print(f"SOURCE_DATE_EPOCH={env_epoch}")

        local, _ = build(
            manifest, seeded(work / "local", sources), work / "out-local", "--no-cache"
        )  # -j 2: the default
        print(f"local -j2, cold: {local:.1f} s")

        nginx, url = start_nginx(work / "nginx")
        procs: list[subprocess.Popen] = []
        try:
            sched_file = work / "scheduler.json"
            sched_file.unlink(missing_ok=True)
            procs.append(
                start(
                    [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(sched_file)],
                    work / "scheduler.log",
                )
            )  # fmt: skip
            while not sched_file.exists():
                time.sleep(0.2)
            address = json.loads(sched_file.read_text())["address"]
            exe = str(Path(sys.executable).parent / "xenspin")
            for name in ("w1", "w2"):
                procs.append(
                    start([exe, "--store", str(work / name), "worker", address, "--name", name], work / f"{name}.log")
                )
            time.sleep(5)  # the workers join
            client = seeded(work / "client", sources)
            start_time = time.monotonic()
            proc = subprocess.run(
                [exe, "-f", str(manifest), "--store", str(client), "--out", str(work / "out-workers"),
                 "--cache", url, "build", "--scheduler", address],
                capture_output=True, text=True,
            )  # fmt: skip
            distributed = time.monotonic() - start_time
            if proc.returncode != 0:
                sys.exit(f"bench: the build on workers failed:\n{proc.stderr}")
        finally:
            for p in procs:
                os.killpg(p.pid, 9)
            nginx.terminate()
        down = stats(client)
        stages = re.findall(r"^(\S+): made on (\S+) .* in ([0-9.]+) s$", proc.stderr, re.M)
        per_worker: dict[str, float] = {}
        for _, worker, secs in stages:
            per_worker[worker] = per_worker.get(worker, 0.0) + float(secs)
        same = iso_sha(work / "out-local") == iso_sha(work / "out-workers")
        print(f"two workers, cold: {distributed:.1f} s ({distributed / local:.2f}x the local -j2 build)")
        for stage, worker, secs in stages:
            print(f"  {stage}: {secs} s on {worker}")
        figures = [
            ("local `build -j2`, cold (sources in the store)", f"{local:.1f} s"),
            ("two workers on this machine, cold", f"{distributed:.1f} s ({distributed / local:.2f}x local)"),
            (
                "stages on the workers (seconds, each worker's share)",
                ", ".join(f"{s} {t} s on {w}" for s, w, t in stages),
            ),
            ("busy time per worker", ", ".join(f"{w} {t:.1f} s" for w, t in sorted(per_worker.items()))),
            (
                "the client took back from the cache",
                f"{down.get('bytes_down', 0) / 2**20:.0f} MiB in {down.get('seconds_down', 0):.1f} s, {down.get('hits')} records",
            ),
            ("the two ISOs", "the same bytes" if same else "DIFFERENT"),
        ]
        return run.finish(figures, [("workers: the same ISO as the local build", same)], not args.no_record)


if __name__ == "__main__":
    sys.exit(main())
