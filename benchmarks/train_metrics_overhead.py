"""Training throughput with the per-rank Prometheus endpoint on vs off, in one run.

Run from the repository root (2 ranks, gloo, CPU)::

    python -m torch.distributed.run --nproc-per-node 2 --master-addr 127.0.0.1 \
        --master-port 29710 benchmarks/train_metrics_overhead.py --rounds 8 --steps 100

One process group, one model: each round trains ``--steps`` steps with metrics OFF and ``--steps``
with metrics ON, the order alternating every round, so drift in machine load hits both alike. ON
means what ``netorch train`` does with metrics enabled: every step is observed by train.telemetry
(histogram, counters, gauges), and each rank's endpoint is scraped by a thread every
``--scrape-interval`` seconds (a Prometheus stand-in, 0.5 s by default: twice as often as the
acceptance test's Prometheus). OFF: no observe calls and no scrapes (the endpoint is not served).
Both modes run the same DDP step, communication hook included.

Throughput = global samples / wall time of a block. Overhead = 1 - ON/OFF, taken as the median of
the per-round paired ratios. Each round also runs a second OFF block (A/A control): the spread of
OFF2/OFF is the noise floor of the machine, against which ON/OFF should be read. Because a loaded
2-core host can swamp a 2 % effect, the cost of the instrumentation itself is also measured
directly: the time of one ``observe_step`` call (10 000 calls) over the median OFF step time.
Target: overhead under 2 %. Exit status 0 always; the verdict is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.job import (  # noqa: E402  (after the path fix)
    CommTimer,
    JobConfig,
    make_batch,
    make_model,
    teacher,
    timed_allreduce_hook,
)
from train.telemetry import Telemetry  # noqa: E402


def scraper(url: str, interval: float, stop: threading.Event, active: threading.Event) -> None:
    """Scrape ``url`` every ``interval`` seconds while ``active`` is set, until ``stop``."""
    while not stop.wait(interval):
        if active.is_set():
            with urllib.request.urlopen(url, timeout=5) as resp:
                resp.read()


def main() -> int:
    """Run the alternating on/off rounds; rank 0 prints the table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=100, help="steps per block")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--scrape-interval", type=float, default=0.5)
    ap.add_argument("--port-base", type=int, default=19600)
    a = ap.parse_args()
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = JobConfig(steps=a.steps, batch_size=a.batch_size, width=a.width, depth=3, bucket_cap_mb=25.0,
                    checkpoint_every=0, keep_checkpoints=1, seed=0, lr=0.05, progress_every=1,
                    dist_backend="gloo", timeout_s=120, run_id=None, metrics_hold_s=0,
                    metrics_hold_scrapes=0)
    ddp = DistributedDataParallel(make_model(cfg), bucket_cap_mb=cfg.bucket_cap_mb)
    timer = CommTimer()
    ddp.register_comm_hook(timer, timed_allreduce_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=cfg.lr, momentum=0.9)
    target = teacher(cfg.seed)
    loss_fn = nn.MSELoss()
    telemetry = Telemetry(rank, 0)
    port = a.port_base + int(os.environ.get("LOCAL_RANK", "0"))
    problem = telemetry.start("127.0.0.1", port)
    if problem:
        raise SystemExit(problem)
    stop, active = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=scraper, args=(f"http://127.0.0.1:{port}/metrics", a.scrape_interval, stop, active),
        daemon=True)
    thread.start()
    step = 0

    def block(metrics_on: bool) -> float:
        nonlocal step
        (active.set if metrics_on else active.clear)()
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            s0 = time.perf_counter()
            timer.reset()
            x, y = make_batch(cfg.seed, step, rank, cfg.batch_size, target)
            loss = loss_fn(ddp(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.item())
            duration = time.perf_counter() - s0
            if metrics_on:
                telemetry.observe_step(duration, cfg.batch_size, value,
                                       timer.in_flight_s() / duration)
            step += 1
        dist.barrier()
        return a.steps * world * cfg.batch_size / (time.perf_counter() - t0)

    block(False)  # warm-up: DDP bucket rebuild, allocator, first scrape
    rows = []
    controls = []
    for r in range(a.rounds):
        order = ("off", "on", "off2") if r % 2 == 0 else ("on", "off2", "off")
        got = {mode: block(mode == "on") for mode in order}
        rows.append((got["off"], got["on"]))
        controls.append(got["off2"] / got["off"])
    active.clear()
    calls = 10_000
    t0 = time.perf_counter()
    for _ in range(calls):
        telemetry.observe_step(0.01, cfg.batch_size, 0.5, 0.5)
    observe_s = (time.perf_counter() - t0) / calls
    stop.set()
    telemetry.close()
    if rank == 0:
        ratios = [on / off for off, on in rows]
        print(f"{'round':>5} {'off samples/s':>14} {'on samples/s':>14} {'on/off':>8}")
        for i, ((off, on), ratio) in enumerate(zip(rows, ratios)):
            print(f"{i:>5} {off:>14,.0f} {on:>14,.0f} {ratio:>8.4f}")
        med = statistics.median(ratios)
        print(f"median off {statistics.median(r[0] for r in rows):,.0f} samples/s, "
              f"on {statistics.median(r[1] for r in rows):,.0f} samples/s")
        print(f"overhead (median of paired ratios): {1 - med:+.2%}; "
              f"ratio spread min..max {min(ratios):.4f}..{max(ratios):.4f} "
              f"(world {world}, {a.steps} steps/block, batch {cfg.batch_size}, width {cfg.width}, "
              f"scrape every {a.scrape_interval}s)")
        print(f"A/A control (off2/off): median {statistics.median(controls):.4f}, "
              f"min..max {min(controls):.4f}..{max(controls):.4f}")
        step_s = world * cfg.batch_size / statistics.median(r[0] for r in rows)
        print(f"observe_step: {observe_s * 1e6:.1f} us per call = {observe_s / step_s:.3%} of the "
              f"median step ({step_s * 1e3:.2f} ms)")
        verdict = 1 - med < 0.02
        print("target overhead < 2 % (paired median): " + ("met" if verdict else "NOT met"))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
