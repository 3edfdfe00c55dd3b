"""Several hosts, unit tier: settings, placement, the overlay plan, create arguments, report,
and the swarm preflight against fake clients (no daemon)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from orchestrator.backends.base import NodeExit
from orchestrator.backends.docker import MTU_OPTION, network_create_kwargs
from orchestrator.backends.swarm import MultiHostDockerBackend, down_hosts
from orchestrator.errors import BackendError, ConfigError, PlanError, PreflightError
from orchestrator.plan import HostSpec, build_plan
from orchestrator.report import build_report
from orchestrator.settings import Settings, load_settings

pytestmark = pytest.mark.usefixtures("isolated")

RUN = "20261128-120000-abcd"
TWO = [{"name": "a", "url": "unix:///var/run/docker.sock"},
       {"name": "b", "url": "tcp://10.0.0.2:2376", "tls_cert": "c.pem", "tls_key": "k.pem"}]



def make(**overrides: Any) -> Settings:
    return load_settings(overrides=overrides)


def test_defaults_keep_the_single_host_plan() -> None:
    plan = build_plan(make(), RUN, "docker")
    assert make().hosts == [] and plan.hosts == () and not plan.multi_host
    assert plan.network.driver == "bridge" and not plan.network.attachable
    assert all(n.host is None for n in plan.nodes)
    assert "attachable" not in network_create_kwargs(plan)


def test_one_host_is_still_a_bridge() -> None:
    plan = build_plan(make(hosts=TWO[:1]), RUN, "docker")
    assert plan.network.driver == "bridge" and [n.host for n in plan.nodes] == ["a", "a"]


def test_two_hosts_make_an_attachable_overlay_round_robin() -> None:
    plan = build_plan(make(hosts=TWO, cluster={"nodes": 4},
                           network={"subnet": "10.252.0.0/24", "mtu": 1450}), RUN, "docker")
    net = plan.network
    assert (net.driver, net.attachable, net.subnet, net.gateway, net.mtu) == (
        "overlay", True, "10.252.0.0/24", "10.252.0.1", 1450)
    # Swarm's own per-host addresses come from the upper half; nodes take the lower half.
    assert net.ip_range == "10.252.0.128/25"
    assert [n.ip for n in plan.nodes] == ["10.252.0.2", "10.252.0.3", "10.252.0.4", "10.252.0.5"]
    assert [n.host for n in plan.nodes] == ["a", "b", "a", "b"]
    assert plan.hosts[1] == HostSpec("b", "tcp://10.0.0.2:2376", None, "c.pem", "k.pem", None)
    kwargs = network_create_kwargs(plan)
    assert kwargs["driver"] == "overlay" and kwargs["attachable"] is True
    assert kwargs["options"] == {MTU_OPTION: "1450"}
    assert kwargs["ipam"]["Config"][0]["IPRange"] == "10.252.0.128/25"


def test_explicit_placement() -> None:
    plan = build_plan(make(hosts=TWO, cluster={"nodes": 3}, placement={
        "strategy": "explicit", "nodes": {"master": "b", "worker-1": "b", "2": "a"}}),
        RUN, "docker")
    assert [n.host for n in plan.nodes] == ["b", "b", "a"]


@pytest.mark.parametrize("placement, words", [
    ({"strategy": "explicit", "nodes": {"master": "a"}}, r"worker-1 \(rank 1\) has no host"),
    ({"strategy": "explicit", "nodes": {"master": "a", "worker-1": "z"}}, "'z' is not a configured host"),
    ({"strategy": "explicit", "nodes": {"master": "a", "worker-1": "b", "worker-7": "a"}},
     "worker-7 name no node"),
    ({"nodes": {"master": "a"}}, "strategy is round-robin"),
])
def test_bad_placement(placement: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        make(hosts=TWO, placement=placement)


@pytest.mark.parametrize("host, words", [
    ({"name": "x", "url": "http://h"}, "not a Docker URL"),
    ({"name": "x", "url": "unix:///s", "tls_cert": "c"}, "only apply to tcp"),
    ({"name": "X Y", "url": "unix:///s"}, "not a usable host name"),
])
def test_bad_host(host: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        make(hosts=[host])


def test_duplicate_host_names() -> None:
    with pytest.raises(ConfigError, match="appear twice"):
        make(hosts=[TWO[0], {**TWO[1], "name": "a"}])


def test_overlay_plan_errors() -> None:
    with pytest.raises(PlanError, match="drop network.ip_range"):
        build_plan(make(hosts=TWO, network={"subnet": "10.252.0.0/24",
                                           "ip_range": "10.252.0.0/28"}), RUN, "docker")
    with pytest.raises(PlanError, match="lower half"):
        build_plan(make(hosts=TWO, cluster={"nodes": 5},
                        network={"subnet": "10.252.0.0/29"}), RUN, "docker")
    with pytest.raises(PlanError, match="process backend"):
        build_plan(make(hosts=TWO), RUN, "process")


def test_exit_reason_names_the_host() -> None:
    assert NodeExit(137, 0.0, host="b").reason() == "killed by SIGKILL (exit 137) on host b"
    assert NodeExit(1, 0.0).reason() == "exit code 1"


def _result(plan: Any, mtu: int) -> dict[str, Any]:
    return {"ranks": [{"rank": i, "node_rank": i, "local_rank": 0, "ipv4": n.ip, "mtu": mtu,
                       "ifname": "eth0"} for i, n in enumerate(plan.nodes)],
            "results": [{"op": "all_reduce"}], "wrong_total": 0}


def test_report_shows_hosts_and_flags_the_overlay_mtu() -> None:
    plan = build_plan(make(hosts=TWO, network={"subnet": "10.252.0.0/24", "mtu": 1450}),
                      RUN, "docker")
    report = build_report(plan, _result(plan, 1400), 1.0)
    assert [n["host"] for n in report["nodes"]] == ["a", "b"]
    assert report["network"]["effective_mtu"] == 1400
    assert report["warnings"] and all("network.mtu = 1500 to get 1450" in w
                                      for w in report["warnings"])
    single = build_plan(make(), RUN, "docker")
    assert "host" not in build_report(single, _result(single, 1500), 1.0)["nodes"][0]


class FakeNode:
    def __init__(self, node_id: str) -> None:
        self.id = node_id


class FakeNodes:
    def __init__(self, ids: list[str]) -> None:
        self.ids = ids

    def list(self) -> list[FakeNode]:
        return [FakeNode(i) for i in self.ids]


class FakeSwarmClient:
    """Only what the swarm checks touch: ping, info()['Swarm'], nodes.list()."""

    def __init__(self, swarm: dict[str, Any], members: list[str] | None = None) -> None:
        self.swarm_info = swarm
        self.nodes = FakeNodes(members or [])

    def ping(self) -> bool:
        return True

    def info(self) -> dict[str, Any]:
        return {"Swarm": self.swarm_info}


def _swarm_check(clients: dict[str, FakeSwarmClient]) -> None:
    plan = build_plan(make(hosts=TWO), RUN, "docker")
    backend = MultiHostDockerBackend(clients)
    states = {name: c.info()["Swarm"] for name, c in clients.items()}
    backend._check_swarm(plan, states)


def test_swarm_check() -> None:
    manager = {"LocalNodeState": "active", "ControlAvailable": True, "NodeID": "m"}
    worker = {"LocalNodeState": "active", "ControlAvailable": False, "NodeID": "w"}
    _swarm_check({"a": FakeSwarmClient(manager, ["m", "w"]), "b": FakeSwarmClient(worker)})
    with pytest.raises(PreflightError, match=r"b are not in a swarm.*netorch swarm init"):
        _swarm_check({"a": FakeSwarmClient(manager, ["m"]),
                      "b": FakeSwarmClient({"LocalNodeState": "inactive"})})
    with pytest.raises(PreflightError, match="another swarm"):
        _swarm_check({"a": FakeSwarmClient(manager, ["m"]), "b": FakeSwarmClient(worker)})
    with pytest.raises(PreflightError, match="not a swarm manager"):
        _swarm_check({"a": FakeSwarmClient(worker, ["w"]), "b": FakeSwarmClient(manager)})


class Unreachable:
    """A host whose daemon does not answer (every call fails like a dead socket)."""

    def __getattr__(self, name: str) -> Any:
        import requests.exceptions

        raise requests.exceptions.ConnectionError("connection refused")


def test_teardown_reports_an_unreachable_host() -> None:
    with pytest.raises(BackendError, match=r"host b: .*netorch down --run r1"):
        down_hosts({"a": _EmptyClient(), "b": Unreachable()}, "r1", ["a", "b"])


class _EmptyClient:
    class _Coll:
        def list(self, **_: Any) -> list[Any]:
            return []

    containers = _Coll()
    networks = _Coll()


def test_plan_for_host_keeps_only_that_hosts_nodes_and_every_host() -> None:
    from orchestrator.backends.swarm import plan_for_host

    plan = build_plan(make(hosts=TWO, cluster={"nodes": 4}), RUN, "docker")
    on_b = plan_for_host(plan, TWO[1]["name"])
    assert [n.node_rank for n in on_b.nodes] == [1, 3]
    assert on_b.hosts == plan.hosts and on_b.network == plan.network


# --- a lost host ---------------------------------------------------------------------------------


def test_exit_reason_of_a_lost_host() -> None:
    assert NodeExit(-1, 0.0, host="b", lost=True).reason() == (
        "lost with host b: the Docker daemon there stopped answering")


class _GoneDaemonContainer:
    """A container whose daemon went away mid-wait: every call fails in the transport."""

    def logs(self, **_: Any) -> Any:
        return iter(())

    def wait(self, **_: Any) -> Any:
        import requests.exceptions

        raise requests.exceptions.ConnectionError("read timed out / connection refused")

    reload = wait


def test_a_node_whose_daemon_stops_answering_is_lost_not_signalled() -> None:
    from orchestrator.backends.docker.nodes import DockerNode

    plan = build_plan(make(hosts=TWO, cluster={"nodes": 2}), RUN, "docker")
    node = DockerNode(plan.nodes[1], _GoneDaemonContainer(), lambda _n, _l: None)
    node.join(timeout=10)
    ex = node.poll()
    assert ex is not None and ex.lost and ex.host == "b"
    assert "lost with host b" in ex.reason() and "SIGHUP" not in ex.reason()


def test_a_failed_run_on_a_lost_host_reports_the_failure_and_the_teardown(
        tmp_path: Path) -> None:
    from orchestrator.errors import RankFailedError
    from orchestrator.session import run_session

    plan = build_plan(make(hosts=TWO, cluster={"nodes": 2}), RUN, "docker")

    class Ended:
        def __init__(self, name: str, ex: NodeExit | None) -> None:
            self.name, self._ex = name, ex

        def poll(self) -> NodeExit | None:
            return self._ex

    class HostBGone:
        name = "docker"

        def preflight(self, plan: Any) -> None: ...

        def up(self, plan: Any, sink: Any) -> list[Any]:
            return [Ended(plan.nodes[0].name, None),
                    Ended(plan.nodes[1].name, NodeExit(-1, 1.0, host="b", lost=True))]

        def stop(self, plan: Any, grace_s: float) -> None: ...

        def down(self, plan: Any) -> None:
            down_hosts({"a": _EmptyClient(), "b": Unreachable()}, plan.run_id, ["a", "b"])

    with pytest.raises(RankFailedError) as caught:
        run_session(HostBGone(), plan, tmp_path, timeout_s=10)  # type: ignore[arg-type]
    error = caught.value
    assert error.node == plan.nodes[1].name
    assert error.reason.startswith("lost with host b")
    assert error.teardown is not None and f"netorch down --run {RUN}" in error.teardown
    assert error.diagnosis().splitlines()[-1].strip().startswith("teardown incomplete: host b")
