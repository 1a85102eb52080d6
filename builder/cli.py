"""Command line: parse arguments, call the stage, print the result. No logic of its own."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import os
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import yaml

from . import (
    __version__,
    answercheck,
    cache,
    config,
    dataschema,
    debsources,
    errors,
    fetch,
    host,
    installtest,
    interactivetest,
    iso,
    lock,
    manifest,
    nightly,
    packagesets,
    pipeline,
    plan,
    release,
    relnotes,
    srcrelease,
    upgradetest,
    vmtest,
    workers,
)
from .context import Context
from .errors import XenspinError
from .progress import Reporter
from .store import Store


def _path(text: str) -> Path:
    """A path option: empty is refused (Path("") would quietly mean the working directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a directory, got an empty string")
    return Path(text)


def _globals(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Global options, accepted before or after the command."""

    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "-f", "--file", type=_path, default=d(Path("distro.yaml")), help="manifest (default ./distro.yaml)"
    )
    parser.add_argument(
        "--store", type=_path, default=d(None), help="store directory (default $XDG_CACHE_HOME/xenspin/store)"
    )
    parser.add_argument("--out", type=_path, default=d(Path("out")), help="output directory (default ./out)")
    parser.add_argument("-v", "--verbose", action="count", default=d(0), help="say more (repeat for debug)")
    parser.add_argument("--json", action="store_true", default=d(False), help="machine-readable output")
    parser.add_argument(
        "--mirror", action="append", default=d([]), metavar="FROM=TO", help="rewrite URLs starting FROM to start TO"
    )
    parser.add_argument(
        "--offline", action="store_true", default=d(False), help="use only the store; name what is missing"
    )
    parser.add_argument(
        "--strict", action="store_true", default=d(False), help="an optional component left out is an error"
    )
    parser.add_argument(
        "--cache",
        metavar="URL",
        default=d(None),
        help="remote cache shared with other machines: http(s)://HOST/PATH or s3://BUCKET/PREFIX (default: config's cache.url)",
    )
    parser.add_argument("--no-cache", action="store_true", default=d(False), help="use no remote cache in this run")
    parser.add_argument(
        "--cache-read-only", action="store_true", default=d(False), help="take from the remote cache, never write to it"
    )
    parser.add_argument(
        "--cache-trust",
        choices=cache.TRUST,
        default=d(None),
        help="use any record, or only records signed by a key of --cache-keyring (default: config's cache.trust, any)",
    )
    parser.add_argument(
        "--cache-keyring",
        type=Path,
        action="append",
        default=d([]),
        metavar="K",
        help="a public key whose signatures --cache-trust signed accepts (repeatable; default: config's cache.keyring)",
    )


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xenspin", description="Build a Xen distribution from distro.yaml.")
    parser.add_argument("--version", action="version", version=f"xenspin {__version__}")
    _globals(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _globals(p, suppress=True)
        return p

    add("validate", "check the manifest, its spins and recipes; print nothing else when it is good")
    add("show", "print the resolved manifest (after spins and recipes) as YAML, or JSON with --json")
    add("plan", "print the stages and the components in build order with what each needs")
    p = add("schema", "print a JSON Schema of manifest files (for editors and CI)")
    p.add_argument("--markdown", action="store_true", help="print the field table of docs/manifest.md instead")
    p.add_argument("--answerfile", action="store_true", help="the schema of YAML answerfiles instead")
    p = add("validate-answerfile", "check an installer answerfile (YAML or XenServer XML) without installing")
    p.add_argument("answerfile", type=Path, metavar="FILE")
    p = add("setup", "install the Debian packages xenspin runs and arrange unprivileged builds (needs root)")
    p.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME",
        help="an ordinary account that will run xenspin: give it subordinate ids (repeatable)",
    )
    p = add("lock", "resolve every source to exact revisions and digests and write the lock (distro.lock)")
    p.add_argument("--update", nargs="*", metavar="COMP", help="re-resolve these components (none named: all)")
    p.add_argument(
        "--allow-moved-tags", action="store_true", help="re-pin a tag that now names another commit than the locked one"
    )
    p = add("fetch", "fill the store with the locked sources, verified")
    p.add_argument("components", nargs="*", metavar="COMP", help="only these components")
    p.add_argument(
        "--from",
        dest="source_release",
        type=_path,
        metavar="DIR",
        help="take the sources from a source release (NAME-VERSION-source/) first; they are checked as any fetch",
    )
    p = add("build", "lock what is missing, fetch, and build the components (all, or COMP and what it needs)")
    p.add_argument("components", nargs="*", metavar="COMP", help="only these components and what they need")
    p.add_argument("-j", "--jobs", type=int, default=2, help="components built at once (default 2)")
    p.add_argument("--answerfile", type=Path, metavar="FILE", help="build this answerfile into the ISO (unattended)")
    p.add_argument(
        "--allow-plaintext-password",
        action="store_true",
        help="build an answerfile giving root a plain password into the ISO (refused otherwise: give its hash)",
    )
    p.add_argument(
        "--sign",
        metavar="KEY",
        help="sign SHA256SUMS with this OpenPGP key of $GNUPGHOME (SHA256SUMS.asc; default: config's sign-key)",
    )
    p.add_argument(
        "--sources",
        action="store_true",
        help="also write the source release OUT/NAME-VERSION-source/ (--sign and --nightly write it too)",
    )
    p.add_argument(
        "--nightly",
        action="store_true",
        help="re-lock tracked branches, build into OUT/nightly/DATE, point OUT/nightly/latest at it, keep the last N",
    )
    p.add_argument(
        "--keep", type=int, metavar="N", help="--nightly: builds to keep (default: the manifest's nightly.keep)"
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDR",
        help="make stages on the Dask workers of this scheduler (tcp://HOST:8786), through the remote cache",
    )
    p = add("worker", "serve a Dask scheduler as a build worker with this machine's store (see --scheduler)")
    p.add_argument("scheduler", metavar="ADDR", help="the Dask scheduler, e.g. tcp://HOST:8786")
    p.add_argument("--name", help="the worker's name in the scheduler (default: host name and pid)")
    p = add("verify", "check a downloaded ISO against SHA256SUMS, its signature and build-info.json beside it")
    p.add_argument(
        "image", type=Path, metavar="ISO", help="the ISO (SHA256SUMS, SHA256SUMS.asc, build-info.json beside it)"
    )
    p.add_argument(
        "--keyring",
        type=Path,
        action="append",
        default=[],
        metavar="K",
        help="the publisher's public key(s), armored or a keyring file (repeatable); without it the signature is not checked",
    )
    p = add("diff", "release notes from OLD to NEW (each a lock file, a build-info.json or an ISO)")
    p.add_argument("old", type=Path, metavar="OLD")
    p.add_argument("new", type=Path, metavar="NEW")
    p = add("test", "test an image in QEMU")
    tests = p.add_subparsers(dest="test_command", metavar="TEST", required=True)
    t = tests.add_parser(
        "boot", help="boot an ISO and wait for Xen, dom0 and the installer's prompt on the serial line"
    )
    _globals(t, suppress=True)
    t.add_argument("image", type=Path, metavar="ISO", help="the image to boot")
    t.add_argument("--firmware", choices=["bios", "uefi", "both"], default="both", help="firmware (default both)")
    t.add_argument("--usb", action="store_true", help="boot the file as a USB stick (raw disk) instead of a CD")
    t.add_argument(
        "--expect",
        default=vmtest.PROMPT,
        metavar="TEXT",
        help=f"the prompt that ends a boot (default {vmtest.PROMPT!r})",
    )
    t.add_argument("--timeout", type=float, default=vmtest.DEFAULT_TIMEOUT, help="seconds per boot (default 600)")
    t.add_argument("--kvm", action="store_true", help="use KVM instead of TCG (where /dev/kvm works)")
    t = tests.add_parser(
        "install",
        help="install from an ISO onto a fresh disk (unattended), boot the disk alone, check Domain-0 and a PV guest",
    )
    _globals(t, suppress=True)
    t.add_argument("image", type=Path, metavar="ISO", help="the installer ISO")
    t.add_argument("--firmware", choices=["bios", "uefi", "both"], default="both", help="firmware (default both)")
    t.add_argument(
        "--answerfile",
        type=Path,
        metavar="FILE",
        help="answerfile (YAML or XML; any root login: the test logs in with a throwaway login of its own) instead of the test's own; "
        "its disk: names the VM's target disk (sdX: AHCI, vdX: virtio, nvmeXnY: NVMe, /dev/disk/by-id/...: that serial)",
    )
    t.add_argument(
        "--interactive",
        action="store_true",
        help="the interactive install instead: the ISO's default entry, each prompt answered by typing on the serial console",
    )
    t.add_argument("--kvm", action="store_true", help="use KVM instead of TCG (where /dev/kvm works)")
    t = tests.add_parser(
        "upgrade",
        help="install OLD, change the host, upgrade it with NEW (the changes kept, NEW's version runs), then restore OLD",
    )
    _globals(t, suppress=True)
    t.add_argument("old", type=Path, metavar="OLD.iso", help="the ISO to install first")
    t.add_argument("new", type=Path, metavar="NEW.iso", help="the ISO that upgrades it")
    t.add_argument("--firmware", choices=["bios", "uefi"], default="bios", help="firmware (default bios)")
    t.add_argument(
        "--answerfile", type=Path, metavar="FILE", help="answerfile of OLD's install (as for `test install`)"
    )
    t.add_argument("--kvm", action="store_true", help="use KVM instead of TCG (where /dev/kvm works)")
    p = add("cache", "the remote cache")
    p.add_argument("action", choices=["stats"], help="stats: what the last build or fetch did with the cache")
    p = add("store", "look after the store")
    p.add_argument(
        "action",
        choices=["du", "gc"],
        help="du: space used per area; gc: remove what no manifest building into the store still uses",
    )
    p.add_argument(
        "--older-than",
        type=float,
        metavar="DAYS",
        help="gc: also drop the roots of other manifests not built, fetched or locked for DAYS days",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
        format="%(message)s",
    )
    try:
        return COMMANDS[args.command](args)
    except XenspinError as e:
        print(str(e), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("xenspin: interrupted", file=sys.stderr)
        return 130
    except (OSError, subprocess.SubprocessError) as e:
        # Failures of the machine, not of xenspin: a store that cannot be written, a full
        # disk, a permission, a child that hung. One line, like any user error.
        print(f"xenspin: {errors.describe(e)}", file=sys.stderr)
        return 2
    except Exception:
        path = errors.save_traceback()
        if args.verbose > 1:
            traceback.print_exc()
        kind, value = sys.exc_info()[:2]
        print(
            f"xenspin: internal error ({kind.__name__ if kind else 'error'}: {value}); "
            f"this is a bug: please report it with the traceback saved in {path}",
            file=sys.stderr,
        )
        return errors.BUG_EXIT


def cmd_validate(args: argparse.Namespace) -> int:
    distro = manifest.load(args.file)
    if args.json:
        print(json.dumps({"file": str(args.file), "name": distro.name, "version": distro.version, "valid": True}))
    elif args.verbose:
        print(f"{args.file}: {distro.name} {distro.version}, {len(distro.components)} components: valid")
    return 0


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (build steps) as literal blocks, so `show` reads like a recipe."""


_Dumper.add_representer(
    str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)
)


def cmd_show(args: argparse.Namespace) -> int:
    data = dataschema.to_data(manifest.load(args.file))
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False), end="")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    distro = manifest.load(args.file)
    current = lock.read(lock.lock_path(args.file))
    cached: dict[str, tuple[str, bool, bool]] = {}
    graph: list = []
    if current is not None:
        graph = pipeline.planned(_context(args, distro), distro, current, remote=True)
        cached = {p.stage.name: (p.key, bool(p.hit), p.remote) for p in graph if p.stage.kind == "build"}
    stages = plan.make_plan(distro, cached)
    if args.json:
        print(json.dumps({"stages": dataschema.to_data(stages), "graph": plan.graph_data(graph)}, indent=2))
    else:
        print(plan.render(stages))
        if graph:
            print(plan.render_graph(graph))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    if args.answerfile:
        print(answercheck.field_table_markdown() if args.markdown else json.dumps(answercheck.json_schema(), indent=2))
        return 0
    if args.markdown:
        print(manifest.field_table_markdown())
        return 0
    print(json.dumps(manifest.json_schema(), indent=2))
    return 0


