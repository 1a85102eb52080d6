"""Command line: parse arguments, call the stage, print the result. No logic of its own."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from . import __version__, build, config, fetch, host, lock, manifest, pipeline, plan, typed
from .errors import XenspinError
from .progress import Reporter
from .sources import Context
from .store import Store


def default_store() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "xenspin" / "store"


def _globals(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Global options, accepted before or after the command."""

    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "-f", "--file", type=Path, default=d(Path("distro.yaml")), help="manifest (default ./distro.yaml)"
    )
    parser.add_argument(
        "--store", type=str, default=d(None), help="store directory (default $XDG_CACHE_HOME/xenspin/store)"
    )
    parser.add_argument("--out", type=Path, default=d(Path("out")), help="output directory (default ./out)")
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


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xenspin", description="Build a Xen distribution from distro.yaml.")
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
    p.add_argument("--markdown", action="store_true", help="print the field table of README.md instead")
    add("setup", "install the Debian packages xenspin runs (apt-get; needs root)")
    p = add("lock", "resolve every source to exact revisions and digests and write the lock (distro.lock)")
    p.add_argument("--update", nargs="*", metavar="COMP", help="re-resolve these components (none named: all)")
    p.add_argument(
        "--allow-moved-tags", action="store_true", help="re-pin a tag that now names another commit than the locked one"
    )
    p = add("fetch", "fill the store with the locked sources, verified")
    p.add_argument("components", nargs="*", metavar="COMP", help="only these components")
    p = add("build", "lock what is missing, fetch, and build the components (all, or COMP and what it needs)")
    p.add_argument("components", nargs="*", metavar="COMP", help="only these components and what they need")
    p.add_argument("-j", "--jobs", type=int, default=2, help="components built at once (default 2)")
    p = add("store", "look after the store")
    p.add_argument(
        "action", choices=["du", "gc"], help="du: space used per area; gc: remove what the lock no longer needs"
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
    data = typed.to_data(manifest.load(args.file))
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False), end="")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    distro = manifest.load(args.file)
    current = lock.read(lock.lock_path(args.file))
    cached: dict[str, tuple[str, bool]] = {}
    if current is not None:
        ctx = _context(args, distro)
        jobs = build.plan(distro, current, ctx.recipe_dir)
        builder = build.Builder(distro, current, ctx)
        cached = {name: (job.key, builder.is_built(job)) for name, job in jobs.items()}
    stages = plan.make_plan(distro, cached)
    if args.json:
        print(json.dumps(typed.to_data(stages), indent=2))
    else:
        print(plan.render(stages))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    if args.markdown:
        print(manifest.field_table_markdown())
        return 0
    print(json.dumps(manifest.json_schema(), indent=2))
    return 0


def _context(args: argparse.Namespace, distro: manifest.Distro) -> Context:
    cfg = config.load()
    mirrors = {**cfg.mirrors, **dict(config.parse_mirror(m) for m in args.mirror)}
    if args.store is not None and not args.store.strip():
        raise XenspinError("--store: empty path (expected a store directory)")
    store = Store(Path(args.store) if args.store else Path(cfg.store) if cfg.store else default_store())
    usable_store(store.root)
    return Context(
        store=store,
        base=distro.base,
        mirrors=mirrors,
        offline=args.offline,
        recipe_dir=args.file.parent.absolute(),
        progress=Reporter(quiet=args.json),
    )


def usable_store(root: Path) -> None:
    """Refuse a store that is a file or cannot be written, in one line rather than a traceback later."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise XenspinError(f"store {root}: cannot create it: {e.strerror or e}") from None
    if not root.is_dir():
        raise XenspinError(f"store {root}: not a directory")
    if not os.access(root, os.W_OK | os.X_OK):
        raise XenspinError(f"store {root}: not writable")


def _left_out(report_left_out: dict[str, str]) -> None:
    for name, why in sorted(report_left_out.items()):
        print(f"warning: left out optional component {name}: {why}", file=sys.stderr)


def cmd_lock(args: argparse.Namespace) -> int:
    distro = manifest.load(args.file)
    ctx = _context(args, distro)
    path = lock.lock_path(args.file)
    with ctx.store.session():
        new, report = lock.resolve(
            distro,
            lock.read(path),
            ctx,
            update=args.update,
            strict=args.strict,
            allow_moved_tags=args.allow_moved_tags,
            check_tags=True,
        )
    lock.write(path, new)
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
    lock.require(distro, current, ctx.recipe_dir, names, path)
    with ctx.store.session():
        report = fetch.fetch(distro, current, ctx, args.components or None, strict=args.strict)
    if args.json:
        print(json.dumps(dataclasses.asdict(report), indent=2))
        return 0
    if report.fetched:
        print("fetched: " + ", ".join(report.fetched))
    if report.present:
        print("already in the store: " + ", ".join(report.present))
    _left_out(report.left_out)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    distro = manifest.load(args.file)
    manifest.require_components(distro, args.components, "build")
    ctx = _context(args, distro)
    result = pipeline.run_build(
        distro,
        args.file,
        ctx,
        names=args.components or None,
        jobs=args.jobs,
        strict=args.strict,
        out=args.out,
        say=ctx.progress.say,
    )
    _left_out(result.left_out)
    report = result.build
    if args.json:
        print(json.dumps(dataclasses.asdict(report), indent=2))
        return 0
    if report.built:
        print("built: " + ", ".join(f"{n} ({report.seconds[n]} s)" for n in report.built))
    if report.cached:
        print("up to date: " + ", ".join(report.cached))
    print(f"apt repository: {result.repo} (deb [trusted=yes] file://{result.repo.absolute()} ./)")
    print(f"logs: {ctx.store.log_dir('build')}")
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    distro = manifest.load(args.file)
    ctx = _context(args, distro)
    rows = ctx.store.usage() if args.action == "du" else pipeline.collect_garbage(distro, args.file, ctx)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return 0
    verb = "" if args.action == "du" else "removed "
    for r in rows:
        print(f"{verb}{r.area:<20} {r.entries:>6} entries {_human(r.bytes):>10}")
    print(
        f"{verb}{'total':<20} {sum(r.entries for r in rows):>6} entries {_human(sum(r.bytes for r in rows)):>10}  ({ctx.store.root})"
    )
    return 0


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def cmd_setup(args: argparse.Namespace) -> int:
    installed = host.setup()
    print(f"installed: {' '.join(installed)}" if installed else "host packages: all present")
    return 0


COMMANDS = {
    "build": cmd_build,
    "setup": cmd_setup,
    "lock": cmd_lock,
    "fetch": cmd_fetch,
    "store": cmd_store,
    "validate": cmd_validate,
    "show": cmd_show,
    "plan": cmd_plan,
    "schema": cmd_schema,
}


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
