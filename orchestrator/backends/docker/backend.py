"""The single-host Docker backend: one labelled bridge network, one labelled container per node.

Talks to the daemon through the Docker SDK only. Everything it creates carries the run's labels
(``io.netorch.run=<run_id>``, ``io.netorch.managed=true``) and is found again *by label*, never by
name, so teardown cannot touch a user's own containers or networks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import docker.errors

from orchestrator.backends.base import LineSink, NodeHandle
from orchestrator.backends.docker.client import (
    concurrently,
    connect_settings,
    is_local,
    retry,
)
from orchestrator.backends.docker.errors import (
    DOCKER_ERRORS,
    TRANSPORT_ERRORS,
    docker_errors,
    explanation,
    translate_error,
)
from orchestrator.backends.docker.kwargs import (
    network_create_kwargs,
    network_spec_kwargs,
    run_filters,
)
from orchestrator.backends.docker.nodes import (
    DockerNode,
    SetupHook,
    follow_nodes,
    start_containers,
)
from orchestrator.errors import (
    BackendError,
    DaemonUnavailableError,
    NetworkConflictError,
    PreflightError,
)
from orchestrator.plan import LABEL_MANAGED, LABEL_RUN, BackendName, ClusterPlan
from orchestrator.settings import Settings

PROC_NET_ROUTE = Path("/proc/net/route")
SYS_CLASS_NET = Path("/sys/class/net")


def host_routes(route_table: Path = PROC_NET_ROUTE) -> list[tuple[str, ipaddress.IPv4Network]]:
    """``(interface, destination)`` of every IPv4 route in ``route_table`` but the default."""
    try:
        lines = route_table.read_text().splitlines()
    except OSError:
        return []
    routes = []
    for line in lines[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            # /proc/net/route prints addresses as host-order (little-endian) hex.
            dest = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
            mask = ipaddress.IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
            net = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
        except ValueError:
            continue
        if net.prefixlen == 0:
            continue
        routes.append((fields[0], net))
    return routes


def free_subnet_hint(
    taken: Iterable[ipaddress.IPv4Network], prefixlen: int, plan_subnet: str
) -> str | None:
    """A private subnet of ``prefixlen`` that overlaps nothing in ``taken`` (for error messages)."""
    taken = list(taken)
    wanted = ipaddress.IPv4Network(plan_subnet)
    for parent in ("172.16.0.0/12", "10.0.0.0/8", "192.168.0.0/16"):
        space = ipaddress.IPv4Network(parent)
        if prefixlen < space.prefixlen:
            continue
        for i, cand in enumerate(space.subnets(new_prefix=prefixlen)):
            if i > 4096:
                break
            if cand != wanted and not any(cand.overlaps(t) for t in taken):
                return str(cand)
    return None


# How long a create that lost a subnet race waits for the winner's network to be listed.
RACE_LIST_S = 3.0


class _UnlistedBridge(NetworkConflictError):
    """A subnet clash with the route of a Docker bridge (``br-<id>``): maybe a network another
    run is creating, which the daemon does not list yet."""


class DockerBackend:
    """Applies a plan as one labelled bridge network plus one labelled container per node.

    ``after_start`` runs in the set-up phase of a gated plan (``plan.runtime.start_gate``): every
    container is up, link emulation is in place, the workload has not started. The sweep probes
    path MTU and TCP line rate there.
    """

    name: BackendName = "docker"

    def __init__(
        self, client: Any, route_table: Path = PROC_NET_ROUTE,
        after_start: SetupHook | None = None, user: str | None = None,
    ) -> None:
        self.client = client
        self.route_table = route_table
        self.after_start = after_start
        # docker.user: who the workload runs as (None: the invoking user, see container_user).
        self.user = user
        self._nodes: list[DockerNode] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> DockerBackend:
        """Connect to the configured daemon; DaemonUnavailableError with the fix if none answers."""
        return cls(connect_settings(settings), user=settings.docker.user)

    # -- preflight -------------------------------------------------------------------------

    def preflight(self, plan: ClusterPlan) -> None:
        """Every check that can fail before anything exists: daemon, image, GPUs, clashes."""
        with docker_errors("checking the Docker daemon", plan):
            self.client.ping()
            info = self.client.info()
            image = self.client.images.get(plan.runtime.image)
        self._check_gpus(plan, info)
        check_image_runtime(self.client, plan, image)
        self._check_networks(plan)
        with docker_errors("listing containers", plan):
            containers = self.client.api.containers(all=True)
        self._check_names(plan, containers)

    def _check_networks(self, plan: ClusterPlan) -> None:
        """The plan's networks against the daemon's and the host's routes.

        Routes before networks: a network another run creates in between then shows in the
        list. The daemon routes a new network's bridge (``br-<id>``) a moment before it lists
        the network, so a clash with such a route alone is looked at again, up to RACE_LIST_S,
        until the other run's network is listed and can be named.
        """
        deadline = time.monotonic() + RACE_LIST_S
        while True:
            routes = host_routes(self.route_table) if is_local(self.client) else []
            with docker_errors("listing networks", plan):
                networks = self.client.api.networks()
            try:
                self._check_network(plan, networks, routes)
                if plan.management is not None:
                    self._check_network(dataclasses.replace(plan, network=plan.management),
                                        networks, routes)
                return
            except _UnlistedBridge:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def _check_gpus(self, plan: ClusterPlan, info: dict[str, Any]) -> None:
        gpu_nodes = [n for n in plan.nodes if n.gpus is not None]
        if not gpu_nodes:
            return
        runtimes = sorted((info.get("Runtimes") or {}).keys())
        drivers = {n.gpus.driver for n in gpu_nodes if n.gpus is not None}
        if "nvidia" in drivers and "nvidia" not in runtimes:
            raise PreflightError(
                f"the plan reserves GPUs on {len(gpu_nodes)} node(s) but the Docker daemon has no "
                f"nvidia runtime (runtimes: {', '.join(runtimes) or 'none'}); install the NVIDIA "
                "Container Toolkit and run `nvidia-ctk runtime configure --runtime=docker` then "
                "restart dockerd, or set gpu.per_node = 0 for a CPU run"
            )

    def _check_network(
        self, plan: ClusterPlan, networks: list[dict[str, Any]],
        routes: list[tuple[str, ipaddress.IPv4Network]],
    ) -> None:
        net = plan.network
        wanted = ipaddress.IPv4Network(net.subnet)
        taken: list[ipaddress.IPv4Network] = []
        clash: tuple[str, ipaddress.IPv4Network] | None = None
        for other in networks:
            if other.get("Name") == net.name:
                raise NetworkConflictError(
                    f"network name {net.name!r} is already taken (id {str(other.get('Id'))[:12]}); "
                    "remove it (`netorch down --run <id>` if netorch made it) or set network.name"
                )
            for cfg in (other.get("IPAM") or {}).get("Config") or []:
                try:
                    sub = ipaddress.ip_network(cfg.get("Subnet", ""), strict=False)
                except ValueError:
                    continue
                if not isinstance(sub, ipaddress.IPv4Network):
                    continue
                taken.append(sub)
                if clash is None and sub.overlaps(wanted):
                    clash = (str(other.get("Name")), sub)
        taken.extend(r for _, r in routes)
        if clash is not None:
            hint = free_subnet_hint(taken, wanted.prefixlen, net.subnet)
            raise NetworkConflictError(
                f"subnet {net.subnet} overlaps Docker network {clash[0]!r} ({clash[1]}); "
                + (f"use a free subnet, e.g. --subnet {hint}" if hint else "choose a free subnet")
            )
        for iface, route in routes:
            if route.overlaps(wanted):
                hint = free_subnet_hint(taken, wanted.prefixlen, net.subnet)
                raise (_UnlistedBridge if iface.startswith("br-") else NetworkConflictError)(
                    f"subnet {net.subnet} overlaps the host route {route} on {iface}; containers "
                    "could not reach those hosts and the bridge would shadow them; "
                    + (f"use a free subnet, e.g. --subnet {hint}" if hint else "choose a free subnet")
                )
        if net.bridge_name and is_local(self.client) and (SYS_CLASS_NET / net.bridge_name).exists():
            raise NetworkConflictError(
                f"network.bridge_name {net.bridge_name!r} is already a host interface; pick another "
                "name or leave it unset"
            )

    def _check_names(self, plan: ClusterPlan, containers: list[dict[str, Any]]) -> None:
        existing = {name.lstrip("/") for c in containers for name in c.get("Names") or []}
        taken = [n.name for n in plan.nodes if n.name in existing]
        if taken:
            raise NetworkConflictError(
                f"container name(s) already taken: {', '.join(taken)}; remove them "
                "(`netorch down --run <id>` if netorch made them) or change cluster.name"
            )

    # -- up --------------------------------------------------------------------------------

    def up(self, plan: ClusterPlan, sink: LineSink) -> list[NodeHandle]:
        """Create the network, create every container concurrently, then start them."""
        network = self._create_network(plan)
        management = None
        if plan.management is not None:
            with docker_errors(f"creating network {plan.management.name}", plan):
                management = self.client.networks.create(**network_spec_kwargs(plan.management))
        containers = start_containers(plan, network.id, lambda node: self.client, lambda n: n.name,
                                      self.user, management.id if management else None)
        nodes = follow_nodes(plan, containers, sink, self.after_start)
        self._nodes.extend(nodes)
        return list(nodes)

    def _create_network(self, plan: ClusterPlan) -> Any:
        what = f"creating network {plan.network.name}"
        try:
            with docker_errors(what, plan):
                return self.client.networks.create(**network_create_kwargs(plan))
        except NetworkConflictError as e:
            if not isinstance(e.__cause__, docker.errors.APIError) or \
                    "pool overlaps" not in explanation(e.__cause__).lower():
                raise
            # Another run took the subnet between our preflight and this create (two runs started
            # at once): say which network holds it and name a free subnet, as preflight would.
            # The daemon reserves the pool before the other network is listed, so look again
            # for a moment until it shows.
            deadline = time.monotonic() + RACE_LIST_S
            while True:
                self._check_networks(plan)
                if time.monotonic() > deadline:
                    raise  # the clashing network is gone again: the daemon's words stand
                time.sleep(0.1)

    # -- stop / down -----------------------------------------------------------------------

    def _list_containers(self, run_id: str, running_only: bool = False) -> list[Any]:
        filters: dict[str, Any] = run_filters(run_id)
        if running_only:
            filters["status"] = "running"
        # ignore_removed: list() inspects each hit, and a concurrent down may remove one meanwhile.
        return list(self.client.containers.list(
            all=not running_only, filters=filters, ignore_removed=True
        ))

    def stop(self, plan: ClusterPlan, grace_s: float) -> None:
        """SIGTERM every running container of the run, SIGKILL after ``grace_s``, concurrently.

        Errors are not raised: stop runs on the failure path, and down() force-removes anyway.
        """
        try:
            running = self._list_containers(plan.run_id, running_only=True)
        except DOCKER_ERRORS:
            return
        timeout = max(0, int(grace_s + 0.999))

        def stop_one(container: Any) -> None:
            try:
                container.stop(timeout=timeout)
            except DOCKER_ERRORS:
                pass  # already gone, or stopping anyway

        concurrently(stop_one, running)

    def down(self, plan: ClusterPlan) -> None:
        """Force-remove the run's containers, then its network, found by label. Idempotent.

        When the daemon stopped answering (restarted, crashed), DaemonUnavailableError names
        it and the ``netorch down --run`` that removes the leftovers once it is back."""
        try:
            remove_by_label(self.client, plan.run_id)
        except (DaemonUnavailableError, BackendError) as e:
            # A daemon shutting down still serves open connections for a moment: a ping may
            # answer while new requests fail. A transport failure itself is the proof.
            if isinstance(e, BackendError) and daemon_answers(self.client):
                raise
            raise DaemonUnavailableError(
                f"the Docker daemon at {daemon_address(self.client)} stopped answering during "
                f"run {plan.run_id}, so the run is lost and its containers and network may be "
                f"left there; once the daemon is back, remove them with `netorch down --run "
                f"{plan.run_id}` (same docker.host)"
            ) from None
        finally:
            # Removal ends every log stream and wait; give the threads a moment to notice.
            deadline = time.monotonic() + 2.0
            for dn in self._nodes:
                dn.join(timeout=max(0.0, deadline - time.monotonic()))
            self._nodes = []  # a gang restart brings the same plan up again on this backend

    # -- inspection helpers (tests, doctor) ------------------------------------------------

    def inspect(self, plan: ClusterPlan) -> dict[str, Any]:
        """The daemon's view of the run: network attrs and each container's attrs, by node name."""
        nets = self.client.networks.list(filters=run_filters(plan.run_id))
        return {
            "network": nets[0].attrs if nets else None,
            "containers": {c.name: c.attrs for c in self._list_containers(plan.run_id)},
        }


def daemon_address(client: Any) -> str:
    """Where ``client``'s daemon is, for messages: ``unix:///path`` for a socket (the SDK's
    base URL then says only ``http+docker://localhost``), else the base URL."""
    adapter = getattr(client.api, "_custom_adapter", None)
    socket_path = getattr(adapter, "socket_path", None)
    return f"unix://{socket_path}" if socket_path else str(client.api.base_url)


