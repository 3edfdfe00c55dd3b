"""A plain torch.distributed job, written the way the seed guide's compose recipe expects.

Each container runs ``python3 /bench/allreduce.py`` with MASTER_ADDR, MASTER_PORT, WORLD_SIZE and
RANK in its environment (see docker-compose.yml next to this file): env:// rendezvous, gloo, a
1 MiB float32 all_reduce, 3 warmup and 10 timed iterations, rank 0 prints the time. No
correctness check, no netorch code: it is the hand-written baseline that
``benchmarks/launch_vs_compose.py`` times against
``netorch bench --backend docker --nodes 4 --ops all_reduce -B 1M -E 1M -w 3 -i 10 --no-check -q``.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

SIZE_BYTES = 1 << 20
WARMUP = 3
ITERS = 10


def main() -> None:
    dist.init_process_group("gloo", init_method="env://")
    x = torch.ones(SIZE_BYTES // 4, dtype=torch.float32)
    for _ in range(WARMUP):
        dist.all_reduce(x)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(ITERS):
        dist.all_reduce(x)
    dist.barrier()
    per_iter_us = (time.perf_counter() - t0) / ITERS * 1e6
    if dist.get_rank() == 0:
        print(f"all_reduce 1 MiB float32 x {dist.get_world_size()} ranks: {per_iter_us:.1f} us/iter",
              flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
