"""The management network beside the fabric: plan, compose render, and a real 2-node bench
whose kernel counters prove which interface carried all_reduce (and warn when it was the wrong
one)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import docker
import pytest

from conftest import netorch_env
from orchestrator.errors import ConfigError, PlanError
from orchestrator.plan import build_plan
from orchestrator.render.compose import render_compose
from orchestrator.settings import load_settings

pytestmark = pytest.mark.usefixtures("isolated")
MGMT = {"subnet": "10.77.0.0/24"}


def _plan(**network: Any) -> Any:
    return build_plan(load_settings(overrides={"network": {"subnet": "10.9.0.0/24", **network}}),
                      "run-1", "docker")


def test_fabric_keeps_nccl_and_gloo_beside_a_management_network() -> None:
    plan = _plan(management=MGMT)
    # Docker puts networks with a way out first: the non-internal management network is eth0.
    assert (plan.management.device, plan.network.device) == ("eth0", "eth1")
    assert plan.fabric_interface == "eth1" and plan.management.internal is False
    env = plan.master.env_dict
    assert (env["NCCL_SOCKET_IFNAME"], env["GLOO_SOCKET_IFNAME"]) == ("=eth1", "eth1")
    assert env["NETORCH_PLANNED_IP"] == "10.9.0.2" and plan.master.management_ip == "10.77.0.2"
    assert plan.management.name == plan.network.name + "-mgmt"
    assert dict(plan.management.labels) == dict(plan.network.labels)  # removed with the run


def test_both_internal_keeps_the_fabric_first_by_name() -> None:
    plan = _plan(management={**MGMT, "internal": True})
    assert (plan.network.device, plan.management.device) == ("eth0", "eth1")


def test_an_explicit_interface_wins_and_no_management_means_eth0() -> None:
    assert _plan(management=MGMT, interface="eth0").master.env_dict["GLOO_SOCKET_IFNAME"] == "eth0"
    plan = _plan()
    assert plan.management is None and plan.fabric_interface == "eth0"


def test_management_subnet_must_not_overlap_and_needs_docker() -> None:
    with pytest.raises(ConfigError, match="network.management.subnet: 10.9.0.0/25 overlaps"):
        _plan(management={"subnet": "10.9.0.0/25"})
    settings = load_settings(overrides={"network": {"management": MGMT}})
    with pytest.raises(PlanError, match="network.management: the process backend"):
        build_plan(settings, "run-1", "process")


def test_compose_declares_both_networks_with_fixed_addresses() -> None:
    plan = _plan(management=MGMT)
    doc = render_compose(plan)
    mgmt = doc["networks"][plan.management.name]
    assert mgmt["internal"] is False and mgmt["ipam"]["config"][0]["subnet"] == "10.77.0.0/24"
    # Compose makes a service key a DNS name on every network: keyed by container name, as
    # the hostname is, "master" is the fabric's alias alone.
    master = doc["services"][plan.master.name]
    assert master["hostname"] == plan.master.name and "master" not in doc["services"]
    assert "master" in master["networks"][plan.network.name]["aliases"]
    assert "aliases" not in master["networks"][plan.management.name]
    nets = doc["services"][plan.nodes[1].name]["networks"]
    assert nets[plan.management.name] == {"ipv4_address": "10.77.0.3"}
    assert nets[plan.network.name]["ipv4_address"] == "10.9.0.3"


# ---- real containers ------------------------------------------------------------------------


def _bench(tmp_path: Path, client: docker.DockerClient, *sets: str) -> dict[str, Any]:
    from test_faults import free_test_subnet

    tmp_path.mkdir(parents=True, exist_ok=True)
    fabric_net = free_test_subnet(client)
    mgmt_net = free_test_subnet(client)
    while mgmt_net == fabric_net:
        mgmt_net = free_test_subnet(client)
    args = [sys.executable, "-m", "orchestrator.cli", "bench", "--backend", "docker",
            "--nodes", "2", "-B", "16M", "-E", "16M", "-w", "2", "-i", "5", "-q",
            "-o", str(tmp_path / "runs"), "--subnet", fabric_net,
            "--set", f"network.management.subnet={mgmt_net}",
            "--set", f"cluster.name=nt-{secrets.token_hex(4)}"]
    for item in sets:
        args += ["--set", item]
    proc = subprocess.run(args, cwd=tmp_path, env=netorch_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (found,) = (tmp_path / "runs").glob("*/report.json")
    report: dict[str, Any] = json.loads(found.read_text())
    report["_stdout"] = proc.stdout
    return report


@pytest.mark.docker
def test_all_reduce_bytes_go_through_the_fabric_and_move_when_pointed_elsewhere(
    tmp_path: Path, docker_client: docker.DockerClient,
) -> None:
    report = _bench(tmp_path / "fabric", docker_client)
    assert report["network"]["fabric_interface"] == "eth1"
    assert [n["ip"] for n in report["nodes"]] == [n["planned_ip"] for n in report["nodes"]]
    (row,) = [r for r in report["results"] if r["size_bytes"] == 16 << 20]
    sent = row["traffic_summary"]["bytes_per_rank"]
    expected = row["traffic_summary"]["expected_bytes_per_rank"]
    assert expected == 16 << 20  # ring all_reduce, 2 ranks: 2(n-1)/n x size
    assert abs(sent["eth1"] - expected) <= 0.10 * expected
    assert sent["eth0"] < 0.01 * expected  # the management network stayed quiet
    assert not [w for w in report["warnings"] if "traffic" in w or "far" in w]
    assert "eth1 (planned)" in report["_stdout"] and "eth0" in report["_stdout"]

    moved = _bench(tmp_path / "mgmt", docker_client, "network.interface=eth0")
    (row,) = [r for r in moved["results"] if r["size_bytes"] == 16 << 20]
    sent = row["traffic_summary"]["bytes_per_rank"]
    assert abs(sent["eth0"] - expected) <= 0.10 * expected and sent["eth1"] < 0.01 * expected
    assert any("traffic went through eth0, not the planned eth1" in w for w in moved["warnings"])


def test_beside_a_management_network_the_hostname_is_not_the_master_alias() -> None:
    from orchestrator.backends.docker.kwargs import container_create_kwargs

    plan = _plan(management=MGMT)
    kwargs = container_create_kwargs(plan, plan.master, "net-id", "1.41")
    # Docker's DNS would answer "master" with the management address (eth0) otherwise.
    assert kwargs["hostname"] == plan.master.name and "master" in plan.master.aliases
    plain = _plan()
    assert container_create_kwargs(plain, plain.master, "n", "1.41")["hostname"] == "master"


def test_warm_clusters_refuse_a_management_network_at_up(tmp_path: Path) -> None:
    from orchestrator import app

    settings = load_settings(overrides={"backend": "docker", "network": {"management": MGMT}})
    with pytest.raises(ConfigError, match="network.management.subnet=10.77.0.0/24: a warm "
                       "cluster has the fabric only"):
        app.up(settings, "nt-mgmt-up", 60.0, base_dir=tmp_path)


@pytest.mark.parametrize(("gloo", "route", "status", "needle"), [
    ("eth1", "default via 10.77.0.1 dev eth0", "pass", "eth0 holds 10.77.0.2"),
    ("eth0", "default via 10.77.0.1 dev eth0", "fail", "GLOO_SOCKET_IFNAME=eth0 is the management"),
    ("eth1", "", "fail", "the default route is missing"),
])
def test_doctor_checks_the_management_network(gloo: str, route: str, status: str,
                                              needle: str) -> None:
    from orchestrator.doctor import DoctorNode, NodeFacts, _management_check

    node = DoctorNode("n-master", "master", 0, "10.9.0.2", None, {"GLOO_SOCKET_IFNAME": gloo},
                      management_ip="10.77.0.2")
    facts = NodeFacts(True, {"eth0": "10.77.0.2", "eth1": "10.9.0.2"}, {}, "", "", None, "",
                      (), "", default_route=route)
    check = _management_check(node, facts)
    assert check.status == status and needle in check.detail
