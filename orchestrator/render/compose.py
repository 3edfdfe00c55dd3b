"""Render a :class:`~orchestrator.plan.ClusterPlan` as a ``docker-compose.yml``.

The file means what the plan means: the same network (name, subnet, gateway, ip_range, MTU,
bridge name, ``internal``), the same containers (names, hostnames, fixed IPs, aliases, env in
order, command, labels, shm, ipc, memlock, init, stop grace period, GPU reservations). Because
the labels are the plan's, ``netorch down --run <id>`` also cleans up what ``docker-compose up``
created. A user's job (``netorch render compose ... -- COMMAND``) keeps its image, working
directory and mounts: binds and named volumes in compose's long syntax (``type``, ``source``,
``target``, ``read_only``), which takes any path as it is, ``:`` included, where the short
``SRC:DST:ro`` string would split it.

Named volumes are declared ``external`` under their own name, as ``docker run -v name:/x`` would
use them: without ``external`` compose counts the volume as the project's and ``down -v`` deletes
it, the user's data with it. The price: compose does not create a missing volume (``docker run``
does), so ``up`` stops with compose's own "create the volume manually" message.

File format: ``version: "2.4"``. docker-compose 1.27+ (1.29 here) reads every 2.x and 3.x file with
one merged schema (the Compose Specification), so both would honour every key used here,
``deploy.resources.reservations.devices`` included. "2.4" is chosen because it says what the file
is: a single-host file. A 3.x file invites ``docker stack deploy``, which silently drops
``ipv4_address``, ``shm_size`` and ``ipc`` and rejects ipam gateway/ip_range and GPU devices.

Escaping, precisely. A plan may hold any string (settings validate theirs, but a plan can be
built by code), and the file must mean exactly that string:

* ``$``: compose interpolates every string *value* of ``services``, ``networks`` and ``volumes``
  (1.29: ``compose/config/interpolation.py`` ``recursive_interpolate``; v2's compose-go the same),
  never a mapping *key*. ``$$`` is its escape for a literal ``$``. So every string value the file
  holds is written with ``$`` doubled (image, container and host names, ipc, shm size, network
  name, subnet, bridge name, labels, env values, command, working dir, mount paths, GPU fields)
  and every key as it is (service names, network keys, env and label names): a doubled ``$`` in
  a key would reach Docker doubled.
* YAML: the body is written by PyYAML (quoting, ``\\n``-escapes, ``---``/``#``/``: `` inside
  values are all its job). Strings another reader would take for a number or bool (``0o17``,
  ``1e3``, ``y``: YAML 1.2 and Go's yaml, which compose v2 uses) are quoted too.
* Paths: compose rewrites a bind ``source`` starting with ``.`` or ``~`` against the file's
  directory or ``$HOME``; a bind source must therefore be absolute, or rendering fails.
* The header comment: every line starts with ``#``; plan values in it go through
  :func:`comment_text` (control, format and line-separator characters become ``\\n``-style
  escapes, so no value can end the comment), and values in the shell commands it shows are
  :func:`shlex.quote`-d.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml

# The option keys are the SDK backend's: one definition, so a rendered file and the docker backend
# ask the daemon for the same thing.
from orchestrator.backends.docker.kwargs import BRIDGE_NAME_OPTION, MTU_OPTION
from orchestrator.errors import PlanError
from orchestrator.plan import ClusterPlan, GpuSpec, MountSpec, NetworkSpec, NodeSpec
from orchestrator.render.text import RenderDumper, comment_block, comment_text

COMPOSE_FILE_NAME = "docker-compose.yml"
COMPOSE_VERSION = "2.4"


def compose_project(plan: ClusterPlan) -> str:
    """The compose project name the header recommends: ``netorch-<run_id>``.

    Passing ``-p`` keeps compose's project (its orphan detection, ``down --remove-orphans``)
    scoped to this run instead of to the directory name, which two rendered files may share.
    """
    return f"netorch-{plan.run_id}"


def service_name(plan: ClusterPlan, node: NodeSpec) -> str:
    """The compose service key of ``node``: its container's hostname (``master``, ``worker-1``,
    ...; the container name beside a management network, since compose makes the service key a
    DNS name on every network the service joins: see ClusterPlan.container_hostname)."""
    return plan.container_hostname(node)


def _esc(text: str) -> str:
    return text.replace("$", "$$")


def _escape_values(value: Any) -> Any:
    """``value`` with ``$`` doubled in every string value, keys left alone: the inverse of
    compose's interpolation, which reads values only."""
    if isinstance(value, str):
        return _esc(value)
    if isinstance(value, dict):
        return {k: _escape_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape_values(v) for v in value]
    return value


