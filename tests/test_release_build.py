"""End to end on the default build (the session's, no other build): `build --sign` then `xenspin verify`,
and nightly runs whose builds hit the store: retention, a failed build and a SIGKILLed one.

Each build here finds every stage in the store; what they cost is publishing (hard links) and
reading the ISO's digest back.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DEFAULT_EPOCH, OPTIONAL_UPSTREAMS, ROOT, DefaultBuild, Keys, mirror_args, one_line

from builder import cli, nightly, release
from builder.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.network]


def argv(default_build: DefaultBuild, out: Path, *rest: str) -> list[str]:
    return [
        "-f",
        str(default_build.manifest),
        "--store",
        str(default_build.store),
        "--out",
        str(out),
        *mirror_args(OPTIONAL_UPSTREAMS),
        *rest,
    ]


@pytest.fixture
def epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default build's epoch: the same keys, so every stage is found in the store."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", DEFAULT_EPOCH)


def test_signed_default_iso_verifies(
    default_build: DefaultBuild,
    default_iso: Path,
    keys: Keys,
    tmp_path: Path,
    epoch: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GNUPGHOME", str(keys.home))
    out = tmp_path / "out"
    assert cli.main(argv(default_build, out, "build", "--sign", keys.good)) == 0
    assert "SHA256SUMS.asc: signed with" in capsys.readouterr().out
    image = out / default_iso.name
    assert cli.main(["verify", str(image), "--keyring", str(keys.good_file)]) == 0
    said = capsys.readouterr().out
    assert f"good signature by {keys.good}" in said and "good: xenspin 0.1" in said

    assert cli.main(["verify", str(image), "--keyring", str(keys.bad_file)]) == 1
    one_line(capsys.readouterr().err, "SHA256SUMS.asc: made by key")

    # A copy with one byte changed, its companions beside it (the published ISO is a hard link: not touched).
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for f in out.iterdir():
        if f.is_file() and f != image:
            shutil.copy2(f, tampered / f.name)
    shutil.copyfile(image, tampered / image.name)
    with open(tampered / image.name, "r+b") as f:
        f.seek(64 << 20)
        byte = f.read(1)
        f.seek(64 << 20)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert cli.main(["verify", str(tampered / image.name), "--keyring", str(keys.good_file)]) == 1
    assert "changed or damaged" in one_line(capsys.readouterr().err)


def nightly_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def test_nightly_keeps_n_and_survives_failures(
    default_build: DefaultBuild, tmp_path: Path, epoch: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    root = out / nightly.DIR
    day = time.strftime(
        "%Y%m%d", time.gmtime(int(DEFAULT_EPOCH))
    )  # the ISO's version has no {{ date }}; its directory has
    for _ in range(3):
        assert cli.main(argv(default_build, out, "build", "--nightly", "--keep", "2")) == 0
    said = capsys.readouterr().out
    assert f"nightly: deleted {day} (beyond the builds kept)" in said
    assert nightly_dirs(root) == [f"{day}-2", f"{day}-3", "index.html", "index.json", "latest"]
    assert os.readlink(root / "latest") == f"{day}-3"
    index = json.loads((root / "index.json").read_text())
    assert [b["name"] for b in index["builds"]] == [f"{day}-3", f"{day}-2"]
    assert index["builds"][0]["iso"]["href"] == f"{day}-3/xenspin-0.1-amd64.iso"
    assert release.verify(root / "latest/xenspin-0.1-amd64.iso", []).name == "xenspin"
    before = (nightly_dirs(root), (root / "index.html").read_text(), os.readlink(root / "latest"))

    # A build that fails (its answerfile is missing): latest stays, and the line says so.
    bad = argv(default_build, out, "build", "--nightly", "--keep", "2", "--answerfile", str(tmp_path / "none.yaml"))
    assert cli.main(bad) == 2
    line = one_line(capsys.readouterr().err)
    assert line.endswith(f"(nightly {day}-4 failed; latest still {day}-3)"), line
    assert (nightly_dirs(root), (root / "index.html").read_text(), os.readlink(root / "latest")) == before

    # A build killed midway: it waits for the store (held here), and is SIGKILLed once it has begun.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "builder", *argv(default_build, out, "build", "--nightly", "--keep", "2")]
    with Store(default_build.store).locked("store"):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not list(root.glob(f".*{nightly.PARTIAL}")) and proc.poll() is None:
                assert time.monotonic() < deadline, "the nightly never began its build"
                time.sleep(0.05)
            assert proc.poll() is None, "the nightly ended instead of waiting for the store"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (nightly_dirs(root), (root / "index.html").read_text(), os.readlink(root / "latest")) == before
    assert list(root.glob(f".*{nightly.PARTIAL}"))  # what it left, hidden

    # The next run clears it away and publishes.
    assert cli.main(argv(default_build, out, "build", "--nightly", "--keep", "2")) == 0
    assert not list(root.glob(".*"))
    assert nightly_dirs(root) == [f"{day}-3", f"{day}-4", "index.html", "index.json", "latest"]
    assert os.readlink(root / "latest") == f"{day}-4"
