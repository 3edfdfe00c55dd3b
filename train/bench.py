"""Collective benchmark with nccl-tests semantics, run under torchrun: ``python -m train.bench``.

For every (op, dtype, size, in-place variant) each rank runs ``warmup`` ops, then times ``iters`` ops;
per-rank time is elapsed / iters and the ranks' times are reduced to min / avg / max. As in nccl-tests
(``-a`` default), bandwidths derive from the rank-averaged time::

    algbw_gbps = size_bytes / avg_time_s / 1e9
    busbw_gbps = algbw_gbps * OPS[op].bus_factor(world_size)

with ``size_bytes`` the full buffer nccl-tests prints (see train/collectives.py, which also says
what each op is on torch, its in-place forms and its expected output). With ``--check 1`` one more
op per variant runs on deterministic data and is compared exactly with an expectation computed
independently in float64; ``wrong`` is the number of mismatched elements summed over ranks.

This module is the driver: probing which (op, dtype, form) the backend takes, timing, the sweep
over sizes, gathering the ranks' figures into rows, and the command line. The table is
train/bench_table.py.

Timing: gloo/CPU ops are blocking, so ``barrier; perf_counter; iters x op; barrier; perf_counter``.
The closing barrier is inside the timed span on purpose: it makes a rank's time cover the op until
every rank finished it, which is what a bandwidth over "the collective" means (and what an
independent loop measures, see benchmarks/bench_vs_loop.py). NCCL/CUDA ops are asynchronous, so CUDA
events on the current stream bracket the loop and the host waits for the end event.

Non-blocking (``--blocking 0``, nccl-tests ``-z 0``): the timed ops are issued with ``async_op``
on up to ``NONBLOCKING_DEPTH`` buffer sets and waited for together (see
:func:`measure_seconds_nonblocking`); gloo then runs several collectives at once on its worker
threads, as DDP's buckets in flight do. The check still runs one blocking op on the first set.

An (op, dtype) the backend rejects becomes a ``skipped`` entry with the backend's message: it is never
replaced by a different op, which would report another collective's bandwidth under this name.

Rank 0 prints a nccl-tests-like table, then the result line (see train/results.py). The process exits
0 when the sweep finished, even with wrong > 0: the host judges. Any exception exits non-zero.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import torch
import torch.distributed as dist

from train.bench_table import format_table as format_table
from train.collectives import DTYPES, buffer_shape, count_wrong_local
from train.collectives import Case as Case
from train.collectives import Comm as Comm
from train.contract import NONBLOCKING_DEPTH, BenchArgs, InPlaceMode, op_spec, size_sweep
from train.env import rank_info, tuning_env
from train.group import process_group, result_head
from train.results import ResultRow, SkippedEntry, TimeUs, encode_result
from train.traffic import sent_per_iteration, tx_bytes


# --------------------------------------------------------------------------- measuring one case


def algbw_gbps(size_bytes: int, time_s: float) -> float:
    """Return the algorithm bandwidth in GB/s (1e9 bytes/s) of moving ``size_bytes`` in ``time_s``."""
    return size_bytes / time_s / 1e9


def variants(op: str, in_place: InPlaceMode) -> tuple[bool, ...]:
    """Return the in_place flags to measure for ``op`` under ``--in-place``, out-of-place first."""
    wanted = {"both": (False, True), "on": (True,), "off": (False,)}[in_place]
    return tuple(flag for flag in wanted if flag in op_spec(op).forms)


def barrier(comm: Comm) -> None:
    """Barrier on the default group; on NCCL, pinned to this rank's GPU (avoids device guessing)."""
    if comm.device.type == "cuda":
        dist.barrier(device_ids=[comm.device.index])
    else:
        dist.barrier()


