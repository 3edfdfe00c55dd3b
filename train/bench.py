"""Collective benchmark with nccl-tests semantics, run under torchrun: ``python -m train.bench``.

For every (op, dtype, size, in-place variant) each rank runs ``warmup`` ops, then times ``iters`` ops;
per-rank time is elapsed / iters and the ranks' times are reduced to min / avg / max. As in nccl-tests
(``-a`` default), bandwidths derive from the rank-averaged time::

    algbw_gbps = size_bytes / avg_time_s / 1e9
    busbw_gbps = algbw_gbps * bus_factor(op, world_size)

with ``size_bytes`` the full buffer nccl-tests prints (all_gather: the output; reduce_scatter: the
input; all_to_all: the whole send buffer), rounded down to a multiple of world_size elements where
the op splits the buffer. With ``--check 1`` one more op per variant runs on deterministic data and is
compared exactly with an expectation computed independently in float64; ``wrong`` is the number of
mismatched elements summed over ranks.

Timing: gloo/CPU ops are blocking, so ``barrier; perf_counter; iters x op; barrier; perf_counter``.
The closing barrier is inside the timed span on purpose: it makes a rank's time cover the op until
every rank finished it, which is what a bandwidth over "the collective" means (and what an
independent loop measures, see benchmarks/bench_vs_loop.py). NCCL/CUDA ops are asynchronous, so CUDA
events on the current stream bracket the loop and the host waits for the end event.

In-place/out-of-place, where torch differs from NCCL's API (decided here, reported honestly):
  * all_reduce: torch has only the in-place form. An "out-of-place" row would have to time an extra
    copy (``out.copy_(inp); all_reduce(out)``) and so under-report the collective; no such row is
    made. With ``--in-place off`` all_reduce is listed under ``skipped`` with that reason.
  * broadcast: in-place only in torch (``src`` sends its buffer into everyone's same buffer).
  * all_gather / reduce_scatter: both forms. In-place uses NCCL's convention: all_gather's input is
    this rank's slice of the output; reduce_scatter's output is this rank's slice of the input.
  * all_to_all: out-of-place only. NCCL has no in-place all-to-all: torch's NCCL path would issue
    grouped send/recv on one buffer, a data race, so an in-place row could be wrong on GPUs even
    where gloo happens to copy first.

An (op, dtype) the backend rejects becomes a ``skipped`` entry with the backend's message: it is never
replaced by a different op, which would report another collective's bandwidth under this name.

Rank 0 prints a nccl-tests-like table, then the result line (see train/results.py). The process exits
0 when the sweep finished, even with wrong > 0: the host judges. Any exception exits non-zero.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Literal, cast

import torch
import torch.distributed as dist

from train.env import rank_info
from train.results import SCHEMA_VERSION, ResultRow, SkippedEntry, TimeUs, encode_result

OpName = Literal["all_reduce", "all_gather", "reduce_scatter", "broadcast", "all_to_all"]
InPlaceMode = Literal["both", "on", "off"]
FillKind = Literal["sum", "mark_high", "mark_low", "move"]

OPS: Final[tuple[str, ...]] = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "all_to_all")
DTYPES: Final[dict[str, torch.dtype]] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int32": torch.int32,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int64": torch.int64,
}
# The names nccl-tests prints in its "type" column.
NCCL_TYPE_NAMES: Final[dict[str, str]] = {
    "float32": "float",
    "float16": "half",
    "bfloat16": "bfloat16",
    "float64": "double",
    "int32": "int32",
    "int8": "int8",
    "uint8": "uint8",
    "int64": "int64",
}
REDUCE_OPS: Final[dict[str, Any]] = {
    "sum": dist.ReduceOp.SUM,
    "prod": dist.ReduceOp.PRODUCT,
    "max": dist.ReduceOp.MAX,
    "min": dist.ReduceOp.MIN,
}
# Largest integer each dtype holds exactly, with every smaller non-negative integer also exact.
EXACT_INT_LIMIT: Final[dict[str, int]] = {
    "float32": 2**24,
    "float16": 2**11,
    "bfloat16": 2**8,
    "float64": 2**53,
    "int32": 2**31 - 1,
    "int8": 2**7 - 1,
    "uint8": 2**8 - 1,
    "int64": 2**63 - 1,
}
REDUCING_OPS: Final = frozenset({"all_reduce", "reduce_scatter"})
# Ops whose buffer is split into world_size equal chunks; their size rounds down to a multiple.
CHUNKED_OPS: Final = frozenset({"all_gather", "reduce_scatter", "all_to_all"})
# The in_place flags torch offers for each op (see the module docstring for why).
OP_FORMS: Final[dict[str, tuple[bool, ...]]] = {
    "all_reduce": (True,),
    "all_gather": (False, True),
    "reduce_scatter": (False, True),
    "broadcast": (True,),
    "all_to_all": (False,),
}
FORM_REASONS: Final[dict[str, str]] = {
    "all_reduce": "torch has no out-of-place all_reduce (timing a copy + all_reduce would "
    "under-report); in-place rows only",
    "broadcast": "torch broadcast is in-place only; in-place rows only",
    "all_to_all": "no in-place all_to_all (NCCL has none; one buffer for send and recv races); "
    "out-of-place rows only",
}
BROADCAST_ROOT: Final = 0
# Elements per block when filling inputs and checking outputs (bounds temporary memory).
CHECK_BLOCK_ELEMS: Final = 1 << 24
# The "move" fill: values 0..MOVE_MODULUS-1 that identify (source rank, index) for non-reducing ops.
MOVE_MODULUS: Final = 97
MOVE_RANK_STRIDE: Final = 31

_SIZE_RE: Final = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS: Final[dict[str, int]] = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


# --------------------------------------------------------------------------- pure math


def parse_size(text: str) -> int:
    """Parse a byte count: ``4096``, ``4K``, ``4KiB``, ``64M``, ``1G`` (binary units, as nccl-tests).

    Raises ValueError for anything else, including negative numbers.
    """
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (use bytes, optionally with K, M, G or T)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def size_sweep(min_bytes: int, max_bytes: int, step_factor: int) -> list[int]:
    """Return ``min, min*f, min*f**2, ...`` up to and including ``max`` (nccl-tests ``-b -e -f``).

    Requires ``1 <= min_bytes <= max_bytes`` and ``step_factor >= 2``.
    """
    if min_bytes < 1 or max_bytes < min_bytes:
        raise ValueError(f"need 1 <= min_bytes <= max_bytes, got {min_bytes} and {max_bytes}")
    if step_factor < 2:
        raise ValueError(f"step_factor must be >= 2, got {step_factor}")
    sizes = []
    size = min_bytes
    while size <= max_bytes:
        sizes.append(size)
        size *= step_factor
    return sizes


def bus_factor(op: str, world_size: int) -> float:
    """Return nccl-tests' busbw/algbw factor for ``op`` over ``world_size`` ranks.

    all_reduce 2(n-1)/n; all_gather, reduce_scatter, all_to_all (n-1)/n; broadcast 1. With one rank
    the n-dependent factors are 0, as nccl-tests prints.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    n = world_size
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) / n
    if op == "broadcast":
        return 1.0
    raise ValueError(f"unknown op {op!r}")


