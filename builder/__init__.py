"""xenspin: the assembly line for a Xen distribution."""

__version__ = "0.1.0"

# Kept for modules written before each stage had its own format number (stage.Stage.format);
# new code uses its stage's own FORMAT, and the lock has lock.LOCK_FORMAT.
FORMAT_VERSION = 1