def _context(args: argparse.Namespace, distro: manifest.Distro) -> Context:
    cfg = config.load()
    mirrors = {**cfg.mirrors, **dict(config.parse_mirror(m) for m in args.mirror)}
    store = Store(args.store or (Path(cfg.store) if cfg.store else config.default_store()))
    progress = Reporter(quiet=args.json)
    return Context(
        store=store,
        base=distro.base,
        mirrors=mirrors,
        offline=args.offline,
        manifest=args.file.absolute(),
        progress=progress,
        epoch=config.epoch_from_env(),
        remote=_remote(args, cfg.cache, progress),
    )


def _remote(args: argparse.Namespace, cfg: config.CacheConfig, progress: Reporter) -> cache.Remote | None:
    """The remote cache of this run: the options over the config file; none offline (no network at all)."""
    return cache.from_settings(
        "" if args.no_cache or args.offline else args.cache or cfg.url,
        endpoint=cfg.endpoint,
        read_only=args.cache_read_only or cfg.read_only,
        trust=args.cache_trust or cfg.trust,
        keyring=args.cache_keyring or [Path(k) for k in cfg.keyring],
        sign_key=cfg.sign_key,
        host=cfg.host_id,
        say=progress.say,
        warn=lambda line: print(line, file=sys.stderr, flush=True),
    )


