"""Unit tier for the benchmark: no process group, no subprocess except the import-isolation check."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from train import bench, collectives
from train.bench import parse_config, variants
from train.collectives import (
    DTYPES,
    EXACT_INT_LIMIT,
    IMPLS,
    BufferShape,
    buffer_shape,
    check_is_exact,
    expected_bound,
    expected_output,
    fill_kind,
    fill_values,
    op_impl,
    sentinel_value,
)
from train.contract import OP_NAMES, OPS, REDUCE_OP_NAMES, op_spec
from train.env import default_route_ifname, interface_ipv4, interface_mtu, rank_info, resolve_ifname
from train.results import RESULT_MARKER, decode_result_lines, encode_result

REPO = Path(__file__).resolve().parents[1]
REDUCE_OPS = REDUCE_OP_NAMES


# --------------------------------------------------------------------------- busbw, sizes


@pytest.mark.parametrize(
    ("op", "n", "factor"),
    [
        ("all_reduce", 2, 1.0),
        ("all_reduce", 4, 1.5),
        ("all_reduce", 8, 1.75),
        ("all_gather", 4, 0.75),
        ("reduce_scatter", 8, 0.875),
        ("all_to_all", 2, 0.5),
        ("broadcast", 8, 1.0),
        ("broadcast", 1, 1.0),
        ("all_reduce", 1, 0.0),
        ("all_gather", 1, 0.0),
        ("reduce_scatter", 1, 0.0),
        ("all_to_all", 1, 0.0),
        ("reduce", 1, 1.0),
        ("reduce", 8, 1.0),
        ("sendrecv", 2, 1.0),
        ("sendrecv", 7, 1.0),
    ],
)
def test_bus_factor_matches_nccl_tests(op: str, n: int, factor: float) -> None:
    assert op_spec(op).bus_factor(n) == factor


def test_bus_factor_rejects_unknown_op_and_empty_world() -> None:
    with pytest.raises(ValueError):
        op_spec("allreduce")
    with pytest.raises(ValueError):
        op_spec("all_reduce").bus_factor(0)


def test_every_registered_op_has_one_implementation_and_back() -> None:
    assert list(IMPLS) == list(OP_NAMES)
    for name, impl in IMPLS.items():
        assert impl.name == name and impl.spec is OPS[name]
    with pytest.raises(ValueError, match="sendrecv"):
        op_impl("send_recv")


def test_algbw_is_bytes_per_second_over_1e9() -> None:
    assert bench.algbw_gbps(2_000_000_000, 2.0) == 1.0


@pytest.mark.parametrize(
    ("op", "size", "elem", "n", "count", "chunk"),
    [
        ("all_reduce", 4096, 4, 3, 1024, 1024),
        ("broadcast", 4098, 4, 3, 1024, 1024),
        ("all_gather", 4096, 4, 3, 1023, 341),
        ("reduce_scatter", 4096, 2, 3, 2046, 682),
        ("all_to_all", 4096, 4, 4, 1024, 256),
        ("all_gather", 4, 4, 2, 0, 0),
        ("reduce", 4098, 4, 3, 1024, 1024),
        ("sendrecv", 4098, 2, 3, 2049, 2049),
    ],
)
def test_buffer_shape_rounds_like_nccl_tests(
    op: str, size: int, elem: int, n: int, count: int, chunk: int
) -> None:
    assert buffer_shape(op, size, elem, n) == BufferShape(count=count, chunk=chunk)


def test_variants_per_in_place_mode() -> None:
    assert variants("all_gather", "both") == (False, True)
    assert variants("reduce_scatter", "on") == (True,)
    assert variants("all_reduce", "both") == (True,)
    assert variants("all_reduce", "off") == ()
    assert variants("broadcast", "off") == ()
    assert variants("all_to_all", "both") == (False,)
    assert variants("all_to_all", "on") == ()
    assert variants("reduce", "both") == (True,)
    assert variants("reduce", "off") == ()
    assert variants("sendrecv", "both") == (False,)
    assert variants("sendrecv", "on") == ()


# --------------------------------------------------------------------------- result channel


def _doc() -> dict[str, object]:
    return {
        "schema": 1,
        "kind": "bench",
        "run_id": "r1",
        "results": [{"algbw_gbps": 0.1 + 0.2, "busbw_gbps": (0.1 + 0.2) * 1.5, "wrong": None}],
        "name": "ünïcode\nnewline",
    }


def test_result_round_trip_is_exact_and_single_line() -> None:
    line = encode_result(_doc())
    assert line.startswith(RESULT_MARKER + " ")
    assert "\n" not in line
    assert decode_result_lines([line]) == _doc()


def test_decode_tolerates_log_prefixes_noise_and_returns_last() -> None:
    first = dict(_doc(), run_id="first")
    second = dict(_doc(), run_id="second")
    lines = [
        "node0 | starting",
        "node0 | " + encode_result(first),
        "2026-01-01T00:00:00Z node1 | " + encode_result(second) + "\r\n",
        RESULT_MARKER + ' {"schema": 1, "cut',  # a truncated later line must not hide a good one
        RESULT_MARKER + " [1, 2]",  # not an object
    ]
    doc = decode_result_lines(lines)
    assert doc is not None and doc["run_id"] == "second"


def test_decode_without_marker_is_none() -> None:
    assert decode_result_lines(["hello", json.dumps(_doc())]) is None


def test_encode_refuses_nan() -> None:
    with pytest.raises(ValueError):
        encode_result({"x": math.nan})


def test_results_module_does_not_import_torch() -> None:
    code = "import sys, train.results; sys.exit(1 if 'torch' in sys.modules else 0)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60)
    assert proc.returncode == 0


# --------------------------------------------------------------------------- correctness check


def _inputs(op: str, reduce_op: str, rank: int, n: int, shape: BufferShape) -> torch.Tensor:
    """This rank's int64 input pattern, written from the nccl-tests buffer layout."""
    length = shape.chunk if op == "all_gather" else shape.count
    index = torch.arange(length, dtype=torch.int64)
    return fill_values(fill_kind(op, reduce_op), rank, n, index)


