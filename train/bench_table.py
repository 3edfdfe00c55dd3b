"""The nccl-tests-like text table rank 0 of ``python -m train.bench`` prints before its result line.

Pure and torch-free: it reads a result document (see train/results.py) and nothing else.
"""

from __future__ import annotations

from typing import Any

from train.contract import NCCL_TYPE_NAMES, op_spec
from train.results import ResultRow


def _fmt_time(us: float) -> str:
    return f"{us:8.2f}" if us < 1e6 else f"{us:8.0f}"


def _variant_cells(row: ResultRow | None) -> str:
    if row is None:
        return f"{'N/A':>8} {'N/A':>7} {'N/A':>7} {'N/A':>6}"
    wrong = "N/A" if row["wrong"] is None else str(row["wrong"])
    return (
        f"{_fmt_time(row['time_us']['avg'])} {row['algbw_gbps']:7.2f} "
        f"{row['busbw_gbps']:7.2f} {wrong:>6}"
    )


def format_table(doc: dict[str, Any]) -> str:
    """Return the nccl-tests-like text report of a result document (pure: no torch calls).

    One block per (op, dtype): size, count, type, redop, root, then time (avg, us), algbw, busbw
    and #wrong for out-of-place and in-place. Footer as nccl-tests: out-of-bounds total, then the
    average bus bandwidth over every row printed.
    """
    s = doc["settings"]
    lines = [
        f"# netorch bench  run_id {doc['run_id']}  backend {doc['dist_backend']}  device "
        f"{doc['device']}  torch {doc['torch_version']}  world_size {doc['world_size']}",
        f"# minBytes {s['min_bytes']} maxBytes {s['max_bytes']} step: {s['step_factor']}(factor) "
        f"warmup iters: {s['warmup']} iters: {s['iters']} validation: {int(s['check'])} "
        f"in-place: {s['in_place']} blocking: {int(s.get('blocking', True))}",
        "#",
        "# Using devices",
    ]
    for r in doc["ranks"]:
        lines.append(
            f"#  Rank {r['rank']:>2} Group  0 Pid {r['pid']:>7} on {r['node_name']:>10} "
            f"({r['hostname']}) node {r['node_rank']} local {r['local_rank']} "
            f"{r['ifname']} {r['ipv4'] or '-'} mtu {r['mtu'] if r['mtu'] is not None else '-'}"
        )
    header = (
        f"#{'size':>11} {'count':>12} {'type':>8} {'redop':>6} {'root':>5}"
        f"  {'time':>8} {'algbw':>7} {'busbw':>7} {'#wrong':>6}"
        f"  {'time':>8} {'algbw':>7} {'busbw':>7} {'#wrong':>6}"
    )
    units = (
        f"#{'(B)':>11} {'(elements)':>12} {'':>8} {'':>6} {'':>5}"
        f"  {'(us)':>8} {'(GB/s)':>7} {'(GB/s)':>7} {'':>6}"
        f"  {'(us)':>8} {'(GB/s)':>7} {'(GB/s)':>7} {'':>6}"
    )
    groups: dict[tuple[str, str], dict[tuple[int, int], dict[bool, ResultRow]]] = {}
    for row in doc["results"]:
        key = (row["op"], row["dtype"])
        groups.setdefault(key, {}).setdefault((row["size_bytes"], row["count"]), {})[
            row["in_place"]
        ] = row
    for (op, dtype_name), by_size in groups.items():
        lines += ["#", f"# Collective: {op}  dtype: {dtype_name}", f"#{'':>56}out-of-place"
                  f"{'':>27}in-place", header, units]
        busbws = []
        for (size_bytes, count), pair in by_size.items():
            spec = op_spec(op)
            redop = s["reduce_op"] if spec.reducing else "none"
            root = spec.root_column
            lines.append(
                f"{size_bytes:>12} {count:>12} {NCCL_TYPE_NAMES.get(dtype_name, dtype_name):>8} "
                f"{redop:>6} {root:>5}  {_variant_cells(pair.get(False))}  "
                f"{_variant_cells(pair.get(True))}"
            )
            busbws += [r["busbw_gbps"] for r in pair.values()]
        lines.append(f"# {op} {dtype_name} avg bus bandwidth: {sum(busbws) / len(busbws):.3f}")
    lines.append("#")
    for entry in doc["skipped"]:
        lines.append(f"# Skipped {entry['op']} {entry['dtype']}: {entry['reason']}")
    for note in doc.get("notes", []):
        lines.append(f"# Note: {note}")
    total = doc["wrong_total"]
    if total is None:
        lines.append("# Out of bounds values : N/A (check disabled)")
    else:
        lines.append(f"# Out of bounds values : {total} {'OK' if total == 0 else 'FAILED'}")
    all_bw = [row["busbw_gbps"] for row in doc["results"]]
    avg = sum(all_bw) / len(all_bw) if all_bw else 0.0
    lines.append(f"# Avg bus bandwidth    : {avg:.6g}")
    lines.append("#")
    return "\n".join(lines)

