"""Unit tier for train/contract.py: the op registry, sizes, and the workload argv round trip."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from train.contract import (
    DTYPE_NAMES,
    NCCL_TYPE_NAMES,
    OP_NAMES,
    OPS,
    REDUCE_OP_NAMES,
    WORKLOAD_ARGS,
    WORKLOAD_MODULES,
    BenchArgs,
    OpSpec,
    TrainArgs,
    op_spec,
    parse_size,
    size_sweep,
    workload_argv,
)

REPO = Path(__file__).resolve().parents[1]


def test_contract_imports_without_torch() -> None:
    # torch set to None in sys.modules: any ``import torch`` below would raise ImportError.
    code = ("import sys; sys.modules['torch'] = None; import train.contract as c; "
            "c.BenchArgs.from_argv(c.BenchArgs().to_argv()); print(len(c.OPS))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(len(OPS))


# --------------------------------------------------------------------------- the registry


def test_registry_order_and_names() -> None:
    assert OP_NAMES == ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "all_to_all",
                        "reduce", "sendrecv")
    assert all(spec.name == name and spec.help for name, spec in OPS.items())
    assert op_spec("reduce") is OPS["reduce"]
    with pytest.raises(ValueError) as e:
        op_spec("alltoall")
    assert "'alltoall'" in str(e.value) and all(name in str(e.value) for name in OP_NAMES)


def test_new_ops_are_described_as_nccl_tests_does() -> None:
    reduce, sendrecv = OPS["reduce"], OPS["sendrecv"]
    assert (reduce.forms, reduce.reducing, reduce.chunked, reduce.root) == ((True,), True, False, 0)
    assert reduce.form_reason and "in-place only" in reduce.form_reason
    assert (sendrecv.forms, sendrecv.reducing, sendrecv.chunked, sendrecv.root) == (
        (False,), False, False, None)
    assert sendrecv.min_world_size == 2 and sendrecv.root_column == -1
    problem = sendrecv.world_size_problem(1)
    assert problem is not None and "2 ranks" in problem and "1" in problem
    assert sendrecv.world_size_problem(2) is None and reduce.world_size_problem(1) is None


@pytest.mark.parametrize("n", range(1, 65))
def test_bus_factors_are_nccl_tests_formulas(n: int) -> None:
    want = {
        "all_reduce": 2 * (n - 1) / n,
        "all_gather": (n - 1) / n,
        "reduce_scatter": (n - 1) / n,
        "all_to_all": (n - 1) / n,
        "broadcast": 1.0,
        "reduce": 1.0,
        "sendrecv": 1.0,
    }
    assert {name: spec.bus_factor(n) for name, spec in OPS.items()} == want


def test_registry_columns() -> None:
    assert {name: spec.root_column for name, spec in OPS.items()} == {
        "all_reduce": -1, "all_gather": -1, "reduce_scatter": -1, "broadcast": 0,
        "all_to_all": -1, "reduce": 0, "sendrecv": -1}
    assert {n for n, s in OPS.items() if s.reducing} == {"all_reduce", "reduce_scatter", "reduce"}
    assert {n for n, s in OPS.items() if s.chunked} == {"all_gather", "reduce_scatter", "all_to_all"}
    # A missing form always says why; an op with both forms has nothing to explain.
    for spec in OPS.values():
        assert spec.forms in ((False,), (True,), (False, True))
        assert (spec.form_reason is None) == (spec.forms == (False, True))


def test_opspec_refuses_inconsistent_entries() -> None:
    with pytest.raises(ValueError):
        OpSpec(name="x", help="h", forms=(True, False))  # out-of-place first
    with pytest.raises(ValueError):
        OpSpec(name="x", help="h", forms=(True,))  # a missing form without a reason
    with pytest.raises(ValueError):
        OpSpec(name="x", help="h", forms=(False, True), form_reason="none missing")


def test_dtype_and_reduction_names() -> None:
    assert DTYPE_NAMES == ("float32", "float16", "bfloat16", "float64", "int32", "int64", "int8",
                           "uint8")
    assert set(NCCL_TYPE_NAMES) == set(DTYPE_NAMES)
    assert NCCL_TYPE_NAMES["float32"] == "float" and NCCL_TYPE_NAMES["float16"] == "half"
    assert REDUCE_OP_NAMES == ("sum", "prod", "max", "min")


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("text", "value"),
    [("4096", 4096), ("4K", 4096), ("4k", 4096), ("4KiB", 4096), ("4KB", 4096), ("4Ki", 4096),
     ("64M", 64 << 20), ("64MiB", 64 << 20), ("1G", 1 << 30), ("2t", 2 << 40), (" 8 ", 8),
     ("8 B", 8), (1, 1), (1 << 40, 1 << 40)],
)
def test_parse_size(text: object, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    "value", ["", "-1", "4X", "1.5M", "M", "0", "0K", 0, -4, True, False, 4.0, None, b"4K", "4 KK"]
)
def test_parse_size_rejects_naming_value_and_fix(value: object) -> None:
    with pytest.raises(ValueError) as e:
        parse_size(value)
    assert repr(value) in str(e.value) or str(value) in str(e.value)
    assert "1M" in str(e.value)  # the fix: how a size is written


_OLD_BENCH_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def _old_bench_parse_size(text: str) -> int:
    """train/bench.py's parser before the contract (kept here to prove the superset)."""
    match = _OLD_BENCH_SIZE_RE.match(text)
    if not match:
        raise ValueError(text)
    return int(match.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[
        match.group(2).lower()]


_size_texts = st.one_of(
    st.text(alphabet="0123456789kKmMgGtTiIbBxX .-+_", max_size=8),
    st.from_regex(r"\A\s?\d{1,4}\s?[kmgtKMGT]?[iI]?[bB]?\s?\Z"),
)


@settings(max_examples=400, deadline=None)
@given(value=st.one_of(_size_texts, st.integers(-5, 1 << 45), st.booleans()))
@example(value="4i")
@example(value="0")
def test_parse_size_is_a_superset_of_both_old_parsers(value: object) -> None:
    from orchestrator.settings import parse_size as settings_parse_size

    def outcome(parse: object) -> int | None:
        try:
            return parse(value)  # type: ignore[operator, no-any-return]
        except ValueError:
            return None

    new = outcome(parse_size)
    old_settings = outcome(settings_parse_size)
    if old_settings is not None:
        assert new == old_settings
    if isinstance(value, str):
        old_bench = outcome(_old_bench_parse_size)
        if old_bench is not None and old_bench >= 1:  # the old bench parser took 0; sizes are >= 1
            assert new == old_bench
    if new is not None:
        assert new >= 1


@pytest.mark.parametrize(
    ("lo", "hi", "f", "expected"),
    [
        (8, 8, 2, [8]),
        (4096, 262144, 4, [4096, 16384, 65536, 262144]),
        (1000, 9999, 3, [1000, 3000, 9000]),
        (1 << 20, (1 << 20) * 5, 2, [1 << 20, 2 << 20, 4 << 20]),
    ],
)
def test_size_sweep(lo: int, hi: int, f: int, expected: list[int]) -> None:
    assert size_sweep(lo, hi, f) == expected


@pytest.mark.parametrize(("lo", "hi", "f"), [(0, 8, 2), (16, 8, 2), (8, 64, 1)])
def test_size_sweep_rejects_bad_ranges(lo: int, hi: int, f: int) -> None:
    with pytest.raises(ValueError):
        size_sweep(lo, hi, f)


# --------------------------------------------------------------------------- workload argv

_texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                 max_size=12)
_run_ids = st.one_of(st.none(), _texts.filter(lambda t: t != "--"),
                     st.sampled_from(["-x", "--ops", "-1", "a=b", "---", "-- x", ""]))
