"""Rank results -> report: ``report.json``, ``results.csv``, ``busbw.png`` and a terminal table.

The report puts the plan (what was asked) beside what the ranks saw (effective IPs and MTUs), and
flags every difference loudly: a requested MTU 9000 that became 1500 invalidates the experiment.
"""

from __future__ import annotations

import csv
import json
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.table import Table

from orchestrator.errors import OutputError
from orchestrator.plan import ClusterPlan, LinkSpec, NetworkSpec
from orchestrator.traffic import add_traffic
from train.results import decode_result_lines

REPORT_SCHEMA = 1
CSV_FIELDS = (
    "op", "dtype", "size_bytes", "count", "in_place", "time_us_min", "time_us_avg",
    "time_us_max", "algbw_gbps", "busbw_gbps", "wrong",
)


def link_record(network: NetworkSpec) -> dict[str, Any]:
    """The link emulation a run had: the common fields set, then per node and per pair (each the
    node's whole link, or the pair's own), as ``network.link`` would be written."""
    def fields(spec: LinkSpec) -> dict[str, str]:
        return {k: v for k, v in asdict(spec).items() if v is not None}

    out: dict[str, Any] = fields(network.link) if network.link is not None else {}
    if network.node_links:
        out["nodes"] = {node: fields(spec) for node, spec in network.node_links}
    if network.pair_links:
        out["pairs"] = {f"{a}:{b}": fields(spec) for a, b, spec in network.pair_links}
    return out


def build_report(plan: ClusterPlan, result: dict[str, Any], elapsed_s: float) -> dict[str, Any]:
    """Merge the plan and rank 0's result document into the report (schema 1)."""
    ranks: list[dict[str, Any]] = list(result.get("ranks", []))
    nodes = []
    warnings: list[str] = []
    for node in plan.nodes:
        mine = [r for r in ranks if r.get("node_rank") == node.node_rank]
        first = min(mine, key=lambda r: int(r.get("local_rank", 0))) if mine else {}
        ip = first.get("ipv4")
        mtu = first.get("mtu")
        nodes.append({
            "name": node.name,
            # Only with configured hosts: single-host reports keep their schema-1 shape.
            **({"host": node.host} if plan.hosts else {}),
            "role": node.role.value,
            "node_rank": node.node_rank,
            "planned_ip": node.ip,
            "ip": ip,
            "mtu": mtu,
            "hostname": first.get("hostname"),
            "ifname": first.get("ifname"),
            **({"management_ip": node.management_ip} if node.management_ip else {}),
            "ranks": sorted(int(r["rank"]) for r in mine if "rank" in r),
        })
        if not mine:
            warnings.append(f"node {node.name}: no rank reported its identity")
            continue
        if plan.network.driver != "loopback":
            if ip != node.ip:
                warnings.append(
                    f"node {node.name}: effective IP {ip} differs from the planned {node.ip}"
                )
            if plan.network.mtu is not None and mtu != plan.network.mtu:
                warnings.append(
                    f"node {node.name}: effective MTU {mtu} on {first.get('ifname')} differs from "
                    f"the requested {plan.network.mtu}; the measurement is not at the MTU you asked for"
                    + _mtu_advice(plan, mtu)
                )
    results = list(result.get("results", []))
    wrong_total = result.get("wrong_total")
    report = {
        "schema": REPORT_SCHEMA,
        "run_id": plan.run_id,
        "backend": plan.backend,
        "dist_backend": result.get("dist_backend", plan.dist_backend),
        "device": result.get("device"),
        "torch_version": result.get("torch_version"),
        "world_size": result.get("world_size", plan.world_size),
        "nnodes": plan.nnodes,
        "nproc_per_node": plan.nproc_per_node,
        "network": {
            "name": plan.network.name,
            "driver": plan.network.driver,
            "subnet": plan.network.subnet,
            "gateway": plan.network.gateway,
            "mtu": plan.network.mtu,
            **({"effective_mtu": _effective_mtu(nodes)} if plan.multi_host else {}),
            "interface": plan.network.interface,
            # Where collectives must go (the interface holding the fabric address), and the
            # management network beside it, if any.
            "fabric_interface": plan.fabric_interface,
            **({"link": link_record(plan.network)} if plan.network.shaped else {}),
            **({"management": {"name": plan.management.name, "subnet": plan.management.subnet,
                               "mtu": plan.management.mtu, "internal": plan.management.internal,
                               "interface": plan.management.interface}}
               if plan.management is not None else {}),
        },
        "nodes": nodes,
        "ranks": ranks,
        "settings": result.get("settings", {}),
        "results": results,
        "skipped": result.get("skipped", []),
        "notes": result.get("notes", []),
        "wrong_total": wrong_total,
        "warnings": merge_node_warnings(warnings),
        "elapsed_s": round(elapsed_s, 3),
        "ok": bool(results) and (wrong_total in (0, None)),
    }
    add_traffic(report)  # which interface carried each row (orchestrator/traffic.py)
    return report