def _network(plan: ClusterPlan) -> dict[str, Any]:
    net = plan.network
    if net.driver != "bridge":
        raise PlanError(
            f"plan {plan.run_id} uses the {net.driver!r} network of the {plan.backend} backend; "
            "render a plan built for the docker backend"
        )
    return _network_doc(net)


def _network_doc(net: NetworkSpec) -> dict[str, Any]:
    """One network of the plan (the fabric, or the management network) as compose writes it."""
    ipam: dict[str, str] = {"subnet": net.subnet}
    if net.gateway is not None:
        ipam["gateway"] = net.gateway
    if net.ip_range is not None:
        ipam["ip_range"] = net.ip_range
    out: dict[str, Any] = {"name": net.name, "driver": net.driver}
    opts: dict[str, str] = {}
    if net.mtu is not None:
        opts[MTU_OPTION] = str(net.mtu)  # compose's schema wants option values as strings
    if net.bridge_name is not None:
        opts[BRIDGE_NAME_OPTION] = net.bridge_name
    if opts:
        out["driver_opts"] = opts
    out["internal"] = net.internal
    out["ipam"] = {"driver": "default", "config": [ipam]}
    out["labels"] = dict(net.labels)
    return out


def _gpu_devices(gpus: GpuSpec) -> list[dict[str, Any]]:
    device: dict[str, Any] = {"driver": gpus.driver}
    if gpus.device_ids:
        device["device_ids"] = list(gpus.device_ids)
    else:
        device["count"] = gpus.count
    device["capabilities"] = list(gpus.capabilities)
    return [device]


def _mount(mount: MountSpec) -> dict[str, Any]:
    """One mount in compose's long syntax (file format 2.3+; compose 1.29 reads it in 2.4)."""
    if mount.kind == "bind" and not mount.source.startswith("/"):
        raise PlanError(
            f"bind mount source {mount.source!r} (at {mount.target!r}) is not an absolute path; "
            "compose would resolve it against the file's directory or $HOME: give the host "
            "directory as an absolute path"
        )
    return {
        "type": mount.kind,
        "source": mount.source,
        "target": mount.target,
        "read_only": mount.read_only,
    }


def _volumes(plan: ClusterPlan) -> dict[str, Any]:
    """The top-level ``volumes:``: every named volume a node mounts, external, under its name."""
    names = dict.fromkeys(m.source for node in plan.nodes for m in node.mounts
                          if m.kind == "volume")
    return {name: {"name": name, "external": True} for name in names}


def _service(plan: ClusterPlan, node: NodeSpec) -> dict[str, Any]:
    rt = plan.runtime
    svc: dict[str, Any] = {
        "image": rt.image,
        "container_name": node.name,
        "hostname": plan.container_hostname(node),
        "init": rt.init,
        "shm_size": rt.shm_size,
    }
    if rt.ipc_mode is not None:
        svc["ipc"] = rt.ipc_mode
    if rt.memlock is not None:
        svc["ulimits"] = {"memlock": {"soft": rt.memlock, "hard": rt.memlock}}
    svc["stop_grace_period"] = f"{rt.stop_timeout_s}s"
    svc["restart"] = "no"  # a rank that dies must fail the run, not rejoin a broken group
    svc["environment"] = dict(node.env)
    if plan.workdir is not None:
        svc["working_dir"] = plan.workdir
    svc["command"] = list(node.command)
    svc["labels"] = dict(node.labels)
    svc["networks"] = {
        plan.network.name: {"ipv4_address": node.ip, "aliases": list(node.aliases)},
    }
    if plan.management is not None and node.management_ip is not None:
        svc["networks"][plan.management.name] = {"ipv4_address": node.management_ip}
    if node.mounts:
        svc["volumes"] = [_mount(m) for m in node.mounts]
    if node.gpus is not None:
        svc["deploy"] = {"resources": {"reservations": {"devices": _gpu_devices(node.gpus)}}}
    return svc


