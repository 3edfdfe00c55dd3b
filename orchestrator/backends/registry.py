"""The backend registry: a name -> the :class:`~orchestrator.backends.base.BackendKind` that owns it.

One place per backend. A backend is one module that defines a ``BackendKind`` (its fabric, how to
probe for it, how to build its executor) and is registered here by name: ``build_plan``, the CLI,
``down``, ``doctor`` and the sweep only ever ask the registry. Built-ins are registered as
``"module:attribute"`` strings so that importing the registry imports no SDK; third parties (and
tests) call :func:`register_backend` with the object itself.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.backends.base import BackendKind

# Order matters: ``backend = "auto"`` takes the first kind whose probe accepts the host.
_BUILTIN: dict[str, str] = {
    "docker": "orchestrator.backends.docker.kind:DOCKER",
    "process": "orchestrator.backends.process:PROCESS",
}
_registry: dict[str, BackendKind | str] = dict(_BUILTIN)


def register_backend(kind: BackendKind, *, replace: bool = False) -> None:
    """Make ``kind`` selectable as ``backend = kind.name`` (``--backend NAME``)."""
    if kind.name in _registry and not replace:
        raise ValueError(f"backend {kind.name!r} is already registered; pass replace=True")
    if kind.name == "auto":
        raise ValueError("'auto' is reserved for choosing a backend")
    _registry[kind.name] = kind


def unregister_backend(name: str) -> None:
    """Forget a registered backend (tests); built-ins come back as they were."""
    if name in _BUILTIN:
        _registry[name] = _BUILTIN[name]
    else:
        _registry.pop(name, None)


def backend_names() -> tuple[str, ...]:
    """Every registered backend name, in ``auto``'s order of preference."""
    return tuple(_registry)


def backend_kind(name: str) -> BackendKind:
    """The kind registered as ``name``; ConfigError naming the known ones otherwise."""
    entry = _registry.get(name)
    if entry is None:
        raise ConfigError(
            f"backend: {name!r} is not a backend; use auto or one of {', '.join(_registry)}"
        )
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        kind: BackendKind = getattr(importlib.import_module(module), attr)
        _registry[name] = kind
        return kind
    return entry
