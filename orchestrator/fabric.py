"""``netorch fabric``: the pairwise link matrix, its outliers and the verdict, and its files.

The nodes measure (``train/fabric.py``: bandwidth both ways and latency for every pair, N/2
disjoint pairs at a time); this module reads rank 0's document and decides.

**The verdict.** A pair's bandwidth is the slower of its two directions (a link is as good as its
worse way). Bandwidth noise is multiplicative, so everything is compared in log-ratios. The
reference is robust to one bad node: each node's score is the high median of its pairs, the
reference is the median of the node scores. The spread is 1.4826 x the median absolute deviation
(MAD) of the pairs' log-ratios to the reference, over the pairs that touch no node whose score is
already below ``slow_fraction``. Plain median and MAD over all pairs would not do: with 4 nodes a
slow node is in half of the 6 pairs and would drag both to itself. A pair is **slow** when it is
below ``slow_fraction`` x reference *and* ``mad_k`` robust sigmas below it. Then:

- a node all of whose pairs (two or more) are slow is a **suspect node**;
- a slow pair not explained by a suspect node is a **suspect link**;
- no slow pair: **healthy**.

Pairs are compared within their scope: on several hosts, intra-host pairs with intra-host pairs
and inter-host pairs with inter-host pairs (an overlay between hosts is slower by nature). With
fewer than 3 nodes there is nothing to compare one pair with: the matrix is written, the verdict
says so, and no suspect is named.

Latency is measured and reported (matrix, CSV, outliers by the same rule, higher = worse) but does
not decide the verdict: on a shared CPU small-message round trips move with the load far more than
bandwidth does.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from orchestrator.errors import ResultError
from orchestrator.plan import ClusterPlan

MAD_TO_SIGMA = 1.4826  # a normal distribution's sigma per MAD
INTRA, INTER = "intra-host", "inter-host"
Pair = tuple[int, int]
Status = Literal["healthy", "slow node", "slow link", "slow nodes and links", "too few nodes"]
CSV_FIELDS = ("a", "b", "scope", "gbps_a_to_b", "gbps_b_to_a", "gbps", "latency_us", "slow",
              "latency_outlier")


@dataclass(frozen=True)
class Outliers:
    """One metric's robust statistics over a scope and the pairs outside them: the reference
    value, the robust sigma of the log-ratios to it, and the value beyond which a pair is out."""

    reference: float
    spread: float
    limit: float
    outliers: tuple[Pair, ...]


def high_median(values: Sequence[float]) -> float:
    """The median, or the upper of the two middle values for an even count."""
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def outliers(values: Mapping[Pair, float], fraction: float, mad_k: float,
             higher_is_worse: bool = False) -> Outliers | None:
    """The pairs of ``values`` that are far worse than the rest (see the module docstring);
    None when fewer than 3 nodes take part (nothing to compare).

    Worse is compared as a ratio to the reference (bandwidth noise is multiplicative): a pair is
    an outlier when its ratio is beyond ``fraction`` (its inverse when higher is worse) and its
    log-ratio beyond ``mad_k`` robust sigmas. The sigma comes from the pairs that touch no node
    whose own score is already beyond ``fraction``: a slow node of 4 is in half of the pairs,
    which would break any median-based spread of all of them.
    """
    nodes = sorted({n for pair in values for n in pair})
    if len(nodes) < 3 or any(v <= 0 for v in values.values()):
        return None
    sign = -1.0 if higher_is_worse else 1.0  # "worse" is always "lower" after the sign flip
    logs = {p: sign * math.log(v) for p, v in values.items()}
    scores = {n: high_median([x for p, x in logs.items() if n in p]) for n in nodes}
    reference = statistics.median(scores.values())
    bad_nodes = {n for n, x in scores.items() if x - reference < math.log(fraction)}
    clean = [abs(x - reference) for p, x in logs.items() if not bad_nodes & set(p)]
    spread = MAD_TO_SIGMA * statistics.median(clean) if clean else 0.0
    cut = min(math.log(fraction), -mad_k * spread)
    bad = tuple(p for p, x in sorted(logs.items()) if x - reference < cut)
    return Outliers(math.exp(sign * reference), spread, math.exp(sign * (reference + cut)), bad)


@dataclass(frozen=True)
class Verdict:
    """What the matrix says: ``suspects`` are node names or (node, node) links."""

    status: Status
    suspect_nodes: tuple[str, ...]
    suspect_links: tuple[tuple[str, str], ...]
    text: str

    @property
    def suspects(self) -> list[str | list[str]]:
        return [*self.suspect_nodes, *([a, b] for a, b in self.suspect_links)]


def verdict(names: Sequence[str], slow: Iterable[Pair], pairs: Iterable[Pair],
            comparable: bool) -> Verdict:
    """Name the node whose pairs are all slow, or the slow links, or say healthy."""
    if not comparable:
        return Verdict("too few nodes", (), (),
                       "too few nodes to compare: 3 or more give pairs to compare each pair with")
    slow_set, all_pairs = set(slow), list(pairs)
    bad_nodes = []
    for i, name in enumerate(names):
        mine = [p for p in all_pairs if i in p]
        if len(mine) >= 2 and all(p in slow_set for p in mine):
            bad_nodes.append(i)
    links = sorted(p for p in slow_set if not any(i in p for i in bad_nodes))
    nodes_named = tuple(names[i] for i in bad_nodes)
    links_named = tuple((names[a], names[b]) for a, b in links)
    if not nodes_named and not links_named:
        return Verdict("healthy", (), (), "healthy: no pair is far below the others")
    parts = []
    if nodes_named:
        parts.append(f"node {', '.join(nodes_named)}: every pair with it is slow")
    if links_named:
        parts.append(f"link {', '.join(f'{a} <-> {b}' for a, b in links_named)}: slow while "
                     "both ends are fine with every other node")
    status: Status = ("slow nodes and links" if nodes_named and links_named
                      else "slow node" if nodes_named else "slow link")
    return Verdict(status, nodes_named, links_named, "; ".join(parts))


def _node_names(plan: ClusterPlan, doc: Mapping[str, Any]) -> list[str]:
    """Rank r's node short name (one rank per node: rank = node rank)."""
    by_rank = {node.node_rank: node.hostname for node in plan.nodes}
    world = int(doc.get("world_size", 0))
    if world != plan.nnodes:
        raise ResultError(f"fabric result of run {plan.run_id} has {world} ranks for "
                          f"{plan.nnodes} nodes; it needs one rank per node")
    return [by_rank[r] for r in range(world)]


