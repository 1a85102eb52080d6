#!/usr/bin/env python3
"""Benchmark of the remote cache with the default distribution (not a test; prints figures).

    .venv/bin/python bench/cache.py [--keep DIR] [--no-record]

It starts nginx with WebDAV on a free 127.0.0.1 port (Debian's nginx, which `xenspin
setup` installs) as the cache, then:

1. a cold `xenspin build` of the default distribution into an empty store, with the
   cache: it builds everything and sends it (the time spent sending is reported apart);
2. a second machine: an empty store and the warm cache, to the same ISO (byte for byte);
3. no-op builds in that store, in new processes, with the cache and with `--no-cache`,
   alternated: the cost of having a cache on a build with nothing to do.

Goals (the remote cache's issue): step 2 under 10% of step 1's build time; the cache
adds under 0.1 s to a no-op build. Results are appended to bench/results/cache.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import record

ROOT = Path(__file__).resolve().parent.parent
NOOP_RUNS = 7

NGINX_CONF = """\
master_process off;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    root {d}/www;
    location / {{
      dav_methods PUT;
      create_full_put_path on;
      client_max_body_size 0;
    }}
  }}
}}
"""


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


def start_nginx(d: Path) -> tuple[subprocess.Popen, str]:
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    (d / "www").mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (d / "nginx.conf").write_text(NGINX_CONF.format(d=d, port=port))
    proc = subprocess.Popen(
        [exe, "-p", str(d), "-e", str(d / "error.log"), "-c", str(d / "nginx.conf"), "-g", "daemon off;"]
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}/xenspin"
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    sys.exit(f"bench: nginx did not start: {(d / 'error.log').read_text()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="use (and keep) this directory instead of a temporary one")
    record.options(parser)
    args = parser.parse_args()
    run = record.Run("cache")
    with record.workdir(args.keep, "xenspin-bench-cache.") as work:
        nginx, url = start_nginx(work / "nginx")
        try:
            return measure(args, run, work, url)
        finally:
            nginx.terminate()
            nginx.wait(10)


def build(manifest: Path, store: Path, out: Path, *extra: str) -> tuple[float, dict]:
    took, proc = xenspin("-f", str(manifest), "--store", str(store), "--out", str(out), *extra, "--json", "build")
    if proc.returncode != 0:
        sys.exit(f"bench: build into {store} failed:\n{proc.stderr}")
    return took, json.loads(proc.stdout)


def stats(store: Path) -> dict:
    _, proc = xenspin("--store", str(store), "--json", "cache", "stats")
    return json.loads(proc.stdout) or {}


def iso_sha(out: Path) -> str:
    (image,) = sorted(out.glob("*-amd64.iso"))
    return hashlib.sha256(image.read_bytes()).hexdigest()


def measure(args: argparse.Namespace, run: record.Run, work: Path, url: str) -> int:
    figures: list[tuple[str, str]] = []
    checks: list[tuple[str, bool]] = []
    project = work / "project"
    for d in (project, work / "a", work / "b", work / "out-a", work / "out-b"):
        if d.exists():
            shutil.rmtree(d)
    project.mkdir()
    manifest = copy_project(project)

    cold, report = build(manifest, work / "a", work / "out-a", "--cache", url)
    up = stats(work / "a")
    making = cold - up.get("seconds_up", 0.0)
    print(f"cold build to the ISO, sending to the cache: {cold:.1f} s")
    print(
        f"  of it sending: {up.get('seconds_up', 0):.1f} s ({up.get('bytes_up', 0) / 2**20:.0f} MiB, {up.get('uploads')} records)"
    )
    figures.append(("cold build to the ISO (empty store, sending to the cache)", f"{cold:.1f} s"))
    figures.append(
        (
            "of it sending to the cache",
            f"{up.get('seconds_up', 0):.1f} s, {up.get('bytes_up', 0) / 2**20:.0f} MiB in {up.get('blobs_up')} blobs, "
            f"{up.get('uploads')} records",
        )
    )
    figures.append(("cold build without the sending", f"{making:.1f} s"))

    warm, report = build(manifest, work / "b", work / "out-b", "--cache", url)
    down = stats(work / "b")
    made = report["built"] or [k for k in ("rootfs", "iso") if report.get(k, {}).get("made")]
    same = iso_sha(work / "out-a") == iso_sha(work / "out-b")
    print(f"empty store, warm cache, to the ISO: {warm:.1f} s ({warm / making:.1%} of the cold build)")
    print(
        f"  down: {down.get('bytes_down', 0) / 2**20:.0f} MiB in {down.get('seconds_down', 0):.1f} s,"
        f" {down.get('hits')} records, {down.get('sources_down')} source files; made here: {made or 'nothing'}"
    )
    figures.append(("empty store, warm cache, to the ISO", f"{warm:.1f} s ({warm / making:.1%} of the cold build)"))
    figures.append(
        (
            "of it downloading",
            f"{down.get('seconds_down', 0):.1f} s, {down.get('bytes_down', 0) / 2**20:.0f} MiB in "
            f"{down.get('blobs_down')} blobs ({down.get('sources_down')} source files), {down.get('hits')} records; "
            f"{down.get('blobs_local')} blobs linked",
        )
    )
    figures.append(("made on the second machine", ", ".join(made) or "nothing"))
    figures.append(("the two ISOs", "the same bytes" if same else "DIFFERENT"))
    checks.append(("warm cache: the ISO in under 10% of the cold build", warm < 0.10 * making))
    checks.append(("warm cache: nothing made, the same ISO", not made and same))

    log = work / "nginx/access.log"
    asked = len(log.read_text().splitlines())
    times: dict[str, list[float]] = {"cache": [], "none": []}
    for _ in range(NOOP_RUNS):
        for name, extra in (("cache", ["--cache", url]), ("none", ["--no-cache"])):
            took, report = build(manifest, work / "b", work / "out-b", *extra)
            times[name].append(took)
    quiet = len(log.read_text().splitlines()) == asked
    with_cache, without = statistics.median(times["cache"]), statistics.median(times["none"])
    print(f"no-op build, median of {NOOP_RUNS}: {with_cache:.3f} s with the cache, {without:.3f} s without")
    figures.append(
        (
            f"no-op build, median of {NOOP_RUNS} new processes",
            f"{with_cache:.3f} s with the cache, {without:.3f} s without",
        )
    )
    figures.append(("requests to the cache during the no-op builds", "none" if quiet else "some"))
    checks.append(("a cache adds under 0.1 s to a no-op build", with_cache - without < 0.1))
    return run.finish(figures, checks, not args.no_record)


if __name__ == "__main__":
    raise SystemExit(main())
