#!/usr/bin/env python3
"""Benchmark of `xenspin build` (not a test; prints figures).

Three parts, each run alone or together:

  (default)  the default distribution: a cold build into an empty store, a no-op
             rebuild (as a user runs it: a fresh `xenspin` process), a rebuild after
             one component's recipe changed (the installer's: a no-op step added),
             an overlay change, and the peak RSS of the xenspin process itself.
             Targets: no-op under 0.5 s, the recipe change rebuilding that component
             only, an overlay change recomposing only the rootfs (under 90 s,
             squashfs under 200 MB), peak RSS under 300 MB.
  --xen      side by side, each from an empty store: xenspin's `build xen xen-tools`
             of spins/bookworm.yaml (hypervisor and tools from bookworm's Debian
             source `xen`) against Debian's own `dpkg-buildpackage -b` of the very
             same locked source, run by xenspin in a clean bookworm build root holding
             exactly the source's Build-Depends (a spin the bench writes). Goal: the
             build steps of xenspin's hypervisor + tools under half of Debian's.
  --before REV  the default distribution's cold build to its ISO at REV (default
             5002171, the commit before the default moved to Debian 13) next to the
             current one's, both as `python -m builder` processes into empty stores.

    .venv/bin/python bench/build.py [--xen] [--before [REV]] [--default] [--all] [--keep DIR] [--no-record]

It works on copies of the repository's manifests, recipes and locks in a temporary
directory (and `git archive` of REV), so the checkout is never touched. Before each
measured build it waits until the 1-minute load is under --idle (default 0.7; polled
every 30 s for up to --idle-wait seconds, default 1200; --no-wait skips that) and
prints the load it started at. Each run appends its figures to bench/results/build.md
(see bench/record.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import record
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder import build as build_mod  # noqa: E402
from builder import cli, debtree, stage  # noqa: E402
from builder.store import Store  # noqa: E402

BEFORE = "5002171"  # the last commit whose default distribution was Debian 12 with Xen built from source
ARCH = "amd64"
DEBIAN_SPIN = "bench-debian"
DEBIAN_OPTIONS = "nocheck nodoc"  # besides parallel=$JOBS; said in the output


# --- waiting for an idle machine ------------------------------------------------------


@dataclass
class Measured:
    what: str
    load: float  # the 1-minute load it started at
    waited: float  # seconds waited for an idle machine
    wall: float = 0.0
    others: float = 0.0  # CPU seconds other processes took meanwhile (sampled: see Others)


@dataclass
class Idle:
    limit: float
    wait: float
    enabled: bool = True
    seen: list[Measured] = field(default_factory=list)

    @contextlib.contextmanager
    def measure(self, what: str) -> Iterator[None]:
        """Wait until the 1-minute load is under the limit (or the wait runs out), then account the run."""
        start = time.monotonic()
        load = loadavg()
        while self.enabled and load >= self.limit and time.monotonic() - start < self.wait:
            print(f"bench: load {load:.2f} >= {self.limit}; waiting to start {what}", file=sys.stderr, flush=True)
            time.sleep(30)
            load = loadavg()
        measured = Measured(what, load, time.monotonic() - start)
        self.seen.append(measured)
        note = "" if load < self.limit or not self.enabled else " (never got idle: measured anyway)"
        print(
            f"bench: {what}: starting at load {load:.2f} after {measured.waited:.0f} s{note}",
            file=sys.stderr,
            flush=True,
        )
        begun = time.monotonic()
        with Others() as others:
            yield
        measured.wall = time.monotonic() - begun
        measured.others = others.seconds

    def print(self) -> None:
        cores = os.cpu_count() or 1
        print("\nmeasured runs: the 1-minute load each started at, seconds waited for it, and the CPU seconds")
        print("other processes took meanwhile (sampled; kernel threads left out; % of the cores' time):")
        for r in self.seen:
            share = 100 * r.others / (cores * r.wall) if r.wall else 0.0
            print(
                f"  load {r.load:5.2f}  waited {r.waited:5.0f} s  others {r.others:6.1f} s ({share:4.1f} %)  {r.what}"
            )


class Others:
    """Samples, twice a second, which threads of the machine are running (state R in /proc): this
    bench's descendants or anything else (kernel threads left out). rusage cannot tell: bubblewrap
    does not pass its children's CPU time on. Others' CPU seconds are estimated from the samples,
    their share of the cores taken as their share of the running threads when the cores are full."""

    INTERVAL = 0.5

    def __init__(self) -> None:
        self.seconds = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        cores, me = os.cpu_count() or 1, os.getpid()
        while not self.stop.wait(self.INTERVAL):
            mine = others = 0
            parents: dict[int, int] = {}
            running: list[int] = []
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                pid = int(entry.name)
                try:
                    parents[pid] = int(_stat(f"/proc/{pid}/stat")[1])
                    states = [_stat(f"/proc/{pid}/task/{t}/stat")[0] for t in os.listdir(f"/proc/{pid}/task")]
                except (OSError, ValueError, IndexError):
                    continue
                running += [pid] * states.count("R")
            for pid in running:
                if pid == me:
                    continue  # this sampler, or xenspin's own threads: not others either way
                chain, p = set(), pid
                while p > 2 and p != me and p not in chain:
                    chain.add(p)
                    p = parents.get(p, 0)
                if p == me:
                    mine += 1
                elif p != 2 and pid != 2:  # not a kernel thread
                    others += 1
            if others:
                self.seconds += self.INTERVAL * others * min(1.0, cores / (mine + others))

    def __enter__(self) -> Others:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _stat(path: str) -> list[str]:
    """State and parent pid from a /proc stat file (the command name may hold spaces and parentheses)."""
    with open(path) as f:
        return f.read().rsplit(")", 1)[1].split()[:2]


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# --- timing the stages of an in-process build -----------------------------------------


class Timings:
    """What the stages of the last in-process build took, from hooks on xenspin's own functions."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.steps: dict[str, tuple[float, float]] = {}  # component -> (start, end) of its steps
        self.roots: list[tuple[float, float, tuple[str, ...]]] = []  # build roots made: (start, end, packages)
        self.outcomes: dict[str, stage.Outcome] = {}

    def install(self) -> None:
        steps, make_root, run = build_mod._steps, debtree.make_root, stage.Scheduler.run

        def timed_steps(ctx, distro, job, *args, **kwargs):
            start = time.monotonic()
            try:
                return steps(ctx, distro, job, *args, **kwargs)
            finally:
                with self.guard:
                    self.steps[job.name] = (start, time.monotonic())

        def timed_root(ctx, root, tmp, say):
            start = time.monotonic()
            try:
                return make_root(ctx, root, tmp, say)
            finally:
                with self.guard:
                    self.roots.append((start, time.monotonic(), root.packages))

        def recorded_run(scheduler):
            outcomes = run(scheduler)
            self.outcomes.update(outcomes)
            return outcomes

        build_mod._steps = timed_steps
        debtree.make_root = timed_root
        stage.Scheduler.run = recorded_run

    def steps_span(self) -> float:
        """From the first step's start to the last one's end: the critical path of parallel builds."""
        if not self.steps:
            return 0.0
        return max(e for _, e in self.steps.values()) - min(s for s, _ in self.steps.values())

    def root_seconds(self) -> float:
        return sum(e - s for s, e, _ in self.roots)

    def src_seconds(self) -> float:
        return sum(o.seconds for sid, o in self.outcomes.items() if sid.startswith("src:") and o.made)


