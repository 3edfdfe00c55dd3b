"""How reliably ``netorch fabric`` names a fault it injects itself, on real containers.

Three cases, ``--tries N`` times each, interleaved (slow node, healthy, slow link, slow node, ...)
so drift of the machine hits every case alike; 4 nodes on a fresh subnet each run:

- slow node: ``--set network.link.nodes.worker-2.rate=RATE`` -> expect exit 5, suspects [worker-2]
- healthy: no shaping -> expect exit 0, suspects []
- slow link: ``--set network.link.pairs.master:worker-3.rate=RATE`` -> exit 5, [[master, worker-3]]

For each run: the verdict, the suspects, the reference bandwidth and the slow cut, the slow pairs'
and the fast pairs' range, the measurement's and the whole command's seconds. Exits 1 when any
run's verdict differs from the expected one.

    python benchmarks/fabric_faults.py [--tries 3] [--rate 50mbit] [--image netorch:latest]
                                       [--schedule all|bisect] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CASES: dict[str, tuple[tuple[str, ...], int, list[Any]]] = {
    "slow node": (("network.link.nodes.worker-2.rate={rate}",), 5, ["worker-2"]),
    "healthy": ((), 0, []),
    "slow link": (("network.link.pairs.master:worker-3.rate={rate}",), 5,
                  [["master", "worker-3"]]),
}


def run_case(name: str, rate: str, image: str, subnet: str, out: Path,
             schedule: str = "all") -> dict[str, Any]:
    sets, code, suspects = CASES[name]
    args = [sys.executable, "-m", "orchestrator.cli", "fabric", "--backend", "docker",
            "--nodes", "4", "--subnet", subnet, "-q", "-o", str(out),
            "--set", f"cluster.image={image}", "--set", f"cluster.name=nt-{secrets.token_hex(3)}",
            "--set", f"fabric.schedule={schedule}"]
    for item in sets:
        args += ["--set", item.format(rate=rate)]
    started = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - started
    found = list(out.glob("*/fabric.json"))
    if len(found) != 1:
        return {"case": name, "exit": proc.returncode, "status": "no result", "suspects": None,
                "ok": False, "reference_gbps": 0.0, "cut_gbps": 0.0, "slow_gbps": [],
                "fast_gbps": [], "elapsed_s": 0.0, "wall_s": wall,
                "error": (proc.stderr or proc.stdout)[-400:]}
    report = json.loads(found[0].read_text())
    stats = next(iter(report["statistics"].values()), {})
    slow = [p["gbps"] for p in report["pairs"] if p["slow"]]
    fast = [p["gbps"] for p in report["pairs"] if not p["slow"]]
    return {"case": name, "exit": proc.returncode, "status": report["status"],
            "suspects": report["suspects"], "ok": (proc.returncode, report["suspects"]) == (
                code, suspects),
            "reference_gbps": stats.get("reference_gbps"), "cut_gbps": stats.get("slow_below_gbps"),
            "slow_gbps": slow, "fast_gbps": [min(fast), max(fast)] if fast else [],
            "elapsed_s": report["elapsed_s"], "wall_s": wall}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tries", type=int, default=3)
    p.add_argument("--rate", default="50mbit")
    p.add_argument("--image", default="netorch:latest")
    p.add_argument("--subnet", default="10.214.77.0/24")
    p.add_argument("--schedule", default="all", help="all | bisect")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.tries):
            for name in CASES:
                out = Path(tmp) / f"{i}-{name.replace(' ', '-')}"
                rows.append(run_case(name, a.rate, a.image, a.subnet, out, a.schedule))
                r = rows[-1]
                print(f"{r['case']:9} exit {r['exit']} {r['status']:10} {r['suspects']} "
                      f"ref {r['reference_gbps']:.3f} cut {r['cut_gbps']:.3f} "
                      f"slow {[round(x, 4) for x in r['slow_gbps']]} fast "
                      f"{[round(x, 3) for x in r['fast_gbps']]} {r['elapsed_s']:.1f}/"
                      f"{r['wall_s']:.1f} s {'ok' if r['ok'] else 'WRONG'} {r.get('error', '')}",
                      flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
