"""``netorch sweep``: the same benchmark over variants of any settings, repeated, compared.

A variant is one value for each varied settings key (``network.mtu``, ``network.link.rate``,
``env.NCCL_SOCKET_NTHREADS``, ``bench.blocking``, ...): the sweep runs the Cartesian product of
the axes' values. Each run verifies what it varies where it can: the MTU (below), every rank's
environment for ``env.*`` keys (the ranks report the tuning variables they ran with), the process
group backend and the bench mode.

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
import itertools
import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from orchestrator.backends.docker import DockerBackend, remove_by_label
from orchestrator.backends.docker.warm import WarmDockerBackend, containers_by_node, start_cluster
from orchestrator.errors import ConfigError, NetorchError
from orchestrator.linerate import LineRate, LineRateOptions, measure_between
from orchestrator.linerate import annotate as annotate_line_rate
from orchestrator.linerate import ring_pairs as ring_pairs
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
from orchestrator.plan import CONTAINER_IFNAME, ClusterPlan, build_plan, new_run_id, with_start_gate
from orchestrator.report import build_report, format_size
from orchestrator.session import Echo, run_session
from orchestrator.settings import Settings

SWEEP_SCHEMA = 1
NO_LINK = "none"
CSV_FIELDS = (
    "variant", "link_rate", "mtu", "op", "dtype", "in_place", "size_bytes", "repeats",
    "busbw_median", "busbw_min", "busbw_max", "busbw_stdev", "tcp_single_gbps",
    "tcp_parallel_gbps", "efficiency", "verified",
)
"""The columns of sweep.csv after one column per varied key (``network.mtu``, ``env.X``, ...)."""
MTU_KEY = "network.mtu"
LINK_RATE_KEY = "network.link.rate"

Variant = tuple[tuple[str, Any], ...]
"""One configuration the sweep compares: (settings key, value) for every axis, in axis order."""


@dataclass(frozen=True)
class Axis:
    """One varied settings key and its values, in the order given (None: leave it unset)."""

    key: str
    values: tuple[Any, ...]


def variant_label(variant: Variant) -> str:
    """``network.mtu=1500 env.GLOO_SOCKET_IFNAME=eth0,eth0`` (``none`` for an unset value)."""
    return " ".join(f"{k}={NO_LINK if v is None else v}" for k, v in variant)


def value_name(key: str, value: Any) -> str:
    """How a verdict names one value of an axis: ``MTU 9000``, ``link 1gbit``, ``KEY=V``."""
    if key == MTU_KEY:
        return f"MTU {value}"
    if key == LINK_RATE_KEY:
        return f"link {value or NO_LINK}"
    return f"{key}={NO_LINK if value is None else value}"


@dataclass(frozen=True)
class SweepPoint:
    """One run of the sweep: which variant, which repeat, its place in the order."""

    index: int
    repeat: int
    variant: Variant

    @property
    def key(self) -> Variant:
        return self.variant

    @property
    def label(self) -> str:
        return variant_label(self.variant)

    def value(self, key: str, default: Any = None) -> Any:
        """This point's value of ``key``, or ``default`` when the sweep does not vary it."""
        return dict(self.variant).get(key, default)


@dataclass(frozen=True)
class SweepOptions:
    """What to vary and how to measure the TCP baseline."""

    axes: tuple[Axis, ...]
    repeats: int = 1
    tcp_seconds: float = 2.0
    tcp_streams: int = 4
    tcp_pairs: int = 1


def variants_of(axes: Sequence[Axis]) -> list[Variant]:
    """The Cartesian product of the axes' values, the first axis outermost."""
    return [tuple(zip((a.key for a in axes), values))
            for values in itertools.product(*(a.values for a in axes))]


def sweep_order(axes: Sequence[Axis], repeats: int) -> tuple[SweepPoint, ...]:
    """Every (repeat, variant) in interleaved order: each repeat visits every variant once
    before the next repeat starts, so drift spreads over all of them."""
    points: list[SweepPoint] = []
    for repeat in range(repeats):
        for variant in variants_of(axes):
            points.append(SweepPoint(len(points), repeat, variant))
    return tuple(points)


# Keys a sweep cannot vary: it runs on docker, writes to one folder, and gives each variant's
# warm cluster its own part of the subnet.
FIXED_KEYS = ("backend", "output", "network.subnet", "network.gateway", "network.ip_range",
              "network.name", "hosts", "placement")


