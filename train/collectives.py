"""What each collective is on torch: its buffers, its call, the data it is fed and must leave.

What an op is (forms, bus factor, chunking, root, reduction, minimum ranks) is registered once in
train/contract.py (torch-free, shared with the host). How it runs in torch (its buffers, its call,
the output it must leave) is one :class:`OpImpl` subclass per op below, in ``IMPLS``; a
:class:`Case` is one (op, dtype, size, in-place variant) with its buffers filled. The benchmark
driver (timing, the sweep, the report) is train/bench.py.

Buffers follow nccl-tests: ``size_bytes`` is the full buffer nccl-tests prints (all_gather: the
output; reduce_scatter: the input; all_to_all: the whole send buffer), rounded down to a multiple of
world_size elements where the op splits the buffer. Inputs hold deterministic patterns
(:func:`fill_values`), outputs a sentinel; the check compares an output exactly with an expectation
computed independently in float64 from the patterns by index arithmetic (:func:`expected_output`).

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
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal

import torch
import torch.distributed as dist

from train.contract import DTYPE_NAMES, OPS, OpSpec, op_spec

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


# --------------------------------------------------------------------------- buffers and fill patterns


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


def fill_kind(op: str, reduce_op: str) -> FillKind:
    """Return which deterministic pattern (see :func:`fill_values`) feeds ``op`` with ``reduce_op``."""
    if not op_spec(op).reducing:
        return "move"
    if reduce_op == "sum":
        return "sum"
    return "mark_low" if reduce_op == "min" else "mark_high"


MIX_MULTIPLIER: Final = 0x5BD1E995  # < 2**31, so index * multiplier fits int64 for index < 2**32
MIX_MASK: Final = 2**31 - 1  # keeps a hash below 2**31 so it can be mixed again, no overflow
RANK_SALT: Final = 0x9E3779B


def mix_index(index: torch.Tensor) -> torch.Tensor:
    """Return a non-negative int64 hash of each element index (exact, identical on CPU and CUDA).

    Patterns built on the raw index are periodic (``i % 3`` repeats every 3), so a collective that
    delivers data shifted by a multiple of the period passes the check. Hashing the index first
    makes a shifted or swapped chunk show for any chunk size. Multiply, shift, xor, mask: no
    division, and in place where it can be (the check's cost at 64 MiB is these passes).
    """
    return _mix_(index * MIX_MULTIPLIER, multiplied=True)


def _mix_(x: torch.Tensor, multiplied: bool = False) -> torch.Tensor:
    """:func:`mix_index` in place on a tensor the caller owns."""
    if not multiplied:
        x.mul_(MIX_MULTIPLIER)
    return x.bitwise_xor_(x >> 15)


def rank_mix(rank: int | torch.Tensor, index: torch.Tensor,
             hashed: torch.Tensor | None = None) -> torch.Tensor:
    """Return a non-negative int64 hash of (rank, index): independent-looking bits per rank.

    ``hashed`` is ``mix_index(index)`` when the caller already has it (one hash, many ranks)."""
    h = mix_index(index) if hashed is None else hashed
    return _mix_(torch.bitwise_xor(h, RANK_SALT * rank).bitwise_and_(MIX_MASK))


def _sum_bits(rank: int | torch.Tensor, index: torch.Tensor,
              hashed: torch.Tensor | None = None) -> torch.Tensor:
    """The ``sum`` pattern: bit 7 of ``rank_mix`` (0 or 1)."""
    return rank_mix(rank, index, hashed).bitwise_right_shift_(7).bitwise_and_(1)


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
    if kind == "sum":
        return _sum_bits(rank, index)
    h = mix_index(index)
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
    if kind == "sum":  # integer counts of ones, exact: hash the index once, add each rank's bits
        hashed = mix_index(index)
        counts = _sum_bits(0, index, hashed)
        for src in range(1, world_size):
            counts += _sum_bits(src, index, hashed)
        return counts.to(torch.float64)
    acc = fill_values(kind, 0, world_size, index).to(torch.float64)
    for src in range(1, world_size):
        acc = _reduce_f64(acc, fill_values(kind, src, world_size, index).to(torch.float64), reduce_op)
    return acc


# Patterns of whole buffers depend on the position alone, so a buffer's values are a prefix of a
# larger one's: kept per process up to this many elements (64 Mi: 64 MiB of int8 inputs, 128 MiB
# of int16 sums), they are computed once for the largest size of a sweep instead of twice per
# size (fill, then check). Past it, blocks are computed as they are needed.
PREFIX_CACHE_ELEMS: Final = 1 << 26
_prefixes: dict[tuple[Any, ...], torch.Tensor] = {}


def _prefix(key: tuple[Any, ...], start: int, stop: int, device: torch.device | None,
            dtype: torch.dtype, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``compute(arange(start, stop))`` from the cached prefix under ``key`` (grown as needed;
    computed directly past PREFIX_CACHE_ELEMS)."""
    if stop > PREFIX_CACHE_ELEMS:
        return compute(torch.arange(start, stop, dtype=torch.int64, device=device))
    full = (*key, str(device))
    have = _prefixes.get(full)
    known = 0 if have is None else have.numel()
    if stop > known:  # in blocks: the int64 temporaries of one pass stay bounded
        parts = [] if have is None else [have]
        for lo in range(known, stop, CHECK_BLOCK_ELEMS):
            index = torch.arange(lo, min(stop, lo + CHECK_BLOCK_ELEMS), dtype=torch.int64,
                                 device=device)
            parts.append(compute(index).to(dtype))
        have = torch.cat(parts)
        _prefixes[full] = have
    assert have is not None
    return have[start:stop]


def input_range(kind: FillKind, rank: int, world_size: int, start: int, stop: int,
                device: torch.device | None = None) -> torch.Tensor:
    """:func:`fill_values` of ``rank`` at positions ``[start, stop)`` (values 0..96: int8)."""
    return _prefix(("input", kind, rank, world_size), start, stop, device, torch.int8,
                   lambda index: fill_values(kind, rank, world_size, index))


def reduced_range(kind: FillKind, reduce_op: str, world_size: int, start: int, stop: int,
                  device: torch.device | None = None) -> torch.Tensor:
    """:func:`reduced_f64` at positions ``[start, stop)``, as integers (at most n, or 96)."""
    dtype = torch.int16 if world_size < 2**15 else torch.int32
    return _prefix(("reduced", kind, reduce_op, world_size), start, stop, device, dtype,
                   lambda index: reduced_f64(kind, reduce_op, world_size, index))


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
    return impl.expected_range(fill_kind(op, reduce_op), reduce_op, rank, world_size, shape,
                               start, stop, device)


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


# --------------------------------------------------------------------------- where collectives run


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
    def call(self, case: Case, async_op: bool = False) -> Callable[[], Any]:
        """Return the zero-argument function that runs the op once on ``case``'s buffers.

        ``async_op``: the function only issues the op and returns its work handle(s) (a ``Work``
        or a list of them) for the caller to wait on; otherwise it returns once the op is done
        (gloo) or enqueued (NCCL).
        """

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

    def expected_range(
        self, kind: FillKind, reduce_op: str, rank: int, world_size: int, shape: BufferShape,
        start: int, stop: int, device: torch.device | None,
    ) -> torch.Tensor:
        """:meth:`expected` at the positions ``[start, stop)``."""
        pos = torch.arange(start, stop, dtype=torch.int64, device=device)
        return self.expected(kind, reduce_op, rank, world_size, shape, pos)


def _source_and_offset(pos: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For a buffer of world_size chunks: the chunk (= source rank) of each position, and the
    offset inside it."""
    src_rank = torch.div(pos, chunk, rounding_mode="floor")
    return src_rank, pos - src_rank * chunk


class AllReduce(OpImpl):
    """``all_reduce(buf)``: every element p is the reduction of every rank's p."""

    name = "all_reduce"

    def call(self, case: Case, async_op: bool = False) -> Callable[[], Any]:
        buf, red = case.input, case.red
        return lambda: dist.all_reduce(buf, op=red, async_op=async_op)

    def expected(
        self, kind: FillKind, reduce_op: str, rank: int, world_size: int, shape: BufferShape,
        pos: torch.Tensor,
    ) -> torch.Tensor:
        return reduced_f64(kind, reduce_op, world_size, pos)

    def expected_range(
        self, kind: FillKind, reduce_op: str, rank: int, world_size: int, shape: BufferShape,
        start: int, stop: int, device: torch.device | None,
    ) -> torch.Tensor:
        return reduced_range(kind, reduce_op, world_size, start, stop, device).to(torch.float64)


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

    def call(self, case: Case, async_op: bool = False) -> Callable[[], Any]:
        inp, out = case.input, case.output
        return lambda: _all_gather_single(out, inp, async_op=async_op)

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

    def call(self, case: Case, async_op: bool = False) -> Callable[[], Any]:
        inp, out, red = case.input, case.output, case.red
        return lambda: _reduce_scatter_single(out, inp, op=red, async_op=async_op)

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

    def call(self, case: Case, async_op: bool = False) -> Callable[[], Any]:
        buf, root = case.input, self.root
        return lambda: dist.broadcast(buf, src=root, async_op=async_op)

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

    def call(self, case: Case, async_op: bool = False) -> Callable[[], Any]:
        inp, out = case.input, case.output
        return lambda: dist.all_to_all_single(out, inp, async_op=async_op)

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

    def call(self, case: Case, async_op: bool = False) -> Callable[[], Any]:
        buf, red, root = case.input, case.red, self.root
        return lambda: dist.reduce(buf, dst=root, op=red, async_op=async_op)

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

    def call(self, case: Case, async_op: bool = False) -> Callable[[], Any]:
        rank, n = case.comm.rank, case.comm.world_size
        inp, out = case.input, case.output
        # P2POp resolves the process group when built, so build the pair at the first run (a
        # Case may exist without a group, as in the unit tests), then reuse it for every op.
        pair: list[dist.P2POp] = []

        def run() -> Any:
            if not pair:
                pair.append(dist.P2POp(dist.isend, inp, (rank + 1) % n))
                pair.append(dist.P2POp(dist.irecv, out, (rank - 1) % n))
            works = dist.batch_isend_irecv(pair)
            if async_op:
                return works
            for work in works:
                work.wait()
            return None

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
        f"train.contract.OPS {list(OPS)} and train.collectives.IMPLS {list(IMPLS)} differ; "
        "register each op in both, in the same order"
    )


def op_impl(name: str) -> OpImpl:
    """Return the implementation of the registered op ``name`` (ValueError naming the known ops)."""
    return IMPLS[op_spec(name).name]


class Case:
    """The buffers and the single collective call of one (op, dtype, size, in_place) case.

    ``reset()`` writes the deterministic inputs and the sentinel into outputs (at construction
    unless ``fill=False``: buffers then hold whatever memory held); ``run()`` performs one blocking
    (gloo) or enqueued (NCCL) op, ``start()`` issues one and returns its work handles; ``output``
    is the region ``expected_output`` describes.
    """

    def __init__(
        self,
        op: str,
        dtype_name: str,
        shape: BufferShape,
        in_place: bool,
        reduce_op: str,
        comm: Comm,
        fill: bool = True,
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
        self.run: Callable[[], Any] = self.impl.call(self)
        self._issue = self.impl.call(self, async_op=True)
        if fill:
            self.reset()

    def start(self) -> list[Any]:
        """Issue the op once without waiting; return the work handles to ``wait()`` on."""
        issued = self._issue()
        if issued is None:
            return []
        return list(issued) if isinstance(issued, list) else [issued]

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
            block.copy_(input_range(kind, rank, n, start, start + block.numel(), device))


def count_wrong_local(case: Case) -> int | None:
    """Re-fill ``case``, run one op, return this rank's mismatches (None: not exact-checkable).

    Runs the op once, so it is a collective: all ranks must call. The decision to skip is the same
    on every rank because it depends on (op, dtype, reduce_op, world_size) only. A rank whose
    output the op leaves unspecified (reduce's non-roots) runs the op and contributes 0.
    train/bench.py's ``count_wrong`` sums it over ranks.
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

