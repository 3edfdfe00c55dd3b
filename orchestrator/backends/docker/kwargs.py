"""Plan -> Docker SDK arguments: pure functions, checked field by field without a daemon.

``network_create_kwargs`` and ``container_create_kwargs`` are the whole contract between a plan
and ``client.networks.create`` / ``client.containers.create``; the compose renderer shares the
option keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import docker.types

from orchestrator.plan import (
    LABEL_MANAGED,
    LABEL_RUN,
    ClusterPlan,
    GpuSpec,
    NetworkSpec,
    NodeSpec,
    RuntimeSpec,
)

MTU_OPTION = "com.docker.network.driver.mtu"
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"

# Who the workload runs as when netorch itself runs as root (CI) and docker.user is unset: not
# root, so a compromised or careless job is not root in its container, and what it writes into
# bind mounts is not root's on the host.
FALLBACK_USER = "1000:1000"
ROOT_USER = "0:0"
# HOME for a uid the image's /etc/passwd does not know (Docker then sets HOME=/, unwritable):
# pip, torch (~/.cache/torch), matplotlib and friends write below it.
NON_ROOT_HOME = "/tmp"
# Container paths netorch mounts its own host folders at (checkpoints, a warm cluster's folder).
NETORCH_MOUNT_ROOT = "/netorch/"


def container_user(
    setting: str | None, uid: int | None = None, gid: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The ``uid:gid`` every container runs as, from ``docker.user``.

    ``"root"`` -> ``0:0``; a ``uid:gid`` as given; unset -> the invoking user's ids (``uid``,
    ``gid`` default to this process's), so files the job writes into bind mounts belong to
    whoever ran netorch. Under ``sudo`` that is SUDO_UID:SUDO_GID; when it is root itself,
    :data:`FALLBACK_USER`.
    """
    if setting == "root":
        return ROOT_USER
    if setting:
        return setting
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    env = os.environ if environ is None else environ
    if uid == 0:
        sudo_uid, sudo_gid = env.get("SUDO_UID", ""), env.get("SUDO_GID", "")
        if sudo_uid.isdigit() and sudo_gid.isdigit() and sudo_uid != "0":
            return f"{sudo_uid}:{sudo_gid}"
        return FALLBACK_USER
    return f"{uid}:{gid}"


def user_ids(user: str) -> tuple[int, int]:
    """``(uid, gid)`` of a ``uid:gid`` string."""
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def netorch_mount_sources(node: NodeSpec) -> tuple[str, ...]:
    """Host directories of ``node``'s writable bind mounts that netorch made for it: its
    checkpoint directory (``NETORCH_CHECKPOINT_DIR``) and anything mounted under
    :data:`NETORCH_MOUNT_ROOT`. A user's own ``--mount`` is never among them."""
    checkpoint_dir = node.env_dict.get("NETORCH_CHECKPOINT_DIR")
    return tuple(
        m.source for m in node.mounts
        if m.kind == "bind" and not m.read_only
        and (m.target == checkpoint_dir or m.target.startswith(NETORCH_MOUNT_ROOT))
    )


# The start gate (plan.runtime.start_gate): the container's command waits for this file, which
# the backend creates (docker exec) once its set-up phase -- tc, probes -- has run in every node.
GATE_FILE = "/tmp/.netorch-go"
# A gate nobody opens (the host side died) must not leave a container waiting forever.
GATE_TIMEOUT_S = 900


# The gate's exit status when the image cannot drop the set-up capabilities (like a shell's 126,
# "found but cannot run"): the workload never starts with NET_ADMIN.
GATE_NO_SETPRIV_EXIT = 126


def gate_command(runtime: RuntimeSpec, command: tuple[str, ...]) -> list[str]:
    """``command`` behind the start gate: wait for :data:`GATE_FILE`, then exec it.

    Capabilities in ``runtime.cap_add`` (NET_ADMIN for tc) stay in the *container's* bounding set
    for its whole life -- Docker has no way to grant them to ``docker exec`` alone (a privileged
    exec fails with "unable to apply caps" on engine 20.10) -- so the gate removes them from the
    workload's bounding set with setpriv: torchrun and every rank run without them, while the
    set-up execs (which get the container's set) still have them. ``--no-new-privs`` covers a
    non-root workload too, whose bounding set setpriv cannot shrink: it holds no capability and
    can no longer gain one through a setuid or file-capability binary.

    An image without ``setpriv`` cannot do that, so the gate refuses to start the workload
    (exit :data:`GATE_NO_SETPRIV_EXIT`, a message naming the fix) rather than run it with
    NET_ADMIN.
    """
    drop = ",".join(f"-{cap.lower()}" for cap in runtime.cap_add)
    limit = GATE_TIMEOUT_S * 10
    script = (
        f'i=0; while [ ! -e {GATE_FILE} ]; do i=$((i+1)); '
        f'if [ "$i" -gt {limit} ]; then echo "netorch: the start gate never opened" >&2; '
        'exit 125; fi; sleep 0.1; done; '
    )
    if drop:
        kept = drop.replace("-", "").upper()
        script += (
            'if ! command -v setpriv >/dev/null; then echo "netorch: the image has no setpriv, '
            f'so the workload would keep {kept} (granted for link emulation); install util-linux '
            'in the image, or drop network.link" >&2; '
            f'exit {GATE_NO_SETPRIV_EXIT}; fi; '
            f'exec setpriv --no-new-privs --bounding-set {drop} --inh-caps {drop} -- "$@"'
        )
    else:
        script += 'exec "$@"'
    return ["sh", "-c", script, "netorch-gate", *command]


