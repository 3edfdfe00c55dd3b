"""Pairwise link matrix, run under torchrun with one rank per node: ``python -m train.fabric``.

Every pair of ranks is measured once, in the round-robin schedule of
:func:`train.contract.round_robin`: N/2 disjoint pairs at a time (N-1 rounds for even N), so a
round loads every node with exactly one peer and a slow node or link cannot hide behind others.
All ranks meet at a barrier between rounds. Inside a round each pair (a < b) runs, on its own:

1. **bandwidth a -> b**: ``warmup`` untimed messages of ``bw_bytes``; then b sends a "go"
   holding a count (sized to take about ``bw_seconds``, at most ``bw_iters``) and times until
   it has received that many messages more (``send``/``recv``, the sendrecv pattern). The
   receiver's clock measures the whole transfer, one round trip included.
2. **bandwidth b -> a**, the same the other way.
3. **latency**: ``lat_iters`` ping-pongs of ``lat_bytes`` after ``warmup``; a times them, and the
   one-way latency is half the mean round trip.

The whole schedule runs ``passes`` times; each direction keeps its best bandwidth and each pair
its lowest latency, because load from elsewhere on a shared host only ever makes a link look
worse. With ``--schedule bisect`` (large N) only the first round runs for every node; the nodes of
slow pairs are then measured against nodes of fast pairs (see :func:`bisect_rounds`), and the
result holds the measured pairs only. Each rank keeps what it timed; one ``all_gather_object``
brings it to rank 0, which prints the result line (see train/results.py, kind "fabric")::

    ranks      [RankEntry]                         as for "bench"
    rounds     [[[a, b], ...], ...]               the schedule that ran
    bandwidth  [{src, dst, gbps, passes}]          one per direction, measured at dst: the
                                                   best pass, and every pass's value
    latency    [{a, b, us, passes}]                one per pair, measured at a (lowest pass)
    settings   {bw_bytes, bw_iters, bw_seconds, lat_bytes, lat_iters, warmup}

The host (orchestrator/fabric.py) turns it into the matrix and the verdict.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from train.contract import FabricArgs, round_robin
from train.env import rank_info
from train.group import process_group, result_head
from train.results import encode_result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def receive_rate(src: int, buf: torch.Tensor, go: torch.Tensor, cfg: FabricArgs) -> float:
    """As the receiver of ``src``: GB/s (1e9 bytes/s) of the timed messages after the warmup.

    The count aims at ``cfg.bw_seconds`` of transfer, from the last warmup message's time (a
    50 Mbit/s link gets one message, an unshaped bridge up to ``bw_iters``), and travels to the
    sender in the "go" message that starts the timed run.
    """
    last = 0.0
    for _ in range(cfg.warmup):
        t = time.perf_counter()
        dist.recv(buf, src)
        _sync(buf.device)
        last = time.perf_counter() - t
    iters = max(1, min(cfg.bw_iters, math.ceil(cfg.bw_seconds / max(last, 1e-6))))
    go.fill_(iters)
    t0 = time.perf_counter()
    dist.send(go, src)
    for _ in range(iters):
        dist.recv(buf, src)
    _sync(buf.device)
    elapsed = time.perf_counter() - t0
    return buf.numel() * buf.element_size() * iters / elapsed / 1e9


def send_stream(dst: int, buf: torch.Tensor, go: torch.Tensor, cfg: FabricArgs) -> None:
    """As the sender to ``dst``: the counterpart of :func:`receive_rate`."""
    for _ in range(cfg.warmup):
        dist.send(buf, dst)
    dist.recv(go, dst)
    for _ in range(int(go.item())):
        dist.send(buf, dst)
    _sync(buf.device)


def ping_pong_us(me: int, peer: int, buf: torch.Tensor, warmup: int, iters: int) -> float | None:
    """One-way latency in microseconds (half the mean round trip), timed by the lower rank;
    the higher rank echoes and returns None."""
    first = me < peer
    for i in range(warmup + iters):
        if i == warmup and first:
            _sync(buf.device)
            t0 = time.perf_counter()
        if first:
            dist.send(buf, peer)
            dist.recv(buf, peer)
        else:
            dist.recv(buf, peer)
            dist.send(buf, peer)
    if not first:
        return None
    _sync(buf.device)
    return (time.perf_counter() - t0) / iters / 2 * 1e6


def measure_pair(me: int, peer: int, cfg: FabricArgs, device: torch.device
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """This rank's share of one pair: the bandwidth it received and, as the lower rank, the
    latency."""
    a, b = min(me, peer), max(me, peer)
    big = torch.ones(cfg.bw_bytes, dtype=torch.uint8, device=device)
    go = torch.zeros(1, dtype=torch.int64, device=device)
    bandwidth: list[dict[str, Any]] = []
    for src, dst in ((a, b), (b, a)):
        if me == dst:
            gbps = receive_rate(src, big, go, cfg)
            bandwidth.append({"src": src, "dst": dst, "gbps": gbps})
        else:
            send_stream(dst, big, go, cfg)
    small = torch.ones(cfg.lat_bytes, dtype=torch.uint8, device=device)
    us = ping_pong_us(me, peer, small, cfg.warmup, cfg.lat_iters)
    latency = [] if us is None else [{"a": a, "b": b, "us": us}]
    return bandwidth, latency


def best_of(samples: Iterable[dict[str, Any]], key: tuple[str, str], value: str,
            pick: Callable[[Sequence[float]], float]) -> list[dict[str, Any]]:
    """One entry per ``key`` with the best ``value`` of its passes and every pass's value."""
    grouped: dict[tuple[int, int], list[float]] = {}
    for x in samples:
        grouped.setdefault((int(x[key[0]]), int(x[key[1]])), []).append(float(x[value]))
    return [{key[0]: k[0], key[1]: k[1], value: pick(v), "passes": v}
            for k, v in sorted(grouped.items())]


