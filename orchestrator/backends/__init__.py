"""Backends apply a plan. ``resolve_backend`` picks one; ``make_backend`` builds it."""

from __future__ import annotations

from orchestrator.backends.base import Backend
from orchestrator.plan import BackendName
from orchestrator.settings import Settings


def resolve_backend(settings: Settings) -> tuple[BackendName, str]:
    """The backend to use and why. ``auto``: docker when a daemon answers and the image is
    there, otherwise the process backend (the embedded default)."""
    if settings.backend != "auto":
        return settings.backend, f"--backend {settings.backend}"
    try:
        from orchestrator.backends.docker import connect_settings

        with connect_settings(settings, timeout=5) as client:
            client.ping()
            client.images.get(settings.cluster.image)
    except Exception as e:  # any failure of the probe means "no usable docker"
        kind = "image missing" if type(e).__name__ == "ImageNotFound" else "no Docker daemon"
        return "process", f"auto: {kind}, running nodes as local processes"
    return "docker", f"auto: Docker daemon answers and {settings.cluster.image} exists"


def make_backend(name: BackendName, settings: Settings) -> Backend:
    """Instantiate the named backend (docker is imported lazily)."""
    if name == "process":
        from orchestrator.backends.process import ProcessBackend

        return ProcessBackend()
    from orchestrator.backends.docker import DockerBackend

    if len(settings.hosts) > 1:
        from orchestrator.backends.swarm import MultiHostDockerBackend

        return MultiHostDockerBackend.from_hosts(settings.hosts)
    return DockerBackend.from_settings(settings)
