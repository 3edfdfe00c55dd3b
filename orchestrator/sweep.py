"""``netorch sweep``: the same benchmark at several MTUs (and link rates), repeated, compared.

Design. Each point of the sweep is one ordinary docker run (plan, up, supervise, down) of a
*gated* plan (:func:`orchestrator.plan.with_start_gate`): the containers start, the backend's
set-up phase shapes the link (tc) and runs this module's probe hook, and only then opens the gate
and lets torchrun start. So the probes see live containers with nothing else on the wire, the
benchmark sees no probe traffic, and no special "keep alive" command or second container set is
needed. The hook, per run:

- reads the effective MTU of every container's eth0 (the kernel's value, not the request);
- probes the path MTU of every ordered pair with don't-fragment pings (MTU - 28 bytes of payload
  passes, one byte more fails);
- measures TCP throughput between ring neighbours (iperf3, else ``train.tcptest``), single stream
  and parallel streams: the line-rate baseline busbw is compared against.

Points run interleaved (1500, 9000, 1500, 9000, ...) so slow drift of a shared machine hits every
MTU alike. The comparison reports busbw per size per MTU as median and min..max over repeats, and
names a best MTU only when its lead exceeds the run-to-run spread.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from orchestrator.backends.docker import DockerBackend, remove_by_label
from orchestrator.backends.docker.warm import WarmDockerBackend, containers_by_node, start_cluster
from orchestrator.errors import BackendError, NetorchError
from orchestrator.netprobe import (
    PathMtuResult,
    ProbeNode,
    TcpResult,
    concurrently,
    interface_mtu,
    pairs,
    path_mtu,
    tcp_throughput,
)
from orchestrator.plan import CONTAINER_IFNAME, ClusterPlan, build_plan, with_start_gate
from orchestrator.report import build_report, format_size
from orchestrator.session import Echo, run_session
from orchestrator.settings import Settings

SWEEP_SCHEMA = 1
NO_LINK = "none"
CSV_FIELDS = (
    "link_rate", "mtu", "op", "dtype", "in_place", "size_bytes", "repeats", "busbw_median",
    "busbw_min", "busbw_max", "busbw_stdev", "tcp_single_gbps", "tcp_parallel_gbps",
    "efficiency", "verified",
)

VariantKey = tuple[int, str | None]
"""(MTU, link rate or None): one configuration the sweep compares."""


@dataclass(frozen=True)
class SweepPoint:
    """One run of the sweep: which configuration, which repeat, its place in the order."""

    index: int
    repeat: int
    mtu: int
    link_rate: str | None

    @property
    def key(self) -> VariantKey:
        return (self.mtu, self.link_rate)


@dataclass(frozen=True)
class SweepOptions:
    """What to vary and how to measure the TCP baseline."""

    mtus: tuple[int, ...]
    link_rates: tuple[str | None, ...] = (None,)
    repeats: int = 1
    tcp_seconds: float = 2.0
    tcp_streams: int = 4
    tcp_pairs: int = 1


def sweep_order(
    mtus: Sequence[int], link_rates: Sequence[str | None], repeats: int
) -> tuple[SweepPoint, ...]:
    """Every (repeat, link rate, MTU) in interleaved order: each repeat visits every
    configuration once before the next repeat starts, so drift spreads over all of them."""
    points: list[SweepPoint] = []
    for repeat in range(repeats):
        for rate in link_rates:
            for mtu in mtus:
                points.append(SweepPoint(len(points), repeat, mtu, rate))
    return tuple(points)


@dataclass
class RunProbes:
    """What the probe hook found in one run's containers (filled in the set-up phase)."""

    effective_mtu: dict[str, int | None] = field(default_factory=dict)
    path_mtu: list[PathMtuResult] = field(default_factory=list)
    tcp_single: list[TcpResult] = field(default_factory=list)
    tcp_parallel: list[TcpResult] = field(default_factory=list)

    def problems(self, requested_mtu: int | None) -> list[str]:
        """Why this run does not measure the MTU it asked for (empty when verified)."""
        out = [
            f"{node}: effective MTU {mtu} on {CONTAINER_IFNAME}, requested {requested_mtu}"
            for node, mtu in self.effective_mtu.items() if mtu != requested_mtu
        ]
        out += [f"path {r.src} -> {r.dst}: {r.detail}" for r in self.path_mtu if not r.ok]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "effective_mtu": dict(self.effective_mtu),
            "path_mtu": [asdict(r) | {"ok": r.ok} for r in self.path_mtu],
            "tcp_single": [asdict(r) for r in self.tcp_single],
            "tcp_parallel": [asdict(r) for r in self.tcp_parallel],
        }


