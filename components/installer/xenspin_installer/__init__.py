"""The xenspin host installer: runs in dom0 from the ISO and installs Xen onto a disk.

Standard library plus Debian's python3-yaml only: this package runs inside the live
dom0, where the builder and its PyPI dependencies are not installed. The builder imports
it too (answerfile validation and schema), so there is one model of an answerfile.
"""

# The installed disk's initramfs, made without live-boot by the builder's rootfs stage and
# put beside the squashfs (the ISO's live/): this prefix plus the kernel version.
DISK_INITRD = "disk-initrd.img-"


class InstallerError(Exception):
    """An expected failure: printed as one line, exit status 2, never a traceback."""

    exit_code = 2
