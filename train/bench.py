"""Collective benchmark with nccl-tests semantics, run under torchrun: ``python -m train.bench``.

For every (op, dtype, size, in-place variant) each rank runs ``warmup`` ops, then times ``iters`` ops;
per-rank time is elapsed / iters and the ranks' times are reduced to min / avg / max. As in nccl-tests
(``-a`` default), bandwidths derive from the rank-averaged time::

    algbw_gbps = size_bytes / avg_time_s / 1e9
    busbw_gbps = algbw_gbps * OPS[op].bus_factor(world_size)

with ``size_bytes`` the full buffer nccl-tests prints (all_gather: the output; reduce_scatter: the
input; all_to_all: the whole send buffer), rounded down to a multiple of world_size elements where
the op splits the buffer. With ``--check 1`` one more op per variant runs on deterministic data and is
compared exactly with an expectation computed independently in float64; ``wrong`` is the number of
mismatched elements summed over ranks.

What an op is (forms, bus factor, chunking, root, reduction, minimum ranks) is registered once in
train/contract.py (torch-free, shared with the host). How it runs in torch (its buffers, its call,
the output it must leave) is one :class:`OpImpl` subclass per op below, in ``IMPLS``.

Timing: gloo/CPU ops are blocking, so ``barrier; perf_counter; iters x op; barrier; perf_counter``.
The closing barrier is inside the timed span on purpose: it makes a rank's time cover the op until
every rank finished it, which is what a bandwidth over "the collective" means (and what an
independent loop measures, see benchmarks/bench_vs_loop.py). NCCL/CUDA ops are asynchronous, so CUDA
events on the current stream bracket the loop and the host waits for the end event.

In-place/out-of-place, where torch differs from NCCL's API (decided here, reported honestly):
  * all_reduce: torch has only the in-place form. An "out-of-place" row would have to time an extra
    copy (``out.copy_(inp); all_reduce(out)``) and so under-report the collective; no such row is
    made. With ``--in-place off`` all_reduce is listed under ``skipped`` with that reason.
  * broadcast, reduce: in-place only in torch (the root's buffer is sent / receives the result).
  * all_gather / reduce_scatter: both forms. In-place uses NCCL's convention: all_gather's input is
    this rank's slice of the output; reduce_scatter's output is this rank's slice of the input.
  * all_to_all: out-of-place only. NCCL has no in-place all-to-all: torch's NCCL path would issue
    grouped send/recv on one buffer, a data race, so an in-place row could be wrong on GPUs even
    where gloo happens to copy first.
  * sendrecv: out-of-place only: each rank sends its buffer to rank+1 while receiving rank-1's
    into another (one ``batch_isend_irecv``). It needs 2 ranks; on 1 it is skipped with a reason.

reduce's check counts the root's output only: after a reduce the other ranks' buffers are
unspecified (as in nccl-tests).

An (op, dtype) the backend rejects becomes a ``skipped`` entry with the backend's message: it is never
replaced by a different op, which would report another collective's bandwidth under this name.

Rank 0 prints a nccl-tests-like table, then the result line (see train/results.py). The process exits
0 when the sweep finished, even with wrong > 0: the host judges. Any exception exits non-zero.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Final, Literal

import torch
import torch.distributed as dist

from train.contract import (
    DTYPE_NAMES,
    NCCL_TYPE_NAMES,
    OPS,
    BenchArgs,
    InPlaceMode,
    OpSpec,
    op_spec,
    size_sweep,
)
from train.env import rank_info, wait_for_master
from train.results import SCHEMA_VERSION, ResultRow, SkippedEntry, TimeUs, encode_result

FillKind = Literal["sum", "mark_high", "mark_low", "move"]

# The contract's names are torch's attribute names.
DTYPES: Final[dict[str, torch.dtype]] = {name: getattr(torch, name) for name in DTYPE_NAMES}
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
# Elements per block when filling inputs and checking outputs (bounds temporary memory).
CHECK_BLOCK_ELEMS: Final = 1 << 24
# The "move" fill: values 0..MOVE_MODULUS-1 that identify (source rank, index) for non-reducing ops.
MOVE_MODULUS: Final = 97
MOVE_RANK_STRIDE: Final = 31


# --------------------------------------------------------------------------- pure math


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
    if op_spec(op).chunked:
        chunk = elems // world_size
        return BufferShape(count=chunk * world_size, chunk=chunk)
    return BufferShape(count=elems, chunk=elems)


def variants(op: str, in_place: InPlaceMode) -> tuple[bool, ...]:
    """Return the in_place flags to measure for ``op`` under ``--in-place``, out-of-place first."""
    wanted = {"both": (False, True), "on": (True,), "off": (False,)}[in_place]
    return tuple(flag for flag in wanted if flag in op_spec(op).forms)


def fill_kind(op: str, reduce_op: str) -> FillKind:
    """Return which deterministic pattern (see :func:`fill_values`) feeds ``op`` with ``reduce_op``."""
    if not op_spec(op).reducing:
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
    * ``move`` (the non-reducing ops): ``(31 * rank + h) % 97`` in 0..96, different for
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



def reduced_f64(kind: FillKind, reduce_op: str, world_size: int, index: torch.Tensor) -> torch.Tensor:
    """Return, in float64, the reduction over every rank of its pattern at ``index``."""
    acc = fill_values(kind, 0, world_size, index).to(torch.float64)
    for src in range(1, world_size):
        acc = _reduce_f64(acc, fill_values(kind, src, world_size, index).to(torch.float64), reduce_op)
    return acc


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

    Computed from :func:`fill_values` by index arithmetic (each op's :meth:`OpImpl.expected`),
    independently of any collective; the same for in-place and out-of-place. ``stop`` defaults to
    the output length; a block keeps the memory of a check over a multi-GiB buffer bounded. For
    reduce it is the root's result whatever ``rank`` (only the root's output is checked).
    """
    impl = op_impl(op)
    out_len = impl.output_length(shape)
    stop = out_len if stop is None else min(stop, out_len)
    pos = torch.arange(start, stop, dtype=torch.int64, device=device)
    return impl.expected(fill_kind(op, reduce_op), reduce_op, rank, world_size, shape, pos)




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


