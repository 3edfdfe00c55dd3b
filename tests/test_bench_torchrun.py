"""Integration tier: real torchrun jobs of ``python -m train.bench`` on gloo/CPU over loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from train.bench import variants
from train.collectives import buffer_shape
from train.contract import OP_NAMES, OPS, size_sweep
from train.results import RESULT_MARKER, decode_result_lines

REPO = Path(__file__).resolve().parents[1]
ELEM_SIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int32": 4, "int8": 1,
             "uint8": 1, "int64": 8}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(nproc: int, args: list[str], timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    env = dict(os.environ, NETORCH_IFNAME="lo", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1",
               PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "train.bench", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count(RESULT_MARKER) == 1, "exactly one result line, from rank 0"
    doc = decode_result_lines(proc.stdout.splitlines())
    assert doc is not None
    return proc, doc


def _assert_sweep(doc: dict[str, Any], n: int, ops: tuple[str, ...], dtypes: list[str],
                  sizes: list[int], in_place: str = "both") -> None:
    assert doc["schema"] == 1 and doc["kind"] == "bench"
    assert doc["world_size"] == n and doc["dist_backend"] == "gloo" and doc["device"] == "cpu"
    assert [r["rank"] for r in doc["ranks"]] == list(range(n))
    assert all(r["ifname"] == "lo" and r["ipv4"] == "127.0.0.1" for r in doc["ranks"])
    rows = doc["results"]
    skipped = {(s["op"], s["dtype"]) for s in doc["skipped"]}
    want = set()
    for op in ops:
        for dtype in dtypes:
            if (op, dtype) in skipped:
                continue
            for size in sizes:
                shape = buffer_shape(op, size, ELEM_SIZE[dtype], n)
                for flag in variants(op, in_place):
                    want.add((op, dtype, shape.count * ELEM_SIZE[dtype], shape.count, flag))
    got = [(r["op"], r["dtype"], r["size_bytes"], r["count"], r["in_place"]) for r in rows]
    assert sorted(got) == sorted(want)  # every combination, each exactly once
    for r in rows:
        assert r["wrong"] == 0, r
        t = r["time_us"]
        assert 0 < t["min"] <= t["avg"] <= t["max"], r
        assert r["busbw_gbps"] == r["algbw_gbps"] * OPS[r["op"]].bus_factor(n), r
        assert r["algbw_gbps"] == pytest.approx(r["size_bytes"] / (t["avg"] * 1e-6) / 1e9, rel=1e-9)
        assert r["redop"] == ("sum" if OPS[r["op"]].reducing else None)
    assert doc["wrong_total"] == 0


@pytest.mark.slow
def test_two_ranks_all_ops_float32_checked() -> None:
    proc, doc = _run(2, ["--ops", ",".join(OP_NAMES), "--min-bytes", "4096", "--max-bytes", "262144",
                         "--step-factor", "4", "--warmup", "1", "--iters", "3", "--dtype",
                         "float32", "--check", "1", "--in-place", "both", "--dist-backend", "gloo",
                         "--run-id", "it-2"])
    assert doc["run_id"] == "it-2" and doc["skipped"] == []  # gloo runs every op on float32
    _assert_sweep(doc, 2, OP_NAMES, ["float32"], size_sweep(4096, 262144, 4))
    assert doc["settings"]["ops"] == list(OP_NAMES) and doc["settings"]["check"] is True
    assert "# Out of bounds values : 0 OK" in proc.stdout
    assert "#  Rank  1 Group  0" in proc.stdout
    assert proc.stdout.index("# Avg bus bandwidth") < proc.stdout.index(RESULT_MARKER)


@pytest.mark.slow
def test_four_ranks_all_ops_checked() -> None:
    _, doc = _run(4, ["--ops", "all", "--min-bytes", "4K", "--max-bytes", "64K", "--step-factor",
                      "4", "--warmup", "1", "--iters", "2", "--dtype", "float32", "--check", "1"])
    _assert_sweep(doc, 4, OP_NAMES, ["float32"], size_sweep(4096, 65536, 4))


@pytest.mark.slow
def test_three_ranks_round_sizes_down_to_world_multiples() -> None:
    _, doc = _run(3, ["--ops", "all", "--min-bytes", "4K", "--max-bytes", "16K", "--step-factor",
                      "4", "--warmup", "0", "--iters", "2", "--dtype", "float32", "--check", "1"])
    _assert_sweep(doc, 3, OP_NAMES, ["float32"], [4096, 16384])
    gather = [r for r in doc["results"] if r["op"] == "all_gather" and r["size_bytes"] < 4096]
    assert gather and all(r["count"] == 1023 for r in gather)


@pytest.mark.slow
def test_every_dtype_every_op_checked_or_skipped_with_reason() -> None:
    dtypes = ["float16", "bfloat16", "float64", "int32", "int8", "uint8", "int64"]
    _, doc = _run(2, ["--ops", "all", "--min-bytes", "64K", "--max-bytes", "64K", "--warmup", "0",
                      "--iters", "1", "--dtype", ",".join(dtypes), "--check", "1"])
    assert all(s["reason"] for s in doc["skipped"])
    _assert_sweep(doc, 2, OP_NAMES, dtypes, [65536])


@pytest.mark.slow
@pytest.mark.parametrize("reduce_op", ["max", "min", "prod"])
def test_other_reductions_checked(reduce_op: str) -> None:
    _, doc = _run(2, ["--ops", "all_reduce,reduce_scatter", "--min-bytes", "16K", "--max-bytes",
                      "16K", "--warmup", "0", "--iters", "1", "--dtype", "float32,int32",
                      "--reduce-op", reduce_op])
    assert doc["results"] and all(r["wrong"] == 0 and r["redop"] == reduce_op for r in doc["results"])


@pytest.mark.slow
def test_out_of_place_only_lists_ops_without_that_form_as_skipped() -> None:
    _, doc = _run(2, ["--ops", "all", "--min-bytes", "8K", "--max-bytes", "8K", "--warmup", "0",
                      "--iters", "1", "--in-place", "off", "--check", "0"])
    in_place_only = {"all_reduce", "broadcast", "reduce"}
    assert {op for op, spec in OPS.items() if False not in spec.forms} == in_place_only
    assert {s["op"] for s in doc["skipped"]} == in_place_only
    assert all(r["in_place"] is False and r["wrong"] is None for r in doc["results"])
    assert {r["op"] for r in doc["results"]} == set(OP_NAMES) - in_place_only
    assert doc["wrong_total"] is None


@pytest.mark.slow
def test_three_ranks_reduce_and_sendrecv_checked() -> None:
    """The ops added through the registry: exact on 3 ranks, busbw == algbw, nccl-tests columns."""
    ops = ("reduce", "sendrecv")
    dtypes = ["float32", "int8", "bfloat16"]
    proc, doc = _run(3, ["--ops", ",".join(ops), "--min-bytes", "4K", "--max-bytes", "1M",
                         "--step-factor", "16", "--warmup", "1", "--iters", "2", "--dtype",
                         ",".join(dtypes), "--dist-backend", "gloo"])
    assert doc["skipped"] == []
    _assert_sweep(doc, 3, ops, dtypes, size_sweep(4096, 1 << 20, 16))
    rows = doc["results"]
    assert {r["op"] for r in rows} == set(ops)
    assert all(r["busbw_gbps"] == r["algbw_gbps"] and r["wrong"] == 0 for r in rows)
    assert all(r["in_place"] is (r["op"] == "reduce") for r in rows)  # reduce in-place only
    table = [t for t in (line.split() for line in proc.stdout.splitlines()) if t[:1] == ["4096"]]
    assert len(table) == len(ops) * len(dtypes)
    assert {(t[3], t[4]) for t in table} == {("sum", "0"), ("none", "-1")}  # redop, root columns
    assert "# Note: sendrecv:" in proc.stdout and "# Note: reduce:" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("reduce_op", ["max", "prod"])
def test_three_ranks_reduce_other_reductions(reduce_op: str) -> None:
    _, doc = _run(3, ["--ops", "reduce", "--min-bytes", "16K", "--max-bytes", "16K", "--warmup",
                      "0", "--iters", "1", "--dtype", "float32,int32", "--reduce-op", reduce_op])
    rows = doc["results"]
    assert rows and all(r["wrong"] == 0 and r["redop"] == reduce_op for r in rows)


@pytest.mark.slow
def test_one_rank_skips_sendrecv_with_a_reason() -> None:
    _, doc = _run(1, ["--ops", "reduce,sendrecv", "--min-bytes", "4K", "--max-bytes", "4K",
                      "--warmup", "0", "--iters", "1"])
    assert doc["skipped"] == [{"op": "sendrecv", "dtype": "float32",
                               "reason": "sendrecv needs at least 2 ranks, this run has 1; "
                               "run with more ranks"}]
    assert [(r["op"], r["wrong"], r["busbw_gbps"] == r["algbw_gbps"]) for r in doc["results"]] == [
        ("reduce", 0, True)]


def test_bad_flag_exits_nonzero_without_a_result() -> None:
    proc = subprocess.run([sys.executable, "-m", "train.bench", "--step-factor", "1"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--step-factor" in proc.stderr and RESULT_MARKER not in proc.stdout