@contextlib.contextmanager
def _cache_counted(ctx: Context, command: str) -> Iterator[None]:
    """The run's cache figures written to the store when it ends, however it ends (`xenspin cache stats`)."""
    try:
        yield
    finally:
        if ctx.remote is not None:
            ctx.remote.save(ctx.store, command)


def _left_out(report_left_out: dict[str, str]) -> None:
    """One warning per left-out component, and one for all the guest tools together."""
    guest = {n: why for n, why in sorted(report_left_out.items()) if n.startswith(iso.GUEST_PREFIX)}
    for name, why in sorted(report_left_out.items()):
        if name not in guest:
            print(f"warning: left out optional component {name}: {why}", file=sys.stderr)
    if guest:
        first = next(iter(guest.values()))
        print(f"warning: left out guest tools ({', '.join(guest)}): {first}", file=sys.stderr)


def cmd_lock(args: argparse.Namespace) -> int:
    distro = manifest.load(args.file)
    ctx = _context(args, distro)
    path = lock.lock_path(args.file)
    with ctx.store.session():
        new, report = pipeline.resolve_lock(
            distro,
            lock.read(path),
            ctx,
            update=args.update,
            strict=args.strict,
            allow_moved_tags=args.allow_moved_tags,
            check_tags=True,
        )
        lock.write(path, new)
        pipeline.register(ctx, distro, new)
    if args.json:
        print(json.dumps(dataclasses.asdict(report), indent=2))
        return 0
    for name in report.resolved:
        note = " (was stale: recipe changed)" if name in report.stale else ""
        print(f"locked  {name}: {lock.summary(new.components[name])}{note}")
    for name in report.kept:
        print(f"kept    {name}: {lock.summary(new.components[name])}")
    for name in report.dropped:
        print(f"dropped {name}: no longer in the manifest")
    for name in report.sets:
        print(f"locked  set {name}: {len(new.sets[name]['packages'])} packages")
    if report.sources:
        print(f"locked  sources: {report.sources}")
    for name, moved in sorted(report.moved.items()):
        kept = name in report.kept
        note = (
            " (kept the locked commit; `lock --update NAME --allow-moved-tags` re-pins it)" if kept else " (re-pinned)"
        )
        print(f"warning: {name}: {moved}{note.replace('NAME', name)}", file=sys.stderr)
    _left_out(report.left_out)
    print(f"wrote {path}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    distro = manifest.load(args.file)
    manifest.require_components(distro, args.components, "fetch")
    ctx = _context(args, distro)
    path = lock.lock_path(args.file)
    current = lock.read(path)
    names = args.components or list(distro.components)
    lock.require(distro, current, ctx.project, names, path)
    with ctx.store.session(), _cache_counted(ctx, "fetch"):
        if args.source_release is not None:
            needed = fetch.keeps(distro, current, ctx).blobs | debsources.keeps(current)
            got = srcrelease.import_release(distro, current, ctx, args.source_release, needed)
            git = f"; git: {', '.join(got.git)}" if got.git else ""
            print(f"from {args.source_release}: {got.blobs} files into the store{git}", file=sys.stderr)
        report = fetch.fetch(distro, current, ctx, args.components or None, strict=args.strict)
        sets = None
        if not args.components:
            packagesets.require(distro, current, path)
            sets = pipeline.fetch_sets(current, ctx)
        pipeline.register(ctx, distro, current)
    if args.json:
        print(json.dumps(dataclasses.asdict(report), indent=2))
        return 0
    if report.fetched:
        print("fetched: " + ", ".join(report.fetched))
    if report.present:
        print("already in the store: " + ", ".join(report.present))
    if sets is not None:
        print(f"package sets: {len(sets.fetched)} .debs fetched, {sets.present} already in the store")
    _left_out(report.left_out)
    return 0


def cmd_validate_answerfile(args: argparse.Namespace) -> int:
    answer, warnings = answercheck.validate(args.answerfile)
    plain = answercheck.plaintext_password(args.answerfile, answer)
    warnings = [*warnings, *([plain] if plain else [])]
    for w in warnings:
        print(w, file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "file": str(args.answerfile),
                    "valid": True,
                    "warnings": warnings,
                    "answers": answercheck.redacted(answer),
                }
            )
        )
    else:
        print(f"{args.answerfile}: valid (installs to {answer.disk or 'the only disk'}, host {answer.hostname})")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    if args.nightly:
        return cmd_nightly(args)
    if args.keep is not None:
        raise XenspinError("--keep N goes with --nightly")
    key = release.signing_key(args.sign, config.load().sign_key)
    if key and args.components:
        raise XenspinError(f"--sign {key}: a build of some components writes no ISO or SHA256SUMS to sign")
    if args.sources and args.components:
        raise XenspinError("--sources: a build of some components writes no ISO to give the sources of")
    if args.scheduler and args.answerfile:
        raise XenspinError(
            "--answerfile with --scheduler: name it in the manifest (installer.answerfile) so workers get it"
        )
    distro = manifest.load(args.file)
    if args.answerfile:
        installer = dataclasses.replace(distro.installer, answerfile=str(args.answerfile.absolute()))
        distro = dataclasses.replace(distro, installer=installer)
    if distro.installer.answerfile:
        path = Path(distro.installer.answerfile)
        answer, _ = answercheck.validate(path)
        if not args.allow_plaintext_password:
            answercheck.refuse_plaintext_in_iso(path, answer)
        elif answer.root.password:
            print(f"{path}: warning: root's plain password is built into the ISO, as asked", file=sys.stderr)
    manifest.require_components(distro, args.components, "build")
    if key:
        release.check_key(key)  # before the build, not after an hour of it
    ctx = _context(args, distro)
    with _cache_counted(ctx, "build"):
        result = pipeline.run_build(
            distro,
            ctx,
            names=args.components or None,
            jobs=args.jobs,
            strict=args.strict,
            out=args.out,
            sources=bool(args.sources or key),  # a signed release carries its sources
            workers=functools.partial(workers.pool, args.scheduler) if args.scheduler else None,
        )
    also = [result.source_dir / srcrelease.SUMS] if result.source_dir is not None else []
    signature, dropped = release.finish(args.out, key, also) if result.iso is not None else (None, False)
    if dropped:
        print(f"removed {args.out / release.SIGNATURE}: this build is not signed", file=sys.stderr)
    _left_out(result.left_out)
    lacking = srcrelease.summary(result.sources.done.meta or {}) if result.sources is not None else None
    if lacking:
        print(f"warning: {lacking}; {result.source_dir}/{srcrelease.INDEX_MD} says why", file=sys.stderr)
    report = result.build
    if args.json:
        data = dataclasses.asdict(report)
        if result.rootfs is not None:
            made = result.rootfs
            data["rootfs"] = {
                "path": str(made.done.path),
                "key": made.done.key,
                "made": made.made,
                "wall": made.seconds,
                "worker": made.worker,
                **(made.done.meta or {}),
            }
        if result.iso is not None:
            data["iso"] = {
                "key": result.iso.done.key,
                "made": result.iso.made,
                "wall": result.iso.seconds,
                "worker": result.iso.worker,
                "files": [str(p) for p in result.published + ([signature] if signature else [])],
                **(result.iso.done.meta or {}),
            }
        if result.sources is not None:
            data["sources"] = {
                "path": str(result.source_dir),
                "key": result.sources.done.key,
                "made": result.sources.made,
                "wall": result.sources.seconds,
                **(result.sources.done.meta or {}),
            }
        print(json.dumps(data, indent=2))
        return 0
    if report.built:
        where = {n: f" on {w}" for n, w in report.workers.items()}
        print("built: " + ", ".join(f"{n} ({report.seconds[n]} s{where.get(n, '')})" for n in report.built))
    if report.cached:
        print("up to date: " + ", ".join(report.cached))
    if report.remote:
        print(f"from the remote cache: {', '.join(report.remote)}")
    print(f"apt repository: {result.repo} (deb [trusted=yes] file://{result.repo.absolute()} ./)")
    if result.rootfs is not None:
        made = result.rootfs
        state = f"composed in {made.seconds} s" if made.made else "up to date"
        print(f"rootfs: {made.done.path} ({state}, key {made.done.key[:12]})")
    if result.iso is not None:
        image = result.published[0]
        state = f"written in {result.iso.seconds} s" if result.iso.made else "up to date"
        size = (result.iso.done.meta or {}).get("size", 0) // (1 << 20)
        print(f"iso: {image} ({size} MiB, {state}, key {result.iso.done.key[:12]})")
        print(f"     {', '.join(p.name for p in result.published[1:])} beside it")
        if signature is not None:
            print(f"     {signature.name}: signed with {key}")
    if result.sources is not None:
        made = result.sources
        meta = made.done.meta or {}
        state = f"written in {made.seconds} s" if made.made else "up to date"
        signed = f", {srcrelease.SUMS} signed" if signature is not None else ""
        print(
            f"sources: {result.source_dir} ({meta.get('files', 0)} files, {nightly.human(meta.get('bytes', 0))}, "
            f"{state}{signed})"
        )
    print(f"logs: {ctx.store.log_dir('build')}")
    return 0