def merge_node_warnings(warnings: list[str]) -> list[str]:
    """One warning for the nodes that share it: ``node a: X`` and ``node b: X`` become
    ``nodes a, b: X`` (an overlay's MTU warning on every node is one line, naming them)."""
    by_text: dict[str, list[str]] = {}
    for warning in warnings:
        head, sep, text = warning.partition(": ")
        per_node = bool(sep) and head.startswith("node ") and " " not in head[5:]
        key = text if per_node else warning
        by_text.setdefault(key, []).append(head[5:] if per_node else "")
    merged = []
    for text, nodes in by_text.items():
        if len(nodes) > 1 and all(nodes):
            merged.append(f"nodes {', '.join(nodes)}: {text}")
        elif all(nodes):
            merged.append(f"node {nodes[0]}: {text}")
        else:
            merged.append(text)
    return merged


def _effective_mtu(nodes: list[dict[str, Any]]) -> int | None:
    """The smallest MTU any node's interface really had: what the path carries."""
    mtus = [int(n["mtu"]) for n in nodes if isinstance(n.get("mtu"), int)]
    return min(mtus) if mtus else None


def _mtu_advice(plan: ClusterPlan, effective: Any) -> str:
    """For an overlay: the request that gives the MTU asked for (VXLAN takes its header off)."""
    requested = plan.network.mtu
    if plan.network.driver != "overlay" or not isinstance(effective, int) or requested is None:
        return ""
    overhead = requested - effective
    if overhead <= 0:
        return ""
    return (
        f" (the overlay's VXLAN encapsulation took {overhead} bytes; ask for network.mtu = "
        f"{requested + overhead} to get {requested} inside, if the hosts' own link MTU is at "
        f"least that)"
    )


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """An OSError in the block (a full disk, a read-only folder) becomes an
    :class:`~orchestrator.errors.OutputError` naming ``path``: one line, exit 4."""
    try:
        yield
    except OSError as e:
        raise OutputError(path, e) from None


