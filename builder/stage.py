"""One stage shape and the scheduler that runs stages along their dependencies.

A stage makes one object in the store. Its key is the sha256 of its own format
number and its canonical inputs, so the same inputs find the same object and a
changed input (or a changed output format) makes a new one. The pipeline driver
builds one graph of stages (component builds, build roots, source trees, the apt
repository, later the rootfs and the ISO); `run` executes it with -j workers and
`resolve` computes what `xenspin plan` shows, without running anything.

Two kinds of edge:
- `after`: stages whose outputs this one reads, finished before it is keyed or made
  (a component built after another; the repository after the builds);
- `uses`: stages made only if this one must be made (a build root, a source tree):
  their keys are in this one's inputs, but a build found in the store never makes
  its build root again.

With a remote cache (builder/cache.py), a stage the store lacks is looked up there
before anything is made, its `uses` included: a hit never makes a build root. What is
made here is sent there afterwards. With a dispatcher too (builder/workers.py: Dask
workers), a stage of a kind the cache takes that neither holds is made elsewhere and
taken back from the cache; what the store holds and the cache lacks is sent first, so
no worker makes it again.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import XenspinError
from .store import Store, sha256_json


class Remote(Protocol):
    """What the scheduler and `resolve` ask of a remote cache (builder/cache.py's Remote)."""

    def wants(self, kind: str) -> bool: ...

    def lookup(self, kind: str, key: str) -> Any:
        """The record for kind and key (its `meta`), or None."""

    def restore(self, store: Store, kind: str, key: str) -> dict | None:
        """The object put into the store from the cache; its metadata, or None."""

    def upload(self, store: Store, kind: str, key: str) -> None: ...

    def has_record(self, kind: str, key: str) -> bool: ...

    @property
    def writable(self) -> bool: ...


# Makes the stage (whose key is given) somewhere else and puts it in the remote cache;
# returns where it was made, to be reported.
Dispatch = Callable[["Stage", str], str]


class Pending(Exception):
    """A stage's key needs what an earlier stage has not made yet (e.g. the digests of built .debs)."""


@dataclass(frozen=True)
class Done:
    """A stage as later stages see it: its key, and, once in the store, its path and metadata."""

    key: str
    path: Path | None = None
    meta: dict | None = None


Needs = Mapping[str, Done]


@dataclass(frozen=True, eq=False)
class Stage:
    """One node: kind (the store area), name, format, inputs -> key; make fills a fresh directory.

    inputs(needs) returns the canonical inputs (plain JSON data) given the stages in
    after and uses; it may raise Pending when an `after` stage is not made yet.
    make(tmp, needs) fills tmp and returns metadata to record beside the object.
    """

    kind: str
    name: str
    format: int
    inputs: Callable[[Needs], dict[str, Any]]
    make: Callable[[Path, Needs], dict | None]
    after: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()
    lazy: bool = False  # made only when a stage that uses it must be made (or one comes after it)
    clamp: int | None = None  # clamp file times in the output to this (SOURCE_DATE_EPOCH)
    # check(object directory, metadata) each time the object is taken from the store; False:
    # it is bad (check says why), so it is removed and made again (Store.obtain)
    check: Callable[[Path, dict], bool] | None = None

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.name}"

    def key(self, needs: Needs) -> str:
        return stage_key(self.format, self.inputs(needs))


def stage_key(format: int, inputs: dict[str, Any]) -> str:
    """sha256 of the stage's format number and its canonical inputs."""
    return sha256_json({"format": format, **inputs})


@dataclass
class Outcome:
    """What happened to one stage in a run."""

    stage: Stage
    done: Done
    made: bool
    seconds: float = 0.0
    remote: bool = False  # taken from the remote cache (not made here)
    worker: str = ""  # made by this worker (builder/workers.py) and taken from the cache


@dataclass(frozen=True)
class Planned:
    """What `plan` shows for a stage: its key (empty when pending) and whether the store has it."""

    stage: Stage
    key: str
    hit: bool | None  # None: key not known before earlier stages run
    remote: bool = False  # not in the store, but the remote cache holds a record for it


def check(stages: list[Stage]) -> dict[str, Stage]:
    """The stages by id; refuse duplicate ids and edges to unknown stages (a bug, not a user error)."""
    by_id: dict[str, Stage] = {}
    for s in stages:
        if s.id in by_id:
            raise ValueError(f"two stages named {s.id}")
        by_id[s.id] = s
    for s in stages:
        for d in (*s.after, *s.uses):
            if d not in by_id:
                raise ValueError(f"stage {s.id} needs unknown stage {d}")
    return by_id


def order(stages: list[Stage]) -> list[Stage]:
    """Stages in dependency order (stable: the given order where edges allow)."""
    by_id = check(stages)
    out: list[Stage] = []
    seen: set[str] = set()

    def visit(s: Stage, path: tuple[str, ...]) -> None:
        if s.id in seen:
            return
        if s.id in path:
            raise ValueError(f"stage cycle: {' -> '.join((*path, s.id))}")
        for d in (*s.uses, *s.after):
            visit(by_id[d], (*path, s.id))
        seen.add(s.id)
        out.append(s)

    for s in stages:
        visit(s, ())
    return out


def lookup(store: Store, stage: Stage, needs: Needs) -> Done:
    """The stage's key and, if the store holds it, its path and metadata."""
    key = stage.key(needs)
    meta = store.meta(stage.kind, key)
    return Done(key, store.content(stage.kind, key, meta) if meta is not None else None, meta)