def _reduce_in_dtype(tensors: list[torch.Tensor], reduce_op: str) -> torch.Tensor:
    acc = tensors[0].clone()
    for t in tensors[1:]:
        if reduce_op == "sum":
            acc = acc + t
        elif reduce_op == "prod":
            acc = acc * t
        elif reduce_op == "max":
            acc = torch.maximum(acc, t)
        else:
            acc = torch.minimum(acc, t)
    return acc


def _simulate(op: str, reduce_op: str, rank: int, n: int, shape: BufferShape, dtype: torch.dtype,
              reverse: bool = False) -> torch.Tensor:
    """What a backend computes, reducing IN the dtype (as gloo/NCCL do), in either rank order."""
    ins = [_inputs(op, reduce_op, r, n, shape).to(dtype) for r in range(n)]
    if reverse:
        ins = ins[::-1]
    c = shape.chunk
    if op in ("all_reduce", "reduce"):  # reduce: what the root holds
        return _reduce_in_dtype(ins, reduce_op)
    if op == "reduce_scatter":
        return _reduce_in_dtype([t[rank * c:(rank + 1) * c] for t in ins], reduce_op)
    order = ins[::-1] if reverse else ins
    if op == "all_gather":
        return torch.cat(order)
    if op == "all_to_all":
        return torch.cat([t[rank * c:(rank + 1) * c] for t in order])
    if op == "sendrecv":
        return order[(rank - 1) % n]  # received from the previous rank of the ring
    assert op == "broadcast"
    return order[0]  # broadcast from root 0


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("op", OP_NAMES)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 6, 8, 64])
def test_expected_equals_in_dtype_simulation_exactly(dtype_name: str, op: str, n: int) -> None:
    dtype = DTYPES[dtype_name]
    shape = buffer_shape(op, 12 * n * dtype.itemsize, dtype.itemsize, n)
    reduce_ops = REDUCE_OPS if op_spec(op).reducing else ("sum",)
    for reduce_op in reduce_ops:
        assert check_is_exact(op, dtype_name, reduce_op, n)
        for rank in sorted({0, n - 1, n // 2}):
            expected = expected_output(op, reduce_op, rank, n, shape).to(dtype)
            for reverse in (False, True):
                got = _simulate(op, reduce_op, rank, n, shape, dtype, reverse)
                assert torch.equal(got, expected), (op, dtype_name, reduce_op, n, rank)
            assert not (expected == sentinel_value(dtype_name)).any()


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_reduce_and_sendrecv_expected_exact_for_every_world_size(dtype_name: str) -> None:
    """reduce (every reduction; the root's output) and sendrecv (every rank), n = 1..64."""
    dtype = DTYPES[dtype_name]
    for n in range(1, 65):
        for op, reduce_ops, ranks in (
            ("reduce", REDUCE_OPS, [OPS["reduce"].root]),
            ("sendrecv", ("sum",), sorted({0, 1 % n, n // 2, n - 1})),
        ):
            shape = buffer_shape(op, 24 * dtype.itemsize, dtype.itemsize, n)
            for reduce_op in reduce_ops:
                if not check_is_exact(op, dtype_name, reduce_op, n):
                    continue  # the run reports wrong = null here, rather than miscount
                for rank in ranks:
                    assert rank is not None
                    expected = expected_output(op, reduce_op, rank, n, shape).to(dtype)
                    assert not (expected == sentinel_value(dtype_name)).any()
                    for reverse in (False, True):
                        got = _simulate(op, reduce_op, rank, n, shape, dtype, reverse)
                        assert torch.equal(got, expected), (op, dtype_name, reduce_op, n, rank)
    # Every dtype is exact for both ops up to 64 ranks (int8 sums reach 64 <= 127).
    assert all(check_is_exact(op, dtype_name, r, 64) for op in ("reduce", "sendrecv")
               for r in REDUCE_OPS)


@pytest.mark.parametrize("n", [2, 3, 4, 7])
def test_reduce_and_sendrecv_checks_catch_faults(n: int) -> None:
    shape = buffer_shape("sendrecv", 500 * 4, 4, n)
    want = [expected_output("sendrecv", "sum", r, n, shape) for r in range(n)]
    own = [_inputs("sendrecv", "sum", r, n, shape).to(torch.float64) for r in range(n)]
    for r in range(n):
        assert not torch.equal(want[r], own[r])  # nothing received: the rank keeps its own data
        if n > 2:  # the ring run backwards: received from rank+1 instead of rank-1
            assert not torch.equal(want[r], own[(r + 1) % n])
    for reduce_op in REDUCE_OPS:
        root_want = expected_output("reduce", reduce_op, 0, n, shape)
        ins = [_inputs("reduce", reduce_op, r, n, shape) for r in range(n)]
        assert not torch.equal(root_want, ins[0].to(torch.float64)), reduce_op  # no reduction
        left_out = _reduce_in_dtype(ins[:-1], reduce_op).to(torch.float64)
        assert not torch.equal(root_want, left_out), reduce_op  # the last rank left out
    # Only the root's output is specified after a reduce; every rank fills its input.
    impl = op_impl("reduce")
    assert [impl.checks_output(r) for r in range(n)] == [r == 0 for r in range(n)]
    assert all(impl.fills_input(r) for r in range(n))
    assert all(op_impl("sendrecv").checks_output(r) for r in range(n))


@pytest.mark.parametrize("n", [2, 3, 4, 6, 9])
def test_check_catches_typical_faults(n: int) -> None:
    shape = buffer_shape("all_to_all", 60 * n * 4, 4, n)
    # A reduction that did nothing (each rank keeps its own data).
    for reduce_op in REDUCE_OPS:
        want = expected_output("all_reduce", reduce_op, 0, n, shape)
        own = _inputs("all_reduce", reduce_op, 0, n, shape).to(torch.float64)
        assert not torch.equal(want, own), reduce_op
    # reduce_scatter delivering another rank's chunk, or a reduced buffer shifted by one chunk.
    rs0 = expected_output("reduce_scatter", "sum", 0, n, shape)
    rs1 = expected_output("reduce_scatter", "sum", 1, n, shape)
    assert not torch.equal(rs0, rs1)
    # all_gather / all_to_all with source chunks in the wrong order.
    for op in ("all_gather", "all_to_all"):
        want = expected_output(op, "sum", 0, n, shape)
        rotated = torch.roll(want, shape.chunk)
        assert not torch.equal(want, rotated), op
    # A sum that counted rank 0 twice and left the last rank out.
    ins = [_inputs("all_reduce", "sum", r, n, shape) for r in range(n)]
    doubled = torch.stack([ins[0]] + ins[:-1]).sum(0).to(torch.float64)
    assert not torch.equal(doubled, expected_output("all_reduce", "sum", 0, n, shape))
    # Data shifted by any offset (a period of a naive pattern: 3, 97, a power of two) shows.
    big = buffer_shape("all_reduce", 4096 * 4, 4, n)
    for reduce_op in REDUCE_OPS:
        want = expected_output("all_reduce", reduce_op, 0, n, big)
        for shift in (1, 3, 4, 12, 97, 1024):
            assert not torch.equal(want, torch.roll(want, shift)), (reduce_op, shift)
    # broadcast: a non-root keeping its own buffer (the sentinel) never passes.
    bc = expected_output("broadcast", "sum", 1, n, shape)
    assert not (bc == sentinel_value("float32")).any()


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 64), op=st.sampled_from(OP_NAMES), reduce_op=st.sampled_from(REDUCE_OPS))
def test_expected_bound_is_the_true_maximum(n: int, op: str, reduce_op: str) -> None:
    shape = buffer_shape(op, 4 * n * 200, 4, n)
    peak = max(
        float(expected_output(op, reduce_op, rank, n, shape).max()) for rank in sorted({0, n - 1})
    )
    assert peak <= expected_bound(op, reduce_op, n)
    # Every dtype, including bfloat16 (exact to 256) and int8 (to 127), checks exactly to n = 64.
    assert all(check_is_exact(op, d, reduce_op, n) for d in DTYPES)


def test_check_gives_up_rather_than_miscounting_when_inexact() -> None:
    # int8 sums over 200 ranks can exceed 127: the check must say "not checkable", not miscount.
    assert expected_bound("all_reduce", "sum", 200) > EXACT_INT_LIMIT["int8"]
    assert not check_is_exact("all_reduce", "int8", "sum", 200)
    assert not check_is_exact("reduce_scatter", "bfloat16", "sum", 300)
    assert check_is_exact("all_reduce", "float32", "sum", 200)
    assert check_is_exact("all_gather", "int8", "sum", 200)  # gathers move values, never add


# --------------------------------------------------------------------------- CLI and table


def test_parse_config_reads_every_flag() -> None:
    cfg = parse_config(
        ["--ops", "all_reduce,broadcast", "--min-bytes", "4K", "--max-bytes", "1048576",
         "--step-factor", "4", "--warmup", "0", "--iters", "3", "--dtype", "float32,bfloat16",
         "--check", "0", "--in-place", "off", "--dist-backend", "gloo", "--reduce-op", "max",
         "--timeout-s", "30", "--run-id", "abc"]
    )
    assert cfg.ops == ("all_reduce", "broadcast")
    assert (cfg.min_bytes, cfg.max_bytes, cfg.step_factor) == (4096, 1 << 20, 4)
    assert (cfg.warmup, cfg.iters, cfg.check, cfg.in_place) == (0, 3, False, "off")
    assert cfg.dtypes == ("float32", "bfloat16")
    assert (cfg.dist_backend, cfg.reduce_op, cfg.timeout_s, cfg.run_id) == ("gloo", "max", 30, "abc")
    assert parse_config(["--ops", "all"]).ops == OP_NAMES


@pytest.mark.parametrize(
    "argv",
    [["--ops", "allreduce"], ["--step-factor", "1"], ["--iters", "0"], ["--dtype", "float8"],
     ["--check", "2"], ["--min-bytes", "8M", "--max-bytes", "1M"], ["--in-place", "yes"]],
)
def test_parse_config_rejects(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse_config(argv)
    assert e.value.code == 2


def _table_doc(wrong: int | None) -> dict[str, object]:
    row = {"op": "all_reduce", "dtype": "float32", "size_bytes": 4096, "count": 1024,
           "in_place": True, "redop": "sum", "time_us": {"min": 9.0, "avg": 10.0, "max": 11.0},
           "algbw_gbps": 0.4096, "busbw_gbps": 0.4096, "wrong": wrong}
    rank = {"rank": 0, "local_rank": 0, "node_rank": 0, "world_size": 2, "node_name": "node0",
            "hostname": "h0", "pid": 42, "ifname": "eth0", "ipv4": "10.0.0.2", "mtu": 1400}
    return {"run_id": "r", "dist_backend": "gloo", "device": "cpu", "torch_version": "x",
            "world_size": 2, "ranks": [rank],
            "settings": {"ops": ["all_reduce"], "min_bytes": 4096, "max_bytes": 4096,
                         "step_factor": 2, "warmup": 1, "iters": 1, "dtypes": ["float32"],
                         "check": wrong is not None, "in_place": "both", "reduce_op": "sum"},
            "results": [row], "skipped": [{"op": "broadcast", "dtype": "float32", "reason": "why"}],
            "notes": [], "wrong_total": wrong}


def test_format_table_reports_ranks_rows_and_verdict() -> None:
    text = bench.format_table(_table_doc(0))
    assert "#  Rank  0 Group  0 Pid      42 on      node0 (h0)" in text
    assert "eth0 10.0.0.2 mtu 1400" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("4096"))
    assert row.split()[:5] == ["4096", "1024", "float", "sum", "-1"]
    assert "N/A" in row  # no out-of-place all_reduce
    assert "# Skipped broadcast float32: why" in text
    assert "# Out of bounds values : 0 OK" in text
    assert "# Avg bus bandwidth    : 0.4096" in text
    assert "# Out of bounds values : 3 FAILED" in bench.format_table(_table_doc(3))
    assert "N/A (check disabled)" in bench.format_table(_table_doc(None))


# --------------------------------------------------------------------------- rank identity


def test_resolve_ifname_order(tmp_path: Path) -> None:
    route = tmp_path / "route"
    route.write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
        "eth1\t00000000\t010200C0\t0003\t0\t0\t200\t00000000\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\n"
        "eth2\t00000000\t010200C0\t0002\t0\t0\t0\t00000000\n"  # not up
        "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
    )
    sysnet = tmp_path / "net"
    for name in ("eth0", "eth1", "ens5", "lo"):
        (sysnet / name).mkdir(parents=True)

    def resolve(env: dict[str, str]) -> str:
        return resolve_ifname(env, route_table=route, sys_class_net=sysnet)

    assert default_route_ifname(route) == "eth0"
    assert resolve({}) == "eth0"
    assert resolve({"NCCL_SOCKET_IFNAME": "ens"}) == "ens5"  # NCCL prefix match
    assert resolve({"NCCL_SOCKET_IFNAME": "=eth1"}) == "eth1"
    assert resolve({"NCCL_SOCKET_IFNAME": "^docker0,lo"}) == "eth0"  # exclusion names no interface
    assert resolve({"GLOO_SOCKET_IFNAME": "eth1,eth0", "NCCL_SOCKET_IFNAME": "ens"}) == "eth1"
    assert resolve({"NETORCH_IFNAME": "lo", "GLOO_SOCKET_IFNAME": "eth1"}) == "lo"
    assert resolve_ifname({}, route_table=tmp_path / "missing", sys_class_net=sysnet) == "lo"


def test_interface_facts_come_from_the_kernel(tmp_path: Path) -> None:
    assert interface_ipv4("lo") == "127.0.0.1"
    assert interface_ipv4("nt-no-such-if") is None
    assert interface_ipv4("../etc") is None
    (tmp_path / "eth0").mkdir()
    (tmp_path / "eth0" / "mtu").write_text("1400\n")
    assert interface_mtu("eth0", tmp_path) == 1400
    assert interface_mtu("eth1", tmp_path) is None
    assert interface_mtu("lo") == int(Path("/sys/class/net/lo/mtu").read_text())


def test_rank_info_from_torchrun_env() -> None:
    info = rank_info({"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "GROUP_RANK": "2",
                      "NETORCH_IFNAME": "lo", "NETORCH_NODE_NAME": "node2"})
    assert (info.rank, info.local_rank, info.world_size, info.node_rank) == (5, 1, 8, 2)
    assert (info.node_name, info.ifname, info.ipv4) == ("node2", "lo", "127.0.0.1")
    d = info.to_dict()
    assert set(d) >= {"rank", "local_rank", "node_rank", "node_name", "hostname", "ifname", "ipv4",
                      "mtu"}
    json.dumps(d)
    defaults = rank_info({"NETORCH_IFNAME": "lo"})
    assert (defaults.rank, defaults.world_size, defaults.node_name) == (0, 1, defaults.hostname)


# --------------------------------------------------------------------------- buffers and blocks


@pytest.mark.parametrize("op", OP_NAMES)
def test_expected_output_in_blocks_equals_whole(op: str) -> None:
    for n in (1, 3, 4):
        shape = buffer_shape(op, 4 * n * 1000, 4, n)
        for rank in range(n):
            whole = expected_output(op, "sum", rank, n, shape)
            parts = [expected_output(op, "sum", rank, n, shape, start=s, stop=s + 333)
                     for s in range(0, whole.numel(), 333)]
            assert torch.equal(whole, torch.cat(parts)), (op, n, rank)


@pytest.mark.parametrize("op", OP_NAMES)
def test_case_buffers_follow_nccl_layout(op: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collectives, "CHECK_BLOCK_ELEMS", 7)  # exercise the block-wise fill
    n, rank = 4, 1
    comm = bench.Comm(rank=rank, world_size=n, device=torch.device("cpu"))
    shape = buffer_shape(op, 4 * 4 * 25, 4, n)
    for in_place in variants(op, "both"):
        case = bench.Case(op, "bfloat16", shape, in_place, "sum", comm)
        kind = fill_kind(op, "sum")
        want_in = fill_values(kind, rank, n, torch.arange(case.input.numel())).to(torch.bfloat16)
        if op == "broadcast":  # rank 1 is not the root: its buffer only receives
            assert not op_impl(op).fills_input(rank)
            want_in = torch.full_like(want_in, sentinel_value("bfloat16"))
        assert torch.equal(case.input, want_in)
        assert case.output.numel() == (shape.chunk if op == "reduce_scatter" else shape.count)
        if in_place:
            assert case.input.data_ptr() in range(
                case.output.data_ptr(), case.output.data_ptr() + case.output.numel() * 2
            ) or case.output.data_ptr() in range(
                case.input.data_ptr(), case.input.data_ptr() + case.input.numel() * 2
            )
        else:
            assert (case.output == sentinel_value("bfloat16")).all()
    for missing in {False, True} - set(op_spec(op).forms):
        with pytest.raises(ValueError):
            bench.Case(op, "float32", shape, missing, "sum", comm)


def test_wait_for_master_joins_when_the_port_listens_and_gives_up_after_timeout() -> None:
    """Ranks other than 0 poll the master's port (instead of init's backoff); rank 0 never waits."""
    import socket
    import time

    from train.env import wait_for_master

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = str(srv.getsockname()[1])
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": "1"}
        assert wait_for_master(env, 5.0) is True
        assert wait_for_master({**env, "RANK": "0"}, 5.0) is False
    t0 = time.monotonic()
    assert wait_for_master({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": "2"}, 0.2) is False
    assert 0.2 <= time.monotonic() - t0 < 5.0
    assert wait_for_master({"RANK": "1"}, 5.0) is False  # no master named: nothing to wait for


@pytest.mark.parametrize("n", [1, 3, 4])
def test_cached_ranges_equal_the_direct_patterns(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-process prefix cache returns what fill_values / reduced_f64 compute, for ranges
    asked in any order, and past its size limit (computed directly there)."""
    monkeypatch.setattr(collectives, "_prefixes", {})
    monkeypatch.setattr(collectives, "PREFIX_CACHE_ELEMS", 5000)
    monkeypatch.setattr(collectives, "CHECK_BLOCK_ELEMS", 700)  # extended block by block
    ranges = [(100, 300), (0, 50), (0, 4000), (2500, 2600), (3999, 5000), (4000, 7000), (10, 20)]
    for reduce_op in REDUCE_OP_NAMES:
        kind = fill_kind("all_reduce", reduce_op)
        for start, stop in ranges:
            index = torch.arange(start, stop)
            for rank in range(n):
                got = collectives.input_range(kind, rank, n, start, stop)
                assert torch.equal(got.to(torch.int64), fill_values(kind, rank, n, index))
            want = collectives.reduced_f64(kind, reduce_op, n, index)
            assert torch.equal(collectives.reduced_range(kind, reduce_op, n, start, stop)
                               .to(torch.float64), want), (reduce_op, start, stop)
    assert max(t.numel() for t in collectives._prefixes.values()) == 5000
