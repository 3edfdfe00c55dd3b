"""Several Docker hosts: standalone containers on one attachable swarm overlay.

Swarm *services* cannot have fixed IPs or GPUs, so netorch does not use them: the swarm only
provides the overlay. The manager (``plan.hosts[0]``) creates the attachable overlay with the
planned subnet, gateway and MTU; every node's container is created through its own host's daemon
with its fixed IP on that overlay, exactly as the single-host backend does on a bridge. Fail-fast,
diagnosis and label teardown are the same, run on every host.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from orchestrator.backends.base import LineSink, NodeHandle
from orchestrator.backends.docker import (
    DOCKER_ERRORS,
    DockerBackend,
    DockerNode,
    SetupHook,
    concurrently,
    connect_host,
    docker_errors,
    explanation,
    follow_nodes,
    network_create_kwargs,
    remove_by_label,
    run_filters,
    start_containers,
)
from orchestrator.errors import BackendError, NetorchError, PreflightError
from orchestrator.plan import BackendName, ClusterPlan, HostSpec, NodeSpec
from orchestrator.settings import HostSettings

SWARM_PORT = 2377
# How long teardown waits for the hosts to drop their local copy of a removed overlay.
WORKER_FORGET_S = 20.0
SWARM_FIX = (
    "put every host in one swarm: `netorch swarm init --advertise-addr <manager address>` on the "
    "first host, then `netorch swarm join --host <name> --advertise-addr <its address>` for each "
    "other host"
)


def swarm_state(client: Any) -> dict[str, Any]:
    """The daemon's ``info()['Swarm']`` section."""
    swarm: dict[str, Any] = client.info().get("Swarm") or {}
    return swarm


