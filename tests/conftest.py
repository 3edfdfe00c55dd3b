"""Shared test wiring. The Docker tier's fixtures live in docker_fixtures.py."""

from __future__ import annotations

import sys
from pathlib import Path

# tests/ on sys.path so test modules can import docker_fixtures directly.
sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = ["docker_fixtures"]