def algbw_gbps(size_bytes: int, time_s: float) -> float:
    """Return the algorithm bandwidth in GB/s (1e9 bytes/s) of moving ``size_bytes`` in ``time_s``."""
    return size_bytes / time_s / 1e9


@dataclass(frozen=True)
class BufferShape:
    """Element counts of one case: ``count`` for the full buffer, ``chunk`` per rank.

    ``chunk == count // world_size`` for the chunked ops and ``chunk == count`` otherwise.
    """

    count: int
    chunk: int


def buffer_shape(op: str, size_bytes: int, elem_size: int, world_size: int) -> BufferShape:
    """Return the element counts nccl-tests uses for a requested ``size_bytes`` of ``op``.

    The count is ``size_bytes // elem_size``, rounded down to a multiple of ``world_size`` for the
    ops that split their buffer (nccl-tests' getCollByteCount). May be 0 when the size is too small.
    """
    elems = size_bytes // elem_size
    if op in CHUNKED_OPS:
        chunk = elems // world_size
        return BufferShape(count=chunk * world_size, chunk=chunk)
    return BufferShape(count=elems, chunk=elems)


def variants(op: str, in_place: InPlaceMode) -> tuple[bool, ...]:
    """Return the in_place flags to measure for ``op`` under ``--in-place``, out-of-place first."""
    wanted = {"both": (False, True), "on": (True,), "off": (False,)}[in_place]
    return tuple(flag for flag in wanted if flag in OP_FORMS[op])


