"""Command line: parse arguments, call the stage, print the result. No logic of its own."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from . import __version__, manifest, plan, typed
from .errors import XenspinError


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
        "--store", type=Path, default=d(None), help="store directory (default $XDG_CACHE_HOME/xenspin/store)"
    )
    parser.add_argument("--out", type=Path, default=d(Path("out")), help="output directory (default ./out)")
    parser.add_argument("-v", "--verbose", action="count", default=d(0), help="say more (repeat for debug)")
    parser.add_argument("--json", action="store_true", default=d(False), help="machine-readable output")


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
    add("schema", "print a JSON Schema of manifest files (for editors and CI)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
        format="%(message)s",
    )
    args.store = args.store or default_store()
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
    stages = plan.make_plan(manifest.load(args.file))
    if args.json:
        print(json.dumps(typed.to_data(stages), indent=2))
    else:
        print(plan.render(stages))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(manifest.json_schema(), indent=2))
    return 0


COMMANDS = {"validate": cmd_validate, "show": cmd_show, "plan": cmd_plan, "schema": cmd_schema}


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
