"""Network probes run inside a run's own containers (docker exec): ping, path MTU, TCP line rate.

Shared by the sweep (every run verifies its MTU and measures a TCP baseline before the benchmark
starts) and the doctor. Every probe targets only addresses that the run's own containers hold or
were planned to hold, on the run's own bridge; nothing here talks to any other host.

A container is anything with the Docker SDK's ``exec_run`` and ``name``, so unit tests can pass
fakes.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from orchestrator.fanout import map_threads

# IPv4 header (20) + ICMP header (8): a ping payload of MTU - 28 fills one frame exactly.
ICMP_OVERHEAD = 28
IPERF_PORT = 5201
# How long a client keeps retrying while its server (started a moment earlier) is not listening.
SERVER_START_S = 8.0
_RTT_RE = re.compile(r"= [\d.]+/([\d.]+)/[\d.]+/[\d.]+ ms")
_PARALLEL = 8

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ProbeNode:
    """One node as the probes see it: its name, the IPv4 address peers use, its container."""

    name: str
    ip: str
    container: Any


@dataclass(frozen=True)
class PingResult:
    """``src`` pinged ``dst_ip``: reached or not, average round-trip time."""

    src: str
    dst: str
    dst_ip: str
    ok: bool
    rtt_ms: float | None
    detail: str


@dataclass(frozen=True)
class PathMtuResult:
    """Don't-fragment probe from ``src`` to ``dst_ip`` at ``mtu``: the largest payload must pass and
    one byte more must fail, or the path does not carry exactly ``mtu``."""

    src: str
    dst: str
    dst_ip: str
    mtu: int
    fits: bool
    one_more_fails: bool
    detail: str

    @property
    def ok(self) -> bool:
        return self.fits and self.one_more_fails


@dataclass(frozen=True)
class TcpResult:
    """TCP throughput from ``src`` to ``dst`` over ``streams`` connections, at the receiver."""

    src: str
    dst: str
    streams: int
    bits_per_second: float
    tool: Literal["iperf3", "tcptest"]
    seconds: float

    @property
    def gbytes_per_s(self) -> float:
        """The rate in GB/s (1e9 bytes), the unit busbw is reported in."""
        return self.bits_per_second / 8 / 1e9


def run_in(container: Any, argv: Sequence[str]) -> tuple[int, str]:
    """``docker exec`` ``argv`` in ``container``: (exit code, combined output)."""
    result = container.exec_run(list(argv))
    output = result.output.decode("utf-8", "replace") if result.output else ""
    return int(result.exit_code if result.exit_code is not None else -1), output


def concurrently(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(item) for item in items]``, computed in threads (docker execs mostly wait)."""
    return map_threads(fn, items, _PARALLEL)


def pairs(nodes: Sequence[ProbeNode]) -> list[tuple[ProbeNode, ProbeNode]]:
    """Every ordered pair of distinct nodes (both directions: paths can be asymmetric)."""
    return [(a, b) for a in nodes for b in nodes if a is not b]


def interface_mtu(container: Any, ifname: str) -> int | None:
    """The MTU the kernel in ``container`` really uses on ``ifname``; None if it has no such one."""
    code, out = run_in(container, ["cat", f"/sys/class/net/{ifname}/mtu"])
    try:
        return int(out.strip()) if code == 0 else None
    except ValueError:
        return None


def ping(src: ProbeNode, dst_name: str, dst_ip: str, count: int = 3) -> PingResult:
    """ICMP echo from ``src`` to ``dst_ip``: reachability and the average RTT."""
    code, out = run_in(src.container, [
        "ping", "-n", "-c", str(count), "-i", "0.2", "-W", "1", dst_ip])
    m = _RTT_RE.search(out)
    rtt = float(m.group(1)) if m else None
    ok = code == 0 and rtt is not None
    lines = [ln for ln in out.strip().splitlines() if ln]
    detail = f"rtt {rtt:.3f} ms" if ok and rtt is not None else (lines[-1] if lines else f"exit {code}")
    return PingResult(src.name, dst_name, dst_ip, ok, rtt, detail)


