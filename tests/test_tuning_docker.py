"""Tuning against a real daemon: a 2x2 ``--vary`` sweep (an env variable x MTU) whose ranks report
the env they ran with, and the baseline gate catching a slowed link (exit 5) but not noise."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from conftest import netorch_env
from docker_fixtures import docker_client, require_docker  # noqa: F401  (fixture)
from test_faults import free_test_subnet
from test_sweep_doctor_docker import Cluster, cluster, sweep_dir  # noqa: F401  (fixture)

pytestmark = pytest.mark.docker


def cli(cluster: Cluster, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args, "--set", f"cluster.name={cluster.name}"],
        cwd=cwd, env=netorch_env(300), capture_output=True, text=True, timeout=900,
    )


def test_vary_env_and_mtu_two_by_two(cluster: Cluster, tmp_path: Path,  # noqa: F811
                                     docker_client: docker.DockerClient) -> None:  # noqa: F811
    proc = cli(cluster, "sweep", "--vary", 'env.GLOO_SOCKET_IFNAME=["eth0","eth0,eth0"]',
               "--mtu", "1500,9000", "--repeats", "2", "-n", "2",
               "--subnet", free_test_subnet(docker_client), "-B", "1M", "-E", "2M", "-w", "1",
               "-i", "3", "--tcp-seconds", "1", "--tcp-streams", "2", "-q",
               "-o", str(tmp_path / "runs"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = sweep_dir(tmp_path)
    summary = json.loads((out / "sweep.json").read_text())
    cells = {(m, i) for m in (1500, 9000) for i in ("eth0", "eth0,eth0")}
    assert [(a["key"], a["values"]) for a in summary["axes"]] == [
        ("network.mtu", [1500, 9000]), ("env.GLOO_SOCKET_IFNAME", ["eth0", "eth0,eth0"])]
    assert len(summary["runs"]) == 8
    seen: dict[tuple[int, str], int] = {}
    for run in summary["runs"]:
        cell = (run["variant"]["network.mtu"], run["variant"]["env.GLOO_SOCKET_IFNAME"])
        seen[cell] = seen.get(cell, 0) + 1
        assert run["problems"] == [], run["problems"]
        assert set(run["probes"]["effective_mtu"].values()) == {cell[0]}
        # Every rank reports the value it ran with, and it is its cell's.
        assert len(run["ranks"]) == 2
        assert all(r["env"]["GLOO_SOCKET_IFNAME"] == cell[1] for r in run["ranks"])
        saved = json.loads((out / run["run_id"] / "report.json").read_text())
        assert [r["env"]["GLOO_SOCKET_IFNAME"] for r in saved["ranks"]] == [cell[1]] * 2
    assert seen == {c: 2 for c in cells}
    rows = summary["rows"]
    assert {(r["network.mtu"], r["env.GLOO_SOCKET_IFNAME"], r["size_bytes"]) for r in rows} == {
        (m, i, s) for m, i in cells for s in (1 << 20, 2 << 20)}
    assert all(r["repeats"] == 2 and r["verified"] for r in rows)
    with (out / "sweep.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames is not None
        assert reader.fieldnames[:2] == ["network.mtu", "env.GLOO_SOCKET_IFNAME"]
        assert {(r["network.mtu"], r["env.GLOO_SOCKET_IFNAME"]) for r in reader} == {
            (str(m), i) for m, i in cells}
    assert (out / "busbw.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A verdict per axis in every context of the other axis.
    axes = sorted((v["axis"], v["group"].split(",")[0]) for v in summary["recommendations"])
    assert [a for a, _ in axes] == ["env.GLOO_SOCKET_IFNAME"] * 2 + ["network.mtu"] * 2


def test_baseline_gate_catches_a_slow_link_and_not_noise(
        cluster: Cluster, tmp_path: Path, docker_client: docker.DockerClient,  # noqa: F811
) -> None:
    subnet = free_test_subnet(docker_client)
    common = ["bench", "-n", "2", "--subnet", subnet, "-B", "2M", "-E", "4M", "-w", "1",
              "-i", "3", "-q"]
    first = cli(cluster, *common, "-o", str(tmp_path / "base"), cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    (saved,) = (tmp_path / "base").glob("*/report.json")
    slow = cli(cluster, *common, "--set", "network.link.rate=40mbit", "--baseline", str(saved),
               "--confirm", "1", "-o", str(tmp_path / "slow"), cwd=tmp_path)
    assert slow.returncode == 5, slow.stdout + slow.stderr
    assert "regression against" in slow.stderr
    assert "at 2 MiB" in slow.stderr and "at 4 MiB" in slow.stderr
    assert "REGRESSED" in slow.stdout
    (gate,) = (tmp_path / "slow").glob("*/baseline.json")
    verdict = json.loads(gate.read_text())
    assert all(d["regressed"] for d in verdict["deltas"])
    assert len(verdict["runs"]) == 2  # the regression held in the confirmation run too
    # Unchanged settings pass. auto's allowance is unit-tested (test_baseline_units); end to end
    # on a shared host, other jobs' load moved this 2 MiB busbw from 1.00 to 0.35 GB/s (best of
    # three) within a minute, beyond auto's 50% against one run, so this part allows what no
    # load reaches while the slowed link above (-99%) was judged under auto.
    for attempt in range(5):
        same = cli(cluster, *common, "--baseline", str(saved.parent), "--tolerance", "90",
                   "-o", str(tmp_path / f"same{attempt}"), cwd=tmp_path)
        assert same.returncode == 0, f"false alarm on try {attempt + 1}: {same.stdout}{same.stderr}"
        assert "REGRESSED" not in same.stdout


def test_line_rate_is_measured_in_the_containers_first(
        cluster: Cluster, tmp_path: Path, docker_client: docker.DockerClient,  # noqa: F811
) -> None:
    proc = cli(cluster, "bench", "-n", "2", "--subnet", free_test_subnet(docker_client), "-B",
               "1M", "-E", "1M", "-w", "1", "-i", "3", "--line-rate", "--tcp-seconds", "1",
               "--tcp-streams", "2", "-q", "-o", str(tmp_path / "runs"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (saved,) = (tmp_path / "runs").glob("*/report.json")
    report = json.loads(saved.read_text())
    (single,) = report["line_rate"]["tcp_single"]
    names = {n["name"] for n in report["nodes"]}
    assert {single["src"], single["dst"]} == names  # between the two containers, not the host
    (row,) = report["results"]
    assert row["line_share"] == pytest.approx(row["busbw_gbps"] / report["line_rate"]["single_gbps"])