def bisect_rounds(world: int, cfg: FabricArgs,
                  measure_round: Callable[[Sequence[tuple[int, int]]], None],
                  bandwidth: list[dict[str, Any]]) -> list[list[tuple[int, int]]]:
    """The bisect schedule for large N: one round of N/2 disjoint pairs, then only the nodes of
    slow pairs again, each with a node of a fast pair, in as few rounds as the fast nodes allow.

    Every rank takes the same decisions from the same gathered figures. A pair is slow below
    ``cfg.slow_fraction`` x the round's median; the host judges the measured pairs again with
    the full rule (orchestrator/fabric.py). One slow node or link of any N costs 2 rounds.
    """
    first = round_robin(world)[0]
    for _ in range(cfg.passes):
        measure_round(first)
    values = _pair_values(bandwidth, world)
    reference = statistics.median(values[p] for p in first)
    slow = [p for p in first if values[p] < cfg.slow_fraction * reference]
    rounds = [first]
    if not slow:
        return rounds
    paired = {x for p in first for x in p}
    suspects = sorted({x for p in slow for x in p} | (set(range(world)) - paired))
    good = sorted({x for p in first if p not in slow for x in p})
    while suspects and good:
        batch, suspects = suspects[:len(good)], suspects[len(good):]
        pairs = sorted((min(a, b), max(a, b)) for a, b in zip(batch, good))
        for _ in range(cfg.passes):
            measure_round(pairs)
        rounds.append(pairs)
    return rounds


def _pair_values(mine: list[dict[str, Any]], world: int) -> dict[tuple[int, int], float]:
    """Every rank's received bandwidths so far, gathered: pair -> the slower direction's best."""
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    best: dict[tuple[int, int], float] = {}
    for x in (x for g in gathered for x in g):
        key = (int(x["src"]), int(x["dst"]))
        best[key] = max(best.get(key, 0.0), float(x["gbps"]))
    return {(a, b): min(best.get((a, b), 0.0), best.get((b, a), 0.0))
            for a, b in {(min(k), max(k)) for k in best}}


def partner(rank: int, pairs: Sequence[tuple[int, int]]) -> int | None:
    """``rank``'s peer in a round, or None when it sits the round out (odd N)."""
    for a, b in pairs:
        if rank in (a, b):
            return b if rank == a else a
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the pairwise measurement as one rank; rank 0 prints the result line."""
    cfg = FabricArgs.from_argv(sys.argv[1:] if argv is None else argv)
    with process_group(cfg.dist_backend, cfg.timeout_s) as (backend, device):
        started = time.perf_counter()
        rank, world = dist.get_rank(), dist.get_world_size()
        bandwidth: list[dict[str, Any]] = []
        latency: list[dict[str, Any]] = []

        def measure_round(pairs: Sequence[tuple[int, int]]) -> None:
            dist.barrier()
            peer = partner(rank, pairs)
            if peer is not None:
                bw, lat = measure_pair(rank, peer, cfg, device)
                bandwidth.extend(bw)
                latency.extend(lat)

        if cfg.schedule == "bisect":
            rounds = bisect_rounds(world, cfg, measure_round, bandwidth)
        else:
            rounds = round_robin(world)
            for _ in range(cfg.passes):
                for pairs in rounds:
                    measure_round(pairs)
        mine = {"rank_info": dict(rank_info().to_dict(), rank=rank, world_size=world),
                "bandwidth": bandwidth, "latency": latency}
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, mine)
        if rank == 0:
            doc: dict[str, Any] = {
                **result_head("fabric", cfg.run_id, backend, device,
                              (g["rank_info"] for g in gathered)),
                "settings": cfg.settings(),
                "schedule": cfg.schedule,
                "rounds": [[list(p) for p in pairs] for pairs in rounds],
                "bandwidth": best_of(
                    (x for g in gathered for x in g["bandwidth"]), ("src", "dst"), "gbps", max),
                "latency": best_of(
                    (x for g in gathered for x in g["latency"]), ("a", "b"), "us", min),
                "elapsed_s": time.perf_counter() - started,
            }
            print(encode_result(doc), flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
