"""Wall time of one 4-node job on a warm cluster (``netorch bench --on NAME``) vs the seed compose file cold.

The same job as ``benchmarks/launch_vs_compose.py`` (a 1 MiB float32 all_reduce, 4 nodes x 1 rank,
3 warmup + 10 timed iterations, no check). The script first brings up one warm cluster,
``netorch up --name NAME --nodes 4 --subnet 10.90.0.0/24`` (not timed), then alternates, for
``--pairs N`` pairs (the order reversed in every other pair):

- warm: ``netorch bench --on NAME --nodes 4 --subnet 10.90.0.0/24 --ops all_reduce -B 1M -E 1M
  -w 3 -i 10 --no-check -q -o TMP``, whole command timed (``--nodes``/``--subnet`` repeat the
  cluster's shape, which a run may state but not change);
- compose: the seed guide's hand-written ``benchmarks/seed_compose/docker-compose.yml``,
  ``up --abort-on-container-exit --exit-code-from master`` + ``down -v``, timed together, cold
  (see launch_vs_compose.py; its functions are reused here).

The cluster is removed in ``finally`` (``netorch down --run NAME``), whatever happened. Ratios are
medians of the per-pair ratios. A run fails when it exits non-zero or times out; failed runs are
listed, left out of the medians, and the script then exits 1.

    python benchmarks/warm_vs_compose.py [--pairs 3] [--name NAME] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch_vs_compose import (  # noqa: E402
    COMPOSE_FILE,
    NETORCH_ARGS,
    Run,
    _netorch_bin,
    _run,
    run_compose,
)

SUBNET = "10.90.0.0/24"
SHAPE = ("--nodes", "4", "--subnet", SUBNET)
RUN_ID = re.compile(r"\b(\d{8}-\d{6}-[0-9a-f]{4})\b")


def warm_args(name: str) -> list[str]:
    """``netorch bench --on NAME`` with the launch_vs_compose job (its --backend/--nodes replaced)."""
    job = list(NETORCH_ARGS)
    for flag in ("--backend", "--nodes"):
        i = job.index(flag)
        del job[i:i + 2]
    return [job[0], "--on", name, *SHAPE, *job[1:]]


def run_warm(name: str, out: Path, timeout: float) -> Run:
    """Time one ``netorch bench --on NAME``."""
    t0 = time.time()
    rc, text, timed_out = _run([_netorch_bin(), *warm_args(name), "-o", str(out)], timeout)
    wall = time.time() - t0
    m = RUN_ID.search(text)
    notes = []
    if timed_out:
        notes.append(f"timed out after {timeout:.0f} s")
    if rc != 0:
        notes.append(f"exit {rc}: {text[-600:]!r}")
    return Run("warm", 0, 0, m.group(1) if m else "?", wall, not notes, note="; ".join(notes))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=3, help="pairs of (warm, compose); default 3")
    p.add_argument("--name", default="wvc" + os.urandom(3).hex(), help="the warm cluster's name")
    p.add_argument("--timeout", type=float, default=300, help="seconds per command before it fails")
    p.add_argument("--json", type=Path, help="write the runs and figures as JSON to FILE")
    args = p.parse_args()
    if shutil.which("docker-compose") is None:
        raise SystemExit("docker-compose is not installed; apt-get install docker-compose")
    client = docker.from_env()
    netorch = _netorch_bin()
    load = [os.getloadavg()[0]]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    runs: list[Run] = []
    up_s = None
    try:
        with tempfile.TemporaryDirectory(prefix="netorch-wvc-") as tmp:
            t0 = time.monotonic()
            up = subprocess.run([netorch, "up", "--name", args.name, *SHAPE, "-o", tmp],
                                capture_output=True, text=True, timeout=args.timeout)
            up_s = time.monotonic() - t0
            if up.returncode != 0:
                raise SystemExit(f"netorch up failed ({up.returncode}): {up.stdout[-800:]}"
                                 f"{up.stderr[-800:]}")
            print(f"cluster {args.name} up in {up_s:.1f} s", flush=True)
            for pair in range(1, args.pairs + 1):
                order = ("warm", "compose") if pair % 2 else ("compose", "warm")
                for pos, side in enumerate(order):
                    r = (run_warm(args.name, Path(tmp), args.timeout) if side == "warm"
                         else run_compose(side, client, Path(tmp), args.timeout))
                    r.pair, r.position = pair, pos
                    runs.append(r)
                    print(f"pair {pair} #{pos + 1} {side:8s} {r.wall_s:6.2f} s "
                          f"{'ok' if r.ok else 'FAILED ' + r.note}", flush=True)
    finally:
        down = subprocess.run([netorch, "down", "--run", args.name], capture_output=True, text=True)
        print(f"netorch down --run {args.name}: {down.stdout.strip() or down.stderr.strip()}",
              flush=True)
        if down.returncode != 0:
            print(f"WARNING: cluster {args.name} may be left behind; remove it with "
                  f"`netorch down --run {args.name}`", file=sys.stderr, flush=True)
    load.append(os.getloadavg()[0])
    ok = [r for r in runs if r.ok]
    med = {s: statistics.median([r.wall_s for r in ok if r.side == s]) if any(
        r.side == s for r in ok) else None for s in ("warm", "compose")}
    ratios = [w.wall_s / c.wall_s for p in sorted({r.pair for r in runs})
              for w in ok if w.pair == p and w.side == "warm"
              for c in ok if c.pair == p and c.side == "compose"]
    ratio = statistics.median(ratios) if ratios else None
    lines = ["| pair (order) | warm s | compose s | warm/compose |", "|---|---:|---:|---:|"]
    for p in sorted({r.pair for r in runs}):
        by = {r.side: r for r in runs if r.pair == p}
        w, c = by.get("warm"), by.get("compose")
        order = ", ".join(r.side for r in sorted(by.values(), key=lambda r: r.position))
        cells = [f"{x.wall_s:.2f}" if x and x.ok else "FAILED" for x in (w, c)]
        rr = f"{w.wall_s / c.wall_s:.2f}" if w and c and w.ok and c.ok else "-"
        lines.append(f"| {p} ({order}) | {cells[0]} | {cells[1]} | {rr} |")
    fmt = (lambda v: "-" if v is None else f"{v:.2f}")
    lines.append(f"| **median** | **{fmt(med['warm'])}** | **{fmt(med['compose'])}** | "
                 f"**{fmt(ratio)}** |")
    text = "\n".join(lines) + (
        f"\n\nwarm/compose (median of per-pair ratios) {fmt(ratio)}, target <= 0.25: "
        f"{'met' if ratio is not None and ratio <= 0.25 else 'NOT met'}. Cluster up (not timed in "
        f"the ratio): {fmt(up_s)} s. Host: {os.cpu_count()} cores, 1-min load average "
        f"{load[0]:.1f} at start, {load[1]:.1f} at end.")
    for r in runs:
        if not r.ok:
            text += f"\nFAILED pair {r.pair} {r.side} {r.run_id}: {r.note}"
    print()
    print(text)
    if args.json:
        doc: dict[str, Any] = {
            "started": started, "command": shlex.join([sys.argv[0], *sys.argv[1:]]),
            "warm_command": shlex.join(["netorch", *warm_args(args.name)]),
            "up_command": shlex.join(["netorch", "up", "--name", args.name, *SHAPE]),
            "compose_file": str(COMPOSE_FILE), "cores": os.cpu_count(), "load_average": load,
            "up_s": up_s, "runs": [asdict(r) for r in runs], "median_wall_s": med,
            "paired_ratios": ratios, "median_paired_ratio": ratio}
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0 if runs and all(r.ok for r in runs) and down.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
