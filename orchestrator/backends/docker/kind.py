"""The docker backend's kind: its fabric (a bridge, or an overlay across several hosts), how to
probe for a daemon and the image, how to build the executor, how ``netorch down`` cleans up.

Every node is a container with a fixed address on one labelled network; see ``backend.py`` for
the executor. The SDK is imported only when a client is needed, never for planning.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

from orchestrator.backends.base import Backend
from orchestrator.errors import PlanError
from orchestrator.placement import address_pool, node_placement, overlay_dynamic_range
from orchestrator.plan import (
    FabricSpec,
    HostSpec,
    NetworkSpec,
    link_spec,
    node_link_specs,
    pair_link_specs,
)
from orchestrator.settings import Settings

# The management network's interface when it sorts after the fabric (see fabric()).
MANAGEMENT_IFNAME = "eth1"


def host_specs(settings: Settings) -> tuple[HostSpec, ...]:
    """The plan's view of ``[[hosts]]``."""
    return tuple(
        HostSpec(h.name, h.url, h.tls_ca, h.tls_cert, h.tls_key, h.gpus) for h in settings.hosts
    )


class DockerKind:
    """The docker backend: containers on a bridge (one host) or an attachable overlay (several)."""

    name = "docker"
    summary = ("every node a container with a fixed IP on a bridge network netorch creates "
               "(an overlay across [[hosts]])")

    def fabric(self, settings: Settings, run_id: str) -> FabricSpec:
        """Master on the first usable address of ``ip_range`` (or the subnet) that is not the
        gateway, worker *i* the *i*-th after it; an overlay when more than one host is listed."""
        net = settings.network
        n = settings.cluster.nodes
        hosts = host_specs(settings)
        overlay = len(hosts) > 1
        try:
            placement = tuple(node_placement(settings))
        except ValueError as e:
            raise PlanError(str(e)) from None
        subnet = ipaddress.IPv4Network(net.subnet)
        gateway = net.gateway or str(next(subnet.hosts()))
        ips = address_pool(net, n)
        ip_range = overlay_dynamic_range(net.subnet, net.ip_range, ips) if overlay else net.ip_range
        network = NetworkSpec(
            name=net.name or f"{settings.cluster.name}-{run_id}-net",
            driver="overlay" if overlay else "bridge",
            subnet=str(subnet),
            gateway=gateway,
            ip_range=ip_range,
            mtu=net.mtu,
            internal=net.internal,
            # A bridge name is a host interface; an overlay has none on the hosts.
            bridge_name=None if overlay else net.bridge_name,
            interface=net.interface,
            link=link_spec(net.link),
            attachable=overlay,
            node_links=node_link_specs(net.link),
            pair_links=pair_link_specs(net.link),
        )
        management, management_ips = self._management(settings, network.name, overlay, n)
        if management is not None:
            # Docker orders a container's interfaces: networks with a way out (not internal)
            # first, then by name (engine 20.10's libnetwork; a test reads it back). The fabric
            # (...-net) sorts before ...-net-mgmt by name.
            fabric_first = (net.internal, network.name) <= (management.internal, management.name)
            device = "eth0" if fabric_first else "eth1"
            management = dataclasses.replace(management, device="eth1" if fabric_first else "eth0",
                                             interface="eth1" if fabric_first else "eth0")
            interface = net.interface if "interface" in net.model_fields_set else device
            network = dataclasses.replace(network, device=device, interface=interface)
        return FabricSpec(
            network=network, ips=tuple(ips), placement=placement, hosts=hosts, aliases=True,
            in_node_paths=True, shared_ports=False, metrics_addr="0.0.0.0",
            management=management, management_ips=management_ips,
        )

    @staticmethod
    def _management(settings: Settings, fabric_name: str, overlay: bool, n: int
                    ) -> tuple[NetworkSpec | None, tuple[str, ...]]:
        """The management bridge and the nodes' addresses on it (gateway first, nodes after);
        which of eth0/eth1 it becomes is decided by the caller."""
        mgmt = settings.network.management
        if mgmt.subnet is None:
            return None, ()
        if overlay:
            raise PlanError("network.management: a second network across [[hosts]] is not "
                            "supported; drop [network.management] or use one host")
        subnet = ipaddress.IPv4Network(mgmt.subnet)
        hosts = list(subnet.hosts())
        if len(hosts) < n + 1:
            raise PlanError(f"network.management.subnet: {subnet} has {len(hosts)} usable "
                            f"addresses but the plan needs {n + 1} (gateway + {n} nodes); use "
                            "a larger subnet")
        spec = NetworkSpec(
            name=mgmt.name or f"{fabric_name}-mgmt", driver="bridge", subnet=str(subnet),
            gateway=str(hosts[0]), ip_range=None, mtu=mgmt.mtu, internal=mgmt.internal,
            bridge_name=None, interface=MANAGEMENT_IFNAME,
        )
        return spec, tuple(str(a) for a in hosts[1:n + 1])

    def probe(self, settings: Settings) -> str | None:
        """None when a daemon answers and the image is there; else which of the two failed."""
        from orchestrator.backends.docker import connect_settings
        from orchestrator.errors import NetorchError

        try:
            with connect_settings(settings, timeout=5) as client:
                client.ping()
                client.images.get(settings.cluster.image)
        except NetorchError:
            return "no Docker daemon"
        except Exception as e:  # any failure of the probe means "no usable docker"
            if type(e).__name__ == "ImageNotFound":
                return f"image {settings.cluster.image} missing"
            return "no Docker daemon"
        return None

    def ready(self, settings: Settings) -> str:
        return f"Docker daemon answers and {settings.cluster.image} exists"

    def create(self, settings: Settings) -> Backend:
        from orchestrator.backends.docker import DockerBackend

        if len(settings.hosts) > 1:
            from orchestrator.backends.swarm import MultiHostDockerBackend

            return MultiHostDockerBackend.from_hosts(settings.hosts, user=settings.docker.user)
        return DockerBackend.from_settings(settings)  # docker.host, or the one [[hosts]] entry

    def remove(self, settings: Settings, run_id: str | None) -> list[str]:
        from orchestrator.backends.docker import connect_host, connect_settings, down_all

        if len(settings.hosts) > 1:
            from orchestrator.backends.swarm import down_hosts

            clients: dict[str, Any] = {}
            try:
                for h in settings.hosts:
                    clients[h.name] = connect_host(h)
                return down_hosts(clients, run_id, [h.name for h in settings.hosts])
            finally:
                for c in clients.values():
                    c.close()
        with connect_settings(settings) as client:
            return down_all(client, run_id)


DOCKER = DockerKind()
