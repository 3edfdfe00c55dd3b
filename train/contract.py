"""The workload contract between the host and the ranks: ops, dtypes, sizes and workload argv.

This module is the ONE place that says what a collective op is (its forms, bus factor, buffer
layout, root, minimum world size), which dtypes and reductions exist, how a size is written, and
which flags each workload takes. It never imports torch: the host orchestrator imports it to
validate settings and to build the argv it hands to ``python -m train.bench`` / ``train.job``,
and the host may have no torch installed. The ranks' side (torch calls, buffers, expected
results) lives in train/collectives.py, keyed by the names registered here.

A workload config crosses from host to node as argv, and only through one pair of functions::

    argv = BenchArgs(ops=("all_reduce",), max_bytes=parse_size("4M")).to_argv()   # host
    args = BenchArgs.from_argv(argv)                                               # rank

``from_argv(to_argv(x)) == x`` for every valid ``x`` (floats travel as ``repr``, so exactly).

Adding an op: one :class:`OpSpec` entry in :data:`OPS` here, and its implementation entry in
train/collectives.py's ``IMPLS``; nothing else (collectives.py checks at import that the two agree).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, Self, TypeVar, cast

# --------------------------------------------------------------------------- the op registry


@dataclass(frozen=True)
class OpSpec:
    """What one collective is, in nccl-tests' terms (its torch implementation is in train/collectives.py).

    ``forms``: the ``in_place`` flags torch offers, out-of-place (False) first. ``form_reason``:
    why a form is missing (None when both exist). ``bus_scale`` and ``bus_over_peers`` give
    nccl-tests' busbw/algbw factor (see :meth:`bus_factor`). ``chunked``: the buffer splits into
    world_size equal chunks, so sizes round down to a multiple of world_size elements.
    ``reducing``: the op takes a reduction (``--reduce-op``). ``root``: the root rank, None for
    rootless ops. ``min_world_size``: fewer ranks than this and the op is skipped with a reason.
    """

    name: str
    help: str
    forms: tuple[bool, ...]
    form_reason: str | None = None
    bus_scale: float = 1.0
    bus_over_peers: bool = False
    chunked: bool = False
    reducing: bool = False
    root: int | None = None
    min_world_size: int = 1

    def __post_init__(self) -> None:
        if not self.forms or list(self.forms) != sorted(set(self.forms)):
            raise ValueError(f"{self.name}: forms must be (False,), (True,) or (False, True)")
        if (len(self.forms) < 2) != (self.form_reason is not None):
            raise ValueError(f"{self.name}: give form_reason exactly when a form is missing")

    def bus_factor(self, world_size: int) -> float:
        """Return nccl-tests' busbw/algbw factor over ``world_size`` ranks.

        ``bus_scale * (n-1)/n`` when ``bus_over_peers`` (all_reduce 2(n-1)/n; all_gather,
        reduce_scatter, all_to_all (n-1)/n; 0 for one rank, as nccl-tests prints), else
        ``bus_scale`` (broadcast, reduce, sendrecv: 1).
        """
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if self.bus_over_peers:
            return self.bus_scale * (world_size - 1) / world_size
        return self.bus_scale

    def wire_bytes_per_rank(self, size_bytes: int, world_size: int) -> float:
        """Bytes one rank must send per op, averaged over the ranks (what its interface carries
        when every rank has a node of its own). Ring and tree algorithms alike: all_reduce
        2(n-1)/n x size, the chunked ops (n-1)/n x size, sendrecv size; a rooted op (broadcast,
        reduce) moves (n-1) x size in all, (n-1)/n x size per rank on average."""
        if world_size < 2:
            return 0.0
        if self.root is not None:
            return size_bytes * (world_size - 1) / world_size
        return size_bytes * self.bus_factor(world_size)

    @property
    def root_column(self) -> int:
        """The ``root`` column nccl-tests prints: the root rank, -1 for rootless ops."""
        return -1 if self.root is None else self.root

    def world_size_problem(self, world_size: int) -> str | None:
        """Return why this op cannot run on ``world_size`` ranks, or None when it can."""
        if world_size >= self.min_world_size:
            return None
        return (f"{self.name} needs at least {self.min_world_size} ranks, this run has "
                f"{world_size}; run with more ranks")


_OUT_OF_PLACE_ONLY = (False,)
_IN_PLACE_ONLY = (True,)
_BOTH = (False, True)

OPS: Final[Mapping[str, OpSpec]] = {
    spec.name: spec
    for spec in (
        OpSpec(
            name="all_reduce",
            help="every rank ends with the reduction of all ranks' buffers",
            forms=_IN_PLACE_ONLY,
            form_reason="torch has no out-of-place all_reduce (timing a copy + all_reduce would "
            "under-report); in-place rows only",
            bus_scale=2.0, bus_over_peers=True, reducing=True,
        ),
        OpSpec(
            name="all_gather",
            help="every rank ends with all ranks' chunks, in rank order",
            forms=_BOTH, bus_over_peers=True, chunked=True,
        ),
        OpSpec(
            name="reduce_scatter",
            help="rank r ends with chunk r of the reduction of all ranks' buffers",
            forms=_BOTH, bus_over_peers=True, chunked=True, reducing=True,
        ),
        OpSpec(
            name="broadcast",
            help="every rank ends with the root's buffer",
            forms=_IN_PLACE_ONLY,
            form_reason="torch broadcast is in-place only; in-place rows only",
            root=0,
        ),
        OpSpec(
            name="all_to_all",
            help="rank r sends its chunk p to rank p and receives chunk r of every rank",
            forms=_OUT_OF_PLACE_ONLY,
            form_reason="no in-place all_to_all (NCCL has none; one buffer for send and recv "
            "races); out-of-place rows only",
            bus_over_peers=True, chunked=True,
        ),
        OpSpec(
            name="reduce",
            help="the root ends with the reduction of all ranks' buffers",
            forms=_IN_PLACE_ONLY,
            form_reason="torch reduce is in-place only (the root's buffer receives the result); "
            "in-place rows only",
            reducing=True, root=0,
        ),
        OpSpec(
            name="sendrecv",
            help="rank r sends its buffer to rank r+1 and receives rank r-1's (a ring of pairs)",
            forms=_OUT_OF_PLACE_ONLY,
            form_reason="sendrecv sends one buffer while receiving into another (in flight at "
            "once); out-of-place rows only",
            min_world_size=2,
        ),
    )
}
OP_NAMES: Final[tuple[str, ...]] = tuple(OPS)


def op_spec(name: str) -> OpSpec:
    """Return the registered :class:`OpSpec` called ``name``; ValueError naming the known ops."""
    try:
        return OPS[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r}; choose from {', '.join(OP_NAMES)}") from None


# --------------------------------------------------------------------------- dtypes, reductions

# torch.<name> for each; the order is the one the CLI lists.
DTYPE_NAMES: Final[tuple[str, ...]] = (
    "float32", "float16", "bfloat16", "float64", "int32", "int64", "int8", "uint8",
)
# The names nccl-tests prints in its "type" column.
NCCL_TYPE_NAMES: Final[Mapping[str, str]] = {
    "float32": "float",
    "float16": "half",
    "bfloat16": "bfloat16",
    "float64": "double",
    "int32": "int32",
    "int64": "int64",
    "int8": "int8",
    "uint8": "uint8",
}
REDUCE_OP_NAMES: Final[tuple[str, ...]] = ("sum", "prod", "max", "min")
IN_PLACE_MODES: Final[tuple[str, ...]] = ("both", "on", "off")
# Non-blocking bench (``--blocking 0``): at most this many timed ops in flight per rank, each on its
# own buffers (so a rank holds this many buffer sets; see orchestrator.grammar's memory bound).
NONBLOCKING_DEPTH: Final = 8
DIST_BACKENDS: Final[tuple[str, ...]] = ("auto", "nccl", "gloo")

InPlaceMode = Literal["both", "on", "off"]

# --------------------------------------------------------------------------- sizes

_SIZE_RE: Final = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS: Final[Mapping[str, int]] = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(value: object) -> int:
    """Return bytes from an int or a text like ``4096``, ``"4K"``, ``"1M"``, ``"64MiB"``, ``"1G"``.

    Suffixes K, M, G, T are binary multiples whether written K, KB, Ki or KiB, as nccl-tests
    reads them; case and surrounding blanks do not matter. Raises ValueError, naming the value
    and the fix, for anything else: bools, fractions, negative numbers and sizes below 1 byte.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size; write bytes or a size like 1M, 64MiB, 1G")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{value} is not a positive size; write bytes >= 1 or a size like 1M")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            size = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
            if size >= 1:
                return size
            raise ValueError(f"{value!r} is not a positive size; write bytes >= 1 or a size like 1M")
    raise ValueError(f"{value!r} is not a size; write bytes or a size like 1M, 64MiB, 1G")


