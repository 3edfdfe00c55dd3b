"""Planning arithmetic shared by the backends' fabrics: which addresses nodes take, which host
runs which node. Pure functions of validated settings; no I/O.

The settings validate with these (a subnet too small for the nodes, a node placed on an unknown
host), and the fabrics plan with them, so both always agree.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from orchestrator.errors import PlanError

if TYPE_CHECKING:
    from orchestrator.settings import NetworkSettings, Settings


def node_placement(settings: Settings) -> list[str | None]:
    """The host name of each node rank (None for every node when no hosts are configured).

    Round-robin puts node *i* on host *i mod len(hosts)*; explicit reads ``placement.nodes``,
    whose keys are ``master``, ``worker-<i>`` or the rank as a string.
    """
    n = settings.cluster.nodes
    hosts = [h.name for h in settings.hosts]
    if not hosts:
        return [None] * n
    if settings.placement.strategy == "round-robin":
        return [hosts[i % len(hosts)] for i in range(n)]
    mapping = settings.placement.nodes
    out: list[str | None] = []
    for rank in range(n):
        short = "master" if rank == 0 else f"worker-{rank}"
        host = mapping.get(short, mapping.get(str(rank)))
        if host is None:
            raise ValueError(
                f"placement.nodes: node {short} (rank {rank}) has no host; map it to one of "
                + ", ".join(hosts)
            )
        if host not in hosts:
            raise ValueError(
                f"placement.nodes: {short} -> {host!r} is not a configured host; use one of "
                + ", ".join(hosts)
            )
        out.append(host)
    known = {"master", *(f"worker-{r}" for r in range(1, n)), *(str(r) for r in range(n))}
    extra = sorted(set(mapping) - known)
    if extra:
        raise ValueError(
            f"placement.nodes: {', '.join(extra)} name no node of this {n}-node cluster; remove them"
        )
    return out


def _pool_bounds(network: NetworkSettings) -> tuple[int, int, frozenset[int]]:
    """First and last address (as integers) nodes may take, and the reserved ones in between."""
    net = ipaddress.IPv4Network(network.subnet)
    source = ipaddress.IPv4Network(network.ip_range) if network.ip_range else net
    gateway = ipaddress.IPv4Address(network.gateway) if network.gateway else next(net.hosts())
    reserved = frozenset(int(a) for a in (net.network_address, net.broadcast_address, gateway))
    first, last = int(source.network_address), int(source.broadcast_address)
    if source.prefixlen < 31:  # a /31 or /32 has no network and broadcast address of its own
        first, last = first + 1, last - 1
    return first, last, reserved


def usable_addresses(network: NetworkSettings) -> int:
    """How many nodes the network can address: :func:`address_pool`'s length, by arithmetic."""
    first, last, reserved = _pool_bounds(network)
    return max(0, last - first + 1 - sum(first <= r <= last for r in reserved))


def address_pool(network: NetworkSettings, count: int) -> list[str]:
    """The first ``count`` addresses nodes may take: hosts of ip_range (or the subnet), minus the
    gateway, in order. The network address, the broadcast address and the gateway are never
    handed out. Linear in ``count`` whatever the subnet's size (a /8 is not walked)."""
    first, last, reserved = _pool_bounds(network)
    out: list[str] = []
    addr = first
    while len(out) < count and addr <= last:
        if addr not in reserved:
            out.append(_dotted(addr))
        addr += 1
    return out


def _dotted(addr: int) -> str:
    # str(IPv4Address(int)) costs about ten times as much; plans of 10,000 nodes call this a lot.
    return f"{addr >> 24}.{(addr >> 16) & 255}.{(addr >> 8) & 255}.{addr & 255}"


def overlay_dynamic_range(subnet: str, ip_range: str | None, ips: list[str]) -> str:
    """The overlay's ``ip_range``: the upper half of the subnet, kept for swarm's own addresses.

    Swarm gives every host that joins an overlay a load-balancer address taken dynamically from
    the pool -- the lowest free ones, i.e. exactly the fixed node addresses -- and the start of a
    node then fails with "could not allocate IP ... Address already in use" / "context deadline
    exceeded". Fixed IPs may lie outside ``ip_range`` (inside the subnet), so nodes take the
    lower half and dynamic allocation is confined to the upper half.
    """
    net = ipaddress.IPv4Network(subnet)
    if ip_range is not None:
        raise PlanError(
            f"network.ip_range {ip_range} cannot be used on a multi-host overlay: netorch keeps "
            f"the upper half of {subnet} for swarm's own per-host addresses and places nodes in "
            "the lower half; drop network.ip_range"
        )
    lower, upper = net.subnets(prefixlen_diff=1)
    # Node addresses ascend, so the last one alone says whether they all fit.
    if ips and ipaddress.IPv4Address(ips[-1]) not in lower:
        need = 32 - max(3, (len(ips) + 3).bit_length()) - 1
        raise PlanError(
            f"network.subnet {subnet}: on an overlay the nodes must fit in its lower half {lower} "
            f"(the upper half is swarm's), but {len(ips)} nodes do not; use a /{need} or larger"
        )
    return str(upper)