def parse_vary(item: str) -> Axis:
    """``KEY=V1,V2`` or ``KEY=["a,b","c"]`` (a JSON list, for values holding commas) -> Axis.

    ``none`` or ``off`` leave a ``network.link.*`` key unset. ConfigError naming the item and the
    fix for anything else that is no list of values of one key."""
    key, sep, text = item.partition("=")
    key, text = key.strip(), text.strip()
    if not sep or not key or not text:
        raise ConfigError(f"--vary {item!r}: expected KEY=V1,V2 (or KEY='[\"a,b\",\"c\"]'), "
                          "e.g. --vary env.NCCL_SOCKET_NTHREADS=1,2,4")
    if key.split(".")[0] in FIXED_KEYS or key in FIXED_KEYS:
        raise ConfigError(f"--vary {key}: the sweep fixes {key} itself (docker backend, one "
                          "output folder, a subnet part per variant); vary another key")
    if text.startswith("["):
        try:
            loaded = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"--vary {key}: {text!r} is no JSON list ({e}); write e.g. "
                              f"--vary '{key}=[\"eth0\",\"eth0,eth0\"]'") from None
        if not isinstance(loaded, list) or not all(
                isinstance(v, (str, int, float, bool)) for v in loaded):
            raise ConfigError(f"--vary {key}: {text!r} must be a JSON list of strings or "
                              "numbers, e.g. [\"eth0\",\"eth0,eth0\"]")
        values: list[Any] = [str(v).lower() if isinstance(v, bool) else str(v) for v in loaded]
    else:
        values = [v.strip() for v in text.split(",") if v.strip()]
    if key.startswith("network.link."):
        values = [None if str(v).lower() in (NO_LINK, "off") else v for v in values]
    values = list(dict.fromkeys(values))
    if not values:
        raise ConfigError(f"--vary {item!r} names no value; give e.g. {key}=1,2")
    return Axis(key, tuple(values))


def sockets_preset(backend: str, ifname: str) -> list[Axis]:
    """The axes of ``--preset sockets`` for a process-group ``backend`` (gloo or nccl): the
    parallel connections each library can open between two ranks: gloo opens one connection per
    device listed in ``GLOO_SOCKET_IFNAME`` and pair of ranks (pytorch/pytorch#22978); NCCL's
    socket transport opens ``NCCL_SOCKET_NTHREADS x NCCL_NSOCKS_PERTHREAD`` (at most 64)."""
    if backend == "nccl":
        return [Axis("env.NCCL_SOCKET_NTHREADS", ("1", "2", "4")),
                Axis("env.NCCL_NSOCKS_PERTHREAD", ("1", "4"))]
    return [Axis("env.GLOO_SOCKET_IFNAME", tuple(",".join([ifname] * n) for n in (1, 2, 4)))]


def sockets_preset_for(settings: Settings) -> list[Axis]:
    """``--preset sockets`` for these settings: their process-group backend, and the interface
    the plan pins NCCL/gloo to (eth1 when a management network takes eth0)."""
    backend = settings.cluster.dist_backend
    if backend == "auto":
        backend = "nccl" if settings.gpu.per_node or settings.gpu.device_ids else "gloo"
    plan = build_plan(settings, new_run_id(), "docker")
    return sockets_preset(backend, plan.network.interface)


def variant_problems(variant: Variant, report: dict[str, Any]) -> list[str]:
    """Why a run did not run its variant, as far as the ranks' reports tell: an ``env.X`` value
    some rank did not have, another process-group backend, another bench mode."""
    out: list[str] = []
    for key, value in variant:
        if key.startswith("env.") and value is not None:
            name = key.removeprefix("env.")
            for rank in report.get("ranks", []):
                got = (rank.get("env") or {}).get(name)
                if got != str(value):
                    out.append(f"rank {rank.get('rank')}: {name}={got!r}, the variant asked for "
                               f"{str(value)!r}")
        elif key == "cluster.dist_backend" and value not in (None, "auto"):
            if report.get("dist_backend") != value:
                out.append(f"process group backend {report.get('dist_backend')}, the variant "
                           f"asked for {value}")
        elif key == "bench.blocking":
            ran = report.get("settings", {}).get("blocking", True)
            if str(ran).lower() != str(value).lower() and int(bool(ran)) != _as_int(value):
                out.append(f"bench ran blocking={ran}, the variant asked for {value}")
    return out


def _as_int(value: Any) -> int | None:
    text = str(value).strip().lower()
    return {"1": 1, "true": 1, "yes": 1, "0": 0, "false": 0, "no": 0}.get(text)


