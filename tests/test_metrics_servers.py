"""Real Prometheus and Pushgateway servers against real runs (no mocks).

The servers are Debian's ``prometheus`` and ``prometheus-pushgateway`` (scripts/system-setup.sh
installs them). A missing binary fails the test under CI (``CI=true``) and skips it elsewhere.
Every server is started on a free loopback port and terminated (and waited for) at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from docker_fixtures import in_ci

pytestmark = pytest.mark.slow
NETORCH = [sys.executable, "-m", "orchestrator.cli"]


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (scripts/system-setup.sh installs it)"
        if in_ci():
            pytest.fail(f"{reason}; CI=true: this test must run", pytrace=False)
        pytest.skip(reason)
    return path


def free_port(consecutive: int = 1) -> int:
    """A port p such that p .. p+consecutive-1 are free on 127.0.0.1 right now."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + consecutive > 65535:
            continue
        socks = []
        try:
            for offset in range(consecutive):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free port range")


def http_get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


def start_server(argv: list[str], ready_url: str, log: Path) -> subprocess.Popen[bytes]:
    fh = log.open("wb")
    proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{argv[0]} exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            http_get(ready_url, timeout=1)
            return proc
        except OSError:
            time.sleep(0.2)
    stop_server(proc)
    raise AssertionError(f"{argv[0]} did not become ready: {log.read_text()[-2000:]}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("NETORCH_")}


def netorch(*args: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NETORCH, *args, "--backend", "process", "--output", str(out),
         "--master-port", str(free_port())],
        capture_output=True, text=True, env=clean_env(), timeout=300,
    )


@pytest.fixture()
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A Prometheus scraping every run under ``runs`` through its file_sd targets (1 s)."""
    exe = binary("prometheus")
    runs = tmp_path / "runs"
    runs.mkdir()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": "netorch",
            "file_sd_configs": [{"files": [str(runs / "_file_sd" / "*.json")],
                                 "refresh_interval": "1s"}],
        }],
    }))
    proc = start_server(
        [exe, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        f"http://127.0.0.1:{port}/-/ready", tmp_path / "prometheus.log",
    )
    try:
        yield f"http://127.0.0.1:{port}", runs
    finally:
        stop_server(proc)


@pytest.fixture()
def pushgateway(tmp_path: Path) -> Iterator[str]:
    exe = binary("prometheus-pushgateway")
    port = free_port()
    proc = start_server([exe, f"--web.listen-address=127.0.0.1:{port}"],
                        f"http://127.0.0.1:{port}/-/ready", tmp_path / "pushgateway.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


def query(base: str, selector: str) -> list[dict[str, Any]]:
    """The newest sample of each series matching ``selector``.

    ``last_over_time``: once the run's endpoints close, Prometheus marks their series stale and a
    plain instant query returns nothing; the range function still sees the scraped samples.
    """
    promql = f"last_over_time({selector}[10m])"
    data = json.loads(http_get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
    assert data["status"] == "success", data
    result: list[dict[str, Any]] = data["data"]["result"]
    return result


def test_prometheus_scrapes_every_rank_of_a_training_run(prometheus: tuple[str, Path]) -> None:
    base, runs = prometheus
    steps, batch = 60, 32
    # Each rank keeps /metrics open after training until Prometheus scraped it twice more
    # (bounded by hold_s), so the final values are in Prometheus when the run returns.
    proc = netorch("train", "--nodes", "2", "--steps", str(steps), "--batch-size", str(batch),
                   "--checkpoint-every", "0", "--metrics-port", str(free_port(2)),
                   "--set", "metrics.hold_s=90", "--set", "metrics.hold_scrapes=2", "--quiet",
                   out=runs)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = [d for d in runs.iterdir() if not d.name.startswith("_")]
    run_id = run_dir.name
    assert (runs / "_file_sd" / f"{run_id}.json").read_text() == (
        run_dir / "prometheus_targets.json").read_text()
    samples = query(base, f'netorch_train_samples_total{{run_id="{run_id}"}}')
    assert sorted(s["metric"]["rank"] for s in samples) == ["0", "1"]
    assert sorted(s["metric"]["netorch_node"] for s in samples) == ["master", "worker-1"]
    assert all(float(s["value"][1]) == steps * batch for s in samples)
    counts = query(base, f'netorch_train_step_duration_seconds_count{{run_id="{run_id}"}}')
    assert sorted((s["metric"]["rank"], float(s["value"][1])) for s in counts) == [
        ("0", float(steps)), ("1", float(steps))]
    for name in ("netorch_train_loss", "netorch_train_comm_share_ratio"):
        series = query(base, f'{name}{{run_id="{run_id}"}}')
        assert sorted(s["metric"]["rank"] for s in series) == ["0", "1"], name


def test_pushgateway_receives_bench_results(pushgateway: str, tmp_path: Path) -> None:
    proc = netorch("bench", "--nodes", "2", "--min-bytes", "4K", "--max-bytes", "16K",
                   "--step-factor", "4", "--iters", "2", "--warmup", "1", "--quiet",
                   "--set", f"metrics.pushgateway_url={pushgateway}", out=tmp_path / "runs")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(next((tmp_path / "runs").iterdir()).joinpath("report.json").read_text())
    text = http_get(f"{pushgateway}/metrics")
    rows = [line for line in text.splitlines()
            if line.startswith("netorch_bench_busbw_bytes_per_second{")]
    assert len(rows) == len(report["results"]) == 2
    for row in report["results"]:
        want = (f'dtype="float32",in_place="true",instance="",job="netorch_bench",'
                f'op="all_reduce",size_bytes="{row["size_bytes"]}"')
        line = next(r for r in rows if want in r)
        assert 'cluster="netorch"' in line
        assert float(line.rsplit(" ", 1)[1]) == pytest.approx(row["busbw_gbps"] * 1e9)
    assert f'netorch_run_info{{backend="process",cluster="netorch",dist_backend="gloo",' \
           f'instance="",job="netorch_bench",kind="bench",' \
           f'netorch_version="{report["versions"]["netorch"]}",run_id="{report["run_id"]}",' \
           f'torch_version="{report["torch_version"]}"}} 1' in text
