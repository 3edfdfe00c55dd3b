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

#: A developer's own build of the image (``NT_TEST_IMAGE=netorch:mine``) for tests that go through
#: ``isolated`` or ``netorch_env()``; unset (CI) means the default ``netorch:latest``.
TEST_IMAGE = os.environ.get("NT_TEST_IMAGE", "")


def netorch_env(columns: int = 400) -> dict[str, str]:
    """The environment for a ``netorch`` subprocess: none of the caller's ``NETORCH_*`` settings,
    plain unwrapped output so assertions can search it, and ``NT_TEST_IMAGE`` as the image."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETORCH_")}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": str(columns)})
    if TEST_IMAGE:
        env["NETORCH_CLUSTER__IMAGE"] = TEST_IMAGE
    return env


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ``NETORCH_*`` / ``DOCKER_*`` variable from the caller's shell and no ``configs/default.toml`` from the
    current directory: the test runs in ``tmp_path`` with the embedded defaults. Use it with
    ``pytestmark = pytest.mark.usefixtures("isolated")`` or as an argument."""
    for key in list(os.environ):
        if key.startswith(("NETORCH_", "DOCKER_")):
            monkeypatch.delenv(key)
    if TEST_IMAGE:
        monkeypatch.setenv("NETORCH_CLUSTER__IMAGE", TEST_IMAGE)
    monkeypatch.chdir(tmp_path)
    return tmp_path