@dataclass
class RunProbes:
    """What the probe hook found in one run's containers (filled in the set-up phase)."""

    effective_mtu: dict[str, int | None] = field(default_factory=dict)
    path_mtu: list[PathMtuResult] = field(default_factory=list)
    tcp_single: list[TcpResult] = field(default_factory=list)
    tcp_parallel: list[TcpResult] = field(default_factory=list)
    seconds: float = 0.0  # how long the probes (and any extra set-up hook) took

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
        line = LineRate(probes.tcp_single, probes.tcp_parallel)  # fills the probes' lists
        measure_between(nodes, plan, LineRateOptions(
            options.tcp_seconds, options.tcp_streams, options.tcp_pairs), line)

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


def _record_variant(rec: Mapping[str, Any]) -> Variant:
    """A record's variant; records written before ``--vary`` existed carry MTU and link only."""
    if "variant" in rec:
        return tuple((k, v) for k, v in rec["variant"].items())
    return ((LINK_RATE_KEY, rec.get("link_rate")), (MTU_KEY, rec["mtu"]))


def aggregate(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (variant, op, dtype, in_place, size): busbw over repeats, the TCP baseline of
    that variant and the efficiency busbw / single-stream throughput. Each row carries the
    variant's value of every varied key as its own column, plus the run's MTU and link rate."""
    busbw: dict[tuple[Variant, str, str, bool, int], list[float]] = {}
    tcp1: dict[Variant, list[float]] = {}
    tcpn: dict[Variant, list[float]] = {}
    verified: dict[Variant, bool] = {}
    seen: dict[Variant, tuple[int, str | None]] = {}  # first-seen order; the run's MTU, link
    for rec in records:
        cfg = _record_variant(rec)
        seen.setdefault(cfg, (int(rec["mtu"]), rec.get("link_rate")))
        verified[cfg] = verified.get(cfg, True) and not rec["problems"]
        tcp1.setdefault(cfg, []).extend(t["bits_per_second"] / 8e9 for t in rec["probes"]["tcp_single"])
        tcpn.setdefault(cfg, []).extend(t["bits_per_second"] / 8e9 for t in rec["probes"]["tcp_parallel"])
        for row in rec["results"]:
            key = (cfg, row["op"], row["dtype"], bool(row["in_place"]), int(row["size_bytes"]))
            busbw.setdefault(key, []).append(float(row["busbw_gbps"]))
    order = {cfg: i for i, cfg in enumerate(seen)}
    rows = []
    for key in sorted(busbw, key=lambda k: (k[1], k[2], k[3], order[k[0]], k[4])):
        cfg, op, dtype, in_place, size = key
        s = _stats(busbw[key])
        single = statistics.median(tcp1[cfg]) if tcp1.get(cfg) else None
        par = statistics.median(tcpn[cfg]) if tcpn.get(cfg) else None
        mtu, rate = seen[cfg]
        rows.append({
            **dict(cfg),
            "variant": variant_label(cfg), "link_rate": _rate_label(rate), "mtu": mtu,
            "op": op, "dtype": dtype, "in_place": in_place,
            "size_bytes": size, "repeats": len(busbw[key]),
            "busbw_median": s["median"], "busbw_min": s["min"], "busbw_max": s["max"],
            "busbw_stdev": s["stdev"],
            "tcp_single_gbps": single, "tcp_parallel_gbps": par,
            "efficiency": s["median"] / single if single else None,
            "verified": verified[cfg],
        })
    return rows


@dataclass(frozen=True)
class Verdict:
    """The recommendation for one axis in one group (the other axes' values, op, dtype, side).

    ``best``: the value to use, None when no value leads beyond the spread; ``best_mtu`` the same
    for the MTU axis (None for other axes)."""

    group: str
    best_mtu: int | None
    text: str
    axis: str = MTU_KEY
    best: Any = None


def large_sizes(sizes: Sequence[int]) -> list[int]:
    """The sizes the recommendation scores: at least a quarter of the largest. Small messages
    measure latency, not the per-byte cost the MTU changes."""
    top = max(sizes)
    return sorted(s for s in sizes if s * 4 >= top)


def recommend(
    scores: Mapping[Any, Sequence[float]], unverified: Mapping[Any, str], group: str,
    axis: str = MTU_KEY,
) -> Verdict:
    """Name the best value of ``axis`` only when its lead over every other exceeds the
    run-to-run spread.

    ``scores[value]`` holds one busbw score per repeat. The spread between two values is the
    larger of their min..max ranges; the best value wins when its median leads each other median
    by more than that, i.e. the ranges cannot explain the gap.
    """
    def name(v: Any) -> str:
        return value_name(axis, v)

    def verdict(best: Any, text: str) -> Verdict:
        return Verdict(group, best if axis == MTU_KEY else None, text, axis, best)

    skipped = "".join(f"; {name(m)} not compared ({why})" for m, why in unverified.items())
    cands = {m: list(v) for m, v in scores.items() if v and m not in unverified}
    if len(cands) < 2:
        only = f"only {name(next(iter(cands)))} was verified" if cands else "no variant was verified"
        return verdict(None, f"{group}: nothing to compare: {only}{skipped}")
    med = {m: statistics.median(v) for m, v in cands.items()}
    best = max(med, key=lambda m: med[m])
    runner = max((m for m in med if m != best), key=lambda m: med[m])
    gain = med[best] - med[runner]
    rel = gain / med[runner] if med[runner] > 0 else math.inf
    lead = (f"{name(best)} {med[best]:.3f} GB/s vs {name(runner)} {med[runner]:.3f} GB/s "
            f"({rel:+.1%})")
    repeats = min(len(v) for v in cands.values())
    if repeats < 2:
        return verdict(None, (
            f"{group}: no significant difference can be claimed: {repeats} repeat gives no "
            f"run-to-run spread ({lead}); rerun with --repeats 3{skipped}"))

    def spread(m: Any) -> float:
        return max(max(cands[best]) - min(cands[best]), max(cands[m]) - min(cands[m]))

    within = [m for m in med if m != best and med[best] - med[m] <= spread(m)]
    if within:
        m = max(within, key=lambda x: med[x])
        return verdict(None, (
            f"{group}: no significant difference: {lead}; the gap to {name(m)} is within the "
            f"run-to-run spread ({spread(m):.3f} GB/s){skipped}"))
    return verdict(best, (
        f"{group}: use {name(best)}: {lead}, beyond the run-to-run spread "
        f"({spread(runner):.3f} GB/s){skipped}"))


def verdicts(records: Sequence[dict[str, Any]]) -> list[Verdict]:
    """One :class:`Verdict` per varied axis and group (the other axes' values, op, dtype,
    in_place), scored on the large sizes. A sweep of one variant gets one verdict saying there
    is nothing to compare."""
    if not records:
        return []
    keys = [k for k, _ in _record_variant(records[0])]
    values = {k: list(dict.fromkeys(dict(_record_variant(r))[k] for r in records)) for k in keys}
    varied = [k for k in keys if len(values[k]) > 1] or keys[-1:]
    # (axis, context, op, dtype, in_place) -> value -> repeat -> size -> busbw
    groups: dict[tuple[str, Variant, str, str, bool], dict[Any, dict[int, dict[int, float]]]] = {}
    unverified: dict[tuple[str, Variant], dict[Any, str]] = {}
    for rec in records:
        variant = _record_variant(rec)
        for axis in varied:
            context = tuple((k, v) for k, v in variant if k != axis)
            value = dict(variant)[axis]
            if rec["problems"]:
                unverified.setdefault((axis, context), {})[value] = rec["problems"][0]
            for row in rec["results"]:
                g = (axis, context, row["op"], row["dtype"], bool(row["in_place"]))
                per_rep = groups.setdefault(g, {}).setdefault(value, {})
                per_rep.setdefault(int(rec["repeat"]), {})[int(row["size_bytes"])] = float(
                    row["busbw_gbps"])
    out = []
    for (axis, context, op, dtype, in_place), per_value in groups.items():
        sizes = sorted({s for reps in per_value.values() for r in reps.values() for s in r})
        big = large_sizes(sizes)
        scores = {
            value: [statistics.fmean(r[s] for s in big if s in r) for r in reps.values()
                    if any(s in r for s in big)]
            for value, reps in per_value.items()
        }
        side = "in-place" if in_place else "out-of-place"
        where = variant_label(context)
        group = (f"{axis}{' at ' + where if where else ''}, {op} {dtype} {side}, mean busbw at "
                 f"{', '.join(format_size(s) for s in big)}")
        out.append(recommend(scores, unverified.get((axis, context), {}), group, axis))
    return out


# ------------------------------------------------------------------------------- the run


def run_sweep(
    variants: Mapping[Variant, Settings],
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

    ``variants`` holds validated settings for every variant (the CLI builds them with
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
    warm: dict[Variant, Any] = {}
    try:
        for point in sweep_order(options.axes, options.repeats):
            settings = variants[point.key]
            run_id = f"{sweep_id}-{point.index:02d}"
            plan = build_plan(settings, run_id, "docker")
            probes = RunProbes()
            base_hook = probe_hook(probes, options)

            def hook(p: ClusterPlan, containers: Mapping[str, Any], point: SweepPoint = point,
                     base_hook: Callable[[ClusterPlan, Mapping[str, Any]], None] = base_hook,
                     probes: RunProbes = probes) -> None:
                began = time.monotonic()
                base_hook(p, containers)
                if extra_hook is not None:
                    extra_hook(point, p, containers)
                probes.seconds = time.monotonic() - began

            if on_point is not None:
                on_point(point, run_id)
            began = time.monotonic()
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
            _record(records, point, plan, outcome, probes, sweep_id, out_dir / run_id,
                    time.monotonic() - began)
    finally:
        for cluster in warm.values():
            remove_by_label(client, cluster.name)
    return summarize(records, variants, options, sweep_id)


def run_timing(wall_s: float, probes_s: float, measure_s: Any) -> dict[str, float | None]:
    """Where one run's time went: the probes, the ranks' measurement (rank 0's own clock, from its
    process group up to its result), and the rest (a warm cluster's start for its first run, or
    the fresh containers' start and teardown; launching the ranks, collecting their logs)."""
    measure = float(measure_s) if isinstance(measure_s, (int, float)) else None
    rest = wall_s - probes_s - (measure or 0.0)
    return {"wall_s": round(wall_s, 3), "probes_s": round(probes_s, 3),
            "measure_s": None if measure is None else round(measure, 3),
            "other_s": round(max(0.0, rest), 3)}


def _record(records: list[dict[str, Any]], point: SweepPoint, plan: ClusterPlan, outcome: Any,
            probes: RunProbes, sweep_id: str, run_dir: Path, wall_s: float) -> None:
    """One run's report (with its probes and problems) to RUN_DIR/report.json and ``records``."""
    report = build_report(plan, outcome.result, outcome.elapsed_s)
    problems = (probes.problems(plan.network.mtu) + list(report["warnings"])
                + variant_problems(point.variant, report))
    if report["wrong_total"] not in (0, None):
        problems.append(f"{report['wrong_total']} wrong values")
    annotate_line_rate(report, LineRate(probes.tcp_single, probes.tcp_parallel))
    point_dict = {"index": point.index, "repeat": point.repeat, "variant": dict(point.variant),
                  "label": point.label}
    timing = run_timing(wall_s, probes.seconds, outcome.result.get("elapsed_s"))
    report["sweep"] = {"id": sweep_id, "point": point_dict, "probes": probes.to_dict(),
                       "problems": problems, "timing": timing}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    records.append({
        **point_dict, "mtu": plan.network.mtu,
        "link_rate": plan.network.link.rate if plan.network.link else None,
        "run_id": plan.run_id, "results": report["results"],
        "nodes": report["nodes"],
        "ranks": [{"rank": r.get("rank"), "node_rank": r.get("node_rank"),
                   "env": r.get("env")} for r in report["ranks"]],
        "probes": probes.to_dict(), "problems": problems, "elapsed_s": report["elapsed_s"],
        "timing": timing,
    })


def summarize(records: list[dict[str, Any]], variants: Mapping[Variant, Settings],
              options: SweepOptions, sweep_id: str) -> dict[str, Any]:
    """The sweep's summary: runs, aggregated rows, verdicts."""
    if not records:
        raise NetorchError("the sweep has no points; give at least one value to --vary")
    first = variants[next(iter(variants))]
    return {
        "schema": SWEEP_SCHEMA,
        "sweep_id": sweep_id,
        "nnodes": first.cluster.nodes,
        "procs_per_node": first.cluster.procs_per_node,
        "options": asdict(options),
        "axes": [{"key": a.key, "values": list(a.values)} for a in options.axes],
        "order": [r["label"] for r in records],
        "runs": records,
        "rows": aggregate(records),
        "recommendations": [asdict(v) for v in verdicts(records)],
        "timing": timing_summary(records),
    }


def timing_summary(records: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """The median of each part of the runs' timing (see :func:`run_timing`)."""
    out: dict[str, float | None] = {}
    for key in ("wall_s", "probes_s", "measure_s", "other_s"):
        values = [t[key] for r in records if (t := r.get("timing")) and t.get(key) is not None]
        out[key] = round(statistics.median(values), 3) if values else None
    return out


def timing_line(summary: Mapping[str, Any]) -> str | None:
    """One line for the terminal: where a run's time goes, and the knob for the probes."""
    t = summary.get("timing") or {}
    if t.get("wall_s") is None:
        return None
    parts = [f"probes {t['probes_s']:.1f} s (TCP: 2 tests x --tcp-seconds)"]
    if t.get("measure_s") is not None:
        parts.append(f"measurement {t['measure_s']:.1f} s")
    parts.append(f"start, launch and teardown {t['other_s']:.1f} s")
    return f"time per run (median): {t['wall_s']:.1f} s = " + " + ".join(parts)


def write_sweep(summary: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """sweep.json, sweep.csv, metrics.prom and busbw.png into ``out_dir``; return their paths."""
    from orchestrator.metrics import write_sweep_textfile

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "sweep.json", "csv": out_dir / "sweep.csv",
             "prom": out_dir / "metrics.prom", "png": out_dir / "busbw.png"}
    paths["json"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    with paths["csv"].open("w", newline="", encoding="utf-8") as fh:
        fields = [a["key"] for a in summary.get("axes", [])] + list(CSV_FIELDS)
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in summary["rows"]:
            writer.writerow({k: row.get(k) for k in fields})
    write_sweep_textfile(summary, out_dir)
    plot_sweep(summary, paths["png"])
    return paths


def plot_sweep(summary: dict[str, Any], path: Path) -> Path:
    """busbw vs size, one line per variant (and op when several), min..max error bars."""
    from orchestrator.plots import finish, new_axes

    rows = summary["rows"]
    many_ops = len({(r["op"], r["dtype"], r["in_place"]) for r in rows}) > 1
    series: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        label = r["variant"]
        if many_ops:
            label += f", {r['op']} {r['dtype']}" + (" in-place" if r["in_place"] else "")
        if not r["verified"]:
            label += " (NOT verified)"
        series.setdefault(label, []).append(r)
    fig, ax = new_axes(8, 4.8)
    for label, pts in series.items():
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
    axes = ", ".join(a["key"] for a in summary.get("axes", []))
    return finish(fig, ax, path, f"netorch sweep {summary['sweep_id']}: {summary['nnodes']} nodes "
                  f"x {summary['procs_per_node']}, {reps} repeat(s) per variant of {axes}",
                  fontsize=10)


def sweep_table(summary: dict[str, Any], width: int = 120) -> Table:
    """The comparison: one row per (op, size, variant) with spread, TCP baseline, efficiency;
    the columns that do not fit ``width`` are left out (one line per row, see tables.py)."""
    from orchestrator.tables import Column, fit_table

    rows = summary["rows"]
    one_op = len({(r["op"], r["dtype"], r["in_place"]) for r in rows}) <= 1
    columns = (
        Column("variant", priority=5), Column("op", priority=1 if one_op else 4),
        Column("size", "right", 5),
        Column("busbw GB/s", "right", 5), Column("min..max", "right", 3),
        Column("stdev", "right", 1), Column("n", "right", 1),
        Column("TCP 1 GB/s", "right", 3), Column("TCP N GB/s", "right", 1),
        Column("effic.", "right", 2), Column("verified", priority=4),
    )

    def f(v: float | None, spec: str = ".3f") -> str:
        return "-" if v is None else format(v, spec)

    def short(variant: str) -> str:
        return " ".join(part.removeprefix("network.").removeprefix("env.")
                        for part in variant.split(" "))

    cells = [[
        short(r["variant"]), f"{r['op']} {r['dtype']}" + ("" if r["in_place"] else " oop"),
        format_size(r["size_bytes"]), f(r["busbw_median"]),
        f"{r['busbw_min']:.3f}..{r['busbw_max']:.3f}", f(r["busbw_stdev"]), str(r["repeats"]),
        f(r["tcp_single_gbps"]), f(r["tcp_parallel_gbps"]), f(r["efficiency"], ".0%"),
        "yes" if r["verified"] else "[bold red]NO[/]",
    ] for r in rows]
    title = (f"netorch sweep {summary['sweep_id']} · {summary['nnodes']} nodes x "
             f"{summary['procs_per_node']} · busbw median over {len(summary['order'])} runs")
    return fit_table(title, columns, cells, width)
