"""Process backend end to end: real torchrun processes on loopback, the real CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from orchestrator.backends.process import ProcessBackend, port_holder, port_taken, run_processes
from orchestrator.errors import PreflightError
from orchestrator.plan import build_plan
from orchestrator.settings import load_settings

pytestmark = pytest.mark.slow
NETORCH = [sys.executable, "-m", "orchestrator.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("NETORCH_")}


def netorch(*args: str, out: Path, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*NETORCH, *args, "--backend", "process", "--output", str(out),
         "--master-port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env(), **kw,
    )


def run_dir(out: Path) -> Path:
    dirs = [d for d in out.iterdir() if d.is_dir()] if out.exists() else []
    assert len(dirs) == 1, dirs
    return dirs[0]


def assert_no_strays(run_id: str) -> None:
    deadline = time.monotonic() + 5
    while run_processes(run_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run_processes(run_id) == []


@pytest.mark.parametrize(("nodes", "ppn"), [(2, 1), (2, 2)])
def test_all_five_ops_with_check(tmp_path: Path, nodes: int, ppn: int) -> None:
    proc = netorch(
        "bench", "--nodes", str(nodes), "--procs-per-node", str(ppn),
        "--ops", "all_reduce,all_gather,reduce_scatter,broadcast,all_to_all",
        "--min-bytes", "8K", "--max-bytes", "64K", "--step-factor", "8",
        "--warmup", "1", "--iters", "3", "--quiet", out=tmp_path,
    )
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, output
    report = json.loads((run_dir(tmp_path) / "report.json").read_text())
    world = nodes * ppn
    assert report["world_size"] == world
    assert report["backend"] == "process"
    assert report["dist_backend"] == "gloo"
    assert report["wrong_total"] == 0
    assert {r["op"] for r in report["results"]} == {
        "all_reduce", "all_gather", "reduce_scatter", "broadcast", "all_to_all"}
    assert all(r["wrong"] == 0 for r in report["results"])
    assert sorted(r["rank"] for r in report["ranks"]) == list(range(world))
    assert [n["node_rank"] for n in report["nodes"]] == list(range(nodes))
    assert all(n["ip"] == "127.0.0.1" and n["ifname"] == "lo" for n in report["nodes"])
    assert all(isinstance(n["mtu"], int) and n["mtu"] > 0 for n in report["nodes"])
    assert {"subnet", "gateway", "mtu"} <= set(report["network"])
    for row in report["results"]:
        assert set(row) >= {"op", "dtype", "size_bytes", "count", "in_place", "time_us",
                            "algbw_gbps", "busbw_gbps", "wrong"}
        t = row["time_us"]
        assert 0 < t["min"] <= t["avg"] <= t["max"]
    csv_lines = (run_dir(tmp_path) / "results.csv").read_text().splitlines()
    assert len(csv_lines) == len(report["results"]) + 1
    assert (run_dir(tmp_path) / "busbw.png").stat().st_size > 1000
    assert "all_to_all" in output  # the table was printed
    assert_no_strays(report["run_id"])


def _wait_for(predicate: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _long_bench(tmp_path: Path) -> subprocess.Popen[str]:
    # Big enough to run far longer than the test waits: 64 MiB all_reduce, many iterations.
    return netorch("bench", "--nodes", "2", "--min-bytes", "64M", "--max-bytes", "64M",
                   "--iters", "2000", "--warmup", "1", out=tmp_path)


def _worker_ranks(run_id: str) -> list[psutil.Process]:
    return [p for p in run_processes(run_id)
            if p.environ().get("NETORCH_NODE_NAME", "").endswith("-worker-1")]


def test_killed_node_fails_fast_with_diagnosis(tmp_path: Path) -> None:
    proc = _long_bench(tmp_path)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    run_id = _wait_for(lambda: run_dir(tmp_path).name if tmp_path.exists() and any(
        tmp_path.iterdir()) else None, 30)
    # Wait until both ranks run (rendezvous done, measuring), then kill the worker's launcher
    # and its ranks (its process group: the node's session, as the backend started it).
    _wait_for(lambda: len(run_processes(run_id)) >= 4, 60)
    time.sleep(3)
    agents = [p for p in _worker_ranks(run_id) if p.pid == os.getpgid(p.pid)]
    assert agents, "worker launcher not found"
    killed_at = time.monotonic()
    os.killpg(agents[0].pid, signal.SIGKILL)
    proc.wait(timeout=30)
    took = time.monotonic() - killed_at
    reader.join(timeout=5)
    text = "".join(lines)
    assert proc.returncode == 3, text
    assert took < 10, f"netorch took {took:.1f}s to come down"
    assert "-worker-1 failed" in text
    assert "SIGKILL" in text
    assert "last log lines of" in text or "log lines of" in text
    assert_no_strays(run_id)


def test_sigint_leaves_nothing(tmp_path: Path) -> None:
    proc = _long_bench(tmp_path)
    run_id = _wait_for(lambda: run_dir(tmp_path).name if tmp_path.exists() and any(
        tmp_path.iterdir()) else None, 30)
    _wait_for(lambda: len(run_processes(run_id)) >= 4, 60)  # 2 torchruns + 2 ranks
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, output
    assert "interrupted" in output
    assert_no_strays(run_id)


def _plan_on(port: int) -> Any:
    s = load_settings(overrides={"cluster": {"master_port": port}})
    return build_plan(s, "20261128-000000-beef", "process")


def test_busy_master_port_is_a_preflight_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert port_taken(port)
        with pytest.raises(PreflightError, match=(
                rf"^master port {port} on 127\.0\.0\.1 is in use \(held by pid {os.getpid()} "
                r"\(.*pytest.*\)\); stop that or pick a free port with --master-port")):
            ProcessBackend().preflight(_plan_on(port))
    assert not port_taken(port)
    ProcessBackend().preflight(_plan_on(port))  # free again: no error


def test_listener_on_another_address_also_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The store binds every interface, so a listener on any local address blocks it.
    monkeypatch.chdir(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.2", 0))
        busy.listen()
        port = busy.getsockname()[1]
        holder = port_holder(port)
        assert holder is not None and holder.startswith(f"pid {os.getpid()} ("), holder
        with pytest.raises(PreflightError, match=f"held by pid {os.getpid()}"):
            ProcessBackend().preflight(_plan_on(port))


def test_port_in_time_wait_is_free(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished run's port lingers in TIME_WAIT for a minute: it must not read as "in use"."""
    monkeypatch.chdir(tmp_path)
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as torch's store (libuv)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the server side closes first: its end (our port) goes to TIME_WAIT
        time.sleep(0.2)
        client.close()
    _wait_for(lambda: any(c.status == psutil.CONN_TIME_WAIT and c.laddr and c.laddr.port == port
                          for c in psutil.net_connections(kind="tcp")), 5)
    with socket.socket() as plain, pytest.raises(OSError):  # what the old check did
        plain.bind(("127.0.0.1", port))
    assert not port_taken(port)
    assert port_holder(port) is None
    ProcessBackend().preflight(_plan_on(port))


