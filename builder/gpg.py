"""OpenPGP checks against named keys only, in a throwaway keyring (never the user's)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import Refused
from .run import run


class SignatureError(Refused):
    """A signature is missing, bad, or made by a key the recipe does not name."""


@contextlib.contextmanager
def keyring(keys: Sequence[Path], *, what: str) -> Iterator[Path]:
    """A temporary GNUPGHOME holding exactly `keys`; removed afterwards."""
    if not keys:
        raise SignatureError(f"{what}: a signature is required but no keys are named (verify.keys)")
    home = Path(tempfile.mkdtemp(prefix="xenspin-gpg."))
    try:
        home.chmod(0o700)
        for key in keys:
            if not Path(key).is_file():
                raise SignatureError(f"{what}: key file {key} does not exist")
            run(
                ["gpg", "--homedir", home, "--batch", "--no-autostart", "--quiet", "--import", key],
                what=f"{what}: import {Path(key).name}",
            )
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def valid_signers(status: str) -> list[str]:
    """Fingerprints of good signatures in gpg --status-fd output (VALIDSIG lines)."""
    return [line.split()[2] for line in status.splitlines() if line.startswith("[GNUPG:] VALIDSIG ")]


def verify_detached(data: Path, signature: Path, keys: Sequence[Path], *, what: str) -> str:
    """Check a detached signature over data; return the signer's fingerprint."""
    with keyring(keys, what=what) as home:
        proc = run(
            ["gpg", "--homedir", home, "--batch", "--no-autostart", "--status-fd", "1", "--verify", signature, data],
            what=f"{what}: verify signature",
            capture=True,
            check=False,
        )
    signers = valid_signers(proc.stdout.decode(errors="replace"))
    if not signers:
        raise SignatureError(f"{what}: signature does not verify against the named keys; nothing stored")
    return signers[0]
