"""MTU sweep, link emulation and doctor against a real daemon and the netorch image.

Policy (tests/docker_fixtures.py): no daemon or image fails in CI, skips elsewhere. Each test has
its own random ``cluster.name`` (``nt-<hex>``) and its own subnet inside 10.210.0.0/16 ..
10.219.0.0/16; afterwards everything netorch-managed of its runs is removed by run label. Faults
are made inside the test's own bridge only (a lowered MTU, a planned IP with nobody behind it).
"""

from __future__ import annotations

import csv
import json
import secrets
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from conftest import netorch_env
from docker_fixtures import docker_client, require_docker  # noqa: F401  (fixture)
from test_prometheus_conventions import promtool_metrics
from orchestrator.backends.docker import DockerBackend, remove_by_label
from orchestrator.doctor import sleeping_plan
from orchestrator.plan import LABEL_MANAGED, LABEL_RUN, build_plan, new_run_id
from orchestrator.settings import load_settings

pytestmark = pytest.mark.docker
IMAGE = "netorch:latest"


class Cluster:
    """A test's cluster name; removes what netorch made for it, by run label."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.name = "nt-" + secrets.token_hex(4)

    def run_ids(self) -> set[str]:
        flt = {"label": f"{LABEL_MANAGED}=true"}
        found = self.client.containers.list(all=True, filters=flt, ignore_removed=True)
        nets = self.client.networks.list(filters=flt)
        ids = {c.labels.get(LABEL_RUN, "") for c in found if c.name.startswith(self.name)}
        ids |= {(n.attrs.get("Labels") or {}).get(LABEL_RUN, "") for n in nets
                if n.name.startswith(self.name)}
        return ids - {""}

    def cleanup(self) -> set[str]:
        left = self.run_ids()
        for run_id in left:
            remove_by_label(self.client, run_id)
        return left


@pytest.fixture
def cluster(docker_client: docker.DockerClient) -> Iterator[Cluster]:  # noqa: F811
    try:
        image = docker_client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        require_docker(f"image {IMAGE} is not on the daemon; build it with `netorch image build`")
        raise
    docker_client.containers.run(image.id, ["python3", "-c", "import train.tcptest"],
                                 entrypoint=[], remove=True)  # ContainerError: image too old
    c = Cluster(docker_client)
    yield c
    assert not c.cleanup(), "netorch left resources of these runs behind"


def cli(cluster: Cluster, *args: str, cwd: Path, columns: int = 300,
        ) -> subprocess.CompletedProcess[str]:
    env = netorch_env(columns)
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args, "--set", f"cluster.name={cluster.name}"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )


def sweep_dir(tmp_path: Path) -> Path:
    (found,) = (tmp_path / "runs").glob("sweep-*")
    return found


# ---- sweep ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("nodes", "repeats", "subnet"), [
    (2, 2, "10.210.0.0/24"), (4, 1, "10.211.0.0/24")])
def test_sweep_1500_vs_9000(cluster: Cluster, tmp_path: Path, nodes: int, repeats: int,
                            subnet: str) -> None:
    proc = cli(cluster, "sweep", "--mtu", "1500,9000", "--repeats", str(repeats), "-n", str(nodes),
               "--subnet", subnet, "-B", "1M", "-E", "2M", "-w", "1", "-i", "3",
               "--tcp-seconds", "1", "--tcp-streams", "2", "-q", "-o", str(tmp_path / "runs"),
               cwd=tmp_path, columns=80)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "recommendation:" in proc.stdout
    out = sweep_dir(tmp_path)
    summary = json.loads((out / "sweep.json").read_text())
    # Piped at 80 columns: the table fits, one line per row (one per MTU and size).
    lines = proc.stdout.splitlines()
    body = [line for line in lines if line.startswith("│")]
    assert len(body) == len(summary["rows"]), proc.stdout
    assert all(len(line) <= 80 for line in lines if line[:1] in "┏┃┡│└"), proc.stdout
    assert all(f"sweep run {i} of {2 * repeats}:" in proc.stderr for i in range(1, 2 * repeats + 1))
    assert "left)" in proc.stderr  # an estimate from the second run on
    promtool_metrics((out / "metrics.prom").read_text())
    assert summary["versions"]["netorch"] and summary["versions"]["docker_engine"]
    expected_order = ["network.mtu=1500", "network.mtu=9000"] * repeats
    assert summary["order"] == expected_order
    for run in summary["runs"]:
        # Every run verified its MTU in every container and on every path, both directions.
        assert set(run["probes"]["effective_mtu"].values()) == {run["mtu"]}
        assert len(run["probes"]["path_mtu"]) == nodes * (nodes - 1)
        assert all(p["ok"] for p in run["probes"]["path_mtu"])
        assert [n["mtu"] for n in run["nodes"]] == [run["mtu"]] * nodes
        assert run["problems"] == []
        assert run["probes"]["tcp_single"][0]["bits_per_second"] > 0
        # Where the run's time went: the probes hold two 1 s TCP tests, the ranks measured.
        t = run["timing"]
        assert t["probes_s"] >= 2.0 and t["measure_s"] > 0
        assert t["wall_s"] == pytest.approx(t["probes_s"] + t["measure_s"] + t["other_s"], abs=0.01)
    assert summary["timing"]["wall_s"] == pytest.approx(
        statistics.median(r["timing"]["wall_s"] for r in summary["runs"]), abs=0.001)
    assert "time per run (median):" in proc.stdout
    rows = summary["rows"]
    assert {(r["mtu"], r["size_bytes"]) for r in rows} == {
        (m, s) for m in (1500, 9000) for s in (1 << 20, 2 << 20)}
    for r in rows:
        assert r["repeats"] == repeats and r["verified"]
        assert r["busbw_min"] <= r["busbw_median"] <= r["busbw_max"]
        assert r["efficiency"] == pytest.approx(r["busbw_median"] / r["tcp_single_gbps"])
    (verdict,) = summary["recommendations"]
    text = verdict["text"]
    assert ("use MTU" in text) == (verdict["best_mtu"] is not None)
    assert "use MTU" in text or "no significant difference" in text
    with (out / "sweep.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    assert (out / "busbw.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(out.glob("*/report.json"))) == 2 * repeats


def test_link_rate_1gbit_caps_busbw(cluster: Cluster, tmp_path: Path) -> None:
    proc = cli(cluster, "sweep", "--mtu", "1500", "--link-rate", "1gbit", "--repeats", "1",
               "-n", "2", "--subnet", "10.212.0.0/24", "-B", "64M", "-E", "64M", "-w", "1",
               "-i", "2", "--no-check", "--tcp-seconds", "1", "--tcp-streams", "2", "-q",
               "-o", str(tmp_path / "runs"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((sweep_dir(tmp_path) / "sweep.json").read_text())
    (row,) = summary["rows"]
    assert row["link_rate"] == "1gbit" and row["size_bytes"] == 64 << 20
    # 1 Gbit/s = 0.125 GB/s on the wire; gloo's ring over TCP keeps most of it.
    assert 0.08 <= row["busbw_median"] <= 0.125, row
    # The TCP baseline sees the same shaped link, so efficiency is a fraction near 1.
    assert 0.08 <= row["tcp_single_gbps"] <= 0.125, row
    assert 0.6 <= row["efficiency"] <= 1.2, row


# ---- doctor ---------------------------------------------------------------------------------


def checks_of(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(proc.stdout)
    return data


def failing(checks: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(c["name"], c["target"]) for c in checks if c["status"] == "fail"}


def test_doctor_shm_too_small(cluster: Cluster, tmp_path: Path) -> None:
    proc = cli(cluster, "doctor", "--json", "--subnet", "10.213.0.0/24",
               "--set", "docker.shm_size=64m", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    checks = checks_of(proc)
    assert failing(checks) == {("/dev/shm", "master"), ("/dev/shm", "worker-1")}
    shm = next(c for c in checks if c["name"] == "/dev/shm")
    assert shm["detail"] == "64 MiB" and "shm_size" in shm["fix"]


def test_doctor_wrong_interface(cluster: Cluster, tmp_path: Path) -> None:
    proc = cli(cluster, "doctor", "--json", "--subnet", "10.214.0.0/24",
               "--set", "network.interface=eth9", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    checks = checks_of(proc)
    assert failing(checks) == {("interface", "master"), ("interface", "worker-1")}
    iface = next(c for c in checks if c["name"] == "interface")
    assert "no interface eth9" in iface["detail"] and 'network.interface = "eth0"' in iface["fix"]


def sleeping_run(cluster: Cluster, client: docker.DockerClient, subnet: str, nodes: int,
                 mtu: int = 1500) -> tuple[DockerBackend, Any]:
    settings = load_settings(None, {"cluster": {"name": cluster.name, "nodes": nodes},
                                    "network": {"subnet": subnet, "mtu": mtu}})
    plan = sleeping_plan(build_plan(settings, new_run_id(), "docker"), net_admin=True)
    backend = DockerBackend(client)
    backend.up(plan, lambda node, line: None)
    return backend, plan


def test_doctor_mtu_mismatch(cluster: Cluster, docker_client: docker.DockerClient,  # noqa: F811
                             tmp_path: Path) -> None:
    backend, plan = sleeping_run(cluster, docker_client, "10.215.0.0/24", 2, mtu=9000)
    try:
        worker = docker_client.containers.get(plan.nodes[1].name)
        lowered = worker.exec_run(["ip", "link", "set", "eth0", "mtu", "1400"], user="root")
        assert lowered.exit_code == 0, lowered.output
        proc = cli(cluster, "doctor", "--run", plan.run_id, "--json", cwd=tmp_path)
    finally:
        backend.down(plan)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    checks = checks_of(proc)
    assert failing(checks) == {("effective MTU", "worker-1"), ("path MTU", "master"),
                               ("path MTU", "worker-1")}
    eff = next(c for c in checks if c["name"] == "effective MTU" and c["target"] == "worker-1")
    assert "MTU 1400" in eff["detail"] and "9000" in eff["detail"]


def test_doctor_unreachable_peer(cluster: Cluster, docker_client: docker.DockerClient,  # noqa: F811
                                 tmp_path: Path) -> None:
    backend, plan = sleeping_run(cluster, docker_client, "10.216.0.0/24", 3)
    try:
        # The master's planned IP stays in the plan (every worker's MASTER_ADDR) with nobody
        # behind it: a peer that is down, inside the test's own bridge.
        docker_client.containers.get(plan.master.name).remove(force=True)
        proc = cli(cluster, "doctor", "--run", plan.run_id, "--json", cwd=tmp_path)
    finally:
        backend.down(plan)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    checks = checks_of(proc)
    reach = {c["target"]: c for c in checks if c["name"] == "reachability"}
    assert set(reach) == {"worker-1", "worker-2"}
    for c in reach.values():
        assert c["status"] == "fail" and f"{plan.master_addr}) UNREACHABLE" in c["detail"]
    assert ("nodes up", "3 planned") in failing(checks)
    assert ("master port", "master") in failing(checks)