def render_compose(plan: ClusterPlan) -> dict[str, Any]:
    """Return the compose document equal in meaning to ``plan`` (a docker-backend plan).

    Pure: no I/O, same plan -> equal dict, keys in a fixed order. Services are keyed by the
    containers' hostname (``master``, ``worker-1``, ...; see :func:`service_name`) and keep the
    plan's container names; the network is keyed and named by the plan's network name. Named volumes the nodes mount are declared in a
    top-level ``volumes:`` (only when there are any) as external volumes of that exact name.
    String values come with ``$`` doubled (compose turns ``$$`` back into ``$``), keys as they
    are. Raises :class:`PlanError` for a process-backend plan, whose loopback "network" has no
    compose equivalent, and for a bind mount whose source is not an absolute path.
    """
    network = _network(plan)
    services = {service_name(plan, node): _service(plan, node) for node in plan.nodes}
    doc: dict[str, Any] = {
        "version": COMPOSE_VERSION,
        "services": services,
        "networks": {plan.network.name: network},
    }
    if plan.management is not None:
        doc["networks"][plan.management.name] = _network_doc(plan.management)
    volumes = _volumes(plan)
    if volumes:
        doc["volumes"] = volumes
    escaped: dict[str, Any] = _escape_values(doc)
    return escaped


def compose_header(plan: ClusterPlan, file_name: str = COMPOSE_FILE_NAME) -> str:
    """The comment block written above the YAML: origin and how to run and remove it.

    Every line starts with ``#`` whatever the plan holds (see :func:`comment_text`); values in
    the commands it shows are shell-quoted, so copying a command runs that command only.
    """
    q = shlex.quote
    run_id = q(plan.run_id)
    master = q(service_name(plan, plan.master))
    compose = f"docker-compose -p {q(compose_project(plan))} -f {q(file_name)}"
    flags = "[config flags]" if plan.emits_result else "[config and run flags] -- COMMAND"
    if plan.emits_result:
        run_note = ("Run (the master's exit code is the run's; rank 0 prints one "
                    "@@NETORCH_RESULT@@ line):")
        logs = f"  {compose} logs --no-color {master} | grep @@NETORCH_RESULT@@"
    else:
        run_note = "Run (the master's exit code is the run's; the job's output is in the logs):"
        logs = f"  {compose} logs --no-color {master}"
    lines = [
        f"Generated by netorch from run id {plan.run_id}: do not edit, regenerate instead with",
        f"  netorch render compose --run-id {run_id} -o DIR {flags}",
        f"{plan.nnodes} nodes x {plan.nproc_per_node} ranks (world size {plan.world_size}), "
        f"dist backend {plan.dist_backend}, image {plan.runtime.image}.",
        "",
        run_note,
        f"  {compose} up -d",
        f"  docker wait {q(plan.master.name)}   (prints the master's exit code when it ends)",
        logs,
        "(Not `up --abort-on-container-exit`: it stops every node as soon as any one exits, also a",
        "worker that finished a moment before the master, whose exit code then reads 143.)",
        "Remove:",
        f"  {compose} down -v   (or: netorch down --run {run_id})",
        "",
        "Container and network names are the plan's; run one copy of this file at a time.",
        "No depends_on: torchrun's c10d rendezvous makes every node wait for the master's store",
        "(and for all nodes to join), so start order does not matter.",
    ]
    binds = list(dict.fromkeys(m.source for node in plan.nodes for m in node.mounts
                               if m.kind == "bind"))
    if binds:
        lines.append("Bind mounts are this host's paths: " + ", ".join(binds) + ".")
    volumes = list(_volumes(plan))
    if volumes:
        lines.append("Named volumes are external (down -v keeps them): create a missing one with")
        lines.extend(f"  docker volume create {q(name)}" for name in volumes)
    if plan.network.shaped:
        lines += ["[network.link] is not in this file: netorch shapes links with tc in each",
                  "container after it starts (netorch bench/run on the docker backend)."]
    return comment_block(lines)


def dump_compose(plan: ClusterPlan) -> str:
    """The full text of the compose file for ``plan``: header comment, then YAML."""
    body = yaml.dump(
        render_compose(plan), Dumper=RenderDumper, sort_keys=False, default_flow_style=False,
        width=4096,
    )
    return compose_header(plan) + body


def write_compose(plan: ClusterPlan, out_dir: Path) -> Path:
    """Write ``out_dir/docker-compose.yml`` for ``plan`` (creating ``out_dir``); return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / COMPOSE_FILE_NAME
    path.write_text(dump_compose(plan), encoding="utf-8")
    return path


__all__ = [
    "COMPOSE_FILE_NAME",
    "COMPOSE_VERSION",
    "BRIDGE_NAME_OPTION",
    "MTU_OPTION",
    "RenderDumper",
    "comment_block",
    "comment_text",
    "compose_header",
    "compose_project",
    "dump_compose",
    "render_compose",
    "service_name",
    "write_compose",
]