def _write_json(report: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / "report.json"
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    with writing(path):
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write report.json, results.csv and busbw.png into ``out_dir``; return their paths.

    Raises OutputError naming the file that could not be written."""
    paths = {"json": _write_json(report, out_dir), "csv": out_dir / "results.csv"}
    with writing(paths["csv"]), paths["csv"].open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in report["results"]:
            writer.writerow(_csv_row(row))
    with writing(out_dir / "busbw.png"):
        png = plot_busbw(report, out_dir / "busbw.png")
    if png is not None:
        paths["png"] = png
    return paths


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    t = row.get("time_us", {})
    return {
        "op": row["op"], "dtype": row["dtype"], "size_bytes": row["size_bytes"],
        "count": row["count"], "in_place": int(bool(row["in_place"])),
        "time_us_min": t.get("min"), "time_us_avg": t.get("avg"), "time_us_max": t.get("max"),
        "algbw_gbps": row["algbw_gbps"], "busbw_gbps": row["busbw_gbps"], "wrong": row["wrong"],
    }


def _busbw_plot_inputs(report: dict[str, Any]) -> tuple[str, tuple[tuple[str, tuple[tuple[int, float], ...]], ...]] | None:
    """(title, series) of the busbw plot: everything the figure shows; None without rows."""
    rows = report["results"]
    if not rows:
        return None
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        label = f"{row['op']} {row['dtype']} {'in-place' if row['in_place'] else 'out-of-place'}"
        series.setdefault(label, []).append((int(row["size_bytes"]), float(row["busbw_gbps"])))
    mtu = report["network"].get("mtu")
    title = (f"netorch {report['run_id']}: {report['world_size']} ranks, "
             f"{report['dist_backend']}, {report['backend']}" + (f", MTU {mtu}" if mtu else "")
             + ("" if report.get("settings", {}).get("blocking", True) else ", non-blocking"))
    return title, tuple((label, tuple(sorted(points))) for label, points in sorted(series.items()))


def _draw_busbw(inputs: tuple[str, tuple[tuple[str, tuple[tuple[int, float], ...]], ...]]) -> tuple[Any, Any]:
    from orchestrator.plots import new_axes

    _, series = inputs
    fig, ax = new_axes(8, 4.5)
    for label, points in series:
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("bus bandwidth (GB/s)")
    return fig, ax


class _Prefetch:
    """A busbw plot being drawn in a background thread; ``png`` is None until done (or on error)."""

    def __init__(self, inputs: tuple[str, tuple[tuple[str, tuple[tuple[int, float], ...]], ...]]) -> None:
        self.inputs = inputs
        self.png: bytes | None = None
        self.thread = threading.Thread(target=self._run, name="prefetch-busbw", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from orchestrator.plots import finish_png

        try:
            fig, ax = _draw_busbw(self.inputs)
            self.png = finish_png(fig, ax, self.inputs[0])
        except Exception:  # noqa: BLE001 - plot_busbw draws it again in the foreground and reports
            self.png = None


_prefetched: dict[Any, _Prefetch] = {}
_prefetch_lock = threading.Lock()


def prefetch_busbw(plan: ClusterPlan, result: dict[str, Any]) -> None:
    """Start drawing the busbw plot of ``plan``'s ``result`` now, in a background thread.

    Called when rank 0's result arrives, so the drawing overlaps the nodes' teardown; the
    report's :func:`plot_busbw` then only writes the bytes when its figure is the same (same
    title and points), and draws it itself otherwise.
    """
    inputs = _busbw_plot_inputs(build_report(plan, result, 0.0))
    if inputs is None:
        return
    with _prefetch_lock:
        if inputs not in _prefetched:
            _prefetched[inputs] = _Prefetch(inputs)


def prefetch_hook(plan: ClusterPlan) -> Callable[[str, str], None]:
    """A session ``on_result`` hook that starts drawing the busbw plot when rank 0's result line
    arrives, so the drawing overlaps the nodes' teardown (see :func:`prefetch_busbw`)."""

    def hook(node: str, line: str) -> None:
        if node != plan.master.name:
            return

        def start() -> None:
            try:
                doc = decode_result_lines([line])
                if doc is not None and doc.get("kind") == "bench":
                    prefetch_busbw(plan, doc)
            except Exception:  # noqa: BLE001 - only a head start: the report draws it anyway
                pass

        # Off the log reader's thread: decoding and building the report take milliseconds.
        threading.Thread(target=start, name="prefetch-report", daemon=True).start()

    return hook


def plot_busbw(report: dict[str, Any], path: Path) -> Path | None:
    """busbw vs message size, one line per (op, dtype, in/out-of-place); log2 x axis."""
    inputs = _busbw_plot_inputs(report)
    if inputs is None:
        return None
    with _prefetch_lock:
        early = _prefetched.pop(inputs, None)
    if early is not None:
        early.thread.join()
        if early.png is not None:
            path.write_bytes(early.png)
            return path
    from orchestrator.plots import finish

    fig, ax = _draw_busbw(inputs)
    return finish(fig, ax, path, inputs[0])


_ROW_FIELDS: dict[str, type | tuple[type, ...]] = {
    "op": str, "dtype": str, "in_place": bool, "size_bytes": int, "busbw_gbps": (int, float)}


def saved_report_problem(data: Any) -> str | None:
    """What makes ``data`` (a report.json read back: ``--baseline``, ``netorch compare``) no
    netorch report whose figures can be read: no run id, results rows without their op, dtype,
    in_place, size or busbw, or a samples/s that is no number. None when it is one."""
    if not isinstance(data, dict) or "run_id" not in data:
        return "no run_id"
    rows = data.get("results", [])
    if not isinstance(rows, list):
        return "results is no list"
    for i, row in enumerate(rows):
        bad = [k for k, kind in _ROW_FIELDS.items()
               if not isinstance(row, dict) or not isinstance(row.get(k), kind)]
        if bad:
            return f"results[{i}] has no valid {', '.join(bad)}"
    sps = data.get("samples_per_s")
    if sps is not None and not isinstance(sps, (int, float)):
        return "samples_per_s is no number"
    return None


