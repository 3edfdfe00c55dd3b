"""Plan and render time from 2 to 10,000 nodes, as a curve.

Two measurements per node count N:

- in process (median of ``--repeats``): ``build_plan`` for the docker backend, the compose render
  (one service per node: linear by nature), and the Kubernetes renders (indexed-job, jobset:
  one pod template whatever N, so their size must not grow) with the rendered file's size;
- the CLI as a user runs it (median of ``--repeats`` subprocesses, Python start-up and imports
  included): ``netorch plan --backend docker --nodes N --subnet 10.0.0.0/16`` with stdout to
  /dev/null. The acceptance figure is its ratio at 10,000 nodes to 2 nodes (target <= 3x); the
  counts are measured interleaved (2, 10000, 2, 10000, ...) so drift from other load on the host
  hits both alike.

Nothing is started; no daemon is needed (``--backend docker`` skips the auto probe).

    python benchmarks/plan_scale.py [--repeats 3] [--nodes 2,10,100,1000,2000,5000,10000]
                                    [--json FILE] [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from orchestrator.plan import build_plan  # noqa: E402
from orchestrator.render.compose import dump_compose  # noqa: E402
from orchestrator.render.k8s import dump_k8s  # noqa: E402
from orchestrator.settings import load_settings  # noqa: E402

SUBNET = "10.0.0.0/16"
RUN_ID = "20261129-000000-beef"


def _median_s(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, value = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def in_process(n: int, repeats: int) -> dict[str, Any]:
    settings = load_settings(overrides={"cluster": {"nodes": n}, "network": {"subnet": SUBNET}})
    plan_s, plan = _median_s(lambda: build_plan(settings, RUN_ID, "docker"), repeats)
    row: dict[str, Any] = {"nodes": n, "plan_s": plan_s}
    compose_s, text = _median_s(lambda: dump_compose(plan), repeats)
    row["compose_s"], row["compose_bytes"] = compose_s, len(text)
    for flavor in ("indexed-job", "jobset"):
        k8s_s, text = _median_s(lambda: dump_k8s(plan, flavor), repeats)  # type: ignore[arg-type]
        row[f"k8s_{flavor}_s"], row[f"k8s_{flavor}_bytes"] = k8s_s, len(text)
    return row


def cli_plan_s(n: int) -> float:
    """One ``netorch plan`` subprocess, wall time."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "orchestrator.cli", "plan", "--backend", "docker",
            "--nodes", str(n), "--subnet", SUBNET]
    with tempfile.TemporaryDirectory() as cwd:  # no configs/default.toml picked up
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--nodes", default="2,10,100,1000,2000,5000,10000")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    counts = [int(x) for x in args.nodes.split(",")]
    rows = [in_process(n, args.repeats) for n in counts]
    cli: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(args.repeats):
        for n in counts:  # interleaved: every count sees the same load
            cli[n].append(cli_plan_s(n))
    for row in rows:
        row["cli_plan_s"] = statistics.median(cli[row["nodes"]])
        row["cli_plan_all_s"] = cli[row["nodes"]]
    print("| nodes | `netorch plan` CLI s | build_plan ms | compose render ms | compose KiB "
          "| k8s indexed-job ms | bytes | k8s jobset ms | bytes |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['nodes']} | {r['cli_plan_s']:.3f} | {r['plan_s'] * 1e3:.1f} "
              f"| {r['compose_s'] * 1e3:.1f} | {r['compose_bytes'] / 1024:.0f} "
              f"| {r['k8s_indexed-job_s'] * 1e3:.1f} | {r['k8s_indexed-job_bytes']} "
              f"| {r['k8s_jobset_s'] * 1e3:.1f} | {r['k8s_jobset_bytes']} |")
    lo, hi = rows[0], rows[-1]
    ratio = hi["cli_plan_s"] / lo["cli_plan_s"]
    print(f"\nCLI plan {hi['nodes']} / {lo['nodes']} nodes: {ratio:.2f}x (target <= 3x); "
          f"load average {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ratio": ratio}, indent=2))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        xs = [r["nodes"] for r in rows]
        ax.plot(xs, [r["cli_plan_s"] for r in rows], "o-", label="netorch plan (CLI, s)")
        ax.plot(xs, [r["plan_s"] for r in rows], "o-", label="build_plan (s)")
        ax.plot(xs, [r["compose_s"] for r in rows], "o-", label="render compose (s)")
        ax.plot(xs, [r["k8s_indexed-job_s"] for r in rows], "o-", label="render k8s indexed-job (s)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("nodes")
        ax.set_ylabel("seconds (median)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
    return 0 if ratio <= 3 else 5


if __name__ == "__main__":
    sys.exit(main())
