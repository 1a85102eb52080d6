"""Signing SHA256SUMS and `xenspin verify`: a small ISO made here, a throwaway key (conftest's), no build."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import Keys, one_line

from builder import cli, config, iso, release
from builder.errors import VerifyFailed, XenspinError

PACKAGES = b'[{"name": "xen-hypervisor-4.20-amd64", "version": "4.20.1-1"}]\n'


def publish(out: Path, *, name: str = "demo", version: str = "1.0", packages: bytes = PACKAGES) -> Path:
    """What a build publishes, small: an ISO carrying packages.json and .disk/info, build-info.json, SHA256SUMS."""
    out.mkdir(parents=True, exist_ok=True)
    image = out / f"{name}-{version}-amd64.iso"
    files = {"packages.json": packages, ".disk/info": f"{name} {version} amd64\n".encode()}
    iso.write_iso(iso.Layout(dict(files), None, None), image, volume_id="DEMO", epoch=0, seed="0" * 64)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    info = {
        "name": name,
        "version": version,
        "iso": {"file": image.name, "sha256": digest, "size": image.stat().st_size},
    }
    (out / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / "packages.json").write_bytes(packages)
    write_sums(out)
    return image


def write_sums(out: Path) -> None:
    names = sorted(p.name for p in out.iterdir() if p.is_file() and p.name.endswith((".iso", ".json")))
    lines = [f"{hashlib.sha256((out / n).read_bytes()).hexdigest()}  {n}\n" for n in names]
    (out / "SHA256SUMS").write_text("".join(lines))


@pytest.fixture
def signer(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> Keys:
    """The test keys' GnuPG home as the user's ($GNUPGHOME), so `--sign KEY` finds the secret keys."""
    monkeypatch.setenv("GNUPGHOME", str(keys.home))
    return keys


def test_signed_iso_verifies(tmp_path: Path, signer: Keys) -> None:
    image = publish(tmp_path / "out")
    sig = release.sign(tmp_path / "out/SHA256SUMS", signer.good)
    assert sig.name == "SHA256SUMS.asc" and sig.read_text().startswith("-----BEGIN PGP SIGNATURE-----")
    assert not list((tmp_path / "out").glob(".*"))  # nothing left half-written
    done = release.verify(image, [signer.good_file])
    assert done.signer == signer.good
    assert done.checked == ["build-info.json", "demo-1.0-amd64.iso", "packages.json"]
    assert (done.name, done.version) == ("demo", "1.0")


def test_verify_command(tmp_path: Path, signer: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    image = publish(tmp_path / "out")
    release.sign(tmp_path / "out/SHA256SUMS", signer.good)
    assert cli.main(["verify", str(image), "--keyring", str(signer.good_file)]) == 0
    out = capsys.readouterr().out
    assert f"good signature by {signer.good}" in out and "good: demo 1.0" in out


def test_tampered_iso_fails_in_one_line(tmp_path: Path, signer: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    image = publish(tmp_path / "out")
    release.sign(tmp_path / "out/SHA256SUMS", signer.good)
    data = bytearray(image.read_bytes())
    data[40000] ^= 0xFF
    image.write_bytes(bytes(data))
    assert cli.main(["verify", str(image), "--keyring", str(signer.good_file)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "demo-1.0-amd64.iso: sha256" in err and "changed or damaged" in err


def test_wrong_signer_fails_in_one_line(tmp_path: Path, signer: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    image = publish(tmp_path / "out")
    release.sign(tmp_path / "out/SHA256SUMS", signer.bad)
    assert cli.main(["verify", str(image), "--keyring", str(signer.good_file)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"made by key {signer.bad[-16:]}, which is not in" in err


def test_sums_changed_after_signing(tmp_path: Path, signer: Keys) -> None:
    """A tampered ISO with SHA256SUMS rewritten to match: the signature no longer covers it."""
    image = publish(tmp_path / "out")
    release.sign(tmp_path / "out/SHA256SUMS", signer.good)
    image.write_bytes(image.read_bytes() + b"\0" * 2048)
    write_sums(tmp_path / "out")
    with pytest.raises(VerifyFailed, match="bad signature by .*SHA256SUMS was changed after it was signed"):
        release.verify(image, [signer.good_file])


def test_unsigned_sums_with_a_keyring(tmp_path: Path, signer: Keys) -> None:
    image = publish(tmp_path / "out")
    with pytest.raises(VerifyFailed, match="SHA256SUMS.asc: missing"):
        release.verify(image, [signer.good_file])


def test_without_keyring_checks_digests_and_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = publish(tmp_path / "out")
    assert cli.main(["verify", str(image)]) == 0
    assert "not checked (no --keyring)" in capsys.readouterr().err


def test_iso_record_must_match_build_info(tmp_path: Path) -> None:
    """Consistent digests are not enough: the ISO's .disk/info and packages.json must be the build's."""
    out = tmp_path / "out"
    image = publish(out)
    info = json.loads((out / "build-info.json").read_text())
    (out / "build-info.json").write_text(json.dumps({**info, "version": "2.0"}))
    write_sums(out)
    with pytest.raises(VerifyFailed, match=r"\.disk/info says 'demo 1.0 amd64', build-info.json says 'demo 2.0 amd64'"):
        release.verify(image, [])
    publish(out)  # back to a good set, then another packages.json beside the ISO
    (out / "packages.json").write_bytes(b"[]\n")
    write_sums(out)
    with pytest.raises(VerifyFailed, match="the packages.json it carries is not the one SHA256SUMS names"):
        release.verify(image, [])


def test_another_iso_than_build_info_names(tmp_path: Path) -> None:
    image = publish(tmp_path / "out")
    info = json.loads((tmp_path / "out/build-info.json").read_text())
    info["iso"]["sha256"] = "0" * 64
    (tmp_path / "out/build-info.json").write_text(json.dumps(info))
    write_sums(tmp_path / "out")
    with pytest.raises(VerifyFailed, match="another digest or size"):
        release.verify(image, [])


def test_missing_pieces(tmp_path: Path, keys: Keys) -> None:
    image = publish(tmp_path / "out")
    with pytest.raises(XenspinError, match="--keyring .*nope.asc: no such file") as e:
        release.verify(image, [tmp_path / "nope.asc"])
    assert e.value.exit_code == 2  # could not check: not a failed check
    (tmp_path / "out/SHA256SUMS").unlink()
    with pytest.raises(VerifyFailed, match="SHA256SUMS: missing"):
        release.verify(image, [])
    with pytest.raises(XenspinError, match="no such file"):
        release.verify(tmp_path / "other.iso", [])


@pytest.mark.parametrize(
    "line, problem",
    [
        ("abc  x.iso", "not a sha256sum line"),
        (f"{'0' * 64}  ../etc/passwd", "not a file beside it"),
        (f"{'0' * 64}", "not a sha256sum line"),
    ],
)
def test_parse_sums_refuses(line: str, problem: str) -> None:
    with pytest.raises(VerifyFailed, match=problem):
        release.parse_sums(line + "\n", "SHA256SUMS")


def test_parse_sums_binary_mode() -> None:
    assert release.parse_sums(f"{'a' * 64} *x.iso\n\n", "S") == {"x.iso": "a" * 64}


def test_signing_key_choice(tmp_path: Path) -> None:
    assert release.signing_key("A", "B") == "A"
    assert release.signing_key(None, "B") == "B"
    assert release.signing_key(None, "") is None
    path = tmp_path / "config.yaml"
    path.write_text("sign-key: releases@example.invalid\n")
    assert config.load(path).sign_key == "releases@example.invalid"


def test_unknown_key_refused_before_building(tmp_path: Path, signer: Keys) -> None:
    with pytest.raises(XenspinError) as e:
        release.check_key("nobody@example.invalid")
    assert (
        one_line(e)
        == f"--sign nobody@example.invalid: no secret key 'nobody@example.invalid' in the keyring ({signer.home})"
    )
    assert release.check_key(signer.good) == signer.good


def test_unsigned_build_drops_an_old_signature(tmp_path: Path, signer: Keys) -> None:
    publish(tmp_path / "out")
    release.sign(tmp_path / "out/SHA256SUMS", signer.good)
    assert release.finish(tmp_path / "out", None) == (None, True)
    assert not (tmp_path / "out/SHA256SUMS.asc").exists()
    assert release.finish(tmp_path / "out", None) == (None, False)
    assert release.finish(tmp_path / "out", signer.good) == (tmp_path / "out/SHA256SUMS.asc", False)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["build", "installer", "--sign", "K"], "--sign K: a build of some components writes no ISO"),
        (["build", "--keep", "2"], "--keep N goes with --nightly"),
        (["build", "--nightly", "installer"], "--nightly builds the whole distribution: drop installer"),
    ],
)
def test_build_option_mistakes(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import ROOT

    assert cli.main(["-f", str(ROOT / "distro.yaml"), *argv]) == 2
    assert message in capsys.readouterr().err
