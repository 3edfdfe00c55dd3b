"""Docker backend: every node is a container on one network with fixed addresses.

By concern:

- :mod:`.client`  -- :func:`connect` (the one place a Docker client is made), ``concurrently``,
  ``retry``, ``exec_checked``;
- :mod:`.errors`  -- :func:`docker_errors`, the one table from SDK errors to netorch errors;
- :mod:`.kwargs`  -- plan -> SDK create arguments (pure, unit-tested field by field);
- :mod:`.nodes`   -- start containers, follow their logs and exits, the start gate, tc;
- :mod:`.backend` -- :class:`DockerBackend` (preflight, up, stop, down, inspect) and label teardown.

The names below are the package's public surface; import them from here.
"""

from __future__ import annotations

from orchestrator.backends.docker.backend import (
    PROC_NET_ROUTE,
    DockerBackend,
    down_all,
    free_subnet_hint,
    host_routes,
    remove_by_label,
)
from orchestrator.backends.docker.client import (
    MAX_POOL_SIZE,
    DockerClient,
    concurrently,
    connect,
    connect_host,
    connect_settings,
    exec_checked,
    is_local,
    retry,
)
from orchestrator.backends.docker.errors import (
    DAEMON_FIX,
    DOCKER_ERRORS,
    TRANSPORT_ERRORS,
    docker_errors,
    explanation,
    translate_error,
)
from orchestrator.backends.docker.kwargs import (
    BRIDGE_NAME_OPTION,
    GATE_FILE,
    GATE_TIMEOUT_S,
    MTU_OPTION,
    container_create_kwargs,
    device_requests,
    gate_command,
    network_create_kwargs,
    run_filters,
)
from orchestrator.backends.docker.nodes import (
    DockerNode,
    LineSplitter,
    SetupHook,
    apply_link,
    follow_nodes,
    open_start_gates,
    parse_docker_time,
    start_containers,
)

__all__ = [
    "BRIDGE_NAME_OPTION",
    "DAEMON_FIX",
    "DOCKER_ERRORS",
    "GATE_FILE",
    "GATE_TIMEOUT_S",
    "MAX_POOL_SIZE",
    "MTU_OPTION",
    "PROC_NET_ROUTE",
    "TRANSPORT_ERRORS",
    "DockerBackend",
    "DockerClient",
    "DockerNode",
    "LineSplitter",
    "SetupHook",
    "apply_link",
    "concurrently",
    "connect",
    "connect_host",
    "connect_settings",
    "container_create_kwargs",
    "device_requests",
    "docker_errors",
    "down_all",
    "exec_checked",
    "explanation",
    "follow_nodes",
    "free_subnet_hint",
    "gate_command",
    "host_routes",
    "is_local",
    "network_create_kwargs",
    "open_start_gates",
    "parse_docker_time",
    "remove_by_label",
    "retry",
    "run_filters",
    "start_containers",
    "translate_error",
]