TIMINGS = Timings()
FIGURES: list[tuple[str, str]] = []  # what this run measured, for bench/results/build.md


# --- running xenspin --------------------------------------------------------------------


def copy_project(dest: Path, spins: bool = False) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("distro.yaml", "distro.lock"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("components", "overlays", *(["spins"] if spins else [])):
        shutil.copytree(ROOT / name, dest / name)
    return dest / "distro.yaml"


def in_process(manifest: Path, store: Path, out: Path, *args: str, command: str = "build") -> tuple[float, dict]:
    """Run `xenspin COMMAND` in this process (so its RSS is ours, its stages timed); return (seconds, report)."""
    buf = io.StringIO()
    TIMINGS.reset()
    start = time.monotonic()
    with contextlib.redirect_stdout(buf):
        code = cli.main(["-f", str(manifest), "--store", str(store), "--out", str(out), "--json", command, *args])
    seconds = time.monotonic() - start
    if code != 0:
        sys.exit(f"bench: xenspin -f {manifest} {command} {' '.join(args)} failed (exit {code})")
    return seconds, json.loads(buf.getvalue())


def as_user(manifest: Path, store: Path, out: Path) -> tuple[float, dict]:
    """Run `xenspin build` as a user does: a new process, imports and all."""
    exe = Path(sys.executable).parent / "xenspin"
    start = time.monotonic()
    proc = subprocess.run(
        [str(exe), "-f", str(manifest), "--store", str(store), "--out", str(out), "--json", "build"],
        capture_output=True,
        text=True,
    )
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"bench: no-op build failed: {proc.stderr.strip()}")
    return seconds, json.loads(proc.stdout)


