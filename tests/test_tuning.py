"""Tuning features end to end on the process backend: non-blocking bench (``-z 0``), the
baseline gate (``--baseline``), line rate, ``compare``. Real ranks on loopback, the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import netorch_env
from test_process_backend import netorch, run_dir
from train.contract import BenchArgs

pytestmark = pytest.mark.slow


def test_blocking_flag_round_trips_through_argv() -> None:
    for blocking in (True, False):
        args = BenchArgs(blocking=blocking, run_id="x")
        assert BenchArgs.from_argv(args.to_argv()) == args
        assert args.settings()["blocking"] is blocking
    assert "--blocking" in BenchArgs(blocking=False).to_argv()
    assert "--blocking" not in BenchArgs().to_argv()  # images from before -z still run


def test_nonblocking_every_op_is_exact_and_says_its_mode(tmp_path: Path) -> None:
    proc = netorch(
        "bench", "--nodes", "2", "--ops", "all", "-B", "64K", "-E", "1M", "-f", "16",
        "-w", "1", "-i", "4", "-z", "0", "--quiet", out=tmp_path,
    )
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, output
    report = json.loads((run_dir(tmp_path) / "report.json").read_text())
    assert report["settings"]["blocking"] is False
    assert report["wrong_total"] == 0
    assert {r["op"] for r in report["results"]} == set(BenchArgs().ops)
    assert all(r["wrong"] == 0 and r["busbw_gbps"] > 0 for r in report["results"])
    assert "non-blocking (-z 0)" in output


def test_blocking_value_is_validated(tmp_path: Path) -> None:
    proc = netorch("bench", "-z", "2", out=tmp_path)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, output
    assert "bench.blocking: '2' is not true or false; write true or false" in output
    assert len(output.strip().splitlines()) == 1, output  # one line, no traceback
    assert not any(tmp_path.iterdir()) if tmp_path.exists() else True


def test_line_rate_gives_each_size_its_share_of_tcp(tmp_path: Path) -> None:
    proc = netorch("bench", "--nodes", "2", "-B", "256K", "-E", "1M", "-f", "4", "-w", "1",
                   "-i", "3", "--line-rate", "--tcp-seconds", "1", "--tcp-streams", "2",
                   "--quiet", out=tmp_path)
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, output
    report = json.loads((run_dir(tmp_path) / "report.json").read_text())
    line = report["line_rate"]
    assert line["single_gbps"] > 0 and line["parallel_gbps"] > 0
    assert [t["streams"] for t in line["tcp_single"] + line["tcp_parallel"]] == [1, 2]
    for row in report["results"]:
        assert row["line_share"] == pytest.approx(row["busbw_gbps"] / line["single_gbps"])
    assert "share of 1 stream" in output and "line rate: TCP 1 stream" in output


def test_train_baseline_compares_samples_per_second(tmp_path: Path) -> None:
    from test_train_process import netorch_train

    def only_run(out: Path) -> Path:
        (found,) = (d for d in out.iterdir() if d.is_dir() and not d.name.startswith("_"))
        return found

    args = ("--nodes", "2", "--steps", "10", "--checkpoint-every", "0", "--quiet")
    first = netorch_train(tmp_path / "a", *args)
    output, _ = first.communicate(timeout=240)
    assert first.returncode == 0, output
    saved = only_run(tmp_path / "a")
    # An allowance no run on a shared host misses: this checks the plumbing, not the noise.
    again = netorch_train(tmp_path / "b", *args, "--baseline", str(saved), "--tolerance", "95")
    output, _ = again.communicate(timeout=240)
    assert again.returncode == 0, output
    gate = json.loads((only_run(tmp_path / "b") / "baseline.json").read_text())
    (delta,) = gate["deltas"]
    report = json.loads((saved / "report.json").read_text())
    assert delta["label"] == "samples/s" and delta["baseline"] == [report["samples_per_s"]]
    assert delta["allowed_drop"] == pytest.approx(0.95) and not delta["regressed"]
    assert "against baseline" in output


def test_nonblocking_counts_its_buffer_sets_against_memory() -> None:
    from orchestrator.grammar import BENCH_BUFFERS_PER_RANK, bench_memory_problem
    from train.contract import NONBLOCKING_DEPTH

    total = 64 << 30
    size = total // (2 * BENCH_BUFFERS_PER_RANK)  # fits two blocking ranks exactly
    assert bench_memory_problem(size, 2, total) is None
    problem = bench_memory_problem(size, 2, total, blocking=False)
    assert problem is not None
    assert f"x {BENCH_BUFFERS_PER_RANK + 2 * (NONBLOCKING_DEPTH - 1)} buffers" in problem


@pytest.mark.parametrize(("args", "words"), [
    (("--preset", "sockets", "--vary", "env.GLOO_SOCKET_IFNAME=eth0"),
     "env.GLOO_SOCKET_IFNAME is varied twice"),  # the preset for gloo (the CPU default)
    (("--mtu", "1500", "--vary", "network.mtu=9000"), "network.mtu is varied twice"),
    (("--preset", "fast"), "--preset: 'fast' is not a preset"),
    (("--vary", "network.subnet=10.9.0.0/24"), "the sweep fixes network.subnet"),
    (("--vary", "network.mtu=1500,99999"), "network.mtu"),
])
def test_sweep_refuses_bad_axes_before_starting_anything(tmp_path: Path, args: tuple[str, ...],
                                                         words: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "sweep", *args, "-o",
                           str(tmp_path / "runs")], env=netorch_env(), capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert words in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_baseline_of_another_kind_is_refused_before_the_run(tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "report.json").write_text(json.dumps({"kind": "bench", "run_id": "b-1", "results": [
        {"op": "all_reduce", "dtype": "float32", "in_place": True, "size_bytes": 1 << 20,
         "busbw_gbps": 1.0}]}))
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "train", "--backend",
                           "process", "--steps", "5", "-o", str(out), "--baseline", str(saved)],
                          env=netorch_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "holds bench reports, this run is train; compare like with like" in proc.stderr
    assert not out.exists()  # refused before anything ran
