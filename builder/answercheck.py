"""Answerfiles on the build host: validate one, give its JSON Schema, say its name on the ISO.

The model and its loader live in the installer component (xenspin_installer), the code
that reads answerfiles in dom0; here they are only wrapped for the CLI, so the build
host and the installed host can never disagree about what an answerfile means.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xenspin_installer import InstallerError, readanswer
from xenspin_installer import answerfile as model

from . import dataschema
from .errors import XenspinError

iso_name = model.iso_answerfile_name
redacted = model.redacted


def validate(path: Path) -> tuple[model.Answerfile, list[str]]:
    """The answerfile and its warnings; XenspinError (one line naming the field) when it is bad."""
    try:
        return readanswer.load(path)
    except InstallerError as e:
        raise XenspinError(str(e)) from None


HASHED_FORM = (
    'give its hash instead (YAML `root: password-hash:`, XML `<root-password type="hash">`; '
    "make one with `openssl passwd -6`)"
)


def plaintext_password(path: Path, answer: model.Answerfile) -> str | None:
    """The warning for an answerfile that gives root a plain password (readable by whoever reads the file), or None."""
    if not answer.root.password:
        return None
    return f"{path}: warning: root's password is plain text, readable by anyone who can read this file; {HASHED_FORM}"


def refuse_plaintext_in_iso(path: Path, answer: model.Answerfile) -> None:
    """Building a plain root password into an ISO (published, world-readable) is refused: one line naming the fix."""
    if answer.root.password:
        raise XenspinError(
            f"{path}: root's password is plain text and would be readable by anyone with the ISO; "
            f"{HASHED_FORM}, or pass --allow-plaintext-password"
        )


def json_schema() -> dict[str, Any]:
    """JSON Schema of YAML answerfiles (no +/- list operations: an answerfile extends nothing)."""
    doc, defs = dataschema.document(
        model.Answerfile, "answerfile", "xenspin answerfile (YAML) for unattended installs", list_ops=False
    )
    defs["Answerfile"]["required"] = ["root"]
    return doc


def field_table_markdown() -> str:
    """The documentation's table of answerfile fields, generated from the model."""
    return dataschema.markdown_table(model.Answerfile)