def run_filters(run_id: str | None) -> dict[str, list[str]]:
    """SDK list filters selecting netorch's own resources (of one run, or of every run)."""
    labels = [f"{LABEL_MANAGED}=true"]
    if run_id is not None:
        labels.append(f"{LABEL_RUN}={run_id}")
    return {"label": labels}


def network_create_kwargs(plan: ClusterPlan) -> dict[str, Any]:
    """Keyword arguments of ``client.networks.create`` for the plan's network."""
    return network_spec_kwargs(plan.network)


def network_spec_kwargs(net: NetworkSpec) -> dict[str, Any]:
    """Keyword arguments of ``client.networks.create`` for one network of a plan (the fabric,
    or the management network)."""
    options: dict[str, str] = {}
    if net.mtu is not None:
        options[MTU_OPTION] = str(net.mtu)
    if net.bridge_name:
        options[BRIDGE_NAME_OPTION] = net.bridge_name
    pool = docker.types.IPAMPool(subnet=net.subnet, gateway=net.gateway, iprange=net.ip_range)
    extra: dict[str, Any] = {}
    if net.driver == "overlay":
        # Attachable: standalone containers (fixed IPs, GPUs) may join, which services cannot.
        extra["attachable"] = True
    return {
        **extra,
        "name": net.name,
        "driver": net.driver,
        "ipam": docker.types.IPAMConfig(driver="default", pool_configs=[pool]),
        "options": options,
        "internal": net.internal,
        "labels": dict(net.labels),
        # Without it engine 20.10 lets two networks share a name, and a later start fails with
        # "network ... not found".
        "check_duplicate": True,
    }


def device_requests(gpus: GpuSpec | None) -> list[docker.types.DeviceRequest]:
    """The ``--gpus`` equivalent of a node's reservation (empty for a CPU node)."""
    if gpus is None:
        return []
    request: dict[str, Any] = {
        "driver": gpus.driver,
        # One capability set, all of whose entries must hold (docker's AND semantics).
        "capabilities": [list(gpus.capabilities)],
    }
    if gpus.device_ids:
        request["device_ids"] = list(gpus.device_ids)
    else:
        request["count"] = gpus.count
    return [docker.types.DeviceRequest(**request)]


def container_create_kwargs(
    plan: ClusterPlan, node: NodeSpec, network_id: str, api_version: str,
    user: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments of ``client.containers.create`` for one node.

    ``network_id`` is both the ``network=`` value and the ``networking_config`` key: the SDK
    silently drops the fixed IP when the two differ. ``user`` is the ``docker.user`` setting
    (see :func:`container_user`: unset runs the node as the invoking user, never as root unless
    asked); a non-root node gets ``HOME`` = :data:`NON_ROOT_HOME` unless its env sets one.
    """
    rt = plan.runtime
    run_as = container_user(user)
    environment = node.env_dict
    if run_as != ROOT_USER and "HOME" not in environment:
        environment = {**environment, "HOME": NON_ROOT_HOME}
    endpoint = docker.types.EndpointConfig(
        api_version, aliases=list(node.aliases), ipv4_address=node.ip
    )
    command = gate_command(rt, node.command) if rt.start_gate else list(node.command)
    kwargs: dict[str, Any] = {
        "image": rt.image,
        "command": command,
        "name": node.name,
        "hostname": plan.container_hostname(node),
        "environment": environment,
        "user": run_as,
        "labels": node.labels_dict,
        # tini as PID 1 forwards SIGTERM; a PID-1 python ignores it and every stop takes the grace.
        "init": rt.init,
        "shm_size": rt.shm_size,
        "network": network_id,
        "networking_config": {network_id: endpoint},
        "stop_signal": "SIGTERM",
        "detach": True,
    }
    if rt.ipc_mode:
        kwargs["ipc_mode"] = rt.ipc_mode
    if rt.cap_add:
        kwargs["cap_add"] = list(rt.cap_add)
    if rt.memory is not None:
        # Swap limit equal to the memory limit: past it the node is OOM-killed (and named so),
        # instead of swapping slowly enough to look like a hang.
        kwargs["mem_limit"] = rt.memory
        kwargs["memswap_limit"] = rt.memory
    if rt.memlock is not None:
        # Only when asked: the daemon's hard cap may be low (8 MiB here), and -1 then fails at start.
        kwargs["ulimits"] = [docker.types.Ulimit(name="memlock", soft=rt.memlock, hard=rt.memlock)]
    if node.mounts:
        # Mount objects, not the ``volumes`` dict: that one is keyed by source, so one host
        # directory could not appear at two targets, and it cannot say bind vs named volume.
        kwargs["mounts"] = [
            docker.types.Mount(target=m.target, source=m.source, type=m.kind,
                               read_only=m.read_only)
            for m in node.mounts
        ]
    if plan.workdir is not None:
        kwargs["working_dir"] = plan.workdir
    requests_ = device_requests(node.gpus)
    if requests_:
        kwargs["device_requests"] = requests_
    return kwargs