def _seconds_per_op(ops: Callable[[int], None], warmup: int, iters: int, comm: Comm) -> float:
    """This rank's seconds per op: ``ops(warmup)`` untimed, then ``ops(iters)`` timed between
    barriers (CUDA: between events, after the warmup has drained the stream)."""
    ops(warmup)
    if comm.device.type == "cuda":
        torch.cuda.synchronize(comm.device)
        barrier(comm)
        # torch.cuda.Event.__init__ is unannotated in torch 2.13.
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        start.record()
        ops(iters)
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)) / 1e3 / iters
    barrier(comm)
    t0 = time.perf_counter()
    ops(iters)
    barrier(comm)
    return (time.perf_counter() - t0) / iters


def measure_seconds(run: Callable[[], None], warmup: int, iters: int, comm: Comm) -> float:
    """Return this rank's seconds per op: ``warmup`` untimed ops, then ``iters`` timed ones."""

    def ops(count: int) -> None:
        for _ in range(count):
            run()

    return _seconds_per_op(ops, warmup, iters, comm)


def measure_seconds_nonblocking(
    cases: Sequence[Case], warmup: int, iters: int, comm: Comm
) -> float:
    """Return this rank's seconds per op with the ops issued asynchronously (nccl-tests ``-z 0``).

    Op i runs on ``cases[i % len(cases)]``'s buffers: up to ``len(cases)`` ops are in flight at
    once, and an op waits only for the previous op on its own buffers before it is issued. The
    timed span is ``barrier; issue iters ops; wait for all; barrier`` (CUDA: events around the
    issue loop, after the waits order the stream), so the figure is what overlapping collectives
    achieve, as DDP's buckets in flight do.
    """

    def burst(count: int) -> None:
        pending: dict[int, list[Any]] = {}
        for i in range(count):
            slot = i % len(cases)
            for work in pending.pop(slot, []):
                work.wait()
            pending[slot] = cases[slot].start()
        for works in pending.values():
            for work in works:
                work.wait()

    return _seconds_per_op(burst, warmup, iters, comm)


def buffer_sets(case: Case, iters: int) -> list[Case]:
    """``case`` and copies of it on buffers of their own, for non-blocking timing: one per op in
    flight, at most ``min(iters, NONBLOCKING_DEPTH)``. The copies take ``case``'s input data (a
    memcpy, not a re-fill): their content matters for timing only, never for the check."""
    sets = [case]
    for _ in range(min(iters, NONBLOCKING_DEPTH) - 1):
        twin = Case(case.op, case.dtype_name, case.shape, case.in_place, case.reduce_op,
                    case.comm, fill=False)
        twin.input.copy_(case.input)
        sets.append(twin)
    return sets


def aggregate_seconds(seconds: float, comm: Comm) -> tuple[float, float, float]:
    """Return (min, avg, max) of every rank's ``seconds`` (a collective: all ranks must call)."""
    (per_rank,) = gather_floats([seconds], comm)[1]
    return min_avg_max(per_rank)


def min_avg_max(values: Sequence[float]) -> tuple[float, float, float]:
    """Return (min, mean, max) of the ranks' values (nccl-tests' -a aggregation)."""
    return min(values), sum(values) / len(values), max(values)


def gather_floats(values: Sequence[float], comm: Comm, identity: bytes = b"",
                  identity_cap: int = 0) -> tuple[list[bytes], list[list[float]]]:
    """One all_gather of every rank's float64 ``values`` (and ``identity`` bytes); a collective.

    Returns (identities, columns): ``columns[i][r]`` is rank r's ``values[i]``. All ranks must
    pass as many values and the same ``identity_cap``; ``identity`` (at most ``identity_cap``
    bytes) travels as one float64 per byte after the values, padded with -1: one small tensor
    in one collective instead of a pickling ``all_gather_object`` (two collectives) plus one
    all_reduce per statistic.
    """
    if len(identity) > identity_cap:
        raise ValueError(f"identity of {len(identity)} bytes exceeds the cap of {identity_cap}")
    n = len(values)
    mine = torch.full((n + identity_cap,), -1.0, dtype=torch.float64)
    mine[:n] = torch.tensor(list(values), dtype=torch.float64)
    if identity:
        mine[n:n + len(identity)] = torch.frombuffer(bytearray(identity), dtype=torch.uint8).to(
            torch.float64)
    mine = mine.to(comm.device)
    out = [torch.empty_like(mine) for _ in range(comm.world_size)]
    dist.all_gather(out, mine)
    rows = [t.cpu().tolist() for t in out]
    columns = [[r[i] for r in rows] for i in range(n)]
    identities = [bytes(int(b) for b in r[n:] if b >= 0) for r in rows]
    return identities, columns