def size_sweep(min_bytes: int, max_bytes: int, step_factor: int) -> list[int]:
    """Return ``min, min*f, min*f**2, ...`` up to and including ``max`` (nccl-tests ``-b -e -f``).

    Requires ``1 <= min_bytes <= max_bytes`` and ``step_factor >= 2`` (ValueError otherwise).
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


# --------------------------------------------------------------------------- flags of a field

T = TypeVar("T")


@dataclass(frozen=True)
class Flag:
    """How one field of a workload config travels as a command-line flag.

    ``parse`` turns the flag's text into a value and ``format`` a value into text, with
    ``parse(format(v)) == v``. ``validate`` returns the value to store (normalised: a tuple for
    a list, a float for an int given to a float field, bytes for a size text) or raises
    ValueError naming the fix. It runs both when argv is parsed and when the host builds the
    config, so a config that exists is one the workload accepts.
    """

    help: str
    parse: Callable[[str], Any]
    format: Callable[[Any], str] = str
    validate: Callable[[Any], Any] | None = None
    name: str | None = None  # the flag, when not ``--`` + the field name with dashes
    metavar: str | None = None
    # Left out of argv at its default: a flag added later, so that images built before it
    # (whose workload does not know the flag) still run every config that does not use it.
    omit_default: bool = False


def _flag_field(default: T, flag: Flag) -> T:
    return field(default=default, metadata={"flag": flag})


def _flag_of(f: dataclasses.Field[Any]) -> Flag:
    flag = f.metadata["flag"]
    assert isinstance(flag, Flag)
    return flag


def _flag_name(f: dataclasses.Field[Any]) -> str:
    return _flag_of(f).name or "--" + f.name.replace("_", "-")


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def _parse_bool01(text: str) -> bool:
    if text.strip() not in ("0", "1"):
        raise ValueError(f"{text!r} is neither 0 nor 1")
    return text.strip() == "1"


def _format_bool01(value: bool) -> str:
    return "1" if value else "0"


def _text(text: str) -> str:
    return text


def _an_int(low: int | None = None, positive: bool = False) -> Callable[[Any], int]:
    def validate(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {value!r}")
        if positive and value <= 0:
            raise ValueError(f"must be positive, got {value}")
        if low is not None and value < low:
            raise ValueError(f"must be >= {low}, got {value}")
        return value

    return validate


def _a_float(positive: bool) -> Callable[[Any], float]:
    def validate(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value!r}")
        if positive and value <= 0:
            raise ValueError(f"must be positive, got {value!r}")
        return float(value)

    return validate


def _a_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false (0 or 1 on the command line), got {value!r}")
    return value


def _optional_text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"must be a text or None, got {value!r}")
    # What argv cannot carry: exec refuses NUL, and argparse drops a value that is exactly "--".
    if "\x00" in value or value == "--":
        raise ValueError(f"{value!r} cannot travel as a command-line value; choose another text")
    return value


def _one_of(allowed: Sequence[str], what: str) -> Callable[[Any], str]:
    def validate(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")
        return cast(str, value)

    return validate


def _comma_list(allowed: Sequence[str], all_word: bool) -> Callable[[str], tuple[str, ...]]:
    """Parse ``"a,b"`` (blanks and repeats dropped; ``all`` for every name when ``all_word``)."""

    def parse(text: str) -> tuple[str, ...]:
        items = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
        if all_word and items == ("all",):
            return tuple(allowed)
        return items

    return parse


def _names(allowed: Sequence[str], what: str) -> Callable[[Any], tuple[str, ...]]:
    def validate(value: Any) -> tuple[str, ...]:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ValueError(f"must be a list of {what} names, got {value!r}")
        if not value:
            raise ValueError(f"no {what} given; name at least one of {', '.join(allowed)}")
        bad = [x for x in value if x not in allowed]
        if bad:
            raise ValueError(
                f"unknown {what} {', '.join(map(repr, bad))}; choose from {', '.join(allowed)}"
            )
        if len(set(value)) != len(value):
            raise ValueError(f"{what} list {', '.join(value)} names one twice; name each once")
        return tuple(value)

    return validate


def _join(value: Sequence[str]) -> str:
    return ",".join(value)


def _choices(allowed: Sequence[str]) -> str:
    return "{" + ",".join(allowed) + "}"


# --------------------------------------------------------------------------- workload configs


class WorkloadArgs:
    """Base of the frozen workload configs: validation, and the argv round trip.

    Each field's :class:`Flag` (in its metadata) says how it becomes one ``--flag value`` pair;
    the parser of ``from_argv`` is built from those same fields, so the two cannot disagree.
    Subclasses set ``PROG`` and ``DESCRIPTION`` and may add cross-field checks in ``_check``.
    """

    PROG: ClassVar[str]
    DESCRIPTION: ClassVar[str]

    def __post_init__(self) -> None:
        for f in dataclasses.fields(cast(Any, self)):
            validate = _flag_of(f).validate
            if validate is None:
                continue
            try:
                value = validate(getattr(self, f.name))
            except ValueError as e:
                raise ValueError(f"{f.name} ({_flag_name(f)}): {e}") from None
            object.__setattr__(self, f.name, value)  # normalised (frozen: set once, here)
        self._check()

    def _check(self) -> None:
        """Cross-field checks; raise ValueError naming the fields and the fix."""

    def to_argv(self) -> tuple[str, ...]:
        """Return the workload's flags equal to this config (a ``None`` field is left out, and
        an ``omit_default`` flag at its default).

        Pairs ``("--flag", "value")`` in field order; a value starting with ``-`` travels as
        ``--flag=value`` so that argparse cannot take it for a flag.
        """
        argv: list[str] = []
        for f in dataclasses.fields(cast(Any, self)):
            value = getattr(self, f.name)
            if value is None or (_flag_of(f).omit_default and value == f.default):
                continue
            text = _flag_of(f).format(value)
            if text.startswith("-"):
                argv.append(f"{_flag_name(f)}={text}")
            else:
                argv += [_flag_name(f), text]
        return tuple(argv)

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        """Return the workload's argparse parser (flags, help and defaults from the fields)."""
        p = argparse.ArgumentParser(prog=cls.PROG, description=cls.DESCRIPTION)
        for f in dataclasses.fields(cast(Any, cls)):
            flag = _flag_of(f)
            default = "none" if f.default is None else flag.format(f.default)
            p.add_argument(
                _flag_name(f),
                dest=f.name,
                type=_argparse_type(flag, f.name),
                default=argparse.SUPPRESS,  # the dataclass holds the defaults, once
                metavar=flag.metavar,
                help=f"{flag.help} (default: {default})",
            )
        return p

    @classmethod
    def from_argv(cls, argv: Sequence[str]) -> Self:
        """Parse the workload's flags; a bad flag exits 2 with argparse's usage message."""
        p = cls.parser()
        values = vars(p.parse_args(list(argv)))
        try:
            return cls(**values)
        except ValueError as e:
            p.error(str(e))