def _bench_on(port: int, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*NETORCH, "bench", "--backend", "process", "--output", str(out), "--master-port",
         str(port), "--nodes", "2", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env())


def test_two_benches_in_a_row_on_one_port(tmp_path: Path) -> None:
    port = free_port()
    for i in range(2):
        proc = _bench_on(port, tmp_path / str(i), "--min-bytes", "1K", "--max-bytes", "4K",
                         "--warmup", "1", "--iters", "2", "--quiet")
        output, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"run {i}: {output}"
        assert "in use" not in output


def test_store_listens_on_all_interfaces_and_says_so(tmp_path: Path) -> None:
    port = free_port()
    proc = _bench_on(port, tmp_path, "--min-bytes", "64M", "--max-bytes", "64M", "--iters", "2000",
                     "--warmup", "1")
    try:
        listeners = _wait_for(lambda: [c for c in psutil.net_connections(kind="tcp")
                                       if c.status == psutil.CONN_LISTEN and c.laddr
                                       and c.laddr.port == port], 60)
        # torch 2.13's TCPStore binds the wildcard address (dual stack): the notice must say so.
        assert {c.laddr.ip for c in listeners} <= {"::", "0.0.0.0"}, listeners
        assert all(c.pid is None or c.pid != proc.pid for c in listeners)  # a rank holds it
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    notice = [line for line in output.splitlines() if "c10d store listens on all interfaces" in line]
    assert len(notice) == 1, output
    assert f"(*:{port})" in notice[0] and "master" in notice[0]


def test_cli_config_error_is_one_line(tmp_path: Path) -> None:
    proc = netorch("bench", "--mtu", "70000", out=tmp_path)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert output.strip().splitlines() == [
        "error: network.mtu: 70000 is outside 576..9216; use 1500 (standard) or 9000 (jumbo frames)"
    ]
    assert "Traceback" not in output
    assert not (tmp_path.exists() and any(tmp_path.iterdir()))
