"""Docker backend, integration tier: a real daemon and the netorch image.

Each test names its resources ``nt-<hex>`` (cluster.name) and a fixture removes whatever carries
that prefix or the test's owner label afterwards, failing the test if netorch itself left
anything. Traffic stays inside the project's own containers; subnets are private and distinct
per test (172.28.0.0/16 for the acceptance run, 10.23x.0.0 elsewhere).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from docker_fixtures import docker_client, require_docker  # noqa: F401  (fixture)
from orchestrator.backends.docker import MTU_OPTION, DockerBackend
from orchestrator.errors import NetworkConflictError, PreflightError
from orchestrator.plan import LABEL_MANAGED, LABEL_RUN, build_plan
from orchestrator.settings import load_settings

pytestmark = pytest.mark.docker

IMAGE = "netorch:latest"
OWNER = "io.netorch-test.owner"  # marks resources a test made itself (never netorch's labels)
ACCEPTANCE_SUBNET = "172.28.0.0/16"


# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(docker_client: docker.DockerClient) -> docker.DockerClient:  # noqa: F811
    try:
        docker_client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        require_docker(f"image {IMAGE} is not on the daemon; build it with `netorch image build`")
    return docker_client


class Tag:
    """A test's unique resource prefix and what it found left over."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.name = "nt-" + secrets.token_hex(4)

    def containers(self) -> list[Any]:
        # ignore_removed: list() inspects each hit, and netorch may be removing them right now.
        found = self.client.containers.list(all=True, filters={"name": self.name},
                                            ignore_removed=True)
        owned = self.client.containers.list(all=True, filters={"label": f"{OWNER}={self.name}"},
                                            ignore_removed=True)
        return list({c.id: c for c in [*found, *owned] if c.name.startswith(self.name)
                     or c.labels.get(OWNER) == self.name}.values())

    def networks(self) -> list[Any]:
        found = self.client.networks.list(filters={"name": self.name})
        owned = self.client.networks.list(filters={"label": f"{OWNER}={self.name}"})
        return list({n.id: n for n in [*found, *owned] if n.name.startswith(self.name)
                     or n.attrs.get("Labels", {}).get(OWNER) == self.name}.values())

    def netorch_made(self) -> list[str]:
        """Names of netorch-managed resources carrying this prefix (should be none after a run)."""
        out = [c.name for c in self.containers() if c.labels.get(LABEL_MANAGED) == "true"]
        out += [n.name for n in self.networks()
                if (n.attrs.get("Labels") or {}).get(LABEL_MANAGED) == "true"]
        return out


@pytest.fixture
def tag(client: docker.DockerClient) -> Iterator[Tag]:
    t = Tag(client)
    yield t
    leftovers = t.netorch_made()
    for c in t.containers():
        c.remove(force=True)
    for n in t.networks():
        n.reload()
        n.remove()
    assert not leftovers, f"netorch left these behind: {leftovers}"


def netorch_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETORCH_")}
    # Plain, unwrapped output so assertions can search it.
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "400"})
    return env


