"""Traffic proof on the host: which interface carried each benchmark row, and how much.

Every rank reads its namespace's ``tx_bytes`` counters around each size (train/traffic.py). Ranks
that share a network namespace (one container, or every local process) read the same counters, so
a namespace counts once: its bytes are the mean of its ranks' readings, and the bytes per rank are
the namespaces' sum over the ranks. The hostname tells the namespaces apart (a container has its
own; local processes share the host's).

Next to the bytes the algorithm must send (``OpSpec.wire_bytes_per_rank``) this says whether the
collective went through the planned interface, and whether the volume is what the op implies
(frames carry 3-5 % of headers at MTU 1500, plus ACKs of what the rank received).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Rows below this size are dominated by the barriers and the store's traffic: not judged.
JUDGED_MIN_BYTES = 1 << 20
# The planned interface may carry this much less / more than the algorithm's bytes...
LOW, HIGH = 0.5, 2.0
# ... and another interface (loopback aside) at most this share of them.
ELSEWHERE = 0.25


def row_traffic(row: Mapping[str, Any], hostnames: Sequence[str | None]) -> dict[str, Any] | None:
    """``{expected_bytes_per_rank, bytes_per_rank: {ifname: bytes}}`` for one result row, or None
    when the row carries no traffic readings."""
    traffic = row.get("traffic")
    if not traffic:
        return None
    per_rank: list[Mapping[str, float]] = traffic.get("tx_bytes_per_rank") or []
    groups: dict[str, list[int]] = {}
    for rank in range(len(per_rank)):
        host = hostnames[rank] if rank < len(hostnames) else None
        groups.setdefault(host or f"rank-{rank}", []).append(rank)
    total: dict[str, float] = {}
    for ranks in groups.values():
        for ifname in sorted({name for r in ranks for name in per_rank[r]}):
            values = [float(per_rank[r].get(ifname, 0.0)) for r in ranks]
            total[ifname] = total.get(ifname, 0.0) + sum(values) / len(values)
    n = max(1, len(per_rank))
    return {"expected_bytes_per_rank": float(traffic.get("expected_bytes_per_rank", 0.0)),
            "bytes_per_rank": {k: v / n for k, v in sorted(total.items())}}


def traffic_warnings(rows: Sequence[Mapping[str, Any]], planned: str,
                     one_rank_per_node: bool) -> list[str]:
    """Warnings for judged rows: bytes on another interface than ``planned`` (the fabric's: the
    one holding the node's planned address, whatever the socket settings say), or far more or
    fewer than the algorithm implies there. At most one warning of each kind, naming the row
    where it is worst."""
    elsewhere: tuple[float, str] | None = None
    off: tuple[float, str] | None = None
    for row in rows:
        t = row.get("traffic_summary")
        expected = float(t["expected_bytes_per_rank"]) if t else 0.0
        if not t or expected <= 0 or int(row.get("size_bytes", 0)) < JUDGED_MIN_BYTES:
            continue
        label = f"{row['op']} {row.get('dtype', '')} {row['size_bytes']} B".replace("  ", " ")
        sent: Mapping[str, float] = t["bytes_per_rank"]
        for ifname, value in sent.items():
            share = value / expected
            if ifname not in (planned, "lo") and share > ELSEWHERE and (
                    elsewhere is None or share > elsewhere[0]):
                elsewhere = (share, (
                    f"traffic went through {ifname}, not the planned {planned}: {label} sent "
                    f"{value:,.0f} B per rank per iteration there ({share:.0%} of the "
                    f"{expected:,.0f} B the algorithm sends) and {sent.get(planned, 0.0):,.0f} B "
                    f"on {planned}; check NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME "
                    "(network.interface)"))
        ratio = sent.get(planned, 0.0) / expected
        if one_rank_per_node and not LOW <= ratio <= HIGH:
            badness = max(ratio, 1 / ratio) if ratio > 0 else float("inf")
            if off is None or badness > off[0]:
                more = "more" if ratio > HIGH else "fewer"
                off = (badness, (
                    f"{label}: {planned} sent {sent.get(planned, 0.0):,.0f} B per rank per "
                    f"iteration, {ratio:.2f}x the {expected:,.0f} B the algorithm sends: far "
                    f"{more} than expected"))
    return [item[1] for item in (elsewhere, off) if item is not None]


def own_namespaces(report: Mapping[str, Any]) -> bool:
    """Whether the ranks' counters are their nodes' own: containers have a network namespace
    each; nodes on the host's loopback (the process backend's fabric) read the host's, which
    every other program on the host sends through too, so their readings prove nothing and are
    not judged or shown."""
    return bool(report.get("network", {}).get("driver") != "loopback")


def add_traffic(report: dict[str, Any]) -> None:
    """Put each row's ``traffic_summary`` into ``report`` and its warnings into ``warnings``."""
    ranks = sorted(report.get("ranks", []), key=lambda r: int(r.get("rank", 0)))
    hostnames = [r.get("hostname") for r in ranks]
    rows = report.get("results", [])
    for row in rows:
        summary = row_traffic(row, hostnames)
        if summary is not None:
            row["traffic_summary"] = summary
    net = report.get("network", {})
    planned = str(net.get("fabric_interface") or net.get("interface") or "")
    one_per_node = int(report.get("nproc_per_node", 1)) == 1
    if own_namespaces(report):
        report.setdefault("warnings", []).extend(traffic_warnings(rows, planned, one_per_node))


def traffic_table(report: Mapping[str, Any], width: int = 120) -> Any:
    """Bytes per rank per iteration on each interface next to the algorithm's, one row per
    result row; interfaces that carried under 1 % of the expected bytes everywhere are left out
    (the planned one and the management network's are always shown). None when no row carries
    readings or the ranks share the host's counters (:func:`own_namespaces`)."""
    from orchestrator.report import format_size
    from orchestrator.tables import Column, fit_table

    rows = [r for r in report.get("results", []) if r.get("traffic_summary")]
    if not rows or not own_namespaces(report):
        return None
    net = report.get("network", {})
    planned = str(net.get("fabric_interface") or net.get("interface") or "")
    management = (net.get("management") or {}).get("interface")
    shown = {planned, *([management] if management else [])} | {
        name for r in rows for name, value in r["traffic_summary"]["bytes_per_rank"].items()
        if value > 0.01 * max(1.0, r["traffic_summary"]["expected_bytes_per_rank"])}
    names = sorted(shown, key=lambda n: (n != planned, n))
    columns = [Column("op", priority=3), Column("dtype", priority=2),
               Column("size", "right", 5), Column("in_place", priority=1),
               Column("expected B", "right", 5)]
    columns += [Column(name + (" (planned)" if name == planned else ""), "right",
                       5 if name == planned else 4) for name in names]
    cells = [[r["op"], r["dtype"], format_size(int(r["size_bytes"])), str(r["in_place"]).lower(),
              f"{r['traffic_summary']['expected_bytes_per_rank']:,.0f}",
              *(f"{r['traffic_summary']['bytes_per_rank'].get(n, 0.0):,.0f}" for n in names)]
             for r in rows]
    return fit_table("traffic: bytes sent per rank per iteration (kernel counters)", columns,
                     cells, width)