def fill_kind(op: str, reduce_op: str) -> FillKind:
    """Return which deterministic pattern (see :func:`fill_values`) feeds ``op`` with ``reduce_op``."""
    if op not in REDUCING_OPS:
        return "move"
    if reduce_op == "sum":
        return "sum"
    return "mark_low" if reduce_op == "min" else "mark_high"


MIX_MULTIPLIER: Final = 0x5BD1E995  # < 2**31, so index * multiplier fits int64 for index < 2**32
MIX_PRIME: Final = 2**31 - 1  # folds a hash back below 2**32 so it can be mixed again, no overflow
RANK_SALT: Final = 0x9E3779B


def mix_index(index: torch.Tensor) -> torch.Tensor:
    """Return a non-negative int64 hash of each element index (exact, identical on CPU and CUDA).

    Patterns built on the raw index are periodic (``i % 3`` repeats every 3), so a collective that
    delivers data shifted by a multiple of the period passes the check. Hashing the index first
    makes a shifted or swapped chunk show for any chunk size.
    """
    x = index * MIX_MULTIPLIER
    return x ^ (x >> 15)


def rank_mix(rank: int | torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Return a non-negative int64 hash of (rank, index): independent-looking bits per rank."""
    return mix_index((mix_index(index) + RANK_SALT * rank) % MIX_PRIME)


def fill_values(
    kind: FillKind, rank: int | torch.Tensor, world_size: int, index: torch.Tensor
) -> torch.Tensor:
    """Return the int64 pattern rank ``rank`` holds at positions ``index`` (an int64 tensor).

    ``rank`` may also be an int64 tensor shaped like ``index`` (one source rank per element).

    With ``h = mix_index(index)``:

    * ``sum``: a pseudo-random bit per (rank, index), ``(rank_mix(rank, i) >> 7) % 2``. A sum over
      n ranks is at most n (exact in int8 to n = 127, bfloat16 to 256), and because every rank's
      bits differ, a rank counted twice or left out shows. (Small modular patterns such as
      ``(rank + i) % 3`` cancel: over a multiple of 3 ranks their sum is the same constant at
      every index, so no fault would ever show.)
    * ``mark_high`` (prod, max) / ``mark_low`` (min): the one rank with ``(rank + h) % (n + 1) == 0``
      holds 2 (high) or 0 (low), every other rank 1. At most one rank is marked per element, so a
      product is 1 or 2 for any n and never overflows, and max / min vary with the index (with
      ``sum``'s values, the max over many ranks is 2 everywhere and a shift would go unseen).
    * ``move`` (gather, broadcast, all-to-all): ``(31 * rank + h) % 97`` in 0..96, different for
      different source ranks at the same index, so data from the wrong rank shows.
    """
    h = mix_index(index)
    if kind == "sum":
        return (rank_mix(rank, index) >> 7) % 2
    if kind in ("mark_high", "mark_low"):
        marked = 2 if kind == "mark_high" else 0
        return torch.where((rank + h) % (world_size + 1) == 0, marked, 1).to(torch.int64)
    return (MOVE_RANK_STRIDE * rank + h) % MOVE_MODULUS


def sentinel_value(dtype_name: str) -> int:
    """Return the pre-fill for output buffers: a value no expected result ever takes."""
    return 255 if dtype_name == "uint8" else -1


def _reduce_f64(a: torch.Tensor, b: torch.Tensor, reduce_op: str) -> torch.Tensor:
    if reduce_op == "sum":
        return a + b
    if reduce_op == "prod":
        return a * b
    if reduce_op == "max":
        return torch.maximum(a, b)
    if reduce_op == "min":
        return torch.minimum(a, b)
    raise ValueError(f"unknown reduce op {reduce_op!r}")


def expected_output(
    op: str,
    reduce_op: str,
    rank: int,
    world_size: int,
    shape: BufferShape,
    start: int = 0,
    stop: int | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Return, in float64, what ``op`` must leave at output positions ``[start, stop)`` of this rank.

    Computed from :func:`fill_values` by index arithmetic, independently of any collective:
    all_reduce reduces every rank's element p; reduce_scatter reduces element ``rank * chunk + p``;
    all_gather's p comes from rank ``p // chunk`` at ``p % chunk``; all_to_all's from rank
    ``p // chunk`` at ``rank * chunk + p % chunk``; broadcast's is the root's p. The same for
    in-place and out-of-place. ``stop`` defaults to the output length; a block keeps the memory of
    a check over a multi-GiB buffer bounded.
    """
    kind = fill_kind(op, reduce_op)
    n, chunk = world_size, shape.chunk
    out_len = chunk if op == "reduce_scatter" else shape.count
    stop = out_len if stop is None else min(stop, out_len)
    pos = torch.arange(start, stop, dtype=torch.int64, device=device)

    if op in REDUCING_OPS:
        index = pos if op == "all_reduce" else pos + rank * chunk
        acc = fill_values(kind, 0, n, index).to(torch.float64)
        for src in range(1, n):
            acc = _reduce_f64(acc, fill_values(kind, src, n, index).to(torch.float64), reduce_op)
        return acc
    if op == "broadcast":
        return fill_values(kind, BROADCAST_ROOT, n, pos).to(torch.float64)
    if chunk == 0:
        return pos.to(torch.float64)  # empty
    src_rank = torch.div(pos, chunk, rounding_mode="floor")
    offset = pos - src_rank * chunk
    if op == "all_gather":
        return fill_values(kind, src_rank, n, offset).to(torch.float64)
    if op == "all_to_all":
        return fill_values(kind, src_rank, n, offset + rank * chunk).to(torch.float64)
    raise ValueError(f"unknown op {op!r}")


def expected_bound(op: str, reduce_op: str, world_size: int) -> int:
    """Return an upper bound of the expected output elements of ``op`` (all are >= 0).

    ``sum``: n ranks contribute at most 1 each. ``mark_*``: at most 2. ``move``: at most 96.
    """
    kind = fill_kind(op, reduce_op)
    if kind == "move":
        return MOVE_MODULUS - 1
    if kind != "sum":
        return 2
    return world_size


def check_is_exact(op: str, dtype_name: str, reduce_op: str, world_size: int) -> bool:
    """True when every expected value of ``op`` is exactly representable in ``dtype_name``.

    When False the check cannot be exact (e.g. an int8 sum over 128 ranks), so rows report
    ``wrong: null`` rather than count rounding as errors.
    """
    return expected_bound(op, reduce_op, world_size) <= EXACT_INT_LIMIT[dtype_name]


# --------------------------------------------------------------------------- collectives


@dataclass(frozen=True)
class Comm:
    """Where collectives run: this rank, the world size and the tensor device."""

    rank: int
    world_size: int
    device: torch.device

    @staticmethod
    def current(device: torch.device) -> Comm:
        """Return the Comm of the initialised default process group on ``device``."""
        return Comm(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def barrier(comm: Comm) -> None:
    """Barrier on the default group; on NCCL, pinned to this rank's GPU (avoids device guessing)."""
    if comm.device.type == "cuda":
        dist.barrier(device_ids=[comm.device.index])
    else:
        dist.barrier()


# torch 2.13 renamed the tensor-form collectives and warns on the old names; older torch lacks the
# new ones. Same semantics either way.
_all_gather_single: Callable[..., Any] = getattr(dist, "all_gather_single", None) or (
    dist.all_gather_into_tensor
)
_reduce_scatter_single: Callable[..., Any] = getattr(dist, "reduce_scatter_single", None) or (
    dist.reduce_scatter_tensor
)


class Case:
    """The buffers and the single collective call of one (op, dtype, size, in_place) case.

    ``reset()`` writes the deterministic inputs and the sentinel into outputs; ``run()`` performs one
    blocking (gloo) or enqueued (NCCL) op; ``output`` is the region ``expected_output`` describes.
    """

    def __init__(
        self,
        op: str,
        dtype_name: str,
        shape: BufferShape,
        in_place: bool,
        reduce_op: str,
        comm: Comm,
    ) -> None:
        if in_place not in OP_FORMS[op]:
            raise ValueError(f"{op} has no {'in-place' if in_place else 'out-of-place'} form")
        self.op, self.dtype_name, self.shape = op, dtype_name, shape
        self.in_place, self.reduce_op, self.comm = in_place, reduce_op, comm
        dtype, device = DTYPES[dtype_name], comm.device
        count, chunk, rank = shape.count, shape.chunk, comm.rank
        mine = slice(rank * chunk, (rank + 1) * chunk)
        self._red = REDUCE_OPS[reduce_op]
        # In-place views follow NCCL: all_gather's input is this rank's slice of the output,
        # reduce_scatter's output is this rank's slice of the input.
        self.input: torch.Tensor
        self.output: torch.Tensor
        if op in ("all_reduce", "broadcast"):
            self.input = self.output = torch.empty(count, dtype=dtype, device=device)
        elif op == "all_gather":
            self.output = torch.empty(count, dtype=dtype, device=device)
            self.input = (
                self.output[mine] if in_place else torch.empty(chunk, dtype=dtype, device=device)
            )
        elif op == "reduce_scatter":
            self.input = torch.empty(count, dtype=dtype, device=device)
            self.output = (
                self.input[mine] if in_place else torch.empty(chunk, dtype=dtype, device=device)
            )
        elif op == "all_to_all":
            self.input = torch.empty(count, dtype=dtype, device=device)
            self.output = torch.empty(count, dtype=dtype, device=device)
        else:
            raise ValueError(f"unknown op {op!r}")
        self.run: Callable[[], None] = self._bind()
        self.reset()

    def _bind(self) -> Callable[[], None]:
        op, inp, out, red = self.op, self.input, self.output, self._red
        if op == "all_reduce":
            return lambda: dist.all_reduce(inp, op=red)
        if op == "all_gather":
            return lambda: _all_gather_single(out, inp)
        if op == "reduce_scatter":
            return lambda: _reduce_scatter_single(out, inp, op=red)
        if op == "broadcast":
            return lambda: dist.broadcast(inp, src=BROADCAST_ROOT)
        return lambda: dist.all_to_all_single(out, inp)

    def reset(self) -> None:
        """Write the sentinel over the output side, then this rank's pattern into the input."""
        kind = fill_kind(self.op, self.reduce_op)
        rank, n, device = self.comm.rank, self.comm.world_size, self.comm.device
        self.output.fill_(sentinel_value(self.dtype_name))
        if self.op == "broadcast" and rank != BROADCAST_ROOT:
            return  # a non-root's buffer is receive-only: the sentinel shows an unwritten element
        # In blocks: the int64 temporaries of one pass over a multi-GiB buffer would not fit.
        for start in range(0, self.input.numel(), CHECK_BLOCK_ELEMS):
            block = self.input[start : start + CHECK_BLOCK_ELEMS]
            index = torch.arange(start, start + block.numel(), dtype=torch.int64, device=device)
            block.copy_(fill_values(kind, rank, n, index))


def measure_seconds(run: Callable[[], None], warmup: int, iters: int, comm: Comm) -> float:
    """Return this rank's seconds per op: ``warmup`` untimed ops, then ``iters`` timed ones."""
    for _ in range(warmup):
        run()
    if comm.device.type == "cuda":
        torch.cuda.synchronize(comm.device)
        barrier(comm)
        # torch.cuda.Event.__init__ is unannotated in torch 2.13.
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        start.record()
        for _ in range(iters):
            run()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)) / 1e3 / iters
    barrier(comm)
    t0 = time.perf_counter()
    for _ in range(iters):
        run()
    barrier(comm)
    return (time.perf_counter() - t0) / iters


def aggregate_seconds(seconds: float, comm: Comm) -> tuple[float, float, float]:
    """Return (min, avg, max) of every rank's ``seconds`` (a collective: all ranks must call)."""
    values = []
    for red in (dist.ReduceOp.MIN, dist.ReduceOp.SUM, dist.ReduceOp.MAX):
        t = torch.tensor([seconds], dtype=torch.float64, device=comm.device)
        dist.all_reduce(t, op=red)
        values.append(float(t.item()))
    return values[0], values[1] / comm.world_size, values[2]


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
        "redop": case.reduce_op if case.op in REDUCING_OPS else None,
        "time_us": TimeUs(min=t_min * 1e6, avg=t_avg * 1e6, max=t_max * 1e6),
        "algbw_gbps": algbw,
        "busbw_gbps": algbw * bus_factor(case.op, case.comm.world_size),
        "wrong": None,
    }