def analyse(plan: ClusterPlan, doc: Mapping[str, Any], slow_fraction: float,
            mad_k: float) -> dict[str, Any]:
    """``fabric.json``'s document from rank 0's result: nodes, matrices, pairs, verdict."""
    names = _node_names(plan, doc)
    n = len(names)
    host = {node.node_rank: node.host for node in plan.nodes}
    directed: dict[Pair, float] = {(int(x["src"]), int(x["dst"])): float(x["gbps"])
                                   for x in doc.get("bandwidth", [])}
    latency: dict[Pair, float] = {(int(x["a"]), int(x["b"])): float(x["us"])
                                  for x in doc.get("latency", [])}
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
    if doc.get("schedule") == "bisect":  # only the pairs the bisection measured
        pairs = [p for p in pairs if p in directed and p[::-1] in directed]
    missing = [p for p in pairs if p not in directed or p[::-1] not in directed]
    if missing or not pairs:
        a, b = missing[0] if missing else (0, 1)
        raise ResultError(f"fabric result of run {plan.run_id} lacks the pair {names[a]} <-> "
                          f"{names[b]} ({max(1, len(missing))} pair(s) missing)")
    gbps = {p: min(directed[p], directed[p[::-1]]) for p in pairs}

    def scope(p: Pair) -> str:
        return INTRA if host[p[0]] == host[p[1]] else INTER

    slow: list[Pair] = []
    slow_lat: list[Pair] = []
    stats: dict[str, Any] = {}
    comparable = False
    for sc in sorted({scope(p) for p in pairs}):
        mine = {p: v for p, v in gbps.items() if scope(p) == sc}
        bw = outliers(mine, slow_fraction, mad_k)
        lat_values = {p: v for p, v in latency.items() if p in mine}
        lat = outliers(lat_values, slow_fraction, mad_k, higher_is_worse=True)
        if bw is None:
            continue
        comparable = True
        slow += bw.outliers
        stats[sc] = {"reference_gbps": bw.reference, "log_sigma": bw.spread,
                     "slow_below_gbps": bw.limit}
        if lat is not None:
            slow_lat += lat.outliers
            stats[sc].update({"latency_reference_us": lat.reference,
                              "latency_outlier_above_us": lat.limit})
    result = verdict(names, slow, pairs, comparable)
    bw_matrix = [[directed.get((i, j)) for j in range(n)] for i in range(n)]
    lat_matrix = [[latency.get((min(i, j), max(i, j))) if i != j else None for j in range(n)]
                  for i in range(n)]
    ranks = {int(r["rank"]): r for r in doc.get("ranks", [])}
    return {
        "kind": "fabric",
        "run_id": plan.run_id,
        "backend": plan.backend,
        "dist_backend": doc.get("dist_backend"),
        "nodes": [{"rank": i, "name": names[i], "container": plan.nodes[i].name,
                   "ip": plan.nodes[i].ip, "host": host[i],
                   "ifname": ranks.get(i, {}).get("ifname")} for i in range(n)],
        "settings": {**doc.get("settings", {}), "slow_fraction": slow_fraction, "mad_k": mad_k},
        "schedule": doc.get("schedule", "all"),
        "rounds": doc.get("rounds", []),
        "matrix": {"bandwidth_gbps": bw_matrix, "latency_us": lat_matrix,
                   "note": "bandwidth_gbps[i][j]: rank i -> rank j; latency_us: one way"},
        "pairs": [{"a": names[a], "b": names[b], "scope": scope((a, b)),
                   "gbps_a_to_b": directed[(a, b)], "gbps_b_to_a": directed[(b, a)],
                   "gbps": gbps[(a, b)], "latency_us": latency.get((a, b)),
                   "slow": (a, b) in slow, "latency_outlier": (a, b) in slow_lat}
                  for a, b in pairs],
        "statistics": stats,
        "status": result.status,
        "verdict": result.text,
        "suspects": result.suspects,
        "elapsed_s": doc.get("elapsed_s"),
    }