_names = st.lists(st.sampled_from(OP_NAMES), min_size=1, unique=True).map(tuple)


@st.composite
def bench_args(draw: st.DrawFn) -> BenchArgs:
    lo = draw(st.integers(1, 1 << 40))
    return BenchArgs(
        ops=draw(_names),
        min_bytes=lo,
        max_bytes=draw(st.integers(lo, 1 << 42)),
        step_factor=draw(st.integers(2, 1 << 20)),
        warmup=draw(st.integers(0, 10**6)),
        iters=draw(st.integers(1, 10**6)),
        dtypes=tuple(draw(st.lists(st.sampled_from(DTYPE_NAMES), min_size=1, unique=True))),
        check=draw(st.booleans()),
        in_place=draw(st.sampled_from(["both", "on", "off"])),
        reduce_op=draw(st.sampled_from(REDUCE_OP_NAMES)),
        dist_backend=draw(st.sampled_from(["auto", "nccl", "gloo"])),
        timeout_s=draw(st.integers(1, 10**7)),
        run_id=draw(_run_ids),
    )


_positive_floats = st.floats(min_value=0, exclude_min=True, allow_infinity=False, allow_nan=False)


@st.composite
def train_args(draw: st.DrawFn) -> TrainArgs:
    return TrainArgs(
        steps=draw(st.integers(1, 10**9)),
        batch_size=draw(st.integers(1, 1 << 20)),
        width=draw(st.integers(1, 1 << 16)),
        depth=draw(st.integers(1, 64)),
        bucket_cap_mb=draw(_positive_floats),
        checkpoint_every=draw(st.integers(-10, 10**6)),
        keep_checkpoints=draw(st.integers(1, 100)),
        seed=draw(st.integers(-(2**63), 2**64)),
        lr=draw(_positive_floats),
        progress_every=draw(st.integers(1, 10**6)),
        dist_backend=draw(st.sampled_from(["auto", "nccl", "gloo"])),
        timeout_s=draw(st.integers(1, 10**7)),
        run_id=draw(_run_ids),
        metrics_hold_s=draw(st.floats(allow_nan=False, allow_infinity=False)),
        metrics_hold_scrapes=draw(st.integers(-5, 1000)),
    )