def bench_case(case: Case, warmup: int, iters: int) -> ResultRow:
    """Time ``case`` on every rank and return its row (a collective: all ranks must call)."""
    seconds = measure_seconds(case.run, warmup, iters, case.comm)
    return make_row(case, *aggregate_seconds(seconds, case.comm))


def count_wrong(case: Case) -> int | None:
    """Re-fill ``case``, run one op, return mismatches summed over ranks (None: not exact-checkable).

    A collective: all ranks must call. The decision to skip is the same on every rank because it
    depends on (op, dtype, reduce_op, world_size) only.
    """
    comm = case.comm
    if not check_is_exact(case.op, case.dtype_name, case.reduce_op, comm.world_size):
        return None
    case.reset()
    case.run()
    if comm.device.type == "cuda":
        torch.cuda.synchronize(comm.device)
    dtype = DTYPES[case.dtype_name]
    out = case.output.detach()
    local = 0
    for start in range(0, out.numel(), CHECK_BLOCK_ELEMS):
        got = out[start : start + CHECK_BLOCK_ELEMS]
        expected = expected_output(
            case.op, case.reduce_op, comm.rank, comm.world_size, case.shape,
            start=start, stop=start + got.numel(), device=out.device,
        )
        local += int((got != expected.to(dtype)).sum().item())
    return sum_over_ranks(local, comm)