def write_fabric(report: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """``fabric.json``, ``fabric.csv`` and the heatmap ``fabric.png`` in ``out_dir``."""
    from orchestrator.report import writing

    paths = {"json": out_dir / "fabric.json", "csv": out_dir / "fabric.csv",
             "png": out_dir / "fabric.png"}
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    with writing(paths["json"]):
        paths["json"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    with writing(paths["csv"]), paths["csv"].open("w", newline="", encoding="utf-8") as f:
        out = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        out.writeheader()
        for row in report["pairs"]:
            out.writerow({k: row[k] for k in CSV_FIELDS})
    with writing(paths["png"]):
        heatmap(report, paths["png"])
    return paths


def heatmap(report: Mapping[str, Any], path: Path) -> Path:
    """The bandwidth matrix as a heatmap (sender rows, receiver columns), slow pairs framed."""
    from orchestrator.plots import new_axes

    names = [node["name"] for node in report["nodes"]]
    n = len(names)
    matrix = [[v if v is not None else float("nan") for v in row]
              for row in report["matrix"]["bandwidth_gbps"]]
    size = max(4.0, 1.0 + 0.6 * n)
    fig, ax = new_axes(size + 1.5, size)
    image = ax.imshow(matrix, cmap="viridis")
    fig.colorbar(image, ax=ax, label="GB/s")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("receiver")
    ax.set_ylabel("sender")
    top = max((v for row in matrix for v in row if v == v), default=0.0)  # v == v: not NaN
    if n <= 16:
        for i in range(n):
            for j in range(n):
                if i != j and matrix[i][j] == matrix[i][j]:
                    ax.text(j, i, f"{matrix[i][j]:.3g}", ha="center", va="center",
                            fontsize="x-small",
                            color="black" if matrix[i][j] > 0.7 * top else "white")
    index = {name: i for i, name in enumerate(names)}
    for pair in report["pairs"]:
        if pair["slow"]:
            a, b = index[pair["a"]], index[pair["b"]]
            for i, j in ((a, b), (b, a)):
                ax.add_patch(_frame(i, j))
    ax.set_title(f"fabric {report['run_id']}: {report['status']}", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _frame(row: int, col: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2)


def fabric_table(report: Mapping[str, Any], width: int) -> Any:
    """The bandwidth matrix (GB/s, sender rows, receiver columns), slow pairs in red, when it
    fits ``width`` one line per row; otherwise one row per node (its median GB/s sending and
    receiving, its slowest pair, its slow pairs), since a matrix of many nodes cannot fit a
    terminal: ``fabric.csv`` and ``--json`` have every pair."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from orchestrator.tables import Column, fit_table, table_width

    names = [node["name"] for node in report["nodes"]]
    slow = {(p["a"], p["b"]) for p in report["pairs"] if p["slow"]}
    slow |= {(b, a) for a, b in slow}
    matrix = report["matrix"]["bandwidth_gbps"]
    title = f"fabric {report['run_id']}: bandwidth GB/s (sender -> receiver)"
    cells = [["-" if v is None else f"{v:.3f}" for v in row] for row in matrix]
    corner = "from \\ to"
    widths = [max(len(corner), *map(len, names))]
    widths += [max(len(name), *(len(row[j]) for row in cells)) for j, name in enumerate(names)]
    if table_width(widths) <= width:
        # The title on a line of its own: a table's title wraps at the table's width.
        table = Table()
        table.add_column(corner, no_wrap=True)
        for name in names:
            table.add_column(name, justify="right", no_wrap=True)
        for i, row in enumerate(cells):
            table.add_row(names[i], *(f"[bold red]{text}[/]" if (names[i], names[j]) in slow
                                      else text for j, text in enumerate(row)))
        return Group(Text(title), table)

    def median(values: Iterable[float | None]) -> str:
        got = [v for v in values if v is not None]
        return f"{statistics.median(got):.3f}" if got else "-"

    rows = []
    for i, name in enumerate(names):
        mine = [p for p in report["pairs"] if name in (p["a"], p["b"])]
        worst = min(mine, key=lambda p: p["gbps"], default=None)
        peer = "-" if worst is None else (worst["b"] if worst["a"] == name else worst["a"])
        n_slow = sum(p["slow"] for p in mine)
        rows.append([name, median(matrix[i]), median(row[i] for row in matrix),
                     "-" if worst is None else f"{worst['gbps']:.3f} with {peer}",
                     f"[bold red]{n_slow}[/]" if n_slow else "0"])
    columns = [Column("node", priority=2), Column("send GB/s", "right", 2),
               Column("recv GB/s", "right", 1), Column("slowest pair", priority=2),
               Column("slow pairs", "right", 2)]
    n = len(names)
    return Group(Text(f"fabric {report['run_id']}: GB/s per node ({n}x{n} matrix too wide: "
                      "fabric.csv, --json)"),
                 fit_table("", columns, rows, width))