def netorch(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", *args]


def start_bench(tag: Tag, cwd: Path, *args: str) -> subprocess.Popen[str]:
    cmd = netorch("bench", "--backend", "docker", "--quiet", "-o", str(cwd / "runs"),
                  "--set", f"cluster.name={tag.name}", *args)
    return subprocess.Popen(cmd, cwd=cwd, env=netorch_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def run_labels_gone(client: docker.DockerClient, run_id: str) -> None:
    flt = {"label": f"{LABEL_RUN}={run_id}"}
    assert client.containers.list(all=True, filters=flt, ignore_removed=True) == []
    assert client.networks.list(filters=flt) == []


def wait_running(tag: Tag, count: int, timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [c for c in tag.containers() if c.status == "running"
                   and c.labels.get(LABEL_MANAGED) == "true"]
        if len(running) == count:
            return running
        time.sleep(0.2)
    raise AssertionError(f"{count} containers of {tag.name} were not running within {timeout} s")


def wait_traffic(container: Any, min_bytes: int, timeout: float) -> None:
    """Wait until ``container``'s eth0 has received ``min_bytes``: the sweep is under way.

    Rank 0 prints its table only at the end, so the logs cannot tell that collectives run.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, out = container.exec_run(["cat", "/sys/class/net/eth0/statistics/rx_bytes"])
        if code == 0 and int(out.strip() or 0) >= min_bytes:
            return
        time.sleep(0.5)
    raise AssertionError(f"{container.name} did not receive {min_bytes} bytes within {timeout} s")


def interrupt(proc: subprocess.Popen[str]) -> None:
    """Clean up a netorch still running after a failed assertion: SIGINT makes it tear down."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_subnet_free(client: docker.DockerClient, subnet: str, timeout: float = 90) -> None:
    """172.28.0.0/16 is everybody's default: wait for another test's run to release it."""
    deadline = time.monotonic() + timeout
    while True:
        users = [n["Name"] for n in client.api.networks()
                 for cfg in (n.get("IPAM") or {}).get("Config") or []
                 if cfg.get("Subnet") == subnet]
        if not users:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{subnet} stayed taken by {users}")
        time.sleep(1)


# ---- acceptance: a 4-node bench on 172.28.0.0/16 at MTU 9000 -------------------------------


def test_bench_four_nodes_mtu_9000(client: docker.DockerClient, tag: Tag, tmp_path: Path) -> None:
    wait_subnet_free(client, ACCEPTANCE_SUBNET)
    planned = build_plan(load_settings(overrides={
        "cluster": {"nodes": 4, "name": tag.name},
        "network": {"subnet": ACCEPTANCE_SUBNET, "mtu": 9000},
    }), "x-run", "docker")
    planned_ip = {n.hostname: n.ip for n in planned.nodes}
    seen: dict[str, Any] = {}

    def watch() -> None:
        # Inspect while the containers run: their fixed IPs, and the network as the daemon holds it.
        try:
            running = wait_running(tag, 4, timeout=120)
        except AssertionError as e:
            seen["error"] = str(e)
            return
        for c in running:
            c.reload()
            seen[c.attrs["Config"]["Hostname"]] = c.attrs["NetworkSettings"]["Networks"]
        [net] = [n for n in tag.networks()]
        net.reload()
        seen["network"] = net.attrs

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    proc = start_bench(tag, tmp_path, "-n", "4", "--subnet", ACCEPTANCE_SUBNET, "--mtu", "9000",
                       "--ops", "all_reduce", "-B", "64K", "-E", "1M", "-i", "5", "-w", "1")
    out, err = proc.communicate(timeout=240)
    wall = time.monotonic() - started
    watcher.join(timeout=5)
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    print(f"4-node docker bench wall time: {wall:.1f} s")

    assert "error" not in seen, seen.get("error")
    net = seen["network"]
    run_id = net["Labels"][LABEL_RUN]
    assert net["Labels"][LABEL_MANAGED] == "true"
    assert net["IPAM"]["Config"][0]["Subnet"] == ACCEPTANCE_SUBNET
    assert net["IPAM"]["Config"][0]["Gateway"] == "172.28.0.1"
    assert net["Options"][MTU_OPTION] == "9000"
    assert net["Internal"] is True
    assert net["Driver"] == "bridge"
    for hostname, ip in planned_ip.items():
        endpoint = seen[hostname][net["Name"]]
        assert endpoint["IPAddress"] == ip
        assert endpoint["IPAMConfig"]["IPv4Address"] == ip

    [report_path] = (tmp_path / "runs").glob("*/report.json")
    report = json.loads(report_path.read_text())
    assert report["run_id"] == run_id
    assert report["wrong_total"] == 0 and report["ok"] is True
    assert report["warnings"] == []
    assert len(report["nodes"]) == 4
    for node in report["nodes"]:
        assert node["ip"] == node["planned_ip"] == planned_ip[node["hostname"]]
        assert node["ifname"] == "eth0"
        assert node["mtu"] == 9000
    run_labels_gone(client, run_id)


# ---- GPUs on a host without the nvidia runtime ----------------------------------------------


def test_gpu_plan_fails_in_preflight(client: docker.DockerClient, tag: Tag, tmp_path: Path) -> None:
    if "nvidia" in (client.info().get("Runtimes") or {}):
        pytest.skip("this daemon has an nvidia runtime; the no-GPU path cannot be shown here")
    proc = subprocess.run(
        netorch("bench", "--backend", "docker", "--subnet", "10.234.0.0/24", "--set",
                f"cluster.name={tag.name}", "--set", "gpu.per_node=1"),
        cwd=tmp_path, env=netorch_env(), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no nvidia runtime" in errors[0] and "gpu.per_node = 0" in errors[0]
    assert "Traceback" not in proc.stderr
    assert tag.containers() == [] and tag.networks() == []


# ---- faults ---------------------------------------------------------------------------------


def test_kill_9_worker_takes_job_down(client: docker.DockerClient, tag: Tag, tmp_path: Path) -> None:
    proc = start_bench(tag, tmp_path, "-n", "2", "--subnet", "10.235.0.0/24", "--ops",
                       "all_reduce", "-B", "256K", "-E", "1M", "-i", "100000", "-w", "1")
    try:
        running = wait_running(tag, 2, timeout=120)
        master = next(c for c in running if c.name.endswith("-master"))
        worker = next(c for c in running if c.name.endswith("-worker-1"))
        run_id = worker.labels[LABEL_RUN]
        wait_traffic(master, 8 << 20, timeout=120)
        worker.kill(signal="SIGKILL")
        killed = time.monotonic()
        out, err = proc.communicate(timeout=60)
        down_in = time.monotonic() - killed
    finally:
        interrupt(proc)
    print(f"kill -9 -> netorch exit: {down_in:.1f} s")
    assert proc.returncode == 3, err
    assert f"node {worker.name} failed: killed by SIGKILL (exit 137)" in err
    assert down_in < 10, f"took {down_in:.1f} s to take the job down"
    run_labels_gone(client, run_id)


def test_sigint_leaves_nothing_behind(client: docker.DockerClient, tag: Tag, tmp_path: Path) -> None:
    proc = start_bench(tag, tmp_path, "-n", "2", "--subnet", "10.236.0.0/24", "--ops",
                       "all_reduce", "-B", "256K", "-E", "1M", "-i", "100000", "-w", "1")
    try:
        running = wait_running(tag, 2, timeout=120)
        run_id = running[0].labels[LABEL_RUN]
        wait_traffic(running[0], 8 << 20, timeout=120)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        interrupt(proc)
    print(f"SIGINT -> netorch exit: {took:.1f} s")
    assert proc.returncode == 130, err
    assert "interrupted" in err
    run_labels_gone(client, run_id)


def test_sigint_during_up_leaves_nothing_behind(
    client: docker.DockerClient, tag: Tag, tmp_path: Path
) -> None:
    proc = start_bench(tag, tmp_path, "-n", "4", "--subnet", "10.243.0.0/24")
    try:
        deadline = time.monotonic() + 60
        while not tag.networks():  # the network exists: containers are being created now
            assert time.monotonic() < deadline, "the network never appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        interrupt(proc)
    assert proc.returncode == 130, err
    assert tag.containers() == [] and tag.networks() == []


def test_subnet_overlapping_user_network_fails_before_create(
    client: docker.DockerClient, tag: Tag, tmp_path: Path
) -> None:
    user_net = client.networks.create(
        f"{tag.name}-usernet", driver="bridge", labels={OWNER: tag.name},
        ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet="10.237.0.0/24")]),
        check_duplicate=True,
    )
    proc = subprocess.run(
        netorch("bench", "--backend", "docker", "--subnet", "10.237.0.0/16", "--set",
                f"cluster.name={tag.name}"),
        cwd=tmp_path, env=netorch_env(), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert f"'{user_net.name}'" in line and "10.237.0.0/24" in line and "--subnet" in line
    assert "Traceback" not in proc.stderr
    assert [n.name for n in tag.networks()] == [user_net.name]
    assert tag.containers() == []


def test_subnet_overlapping_host_route_fails_in_preflight(client: docker.DockerClient, tag: Tag) -> None:
    from orchestrator.backends.docker import host_routes

    routes = [r for r in host_routes() if not r[0].startswith(("docker", "br-"))]
    if not routes:
        pytest.skip("this host has no non-default, non-Docker route to collide with")
    iface, route = routes[0]
    if route.prefixlen > 29:
        pytest.skip(f"route {route} is smaller than any plannable subnet")
    settings = load_settings(overrides={"cluster": {"name": tag.name},
                                        "network": {"subnet": str(route)}})
    plan = build_plan(settings, "r-route", "docker")
    with pytest.raises(NetworkConflictError, match=f"host route {route} on {iface}"):
        DockerBackend(client).preflight(plan)
    assert tag.containers() == [] and tag.networks() == []


def _user_lookalikes(client: docker.DockerClient, tag: Tag, subnet: str) -> tuple[Any, Any, str]:
    """A user's network and container named and labelled like netorch's, minus managed=true."""
    fake_run = "20990101-000000-beef"
    labels = {OWNER: tag.name, LABEL_RUN: fake_run}
    net = client.networks.create(
        f"{tag.name}-{fake_run}-net", driver="bridge", labels=labels, check_duplicate=True,
        ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)]),
    )
    container = client.containers.create(
        IMAGE, ["sleep", "600"], name=f"{tag.name}-{fake_run}-master", labels=labels, init=True,
        network=net.id,
    )
    container.start()
    return net, container, fake_run