def probe_support(op: str, dtype_name: str, in_place: bool, reduce_op: str, comm: Comm) -> str | None:
    """Run ``op`` once on a tiny buffer; return None if every rank succeeded, else a reason.

    A backend rejecting a dtype does so on every rank before communicating (a type check), so the
    ranks stay in step; they then agree on the outcome with one all_reduce. Network and store
    errors are not "unsupported" and propagate.
    """
    reason: str | None = None
    try:
        elem_size = torch.empty((), dtype=DTYPES[dtype_name]).element_size()
        shape = buffer_shape(op, comm.world_size * elem_size, elem_size, comm.world_size)
        Case(op, dtype_name, shape, in_place, reduce_op, comm).run()
    except (dist.DistNetworkError, dist.DistStoreError):
        raise
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    failed = torch.tensor([0 if reason is None else 1], dtype=torch.int64, device=comm.device)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    if failed.item() == 0:
        return None
    return reason or "rejected by the backend on another rank"


# --------------------------------------------------------------------------- the sweep


@dataclass(frozen=True)
class BenchConfig:
    """The parsed command line (see ``build_parser`` for each flag's meaning)."""

    ops: tuple[str, ...]
    min_bytes: int
    max_bytes: int
    step_factor: int
    warmup: int
    iters: int
    dtypes: tuple[str, ...]
    check: bool
    in_place: InPlaceMode
    dist_backend: str
    reduce_op: str
    timeout_s: int
    run_id: str | None

    def settings(self) -> dict[str, Any]:
        """Return the ``settings`` object of the result document."""
        return {
            "ops": list(self.ops),
            "min_bytes": self.min_bytes,
            "max_bytes": self.max_bytes,
            "step_factor": self.step_factor,
            "warmup": self.warmup,
            "iters": self.iters,
            "dtypes": list(self.dtypes),
            "check": self.check,
            "in_place": self.in_place,
            "reduce_op": self.reduce_op,
        }


