"""Trust II (issue 16): templates, overlay files, packaging and step-made .debs, tried as an attacker would.

Each test makes the attack, asserts it had no effect (no marker file, the host file
unchanged, the secret nowhere in the result) and that the refusal is one line. All
fast: overlays are read from plain directories, packaging and the .deb checks run
directly on files made in tmp_path.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import one_line

from builder import cli, manifest
from builder.overlays import OverlayError

SECRET = "hunter2-not-for-the-image"

CONTEXT_DATA = {
    "distro": {"name": "acme-xen", "version": "1.2", "vendor": "ACME", "description": ""},
    "components": {"xen": {"version": "4.17.5", "kind": "debian", "key": "abc"}},
    "build": {"id": "0123456789ab", "epoch": 0, "date": "1970-01-01", "lock_digest": "ff"},
}


def context() -> dict[str, Any]:
    """What templates see, a new copy each time: a template that could change it would change no other test."""
    return copy.deepcopy(CONTEXT_DATA)


DISTRO = """\
name: tiny
version: "{version}"
components:
  hello: {{}}
installer:
  component: hello
"""

RECIPE = """\
source: {path: hello}
steps:
  - name: stage
    run: install -D -m 0644 "$SRC/note" "$OUT/usr/share/hello/note"
package: {name: hello-xs}
"""


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    write(root, {"components/hello.yaml": RECIPE, "components/hello/note": "hello\n"})
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A 0600 host file outside everything, standing in for /etc/shadow."""
    path = tmp_path / "host" / "shadow"
    write(tmp_path, {"host/shadow": f"root:{SECRET}:20228:0:99999:7:::\n"})
    path.chmod(0o600)
    return path


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI expecting exit 2 and exactly one line on stderr; return it."""
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    return one_line(err)


def overlay(tmp_path: Path, files: dict[str, str | tuple[str, int]], name: str = "vendor") -> Path:
    root = tmp_path / "overlays" / name
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text, mode = content if isinstance(content, tuple) else (content, 0o644)
        path.write_text(text)
        path.chmod(mode)
    return root


def finishes(fn: Callable[[], Any], timeout: float = 10) -> BaseException | None:
    """Call fn in a thread; fail if it is still running after timeout (blocked on a fifo, reading a device)."""
    result: dict[str, BaseException | None] = {"error": None}

    def target() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout} s (blocked reading a fifo or device?)"
    return result["error"]


def refusal(fn: Callable[[], Any], prefix: str = "") -> str:
    """The one-line OverlayError fn raises, within seconds."""
    error = finishes(fn)
    assert isinstance(error, OverlayError), repr(error)
    return one_line(str(error), prefix)


# --- 1. version: renders in Jinja2's sandbox, with `date` only ------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",  # the issue's: Jinja2's globals
        "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch MARKER') }}",
        "{{ date.__class__.__mro__[1].__subclasses__() }}{{ lipsum.__globals__.os.system('touch MARKER') }}",
    ],
)
def test_version_template_runs_no_code(project: Path, tmp_path: Path, capsys, payload: str) -> None:
    marker = tmp_path / "marker"
    write(project, {"distro.yaml": DISTRO.format(version="1.0" + payload.replace("MARKER", str(marker)))})
    line = refused(capsys, "validate")
    assert line.startswith("distro.yaml:2: version: "), line
    assert "(expected {{ date }} only)" in line
    assert not marker.exists()


def test_version_template_errors_are_one_line_and_date_still_renders(
    project: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(project, {"distro.yaml": DISTRO.format(version="1.0~{{ date")})
    line = refused(capsys, "validate")  # Jinja2's own message for this has two lines
    assert line.startswith("distro.yaml:2: version: bad template: ")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    write(project, {"distro.yaml": DISTRO.format(version="1.0~{{ date }}")})
    assert manifest.load(project / "distro.yaml").version == "1.0~20260101"
