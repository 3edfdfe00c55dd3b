"""Blocking (``-z 1``) vs non-blocking (``-z 0``) all_reduce busbw in one process group.

Run from the repository root (2 ranks, gloo, CPU)::

    python -m torch.distributed.run --nproc-per-node 2 --master-addr 127.0.0.1 \
        --master-port 29701 benchmarks/blocking_vs_nonblocking.py

For each size, the two modes of train.bench (:func:`measure_seconds` and
:func:`measure_seconds_nonblocking` on :func:`buffer_sets`) run back to back in every round, the
order alternating, so load drift hits both alike; rank 0 prints the median busbw of each mode over
the rounds, their ratio, and #wrong of each mode's exact check (one blocking op on the case's
own buffers after the timed ops). Acceptance: non-blocking > blocking at >= 16 MiB with #wrong = 0
in both. Exit status 1 when that fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from train.bench import (  # noqa: E402
    aggregate_seconds,
    buffer_sets,
    count_wrong,
    measure_seconds,
    measure_seconds_nonblocking,
)
from train.collectives import Case, Comm, buffer_shape  # noqa: E402
from train.contract import op_spec  # noqa: E402

MIB = 1 << 20


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes-mib", default="16,32,64")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args()
    dist.init_process_group("gloo")
    import torch

    comm = Comm.current(torch.device("cpu"))
    factor = op_spec("all_reduce").bus_factor(comm.world_size)
    ok = True
    if comm.rank == 0:
        print(f"# all_reduce float32 gloo, {comm.world_size} ranks, median of {args.rounds} "
              f"rounds, warmup {args.warmup} iters {args.iters}")
        print(f"{'size':>8} {'-z 1 busbw':>11} {'-z 0 busbw':>11} {'z0/z1':>6} "
              f"{'wrong z1':>8} {'wrong z0':>8}")
    for mib in (int(x) for x in args.sizes_mib.split(",")):
        shape = buffer_shape("all_reduce", mib * MIB, 4, comm.world_size)
        case = Case("all_reduce", "float32", shape, True, "sum", comm)
        busbw: dict[int, list[float]] = {1: [], 0: []}
        wrong: dict[int, int | None] = {}
        for r in range(args.rounds):
            for z in ((1, 0) if r % 2 == 0 else (0, 1)):
                if z:
                    s = measure_seconds(case.run, args.warmup, args.iters, comm)
                else:
                    sets = buffer_sets(case, args.iters)
                    s = measure_seconds_nonblocking(sets, args.warmup, args.iters, comm)
                    del sets
                _, avg, _ = aggregate_seconds(s, comm)
                busbw[z].append(mib * MIB / avg / 1e9 * factor)
                wrong[z] = count_wrong(case)
        if comm.rank == 0:
            b1, b0 = statistics.median(busbw[1]), statistics.median(busbw[0])
            print(f"{mib:>5}MiB {b1:>11.3f} {b0:>11.3f} {b0 / b1:>6.2f} {wrong[1]!s:>8} "
                  f"{wrong[0]!s:>8}", flush=True)
            ok = ok and b0 > b1 and wrong[1] == 0 and wrong[0] == 0
    dist.barrier()
    dist.destroy_process_group()
    if comm.rank == 0:
        print("acceptance (-z 0 > -z 1 at every size, #wrong 0):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