@settings(max_examples=300, deadline=None)
@given(args=bench_args())
def test_bench_args_argv_round_trip(args: BenchArgs) -> None:
    argv = args.to_argv()
    assert all(isinstance(a, str) for a in argv)
    assert BenchArgs.from_argv(argv) == args


@settings(max_examples=300, deadline=None)
@given(args=train_args())
@example(args=TrainArgs(lr=0.1 + 0.2, bucket_cap_mb=5e-324, metrics_hold_s=-0.0, seed=-1))
def test_train_args_argv_round_trip(args: TrainArgs) -> None:
    back = TrainArgs.from_argv(args.to_argv())
    assert back == args
    # Floats exactly, bit for bit (repr round-trips a double).
    for f in ("bucket_cap_mb", "lr", "metrics_hold_s"):
        assert math.copysign(1, getattr(back, f)) == math.copysign(1, getattr(args, f))
        assert getattr(back, f).hex() == getattr(args, f).hex()


def test_defaults_are_the_workloads_defaults() -> None:
    assert BenchArgs.from_argv([]) == BenchArgs()
    assert TrainArgs.from_argv([]) == TrainArgs()
    b = BenchArgs()
    assert (b.ops, b.min_bytes, b.max_bytes, b.step_factor, b.warmup, b.iters) == (
        OP_NAMES, 1 << 20, 64 << 20, 2, 5, 20)
    assert (b.dtypes, b.check, b.in_place, b.reduce_op, b.dist_backend, b.timeout_s, b.run_id) == (
        ("float32",), True, "both", "sum", "auto", 300, None)
    t = TrainArgs()
    assert (t.steps, t.batch_size, t.width, t.depth, t.bucket_cap_mb, t.checkpoint_every,
            t.keep_checkpoints, t.seed, t.lr, t.progress_every) == (
        200, 64, 256, 3, 25.0, 0, 3, 0, 0.05, 20)
    assert (t.dist_backend, t.timeout_s, t.run_id, t.metrics_hold_s, t.metrics_hold_scrapes) == (
        "auto", 300, None, 0.0, 2)


def test_argv_is_flag_value_pairs_with_the_historical_flag_names() -> None:
    argv = BenchArgs(ops=("reduce", "sendrecv"), min_bytes=4096, run_id="r1").to_argv()
    flags = argv[0::2]
    assert flags == ("--ops", "--min-bytes", "--max-bytes", "--step-factor", "--warmup", "--iters",
                     "--dtype", "--check", "--in-place", "--reduce-op", "--dist-backend",
                     "--timeout-s", "--run-id")
    # A flag added later travels only when not at its default: older images still run.
    assert "--blocking" not in argv
    nonblocking = BenchArgs(blocking=False).to_argv()
    assert nonblocking[nonblocking.index("--blocking") + 1] == "0"
    assert argv[argv.index("--ops") + 1] == "reduce,sendrecv"
    assert argv[argv.index("--min-bytes") + 1] == "4096"
    assert argv[argv.index("--check") + 1] == "1"
    targv = TrainArgs(steps=7, lr=0.1, run_id="r2").to_argv()
    assert targv[0::2] == ("--steps", "--batch-size", "--width", "--depth", "--bucket-cap-mb",
                           "--checkpoint-every", "--keep-checkpoints", "--seed", "--lr",
                           "--progress-every", "--dist-backend", "--timeout-s", "--run-id",
                           "--metrics-hold-s", "--metrics-hold-scrapes")
    assert targv[targv.index("--steps") + 1] == "7" and targv[targv.index("--lr") + 1] == "0.1"
    # None is the absence of the flag; a value that looks like a flag is glued to its name.
    assert "--run-id" not in BenchArgs().to_argv()
    assert "--seed=-3" in TrainArgs(seed=-3).to_argv()