def cmd_nightly(args: argparse.Namespace) -> int:
    """build --nightly: the build itself is cmd_build into a directory of nightly's choosing."""
    if args.components:
        raise XenspinError("--nightly builds the whole distribution: drop " + " ".join(args.components))
    distro = manifest.load(args.file)
    keep = distro.nightly.keep if args.keep is None else args.keep
    if keep < 1:
        raise XenspinError(f"--keep {keep}: expected at least 1")
    key = release.signing_key(args.sign, config.load().sign_key)
    if key:
        release.check_key(key)  # before the re-lock and the build
    ctx = _context(args, distro)
    for line in nightly.relock(distro, ctx, strict=args.strict):
        print(line, file=sys.stderr)

    def build(into: Path) -> None:
        inner = argparse.Namespace(
            **{**vars(args), "out": into, "nightly": False, "keep": None, "json": False, "sources": True}
        )
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            cmd_build(inner)

    def notes(old: Path, new: Path) -> str:
        return relnotes.markdown(relnotes.diff(old / "build-info.json", new / "build-info.json", ctx.store))

    done = nightly.run(args.out / nightly.DIR, build, keep=keep, title=f"{distro.name} nightly builds", notes=notes)
    if args.json:
        print(json.dumps(dataclasses.asdict(done), indent=2, default=str))
        return 0
    for line in done.lines():
        print(line)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    done = release.verify(args.image, args.keyring)
    if args.json:
        print(json.dumps(dataclasses.asdict(done), indent=2, default=str))
    else:
        print(f"{done.iso}: good: {done.name} {done.version}, sha256 {done.sha256}")
        print(
            f"  matches {release.SUMS}: {', '.join(done.checked)}; its packages.json and .disk/info match build-info.json"
        )
        if done.signer:
            print(f"  {release.SIGNATURE}: good signature by {done.signer}")
    if not done.signer:
        print(
            f"warning: {release.SIGNATURE} not checked (no --keyring): the digests prove no publisher", file=sys.stderr
        )
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    distro = manifest.load(args.file)
    ctx = _context(args, distro)
    if args.action == "du":
        rows, notes = ctx.store.usage(), []
    else:
        result = pipeline.collect_garbage(distro, ctx, older_than_days=args.older_than)
        rows = result.removed
        notes = [f"dropped gc root {why}" for why in result.dropped]
        notes += [f"kept what {m} uses" for m in result.kept]
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return 0
    for note in notes:
        print(note)
    verb = "" if args.action == "du" else "removed "
    for r in rows:
        print(f"{verb}{r.area:<20} {r.entries:>6} entries {nightly.human(r.bytes):>10}")
    print(
        f"{verb}{'total':<20} {sum(r.entries for r in rows):>6} entries {nightly.human(sum(r.bytes for r in rows)):>10}  ({ctx.store.root})"
    )
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    cfg = config.load()
    store = Store(args.store or (Path(cfg.store) if cfg.store else config.default_store()))
    stats = cache.load_stats(store)
    if args.json:
        print(json.dumps(dataclasses.asdict(stats) if stats else None, indent=2))
    elif stats is None:
        print(f"no build or fetch with this store ({store.root}) has used a remote cache yet")
    else:
        print("\n".join(cache.stats_lines(stats)))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    name = args.name or f"{socket.gethostname()}-{os.getpid()}"
    settings = workers.Settings(args.store, args.cache_trust or "", tuple(args.cache_keyring))
    return workers.serve(args.scheduler, settings, name=name)