def ring_pairs(plan: ClusterPlan, limit: int) -> list[tuple[int, int]]:
    """(sender, receiver) node indices i -> i+1 around the ring, at most ``limit`` of them:
    the links a ring all_reduce uses."""
    n = len(plan.nodes)
    if n < 2:
        return []
    ring = [(i, (i + 1) % n) for i in range(n)] if n > 2 else [(0, 1)]
    return ring[: max(0, limit)]


def probe_hook(
    probes: RunProbes, options: SweepOptions
) -> Callable[[ClusterPlan, Mapping[str, Any]], None]:
    """The set-up hook of one sweep run: effective MTU, path MTU, TCP baseline into ``probes``."""

    def hook(plan: ClusterPlan, containers: Mapping[str, Any]) -> None:
        nodes = [ProbeNode(n.name, n.ip, containers[n.name]) for n in plan.nodes]
        mtus = concurrently(lambda n: interface_mtu(n.container, CONTAINER_IFNAME), nodes)
        probes.effective_mtu.update({n.name: m for n, m in zip(nodes, mtus)})
        if plan.network.mtu is not None:
            mtu = plan.network.mtu
            probes.path_mtu.extend(concurrently(
                lambda p: path_mtu(p[0], p[1].name, p[1].ip, mtu), pairs(nodes)))
        # One TCP test at a time: concurrent tests would share the host's CPUs and undercount.
        for src, dst in ring_pairs(plan, options.tcp_pairs):
            try:
                probes.tcp_single.append(
                    tcp_throughput(nodes[dst], nodes[src], options.tcp_seconds, 1))
                if options.tcp_streams > 1:
                    probes.tcp_parallel.append(tcp_throughput(
                        nodes[dst], nodes[src], options.tcp_seconds, options.tcp_streams))
            except RuntimeError as e:
                raise BackendError(f"TCP baseline: {e}") from e

    return hook


# ------------------------------------------------------------------------------- aggregation


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def _rate_label(rate: str | None) -> str:
    return rate or NO_LINK