def resolve(store: Store, stages: list[Stage], remote: Remote | None = None) -> list[Planned]:
    """Each stage's key and whether the store has it, computed without running anything.

    With remote, a stage the store lacks is looked up in the cache too (its record only,
    no blob): a record's metadata gives the keys of the stages after it, as the store's would.
    """
    known: dict[str, Done] = {}
    out = []
    for s in order(stages):
        try:
            if any(d not in known for d in (*s.after, *s.uses)):
                raise Pending(f"{s.id}: a stage it needs is pending")  # so is everything after it
            done = lookup(store, s, _needs(s, known))
        except Pending:
            out.append(Planned(s, "", None))
            continue
        record = None
        if done.meta is None and remote is not None and remote.wants(s.kind):
            record = remote.lookup(s.kind, done.key)
        if record is not None:
            done = Done(done.key, None, record.meta)
        known[s.id] = done
        out.append(Planned(s, done.key, done.meta is not None and record is None, record is not None))
    return out


def upto(stages: list[Stage], target: str) -> list[Stage]:
    """The target and every stage it needs, through `after` and `uses` (what a worker runs to make it)."""
    by_id = check(stages)
    keep: set[str] = set()
    todo = [target]
    while todo:
        sid = todo.pop()
        if sid not in keep:
            keep.add(sid)
            todo += [*by_id[sid].after, *by_id[sid].uses]
    return [s for s in stages if s.id in keep]


def _needs(stage: Stage, known: Mapping[str, Done]) -> dict[str, Done]:
    return {d: known[d] for d in (*stage.after, *stage.uses) if d in known}


class Scheduler:
    """Runs a stage graph: eager stages along `after` with up to `jobs` at once, lazy ones on demand."""

    def __init__(
        self,
        store: Store,
        stages: list[Stage],
        *,
        jobs: int = 1,
        remote: Remote | None = None,
        dispatch: Dispatch | None = None,
    ):
        self.store = store
        self.remote = remote
        self.dispatch = dispatch if remote is not None else None  # workers hand back through the cache only
        self.stages = order(stages)
        self.by_id = {s.id: s for s in self.stages}
        self.jobs = max(1, jobs)
        self.results: dict[str, Outcome] = {}

    def run(self) -> dict[str, Outcome]:
        """Every eager stage obtained (found or made); the first failure stops new work and is raised."""
        # A lazy stage that another stage comes `after` is needed whatever happens: run it too.
        wanted = {d for s in self.stages for d in s.after}
        pending = {s.id: s for s in self.stages if not s.lazy or s.id in wanted}
        failed: list[BaseException] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.jobs) as pool:
            running: dict[concurrent.futures.Future, str] = {}
            while pending or running:
                if not failed:
                    for sid, s in list(pending.items()):
                        if all(d in self.results for d in s.after):
                            del pending[sid]
                            running[pool.submit(self.obtain, s)] = sid
                if not running:
                    break
                finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for fut in finished:
                    running.pop(fut)
                    if fut.exception() is not None:
                        failed.append(fut.exception())
        if failed:
            raise failed[0]
        return self.results

    def obtain(self, stage: Stage) -> Outcome:
        """The stage's object: from the store, or made (with the lazy stages it uses made first)."""
        if stage.id in self.results:
            return self.results[stage.id]
        needs = self._known(stage)
        done = lookup(self.store, stage, needs)
        made = remote = False
        start = time.monotonic()
        if done.meta is None and self.remote is not None:
            meta = self.remote.restore(self.store, stage.kind, done.key)
            if meta is not None:
                done = Done(done.key, self.store.content(stage.kind, done.key, meta), meta)
                remote = True
        elif self.dispatch is not None and self.remote is not None and self.remote.wants(stage.kind):
            self._share(stage, done.key)
        worker = ""
        if (
            done.meta is None
            and self.dispatch is not None
            and self.remote is not None
            and self.remote.wants(stage.kind)
        ):
            worker = self.dispatch(stage, done.key)
            meta = self.remote.restore(self.store, stage.kind, done.key)
            if meta is None:
                raise XenspinError(
                    f"{stage.id}: {worker} made it, but the remote cache does not give it back (see above)"
                )
            done = Done(done.key, self.store.content(stage.kind, done.key, meta), meta)
            remote = True
        if done.meta is None or stage.check is not None:
            if done.meta is None:
                for u in stage.uses:
                    needs[u] = self.obtain(self.by_id[u]).done
            made_flag: list[bool] = []

            def make(tmp: Path) -> dict | None:
                made_flag.append(True)
                for u in stage.uses:  # already obtained, unless a checked object failed its check
                    needs[u] = self.obtain(self.by_id[u]).done
                return stage.make(tmp, needs)

            path = self.store.obtain(stage.kind, done.key, make, clamp=stage.clamp, check=stage.check)
            done = Done(done.key, path, self.store.meta(stage.kind, done.key))
            made = bool(made_flag)
        seconds = round(time.monotonic() - start, 1)  # the making, not the upload
        if made and self.remote is not None:
            self.remote.upload(self.store, stage.kind, done.key)
        outcome = Outcome(stage, done, made or bool(worker), seconds, remote, worker)
        self.results[stage.id] = outcome
        return outcome

    def _share(self, stage: Stage, key: str) -> None:
        """A stage this store holds, sent to the cache if it lacks it: the workers read what comes after from there."""
        assert self.remote is not None
        if self.remote.writable and not self.remote.has_record(stage.kind, key):
            self.remote.upload(self.store, stage.kind, key)

    def _known(self, stage: Stage) -> dict[str, Done]:
        """Keys of what the stage uses (computed, not made) and outcomes of what it comes after."""
        needs: dict[str, Done] = {}
        for a in stage.after:
            needs[a] = self.results[a].done
        for u in stage.uses:
            needs[u] = self.results[u].done if u in self.results else self._key_only(self.by_id[u])
        return needs

    def _key_only(self, stage: Stage) -> Done:
        return Done(stage.key(self._known(stage)))
