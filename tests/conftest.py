"""Fixtures shared by the slow tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for the whole run, so each build root is made once and shared by every build test."""
    return tmp_path_factory.mktemp("store")