def path_mtu(src: ProbeNode, dst_name: str, dst_ip: str, mtu: int) -> PathMtuResult:
    """Probe the path ``src`` -> ``dst_ip`` at ``mtu`` with don't-fragment pings.

    ``-M do`` forbids fragmentation, so a frame larger than any hop's MTU is refused (locally:
    "message too long") or dropped (a smaller MTU further on) instead of being split. The frame
    one byte too large waits for its reply a few times the round trip the fitting frame took, not
    a whole second: a refused frame never gets one, and ping would sit out its whole ``-W``.
    """
    payload = mtu - ICMP_OVERHEAD
    code, out = run_in(src.container, [
        "ping", "-n", "-M", "do", "-s", str(payload), "-c", "1", "-W", "1", dst_ip])
    fits = code == 0
    code2, out2 = run_in(src.container, [
        "ping", "-n", "-M", "do", "-s", str(payload + 1), "-c", "1", "-W",
        reply_wait(out) if fits else "1", dst_ip])
    one_more_fails = code2 != 0
    if fits and one_more_fails:
        detail = f"{mtu} passes, {mtu + 1} does not"
    elif not fits:
        local = re.search(r"mtu=(\d+)", out)
        detail = (f"a {mtu}-byte frame does not get through"
                  + (f" (the sender's interface MTU is {local.group(1)})" if local else
                     " (dropped on the way: a smaller MTU along the path)"))
    else:
        detail = f"a {mtu + 1}-byte frame got through: the path MTU is above {mtu}"
    del out2
    return PathMtuResult(src.name, dst_name, dst_ip, mtu, fits, one_more_fails, detail)


def reply_wait(ping_output: str) -> str:
    """ping's ``-W`` (seconds, as text) for a probe on a path whose round trip ``ping_output`` shows:
    ten round trips, at least 0.1 s, at most 1 s (an emulated delay still gets its reply)."""
    m = _RTT_RE.search(ping_output)
    if m is None:
        return "1"
    return f"{min(1.0, max(0.1, 10 * float(m.group(1)) / 1000)):.3f}"


def has_iperf3(container: Any) -> bool:
    """True when ``iperf3`` is on the container's PATH."""
    return run_in(container, ["sh", "-c", "command -v iperf3"])[0] == 0


def tcp_throughput(
    server: ProbeNode, client: ProbeNode, seconds: float, streams: int,
    port: int = IPERF_PORT, use_iperf3: bool | None = None,
) -> TcpResult:
    """TCP throughput ``client`` -> ``server`` with iperf3 (or the built-in train.tcptest).

    The server runs one test and exits (``iperf3 -s -1``), so nothing lingers in the container.
    """
    if use_iperf3 is None:
        use_iperf3 = has_iperf3(server.container) and has_iperf3(client.container)
    if use_iperf3:
        server_cmd = ["iperf3", "-s", "-1", "-p", str(port)]
        # iperf3 reads -t as a whole number, and 0 means "forever": never pass less than 1.
        client_cmd = ["iperf3", "-c", server.ip, "-p", str(port), "-t", str(max(1, round(seconds))),
                      "-P", str(streams), "-J"]
    else:
        server_cmd = ["python3", "-m", "train.tcptest", "server", "--port", str(port)]
        client_cmd = ["python3", "-m", "train.tcptest", "client", "--host", server.ip,
                      "--port", str(port), "--seconds", f"{seconds:g}", "--streams", str(streams)]
    server.container.exec_run(server_cmd, detach=True)
    deadline = time.monotonic() + SERVER_START_S
    while True:
        code, out = run_in(client.container, client_cmd)
        bits = _parse_tcp(out, use_iperf3)
        if code == 0 and bits is not None:
            tool: Literal["iperf3", "tcptest"] = "iperf3" if use_iperf3 else "tcptest"
            return TcpResult(client.name, server.name, streams, bits, tool, seconds)
        refused = "refused" in out.lower() or "unable to connect" in out.lower()
        if not refused or time.monotonic() > deadline:
            raise RuntimeError(
                f"TCP test {client.name} -> {server.name} ({server.ip}:{port}) failed (exit "
                f"{code}): {out.strip()[-300:]}"
            )
        time.sleep(0.05)  # the server was not listening yet


def _parse_tcp(output: str, iperf3: bool) -> float | None:
    """Received bits/s from iperf3's ``-J`` document or train.tcptest's JSON line."""
    try:
        doc = json.loads(output[output.index("{"):]) if "{" in output else None
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    try:
        if iperf3:
            if doc.get("error"):
                return None
            return float(doc["end"]["sum_received"]["bits_per_second"])
        return float(doc["bits_per_second"])
    except (KeyError, TypeError, ValueError):
        return None
