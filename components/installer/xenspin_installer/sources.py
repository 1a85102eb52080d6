"""Where an unattended install finds its answerfile: kernel command line, a disk labelled XSANSWER, the ISO."""

from __future__ import annotations

import shlex
import tempfile
import time
import urllib.request
from pathlib import Path

from . import InstallerError
from .answerfile import ISO_DIR, MAX_BYTES
from .disks import ANSWER_LABEL as LABEL
from .run import Runner

NAMES = ("answerfile.yaml", "answerfile.yml", "answerfile.xml")


def cmdline_args(text: str) -> dict[str, str]:
    """key=value words of a kernel command line (the last one of a key wins)."""
    out = {}
    for word in shlex.split(text):
        key, sep, value = word.partition("=")
        out[key] = value if sep else ""
    return out


def _save(data: bytes, name: str) -> Path:
    suffix = ".xml" if name.endswith(".xml") or data.lstrip().startswith(b"<") else ".yaml"
    fd, path = tempfile.mkstemp(prefix="xenspin-answerfile-", suffix=suffix)
    with open(fd, "wb") as f:
        f.write(data)
    return Path(path)


def from_url(url: str, medium: Path, runner: Runner) -> Path:
    """http(s)://... (bringing up DHCP first if need be) or file:/PATH on the install medium."""
    if url.startswith("file:"):
        rel = url.removeprefix("file:").lstrip("/")
        for p in (medium / rel, Path("/") / rel):
            if p.is_file():
                return p
        raise InstallerError(f"answerfile={url}: not found on the install medium")
    if not url.startswith(("http://", "https://")):
        raise InstallerError(f"answerfile={url}: unsupported (expected http://, https:// or file:/PATH)")
    for attempt in range(3):
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                # One byte over the limit is enough for load() to refuse it; the rest never reaches memory.
                return _save(resp.read(MAX_BYTES + 1), url)
        except OSError as e:
            if attempt == 2:
                raise InstallerError(f"answerfile={url}: cannot fetch: {e}") from None
            runner.run(["dhclient", "-1", "-v"], "bring up the network (DHCP)", check=False)
            time.sleep(2)
    raise AssertionError("unreachable")


def from_labelled_disk(runner: Runner) -> Path | None:
    """An answerfile on a small filesystem labelled XSANSWER, copied out and the disk unmounted."""
    dev = runner.run(
        ["blkid", "-L", LABEL], "look for a disk labelled XSANSWER", capture=True, check=False, writes=False
    ).strip()
    if not dev:
        return None
    mnt = Path(tempfile.mkdtemp(prefix="xenspin-answer-"))
    runner.run(["mount", "-o", "ro", dev, str(mnt)], f"mount {dev}", writes=False)
    try:
        for name in NAMES:
            if (mnt / name).is_file():
                return _save((mnt / name).read_bytes(), name)
        raise InstallerError(f"{dev} (label {LABEL}): holds none of {', '.join(NAMES)}")
    finally:
        runner.run(["umount", str(mnt)], f"unmount {dev}", check=False, writes=False)


def from_medium(medium: Path) -> Path | None:
    for name in ("answerfile.yaml", "answerfile.xml"):
        p = medium / ISO_DIR / name
        if p.is_file():
            return p
    return None


def find(cmdline: dict[str, str], medium: Path, runner: Runner) -> tuple[Path, str] | None:
    """The answerfile and where it came from: command line first, then a labelled disk, then the ISO."""
    if cmdline.get("answerfile"):
        return from_url(cmdline["answerfile"], medium, runner), f"answerfile={cmdline['answerfile']}"
    disk = from_labelled_disk(runner)
    if disk:
        return disk, f"the disk labelled {LABEL}"
    baked = from_medium(medium)
    if baked:
        return baked, "the install medium"
    return None
