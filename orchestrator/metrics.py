"""Prometheus on the host side: scrape targets, a textfile of the results, a Pushgateway push.

Three ways a run's numbers reach Prometheus:

* **Scrape** (training, live): every rank serves ``/metrics`` (train/telemetry.py). Before the nodes
  start, the session writes ``<output>/<run_id>/prometheus_targets.json`` in ``file_sd`` format, one
  target per rank, labelled ``run_id`` and ``netorch_node``, and the same file as
  ``<output>/_file_sd/<run_id>.json``: Prometheus accepts a wildcard only in a file_sd path's last
  element, so ``<output>/*/prometheus_targets.json`` is refused, while ``<output>/_file_sd/*.json``
  finds every run (compose/monitoring/ does that; ``_`` never starts a run id).
* **Textfile** (every run, final): ``metrics.prom`` in the run's output, Prometheus text format,
  for node_exporter's textfile collector or a later look.
* **Push** (bench and train, final): when ``metrics.pushgateway_url`` is set, the same final
  numbers go to a Pushgateway under ``job=netorch_<kind>``, ``cluster=<cluster.name>``. One group
  per cluster name, not per run: a new run replaces the last one's numbers instead of piling up
  groups forever; ``netorch_run_info{run_id=...}`` says which run they came from. An unreachable
  gateway is a warning after a few retries, never a failure of the run. Credentials in the URL
  (``http://user:pass@host:9091``) are sent as HTTP basic auth, never in the URL, and every
  message shows the URL through :func:`redact_url`.

Names follow Prometheus conventions (base units: seconds, bytes; ``_ratio`` for 0..1; ``_total``
only on counters; distributions as summaries or histograms; ``_info`` gauges of value 1 carry the
descriptive labels) and labels stay low-cardinality: op, dtype, size_bytes, in_place for bench rows.
Every output passes ``promtool check metrics`` (tests/test_prometheus_conventions.py).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile
from prometheus_client.metrics_core import Metric
from prometheus_client.exposition import basic_auth_handler, default_handler
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from orchestrator.plan import ClusterPlan

TARGETS_FILE = "prometheus_targets.json"
FILE_SD_DIR = "_file_sd"
TEXTFILE = "metrics.prom"
PUSH_ATTEMPTS = 3


def metrics_targets(plan: ClusterPlan) -> list[dict[str, Any]]:
    """The plan's rank endpoints as ``file_sd`` entries (empty when metrics are off).

    A rank listens on ``NETORCH_METRICS_PORT_BASE + local_rank`` of its node (the plan's env); the
    host reaches a container at its fixed IP, a local process node at 127.0.0.1.
    """
    entries = []
    for node in plan.nodes:
        env = node.env_dict
        if "NETORCH_METRICS_PORT_BASE" not in env:
            continue
        base = int(env["NETORCH_METRICS_PORT_BASE"])
        # Beside a management network, scrapes go there and leave the fabric to collectives.
        host = ("127.0.0.1" if plan.network.driver == "loopback"
                else node.management_ip or node.ip)
        entries.append({
            "targets": [f"{host}:{base + local}" for local in range(plan.nproc_per_node)],
            "labels": {"run_id": plan.run_id, "netorch_node": node.hostname,
                       "netorch_workload": plan.workload},
        })
    return entries


def redact_url(url: str) -> str:
    """``url`` with its password (and user) replaced by ``***``, for every message and report."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc))


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(``url`` without user info, user, password): credentials travel as basic auth, not in
    the URL (urllib would take ``user:pass@host`` for the host name)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    netloc = parts.netloc.rpartition("@")[2]
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return urlunsplit(parts._replace(netloc=netloc)), user, password


def _write_atomic(path: Path, text: str) -> None:
    """Prometheus may read the file at any moment: never let it see half of one.

    The temporary file has a unique name, so two writers (two runs sharing ``_file_sd``) never
    write into each other's half-written file, and nobody can plant one under a guessed name.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
        delete=False,
    ) as fh:
        tmp = Path(fh.name)
        try:
            fh.write(text)
        except BaseException:
            fh.close()
            tmp.unlink(missing_ok=True)
            raise
    try:
        # mkstemp makes the file 0600; Prometheus may run as another user and must read it.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_targets(plan: ClusterPlan, out_dir: Path) -> Path | None:
    """Write ``out_dir/prometheus_targets.json`` and its copy ``out_dir/../_file_sd/<run_id>.json``.

    Returns the first path, or None when the plan has no metrics endpoints.
    """
    entries = metrics_targets(plan)
    if not entries:
        return None
    text = json.dumps(entries, indent=2) + "\n"
    path = out_dir / TARGETS_FILE
    _write_atomic(path, text)
    _write_atomic(out_dir.parent / FILE_SD_DIR / f"{plan.run_id}.json", text)
    return path


def _gauge(registry: CollectorRegistry, name: str, doc: str, value: float | None,
           **labels: str) -> None:
    if value is None:
        return
    g = Gauge(name, doc, list(labels), registry=registry)
    (g.labels(**labels) if labels else g).set(float(value))


def report_registry(report: dict[str, Any]) -> CollectorRegistry:
    """A registry holding a finished run's report as gauges (bench rows or training figures)."""
    registry = CollectorRegistry()
    kind = str(report.get("kind", "bench"))
    versions = report.get("versions") or {}
    info = Gauge("netorch_run_info", "The run these numbers come from (value 1).",
                 ["run_id", "kind", "backend", "dist_backend", "netorch_version",
                  "torch_version"], registry=registry)
    info.labels(run_id=str(report["run_id"]), kind=kind, backend=str(report["backend"]),
                dist_backend=str(report["dist_backend"]),
                netorch_version=str(versions.get("netorch") or ""),
                torch_version=str(report.get("torch_version") or "")).set(1)
    _gauge(registry, "netorch_run_world_size", "Ranks in the run.", report.get("world_size"))
    _gauge(registry, "netorch_run_elapsed_seconds", "Wall time of the run.", report.get("elapsed_s"))
    _gauge(registry, "netorch_run_success", "1 when the run's report is ok.",
           1.0 if report.get("ok") else 0.0)
    if kind == "train":
        _train_gauges(registry, report)
    else:
        _bench_gauges(registry, report)
    return registry


def _bench_gauges(registry: CollectorRegistry, report: dict[str, Any]) -> None:
    names = ["op", "dtype", "size_bytes", "in_place"]
    busbw = Gauge("netorch_bench_busbw_bytes_per_second",
                  "Bus bandwidth (nccl-tests busbw) of one collective case.", names,
                  registry=registry)
    algbw = Gauge("netorch_bench_algbw_bytes_per_second",
                  "Algorithm bandwidth (size / time) of one collective case.", names,
                  registry=registry)
    seconds = Gauge("netorch_bench_time_seconds",
                    "Rank-averaged time of one collective op.", names, registry=registry)
    for row in report.get("results", []):
        labels = {"op": str(row["op"]), "dtype": str(row["dtype"]),
                  "size_bytes": str(row["size_bytes"]),
                  "in_place": "true" if row["in_place"] else "false"}
        busbw.labels(**labels).set(float(row["busbw_gbps"]) * 1e9)
        algbw.labels(**labels).set(float(row["algbw_gbps"]) * 1e9)
        seconds.labels(**labels).set(float(row["time_us"]["avg"]) * 1e-6)
    _gauge(registry, "netorch_bench_wrong_elements",
           "Mismatched elements over every checked case.", report.get("wrong_total"))


def _train_gauges(registry: CollectorRegistry, report: dict[str, Any]) -> None:
    _gauge(registry, "netorch_train_final_loss", "Training loss after the last step (mean over "
           "ranks).", report.get("final_loss"))
    _gauge(registry, "netorch_train_samples_per_second", "Global training throughput of the "
           "last attempt.", report.get("samples_per_s"))
    _gauge(registry, "netorch_train_comm_share_ratio", "Share of step time with a gradient "
           "allreduce in flight.", report.get("comm_share"))
    _gauge(registry, "netorch_train_comm_exposed_share_ratio", "Share of step time waiting on "
           "communication after the last bucket's launch.", report.get("comm_exposed_share"))
    _gauge(registry, "netorch_train_steps_completed", "Optimizer steps done.",
           report.get("steps_done"))
    _gauge(registry, "netorch_train_restarts", "Gang restarts during the run.",
           report.get("restarts"))
    times = report.get("step_time_s") or {}
    if times.get("p50") is not None:
        registry.register(_Families([_step_summary(times)]))


class _Families:
    """A collector that yields fixed metric families (types prometheus_client has no setter for)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def describe(self) -> list[Metric]:
        return self._families

    def collect(self) -> list[Metric]:
        return self._families


def _step_summary(times: dict[str, Any]) -> Metric:
    """Rank 0's step times as a Prometheus summary: quantiles 0.5 and 0.95, and ``_sum`` /
    ``_count`` when the report has them (a report of an older image has only the quantiles)."""
    name = "netorch_train_final_step_duration_seconds"
    summary = Metric(name, "Rank 0's step wall time over the run's last attempt (quantiles over "
                     "its steps).", "summary")
    for q, key in (("0.5", "p50"), ("0.95", "p95")):
        if times.get(key) is not None:
            summary.add_sample(name, {"quantile": q}, float(times[key]))
    if times.get("count") is not None and times.get("sum") is not None:
        summary.add_sample(name + "_count", {}, float(times["count"]))
        summary.add_sample(name + "_sum", {}, float(times["sum"]))
    return summary


def sweep_registry(summary: dict[str, Any]) -> CollectorRegistry:
    """A registry holding a sweep's comparison: busbw over repeats per configuration and size,
    the TCP baseline per configuration, and whether each configuration was verified."""
    registry = CollectorRegistry()
    info = Gauge("netorch_sweep_info", "The sweep these numbers come from (value 1).",
                 ["sweep_id", "netorch_version"], registry=registry)
    info.labels(sweep_id=str(summary["sweep_id"]),
                netorch_version=str(summary.get("versions", {}).get("netorch", ""))).set(1)
    # The variant (every varied key=value) keeps two variants with one MTU and link apart.
    names = ["variant", "link_rate", "mtu", "op", "dtype", "in_place", "size_bytes"]
    stats = {
        stat: Gauge(f"netorch_sweep_busbw_{stat}_bytes_per_second",
                    f"Bus bandwidth over the sweep's repeats: the {stat}.", names,
                    registry=registry)
        for stat in ("median", "min", "max")
    }
    efficiency = Gauge("netorch_sweep_efficiency_ratio",
                       "Median busbw over the single-stream TCP throughput of the configuration.",
                       names, registry=registry)
    config = ["variant", "link_rate", "mtu"]
    tcp = {
        kind: Gauge(f"netorch_sweep_tcp_{kind}_bytes_per_second",
                    f"TCP throughput between ring neighbours, {kind.replace('_', ' ')} (median).",
                    config, registry=registry)
        for kind in ("single_stream", "parallel_streams")
    }
    verified = Gauge("netorch_sweep_verified",
                     "1 when every run of the configuration got its MTU end to end.", config,
                     registry=registry)
    for row in summary.get("rows", []):
        labels = {"variant": str(row.get("variant", "")),
                  "link_rate": str(row["link_rate"]), "mtu": str(row["mtu"]),
                  "op": str(row["op"]), "dtype": str(row["dtype"]),
                  "in_place": "true" if row["in_place"] else "false",
                  "size_bytes": str(row["size_bytes"])}
        for stat, gauge in stats.items():
            gauge.labels(**labels).set(float(row[f"busbw_{stat}"]) * 1e9)
        if row.get("efficiency") is not None:
            efficiency.labels(**labels).set(float(row["efficiency"]))
        cfg = {"variant": labels["variant"], "link_rate": labels["link_rate"],
               "mtu": labels["mtu"]}
        for kind, key in (("single_stream", "tcp_single_gbps"),
                          ("parallel_streams", "tcp_parallel_gbps")):
            if row.get(key) is not None:
                tcp[kind].labels(**cfg).set(float(row[key]) * 1e9)
        verified.labels(**cfg).set(1.0 if row["verified"] else 0.0)
    return registry


def write_sweep_textfile(summary: dict[str, Any], out_dir: Path) -> Path:
    """Write the sweep's ``metrics.prom`` (Prometheus text format, atomically) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / TEXTFILE
    write_to_textfile(str(path), sweep_registry(summary))
    return path


def write_textfile(report: dict[str, Any], out_dir: Path) -> Path:
    """Write ``metrics.prom`` (Prometheus text format, atomically) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / TEXTFILE
    write_to_textfile(str(path), report_registry(report))
    return path


def push_report(
    report: dict[str, Any], url: str, cluster: str, timeout_s: float = 5.0,
    attempts: int = PUSH_ATTEMPTS,
) -> str | None:
    """Push the report's gauges to the Pushgateway at ``url``; return a warning or None.

    Retries transient failures (connection refused, time-outs, 5xx) with exponential back-off; any
    failure left after ``attempts`` becomes the returned warning, never an exception. A
    ``user:password@`` in ``url`` becomes HTTP basic auth; the warning names the URL redacted.
    """
    kind = str(report.get("kind", "bench"))
    registry = report_registry(report)
    target, user, password = split_credentials(url)
    handler: Callable[..., Callable[[], None]] = default_handler
    if user is not None or password is not None:
        def handler(url: str, method: str, timeout: float | None,
                    headers: list[tuple[str, str]], data: bytes) -> Callable[[], None]:
            return basic_auth_handler(url, method, timeout, headers, data, user, password)
    try:
        for attempt in Retrying(
            stop=stop_after_attempt(max(1, attempts)),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            retry=retry_if_exception_type(OSError),  # URLError and HTTPError are OSErrors
            reraise=True,
        ):
            with attempt:
                push_to_gateway(target, job=f"netorch_{kind}", registry=registry,
                                grouping_key={"cluster": cluster}, timeout=timeout_s,
                                handler=handler)
    except Exception as e:  # a metrics side channel must never fail the run
        reason = str(e).replace(url, redact_url(url))
        if password and len(password) >= 4:  # a short one would blank out ordinary letters
            reason = reason.replace(password, "***")
        return f"could not push {kind} results to the Pushgateway at {redact_url(url)}: " \
               f"{reason}; check metrics.pushgateway_url (the results are in the run's report)"
    return None