def test_the_hosts_argv_parses_back_to_the_settings() -> None:
    """What orchestrator/plan.py puts in a node's command is read back as the settings' values."""
    from orchestrator.plan import build_plan
    from orchestrator.settings import load_settings

    s = load_settings(overrides={"bench": {"ops": ["all_reduce", "broadcast"], "min_bytes": "4K",
                                           "check": False, "iters": 7},
                                 "train": {"steps": 9, "lr": 0.3},
                                 "cluster": {"dist_backend": "gloo", "timeout_s": 30}})
    cmd = build_plan(s, "run-1", "process").master.command
    start = cmd.index("train.bench") + 1
    b = BenchArgs.from_argv(cmd[start:])
    assert b == BenchArgs(ops=("all_reduce", "broadcast"), min_bytes=4096, check=False, iters=7,
                          dist_backend="gloo", timeout_s=30, run_id="run-1")
    cmd = build_plan(s, "run-2", "process", "train").master.command
    t = TrainArgs.from_argv(cmd[cmd.index("train.job") + 1:])
    assert (t.steps, t.lr, t.run_id, t.dist_backend) == (9, 0.3, "run-2", "gloo")


@pytest.mark.parametrize(
    "argv",
    [["--ops", "allreduce"], ["--ops", ","], ["--step-factor", "1"], ["--iters", "0"],
     ["--warmup", "-1"], ["--dtype", "float8"], ["--check", "2"], ["--check", "true"],
     ["--min-bytes", "8M", "--max-bytes", "1M"], ["--min-bytes", "0"], ["--in-place", "yes"],
     ["--reduce-op", "avg"], ["--dist-backend", "mpi"], ["--timeout-s", "0"], ["--iters", "1K"],
     ["--nope", "1"]],
)
def test_bench_from_argv_rejects_with_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        BenchArgs.from_argv(argv)
    assert e.value.code == 2
    assert "usage: python -m train.bench" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["--steps", "0"], ["--lr", "0"], ["--lr", "nan"], ["--lr", "inf"], ["--bucket-cap-mb", "-1"],
     ["--batch-size", "1.5"], ["--dist-backend", "x"], ["--metrics-hold-s", "nan"],
     ["--keep-checkpoints", "0"], ["--seed", "abc"]],
)
def test_train_from_argv_rejects_with_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        TrainArgs.from_argv(argv)
    assert e.value.code == 2


def test_constructor_validates_and_normalises() -> None:
    b = BenchArgs(ops=["reduce"], min_bytes="4K", max_bytes="1M")  # type: ignore[arg-type]
    assert (b.ops, b.min_bytes, b.max_bytes) == (("reduce",), 4096, 1 << 20)
    assert TrainArgs(lr=1).lr == 1.0 and isinstance(TrainArgs(lr=1).lr, float)
    with pytest.raises(ValueError, match=r"ops \(--ops\): unknown op 'nope'; choose from all_reduce"):
        BenchArgs(ops=("nope",))
    with pytest.raises(ValueError, match="name at least one"):
        BenchArgs(ops=())
    with pytest.raises(ValueError, match="names one twice"):
        BenchArgs(dtypes=("float32", "float32"))
    with pytest.raises(ValueError, match="swap them or raise max_bytes"):
        BenchArgs(min_bytes=8, max_bytes=4)
    with pytest.raises(ValueError, match="must be an integer"):
        BenchArgs(iters=True)
    with pytest.raises(ValueError, match="must be an integer"):
        TrainArgs(steps=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        TrainArgs(metrics_hold_s=math.inf)
    with pytest.raises(ValueError, match="cannot travel"):
        BenchArgs(run_id="--")  # argparse would drop it
    with pytest.raises(ValueError, match="must be true or false"):
        BenchArgs(check=1)  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.iters = 3  # type: ignore[misc]


def test_workload_registry() -> None:
    assert WORKLOAD_MODULES == {"bench": "train.bench", "train": "train.job",
                                "fabric": "train.fabric"}
    assert set(WORKLOAD_ARGS) == set(WORKLOAD_MODULES)
    argv = workload_argv(TrainArgs(steps=3))
    assert argv[:2] == ("-m", "train.job") and TrainArgs.from_argv(argv[2:]) == TrainArgs(steps=3)
    assert workload_argv(BenchArgs())[:2] == ("-m", "train.bench")


def test_settings_objects_of_the_result_documents() -> None:
    assert BenchArgs(ops=("reduce",)).settings() == {
        "ops": ["reduce"], "min_bytes": 1 << 20, "max_bytes": 64 << 20, "step_factor": 2,
        "warmup": 5, "iters": 20, "dtypes": ["float32"], "check": True, "in_place": "both",
        "reduce_op": "sum", "blocking": True}
    assert TrainArgs(seed=4).settings() == {
        "steps": 200, "batch_size": 64, "width": 256, "depth": 3, "bucket_cap_mb": 25.0,
        "checkpoint_every": 0, "seed": 4, "lr": 0.05}