def row_key(row: dict[str, Any]) -> tuple[str, int]:
    """A result row's identity across runs: (``op dtype in-place|out-of-place``, size in bytes)."""
    side = "in-place" if row["in_place"] else "out-of-place"
    return f"{row['op']} {row['dtype']} {side}", int(row["size_bytes"])


def format_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def results_table(report: dict[str, Any], width: int = 120) -> Table:
    """nccl-tests-like table: out-of-place and in-place side by side per (op, dtype, size).

    A side no row has (torch offers no out-of-place all_reduce) gets no columns; the columns
    that do not fit ``width`` are left out, busbw last (one line per row, see tables.py).
    """
    from orchestrator.tables import Column, fit_table

    columns = [Column("op", priority=4), Column("dtype", priority=3),
               Column("size", "right", 5), Column("count", "right", 1)]
    sides = [s for s in (False, True) if any(bool(r["in_place"]) == s for r in report["results"])]
    for side in sides:
        tag = "in" if side else "out"
        columns += [Column(f"{tag}: time us", "right", 3), Column("algbw GB/s", "right", 2),
                    Column("busbw GB/s", "right", 5), Column("#wrong", "right", 4)]
    grouped: dict[tuple[str, str, int], dict[bool, dict[str, Any]]] = {}
    for row in report["results"]:
        key = (row["op"], row["dtype"], int(row["size_bytes"]))
        grouped.setdefault(key, {})[bool(row["in_place"])] = row
    rows = []
    for (op, dtype, size), by_side in grouped.items():
        count = next(iter(by_side.values()))["count"]
        cells = [op, dtype, format_size(size), str(count)]
        for side in sides:
            row = by_side.get(side)
            if row is None:
                cells += ["n/a"] * 4
                continue
            wrong = row["wrong"]
            cells += [
                f"{row['time_us']['avg']:.1f}",
                f"{row['algbw_gbps']:.3f}",
                f"{row['busbw_gbps']:.3f}",
                "-" if wrong is None else (str(wrong) if wrong == 0 else f"[bold red]{wrong}[/]"),
            ]
        rows.append(cells)
    title = (f"netorch {report['run_id']} · {report['world_size']} ranks · "
             f"{report['dist_backend']} on {report['backend']} · {bench_mode(report)}")
    return fit_table(title, columns, rows, width)


def bench_mode(report: dict[str, Any]) -> str:
    """Which timing produced a bench report's figures: ``blocking (-z 1)`` or
    ``non-blocking (-z 0)`` (reports from before the setting existed were blocking)."""
    if report.get("settings", {}).get("blocking", True):
        return "blocking (-z 1)"
    return "non-blocking (-z 0)"


def avg_busbw(report: dict[str, Any], min_bytes: int = 0) -> float:
    """Mean busbw over rows of at least ``min_bytes`` (nccl-tests' 'Avg bus bandwidth')."""
    values = [float(r["busbw_gbps"]) for r in report["results"] if int(r["size_bytes"]) >= min_bytes]
    return sum(values) / len(values) if values else math.nan


# --------------------------------------------------------------------------- training runs