def daemon_answers(client: Any) -> bool:
    """True when the daemon answers a ping now."""
    try:
        client.ping()
    except DOCKER_ERRORS:
        return False
    return True


def _still_attached(e: BaseException) -> bool:
    """Network removal races the endpoint detach of just-removed containers; that is transient."""
    if isinstance(e, docker.errors.NotFound):
        return False
    if isinstance(e, docker.errors.APIError):
        low = explanation(e).lower()
        return "active endpoints" in low or "in progress" in low or e.status_code in (409, 500)
    return isinstance(e, TRANSPORT_ERRORS)


def _remove_container(container: Any) -> None:
    try:
        retry(
            lambda: container.remove(force=True, v=True),
            retry_on=lambda e: isinstance(e, docker.errors.APIError)
            and not isinstance(e, docker.errors.NotFound)
            and "in progress" in explanation(e).lower(),
            seconds=10,
        )
    except docker.errors.NotFound:
        pass  # removed meanwhile: that is the goal


def remove_by_label(
    client: Any, run_id: str | None, with_networks: bool = True
) -> list[str]:
    """Force-remove netorch's containers, then networks, of one run (``None``: of every run).

    Only resources labelled ``io.netorch.managed=true`` (and the run id) are touched. Returns
    ``"container NAME"`` / ``"network NAME"`` for each thing removed; raises BackendError naming
    what could not be removed. ``with_networks=False`` leaves networks alone (a swarm worker, whose
    overlay only the manager may remove).
    """
    filters = run_filters(run_id)
    what = f"run {run_id}" if run_id else "every netorch run"
    with docker_errors(f"listing containers of {what}"):
        # ignore_removed: list() inspects each hit, and a concurrent down may remove one meanwhile.
        containers = list(client.containers.list(all=True, filters=filters, ignore_removed=True))
    failures = concurrently(_remove_container, containers)
    removed = [f"container {c.name}" for c in containers if c not in {f[0] for f in failures}]
    with docker_errors(f"listing networks of {what}"):
        networks = list(client.networks.list(filters=filters)) if with_networks else []
    net_failures: list[tuple[Any, BaseException]] = []
    for net in networks:
        try:
            retry(net.remove, retry_on=_still_attached, seconds=10)
            removed.append(f"network {net.name}")
        except docker.errors.NotFound:
            removed.append(f"network {net.name}")
        except DOCKER_ERRORS as e:
            net_failures.append((net, e))
    if failures or net_failures:
        left = [f"container {c.name}: {explanation(e)}" for c, e in failures]
        left += [f"network {n.name}: {explanation(e)}" for n, e in net_failures]
        raise BackendError(
            f"could not remove everything of {what}: " + "; ".join(left)
            + f"; retry with `netorch down {'--run ' + run_id if run_id else '--all'}`"
        )
    return removed


