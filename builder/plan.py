"""What a build would do, computed without running anything."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .manifest import Distro, build_order
from .sources import module
from .stage import Planned


@dataclass(frozen=True)
class Step:
    """One component in the build stage."""

    name: str
    source: str
    after: list[str]
    optional: bool
    produces: str
    key: str = ""
    cached: bool | None = None  # None: no lock yet, so no key
    remote: bool = False  # not in the store, in the remote cache


@dataclass(frozen=True)
class Phase:
    """One phase of the pipeline as `xenspin plan` shows it (lock, fetch, build, rootfs, iso) and its components."""

    name: str
    does: str
    steps: list[Step]


def make_plan(distro: Distro, keys: dict[str, tuple[str, bool, bool]] | None = None) -> list[Phase]:
    """The pipeline for distro: stages in order, components in build order.

    keys maps a component to its cache key, whether the store holds its build, and
    whether the remote cache does (when the store does not).
    """
    keys = keys or {}
    comps = []
    for name in build_order(distro):
        c = distro.components[name]
        packages = module(c.source.kind).binary_packages(c.source)
        if c.package:
            produces = f"{c.package.name}.deb"
        elif packages:
            produces = "archive packages " + ", ".join(packages)
        else:
            produces = "nothing yet"
        key, cached, remote = keys.get(name, ("", None, False))
        comps.append(Step(name, c.source.kind, list(c.after), c.optional, produces, key, cached, remote))
    return [
        Phase("lock", "resolve every source to an exact revision and digest (distro.lock)", []),
        Phase("fetch", "fill the store with the locked sources, verified", []),
        Phase("build", "build each component in its build root, in dependency order", comps),
        Phase("rootfs", f"compose the dom0 rootfs from {distro.base.suite}, the components and overlays", []),
        Phase("iso", f"write {distro.iso_filename} and its SBOM", []),
    ]


def render(stages: list[Phase]) -> str:
    lines = []
    for i, stage in enumerate(stages, 1):
        lines.append(f"{i}. {stage.name}: {stage.does}")
        width = max((len(s.name) for s in stage.steps), default=0)
        kinds = max((len(s.source) for s in stage.steps), default=0)
        for s in stage.steps:
            after = f" after {', '.join(s.after)}" if s.after else ""
            opt = " (optional)" if s.optional else ""
            state = "" if s.cached is None else f"  [{_state(s.cached, s.remote)} {s.key[:12]}]"
            lines.append(f"   {s.name:<{width}}  {s.source:<{kinds}}{state} -> {s.produces}{after}{opt}")
    return "\n".join(lines)


def graph_data(graph: list[Planned]) -> list[dict[str, Any]]:
    """The stage graph as plain data (for --json)."""
    return [
        {
            "id": p.stage.id,
            "kind": p.stage.kind,
            "name": p.stage.name,
            "key": p.key,
            "hit": p.hit,
            "remote": p.remote,
            "lazy": p.stage.lazy,
            "after": list(p.stage.after),
            "uses": list(p.stage.uses),
        }
        for p in graph
    ]


def render_graph(graph: list[Planned]) -> str:
    """The stage graph in run order: each stage, its key, hit/miss, what it needs.

    A lazy stage (build root, source tree) is made only when a stage using it misses;
    a pending key depends on outputs of stages not made yet; a remote hit is taken
    from the remote cache instead of made.
    """
    todo = sum(1 for p in graph if not p.hit and not p.remote and not p.stage.lazy)
    remote = sum(1 for p in graph if p.remote)
    lines = [
        f"stage graph: {len(graph)} stages, {todo} to run" + (f", {remote} from the remote cache" if remote else "")
    ]
    width = max((len(p.stage.id) for p in graph), default=0)
    for p in graph:
        state = "pending     " if p.hit is None else f"{_state(p.hit, p.remote)} {p.key[:12]}"
        needs = [*p.stage.after, *(f"{u} (if made)" for u in p.stage.uses)]
        lazy = " lazy" if p.stage.lazy else ""
        lines.append(f"   {p.stage.id:<{width}}  [{state}]{lazy}" + (f"  needs {', '.join(needs)}" if needs else ""))
    return "\n".join(lines)


def _state(hit: bool, remote: bool) -> str:
    """hit (in the store), remote hit (in the remote cache), miss (to be made)."""
    return "remote hit" if remote else "hit " if hit else "miss"
