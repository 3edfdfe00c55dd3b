"""Cross-check ``netorch sweep``'s busbw against an independent all_reduce loop in the same containers.

Run from the repository root (Docker daemon and the netorch image required)::

    python benchmarks/sweep_vs_loop.py --nodes 2 --mtus 1500,9000 --repeats 2 \
        --sizes-mib 1,2,4 --subnet 10.217.0.0/24

Each sweep run is gated (see orchestrator/sweep.py): after the probes, this script's hook copies a
plain loop (below; it shares no code with train.bench) into every container and runs it under
torchrun on another port, in the very containers, network and MTU the benchmark then uses. The
loop times ``iters`` dist.all_reduce calls between two barriers and averages over ranks;
busbw = bytes / t * 2(n-1)/n (nccl-tests). Printed: per MTU and size, the sweep's median busbw,
the loop's median busbw and their ratio (median over repeats of the per-run ratio). Acceptance:
agreement within 10 %; exit status 1 otherwise.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import statistics
import sys
import tarfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker  # noqa: E402

from orchestrator.netprobe import run_in  # noqa: E402
from orchestrator.plan import ClusterPlan, new_run_id  # noqa: E402
from orchestrator.settings import load_settings  # noqa: E402
from orchestrator.sweep import Axis, SweepOptions, SweepPoint, Variant, run_sweep  # noqa: E402

MIB = 1 << 20
TOLERANCE = 0.10
LOOP_PORT = 29610
LOOP = r'''
import json, os, sys, time
import torch, torch.distributed as dist
dist.init_process_group("gloo")
n, rank = dist.get_world_size(), dist.get_rank()
warmup, iters = int(sys.argv[1]), int(sys.argv[2])
out = {}
for nbytes in [int(s) for s in sys.argv[3].split(",")]:
    x = torch.ones(nbytes // 4, dtype=torch.float32)
    for _ in range(warmup):
        dist.all_reduce(x)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(x)
    dist.barrier()
    t = torch.tensor([(time.perf_counter() - t0) / iters], dtype=torch.float64)
    dist.all_reduce(t)
    out[nbytes] = nbytes / (t.item() / n) * (2 * (n - 1) / n) / 1e9
if rank == 0:
    print("LOOP " + json.dumps(out), flush=True)
dist.destroy_process_group()
'''


def _tar(name: str, text: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--mtus", default="1500,9000")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--sizes-mib", default="1,2,4")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--subnet", default="10.217.0.0/24")
    p.add_argument("--output", default="runs")
    args = p.parse_args()
    sizes = [int(s) * MIB for s in args.sizes_mib.split(",")]
    mtus = tuple(int(m) for m in args.mtus.split(","))
    name = "nt-" + secrets.token_hex(4)
    base = {"backend": "docker", "output": args.output,
            "cluster": {"name": name, "nodes": args.nodes},
            "network": {"subnet": args.subnet},
            "bench": {"ops": "all_reduce", "min_bytes": min(sizes), "max_bytes": max(sizes),
                      "warmup": args.warmup, "iters": args.iters, "check": False}}
    variants: dict[Variant, Any] = {}
    for mtu in mtus:
        cfg = json.loads(json.dumps(base))
        cfg["network"]["mtu"] = mtu
        variants[(("network.mtu", mtu),)] = load_settings(None, cfg)
    loops: dict[str, dict[int, float]] = {}

    def loop_hook(point: SweepPoint, plan: ClusterPlan, containers: Mapping[str, Any]) -> None:
        outputs: dict[str, str] = {}

        def one(node_rank: int) -> None:
            node = plan.nodes[node_rank]
            c = containers[node.name]
            c.put_archive("/tmp", _tar("netorch_loop.py", LOOP))
            _, outputs[node.name] = run_in(c, [
                "torchrun", "--nnodes", str(plan.nnodes), "--nproc-per-node", "1",
                "--node-rank", str(node_rank), "--master-addr", plan.master_addr,
                "--master-port", str(LOOP_PORT), "/tmp/netorch_loop.py", str(args.warmup),
                str(args.iters), ",".join(str(s) for s in sizes)])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(plan.nnodes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        line = next((ln for ln in outputs.get(plan.master.name, "").splitlines()
                     if ln.startswith("LOOP ")), None)
        if line is None:
            raise RuntimeError(f"loop failed: {outputs}")
        loops[plan.run_id] = {int(k): v for k, v in json.loads(line[5:]).items()}

    client = docker.from_env(timeout=300)
    sweep_id = new_run_id()
    out_dir = Path(args.output) / f"sweep-{sweep_id}"
    summary = run_sweep(variants, SweepOptions((Axis("network.mtu", mtus),), args.repeats, 1.0, 2, 1), client,
                        sweep_id, out_dir, extra_hook=loop_hook)
    client.close()
    ok = True
    print(f"# {args.nodes} nodes, gloo/CPU, all_reduce float32, {args.repeats} repeats x "
          f"(warmup {args.warmup}, iters {args.iters}); load {os.getloadavg()[0]:.1f}; "
          f"sweep {out_dir}")
    print(f"{'MTU':>5} {'size':>6} {'sweep GB/s':>10} {'loop GB/s':>10} {'ratio':>7} verdict  per-run")
    for mtu in mtus:
        for size in sizes:
            pairs = []
            for run in summary["runs"]:
                if run["mtu"] != mtu:
                    continue
                row = next(r for r in run["results"] if int(r["size_bytes"]) == size)
                pairs.append((float(row["busbw_gbps"]), loops[run["run_id"]][size]))
            ratio = statistics.median(b / lp for b, lp in pairs)
            good = abs(ratio - 1) <= TOLERANCE
            ok = ok and good
            print(f"{mtu:>5} {size // MIB:>4}Mi {statistics.median(b for b, _ in pairs):10.3f} "
                  f"{statistics.median(lp for _, lp in pairs):10.3f} {ratio - 1:+7.1%} "
                  f"{'ok' if good else 'DISAGREE':8} "
                  + " ".join(f"{b / lp:.2f}" for b, lp in pairs))
    print(f"# acceptance (|ratio - 1| <= {TOLERANCE:.0%}): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
