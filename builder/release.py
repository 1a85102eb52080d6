"""Signing a build's SHA256SUMS, and `xenspin verify`: is a downloaded ISO what was published?

A build publishes the ISO with SHA256SUMS (its digest and its companions'), build-info.json
(what it was built from, the ISO's digest and size) and packages.json (also inside the ISO).
Signing adds SHA256SUMS.asc, a detached armored OpenPGP signature made with the publisher's
key. Verifying checks, in order, each link of that chain: the signature over SHA256SUMS
against the keys the user trusts, every file SHA256SUMS names that is beside the ISO, then
what the ISO carries (packages.json, .disk/info) against build-info.json. The ISO cannot hold
its own build-info.json (that names the ISO's digest): .disk/info and packages.json are its record.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import gpg, iso
from .errors import VerifyFailed, XenspinError
from .run import run
from .store import sha256_file

SUMS = "SHA256SUMS"
SIGNATURE = "SHA256SUMS.asc"
BUILD_INFO = "build-info.json"
PACKAGES = "packages.json"
DISK_INFO = ".disk/info"  # "NAME VERSION amd64" (iso.layout writes it)


# --- signing --------------------------------------------------------------------------


def signing_key(option: str | None, configured: str) -> str | None:
    """The key to sign with: --sign KEY, else the user's config (sign-key), else none."""
    return option or configured or None


def check_key(key: str) -> str:
    """Refuse before an hour's build when KEY cannot sign here; return its fingerprint."""
    proc = run(
        ["gpg", "--batch", "--no-tty", "--with-colons", "--list-secret-keys", "--", key],
        what=f"--sign {key}: look up the key",
        capture=True,
        check=False,
    )
    fprs = [line.split(":")[9] for line in proc.stdout.decode(errors="replace").splitlines() if line.startswith("fpr:")]
    if proc.returncode != 0 or not fprs:
        home = os.environ.get("GNUPGHOME") or "~/.gnupg"
        raise XenspinError(f"--sign {key}: no secret key {key!r} in the keyring ({home})")
    return fprs[0]


def sign(sums: Path, key: str, dest: Path | None = None) -> Path:
    """Write SIGNATURE beside sums (or dest): a detached armored signature by key, in place only once whole.

    The remote cache signs its records with this too (builder/cache.py).
    """
    dest = dest or sums.with_name(SIGNATURE)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        run(
            [
                "gpg",
                "--batch",
                "--no-tty",
                "--yes",
                "--armor",
                "--local-user",
                key,
                "--output",
                tmp,
                "--detach-sign",
                sums,
            ],
            what=f"sign {sums.name} with {key}",
        )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def drop_stale_signature(out: Path) -> bool:
    """An unsigned build rewrote SHA256SUMS: an old signature beside it would no longer match."""
    old = out / SIGNATURE
    if old.exists():
        old.unlink()
        return True
    return False


# --- verifying (pure parts) -----------------------------------------------------------


def parse_sums(text: str, where: str) -> dict[str, str]:
    """SHA256SUMS (`DIGEST  NAME` lines, sha256sum's text or binary mode) -> name: digest."""
    sums: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition(" ")
        name = name.removeprefix(" ").removeprefix("*")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not name:
            raise VerifyFailed(f"{where}:{n}: not a sha256sum line (expected DIGEST  NAME)")
        if "/" in name or name in (".", ".."):
            raise VerifyFailed(f"{where}:{n}: names {name!r}, not a file beside it")
        sums[name] = digest
    return sums


def disk_info_line(info: dict[str, Any]) -> str:
    """What .disk/info on the ISO says for the build build-info.json describes."""
    return f"{info.get('name')} {info.get('version')} amd64"


def embedded_problem(
    iso_name: str,
    iso_sha: str,
    iso_size: int,
    info: dict[str, Any],
    carried: dict[str, bytes],
    packages_sha: str | None,
) -> str | None:
    """What in the ISO's own record (carried files) or build-info.json disagrees; None when all agree.

    packages_sha: the digest SHA256SUMS gives packages.json (None when it names none).
    """
    recorded = info.get("iso") or {}
    if recorded.get("file") != iso_name:
        return f"{BUILD_INFO} describes {recorded.get('file')!r}, not {iso_name}"
    if recorded.get("sha256") != iso_sha or recorded.get("size") != iso_size:
        return f"{BUILD_INFO} gives another digest or size for {iso_name} than the file has"
    disk = carried.get(DISK_INFO, b"").decode(errors="replace").strip()
    if disk != disk_info_line(info):
        return f"{iso_name}: its {DISK_INFO} says {disk!r}, {BUILD_INFO} says {disk_info_line(info)!r}"
    if PACKAGES not in carried:
        return f"{iso_name}: carries no {PACKAGES}"
    if packages_sha is not None and hashlib.sha256(carried[PACKAGES]).hexdigest() != packages_sha:
        return f"{iso_name}: the {PACKAGES} it carries is not the one {SUMS} names"
    return None