def run_sweep(
    cfg: BenchConfig, comm: Comm
) -> tuple[list[ResultRow], list[SkippedEntry], list[str]]:
    """Measure every (op, dtype, size, variant) of ``cfg``; return (rows, skipped, notes).

    A collective: all ranks run the same sequence. Only the returned values on rank 0 are reported.
    """
    rows: list[ResultRow] = []
    skipped: list[SkippedEntry] = []
    notes: list[str] = []
    sizes = size_sweep(cfg.min_bytes, cfg.max_bytes, cfg.step_factor)
    for op in cfg.ops:
        forms = variants(op, cfg.in_place)
        if op in FORM_REASONS and len(forms) < (2 if cfg.in_place == "both" else 1):
            if forms:
                notes.append(f"{op}: {FORM_REASONS[op]}")
        for dtype_name in cfg.dtypes:
            if not forms:
                skipped.append({"op": op, "dtype": dtype_name, "reason": FORM_REASONS[op]})
                continue
            supported = []
            for in_place in forms:
                reason = probe_support(op, dtype_name, in_place, cfg.reduce_op, comm)
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
                    row = bench_case(case, cfg.warmup, cfg.iters)
                    if cfg.check:
                        row["wrong"] = count_wrong(case)
                    rows.append(row)
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
    return rows, skipped, notes


def wrong_total(rows: Sequence[ResultRow], check: bool) -> int | None:
    """Return the sum of ``wrong`` over rows, or None when the check was off."""
    if not check:
        return None
    return sum(row["wrong"] or 0 for row in rows)