class MultiHostDockerBackend:
    """Applies a multi-host plan: one overlay through the manager, each node on its own host.

    ``clients`` maps host name to an SDK client; the first entry of ``plan.hosts`` is the manager.
    Each host is handled by a :class:`DockerBackend` over its client, so single-host behaviour
    (create arguments, error translation, start checks) is shared, not copied.
    """

    name: BackendName = "docker"

    def __init__(self, clients: Mapping[str, Any], after_start: SetupHook | None = None,
                 user: str | None = None) -> None:
        self.clients = dict(clients)
        self.after_start = after_start
        self.user = user
        self._nodes: list[DockerNode] = []

    @classmethod
    def from_hosts(cls, hosts: tuple[HostSpec, ...] | list[HostSettings],
                   user: str | None = None) -> MultiHostDockerBackend:
        return cls({h.name: connect_host(h) for h in hosts}, user=user)

    def _client(self, plan: ClusterPlan, node: NodeSpec) -> Any:
        host = node.host or plan.hosts[0].name
        return self.clients[host]

    def _manager(self, plan: ClusterPlan) -> Any:
        return self.clients[plan.hosts[0].name]

    # -- preflight -------------------------------------------------------------------------

    def preflight(self, plan: ClusterPlan) -> None:
        """Every host answers, has the image and passes the single-host checks; all hosts are
        in one swarm whose manager is the first host."""
        missing = [h.name for h in plan.hosts if h.name not in self.clients]
        if missing:
            raise PreflightError(f"no client for host(s) {', '.join(missing)}")
        states: dict[str, dict[str, Any]] = {}
        for host in plan.hosts:
            client = self.clients[host.name]
            with docker_errors(f"host {host.name}: checking the daemon at {host.url}"):
                client.ping()
                states[host.name] = swarm_state(client)
        self._check_swarm(plan, states)
        for host in plan.hosts:
            sub = plan_for_host(plan, host.name)
            try:
                DockerBackend(self.clients[host.name]).preflight(sub)
            except NetorchError as e:
                raise type(e)(f"host {host.name}: {e}") from e

    def _check_swarm(self, plan: ClusterPlan, states: dict[str, dict[str, Any]]) -> None:
        inactive = [n for n, s in states.items() if s.get("LocalNodeState") != "active"]
        if inactive:
            raise PreflightError(
                f"host(s) {', '.join(inactive)} are not in a swarm (state "
                + ", ".join(f"{n}={states[n].get('LocalNodeState') or 'inactive'}" for n in inactive)
                + f"); an overlay spans only one swarm; {SWARM_FIX}"
            )
        manager = plan.hosts[0].name
        if not states[manager].get("ControlAvailable"):
            raise PreflightError(
                f"host {manager} (the first of hosts) is not a swarm manager; the overlay is created "
                "through it; list a manager first, or promote it (docker node promote)"
            )
        with docker_errors(f"listing the swarm's nodes on {manager}"):
            members = {n.id for n in self._manager(plan).nodes.list()}
        strangers = [n for n, s in states.items() if s.get("NodeID") not in members]
        if strangers:
            raise PreflightError(
                f"host(s) {', '.join(strangers)} are in another swarm than the manager {manager}; "
                f"leave it (docker swarm leave) and {SWARM_FIX}"
            )

    # -- up --------------------------------------------------------------------------------

    def up(self, plan: ClusterPlan, sink: LineSink) -> list[NodeHandle]:
        """Create the overlay through the manager, then every container through its host."""
        manager = self._manager(plan)
        with docker_errors(f"creating overlay {plan.network.name} on {plan.hosts[0].name}", plan):
            network = manager.networks.create(**network_create_kwargs(plan))
        containers = start_containers(
            plan, network.id, lambda node: self._client(plan, node),
            lambda node: f"{node.name} on {node.host}", self.user,
        )
        nodes = follow_nodes(plan, containers, sink, self.after_start)
        self._nodes.extend(nodes)
        return list(nodes)

    # -- stop / down -----------------------------------------------------------------------

    def stop(self, plan: ClusterPlan, grace_s: float) -> None:
        """Stop the run's containers on every host at once (errors ignored, as single-host)."""
        concurrently(
            lambda host: DockerBackend(self.clients[host.name]).stop(plan, grace_s),
            list(plan.hosts),
        )

    def down(self, plan: ClusterPlan) -> None:
        """Remove the run's containers on every host, then the overlay on the manager.

        A host that cannot be reached is reported in one BackendError after every other host was
        cleaned; ``netorch down --run <id>`` finishes the job once it is back.
        """
        try:
            down_hosts(self.clients, plan.run_id, [h.name for h in plan.hosts])
        finally:
            for dn in self._nodes:
                dn.join(timeout=2.0)
            self._nodes = []

    def inspect(self, plan: ClusterPlan) -> dict[str, Any]:
        """The overlay (as the manager sees it) and each container's attrs, by node name."""
        out: dict[str, Any] = {"network": None, "containers": {}}
        for host in plan.hosts:
            view = DockerBackend(self.clients[host.name]).inspect(plan)
            if host.name == plan.hosts[0].name:
                out["network"] = view["network"]
            out["containers"].update(view["containers"])
        return out


def plan_for_host(plan: ClusterPlan, host: str) -> ClusterPlan:
    """``plan`` restricted to the nodes placed on ``host`` (for per-host preflight checks)."""
    nodes = tuple(n for n in plan.nodes if (n.host or plan.hosts[0].name) == host)
    return dataclasses.replace(plan, nodes=nodes)


def down_hosts(clients: Mapping[str, Any], run_id: str | None, order: list[str]) -> list[str]:
    """Remove netorch's resources of ``run_id`` on every host: containers on all hosts first
    (concurrently), then networks through the manager (``order[0]``). Unreachable hosts are
    reported together in one BackendError after the others were cleaned."""
    removed: list[str] = []
    problems: list[str] = []

    def containers_on(name: str) -> None:
        try:
            removed.extend(f"{item} on {name}" for item in
                           remove_by_label(clients[name], run_id, with_networks=False))
        except NetorchError as e:
            problems.append(f"host {name}: {e}")

    failures = concurrently(containers_on, list(order))
    problems += [f"host {n}: {explanation(e)}" for n, e in failures]
    manager = order[0]
    try:
        removed.extend(f"{item} on {manager}" for item in remove_by_label(clients[manager], run_id))
    except NetorchError as e:
        problems.append(f"host {manager}: {e}")
    if not problems:
        _await_hosts_forget(clients, run_id, order)
    if problems:
        scope = f"--run {run_id}" if run_id else "--all"
        raise BackendError(
            "teardown incomplete: " + "; ".join(problems)
            + f"; when the host is reachable again run `netorch down {scope}` to finish"
        )
    return removed