def cmd_diff(args: argparse.Namespace) -> int:
    cfg = config.load()
    store = Store(args.store or (Path(cfg.store) if cfg.store else config.default_store()))
    notes = relnotes.diff(args.old, args.new, store)
    if args.json:
        print(json.dumps(relnotes.to_data(notes), indent=2))
    else:
        print(relnotes.markdown(notes), end="")
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    changes = host.setup(args.user)
    print(
        "\n".join(changes)
        if changes
        else "setup: nothing to change (host packages, the xenspin account and its ids are in place)"
    )
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    return TESTS[args.test_command](args)


def cmd_test_boot(args: argparse.Namespace) -> int:
    results = vmtest.run_boot_test(
        args.image,
        vmtest.firmwares(args.firmware),
        args.out,
        expect=args.expect,
        usb=args.usb,
        kvm=args.kvm,
        timeout=args.timeout,
        report=_print_result(args.json),
    )
    return _results(results, args.json)


def cmd_test_install(args: argparse.Namespace) -> int:
    if args.interactive:
        if args.answerfile:
            raise XenspinError("test install: --interactive types the answers; it takes no --answerfile")
        results = interactivetest.run_interactive_test(
            args.image, vmtest.firmwares(args.firmware), args.out, kvm=args.kvm, report=_print_result(args.json)
        )
        return _results(results, args.json)
    results = installtest.run_install_test(
        args.image,
        vmtest.firmwares(args.firmware),
        args.out,
        args.answerfile,
        kvm=args.kvm,
        report=_print_result(args.json),
    )
    return _results(results, args.json)


