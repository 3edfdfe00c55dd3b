"""Link emulation: the tc commands that make a container's interface behave like a LinkSpec."""

from __future__ import annotations

from orchestrator.plan import CONTAINER_IFNAME, LinkSpec

# tbf queue bound: how long a packet may wait for tokens before it is dropped.
TBF_LATENCY = "50ms"



def tc_commands(link: LinkSpec, ifname: str = CONTAINER_IFNAME) -> tuple[tuple[str, ...], ...]:
    """The tc invocations (argv) that make ``ifname`` behave like ``link``, in order.

    tbf's burst must hold at least one GSO super-packet (64 KiB on veth) or tbf splits every
    packet in software; 4 ms worth of tokens is above that from ~130 Mbit/s up and keeps the
    long-run rate exact (bursts only shift when bytes leave, not how many leave per second).
    """
    commands: list[tuple[str, ...]] = []
    parent: tuple[str, ...] = ("root", "handle", "1:")
    if link.delay or link.loss:
        netem: list[str] = ["tc", "qdisc", "add", "dev", ifname, "root", "handle", "1:", "netem"]
        if link.delay:
            netem += ["delay", link.delay]
            if link.jitter:
                netem.append(link.jitter)
        if link.loss:
            netem += ["loss", link.loss]
        commands.append(tuple(netem))
        parent = ("parent", "1:1", "handle", "10:")
    bits = link.rate_bits
    if bits:
        burst = max(64 * 1024 * 2, bits // 8 // 250)
        commands.append((
            "tc", "qdisc", "add", "dev", ifname, *parent, "tbf", "rate", f"{bits}bit",
            "burst", str(burst), "latency", TBF_LATENCY,
        ))
    return tuple(commands)