def sum_over_ranks(value: int, comm: Comm) -> int:
    """Return the sum of an int over all ranks (a collective)."""
    t = torch.tensor([value], dtype=torch.int64, device=comm.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t.item())


def make_row(case: Case, t_min: float, t_avg: float, t_max: float) -> ResultRow:
    """Return the result row of ``case`` from its aggregated per-op seconds (wrong left null)."""
    elem_size = torch.empty((), dtype=DTYPES[case.dtype_name]).element_size()
    size_bytes = case.shape.count * elem_size
    algbw = algbw_gbps(size_bytes, t_avg)
    return {
        "op": case.op,
        "dtype": case.dtype_name,
        "size_bytes": size_bytes,
        "count": case.shape.count,
        "in_place": case.in_place,
        "redop": case.reduce_op if case.impl.spec.reducing else None,
        "time_us": TimeUs(min=t_min * 1e6, avg=t_avg * 1e6, max=t_max * 1e6),
        "algbw_gbps": algbw,
        "busbw_gbps": algbw * case.impl.spec.bus_factor(case.comm.world_size),
        "wrong": None,
    }


def bench_case(case: Case, warmup: int, iters: int) -> ResultRow:
    """Time ``case`` on every rank and return its row (a collective: all ranks must call)."""
    seconds = measure_seconds(case.run, warmup, iters, case.comm)
    return make_row(case, *aggregate_seconds(seconds, case.comm))


def count_wrong(case: Case) -> int | None:
    """Re-fill ``case``, run one op, return mismatches summed over ranks (None: not exact-checkable).

    :func:`train.collectives.count_wrong_local` (which says who counts what) plus one all_reduce;
    a collective: all ranks must call.
    """
    local = count_wrong_local(case)
    return None if local is None else sum_over_ranks(local, case.comm)


# --------------------------------------------------------------------------- probing support


def probe_support(op: str, dtype_name: str, in_place: bool, reduce_op: str, comm: Comm) -> str | None:
    """Run ``op`` once on a tiny buffer; return None if every rank succeeded, else a reason.

    A backend rejecting a dtype does so on every rank before communicating (a type check), so the
    ranks stay in step; they then agree on the outcome with one all_reduce. Network and store
    errors are not "unsupported" and propagate.
    """
    return probe_all([(op, dtype_name, in_place)], reduce_op, comm)[0]


def probe_all(
    probes: Sequence[tuple[str, str, bool]], reduce_op: str, comm: Comm
) -> list[str | None]:
    """:func:`probe_support` for every (op, dtype, in_place) of ``probes``, agreed in one all_reduce.

    Each probe's tiny op either communicates or is rejected locally before communicating (see
    :func:`probe_support`), so the ranks run the same probes in step; one MAX all_reduce over
    the flags then agrees on every outcome at once instead of one all_reduce per probe.
    """
    reasons: list[str | None] = []
    for op, dtype_name, in_place in probes:
        reason: str | None = None
        try:
            elem_size = torch.empty((), dtype=DTYPES[dtype_name]).element_size()
            shape = buffer_shape(op, comm.world_size * elem_size, elem_size, comm.world_size)
            Case(op, dtype_name, shape, in_place, reduce_op, comm).run()
        except (dist.DistNetworkError, dist.DistStoreError):
            raise
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
            text = str(e).strip()
            reason = f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
        reasons.append(reason)
    if not reasons:
        return []
    failed = torch.tensor([0 if r is None else 1 for r in reasons], dtype=torch.int64,
                          device=comm.device)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    return [None if flag == 0 else (reason or "rejected by the backend on another rank")
            for flag, reason in zip(failed.tolist(), reasons)]