def _await_hosts_forget(clients: Mapping[str, Any], run_id: str | None, hosts: list[str]) -> None:
    """Every host -- the manager too -- keeps listing a removed overlay for a moment (its local
    copy, holding swarm's load-balancer endpoint, goes when the removal reaches the node's agent;
    removing it again answers "not found"): wait, bounded, so that "down" means gone everywhere."""
    deadline = time.monotonic() + WORKER_FORGET_S
    for name in hosts:
        while time.monotonic() < deadline:
            try:
                if not clients[name].networks.list(filters=run_filters(run_id)):
                    break
            except DOCKER_ERRORS:
                break  # reported by the next `netorch down`, not worth failing this one
            time.sleep(0.2)


# --------------------------------------------------------------------------------------------
# netorch swarm init / join
# --------------------------------------------------------------------------------------------


def swarm_init(client: Any, advertise_addr: str, listen_addr: str | None = None) -> str:
    """Make ``client``'s daemon a swarm manager; returns its node id. Idempotent when it already
    manages a swarm."""
    with docker_errors(f"swarm init with --advertise-addr {advertise_addr}"):
        state = swarm_state(client)
        if state.get("LocalNodeState") == "active":
            if state.get("ControlAvailable"):
                return str(state.get("NodeID"))
            raise PreflightError(
                "this daemon is already a swarm worker; run `docker swarm leave` on it first"
            )
        try:
            client.swarm.init(
                advertise_addr=advertise_addr,
                listen_addr=listen_addr or f"{advertise_addr}:{SWARM_PORT}",
            )
        except DOCKER_ERRORS as e:
            # The daemon answered (swarm_state above): a failure here is about the address.
            raise BackendError(
                f"swarm init with --advertise-addr {advertise_addr} failed ({explanation(e)}); "
                "give an address this host holds on the network the other hosts reach"
            ) from e
        return str(swarm_state(client).get("NodeID"))


def swarm_join(
    manager: Any, worker: Any, advertise_addr: str | None = None, listen_addr: str | None = None
) -> str:
    """Join ``worker``'s daemon to ``manager``'s swarm as a worker; returns its node id.

    Idempotent when it is already in that swarm."""
    with docker_errors("swarm join"):
        mstate = swarm_state(manager)
        if mstate.get("LocalNodeState") != "active" or not mstate.get("ControlAvailable"):
            raise PreflightError(
                "the first host is not a swarm manager; run `netorch swarm init --advertise-addr X` "
                "first"
            )
        wstate = swarm_state(worker)
        if wstate.get("LocalNodeState") == "active":
            members = {n.id for n in manager.nodes.list()}
            if wstate.get("NodeID") in members:
                return str(wstate.get("NodeID"))
            raise PreflightError(
                "the host is in another swarm; run `docker swarm leave` on it first"
            )
        manager.swarm.reload()
        token = manager.swarm.attrs["JoinTokens"]["Worker"]
        remote = f"{mstate.get('NodeAddr')}:{SWARM_PORT}"
        kwargs: dict[str, Any] = {"remote_addrs": [remote], "join_token": token}
        if advertise_addr:
            kwargs["advertise_addr"] = advertise_addr
            kwargs["listen_addr"] = listen_addr or f"{advertise_addr}:{SWARM_PORT}"
        try:
            worker.swarm.join(**kwargs)
        except DOCKER_ERRORS as e:
            # Both daemons answered above; a failure (or a time-out) here means the manager is
            # out of the worker's reach or the address is not the host's own.
            raise BackendError(
                f"swarm join to {remote} failed ({explanation(e)}); check that the host reaches "
                f"the manager on TCP {SWARM_PORT} and give --advertise-addr an address it holds"
            ) from e
        return str(swarm_state(worker).get("NodeID"))