# --------------------------------------------------------------------------- one class per op


class OpImpl(ABC):
    """How one op of ``train.contract.OPS`` runs in torch: its buffers, its call, its result.

    Subclasses set ``name`` (the registry key) and override what differs from the defaults: one
    buffer of ``count`` elements for in-place (input is output), two otherwise; every rank fills
    its input and has its output checked. ``expected`` must be computed from :func:`fill_values`
    by index arithmetic alone, never by running a collective.
    """

    name: ClassVar[str]

    @property
    def spec(self) -> OpSpec:
        """The op's registry entry."""
        return OPS[self.name]

    def buffers(
        self, shape: BufferShape, rank: int, in_place: bool, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (input, output) for one case; in-place forms share memory as NCCL's do."""
        if in_place:
            buf = torch.empty(shape.count, dtype=dtype, device=device)
            return buf, buf
        return (torch.empty(shape.count, dtype=dtype, device=device),
                torch.empty(shape.count, dtype=dtype, device=device))

    @abstractmethod
    def call(self, case: Case) -> Callable[[], None]:
        """Return the zero-argument function that runs the op once on ``case``'s buffers."""

    def output_length(self, shape: BufferShape) -> int:
        """Elements of the output buffer (what ``expected`` describes)."""
        return shape.count

    def fills_input(self, rank: int) -> bool:
        """Whether ``rank``'s input holds data (False: a receive-only buffer keeps the sentinel)."""
        return True

    def checks_output(self, rank: int) -> bool:
        """Whether ``rank``'s output is specified after the op (and so counted by the check)."""
        return True

    @abstractmethod
    def expected(
        self, kind: FillKind, reduce_op: str, rank: int, world_size: int, shape: BufferShape,
        pos: torch.Tensor,
    ) -> torch.Tensor:
        """Return, in float64, what the op leaves at output positions ``pos`` of ``rank``."""


def _source_and_offset(pos: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For a buffer of world_size chunks: the chunk (= source rank) of each position, and the
    offset inside it."""
    src_rank = torch.div(pos, chunk, rounding_mode="floor")
    return src_rank, pos - src_rank * chunk


class AllReduce(OpImpl):
    """``all_reduce(buf)``: every element p is the reduction of every rank's p."""

    name = "all_reduce"

    def call(self, case: Case) -> Callable[[], None]:
        buf, red = case.input, case.red
        return lambda: dist.all_reduce(buf, op=red)

    def expected(
        self, kind: FillKind, reduce_op: str, rank: int, world_size: int, shape: BufferShape,
        pos: torch.Tensor,
    ) -> torch.Tensor:
        return reduced_f64(kind, reduce_op, world_size, pos)


class AllGather(OpImpl):
    """``all_gather(out, in)``: out's p comes from rank ``p // chunk`` at ``p % chunk``.

    In-place (NCCL's convention): the input is this rank's slice of the output.
    """

    name = "all_gather"

    def buffers(
        self, shape: BufferShape, rank: int, in_place: bool, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.empty(shape.count, dtype=dtype, device=device)
        if in_place:
            return out[rank * shape.chunk : (rank + 1) * shape.chunk], out
        return torch.empty(shape.chunk, dtype=dtype, device=device), out

    def call(self, case: Case) -> Callable[[], None]:
        inp, out = case.input, case.output
        return lambda: _all_gather_single(out, inp)

    def expected(
        self, kind: FillKind, reduce_op: str, rank: int, world_size: int, shape: BufferShape,
        pos: torch.Tensor,
    ) -> torch.Tensor:
        if shape.chunk == 0:
            return pos.to(torch.float64)  # empty
        src_rank, offset = _source_and_offset(pos, shape.chunk)
        return fill_values(kind, src_rank, world_size, offset).to(torch.float64)


class ReduceScatter(OpImpl):
    """``reduce_scatter(out, in)``: out's p is the reduction of every rank's ``rank * chunk + p``.

    In-place (NCCL's convention): the output is this rank's slice of the input.
    """

    name = "reduce_scatter"

    def buffers(
        self, shape: BufferShape, rank: int, in_place: bool, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inp = torch.empty(shape.count, dtype=dtype, device=device)
        if in_place:
            return inp, inp[rank * shape.chunk : (rank + 1) * shape.chunk]
        return inp, torch.empty(shape.chunk, dtype=dtype, device=device)

    def call(self, case: Case) -> Callable[[], None]:
        inp, out, red = case.input, case.output, case.red
        return lambda: _reduce_scatter_single(out, inp, op=red)

    def output_length(self, shape: BufferShape) -> int:
        return shape.chunk

    def expected(
        self, kind: FillKind, reduce_op: str, rank: int, world_size: int, shape: BufferShape,
        pos: torch.Tensor,
    ) -> torch.Tensor:
        return reduced_f64(kind, reduce_op, world_size, pos + rank * shape.chunk)


class Broadcast(OpImpl):
    """``broadcast(buf, src=root)``: every rank's p is the root's p."""

    name = "broadcast"

    def call(self, case: Case) -> Callable[[], None]:
        buf, root = case.input, self.root
        return lambda: dist.broadcast(buf, src=root)

    @property
    def root(self) -> int:
        """The sending rank."""
        assert self.spec.root is not None
        return self.spec.root

    def fills_input(self, rank: int) -> bool:
        return rank == self.root  # a non-root's buffer only receives: the sentinel shows a miss

    def expected(
        self, kind: FillKind, reduce_op: str, rank: int, world_size: int, shape: BufferShape,
        pos: torch.Tensor,
    ) -> torch.Tensor:
        return fill_values(kind, self.root, world_size, pos).to(torch.float64)


class AllToAll(OpImpl):
    """``all_to_all_single(out, in)``: out's p comes from rank ``p // chunk`` at
    ``rank * chunk + p % chunk``."""

    name = "all_to_all"

    def call(self, case: Case) -> Callable[[], None]:
        inp, out = case.input, case.output
        return lambda: dist.all_to_all_single(out, inp)

    def expected(
        self, kind: FillKind, reduce_op: str, rank: int, world_size: int, shape: BufferShape,
        pos: torch.Tensor,
    ) -> torch.Tensor:
        if shape.chunk == 0:
            return pos.to(torch.float64)  # empty
        src_rank, offset = _source_and_offset(pos, shape.chunk)
        return fill_values(kind, src_rank, world_size, offset + rank * shape.chunk).to(torch.float64)


class Reduce(OpImpl):
    """``reduce(buf, dst=root)``: the root's p is the reduction of every rank's p.

    The other ranks' buffers are unspecified afterwards (torch and NCCL may use them as scratch),
    so only the root's output is checked, as nccl-tests does.
    """

    name = "reduce"

    @property
    def root(self) -> int:
        """The receiving rank."""
        assert self.spec.root is not None
        return self.spec.root

    def call(self, case: Case) -> Callable[[], None]:
        buf, red, root = case.input, case.red, self.root
        return lambda: dist.reduce(buf, dst=root, op=red)

    def checks_output(self, rank: int) -> bool:
        return rank == self.root

    def expected(
        self, kind: FillKind, reduce_op: str, rank: int, world_size: int, shape: BufferShape,
        pos: torch.Tensor,
    ) -> torch.Tensor:
        return reduced_f64(kind, reduce_op, world_size, pos)


class SendRecv(OpImpl):
    """Rank r sends its input to ``(r+1) % n`` and receives ``(r-1) % n``'s into its output.

    One ``batch_isend_irecv`` per op: on NCCL the pair is one group (no deadlock whatever the
    order), on gloo two tagged point-to-point transfers. ``wait()`` blocks the host on gloo and
    orders the current CUDA stream after the transfer on NCCL, so CUDA-event timing holds.
    """

    name = "sendrecv"

    def call(self, case: Case) -> Callable[[], None]:
        rank, n = case.comm.rank, case.comm.world_size
        inp, out = case.input, case.output
        # P2POp resolves the process group when built, so build the pair at the first run (a
        # Case may exist without a group, as in the unit tests), then reuse it for every op.
        pair: list[dist.P2POp] = []

        def run() -> None:
            if not pair:
                pair.append(dist.P2POp(dist.isend, inp, (rank + 1) % n))
                pair.append(dist.P2POp(dist.irecv, out, (rank - 1) % n))
            for work in dist.batch_isend_irecv(pair):
                work.wait()

        return run

    def expected(
        self, kind: FillKind, reduce_op: str, rank: int, world_size: int, shape: BufferShape,
        pos: torch.Tensor,
    ) -> torch.Tensor:
        return fill_values(kind, (rank - 1) % world_size, world_size, pos).to(torch.float64)


IMPLS: Final[dict[str, OpImpl]] = {
    impl.name: impl
    for impl in (AllReduce(), AllGather(), ReduceScatter(), Broadcast(), AllToAll(), Reduce(),
                 SendRecv())
}
if list(IMPLS) != list(OPS):  # the registry and the implementations must name the same ops
    raise RuntimeError(
        f"train.contract.OPS {list(OPS)} and train.bench.IMPLS {list(IMPLS)} differ; "
        "register each op in both, in the same order"
    )


def op_impl(name: str) -> OpImpl:
    """Return the implementation of the registered op ``name`` (ValueError naming the known ops)."""
    return IMPLS[op_spec(name).name]


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
        self.impl = op_impl(op)
        if in_place not in self.impl.spec.forms:
            raise ValueError(f"{op} has no {'in-place' if in_place else 'out-of-place'} form")
        self.op, self.dtype_name, self.shape = op, dtype_name, shape
        self.in_place, self.reduce_op, self.comm = in_place, reduce_op, comm
        self.red = REDUCE_OPS[reduce_op]
        self.input, self.output = self.impl.buffers(
            shape, comm.rank, in_place, DTYPES[dtype_name], comm.device
        )
        self.run: Callable[[], None] = self.impl.call(self)
        self.reset()

    def reset(self) -> None:
        """Write the sentinel over the output side, then this rank's pattern into the input."""
        kind = fill_kind(self.op, self.reduce_op)
        rank, n, device = self.comm.rank, self.comm.world_size, self.comm.device
        self.output.fill_(sentinel_value(self.dtype_name))
        if not self.impl.fills_input(rank):
            return
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

    A collective: all ranks must call. The decision to skip is the same on every rank because it
    depends on (op, dtype, reduce_op, world_size) only. A rank whose output the op leaves
    unspecified (reduce's non-roots) runs the op and contributes 0.
    """
    local = count_wrong_local(case)
    return None if local is None else sum_over_ranks(local, case.comm)


def count_wrong_local(case: Case) -> int | None:
    """:func:`count_wrong` without the sum: this rank's mismatches (None: not exact-checkable).

    Runs the op once, so it is still a collective: all ranks must call.
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
    if not case.impl.checks_output(comm.rank):
        return local
    for start in range(0, out.numel(), CHECK_BLOCK_ELEMS):
        got = out[start : start + CHECK_BLOCK_ELEMS]
        expected = expected_output(
            case.op, case.reduce_op, comm.rank, comm.world_size, case.shape,
            start=start, stop=start + got.numel(), device=out.device,
        )
        local += int((got != expected.to(dtype)).sum().item())
    return local


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
                seconds = measure_seconds(case.run, cfg.warmup, cfg.iters, case.comm)
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
        })
    return rows, skipped, notes, identities


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
            spec = op_spec(op)
            redop = s["reduce_op"] if spec.reducing else "none"
            root = spec.root_column
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


def parse_config(argv: Sequence[str] | None = None) -> BenchArgs:
    """Parse ``argv`` (default: sys.argv[1:]) into :class:`BenchArgs`; exits 2 on a bad flag."""
    return BenchArgs.from_argv(sys.argv[1:] if argv is None else argv)


def resolve_backend(requested: str) -> str:
    """Return the process-group backend: ``auto`` is nccl when CUDA and NCCL are there, else gloo."""
    if requested != "auto":
        return requested
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


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
    backend = resolve_backend(cfg.dist_backend)
    wait_for_master(os.environ, cfg.timeout_s)
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
        rows, skipped, notes, identities = measure_sweep(cfg, comm, _identity_bytes(me))
        ranks = [json.loads(raw) for raw in identities]
        if comm.rank == 0:
            doc: dict[str, Any] = {
                "schema": SCHEMA_VERSION,
                "kind": "bench",
                "run_id": cfg.run_id,
                "dist_backend": backend,
                "device": device.type,
                "torch_version": torch.__version__,
                "world_size": comm.world_size,
                "ranks": sorted(ranks, key=lambda r: int(r["rank"])),
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