# --------------------------------------------------------------------------- the sweep


IDENTITY_CAP: Final = 4096  # bytes of one rank's identity JSON in the closing gather


@dataclass
class _Measured:
    """A measured case waiting for the closing gather: its row with this rank's figures."""

    row: ResultRow
    seconds: float
    wrong: int | None  # this rank's mismatches; None: check off or not exact-checkable
    bus_factor: float


def run_sweep(
    cfg: BenchArgs, comm: Comm
) -> tuple[list[ResultRow], list[SkippedEntry], list[str]]:
    """Measure every (op, dtype, size, variant) of ``cfg``; return (rows, skipped, notes).

    A collective: all ranks run the same sequence. Only the returned values on rank 0 are reported.
    """
    rows, skipped, notes, _ = measure_sweep(cfg, comm, b"")
    return rows, skipped, notes


def measure_sweep(
    cfg: BenchArgs, comm: Comm, identity: bytes
) -> tuple[list[ResultRow], list[SkippedEntry], list[str], list[bytes]]:
    """:func:`run_sweep`, also gathering every rank's ``identity``; returns (..., identities).

    Collectives besides the measured ops: one all_reduce agreeing on every support probe, and
    one all_gather at the end carrying every case's per-rank seconds and mismatch counts and the
    ranks' identities; the rows are the same as aggregating case by case (min / rank-averaged /
    max time, wrong summed over ranks).
    """
    skipped: list[SkippedEntry] = []
    notes: list[str] = []
    sizes = size_sweep(cfg.min_bytes, cfg.max_bytes, cfg.step_factor)
    # Pass 1: what to measure, and one agreement on which (op, dtype, form) the backend takes.
    plan: list[tuple[str, str, tuple[bool, ...]]] = []
    for op in cfg.ops:
        spec = op_spec(op)
        too_few = spec.world_size_problem(comm.world_size)
        if too_few is not None:
            skipped += [{"op": op, "dtype": d, "reason": too_few} for d in cfg.dtypes]
            continue
        forms = variants(op, cfg.in_place)
        if spec.form_reason and forms and len(forms) < (2 if cfg.in_place == "both" else 1):
            notes.append(f"{op}: {spec.form_reason}")
        for dtype_name in cfg.dtypes:
            plan.append((op, dtype_name, forms))
    probes = [(op, d, flag) for op, d, forms in plan for flag in forms]
    reasons = dict(zip(probes, probe_all(probes, cfg.reduce_op, comm)))
    # Pass 2: measure, in the order the ops and dtypes were given.
    measured: list[_Measured] = []
    sent: list[dict[str, float]] = []  # per case: bytes per iteration on each interface
    for op, dtype_name, forms in plan:
        spec = op_spec(op)
        if not forms:
            skipped.append({"op": op, "dtype": dtype_name, "reason": spec.form_reason or ""})
            continue
        supported = []
        for in_place in forms:
            reason = reasons[(op, dtype_name, in_place)]
            if reason is None:
                supported.append(in_place)
            else:
                label = "in-place" if in_place else "out-of-place"
                skipped.append({"op": op, "dtype": dtype_name, "reason": f"{label}: {reason}"})
        if not supported:
            continue
        elem_size = torch.empty((), dtype=DTYPES[dtype_name]).element_size()
        produced = 0
        for size in sizes:
            shape = buffer_shape(op, size, elem_size, comm.world_size)
            if shape.count == 0:
                continue  # fewer bytes than one element per rank: nothing to move
            for in_place in supported:
                case = Case(op, dtype_name, shape, in_place, cfg.reduce_op, comm)
                before = tx_bytes()
                if cfg.blocking:
                    seconds = measure_seconds(case.run, cfg.warmup, cfg.iters, case.comm)
                else:
                    seconds = measure_seconds_nonblocking(buffer_sets(case, cfg.iters),
                                                          cfg.warmup, cfg.iters, case.comm)
                sent.append(sent_per_iteration(before, tx_bytes(), cfg.warmup + cfg.iters))
                wrong = count_wrong_local(case) if cfg.check else None
                measured.append(_Measured(make_row(case, seconds, seconds, seconds), seconds,
                                          wrong, spec.bus_factor(comm.world_size)))
                produced += 1
                del case
        if produced == 0:
            skipped.append(
                {
                    "op": op,
                    "dtype": dtype_name,
                    "reason": f"every size up to {cfg.max_bytes} B holds fewer than "
                    f"{comm.world_size} elements of {dtype_name}",
                }
            )
    # The check decision is the same on every rank, so -1 (no count) is too.
    values = [m.seconds for m in measured] + [-1.0 if m.wrong is None else float(m.wrong)
                                              for m in measured]
    identities, columns = gather_floats(values, comm, identity, IDENTITY_CAP if identity else 0)
    every_sent: list[Any] = [None] * comm.world_size
    dist.all_gather_object(every_sent, sent)  # traffic proof: one more gather, after timing
    rows: list[ResultRow] = []
    for i, m in enumerate(measured):
        t_min, t_avg, t_max = min_avg_max(columns[i])
        algbw = algbw_gbps(m.row["size_bytes"], t_avg)
        wrongs = columns[len(measured) + i]
        rows.append({
            **m.row,
            "time_us": TimeUs(min=t_min * 1e6, avg=t_avg * 1e6, max=t_max * 1e6),
            "algbw_gbps": algbw,
            "busbw_gbps": algbw * m.bus_factor,
            "wrong": None if m.wrong is None or not cfg.check else int(sum(wrongs)),
            "traffic": {
                "expected_bytes_per_rank": op_spec(m.row["op"]).wire_bytes_per_rank(
                    m.row["size_bytes"], comm.world_size),
                "tx_bytes_per_rank": [rank_sent[i] for rank_sent in every_sent],
            },
        })
    return rows, skipped, notes, identities