def _print_result(as_json: bool) -> Callable[[Any], None]:
    """Each test's PASS/FAIL line as it comes (not with --json, which prints them all at the end)."""
    return (lambda _r: None) if as_json else (lambda r: print(r.line(), flush=True))


def _results(results: list[Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps([dataclasses.asdict(r) for r in results], indent=2, default=str))
    return 0 if all(r.passed for r in results) else 1


def cmd_test_upgrade(args: argparse.Namespace) -> int:
    results = upgradetest.run_upgrade_test(
        args.old, args.new, args.firmware, args.out, args.answerfile, kvm=args.kvm, report=_print_result(args.json)
    )
    return _results(results, args.json)


TESTS = {"boot": cmd_test_boot, "install": cmd_test_install, "upgrade": cmd_test_upgrade}


COMMANDS = {
    "diff": cmd_diff,
    "cache": cmd_cache,
    "worker": cmd_worker,
    "build": cmd_build,
    "setup": cmd_setup,
    "lock": cmd_lock,
    "fetch": cmd_fetch,
    "store": cmd_store,
    "test": cmd_test,
    "validate": cmd_validate,
    "show": cmd_show,
    "plan": cmd_plan,
    "schema": cmd_schema,
    "validate-answerfile": cmd_validate_answerfile,
    "verify": cmd_verify,
}


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