def test_user_lookalikes_untouched_by_runs_and_down(
    client: docker.DockerClient, tag: Tag, tmp_path: Path
) -> None:
    net, container, fake_run = _user_lookalikes(client, tag, "10.238.0.0/24")
    proc = start_bench(tag, tmp_path, "-n", "2", "--subnet", "10.239.0.0/24", "--ops",
                       "all_reduce", "-B", "64K", "-E", "64K", "-i", "2", "-w", "0")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    down = subprocess.run(netorch("down", "--run", fake_run), cwd=tmp_path,
                          env=netorch_env(), capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert "0 resource(s)" in down.stdout
    container.reload()
    net.reload()
    assert container.status == "running"
    assert [n.name for n in tag.networks()] == [net.name]
    assert [c.name for c in tag.containers()] == [container.name]


def test_down_all_removes_only_managed(client: docker.DockerClient, tag: Tag, tmp_path: Path) -> None:
    # --all removes every netorch run on the daemon: do not kill another test's or user's live run.
    managed = {"label": f"{LABEL_MANAGED}=true"}
    foreign = [c.name for c in client.containers.list(all=True, filters=managed, ignore_removed=True)]
    foreign += [n.name for n in client.networks.list(filters=managed)]
    if foreign:
        pytest.skip(f"other netorch resources are live on this daemon ({', '.join(foreign[:3])}); "
                    "down --all would remove them")
    net, container, _ = _user_lookalikes(client, tag, "10.240.0.0/24")
    leftover_run = "20990101-000000-dead"
    leftover = client.networks.create(
        f"{tag.name}-{leftover_run}-net", driver="bridge", check_duplicate=True,
        labels={LABEL_RUN: leftover_run, LABEL_MANAGED: "true"},
        ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet="10.241.0.0/24")]),
    )
    down = subprocess.run(netorch("down", "--all"), cwd=tmp_path, env=netorch_env(),
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert f"removed network {leftover.name}" in down.stdout
    assert sorted(n.name for n in tag.networks()) == [net.name]
    assert [c.name for c in tag.containers()] == [container.name]