def wrong_total(rows: Sequence[ResultRow], check: bool) -> int | None:
    """Return the sum of ``wrong`` over rows, or None when the check was off."""
    if not check:
        return None
    return sum(row["wrong"] or 0 for row in rows)


# --------------------------------------------------------------------------- entry point


def parse_config(argv: Sequence[str] | None = None) -> BenchArgs:
    """Parse ``argv`` (default: sys.argv[1:]) into :class:`BenchArgs`; exits 2 on a bad flag."""
    return BenchArgs.from_argv(sys.argv[1:] if argv is None else argv)


def _identity_bytes(me: dict[str, Any]) -> bytes:
    """This rank's identity as compact JSON, cut down to the rank numbers if it would not fit."""
    raw = json.dumps(me, separators=(",", ":")).encode()
    if len(raw) <= IDENTITY_CAP:
        return raw
    keep = ("rank", "world_size", "node_rank", "local_rank")
    return json.dumps({k: me[k] for k in keep if k in me}, separators=(",", ":")).encode()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark as one rank of a torchrun job; return the exit code (0: finished)."""
    cfg = parse_config(argv)
    with process_group(cfg.dist_backend, cfg.timeout_s) as (backend, device):
        started = time.perf_counter()
        comm = Comm.current(device)
        me = dict(rank_info().to_dict(), rank=comm.rank, world_size=comm.world_size,
                  env=tuning_env())
        rows, skipped, notes, identities = measure_sweep(cfg, comm, _identity_bytes(me))
        ranks = [json.loads(raw) for raw in identities]
        if comm.rank == 0:
            doc: dict[str, Any] = {
                **result_head("bench", cfg.run_id, backend, device, ranks),
                "settings": cfg.settings(),
                "results": rows,
                "skipped": skipped,
                "notes": notes,
                "wrong_total": wrong_total(rows, cfg.check),
                "elapsed_s": time.perf_counter() - started,
            }
            print(format_table(doc), flush=True)
            print(encode_result(doc), flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