def signer_problem(status: str, keyrings: Sequence[Path]) -> str | None:
    """Why gpg's --status-fd output is not a good signature by a key of keyrings; None when it is."""
    lines = [line.split()[1:] for line in status.splitlines() if line.startswith("[GNUPG:] ")]
    if any(w[0] == "VALIDSIG" for w in lines if w):
        return None
    names = ", ".join(str(k) for k in keyrings)
    for w in lines:
        if w and w[0] == "BADSIG":
            return f"{SIGNATURE}: bad signature by {w[1]}: {SUMS} was changed after it was signed"
    for w in lines:
        if w and w[0] in ("NO_PUBKEY", "ERRSIG") and len(w) > 1:
            return f"{SIGNATURE}: made by key {w[1]}, which is not in {names}"
    return f"{SIGNATURE}: not a good signature of {SUMS} by a key in {names}"


# --- verifying ------------------------------------------------------------------------


@dataclass
class Verified:
    """What `xenspin verify` checked, for its report."""

    iso: Path
    sha256: str
    signer: str | None  # fingerprint; None when no keyring was given
    checked: list[str] = field(default_factory=list)  # files beside the ISO whose digests matched
    name: str = ""
    version: str = ""


def read_iso_files(image: Path, names: Sequence[str]) -> dict[str, bytes]:
    """Files from an ISO (iso.read_files); an unreadable image fails the verification."""
    try:
        return iso.read_files(image, names)
    except iso.UnreadableIso as e:
        raise VerifyFailed(str(e)) from None


def check_signature(sums: Path, keyrings: Sequence[Path]) -> str:
    """The fingerprint of the good signature over sums by a key of keyrings; VerifyFailed otherwise."""
    for k in keyrings:
        if not k.is_file():
            raise XenspinError(f"--keyring {k}: no such file")
    sig = sums.with_name(SIGNATURE)
    if not sig.is_file():
        raise VerifyFailed(f"{sig}: missing: {SUMS} is not signed (or the signature was not downloaded)")
    with gpg.keyring(list(keyrings), what="verify") as home:
        proc = run(
            ["gpg", "--homedir", home, "--batch", "--no-autostart", "--status-fd", "1", "--verify", sig, sums],
            what=f"verify {sig.name}",
            capture=True,
            check=False,
        )
    status = proc.stdout.decode(errors="replace")
    problem = signer_problem(status, keyrings)
    if problem:
        raise VerifyFailed(problem)
    return gpg.valid_signers(status)[0]


def verify(image: Path, keyrings: Sequence[Path]) -> Verified:
    """Check a downloaded ISO against SHA256SUMS, its signature and build-info.json beside it."""
    if not image.is_file():
        raise XenspinError(f"{image}: no such file")
    folder = image.parent
    sums_path = folder / SUMS
    if not sums_path.is_file():
        raise VerifyFailed(f"{sums_path}: missing: nothing to check {image.name} against")
    signer = check_signature(sums_path, keyrings) if keyrings else None
    sums = parse_sums(sums_path.read_text(errors="replace"), str(sums_path))
    if image.name not in sums:
        raise VerifyFailed(f"{sums_path}: names no {image.name}")
    result = Verified(image, "", signer)
    for name, digest in sorted(sums.items()):
        path = folder / name
        if name != image.name and not path.is_file():
            continue  # a companion not downloaded; the ISO itself is required
        actual = sha256_file(path)
        if actual != digest:
            raise VerifyFailed(
                f"{path}: sha256 {actual[:16]}… is not the {digest[:16]}… {SUMS} gives: changed or damaged"
            )
        result.checked.append(name)
        if name == image.name:
            result.sha256 = actual
    info_path = folder / BUILD_INFO
    if BUILD_INFO not in result.checked:
        raise VerifyFailed(f"{info_path}: missing or not named in {SUMS}: download it beside {image.name}")
    try:
        info = json.loads(info_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise VerifyFailed(f"{info_path}: not JSON") from None
    carried = read_iso_files(image, [DISK_INFO, PACKAGES])
    problem = embedded_problem(image.name, result.sha256, image.stat().st_size, info, carried, sums.get(PACKAGES))
    if problem:
        raise VerifyFailed(problem)
    result.name, result.version = str(info.get("name")), str(info.get("version"))
    return result


def finish(out: Path, key: str | None, also: Sequence[Path] = ()) -> tuple[Path | None, bool]:
    """After a build published out/SHA256SUMS: sign it with key (and the other sums files in also: the
    source release's), or drop a signature it outdated.

    Under the out/ lock, so a build publishing into out/ at once never pairs with the wrong signature.
    Returns the signature written (if any) and whether an outdated one was removed.
    """
    from .aptrepo import out_lock

    with out_lock(out):
        if key:
            for sums in also:
                sign(sums, key)
            return sign(out / SUMS, key), False
        return None, drop_stale_signature(out)
