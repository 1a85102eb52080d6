"""Fixtures shared by the slow tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for the whole run, so each build root is made once and shared by every build test."""
    return tmp_path_factory.mktemp("store")


def one_line(err: str) -> str:
    """The single line a user sees for an expected failure: no traceback, nothing else."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]