def _argparse_type(flag: Flag, name: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = flag.parse(text)
            return value if flag.validate is None else flag.validate(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = name  # argparse names the type in some messages
    return parse


_SIZE_HELP = "bytes, or with a binary unit: 4K, 1M, 64MiB, 1G"


@dataclass(frozen=True)
class BenchArgs(WorkloadArgs):
    """The flags of ``python -m train.bench``, with nccl-tests' meaning for each knob.

    Sizes may be given as texts (``min_bytes="4M"``): they are stored as bytes.
    """

    PROG: ClassVar[str] = "python -m train.bench"
    DESCRIPTION: ClassVar[str] = "Collective benchmark with nccl-tests semantics, under torchrun."

    ops: tuple[str, ...] = _flag_field(
        OP_NAMES,
        Flag("collectives, comma list or 'all': " + ",".join(OP_NAMES),
             _comma_list(OP_NAMES, all_word=True), _join, _names(OP_NAMES, "op"), metavar="LIST"),
    )
    min_bytes: int = _flag_field(
        2**20, Flag(f"smallest size (nccl-tests -b); {_SIZE_HELP}", parse_size, str, parse_size,
                    metavar="SIZE")
    )
    max_bytes: int = _flag_field(
        64 * 2**20, Flag(f"largest size (nccl-tests -e); {_SIZE_HELP}", parse_size, str, parse_size,
                    metavar="SIZE")
    )
    step_factor: int = _flag_field(
        2, Flag("size multiplier between steps (nccl-tests -f)", _parse_int, str, _an_int(low=2))
    )
    warmup: int = _flag_field(
        5, Flag("untimed iterations (nccl-tests -w)", _parse_int, str, _an_int(low=0))
    )
    iters: int = _flag_field(
        20, Flag("timed iterations (nccl-tests -n)", _parse_int, str, _an_int(low=1))
    )
    dtypes: tuple[str, ...] = _flag_field(
        ("float32",),
        Flag("data types, comma list: " + ",".join(DTYPE_NAMES),
             _comma_list(DTYPE_NAMES, all_word=False), _join, _names(DTYPE_NAMES, "dtype"),
             name="--dtype", metavar="LIST"),
    )
    check: bool = _flag_field(
        True, Flag("exact correctness check after timing (nccl-tests -c)", _parse_bool01,
                   _format_bool01, _a_bool, metavar="{0,1}")
    )
    in_place: InPlaceMode = _flag_field(
        "both", Flag("report out-of-place and in-place rows, or only one kind", _text, str,
                     _one_of(IN_PLACE_MODES, "in-place mode"), metavar=_choices(IN_PLACE_MODES))
    )
    reduce_op: str = _flag_field(
        "sum", Flag("reduction of the reducing ops (nccl-tests -o)", _text, str,
                    _one_of(REDUCE_OP_NAMES, "reduce op"), metavar=_choices(REDUCE_OP_NAMES))
    )
    blocking: bool = _flag_field(
        True, Flag("1: wait for each op before the next; 0: issue the timed ops asynchronously "
                   f"(up to {NONBLOCKING_DEPTH} in flight, each on its own buffers) and wait for "
                   "all (nccl-tests -z)", _parse_bool01, _format_bool01, _a_bool, metavar="{0,1}",
                   omit_default=True)
    )
    dist_backend: str = _flag_field(
        "auto", Flag("process-group backend; auto: nccl with CUDA, else gloo", _text, str,
                     _one_of(DIST_BACKENDS, "backend"), metavar=_choices(DIST_BACKENDS))
    )
    timeout_s: int = _flag_field(
        300, Flag("process-group timeout (s)", _parse_int, str, _an_int(low=1))
    )
    run_id: str | None = _flag_field(None, Flag("echoed in the result", _text, str, _optional_text))

    def _check(self) -> None:
        if self.max_bytes < self.min_bytes:
            raise ValueError(
                f"max_bytes (--max-bytes) {self.max_bytes} is below min_bytes (--min-bytes) "
                f"{self.min_bytes}; swap them or raise max_bytes"
            )

    def settings(self) -> dict[str, Any]:
        """Return the ``settings`` object of the result document (see train/results.py)."""
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
            "blocking": self.blocking,
        }


@dataclass(frozen=True)
class TrainArgs(WorkloadArgs):
    """The flags of ``python -m train.job`` (the plan passes every one; defaults suit a quick run)."""

    PROG: ClassVar[str] = "python -m train.job"
    DESCRIPTION: ClassVar[str] = (
        "DDP training of a small MLP on synthetic, learnable data, under torchrun."
    )

    steps: int = _flag_field(
        200, Flag("optimizer steps in total", _parse_int, str, _an_int(positive=True))
    )
    batch_size: int = _flag_field(
        64, Flag("samples per rank per step", _parse_int, str, _an_int(positive=True))
    )
    width: int = _flag_field(
        256, Flag("hidden units per layer", _parse_int, str, _an_int(positive=True))
    )
    depth: int = _flag_field(3, Flag("hidden layers", _parse_int, str, _an_int(positive=True)))
    bucket_cap_mb: float = _flag_field(
        25.0, Flag("DDP gradient bucket size (MiB)", _parse_float, repr, _a_float(positive=True))
    )
    checkpoint_every: int = _flag_field(
        0, Flag("checkpoint every K steps (0: off)", _parse_int, str, _an_int())
    )
    keep_checkpoints: int = _flag_field(
        3, Flag("checkpoints kept", _parse_int, str, _an_int(positive=True))
    )
    seed: int = _flag_field(0, Flag("seed of model, teacher and data", _parse_int, str, _an_int()))
    lr: float = _flag_field(
        0.05, Flag("SGD learning rate", _parse_float, repr, _a_float(positive=True))
    )
    progress_every: int = _flag_field(
        20, Flag("progress line period (steps)", _parse_int, str, _an_int(positive=True))
    )
    dist_backend: str = _flag_field(
        "auto", Flag("process-group backend; auto: nccl with CUDA, else gloo", _text, str,
                     _one_of(DIST_BACKENDS, "backend"), metavar=_choices(DIST_BACKENDS))
    )
    timeout_s: int = _flag_field(
        300, Flag("process-group timeout (s)", _parse_int, str, _an_int(positive=True))
    )
    run_id: str | None = _flag_field(None, Flag("echoed in the result", _text, str, _optional_text))
    metrics_hold_s: float = _flag_field(
        0.0, Flag("after training, keep /metrics open up to this long (s)", _parse_float, repr,
                  _a_float(positive=False))
    )
    metrics_hold_scrapes: int = _flag_field(
        2, Flag("... or until this many more scrapes happened", _parse_int, str, _an_int())
    )

    def settings(self) -> dict[str, Any]:
        """The ``settings`` object of the result document (what determines the weights)."""
        keys = ("steps", "batch_size", "width", "depth", "bucket_cap_mb", "checkpoint_every",
                "seed", "lr")
        return {k: getattr(self, k) for k in keys}


FABRIC_SCHEDULES: Final[tuple[str, ...]] = ("all", "bisect")


@dataclass(frozen=True)
class FabricArgs(WorkloadArgs):
    """The flags of ``python -m train.fabric``: point-to-point bandwidth and latency between every
    pair of nodes (one rank per node), N/2 disjoint pairs at a time."""

    PROG: ClassVar[str] = "python -m train.fabric"
    DESCRIPTION: ClassVar[str] = (
        "Pairwise link matrix: send/recv bandwidth and ping-pong latency between every pair of "
        "ranks, in round-robin rounds of disjoint pairs, under torchrun."
    )

    bw_bytes: int = _flag_field(
        4 * 2**20, Flag(f"message size of the bandwidth test; {_SIZE_HELP}", parse_size, str,
                        parse_size, metavar="SIZE")
    )
    bw_iters: int = _flag_field(
        50, Flag("most timed messages per direction of a pair (bandwidth)", _parse_int, str,
                 _an_int(positive=True))
    )
    bw_seconds: float = _flag_field(
        0.25, Flag("aim of one direction's timed transfer (s): the receiver sizes the count "
                   "from the last warmup message, 1..bw_iters", _parse_float, repr,
                   _a_float(positive=True))
    )
    lat_bytes: int = _flag_field(
        8, Flag(f"message size of the latency test; {_SIZE_HELP}", parse_size, str, parse_size,
                metavar="SIZE")
    )
    lat_iters: int = _flag_field(
        20, Flag("timed round trips per pair (latency)", _parse_int, str, _an_int(positive=True))
    )
    warmup: int = _flag_field(
        2, Flag("untimed messages before each timed run", _parse_int, str,
                _an_int(positive=True))
    )
    passes: int = _flag_field(
        2, Flag("times the whole schedule runs; each direction keeps its best pass (load on "
                "a shared host only ever lowers a bandwidth)", _parse_int, str,
                _an_int(positive=True))
    )
    schedule: str = _flag_field(
        "all", Flag("all: every pair, N-1 rounds; bisect: N/2 pairs, then only the slow pairs' "
                    "nodes against fast ones (large N)", _text, str,
                    _one_of(FABRIC_SCHEDULES, "schedule"), metavar=_choices(FABRIC_SCHEDULES))
    )
    slow_fraction: float = _flag_field(
        0.5, Flag("bisect: a pair below this fraction of the round's median is measured again",
                  _parse_float, repr, _a_float(positive=True))
    )
    dist_backend: str = _flag_field(
        "auto", Flag("process-group backend; auto: nccl with CUDA, else gloo", _text, str,
                     _one_of(DIST_BACKENDS, "backend"), metavar=_choices(DIST_BACKENDS))
    )
    timeout_s: int = _flag_field(
        300, Flag("process-group timeout (s)", _parse_int, str, _an_int(positive=True))
    )
    run_id: str | None = _flag_field(None, Flag("echoed in the result", _text, str, _optional_text))

    def settings(self) -> dict[str, Any]:
        """The ``settings`` object of the result document."""
        keys = ("bw_bytes", "bw_iters", "bw_seconds", "lat_bytes", "lat_iters", "warmup",
                "passes", "schedule")
        return {k: getattr(self, k) for k in keys}


def round_robin(n: int) -> list[list[tuple[int, int]]]:
    """The circle method: rounds of disjoint pairs (a < b) covering every pair of ``n`` ranks
    exactly once; N-1 rounds of N/2 pairs for even N, N rounds (one rank idle each) for odd N."""
    slots: list[int | None] = [*range(n), *([None] if n % 2 else [])]
    m = len(slots)
    rounds: list[list[tuple[int, int]]] = []
    for _ in range(m - 1):
        pairs = []
        for i in range(m // 2):
            a, b = slots[i], slots[m - 1 - i]
            if a is not None and b is not None:
                pairs.append((min(a, b), max(a, b)))
        rounds.append(sorted(pairs))
        slots = [slots[0], slots[-1], *slots[1:-1]]
    return rounds


# The module each workload runs as (``python -m MODULE``), and its config type.
WORKLOAD_MODULES: Final[Mapping[str, str]] = {
    "bench": "train.bench", "train": "train.job", "fabric": "train.fabric"}
WORKLOAD_ARGS: Final[Mapping[str, type[BenchArgs] | type[TrainArgs] | type[FabricArgs]]] = {
    "bench": BenchArgs,
    "train": TrainArgs,
    "fabric": FabricArgs,
}


def workload_argv(args: BenchArgs | TrainArgs | FabricArgs) -> tuple[str, ...]:
    """Return ``("-m", module, *flags)``: what follows ``torchrun [...]`` for ``args``."""
    kind = next(k for k, t in WORKLOAD_ARGS.items() if isinstance(args, t))
    return ("-m", WORKLOAD_MODULES[kind], *args.to_argv())


__all__ = [
    "DIST_BACKENDS", "DTYPE_NAMES", "IN_PLACE_MODES", "NCCL_TYPE_NAMES", "NONBLOCKING_DEPTH",
    "OPS", "OP_NAMES", "REDUCE_OP_NAMES", "WORKLOAD_ARGS", "WORKLOAD_MODULES", "BenchArgs",
    "FabricArgs", "Flag", "InPlaceMode", "OpSpec", "TrainArgs", "WorkloadArgs", "op_spec",
    "parse_size", "round_robin", "size_sweep", "workload_argv",
]

