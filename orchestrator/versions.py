"""Which software produced a result: netorch, torch, Docker engine, kernel, host.

``netorch --version`` prints :func:`netorch_version`; every report carries :func:`versions` as
``report["versions"]`` (and the metrics' ``_info`` gauges its netorch and torch versions), so a
number can be traced back to what measured it. The package version has one source, the
installed distribution's metadata (pyproject.toml's ``[project] version``).
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Callable
from importlib import metadata
from typing import Any

UNKNOWN = "unknown"

# The torch every part of netorch runs: the Makefile's TORCH_SPEC reads this line, the image
# build installs it (the CPU build offline, the CUDA build of the same version on GPU hosts),
# and a test holds pyproject.toml's `torch` extra to it.
TORCH_VERSION = "2.13.0"
# The GPU image: PyTorch's wheel index of one CUDA flavour, on a CUDA runtime base of that major.
TORCH_CUDA = "cu128"
TORCH_CUDA_INDEX_URL = f"https://download.pytorch.org/whl/{TORCH_CUDA}"
GPU_BASE_IMAGE = "nvidia/cuda:12.8.1-runtime-ubuntu24.04"


def netorch_version() -> str:
    """The installed netorch's version (``unknown`` when run from a tree that was not installed)."""
    try:
        return metadata.version("netorch")
    except metadata.PackageNotFoundError:
        return UNKNOWN


def host_torch_version() -> str | None:
    """The host's torch version, without importing torch (None when it is not installed)."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def docker_engine_version(settings: Any) -> str | None:
    """The configured daemon's engine version, or None when none answers (a report is written
    anyway: a version is information, never a reason to fail)."""
    try:
        from orchestrator.backends.docker import connect_settings

        with connect_settings(settings, timeout=5) as client:
            return str(client.version().get("Version") or UNKNOWN)
    except Exception:  # no daemon, no SDK, a remote host down: the report says null
        return None


def versions(settings: Any, backend: str, node_torch: Any = None) -> dict[str, Any]:
    """The versions a report records: ``node_torch`` is the torch the ranks ran (from their
    result), ``host_torch`` the host's; the Docker engine only for container backends."""
    uname = platform.uname()
    return {
        "netorch": netorch_version(),
        "torch": node_torch,
        "host_torch": host_torch_version(),
        "python": platform.python_version(),
        "docker_engine": docker_engine_version(settings) if backend != "process" else None,
        "kernel": uname.release,
        "os": platform.platform(terse=True),
        "host": uname.node,
        "machine": uname.machine,
    }


def versions_soon(settings: Any, backend: str) -> Callable[[Any], dict[str, Any]]:
    """Start :func:`versions` now, in the background (the daemon's answer and the package
    metadata take 20-30 ms, better spent while the nodes work than after they are done); the
    returned function waits for it and adds the nodes' torch."""
    found: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: found.update(versions(settings, backend)),
                              name="versions", daemon=True)
    thread.start()

    def finish(node_torch: Any = None) -> dict[str, Any]:
        thread.join()
        return {**found, "torch": node_torch} if found else versions(settings, backend, node_torch)

    return finish