def module_run(code_dir: Path, manifest: Path, store: Path, out: Path, *args: str) -> tuple[float, dict]:
    """`python -m builder` with the package in code_dir (this interpreter: the same dependencies)."""
    env = {**os.environ, "PYTHONPATH": str(code_dir)}
    where = subprocess.run(
        [sys.executable, "-c", "import builder; print(builder.__file__)"],
        cwd=code_dir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(where).is_relative_to(code_dir):
        sys.exit(f"bench: python -m builder in {code_dir} imports {where}")
    cmd = [sys.executable, "-m", "builder", "-f", str(manifest), "--store", str(store), "--out", str(out)]
    start = time.monotonic()
    proc = subprocess.run([*cmd, "--json", "build", *args], cwd=code_dir, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} build failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return seconds, json.loads(proc.stdout)


# --- the default distribution ------------------------------------------------------------


def default_scenarios(work: Path, idle: Idle) -> list[tuple[str, bool]]:
    project, store, out = work / "default", work / "default-store", work / "default-out"
    manifest = copy_project(project)

    rows = []
    with idle.measure("default: cold build"):
        seconds, report = in_process(manifest, store, out, "-j", "2")
    rows.append(("cold build (-j 2)", seconds, report))
    cold = report
    with idle.measure("default: no-op rebuild"):
        seconds, report = as_user(manifest, store, out)
    rows.append(("no-op rebuild (new process)", seconds, report))
    noop = seconds
    # A no-op step: in the installer's cache key (description is not), nothing else changes.
    recipe = project / "components/installer.yaml"
    text = recipe.read_text()
    assert "\noutputs:" in text
    recipe.write_text(text.replace("\noutputs:", '\n  - name: bench\n    run: "true"\noutputs:', 1))
    with idle.measure("default: installer recipe changed"):
        seconds, report = in_process(manifest, store, out, "-j", "2")
    rows.append(("installer recipe changed", seconds, report))
    changed = report
    motd = project / "overlays/dom0/etc/motd.j2"
    motd.write_text(motd.read_text() + "bench\n")
    with idle.measure("default: overlay changed"):
        seconds, report = in_process(manifest, store, out, "-j", "2")
    rows.append(("overlay changed", seconds, report))
    overlay = report
    rootfs = overlay["rootfs"]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print("\n== the default distribution (distro.yaml) ==")
    print(f"{'scenario':<30} {'wall':>9}  {'built':<28} up to date")
    for name, secs, rep in rows:
        print(
            f"{name:<30} {secs:>8.2f}s  {', '.join(sorted(rep['built'])) or '-':<28} {', '.join(sorted(rep['cached'])) or '-'}"
        )
    print(f"{'peak RSS of xenspin':<30} {rss_mb:>7.0f} MB")
    steps = ", ".join(f"{k} {v} s" for k, v in rootfs["seconds"].items())
    print(f"{'rootfs stage (.debs in store)':<30} {rootfs['wall']:>8.2f}s  ({steps})")
    print(f"{'rootfs.squashfs':<30} {rootfs['size'] / 1e6:>7.0f} MB  ({rootfs['packages']} packages)")
    if "iso" in cold:
        print(f"{'cold: the ISO':<30} {cold['iso']['wall']:>8.2f}s  ({cold['iso'].get('size', 0) / 1e6:.0f} MB)")
    FIGURES.extend(
        (f"default: {name}", f"{secs:.2f} s, built: {', '.join(sorted(rep['built'])) or '-'}")
        for name, secs, rep in rows
    )
    FIGURES.append(("default: peak RSS of xenspin", f"{rss_mb:.0f} MB"))
    FIGURES.append(("default: rootfs stage (.debs in store)", f"{rootfs['wall']:.2f} s ({steps})"))
    FIGURES.append(("default: rootfs.squashfs", f"{rootfs['size'] / 1e6:.0f} MB ({rootfs['packages']} packages)"))
    if "iso" in cold:
        FIGURES.append(
            ("default: cold, the ISO stage", f"{cold['iso']['wall']:.2f} s ({cold['iso'].get('size', 0) / 1e6:.0f} MB)")
        )
    return [
        ("no-op rebuild under 0.5 s", noop < 0.5),
        ("installer recipe change rebuilds the installer only", sorted(changed["built"]) == ["installer"]),
        ("peak RSS under 300 MB", rss_mb < 300),
        ("overlay change rebuilds no component, recomposes the rootfs", overlay["built"] == [] and rootfs["made"]),
        ("rootfs stage under 90 s with its .debs in the store", rootfs["wall"] < 90),
        ("rootfs.squashfs under 200 MB", rootfs["size"] < 200e6),
    ]


# --- xenspin against dpkg-buildpackage ------------------------------------------------------


def build_depends(dsc: dict) -> list[str]:
    """The .dsc's Build-Depends(-Arch, -Indep) as plain names for amd64: no versions or arch
    qualifiers, alternatives resolved to the first, entries for other architectures or for
    build profiles that are off dropped; debhelper-compat is debhelper's virtual package."""
    from debian.deb822 import PkgRelation

    names: list[str] = []
    for fname in ("Build-Depends", "Build-Depends-Arch", "Build-Depends-Indep"):
        text = dsc.get(fname, "").strip()
        for alternatives in PkgRelation.parse_relations(text) if text else []:
            for rel in alternatives:
                if _for_amd64(rel) and _no_profile(rel):
                    name = "debhelper" if rel["name"] == "debhelper-compat" else rel["name"]
                    names.append(name)
                    break
    return list(dict.fromkeys(names))


def _for_amd64(rel: dict) -> bool:
    arches = rel.get("arch")
    if not arches:
        return True
    if any(a.enabled for a in arches):
        return any(a.enabled and a.arch in (ARCH, "any", "linux-any") for a in arches)
    return all(a.arch != ARCH for a in arches)


def _no_profile(rel: dict) -> bool:
    """Needed with no build profile active: some formula holds whose terms are all negated (<!nocheck>)."""
    formulas = rel.get("restrictions")
    return not formulas or any(all(not term.enabled for term in formula) for formula in formulas)


def binary_packages(dsc: dict) -> list[str]:
    """The binary packages the .dsc's Package-List builds on amd64 (and arch: all), with their -dbgsym."""
    out: list[str] = []
    for line in dsc.get("Package-List", "").strip().splitlines():
        parts = line.split()
        arches = next((p[5:].split(",") for p in parts if p.startswith("arch=")), ["any"])
        if any(a in (ARCH, "any", "all", "linux-any") for a in arches):
            out += [parts[0], parts[0] + "-dbgsym"]
    return out


def debian_recipe(version: str, depends: list[str], debs: list[str]) -> dict:
    return {
        "description": "bench: Debian's own dpkg-buildpackage -b of its xen source",
        "source": {"debian": "xen", "version": version},
        "build-depends": sorted({"build-essential", "fakeroot", *depends}),
        "steps": [
            {
                "name": "dpkg-buildpackage",
                "run": (
                    'dpkg-source -x "$SRCPKG"/*.dsc "$BUILD/src"\n'
                    'cd "$BUILD/src"\n'
                    f'DEB_BUILD_OPTIONS="parallel=$JOBS {DEBIAN_OPTIONS}" dpkg-buildpackage -b -uc -us -j"$JOBS"\n'
                    'ls -l "$BUILD"/*.deb\n'
                    'mv "$BUILD"/*.deb "$DEBS/"\n'
                ),
            }
        ],
        "debs": debs,
    }


@dataclass
class Side:
    name: str
    wall: float
    steps: float
    steps_each: dict[str, float]
    root: float
    root_packages: int
    src: float
    debs: list[Path]


def summarize_side(name: str, wall: float, report: dict) -> Side:
    each = {k: round(e - s, 1) for k, (s, e) in sorted(TIMINGS.steps.items())}
    packages = max((len(p) for _, _, p in TIMINGS.roots), default=0)
    debs = [Path(p) for ps in report["debs"].values() for p in ps]
    return Side(name, wall, TIMINGS.steps_span(), each, TIMINGS.root_seconds(), packages, TIMINGS.src_seconds(), debs)


# What a .deb holds, read from its file list: (label, pattern on ./paths).
FEATURES = [
    ("hypervisor", r"^\./boot/xen[^/]*\.gz$"),
    ("xen.efi", r"xen[^/]*\.efi$"),
    ("xl", r"/sbin/xl$"),
    ("xenstored (C)", r"/(sbin|bin)/xenstored$|/xenstored$"),
    ("oxenstored (OCaml)", r"oxenstored$"),
    ("OCaml libraries", r"/ocaml/"),
    ("hvmloader", r"/hvmloader$"),
    ("PV shim", r"xen-shim"),
    ("pygrub", r"pygrub"),
    ("Python bindings", r"/python[0-9.]*/(?:(?:dist|site)-packages/)?xen/lowlevel/"),
    ("stub domains", r"/boot/[^/]*stubdom[^/]*\.gz$|/xenstorepvh"),
    ("headers", r"^\./usr/include/"),
    ("static libraries", r"\.a$"),
    ("HTML docs", r"/share/doc/[^/]+/html/"),
    ("man pages", r"^\./usr/share/man/"),
    ("debug symbols", r"^\./usr/lib/debug/"),
]


def produced(debs: list[Path]) -> tuple[list[str], list[str], int, int]:
    """(package names, features found, files, bytes of .debs)."""
    names, found, files = [], set(), 0
    for deb in debs:
        names.append(deb.name.split("_")[0])
        listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
        # Files and links only: an empty ./usr/lib/debug/ directory holds no debug symbols.
        lines = [line for line in listing.splitlines() if line[:1] in "-lh"]
        paths = [line.split(maxsplit=5)[-1].split(" -> ")[0] for line in lines]
        files += sum(1 for line in lines if line.startswith("-"))
        for label, pattern in FEATURES:
            if any(re.search(pattern, p) for p in paths):
                found.add(label)
    return sorted(names), [label for label, _ in FEATURES if label in found], files, sum(d.stat().st_size for d in debs)


def xen_side_by_side(work: Path, idle: Idle) -> list[tuple[str, bool]]:
    project = work / "xen"
    copy_project(project, spins=True)
    spin = project / "spins/bookworm.yaml"
    prep, scratch = work / "prep-store", work / "prep-out"

    # Untimed preparation: both locks complete (in a store thrown away), the .dsc read.
    in_process(spin, prep, scratch, command="lock")
    entry = yaml.safe_load(spin.with_suffix(".lock").read_text())["components"]["xen"]
    version = entry["version"]
    in_process(spin, prep, scratch, "xen", command="fetch")
    (dsc_name,) = [n for n in entry["files"] if n.endswith(".dsc")]
    from debian.deb822 import Deb822

    dsc = Deb822(Store(prep).blob_path(entry["files"][dsc_name]["sha256"]).read_bytes())
    assert dsc["Version"] == version, (dsc["Version"], version)
    depends, debs = build_depends(dsc), binary_packages(dsc)
    recipe = debian_recipe(version, depends, debs)
    (project / "components/xen-dpkg.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False, width=100))
    debian_spin = project / f"spins/{DEBIAN_SPIN}.yaml"
    debian_spin.write_text(
        yaml.safe_dump(
            {
                "extends": "bookworm.yaml",
                "description": "bench: Debian's dpkg-buildpackage -b of bookworm's xen, nothing else built",
                # One component builds both halves (Debian's packaging); the tools component goes.
                "xen": {"mixed": True},
                # outputs and package said again: bookworm.yaml's recipe would lend its own otherwise.
                "components": {
                    "xen": {"recipe": "../components/xen-dpkg.yaml", "outputs": [], "package": None},
                    "xen-tools": None,
                },
            },
            sort_keys=False,
        )
    )
    shutil.copy2(spin.with_suffix(".lock"), debian_spin.with_suffix(".lock"))
    in_process(debian_spin, prep, scratch, command="lock")
    locked = yaml.safe_load(debian_spin.with_suffix(".lock").read_text())["components"]["xen"]
    assert locked["version"] == version and locked["files"] == entry["files"], "the two spins lock different sources"
    shutil.rmtree(prep)
    shutil.rmtree(scratch, ignore_errors=True)

    sides: list[Side] = []
    with idle.measure("xen: xenspin build xen xen-tools"):
        wall, report = in_process(
            spin, work / "xen-store-xenspin", work / "xen-out-xenspin", "-j", "2", "xen", "xen-tools"
        )
    assert sorted(report["built"]) == ["xen", "xen-tools"], report["built"]
    sides.append(summarize_side("xenspin: build xen xen-tools", wall, report))
    with idle.measure("xen: Debian dpkg-buildpackage -b"):
        wall, report = in_process(debian_spin, work / "xen-store-debian", work / "xen-out-debian", "-j", "2", "xen")
    assert report["built"] == ["xen"], report["built"]
    sides.append(summarize_side("Debian: dpkg-buildpackage -b", wall, report))

    print(f"\n== Xen {version} (bookworm's Debian source xen), hypervisor + tools, {os.cpu_count()} cores ==")
    print(f"Debian side: Build-Depends from the .dsc ({len(depends)}): {' '.join(depends)}")
    print(f"             + build-essential, fakeroot; DEB_BUILD_OPTIONS='parallel=$JOBS {DEBIAN_OPTIONS}'; $JOBS = 2")
    head = f"{'side':<32} {'wall':>8} {'build root':>11} {'source':>7} {'build steps':>12}  produced"
    print(head)
    for side in sides:
        names, features, files, size = produced(side.debs)
        each = ", ".join(f"{k} {v:.0f} s" for k, v in side.steps_each.items())
        print(
            f"{side.name:<32} {side.wall:>7.0f}s {side.root:>10.0f}s {side.src:>6.0f}s {side.steps:>11.0f}s"
            f"  {len(names)} .debs, {size / 1e6:.1f} MB, {files} files"
        )
        print(f"{'':<32}   steps: {each}; build root {side.root_packages} packages asked for")
        print(f"{'':<32}   packages: {', '.join(names)}")
        print(f"{'':<32}   holds: {', '.join(features)}")
        FIGURES.append(
            (
                f"xen {version}: {side.name}",
                f"wall {side.wall:.0f} s, build root {side.root:.0f} s, source {side.src:.0f} s,"
                f" build steps {side.steps:.0f} s ({each}); {len(names)} .debs, {size / 1e6:.1f} MB",
            )
        )
    ours, theirs = sides
    ratio = ours.steps / theirs.steps if theirs.steps else float("inf")
    whole = ours.wall / theirs.wall if theirs.wall else float("inf")
    print(
        f"compared: the build steps (xenspin: from the first step's start to the last one's end, the hypervisor"
        f" and the tools built at once; Debian: dpkg-source -x + dpkg-buildpackage -b), {ratio:.2f} of Debian's;"
        f" whole commands (lock check, fetch, build root, unpack, steps, packaging): {whole:.2f}"
    )
    FIGURES.append((f"xen {version}: xenspin's build steps / Debian's", f"{ratio:.2f}"))
    FIGURES.append((f"xen {version}: xenspin's whole command / Debian's", f"{whole:.2f}"))
    return [
        ("xenspin's hypervisor + tools build steps under half of Debian's dpkg-buildpackage -b", ratio < 0.5),
        ("xenspin's whole `build xen xen-tools` under half of Debian's whole build", whole < 0.5),
    ]


# --- the default before and after the move ---------------------------------------------------


def before_after(work: Path, rev: str, idle: Idle) -> list[tuple[str, bool]]:
    old = work / f"before-{rev}"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    described = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s", rev], capture_output=True, text=True, check=True
    ).stdout.strip()
    current = work / "after"
    manifest = copy_project(current)

    rows = []
    with idle.measure(f"before: {rev} cold build to ISO"):
        rows.append(
            (f"before ({rev})", *module_run(old, old / "distro.yaml", work / "before-store", old / "out", "-j", "2"))
        )
    with idle.measure("after: current cold build to ISO"):
        rows.append(
            ("after (this tree)", *module_run(ROOT, manifest, work / "after-store", current / "out", "-j", "2"))
        )

    print("\n== the default distribution's cold build to its ISO, before and after the move to Debian 13 ==")
    print(f"before: {described}")
    print(f"{'default':<22} {'base':<9} {'wall':>7}  {'rootfs':>7} {'ISO':>6}  built (s)")
    for name, wall, rep in rows:
        manifest_file = (old if name.startswith("before") else current) / "distro.yaml"
        suite = yaml.safe_load(manifest_file.read_text())["base"]["suite"]
        built = ", ".join(f"{n} {rep['seconds'][n]:.0f}" for n in rep["built"])
        rootfs, image = rep.get("rootfs") or {}, rep.get("iso") or {}
        print(
            f"{name:<22} {suite:<9} {wall:>6.0f}s  {rootfs.get('wall', 0):>6.0f}s {image.get('wall', 0):>5.0f}s  {built}"
            f"  (ISO {image.get('size', 0) / 1e6:.0f} MB)"
        )
        FIGURES.append(
            (
                f"cold build to the ISO, {name}, {suite}",
                f"{wall:.0f} s (rootfs {rootfs.get('wall', 0):.0f} s, ISO {image.get('wall', 0):.0f} s,"
                f" {image.get('size', 0) / 1e6:.0f} MB)",
            )
        )
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--default", action="store_true", help="the default distribution's scenarios (the default)")
    parser.add_argument("--xen", action="store_true", help="xenspin's Xen build against Debian's dpkg-buildpackage")
    parser.add_argument(
        "--before", nargs="?", const=BEFORE, metavar="REV", help=f"the default's cold build at REV (default {BEFORE})"
    )
    parser.add_argument("--all", action="store_true", help="all three")
    parser.add_argument("--keep", type=Path, help="use (and keep) this directory instead of a temporary one")
    parser.add_argument("--idle", type=float, default=0.7, help="start a measured build below this 1-minute load")
    parser.add_argument("--idle-wait", type=float, default=1200, help="seconds to wait for that at most")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for an idle machine")
    record.options(parser)
    args = parser.parse_args()
    run = record.Run("build")
    if args.all:
        args.default, args.xen, args.before = True, True, args.before or BEFORE
    if not (args.xen or args.before):
        args.default = True
    work = args.keep or Path(tempfile.mkdtemp(prefix="xenspin-bench."))
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        sys.exit(f"bench: {work} is not empty (expected a new or empty directory)")
    idle = Idle(args.idle, args.idle_wait, not args.no_wait)
    TIMINGS.install()
    print(f"bench: {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores, work in {work}", flush=True)

    checks: list[tuple[str, bool]] = []
    if args.default:
        checks += default_scenarios(work, idle)
    if args.xen:
        checks += xen_side_by_side(work, idle)
    if args.before:
        checks += before_after(work, args.before, idle)
    idle.print()
    FIGURES.extend(
        (f"load at the start of {r.what}", f"{r.load:.2f} (others took {r.others:.0f} s of CPU)") for r in idle.seen
    )
    code = run.finish(FIGURES, checks, not args.no_record)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
