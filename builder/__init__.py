"""xenspin: the assembly line for a Xen distribution."""

__version__ = "0.1.0"

# Bumped whenever a stage's output format changes, so every cache key changes with it.
FORMAT_VERSION = 1
