"""Docker SDK and transport errors -> the netorch error tree, in one table.

Every SDK call site goes through :func:`docker_errors` (in the spirit of httpx's
``map_exceptions``)::

    with docker_errors(f"creating network {plan.network.name}", plan):
        network = client.networks.create(**network_create_kwargs(plan))

:func:`translate_error` is the table it applies. Code that deliberately swallows daemon errors
(stopping on the failure path, a log stream ending) catches :data:`DOCKER_ERRORS` itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import docker.errors
import requests.exceptions

from orchestrator.errors import (
    BackendError,
    DaemonUnavailableError,
    ImageError,
    NetorchError,
    NetworkConflictError,
    PreflightError,
)
from orchestrator.plan import ClusterPlan

# What the SDK raises when the daemon's socket is gone or a bounded request timed out: it does
# not wrap these in DockerException.
TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
)
# Everything a call into the SDK may raise because of the daemon (not because of our own code).
DOCKER_ERRORS: tuple[type[Exception], ...] = (docker.errors.DockerException, *TRANSPORT_ERRORS)

DAEMON_FIX = (
    "start it (dockerd & / systemctl start docker), or set docker.host / hosts.url / DOCKER_HOST "
    "to a daemon that runs"
)


def explanation(e: BaseException) -> str:
    """The daemon's own words for an SDK error (its ``explanation``), else ``str(e)``."""
    text = getattr(e, "explanation", None) or str(e)
    return str(text).strip()


def translate_error(
    e: BaseException, what: str, plan: ClusterPlan | None = None,
    fallback: type[NetorchError] = BackendError,
) -> NetorchError:
    """Map an SDK/transport error met while doing ``what`` to one clear netorch error.

    A NetorchError is returned as it is. ``plan`` fills in the subnet, gateway and image the
    messages name. ``fallback`` is the class of an API error no rule explains (image builds
    report theirs as ImageError).
    """
    if isinstance(e, NetorchError):
        return e
    expl = explanation(e)
    low = expl.lower()
    subnet = plan.network.subnet if plan else "the subnet"
    if isinstance(e, docker.errors.ImageNotFound):
        image = plan.runtime.image if plan else "the image"
        return ImageError(
            f"{what}: image {image} is not on the daemon; build it with `netorch image build` "
            "(netorch never pulls)"
        )
    if isinstance(e, docker.errors.APIError):
        status = e.status_code
        if 'could not select device driver' in low:
            return PreflightError(
                f"{what}: the daemon cannot hand out GPUs ({expl}); install the NVIDIA Container "
                "Toolkit (nvidia-ctk runtime configure --runtime=docker, restart dockerd) or set "
                "gpu.per_node = 0"
            )
        if status == 409 or "already exists" in low or "is already in use" in low:
            return NetworkConflictError(
                f"{what}: name already taken ({expl}); remove the leftover with `netorch down "
                "--run <id>` (or docker rm/network rm if it is yours) or change cluster.name / "
                "network.name"
            )
        if "pool overlaps" in low:
            return NetworkConflictError(
                f"{what}: subnet {subnet} overlaps an existing network ({expl}); choose a free "
                "subnet with --subnet or network.subnet"
            )
        if "address already in use" in low:
            return NetworkConflictError(
                f"{what}: a planned address is already taken on the network ({expl}); another "
                "container holds it; pick another subnet / ip_range"
            )
        if "failed to allocate gateway" in low:
            gw = plan.network.gateway if plan else "the gateway"
            return BackendError(
                f"{what}: the daemon could not allocate gateway {gw} in {subnet} ({expl}); set "
                "network.gateway to a free host address inside the subnet"
            )
        if "does not belong" in low or "invalid address" in low:
            return BackendError(
                f"{what}: a node address lies outside {subnet} ({expl}); fix network.subnet / "
                "network.ip_range so every node address is inside the subnet"
            )
        if isinstance(e, docker.errors.NotFound):
            return BackendError(f"{what}: not found ({expl}); was it removed meanwhile?")
        return fallback(f"{what}: the daemon answered {status}: {expl}")
    if isinstance(e, DOCKER_ERRORS):
        return DaemonUnavailableError(f"{what}: no Docker daemon answers ({expl}); {DAEMON_FIX}")
    return BackendError(f"{what}: {type(e).__name__}: {expl}")


@contextmanager
def docker_errors(
    what: str, plan: ClusterPlan | None = None, fallback: type[NetorchError] = BackendError
) -> Iterator[None]:
    """Turn SDK and transport errors raised in the block into netorch errors (``from`` the
    original), by :func:`translate_error`'s table; ``what`` says what the block was doing.

    NetorchErrors and errors of netorch's own code pass through unchanged.
    """
    try:
        yield
    except NetorchError:
        raise
    except DOCKER_ERRORS as e:
        raise translate_error(e, what, plan, fallback) from e