# --------------------------------------------------------------------------- the table


def _fmt_time(us: float) -> str:
    return f"{us:8.2f}" if us < 1e6 else f"{us:8.0f}"


def _variant_cells(row: ResultRow | None) -> str:
    if row is None:
        return f"{'N/A':>8} {'N/A':>7} {'N/A':>7} {'N/A':>6}"
    wrong = "N/A" if row["wrong"] is None else str(row["wrong"])
    return (
        f"{_fmt_time(row['time_us']['avg'])} {row['algbw_gbps']:7.2f} "
        f"{row['busbw_gbps']:7.2f} {wrong:>6}"
    )


def format_table(doc: dict[str, Any]) -> str:
    """Return the nccl-tests-like text report of a result document (pure: no torch calls).

    One block per (op, dtype): size, count, type, redop, root, then time (avg, us), algbw, busbw
    and #wrong for out-of-place and in-place. Footer as nccl-tests: out-of-bounds total, then the
    average bus bandwidth over every row printed.
    """
    s = doc["settings"]
    lines = [
        f"# netorch bench  run_id {doc['run_id']}  backend {doc['dist_backend']}  device "
        f"{doc['device']}  torch {doc['torch_version']}  world_size {doc['world_size']}",
        f"# minBytes {s['min_bytes']} maxBytes {s['max_bytes']} step: {s['step_factor']}(factor) "
        f"warmup iters: {s['warmup']} iters: {s['iters']} validation: {int(s['check'])} "
        f"in-place: {s['in_place']}",
        "#",
        "# Using devices",
    ]
    for r in doc["ranks"]:
        lines.append(
            f"#  Rank {r['rank']:>2} Group  0 Pid {r['pid']:>7} on {r['node_name']:>10} "
            f"({r['hostname']}) node {r['node_rank']} local {r['local_rank']} "
            f"{r['ifname']} {r['ipv4'] or '-'} mtu {r['mtu'] if r['mtu'] is not None else '-'}"
        )
    header = (
        f"#{'size':>11} {'count':>12} {'type':>8} {'redop':>6} {'root':>5}"
        f"  {'time':>8} {'algbw':>7} {'busbw':>7} {'#wrong':>6}"
        f"  {'time':>8} {'algbw':>7} {'busbw':>7} {'#wrong':>6}"
    )
    units = (
        f"#{'(B)':>11} {'(elements)':>12} {'':>8} {'':>6} {'':>5}"
        f"  {'(us)':>8} {'(GB/s)':>7} {'(GB/s)':>7} {'':>6}"
        f"  {'(us)':>8} {'(GB/s)':>7} {'(GB/s)':>7} {'':>6}"
    )
    groups: dict[tuple[str, str], dict[tuple[int, int], dict[bool, ResultRow]]] = {}
    for row in doc["results"]:
        key = (row["op"], row["dtype"])
        groups.setdefault(key, {}).setdefault((row["size_bytes"], row["count"]), {})[
            row["in_place"]
        ] = row
    for (op, dtype_name), by_size in groups.items():
        lines += ["#", f"# Collective: {op}  dtype: {dtype_name}", f"#{'':>56}out-of-place"
                  f"{'':>27}in-place", header, units]
        busbws = []
        for (size_bytes, count), pair in by_size.items():
            redop = s["reduce_op"] if op in REDUCING_OPS else "none"
            root = BROADCAST_ROOT if op == "broadcast" else -1
            lines.append(
                f"{size_bytes:>12} {count:>12} {NCCL_TYPE_NAMES.get(dtype_name, dtype_name):>8} "
                f"{redop:>6} {root:>5}  {_variant_cells(pair.get(False))}  "
                f"{_variant_cells(pair.get(True))}"
            )
            busbws += [r["busbw_gbps"] for r in pair.values()]
        lines.append(f"# {op} {dtype_name} avg bus bandwidth: {sum(busbws) / len(busbws):.3f}")
    lines.append("#")
    for entry in doc["skipped"]:
        lines.append(f"# Skipped {entry['op']} {entry['dtype']}: {entry['reason']}")
    for note in doc.get("notes", []):
        lines.append(f"# Note: {note}")
    total = doc["wrong_total"]
    if total is None:
        lines.append("# Out of bounds values : N/A (check disabled)")
    else:
        lines.append(f"# Out of bounds values : {total} {'OK' if total == 0 else 'FAILED'}")
    all_bw = [row["busbw_gbps"] for row in doc["results"]]
    avg = sum(all_bw) / len(all_bw) if all_bw else 0.0
    lines.append(f"# Avg bus bandwidth    : {avg:.6g}")
    lines.append("#")
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point


