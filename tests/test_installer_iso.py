"""An answerfile baked into the ISO: where it goes, that it moves the ISO's key, and that a bad one stops the build."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from builder import cli, iso, manifest

DISTRO = """\
name: tiny
version: "1"
components:
  installer:
    source: {path: installer}
installer:
  answerfile: answers/host.yaml
"""


def load(tmp_path: Path, answer: str) -> manifest.Distro:
    (tmp_path / "installer").mkdir(exist_ok=True)
    (tmp_path / "answers").mkdir(exist_ok=True)
    (tmp_path / "answers" / "host.yaml").write_text(answer)
    (tmp_path / "distro.yaml").write_text(DISTRO)
    return manifest.load(tmp_path / "distro.yaml")


def test_baked_answerfile_is_on_the_iso_and_in_its_key(tmp_path: Path) -> None:
    distro = load(tmp_path, "root: {password: x}\n")
    inp = iso.Inputs(distro, tmp_path / "rootfs", "rootfs-key", iso.host_loaders(), iso.GuestTools(), 0)
    files = iso.layout(inp, tmp_path).files
    assert files["xenspin/answerfile.yaml"] == tmp_path / "answers" / "host.yaml"
    before = iso.key(inp)
    (tmp_path / "answers" / "host.yaml").write_text("root: {password: y}\n")
    assert iso.key(inp) != before
    plain = dataclasses.replace(distro, installer=dataclasses.replace(distro.installer, answerfile=""))
    inp = dataclasses.replace(inp, distro=plain)
    assert not any(name.startswith("xenspin/") for name in iso.layout(inp, tmp_path).files)


def test_a_bad_baked_answerfile_stops_the_build_first(tmp_path: Path, capsys) -> None:
    load(tmp_path, "root: {password: x}\nhostname: no_underscores\n")
    code = cli.main(["-f", str(tmp_path / "distro.yaml"), "--store", str(tmp_path / "store"), "build"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().endswith(
        "host.yaml:2: hostname: 'no_underscores' (expected labels of letters, digits and - (at most 63 each) joined by dots)"
    )
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.iso"))


def test_build_answerfile_option_is_checked_first(tmp_path: Path, capsys) -> None:
    load(tmp_path, "root: {password: x}\n")
    (tmp_path / "other.xml").write_text("<installation><keymap>us</keymap></installation>")
    code = cli.main(
        [
            "-f",
            str(tmp_path / "distro.yaml"),
            "--store",
            str(tmp_path / "store"),
            "build",
            "--answerfile",
            str(tmp_path / "other.xml"),
        ]
    )
    assert code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("other.xml:1: root: gives no way to log in (expected password, password-hash or ssh-keys)")
    )
