"""What a build would do, computed without running anything."""

from __future__ import annotations

from dataclasses import dataclass

from .manifest import Distro, build_order


@dataclass(frozen=True)
class Step:
    """One component in the build stage."""

    name: str
    source: str
    after: list[str]
    optional: bool
    produces: str


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline and the components it handles."""

    name: str
    does: str
    steps: list[Step]


def make_plan(distro: Distro) -> list[Stage]:
    """The pipeline for distro: stages in order, components in build order."""
    comps = []
    for name in build_order(distro):
        c = distro.components[name]
        if c.package:
            produces = f"{c.package.name}.deb"
        elif c.source.kind == "archive":
            produces = "archive packages " + ", ".join(c.source.archive)
        else:
            produces = "nothing yet"
        comps.append(Step(name, c.source.kind, list(c.after), c.optional, produces))
    return [
        Stage("lock", "resolve every source to an exact revision and digest (distro.lock)", []),
        Stage("fetch", "fill the store with the locked sources, verified", []),
        Stage("build", "build each component in its build root, in dependency order", comps),
        Stage("rootfs", f"compose the dom0 rootfs from {distro.base.suite}, the components and overlays", []),
        Stage("iso", f"write {distro.iso_filename}", []),
    ]


def render(stages: list[Stage]) -> str:
    lines = []
    for i, stage in enumerate(stages, 1):
        lines.append(f"{i}. {stage.name}: {stage.does}")
        width = max((len(s.name) for s in stage.steps), default=0)
        for s in stage.steps:
            after = f" after {', '.join(s.after)}" if s.after else ""
            opt = " (optional)" if s.optional else ""
            lines.append(f"   {s.name:<{width}}  {s.source:<8} -> {s.produces}{after}{opt}")
    return "\n".join(lines)