def _comma_list(allowed: Sequence[str], what: str) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
        if items == ("all",) and what == "op":
            return tuple(allowed)
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(bad) or '(none given)'}; choose from {', '.join(allowed)}"
            )
        return items

    return parse


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = parse_size(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """Return the CLI parser; flag names are a contract with the orchestrator."""
    p = argparse.ArgumentParser(prog="python -m train.bench", description=__doc__.splitlines()[0])
    p.add_argument("--ops", type=_comma_list(OPS, "op"), default=OPS, help="comma list or 'all'")
    p.add_argument("--min-bytes", type=_int_at_least(1), default=2**20, help="e.g. 1024, 4K, 1M")
    p.add_argument("--max-bytes", type=_int_at_least(1), default=64 * 2**20)
    p.add_argument("--step-factor", type=_int_at_least(2), default=2)
    p.add_argument("--warmup", type=_int_at_least(0), default=5)
    p.add_argument("--iters", type=_int_at_least(1), default=20)
    p.add_argument("--dtype", type=_comma_list(tuple(DTYPES), "dtype"), default=("float32",))
    p.add_argument("--check", type=int, choices=(0, 1), default=1)
    p.add_argument("--in-place", choices=("both", "on", "off"), default="both")
    p.add_argument("--dist-backend", choices=("auto", "nccl", "gloo"), default="auto")
    p.add_argument("--reduce-op", choices=tuple(REDUCE_OPS), default="sum")
    p.add_argument("--timeout-s", type=_int_at_least(1), default=300)
    p.add_argument("--run-id", default=None)
    return p


def parse_config(argv: Sequence[str] | None = None) -> BenchConfig:
    """Parse ``argv`` (default: sys.argv) into a BenchConfig; exits 2 on a bad flag."""
    p = build_parser()
    a = p.parse_args(argv)
    if a.max_bytes < a.min_bytes:
        p.error(f"--max-bytes {a.max_bytes} is below --min-bytes {a.min_bytes}")
    return BenchConfig(
        ops=a.ops,
        min_bytes=a.min_bytes,
        max_bytes=a.max_bytes,
        step_factor=a.step_factor,
        warmup=a.warmup,
        iters=a.iters,
        dtypes=a.dtype,
        check=bool(a.check),
        in_place=cast(InPlaceMode, a.in_place),
        dist_backend=a.dist_backend,
        reduce_op=a.reduce_op,
        timeout_s=a.timeout_s,
        run_id=a.run_id,
    )


def resolve_backend(requested: str) -> str:
    """Return the process-group backend: ``auto`` is nccl when CUDA and NCCL are there, else gloo."""
    if requested != "auto":
        return requested
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark as one rank of a torchrun job; return the exit code (0: finished)."""
    cfg = parse_config(argv)
    backend = resolve_backend(cfg.dist_backend)
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)  # before init: NCCL binds the communicator to this GPU
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=cfg.timeout_s))
    try:
        started = time.perf_counter()
        comm = Comm.current(device)
        me = dict(rank_info().to_dict(), rank=comm.rank, world_size=comm.world_size)
        ranks: list[dict[str, Any] | None] = [None] * comm.world_size
        dist.all_gather_object(ranks, me)
        rows, skipped, notes = run_sweep(cfg, comm)
        if comm.rank == 0:
            doc: dict[str, Any] = {
                "schema": SCHEMA_VERSION,
                "kind": "bench",
                "run_id": cfg.run_id,
                "dist_backend": backend,
                "device": device.type,
                "torch_version": torch.__version__,
                "world_size": comm.world_size,
                "ranks": sorted((r for r in ranks if r is not None), key=lambda r: int(r["rank"])),
                "settings": cfg.settings(),
                "results": rows,
                "skipped": skipped,
                "notes": notes,
                "wrong_total": wrong_total(rows, cfg.check),
                "elapsed_s": time.perf_counter() - started,
            }
            print(format_table(doc), flush=True)
            print(encode_result(doc), flush=True)
        # Leave together (see train/job.py): no rank tears gloo down while rank 0 still reports.
        dist.barrier()
        return 0
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
