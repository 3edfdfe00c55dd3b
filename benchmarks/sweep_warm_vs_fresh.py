"""Wall time of ``netorch sweep`` on warm clusters (the default) vs ``--fresh`` containers, one run.

Both sides run the same MTU comparison, alternated pair by pair (the order reversed in every other
pair, so drift from other load hits each side in each position):

- warm: ``netorch sweep --mtu 1500,9000 --repeats 3 --nodes 2 -B 1M -E 64M -q --subnet W -o TMP``
  (one warm cluster per MTU variant, runs interleaved across them, clusters removed at the end);
- fresh: the same command with ``--fresh`` and its own subnet (new network and containers per run).

Whole commands are timed. Each side's ``sweep.json`` gives the busbw median and min..max over the
repeats per (MTU, size); at every size of at least ``--min-mib`` (16 MiB) the two medians *agree*
when each lies inside the other's min..max, i.e. reuse adds no bias beyond run-to-run spread
(whether the two min..max ranges overlap is reported too, a looser reading).
A run fails when it exits non-zero, times out or leaves a container or network behind.

    python benchmarks/sweep_warm_vs_fresh.py [--pairs 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch_vs_compose import LABEL_NETORCH_RUN, _netorch_bin, _run  # noqa: E402

SWEEP_ARGS = ("sweep", "--mtu", "1500,9000", "--repeats", "3", "--nodes", "2",
              "-B", "1M", "-E", "64M", "-q")
SUBNETS = {"warm": "10.93.0.0/24", "fresh": "10.94.0.0/24"}
SIDES = ("warm", "fresh")


@dataclass
class SweepRun:
    """One timed sweep; ``rows`` maps "MTU size_bytes" to the busbw median, min and max (GB/s)."""

    side: str
    pair: int
    position: int
    wall_s: float
    ok: bool
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    note: str = ""


def _leftovers(client: Any, subnet: str) -> list[str]:
    """netorch networks (and their containers) inside ``subnet``: a clean run leaves none."""
    out = []
    for net in client.networks.list(filters={"label": LABEL_NETORCH_RUN}):
        net.reload()
        nets = [ipaddress.ip_network(c["Subnet"]) for c in (net.attrs.get("IPAM") or {}).get(
            "Config") or [] if "Subnet" in c]
        if any(n.subnet_of(ipaddress.ip_network(subnet)) for n in nets if n.version == 4):
            out.append(f"network {net.name}")
            out += [f"container {name}" for name in (net.attrs.get("Containers") or {})]
    return out


def run_sweep(side: str, out: Path, timeout: float) -> SweepRun:
    """Time one full sweep of ``side`` and read its aggregated rows."""
    cmd = [_netorch_bin(), *SWEEP_ARGS, "--subnet", SUBNETS[side], "-o", str(out)]
    if side == "fresh":
        cmd.append("--fresh")
    before = set(out.glob("*/sweep.json"))
    t0 = time.monotonic()
    rc, text, timed_out = _run(cmd, timeout)
    wall = time.monotonic() - t0
    notes = []
    if timed_out:
        notes.append(f"timed out after {timeout:.0f} s")
    if rc != 0:
        notes.append(f"exit {rc}: {text[-600:]!r}")
    found = sorted(set(out.glob("*/sweep.json")) - before)
    rows: dict[str, dict[str, float]] = {}
    if found:
        summary = json.loads(found[-1].read_text())
        for r in summary["rows"]:
            rows[f"{r['mtu']} {r['size_bytes']}"] = {
                "median": r["busbw_median"], "min": r["busbw_min"], "max": r["busbw_max"]}
    elif rc == 0:
        notes.append("no sweep.json written")
    return SweepRun(side, 0, 0, wall, not notes, rows, "; ".join(notes))


def compare(runs: list[SweepRun], min_bytes: int) -> dict[str, Any]:
    """Median walls, the paired ratio warm/fresh, and per (MTU, size >= min_bytes) agreement."""
    ok = [r for r in runs if r.ok]
    med = {s: statistics.median([r.wall_s for r in ok if r.side == s]) if any(
        r.side == s for r in ok) else None for s in SIDES}
    ratios = []
    for p in sorted({r.pair for r in runs}):
        w = [r for r in ok if r.pair == p and r.side == "warm"]
        f = [r for r in ok if r.pair == p and r.side == "fresh"]
        if w and f:
            ratios.append(w[0].wall_s / f[0].wall_s)
    # The last successful run of each side is compared (its repeats give the spread).
    last = {s: next((r for r in reversed(ok) if r.side == s), None) for s in SIDES}
    agree: list[dict[str, Any]] = []
    if last["warm"] and last["fresh"]:
        for key, w in last["warm"].rows.items():
            size = int(key.split()[1])
            f = last["fresh"].rows.get(key)
            if size < min_bytes or f is None:
                continue
            agree.append({
                "mtu": int(key.split()[0]), "size_mib": size / (1 << 20), "warm": w, "fresh": f,
                "agree": f["min"] <= w["median"] <= f["max"] and w["min"] <= f["median"] <= w["max"],
                "overlap": w["min"] <= f["max"] and f["min"] <= w["max"],
            })
    return {"median_wall_s": med, "paired_ratios": ratios,
            "median_paired_ratio": statistics.median(ratios) if ratios else None,
            "busbw": agree, "all_agree": bool(agree) and all(a["agree"] for a in agree)}


def report(runs: list[SweepRun], summary: dict[str, Any]) -> str:
    """Markdown tables: the runs, then busbw of both sides at the compared sizes."""
    lines = ["| pair | side (order) | wall s | ok |", "|---|---|---:|---|"]
    for r in sorted(runs, key=lambda r: (r.pair, r.position)):
        lines.append(f"| {r.pair} | {r.side} (#{r.position + 1}) | {r.wall_s:.1f} | "
                     f"{'ok' if r.ok else 'FAILED: ' + r.note} |")
    med = summary["median_wall_s"]
    ratio = summary["median_paired_ratio"]
    lines += ["", f"Median wall: warm {med['warm'] or float('nan'):.1f} s, fresh "
              f"{med['fresh'] or float('nan'):.1f} s; warm/fresh (median of per-pair ratios) "
              f"{'-' if ratio is None else f'{ratio:.2f}'} "
              f"(per pair: {' '.join(f'{x:.2f}' for x in summary['paired_ratios'])}).", "",
              "| MTU | size | warm busbw median (min..max) GB/s | fresh busbw median (min..max) GB/s "
              "| each median inside the other's min..max | ranges overlap |", "|---:|---:|---|---|---|---|"]
    for a in summary["busbw"]:
        w, f = a["warm"], a["fresh"]
        lines.append(f"| {a['mtu']} | {a['size_mib']:g} MiB | {w['median']:.3f} ({w['min']:.3f}.."
                     f"{w['max']:.3f}) | {f['median']:.3f} ({f['min']:.3f}..{f['max']:.3f}) | "
                     f"{'yes' if a['agree'] else 'NO'} | {'yes' if a['overlap'] else 'NO'} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=1, help="pairs of (warm, fresh); default 1")
    p.add_argument("--min-mib", type=int, default=16, help="compare busbw at sizes >= this (MiB)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per sweep before it fails")
    p.add_argument("--json", type=Path, help="write the runs and figures as JSON to FILE")
    args = p.parse_args()
    client = docker.from_env()
    load = [os.getloadavg()[0]]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    runs: list[SweepRun] = []
    with tempfile.TemporaryDirectory(prefix="netorch-swf-") as tmp:
        for pair in range(1, args.pairs + 1):
            order = SIDES if pair % 2 else tuple(reversed(SIDES))
            for pos, side in enumerate(order):
                r = run_sweep(side, Path(tmp), args.timeout)
                r.pair, r.position = pair, pos
                left = _leftovers(client, SUBNETS[side])
                if left:
                    r.ok, r.note = False, (r.note + "; left behind: " + ", ".join(left)).strip("; ")
                runs.append(r)
                print(f"pair {pair} #{pos + 1} {side:5s} {r.wall_s:7.1f} s "
                      f"{'ok' if r.ok else 'FAILED ' + r.note}", flush=True)
    load.append(os.getloadavg()[0])
    summary = compare(runs, args.min_mib << 20)
    text = report(runs, summary) + (f"\n\nHost: {os.cpu_count()} cores, 1-min load average "
                                    f"{load[0]:.1f} at start, {load[1]:.1f} at end.")
    print()
    print(text)
    if args.json:
        doc = {"started": started, "command": shlex.join([sys.argv[0], *sys.argv[1:]]),
               "sweep_command": shlex.join(["netorch", *SWEEP_ARGS]), "subnets": SUBNETS,
               "cores": os.cpu_count(), "load_average": load,
               "runs": [asdict(r) for r in runs], **summary}
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0 if all(r.ok for r in runs) and summary["all_agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