def aggregate(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (link rate, MTU, op, dtype, in_place, size): busbw over repeats, the TCP
    baseline of that configuration and the efficiency busbw / single-stream throughput."""
    busbw: dict[tuple[str, int, str, str, bool, int], list[float]] = {}
    tcp1: dict[tuple[str, int], list[float]] = {}
    tcpn: dict[tuple[str, int], list[float]] = {}
    verified: dict[tuple[str, int], bool] = {}
    for rec in records:
        cfg = (_rate_label(rec["link_rate"]), int(rec["mtu"]))
        verified[cfg] = verified.get(cfg, True) and not rec["problems"]
        tcp1.setdefault(cfg, []).extend(t["bits_per_second"] / 8e9 for t in rec["probes"]["tcp_single"])
        tcpn.setdefault(cfg, []).extend(t["bits_per_second"] / 8e9 for t in rec["probes"]["tcp_parallel"])
        for row in rec["results"]:
            key = (*cfg, row["op"], row["dtype"], bool(row["in_place"]), int(row["size_bytes"]))
            busbw.setdefault(key, []).append(float(row["busbw_gbps"]))
    rows = []
    for key in sorted(busbw, key=lambda k: (k[0], k[2], k[3], k[4], k[1], k[5])):
        rate, mtu, op, dtype, in_place, size = key
        s = _stats(busbw[key])
        single = statistics.median(tcp1[(rate, mtu)]) if tcp1.get((rate, mtu)) else None
        par = statistics.median(tcpn[(rate, mtu)]) if tcpn.get((rate, mtu)) else None
        rows.append({
            "link_rate": rate, "mtu": mtu, "op": op, "dtype": dtype, "in_place": in_place,
            "size_bytes": size, "repeats": len(busbw[key]),
            "busbw_median": s["median"], "busbw_min": s["min"], "busbw_max": s["max"],
            "busbw_stdev": s["stdev"],
            "tcp_single_gbps": single, "tcp_parallel_gbps": par,
            "efficiency": s["median"] / single if single else None,
            "verified": verified[(rate, mtu)],
        })
    return rows


@dataclass(frozen=True)
class Verdict:
    """The recommendation for one group (link rate, op, dtype, in/out-of-place)."""

    group: str
    best_mtu: int | None
    text: str


def large_sizes(sizes: Sequence[int]) -> list[int]:
    """The sizes the recommendation scores: at least a quarter of the largest. Small messages
    measure latency, not the per-byte cost the MTU changes."""
    top = max(sizes)
    return sorted(s for s in sizes if s * 4 >= top)


def recommend(
    scores: Mapping[int, Sequence[float]], unverified: Mapping[int, str], group: str,
) -> Verdict:
    """Name the best MTU only when its lead over every other exceeds the run-to-run spread.

    ``scores[mtu]`` holds one busbw score per repeat. The spread between two MTUs is the larger of
    their min..max ranges; the best MTU wins when its median leads each other median by more than
    that, i.e. the ranges cannot explain the gap.
    """
    skipped = "".join(f"; MTU {m} not compared ({why})" for m, why in sorted(unverified.items()))
    cands = {m: list(v) for m, v in scores.items() if v and m not in unverified}
    if len(cands) < 2:
        only = f"only MTU {next(iter(cands))} was verified" if cands else "no MTU was verified"
        return Verdict(group, None, f"{group}: nothing to compare: {only}{skipped}")
    med = {m: statistics.median(v) for m, v in cands.items()}
    best = max(med, key=lambda m: med[m])
    runner = max((m for m in med if m != best), key=lambda m: med[m])
    gain = med[best] - med[runner]
    rel = gain / med[runner] if med[runner] > 0 else math.inf
    lead = (f"MTU {best} {med[best]:.3f} GB/s vs MTU {runner} {med[runner]:.3f} GB/s "
            f"({rel:+.1%})")
    repeats = min(len(v) for v in cands.values())
    if repeats < 2:
        return Verdict(group, None, (
            f"{group}: no significant difference can be claimed: {repeats} repeat gives no "
            f"run-to-run spread ({lead}); rerun with --repeats 3{skipped}"))

    def spread(m: int) -> float:
        return max(max(cands[best]) - min(cands[best]), max(cands[m]) - min(cands[m]))

    within = [m for m in med if m != best and med[best] - med[m] <= spread(m)]
    if within:
        m = max(within, key=lambda x: med[x])
        return Verdict(group, None, (
            f"{group}: no significant difference: {lead}; the gap to MTU {m} is within the "
            f"run-to-run spread ({spread(m):.3f} GB/s){skipped}"))
    return Verdict(group, best, (
        f"{group}: use MTU {best}: {lead}, beyond the run-to-run spread "
        f"({spread(runner):.3f} GB/s){skipped}"))


def verdicts(records: Sequence[dict[str, Any]]) -> list[Verdict]:
    """One :class:`Verdict` per (link rate, op, dtype, in_place), scored on the large sizes."""
    # (rate, op, dtype, in_place) -> MTU -> repeat -> size -> busbw
    groups: dict[tuple[str, str, str, bool], dict[int, dict[int, dict[int, float]]]] = {}
    unverified: dict[str, dict[int, str]] = {}
    for rec in records:
        rate = _rate_label(rec["link_rate"])
        if rec["problems"]:
            unverified.setdefault(rate, {})[int(rec["mtu"])] = rec["problems"][0]
        for row in rec["results"]:
            g = (rate, row["op"], row["dtype"], bool(row["in_place"]))
            per_rep = groups.setdefault(g, {}).setdefault(int(rec["mtu"]), {})
            per_rep.setdefault(int(rec["repeat"]), {})[int(row["size_bytes"])] = float(row["busbw_gbps"])
    out = []
    for (rate, op, dtype, in_place), per_mtu in sorted(groups.items()):
        sizes = sorted({s for reps in per_mtu.values() for r in reps.values() for s in r})
        big = large_sizes(sizes)
        scores = {
            mtu: [statistics.fmean(r[s] for s in big if s in r) for r in reps.values()
                  if any(s in r for s in big)]
            for mtu, reps in per_mtu.items()
        }
        side = "in-place" if in_place else "out-of-place"
        group = (f"link {rate}, {op} {dtype} {side}, mean busbw at "
                 f"{', '.join(format_size(s) for s in big)}")
        out.append(recommend(scores, unverified.get(rate, {}), group))
    return out


# ------------------------------------------------------------------------------- the run


def run_sweep(
    variants: Mapping[VariantKey, Settings],
    options: SweepOptions,
    client: Any,
    sweep_id: str,
    out_dir: Path,
    echo: Echo | None = None,
    on_point: Callable[[SweepPoint, str], None] | None = None,
    extra_hook: Callable[[SweepPoint, ClusterPlan, Mapping[str, Any]], None] | None = None,
    fresh: bool = False,
    hosts: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run every point of the sweep in order; write each run's report; return the summary.

    ``variants`` holds validated settings for every (MTU, link rate) (the CLI builds them with
    the same validation as ``netorch bench``). ``extra_hook`` runs in each run's set-up phase
    after the probes (benchmarks/sweep_vs_loop.py times its independent loop there).

    By default every variant gets one warm cluster (``netorch up``'s), started before the first
    run and removed after the last, and every run forks fresh ranks on it; the probes run on its
    idle nodes before each run, as in a gated cold start. ``fresh=True`` starts and removes the
    containers of every run instead (the first landing's behaviour, for comparison).
    ``hosts`` (host name -> client; ``client`` is the manager's) runs a multi-host plan across
    them, fresh only: warm clusters live on one daemon.
    """
    records: list[dict[str, Any]] = []
    warm: dict[VariantKey, Any] = {}
    try:
        for point in sweep_order(options.mtus, options.link_rates, options.repeats):
            settings = variants[point.key]
            run_id = f"{sweep_id}-{point.index:02d}"
            plan = build_plan(settings, run_id, "docker")
            probes = RunProbes()
            base_hook = probe_hook(probes, options)

            def hook(p: ClusterPlan, containers: Mapping[str, Any], point: SweepPoint = point,
                     base_hook: Callable[[ClusterPlan, Mapping[str, Any]], None] = base_hook,
                     ) -> None:
                base_hook(p, containers)
                if extra_hook is not None:
                    extra_hook(point, p, containers)

            if on_point is not None:
                on_point(point, run_id)
            if fresh or plan.multi_host:
                backend: Any = DockerBackend(client, after_start=hook)
                if hosts is not None and plan.multi_host:
                    from orchestrator.backends.swarm import MultiHostDockerBackend

                    backend = MultiHostDockerBackend(hosts, after_start=hook)
                plan = with_start_gate(plan)
            else:
                if point.key not in warm:
                    # Idle longer than any run of another variant may take; a sweep killed
                    # outright still leaves nothing for long.
                    warm[point.key] = start_cluster(
                        client, settings, f"{sweep_id}-v{len(warm)}",
                        float(settings.cluster.job_timeout_s + 60),
                        str((out_dir / "warm").resolve()))
                cluster = warm[point.key]
                hook(plan, containers_by_node(plan, cluster))
                backend = WarmDockerBackend(client, cluster)
            outcome = run_session(backend, plan, out_dir / run_id,
                                  timeout_s=settings.cluster.job_timeout_s, echo=echo)
            _record(records, point, plan, outcome, probes, sweep_id, out_dir / run_id)
    finally:
        for cluster in warm.values():
            remove_by_label(client, cluster.name)
    return summarize(records, variants, options, sweep_id)


def _record(records: list[dict[str, Any]], point: SweepPoint, plan: ClusterPlan, outcome: Any,
            probes: RunProbes, sweep_id: str, run_dir: Path) -> None:
    """One run's report (with its probes and problems) to RUN_DIR/report.json and ``records``."""
    report = build_report(plan, outcome.result, outcome.elapsed_s)
    problems = probes.problems(plan.network.mtu) + list(report["warnings"])
    if report["wrong_total"] not in (0, None):
        problems.append(f"{report['wrong_total']} wrong values")
    report["sweep"] = {"id": sweep_id, "point": asdict(point), "probes": probes.to_dict(),
                       "problems": problems}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    records.append({
        **asdict(point), "run_id": plan.run_id, "results": report["results"],
        "nodes": report["nodes"], "probes": probes.to_dict(), "problems": problems,
        "elapsed_s": report["elapsed_s"],
    })


def summarize(records: list[dict[str, Any]], variants: Mapping[VariantKey, Settings],
              options: SweepOptions, sweep_id: str) -> dict[str, Any]:
    """The sweep's summary: runs, aggregated rows, verdicts."""
    if not records:
        raise NetorchError("the sweep has no points; give at least one --mtu")
    first = variants[next(iter(variants))]
    return {
        "schema": SWEEP_SCHEMA,
        "sweep_id": sweep_id,
        "nnodes": first.cluster.nodes,
        "procs_per_node": first.cluster.procs_per_node,
        "options": asdict(options),
        "order": [f"{_rate_label(r['link_rate'])}/{r['mtu']}" for r in records],
        "runs": records,
        "rows": aggregate(records),
        "recommendations": [asdict(v) for v in verdicts(records)],
    }


def write_sweep(summary: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """sweep.json, sweep.csv and busbw.png into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "sweep.json", "csv": out_dir / "sweep.csv",
             "png": out_dir / "busbw.png"}
    paths["json"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    with paths["csv"].open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in summary["rows"]:
            writer.writerow({k: row[k] for k in CSV_FIELDS})
    plot_sweep(summary, paths["png"])
    return paths


def plot_sweep(summary: dict[str, Any], path: Path) -> Path:
    """busbw vs size, one line per MTU (and link rate / op when several), min..max error bars."""
    from orchestrator.plots import finish, new_axes

    rows = summary["rows"]
    many_rates = len({r["link_rate"] for r in rows}) > 1
    many_ops = len({(r["op"], r["dtype"], r["in_place"]) for r in rows}) > 1
    series: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        label = f"MTU {r['mtu']}"
        if many_rates:
            label += f", link {r['link_rate']}"
        if many_ops:
            label += f", {r['op']} {r['dtype']}" + (" in-place" if r["in_place"] else "")
        if not r["verified"]:
            label += " (NOT verified)"
        series.setdefault(label, []).append(r)
    fig, ax = new_axes(8, 4.8)
    for label, pts in sorted(series.items(), key=lambda kv: (kv[1][0]["link_rate"], kv[1][0]["mtu"])):
        pts.sort(key=lambda r: r["size_bytes"])
        x = [r["size_bytes"] for r in pts]
        y = [r["busbw_median"] for r in pts]
        err = [[r["busbw_median"] - r["busbw_min"] for r in pts],
               [r["busbw_max"] - r["busbw_median"] for r in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=4, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({r["size_bytes"] for r in rows}))
    ax.set_xticklabels([format_size(s).replace(" ", "") for s in sorted({r["size_bytes"] for r in rows})])
    ax.set_xlabel("message size")
    ax.set_ylabel("bus bandwidth (GB/s): median, bars min..max")
    reps = summary["options"]["repeats"]
    return finish(fig, ax, path, f"netorch sweep {summary['sweep_id']}: {summary['nnodes']} nodes "
                  f"x {summary['procs_per_node']}, {reps} repeat(s) per MTU", fontsize=10)


def sweep_table(summary: dict[str, Any]) -> Table:
    """The comparison: one row per (link, op, size, MTU) with spread, TCP baseline, efficiency."""
    table = Table(title=f"netorch sweep {summary['sweep_id']} · {summary['nnodes']} nodes x "
                  f"{summary['procs_per_node']} · order {' '.join(summary['order'])}",
                  title_justify="left")
    for col, right in (("link", False), ("op", False), ("size", True), ("MTU", True),
                       ("busbw GB/s (median)", True), ("min..max", True), ("stdev", True),
                       ("n", True), ("TCP 1 stream GB/s", True), ("TCP N streams GB/s", True),
                       ("efficiency", True), ("verified", False)):
        table.add_column(col, justify="right" if right else "left")

    def f(v: float | None, spec: str = ".3f") -> str:
        return "-" if v is None else format(v, spec)

    for r in summary["rows"]:
        table.add_row(
            r["link_rate"], f"{r['op']} {r['dtype']}" + ("" if r["in_place"] else " oop"),
            format_size(r["size_bytes"]), str(r["mtu"]), f(r["busbw_median"]),
            f"{r['busbw_min']:.3f}..{r['busbw_max']:.3f}", f(r["busbw_stdev"]), str(r["repeats"]),
            f(r["tcp_single_gbps"]), f(r["tcp_parallel_gbps"]), f(r["efficiency"], ".0%"),
            "yes" if r["verified"] else "[bold red]NO[/]",
        )
    return table
