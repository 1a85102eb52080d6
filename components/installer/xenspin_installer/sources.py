"""Where an unattended install finds its answerfile: kernel command line, a disk labelled XSANSWER, the ISO.

A disk labelled XSANSWER may also hold TEST_LOGIN, the test login `xenspin test install`
gives the VM it installs (install.py, Installer.add_test_login says why that is no backdoor).
"""

from __future__ import annotations

import shlex
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import InstallerError, confined
from .answerfile import HASH, ISO_DIR, MAX_BYTES
from .disks import ANSWER_LABEL as LABEL
from .run import Runner

NAMES = ("answerfile.yaml", "answerfile.yml", "answerfile.xml")
TEST_LOGIN = "xenspin-test-login"  # on the XSANSWER disk: one line, the crypt(3) hash of the test login's password


@dataclass(frozen=True)
class Found:
    """An answerfile, where it came from, and the test login's password hash when its answer disk had one."""

    path: Path
    origin: str
    test_login: str | None = None


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
        for root in (medium, Path("/")):
            if confined.is_file(root, rel):
                return confined.resolve(root, rel)
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


def read_test_login(root: Path, rel: str, where: str) -> str:
    """The password hash in the file rel of root (resolved inside root): one crypt(3) hash, never echoed."""
    data = confined.read_bytes(root, rel, limit=4096)
    text = data.decode("utf-8", errors="replace").strip()
    if len(data) >= 4096 or "\n" in text or not text or not HASH.ok(text):
        raise InstallerError(f"{where}: {rel}: is not one crypt(3) password hash (expected one line like $6$...)")
    return text


def from_labelled_disk(runner: Runner) -> Found | None:
    """An answerfile on a small filesystem labelled XSANSWER, copied out and the disk unmounted.

    Names on the disk are resolved inside it (confined.py): a symlink there never reads a
    file of the live system.
    """
    dev = runner.run(
        ["blkid", "-L", LABEL], "look for a disk labelled XSANSWER", capture=True, check=False, writes=False
    ).strip()
    if not dev:
        return None
    mnt = Path(tempfile.mkdtemp(prefix="xenspin-answer-"))
    runner.run(["mount", "-o", "ro", dev, str(mnt)], f"mount {dev}", writes=False)
    where = f"{dev} (label {LABEL})"
    try:
        for name in NAMES:
            if confined.is_file(mnt, name):
                answers = _save(confined.read_bytes(mnt, name, limit=MAX_BYTES + 1), name)
                login = read_test_login(mnt, TEST_LOGIN, where) if confined.is_file(mnt, TEST_LOGIN) else None
                return Found(answers, f"the disk labelled {LABEL}", login)
        raise InstallerError(f"{where}: holds none of {', '.join(NAMES)}")
    finally:
        runner.run(["umount", str(mnt)], f"unmount {dev}", check=False, writes=False)


def from_medium(medium: Path) -> Path | None:
    for name in ("answerfile.yaml", "answerfile.xml"):
        if confined.is_file(medium, f"{ISO_DIR}/{name}"):
            return confined.resolve(medium, f"{ISO_DIR}/{name}")
    return None


def find(cmdline: dict[str, str], medium: Path, runner: Runner) -> Found | None:
    """The answerfile and where it came from: command line first, then a labelled disk, then the ISO.

    Only an XSANSWER disk brings a test login, and only with the answerfile it holds.
    """
    if cmdline.get("answerfile"):
        return Found(from_url(cmdline["answerfile"], medium, runner), f"answerfile={cmdline['answerfile']}")
    disk = from_labelled_disk(runner)
    if disk:
        return disk
    baked = from_medium(medium)
    if baked:
        return Found(baked, "the install medium")
    return None