def build_train_report(
    plan: ClusterPlan, result: dict[str, Any], elapsed_s: float, restarts: int = 0,
    failures: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Merge the plan and rank 0's ``kind: train`` document into a report (schema 1, kind train).

    The node/identity part is the bench report's (same warnings); bench-only keys are dropped.
    ``restarts`` and ``failures`` are the host's count, which the job cannot know on its own.
    """
    base = build_report(plan, result, elapsed_s)
    for key in ("results", "skipped", "wrong_total", "notes"):
        base.pop(key, None)
    curve = [list(p) for p in result.get("loss_curve", [])]
    final_loss = result.get("final_loss")
    steps = int(result.get("settings", {}).get("steps", 0))
    loss_fell = len(curve) >= 2 and float(curve[-1][1]) < float(curve[0][1])
    base.update({
        "kind": "train",
        "steps_done": result.get("steps_done"),
        "resumed_from": result.get("resumed_from"),
        "restarts": restarts,
        "failures": list(failures),
        "final_loss": final_loss,
        "loss_curve": curve,
        "loss_fell": loss_fell,
        "samples_per_s": result.get("samples_per_s"),
        "step_time_s": result.get("step_time_s"),
        "comm_share": result.get("comm_share"),
        "comm_exposed_share": result.get("comm_exposed_share"),
        "weights_sha256": result.get("weights_sha256"),
        "checkpoints": result.get("checkpoints"),
        "metrics_endpoint": result.get("metrics_endpoint"),
        "ok": final_loss is not None and math.isfinite(float(final_loss))
        and result.get("steps_done") == steps,
    })
    return base


def write_train_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write report.json and loss.csv (step, loss) into ``out_dir``; return their paths.

    Raises OutputError naming the file that could not be written."""
    paths = {"json": _write_json(report, out_dir), "csv": out_dir / "loss.csv"}
    with writing(paths["csv"]), paths["csv"].open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(("step", "loss"))
        writer.writerows(report["loss_curve"])
    return paths


def train_table(report: dict[str, Any]) -> Table:
    """The training run's figures as a two-column table."""
    table = Table(
        title=f"netorch {report['run_id']} · train · {report['world_size']} ranks · "
        f"{report['dist_backend']} on {report['backend']}",
        title_justify="left",
    )
    table.add_column("figure")
    table.add_column("value", justify="right")

    def fmt(value: Any, spec: str = ".4g", unit: str = "") -> str:
        return "-" if value is None else f"{value:{spec}}{unit}"

    times = report.get("step_time_s") or {}
    curve = report["loss_curve"]
    rows = [
        ("steps", fmt(report["steps_done"], "d")),
        ("loss first -> final", f"{fmt(curve[0][1] if curve else None)} -> "
                                f"{fmt(report['final_loss'])}"),
        ("samples/s (global)", fmt(report["samples_per_s"], ",.0f")),
        ("step time mean / p50 / p95", " / ".join(
            fmt(None if times.get(k) is None else times[k] * 1e3, ".2f", " ms")
            for k in ("mean", "p50", "p95"))),
        ("comm in flight (share of step)", fmt(report["comm_share"], ".1%")),
        ("comm exposed (share of step)", fmt(report["comm_exposed_share"], ".1%")),
        ("restarts / resumed from step", f"{report['restarts']} / "
                                         f"{fmt(report['resumed_from'], 'd')}"),
        ("weights sha256", str(report["weights_sha256"])[:16] + "…"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


# --------------------------------------------------------------------------- user runs


def build_run_report(
    plan: ClusterPlan, elapsed_s: float, exits: dict[str, str], restarts: int,
    failures: tuple[str, ...], error: str | None, log_dir: Path,
) -> dict[str, Any]:
    """The report of a user's job (``kind: run``): per-node exits, restarts, elapsed.

    ``exits`` maps node name to how it ended (``exit code 0``, ``killed by SIGKILL ...``) as far
    as known; ``error`` is the diagnosis of a failed run (None: every rank exited 0).
    """
    master = plan.master
    return {
        "schema": REPORT_SCHEMA,
        "kind": "run",
        "run_id": plan.run_id,
        "backend": plan.backend,
        "image": plan.runtime.image if plan.network.driver != "loopback" else None,
        "command": list(master.command),
        "workdir": plan.workdir,
        "world_size": plan.world_size,
        "nnodes": plan.nnodes,
        "nproc_per_node": plan.nproc_per_node,
        "master_addr": plan.master_addr,
        "master_port": plan.master_port,
        "network": {"name": plan.network.name, "subnet": plan.network.subnet,
                    "mtu": plan.network.mtu, "interface": plan.network.interface},
        "nodes": [
            {"name": n.name, "node_rank": n.node_rank, "ip": n.ip,
             **({"host": n.host} if plan.hosts else {}),
             "mounts": [{"source": m.source, "target": m.target, "read_only": m.read_only,
                         "kind": m.kind} for m in n.mounts],
             "exit": exits.get(n.name, "stopped by netorch" if error else "unknown"),
             "log": str(log_dir / f"{n.name}.log")}
            for n in plan.nodes
        ],
        "restarts": restarts,
        "failures": list(failures),
        "error": error,
        "elapsed_s": elapsed_s,
        "warnings": [],
        "ok": error is None,
    }


def write_run_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write report.json into ``out_dir``; return its path. Raises OutputError naming it when
    it cannot be written."""
    return {"json": _write_json(report, out_dir)}
