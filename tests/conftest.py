"""Shared test wiring. The Docker tier's fixtures live in docker_fixtures.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# tests/ on sys.path so test modules can import docker_fixtures directly.
sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = ["docker_fixtures"]

#: The repository root (examples/, configs/ live there).
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ``NETORCH_*`` / ``DOCKER_*`` variable from the caller's shell and no ``configs/default.toml`` from the
    current directory: the test runs in ``tmp_path`` with the embedded defaults. Use it with
    ``pytestmark = pytest.mark.usefixtures("isolated")`` or as an argument."""
    for key in list(os.environ):
        if key.startswith(("NETORCH_", "DOCKER_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path
