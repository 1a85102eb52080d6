"""The benchmarks' dated results: each run appends one entry to bench/results/NAME.md.

    run = record.Run("build")        # at the start: the time and the load
    ...
    run.write(figures, checks)       # at the end: one entry appended, newest last

An entry holds the date (UTC), the command, the git commit of the checkout (with
", with local changes" when its tracked files differ from that commit), the machine (cores, memory, the
1-minute load at the start and at the end), a table of the figures and a PASS/FAIL
line per target. Entries are only appended, never rewritten. `--no-record` (added to a
script's options by `options`) runs a benchmark without writing anything.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-record", action="store_true", help="do not append the results to bench/results/ (a trial run)"
    )


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return float("nan")


def commit(root: Path = ROOT) -> str:
    """The checkout's commit, and whether tracked files differ from it."""

    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise OSError(proc.stderr.strip())
        return proc.stdout.strip()

    try:
        head = git("log", "-1", "--format=%h (%cs)")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return "unknown (not a git checkout)"
    return head + (", with local changes" if dirty else "")


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


class Run:
    """One benchmark run: started when made, one entry appended by `write`."""

    def __init__(self, name: str, argv: Sequence[str] | None = None) -> None:
        self.name = name
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self.started = time.time()
        self.load = loadavg()

    def entry(self, figures: Iterable[tuple[str, object]], checks: Iterable[tuple[str, bool]]) -> str:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.started))
        command = " ".join([f"bench/{self.name}.py", *self.argv])
        lines = [
            f"## {when}: {command}",
            "",
            f"- commit: {commit()}",
            f"- machine: {os.cpu_count()} cores, {memory_gib():.1f} GiB memory,"
            f" load {self.load:.2f} at the start, {loadavg():.2f} at the end",
            f"- took: {time.time() - self.started:.0f} s",
        ]
        rows = [f"| {_cell(what)} | {_cell(value)} |" for what, value in figures]
        if rows:
            lines += ["", "| figure | value |", "| --- | --- |", *rows]
        verdicts = [f"- {'PASS' if ok else 'FAIL'} {what}" for what, ok in checks]
        if verdicts:
            lines += ["", *verdicts]
        return "\n".join(lines) + "\n"

    def write(
        self,
        figures: Iterable[tuple[str, object]],
        checks: Iterable[tuple[str, bool]],
        directory: Path = RESULTS,
    ) -> Path:
        """Append this run's entry to DIRECTORY/NAME.md (made with its heading if new); return the file."""
        path = Path(directory) / f"{self.name}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = ("" if path.exists() else header(self.name)) + "\n" + self.entry(figures, checks)
        with path.open("a") as f:
            f.write(text)
        return path

    def finish(self, figures: Iterable[tuple[str, object]], checks: Sequence[tuple[str, bool]], write: bool) -> int:
        """Print a PASS/FAIL line per check and (unless a trial run) append the entry; 0 when every check passed."""
        for what, ok in checks:
            print(f"{'PASS' if ok else 'FAIL'}  {what}")
        if write:
            print(f"bench: results appended to {self.write(figures, checks)}")
        return 0 if all(ok for _, ok in checks) else 1


@contextlib.contextmanager
def workdir(keep: Path | None, prefix: str) -> Iterator[Path]:
    """The benchmark's working directory: keep (made if missing, left afterwards) or a temporary one, removed."""
    work = keep or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def header(name: str) -> str:
    return (
        f"# bench/{name}.py results\n\n"
        f"Appended by `bench/{name}.py` at the end of each run (bench/record.py), newest last.\n"
        "Figures depend on the machine and on what else ran on it: compare entries of one machine.\n"
    )