def down_all(client: Any, run_id: str | None) -> list[str]:
    """``netorch down``: remove netorch-managed resources of ``run_id``, or of every run (None)."""
    return remove_by_label(client, run_id)


# What a node's image must hold, checked in a throw-away container (no network, removed after):
# the launcher's interpreter, torch, and netorch's in-node launcher when the plan uses it.
_RUNTIME_CHECK = (
    "import importlib.util as u, shutil\n"
    "def has(name):\n"
    "    try:\n"
    "        return u.find_spec(name) is not None\n"
    "    except ImportError:\n"
    "        return False\n"
    "missing = [n for n in ('torch', 'train.launch') if not has(n)]\n"
    "missing += [] if shutil.which('torchrun') else ['torchrun']\n"
    "print('NETORCH_MISSING=' + ','.join(missing))\n"
)


def check_image_runtime(client: Any, plan: ClusterPlan, image: Any) -> None:
    """Refuse, before anything exists, an image that cannot run the plan's launcher.

    Images netorch built (and images built FROM them, which inherit the label) are trusted. Any
    other image -- a user's own for ``netorch run --image`` -- is asked in a throw-away container
    whether ``python`` runs and has torch (and ``train.launch`` for the netorch launcher, or
    ``torchrun`` for torchrun's). Nothing is pulled.
    """
    from orchestrator.image import LABEL_INPUTS_HASH

    labels = (image.attrs.get("Config") or {}).get("Labels") or {}
    if LABEL_INPUTS_HASH in labels:
        return
    name = plan.runtime.image
    launcher = plan.master.command[0]
    interpreter = "python" if launcher == "python" else "python3"
    labels = {LABEL_MANAGED: "true", LABEL_RUN: plan.run_id}
    try:
        output = client.containers.run(
            name, [interpreter, "-c", _RUNTIME_CHECK], remove=True, network_disabled=True,
            stdout=True, stderr=True, labels=labels,
        )
    except docker.errors.ContainerError as e:
        raise PreflightError(
            f"image {name}: `{interpreter}` did not run in it (exit {e.exit_status}); netorch "
            "runs jobs with the image's Python: use an image with Python and torch (e.g. one "
            "built FROM netorch:latest)"
        ) from None
    except docker.errors.APIError as e:
        if "executable file not found" in explanation(e) or "no such file" in explanation(e):
            raise PreflightError(
                f"image {name} has no `{interpreter}` on its PATH; use an image with Python and "
                "torch (e.g. one built FROM netorch:latest)"
            ) from None
        raise translate_error(e, f"checking image {name}", plan) from e
    finally:
        # ``run(remove=True)`` leaves a container whose start failed in "created": remove it.
        with contextlib.suppress(*DOCKER_ERRORS):
            for leftover in client.containers.list(
                    all=True, filters={"label": [f"{k}={v}" for k, v in labels.items()]}):
                leftover.remove(force=True)
    text = output.decode("utf-8", "replace") if isinstance(output, bytes) else str(output)
    line = next((x for x in text.splitlines() if x.startswith("NETORCH_MISSING=")), None)
    if line is None:
        raise PreflightError(f"image {name}: the runtime check printed nothing usable: "
                             f"{text.strip()[-200:]!r}")
    missing = {m for m in line.split("=", 1)[1].split(",") if m}
    if "torch" in missing:
        raise PreflightError(
            f"image {name} has no torch (`import torch` fails in its {interpreter}); install "
            "torch in the image, or build it FROM netorch:latest"
        )
    if launcher == "python" and "train.launch" in missing:
        raise PreflightError(
            f"image {name} lacks netorch's in-node launcher (train.launch); build it FROM "
            "netorch:latest, or run with --set cluster.launcher=torchrun"
        )
    if launcher == "torchrun" and "torchrun" in missing:
        raise PreflightError(f"image {name} has torch but no `torchrun` on its PATH; put it there "
                             "or use the netorch launcher (cluster.launcher = netorch)")
