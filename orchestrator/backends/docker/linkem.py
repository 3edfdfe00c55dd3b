"""Link emulation: the tc commands that make a container's interface behave like a LinkSpec.

A node's link is the network's common link, or its own (``network.node_links``) when it has one.
Links between two nodes only (``network.pair_links``) need classes: an htb root whose unclassified
traffic leaves as before (the common link as the default class, or unshaped), and one class per
shaped peer, chosen by a u32 filter on the peer's destination address. Each end of a pair shapes
its own egress, so both directions of the pair are shaped.
"""

from __future__ import annotations

from orchestrator.plan import CONTAINER_IFNAME, ClusterPlan, LinkSpec

# tbf queue bound: how long a packet may wait for tokens before it is dropped.
TBF_LATENCY = "50ms"
# The rate of an htb class that only carries netem (delay/loss) and no rate of its own.
UNSHAPED_CLASS_RATE = "100gbit"


def _burst(bits: int) -> int:
    """tbf's and htb's burst must hold at least one GSO super-packet (64 KiB on veth) or the
    qdisc splits every packet in software; 4 ms worth of tokens is above that from ~130 Mbit/s
    up and keeps the long-run rate exact (bursts only shift when bytes leave, not how many)."""
    return max(64 * 1024 * 2, bits // 8 // 250)


def _netem(link: LinkSpec, ifname: str, parent: tuple[str, ...]) -> tuple[str, ...]:
    netem: list[str] = ["tc", "qdisc", "add", "dev", ifname, *parent, "netem"]
    if link.delay:
        netem += ["delay", link.delay]
        if link.jitter:
            netem.append(link.jitter)
    if link.loss:
        netem += ["loss", link.loss]
    return tuple(netem)


def tc_commands(link: LinkSpec, ifname: str = CONTAINER_IFNAME) -> tuple[tuple[str, ...], ...]:
    """The tc invocations (argv) that make ``ifname`` behave like ``link``, in order."""
    commands: list[tuple[str, ...]] = []
    parent: tuple[str, ...] = ("root", "handle", "1:")
    if link.delay or link.loss:
        commands.append(_netem(link, ifname, ("root", "handle", "1:")))
        parent = ("parent", "1:1", "handle", "10:")
    bits = link.rate_bits
    if bits:
        commands.append((
            "tc", "qdisc", "add", "dev", ifname, *parent, "tbf", "rate", f"{bits}bit",
            "burst", str(_burst(bits)), "latency", TBF_LATENCY,
        ))
    return tuple(commands)


def _htb_class(ifname: str, classid: str, link: LinkSpec) -> list[tuple[str, ...]]:
    bits = link.rate_bits
    rate = f"{bits}bit" if bits else UNSHAPED_CLASS_RATE
    burst = str(_burst(bits)) if bits else str(_burst(100 * 10**9))
    commands: list[tuple[str, ...]] = [(
        "tc", "class", "add", "dev", ifname, "parent", "1:", "classid", classid, "htb",
        "rate", rate, "ceil", rate, "burst", burst, "cburst", burst,
    )]
    if link.delay or link.loss:
        # The class's own netem qdisc: a handle no other qdisc has (class 1:1 must not take
        # "1:", the root htb's: tc answers "Cannot move an existing qdisc").
        handle = f"{0x100 + int(classid.split(':')[1], 16):x}:"
        commands.append(_netem(link, ifname, ("parent", classid, "handle", handle)))
    return commands


def classful_tc_commands(
    default: LinkSpec | None, peers: tuple[tuple[str, LinkSpec], ...],
    ifname: str = CONTAINER_IFNAME,
) -> tuple[tuple[str, ...], ...]:
    """tc for a node with links to single peers: ``peers`` is (peer IPv4, link) each; traffic
    to anyone else follows ``default`` (None: unshaped, htb's ``default 0`` sends it directly)."""
    commands: list[tuple[str, ...]] = [(
        "tc", "qdisc", "add", "dev", ifname, "root", "handle", "1:", "htb",
        "default", "1" if default is not None else "0",
    )]
    if default is not None:
        commands += _htb_class(ifname, "1:1", default)
    for i, (ip, link) in enumerate(peers):
        classid = f"1:{0x10 + i:x}"
        commands += _htb_class(ifname, classid, link)
        commands.append((
            "tc", "filter", "add", "dev", ifname, "parent", "1:", "protocol", "ip", "prio", "1",
            "u32", "match", "ip", "dst", f"{ip}/32", "flowid", classid,
        ))
    return tuple(commands)


def plan_tc_commands(plan: ClusterPlan) -> dict[str, tuple[tuple[str, ...], ...]]:
    """Node name -> the tc commands that shape that node's eth0 (nodes without shaping left out)."""
    net = plan.network
    own = dict(net.node_links)
    ip_of = {node.hostname: node.ip for node in plan.nodes}
    out: dict[str, tuple[tuple[str, ...], ...]] = {}
    for node in plan.nodes:
        link = own.get(node.hostname, net.link)
        peers = tuple(
            (ip_of[b if a == node.hostname else a], spec)
            for a, b, spec in net.pair_links if node.hostname in (a, b)
        )
        if peers:
            out[node.name] = classful_tc_commands(link, peers, net.device)
        elif link is not None:
            out[node.name] = tc_commands(link, net.device)
    return out
