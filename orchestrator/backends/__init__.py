"""Backends apply a plan. The registry (``registry.py``) maps a name to a backend's kind;
``resolve_backend`` picks one for ``backend = "auto"``; ``make_backend`` builds its executor."""

from __future__ import annotations

from orchestrator.backends.base import Backend, BackendKind
from orchestrator.backends.registry import backend_kind, backend_names, register_backend
from orchestrator.settings import Settings

__all__ = ["Backend", "BackendKind", "backend_kind", "backend_names", "make_backend",
           "register_backend", "resolve_backend"]


def resolve_backend(settings: Settings) -> tuple[str, str]:
    """The backend to use and why. ``auto``: the first registered kind whose probe accepts this
    host (docker when a daemon answers and the image is there), else the process backend."""
    if settings.backend != "auto":
        return settings.backend, f"--backend {settings.backend}"
    reasons: list[str] = []
    for name in backend_names():
        kind = backend_kind(name)
        problem = kind.probe(settings)
        if problem is None:
            return name, "auto: " + "; ".join([*reasons, kind.ready(settings)])
        reasons.append(f"{name}: {problem}")
    return "process", "auto: " + "; ".join(reasons)


def make_backend(name: str, settings: Settings) -> Backend:
    """The executor of the backend registered as ``name``."""
    return backend_kind(name).create(settings)
