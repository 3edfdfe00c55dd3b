"""The TCP line rate between ring neighbours, and busbw as a share of it (``--line-rate``).

The same measurement the sweep makes before each run (iperf3 in the image, else the built-in
``python -m train.tcptest``): one single-stream and one parallel-stream test per ring pair, one
test at a time, on idle nodes before the benchmark starts. ``share`` = busbw / single-stream
throughput: gloo and NCCL's socket transport use few connections per peer, so one TCP stream is
the fair denominator; the parallel figure shows the headroom more connections could reach.

Docker: measured in the containers' set-up phase (a gated plan, or a warm cluster's idle nodes).
Process backend: between two local processes over loopback, the path its ranks use.
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.table import Table

from orchestrator.errors import BackendError
from orchestrator.netprobe import ProbeNode, TcpResult, has_iperf3, tcp_throughput
from orchestrator.plan import ClusterPlan


@dataclass(frozen=True)
class LineRateOptions:
    """How long each TCP test runs, how many streams the parallel one uses, how many pairs."""

    seconds: float = 2.0
    streams: int = 4
    pairs: int = 1


@dataclass
class LineRate:
    """The TCP tests of one run (filled before the benchmark starts)."""

    single: list[TcpResult] = field(default_factory=list)
    parallel: list[TcpResult] = field(default_factory=list)

    @property
    def single_gbps(self) -> float | None:
        return statistics.median(t.gbytes_per_s for t in self.single) if self.single else None

    @property
    def parallel_gbps(self) -> float | None:
        return statistics.median(t.gbytes_per_s for t in self.parallel) if self.parallel else None

    def to_dict(self) -> dict[str, Any]:
        return {"tcp_single": [asdict(t) for t in self.single],
                "tcp_parallel": [asdict(t) for t in self.parallel],
                "single_gbps": self.single_gbps, "parallel_gbps": self.parallel_gbps}


def ring_pairs(plan: ClusterPlan, limit: int) -> list[tuple[int, int]]:
    """(sender, receiver) node indices i -> i+1 around the ring, at most ``limit`` of them:
    the links a ring all_reduce uses."""
    n = len(plan.nodes)
    if n < 2:
        return []
    ring = [(i, (i + 1) % n) for i in range(n)] if n > 2 else [(0, 1)]
    return ring[: max(0, limit)]


def measure_between(nodes: list[ProbeNode], plan: ClusterPlan, options: LineRateOptions,
                    into: LineRate) -> None:
    """Single- and parallel-stream TCP over the plan's ring pairs, one test at a time
    (concurrent tests would share the host's CPUs and undercount)."""
    for src, dst in ring_pairs(plan, options.pairs):
        try:
            # Asked once per pair, not per test: each question is a docker exec on each end.
            iperf3 = has_iperf3(nodes[dst].container) and has_iperf3(nodes[src].container)
            into.single.append(tcp_throughput(nodes[dst], nodes[src], options.seconds, 1,
                                              use_iperf3=iperf3))
            if options.streams > 1:
                into.parallel.append(tcp_throughput(nodes[dst], nodes[src], options.seconds,
                                                    options.streams, use_iperf3=iperf3))
        except RuntimeError as e:
            raise BackendError(f"TCP baseline: {e}") from e


def container_hook(options: LineRateOptions, into: LineRate
                   ) -> Callable[[ClusterPlan, Mapping[str, Any]], None]:
    """A set-up hook (gated plan or warm cluster) measuring the line rate into ``into``."""

    def hook(plan: ClusterPlan, containers: Mapping[str, Any]) -> None:
        nodes = [ProbeNode(n.name, n.ip, containers[n.name]) for n in plan.nodes]
        measure_between(nodes, plan, options, into)

    return hook


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _loopback_test(seconds: float, streams: int) -> TcpResult:
    """One train.tcptest between two local processes over 127.0.0.1."""
    port = _free_port()
    tool = [sys.executable, "-m", "train.tcptest"]
    server = subprocess.Popen([*tool, "server", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            done = subprocess.run(
                [*tool, "client", "--host", "127.0.0.1", "--port", str(port), "--seconds",
                 f"{seconds:g}", "--streams", str(streams)],
                capture_output=True, text=True, timeout=seconds + 60)
            if done.returncode == 0:
                bits = float(json.loads(done.stdout.strip().splitlines()[-1])["bits_per_second"])
                return TcpResult("local", "local", streams, bits, "tcptest", seconds)
            if "refused" not in done.stderr.lower() or time.monotonic() > deadline:
                raise BackendError(f"TCP baseline over loopback failed (exit {done.returncode}): "
                                   f"{done.stderr.strip()[-300:]}")
            time.sleep(0.2)  # the server was not listening yet
    finally:
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def measure_loopback(options: LineRateOptions) -> LineRate:
    """The process backend's line rate: single and parallel TCP over loopback."""
    line = LineRate()
    line.single.append(_loopback_test(options.seconds, 1))
    if options.streams > 1:
        line.parallel.append(_loopback_test(options.seconds, options.streams))
    return line


def annotate(report: dict[str, Any], line: LineRate) -> None:
    """Put the line rate into ``report`` and each row's ``line_share`` (busbw / single-stream)."""
    report["line_rate"] = line.to_dict()
    single = line.single_gbps
    for row in report.get("results", []):
        row["line_share"] = float(row["busbw_gbps"]) / single if single else None


def line_rate_table(report: dict[str, Any], width: int = 120) -> Table:
    """busbw per size beside the TCP line rate, as a share of the single-stream figure; fitted
    to ``width`` (orchestrator/tables.py)."""
    from orchestrator.report import format_size
    from orchestrator.tables import Column, fit_table

    line = report["line_rate"]

    def gbps(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f} GB/s"

    streams = max((t["streams"] for t in line["tcp_parallel"]), default=0)
    par = line["parallel_gbps"]
    columns = [Column("op", priority=2), Column("size", "right", 2),
               Column("busbw GB/s", "right", 1), Column("share of 1 stream", "right", 2)]
    rows = [[f"{row['op']} {row['dtype']}{'' if row['in_place'] else ' oop'}",
             format_size(int(row["size_bytes"])), f"{row['busbw_gbps']:.3f}",
             "-" if row.get("line_share") is None else f"{row['line_share']:.0%}"]
            for row in report["results"]]
    title = f"line rate: TCP 1 stream {gbps(line['single_gbps'])}"
    if streams:  # no parallel test with --tcp-streams 1
        columns.append(Column(f"share of {streams} streams", "right"))
        for row, cells in zip(report["results"], rows):
            cells.append(f"{row['busbw_gbps'] / par:.0%}" if par else "-")
        title += f", {streams} streams {gbps(par)}"
    return fit_table(title, columns, rows, width)
