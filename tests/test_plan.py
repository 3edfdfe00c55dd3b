"""The plan: equality, addressing, env injection, names, and invariants under random settings."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from orchestrator.errors import ConfigError, NetorchError, PlanError
from orchestrator.plan import (
    LABEL_RUN,
    ClusterPlan,
    GpuSpec,
    NetworkSpec,
    Role,
    build_plan,
    new_run_id,
)
from orchestrator.settings import Settings, load_settings

pytestmark = pytest.mark.usefixtures("isolated")

RUN = "20261128-120000-abcd"
DOCKER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")



def make(**overrides: Any) -> Settings:
    return load_settings(overrides=overrides)


def test_plan_is_deterministic_and_frozen() -> None:
    s = make(cluster={"nodes": 4})
    a, b = build_plan(s, RUN, "docker"), build_plan(s, RUN, "docker")
    assert a == b
    assert isinstance(a, ClusterPlan)
    with pytest.raises(AttributeError):
        a.nodes[0].ip = "1.2.3.4"  # type: ignore[misc]
    assert build_plan(s, "20261128-120000-ffff", "docker") != a


def test_docker_network_spec() -> None:
    s = make(network={"subnet": "10.10.0.0/24", "mtu": 9000, "ip_range": "10.10.0.128/25",
                      "bridge_name": "ntbr0"})
    plan = build_plan(s, RUN, "docker")
    assert plan.network == NetworkSpec(
        name=f"netorch-{RUN}-net", driver="bridge", subnet="10.10.0.0/24", gateway="10.10.0.1",
        ip_range="10.10.0.128/25", mtu=9000, internal=True, bridge_name="ntbr0", interface="eth0",
        labels=((LABEL_RUN, RUN), ("io.netorch.managed", "true")),
    )
    # Addresses come from ip_range, skipping its network address.
    assert [n.ip for n in plan.nodes] == ["10.10.0.129", "10.10.0.130"]


def test_ip_assignment_skips_gateway() -> None:
    plan = build_plan(make(network={"subnet": "172.30.0.0/29", "gateway": "172.30.0.2"},
                           cluster={"nodes": 4}), RUN, "docker")
    assert [n.ip for n in plan.nodes] == ["172.30.0.1", "172.30.0.3", "172.30.0.4", "172.30.0.5"]
    assert plan.master_addr == "172.30.0.1"


def test_roles_names_aliases_labels() -> None:
    plan = build_plan(make(cluster={"nodes": 3}), RUN, "docker")
    assert [n.role for n in plan.nodes] == [Role.MASTER, Role.WORKER, Role.WORKER]
    assert [n.name for n in plan.nodes] == [
        f"netorch-{RUN}-master", f"netorch-{RUN}-worker-1", f"netorch-{RUN}-worker-2"]
    assert plan.nodes[0].aliases == ("master", f"netorch-{RUN}-master")
    assert plan.nodes[2].aliases == ("worker-2", f"netorch-{RUN}-worker-2")
    assert plan.nodes[1].labels_dict == {
        LABEL_RUN: RUN, "io.netorch.managed": "true", "io.netorch.role": "worker",
        "io.netorch.node-rank": "1"}


def test_names_stay_valid_docker_names_under_64() -> None:
    plan = build_plan(make(cluster={"name": "a" * 24, "nodes": 10_000},
                           network={"subnet": "10.0.0.0/16"}), new_run_id(), "docker")
    for name in [plan.network.name, *(n.name for n in plan.nodes)]:
        assert DOCKER_NAME.match(name) and len(name) < 64, name


def test_env_injection() -> None:
    s = make(cluster={"nodes": 2, "procs_per_node": 4, "master_port": 29600},
             env={"NCCL_DEBUG": "INFO", "NCCL_IB_DISABLE": "0"})
    plan = build_plan(s, RUN, "docker")
    env = plan.nodes[1].env_dict
    assert env["MASTER_ADDR"] == "172.28.0.2"
    assert ipaddress.ip_address(env["MASTER_ADDR"]).version == 4
    assert env["MASTER_PORT"] == "29600"
    assert env["WORLD_SIZE"] == "8"
    assert env["NNODES"] == "2"
    assert env["NODE_RANK"] == "1"
    assert env["NPROC_PER_NODE"] == "4"
    assert env["NCCL_SOCKET_IFNAME"] == "=eth0"
    assert env["GLOO_SOCKET_IFNAME"] == "eth0"
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["NCCL_DEBUG"] == "INFO"
    assert env["NCCL_IB_DISABLE"] == "0"  # user env last
    assert env["NETORCH_PLANNED_IP"] == "172.28.0.3"


def test_default_ib_disable() -> None:
    assert build_plan(make(), RUN, "docker").nodes[0].env_dict["NCCL_IB_DISABLE"] == "1"


LAUNCH_FLAGS = ["--nnodes", "2", "--nproc-per-node", "2", "--node-rank", "1",
                "--master-addr", "172.28.0.2", "--master-port", "29500", "--max-restarts", "0"]


def test_torchrun_launcher_takes_the_same_flags() -> None:
    s = make(cluster={"nodes": 2, "procs_per_node": 2, "launcher": "torchrun"})
    cmd = list(build_plan(s, RUN, "docker").nodes[1].command)
    assert cmd[:15] == ["torchrun", *LAUNCH_FLAGS, "-m", "train.bench"]


def test_command_is_the_netorch_launcher_with_bench_flags() -> None:
    s = make(cluster={"nodes": 2, "procs_per_node": 2},
             bench={"ops": ["all_reduce", "broadcast"], "min_bytes": "4K", "max_bytes": "1M",
                    "dtype": ["float32", "bfloat16"], "check": False, "iters": 7})
    node = build_plan(s, RUN, "docker").nodes[1]
    cmd = list(node.command)
    assert cmd[:18] == ["python", "-P", "-m", "train.launch", *LAUNCH_FLAGS, "-m", "train.bench"]

    def flag(name: str) -> str:
        return cmd[cmd.index(name) + 1]

    assert flag("--ops") == "all_reduce,broadcast"
    assert flag("--min-bytes") == "4096"
    assert flag("--max-bytes") == str(1 << 20)
    assert flag("--dtype") == "float32,bfloat16"
    assert flag("--check") == "0"
    assert flag("--iters") == "7"
    assert flag("--run-id") == RUN


def test_process_plan_uses_loopback() -> None:
    plan = build_plan(make(cluster={"nodes": 3}), RUN, "process")
    assert plan.network.driver == "loopback"
    assert plan.master_addr == "127.0.0.1"
    assert {n.ip for n in plan.nodes} == {"127.0.0.1"}
    env = plan.nodes[2].env_dict
    assert (env["GLOO_SOCKET_IFNAME"], env["NCCL_SOCKET_IFNAME"]) == ("lo", "=lo")


def test_gpu_specs() -> None:
    plan = build_plan(make(gpu={"per_node": 2}), RUN, "docker")
    assert plan.nodes[1].gpus == GpuSpec(2, (), "nvidia", ("gpu", "compute", "utility"))
    plan = build_plan(make(gpu={"device_ids": [["0", "1"], ["2", "3"]]}), RUN, "docker")
    assert plan.nodes[1].gpus == GpuSpec(None, ("2", "3"), "nvidia", ("gpu", "compute", "utility"))
    assert build_plan(make(), RUN, "docker").nodes[0].gpus is None


def test_bad_run_id_and_workload() -> None:
    with pytest.raises(PlanError, match="run id"):
        build_plan(make(), "Bad Id", "docker")
    with pytest.raises(PlanError, match="workload"):
        build_plan(make(), RUN, "docker", workload="nope")


def test_to_dict_is_plain() -> None:
    data = build_plan(make(), RUN, "docker").to_dict()
    assert data["nodes"][0]["env"]["WORLD_SIZE"] == "2"
    assert data["nodes"][0]["role"] == "master"
    assert data["network"]["labels"][LABEL_RUN] == RUN


# --- properties -------------------------------------------------------------------------------

@st.composite
def valid_settings(draw: st.DrawFn) -> Settings:
    prefix = draw(st.integers(min_value=16, max_value=29))
    base = draw(st.integers(min_value=0, max_value=(1 << 8) - 1))
    net = ipaddress.ip_network(f"10.{base}.0.0/{prefix}", strict=False)
    capacity = min(net.num_addresses - 3, 64)
    nodes = draw(st.integers(min_value=1, max_value=max(1, capacity)))
    hosts = list(net.hosts())[:8]
    gateway = draw(st.sampled_from([None, *(str(h) for h in hosts)]))
    return make(
        cluster={"nodes": nodes, "procs_per_node": draw(st.integers(1, 8))},
        network={"subnet": str(net), "gateway": gateway, "mtu": draw(st.integers(576, 9216))},
    )


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(valid_settings())
def test_plan_invariants(s: Settings) -> None:
    plan = build_plan(s, RUN, "docker")
    net = ipaddress.IPv4Network(plan.network.subnet)
    ips = [ipaddress.IPv4Address(n.ip) for n in plan.nodes]
    assert len(set(ips)) == len(ips) == s.cluster.nodes
    for ip in ips:
        assert ip in net
        assert ip not in (net.network_address, net.broadcast_address)
        assert str(ip) != plan.network.gateway
    assert plan.world_size == s.cluster.nodes * s.cluster.procs_per_node
    for node in plan.nodes:
        env = node.env_dict
        assert env["WORLD_SIZE"] == str(plan.world_size)
        assert env["MASTER_ADDR"] == plan.nodes[0].ip
        assert env["NODE_RANK"] == str(node.node_rank)
    assert [n.node_rank for n in plan.nodes] == list(range(s.cluster.nodes))


_junk = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=12),
                  st.floats(allow_nan=True), st.lists(st.integers(), max_size=3))


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    section=st.sampled_from(["cluster", "network", "bench", "gpu", "docker"]),
    key=st.sampled_from(["nodes", "subnet", "gateway", "mtu", "ip_range", "min_bytes", "max_bytes",
                         "step_factor", "ops", "dtype", "per_node", "device_ids", "shm_size",
                         "master_port", "name", "bogus"]),
    value=_junk,
)
def test_random_settings_raise_only_config_error(section: str, key: str, value: object) -> None:
    try:
        s = load_settings(overrides={section: {key: value}})
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    try:
        build_plan(s, RUN, "docker")
    except NetorchError:
        pass


# --- scale: no node cap below what the subnet addresses -------------------------------------------


def _reference_pool(subnet: str, gateway: str | None, ip_range: str | None) -> list[str]:
    """What ``address_pool`` must give, the slow obvious way (ipaddress walks every host)."""
    net = ipaddress.IPv4Network(subnet)
    source = ipaddress.IPv4Network(ip_range) if ip_range else net
    gw = ipaddress.IPv4Address(gateway) if gateway else next(net.hosts())
    hosts = source.hosts() if source.prefixlen < 31 else iter(source)
    return [str(a) for a in hosts if a not in {net.network_address, net.broadcast_address, gw}]


@pytest.mark.parametrize(("subnet", "gateway", "ip_range"), [
    ("10.0.0.0/16", None, None),
    ("10.0.0.0/24", "10.0.0.7", None),
    ("10.0.0.0/24", None, "10.0.0.0/28"),  # the range holds the subnet's network address
    ("10.0.0.0/24", "10.0.0.17", "10.0.0.16/28"),  # ... and the gateway
    ("10.0.0.0/24", None, "10.0.0.254/31"),  # holds the broadcast address
    ("10.0.0.0/29", "10.0.0.6", None),
    ("172.28.0.0/20", None, "172.28.8.0/21"),
])
def test_address_pool_equals_walking_every_host(
        subnet: str, gateway: str | None, ip_range: str | None) -> None:
    from orchestrator.placement import address_pool, usable_addresses
    from orchestrator.settings import NetworkSettings

    net = NetworkSettings(subnet=subnet, gateway=gateway, ip_range=ip_range)
    expected = _reference_pool(subnet, gateway, ip_range)
    assert usable_addresses(net) == len(expected)
    assert address_pool(net, len(expected) + 5) == expected
    assert address_pool(net, 3) == expected[:3]


def test_ten_thousand_nodes_get_distinct_consecutive_addresses() -> None:
    plan = build_plan(make(cluster={"nodes": 10_000}, network={"subnet": "10.0.0.0/16"}),
                      RUN, "docker")
    ips = [n.ip for n in plan.nodes]
    assert len(set(ips)) == 10_000
    assert ips[0] == "10.0.0.2" and ips[-1] == "10.0.39.17"  # .1 is the gateway
    assert [int(ipaddress.IPv4Address(ip)) for ip in ips] == list(range(
        int(ipaddress.IPv4Address("10.0.0.2")), int(ipaddress.IPv4Address("10.0.39.18"))))
    last = plan.nodes[-1]
    assert last.name == f"netorch-{RUN}-worker-9999"
    assert last.env_dict["NODE_RANK"] == "9999" and last.env_dict["NETORCH_PLANNED_IP"] == ips[-1]
    assert last.env_dict["NNODES"] == "10000"
    # Everything but the per-node values is the master's, in the master's order.
    per_node = {"NODE_RANK", "NETORCH_NODE_NAME", "NETORCH_PLANNED_IP"}
    assert [k for k, _ in last.env] == [k for k, _ in plan.master.env]
    assert {k: v for k, v in last.env if k not in per_node} == {
        k: v for k, v in plan.master.env if k not in per_node}


def test_more_nodes_than_the_subnet_addresses_names_its_size() -> None:
    with pytest.raises(ConfigError) as e:
        make(cluster={"nodes": 10_000}, network={"subnet": "10.0.0.0/20"})
    assert str(e.value) == (
        "network: subnet 10.0.0.0/20 has 4093 usable addresses but the plan needs 10000 "
        "(1 master + 9999 workers); use a /18 or larger")
    assert make(cluster={"nodes": 4093}, network={"subnet": "10.0.0.0/20"}).cluster.nodes == 4093


def test_overlay_of_many_nodes_stays_in_the_lower_half() -> None:
    hosts = [{"name": "a", "url": "unix:///a.sock"}, {"name": "b", "url": "unix:///b.sock"}]
    plan = build_plan(make(cluster={"nodes": 5000}, hosts=hosts,
                           network={"subnet": "10.0.0.0/18"}), RUN, "docker")
    assert plan.network.ip_range == "10.0.32.0/19" and plan.nodes[-1].ip == "10.0.19.137"
    with pytest.raises(PlanError, match=r"lower half 10.0.0.0/19.*use a /17 or larger"):
        build_plan(make(cluster={"nodes": 9000}, hosts=hosts,
                        network={"subnet": "10.0.0.0/18"}), RUN, "docker")


def test_cli_plan_summarises_many_nodes_and_json_prints_all() -> None:
    import json

    import yaml
    from typer.testing import CliRunner

    from orchestrator.cli import PLAN_YAML_NODES, app

    args = ["plan", "--backend", "docker", "--nodes", "300", "--run-id", RUN]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.stdout)
    ranks = [n["node_rank"] for n in data["nodes"]]
    assert ranks == [*range(PLAN_YAML_NODES - 1), 299]
    assert data["nnodes"] == 300 and data["nodes_not_shown"] == 300 - PLAN_YAML_NODES
    assert f"{300 - PLAN_YAML_NODES} of 300 nodes not shown" in result.stderr
    assert "--json prints every node" in result.stderr

    full = CliRunner().invoke(app, [*args, "--json"])
    assert full.exit_code == 0, full.output
    nodes = json.loads(full.stdout)["nodes"]
    assert [n["node_rank"] for n in nodes] == list(range(300))
    assert nodes[-1] == data["nodes"][-1]

    few = CliRunner().invoke(app, ["plan", "--backend", "docker", "--nodes", str(PLAN_YAML_NODES)])
    assert len(yaml.safe_load(few.stdout)["nodes"]) == PLAN_YAML_NODES
    assert "nodes_not_shown" not in few.stdout and few.stderr == ""
