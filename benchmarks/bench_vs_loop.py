"""Cross-check train.bench's measurement against a minimal, independently written all_reduce loop.

Run from the repository root (2 ranks, gloo, CPU)::

    python -m torch.distributed.run --nproc-per-node 2 --master-addr 127.0.0.1 \
        --master-port 29700 benchmarks/bench_vs_loop.py

Both methods run in the same process group on the same ranks, back to back within each round (the
order rotating every round) so that drift in machine load hits both alike. A second run of the plain
loop is paired with the first the same way ("A/A control"): its difference is the noise floor of the
machine, against which the bench-vs-loop difference should be read. For each size
rank 0 prints the median busbw of each method and the relative difference, taken as the median of
the per-round paired ratios (robust to a machine whose speed drifts under other load). Acceptance: agreement
within 5 % at >= 16 MiB. Exit status 1 when a size >= 16 MiB disagrees by more than that.

The loop below deliberately shares no code with train.bench: its own tensor, its own timing, its own
aggregation and its own busbw formula (nccl-tests: all_reduce busbw = bytes / t * 2(n-1)/n).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from train.bench import bench_case  # noqa: E402
from train.collectives import Case, Comm, buffer_shape  # noqa: E402

MIB = 1 << 20
ACCEPT_FROM_BYTES = 16 * MIB
TOLERANCE = 0.05


def loop_busbw_gbps(nbytes: int, warmup: int, iters: int) -> float:
    """Time plain dist.all_reduce on a float32 tensor of ``nbytes``; return rank-averaged busbw."""
    n = dist.get_world_size()
    x = torch.ones(nbytes // 4, dtype=torch.float32)
    for _ in range(warmup):
        dist.all_reduce(x)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(x)
    dist.barrier()
    per_op = (time.perf_counter() - t0) / iters
    total = torch.tensor([per_op], dtype=torch.float64)
    dist.all_reduce(total)
    avg = total.item() / n
    return nbytes / avg * (2 * (n - 1) / n) / 1e9


def bench_busbw_gbps(nbytes: int, warmup: int, iters: int) -> float:
    """Measure the same all_reduce through train.bench's own case and measurement path."""
    comm = Comm.current(torch.device("cpu"))
    shape = buffer_shape("all_reduce", nbytes, 4, comm.world_size)
    case = Case("all_reduce", "float32", shape, True, "sum", comm)
    return bench_case(case, warmup, iters)["busbw_gbps"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", default="16,32,64")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    # 20 iterations per sample: with 5, one scheduler hiccup on 2 cores swings a sample 20%.
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    sizes = [int(s) * MIB for s in args.sizes_mib.split(",")]
    dist.init_process_group("gloo")
    try:
        rank = dist.get_rank()
        methods = {"bench": bench_busbw_gbps, "loop": loop_busbw_gbps, "loop2": loop_busbw_gbps}
        results: dict[int, dict[str, list[float]]] = {s: {m: [] for m in methods} for s in sizes}
        # One discarded round first: the very first large ops pay for connection setup and page
        # faults, and would otherwise land on whichever method happens to go first.
        for size in sizes:
            bench_busbw_gbps(size, args.warmup, args.iters)
            loop_busbw_gbps(size, args.warmup, args.iters)
        names = list(methods)
        for rnd in range(args.rounds):
            for size in sizes:
                # Rotate the order every round so no method always runs first (or after another).
                order = names[rnd % 3 :] + names[: rnd % 3]
                for method in order:
                    results[size][method].append(methods[method](size, args.warmup, args.iters))
        ok = True
        if rank == 0:
            n = dist.get_world_size()
            print(
                f"# all_reduce float32, gloo/CPU, {n} ranks, {args.rounds} rounds x "
                f"(warmup {args.warmup}, iters {args.iters}); busbw GB/s; load average "
                f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
            )
            print(
                f"{'size':>8} {'train.bench':>12} {'plain loop':>12} {'diff':>8}  verdict  "
                f"{'A/A ctl':>8}  per-round bench/loop"
            )
            for size in sizes:
                bench, loop = results[size]["bench"], results[size]["loop"]
                # Paired: each round measures both methods back to back, so the ratio cancels the
                # slow drift of a shared machine that the two medians alone would not.
                ratios = [b / lp for b, lp in zip(bench, loop)]
                diff = statistics.median(ratios) - 1.0
                # The same statistic for the loop against itself: the noise floor of this machine.
                control = statistics.median(
                    [a / b for a, b in zip(results[size]["loop2"], loop)]
                ) - 1.0
                verdict = ""
                if size >= ACCEPT_FROM_BYTES:
                    good = abs(diff) <= TOLERANCE
                    ok = ok and good
                    verdict = "ok" if good else "DISAGREE"
                print(
                    f"{size // MIB:>5}MiB {statistics.median(bench):12.4f} "
                    f"{statistics.median(loop):12.4f} {diff:+8.2%}  {verdict:8} {control:+8.2%}  "
                    + " ".join(f"{r:.3f}" for r in ratios),
                    flush=True,
                )
            pooled = [
                b / lp
                for size in sizes
                if size >= ACCEPT_FROM_BYTES
                for b, lp in zip(results[size]["bench"], results[size]["loop"])
            ]
            pooled_ctl = [
                a / b
                for size in sizes
                if size >= ACCEPT_FROM_BYTES
                for a, b in zip(results[size]["loop2"], results[size]["loop"])
            ]
            if pooled:
                pooled_diff = statistics.median(pooled) - 1.0
                print(
                    f"{'>=16MiB':>8} {'':>12} {'':>12} {pooled_diff:+8.2%}  {'pooled':8} "
                    f"{statistics.median(pooled_ctl) - 1.0:+8.2%}  ({len(pooled)} pairs)"
                )
            print(
                "# diff = median over rounds of (bench busbw / loop busbw) - 1; A/A ctl = the same "
                "for a second run of the plain loop against the first\n# acceptance "
                f"(|diff| <= {TOLERANCE:.0%} at >= 16 MiB): {'PASS' if ok else 'FAIL'}"
            )
        flag = torch.tensor([0 if ok else 1])
        dist.broadcast(flag, src=0)
        return int(flag.item())
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
