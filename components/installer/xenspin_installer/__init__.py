"""The xenspin host installer: runs in dom0 from the ISO and installs Xen onto a disk.

Standard library plus Debian's python3-yaml only: this package runs inside the live
dom0, where the builder and its PyPI dependencies are not installed. The builder imports
it too (answerfile validation and schema), so there is one model of an answerfile.
"""


class InstallerError(Exception):
    """An expected failure: printed as one line, exit status 2, never a traceback."""

    exit_code = 2
