"""Several hosts over Docker Swarm, integration tier: three real daemons on this machine.

The main daemon is host h1 (the swarm manager). h2 and h3 run in network namespaces of their own
(``nsenter --net=/run/netns/X dockerd``; ``ip netns exec`` would hide the cgroup mounts dockerd
needs) with their own data-root, exec-root, pidfile and socket, and no default bridge. One L2
segment links the three: a bridge in a fourth namespace (no iptables there) with a veth to this
host (10.250.0.1/24) and one to each daemon's namespace (10.250.0.2, 10.250.0.3). Every daemon
advertises that address, so the swarm's control plane and the overlay's VXLAN traffic cross the
bridge. h2 also listens on ``tcp://10.250.0.2:2376`` with TLS (``--tlsverify``; the CA and the
certificates are made by openssl here) and the CLI runs reach it there. The training image
travels by ``image.save()`` -> ``images.load()``.

The module fixture tears EVERYTHING down even on failure: netorch's containers and networks on
every daemon, swarm leave on all, docker_gwbridge on the main daemon when the swarm made it,
daemons 2 and 3 stopped, their directories, the namespaces and the veths removed. Traffic stays
on the bridge and the overlay (10.252.0.0/24), both private ranges this module creates.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from netns_daemon import openssl_pki, sh, stop_netns_daemon
from docker_fixtures import (  # noqa: F401  (fixture)
    docker_client,
    kill_worker_after_first_checkpoint,
    require_docker,
)

import docker
from orchestrator.backends.swarm import MultiHostDockerBackend, swarm_init, swarm_join
from orchestrator.errors import PreflightError, RankFailedError
from orchestrator.plan import LABEL_MANAGED, build_plan
from orchestrator.session import run_session
from orchestrator.settings import load_settings

pytestmark = pytest.mark.docker

IMAGE = "netorch:latest"
NETNS, NETNS_3 = "ntswarm", "ntswarm3"  # daemons h2 and h3
NETNS_SWITCH = "ntswsw"  # holds the bridge that links the three hosts' veths
VETH_HOST = "ntsw0"  # this host's end; its peer and the daemons' peers are ports of the bridge
VETHS = {"h1": ("ntsw0", "ntswb0"), "h2": ("ntsw1", "ntswb1"), "h3": ("ntsw3", "ntswb3")}
ADDR_1, ADDR_2, ADDR_3 = "10.250.0.1", "10.250.0.2", "10.250.0.3"
OVERLAY_SUBNET = "10.252.0.0/24"
URL_1 = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
ROOT = Path("/tmp/netorch-swarm-test")
ROOT_3 = Path("/tmp/netorch-swarm-test-h3")
SOCK_2 = ROOT / "docker.sock"
SOCK_3 = ROOT_3 / "docker.sock"
PREFIX = "ntsw-"  # cluster.name of every run here: what teardown may remove


URL_2_TLS = f"tcp://{ADDR_2}:2376"  # the same daemon h2, over TCP with TLS (client certificate)


class TwoHosts:
    """The main daemon (host ``h1``, swarm manager) and a second one in a netns (``h2``).

    ``toml`` reaches h2 over ``tcp://`` with TLS (certificates made by openssl here), so every CLI
    run of this module crosses a verified TLS connection; ``pki`` holds the PEM files."""

    def __init__(self, c1: docker.DockerClient, c2: docker.DockerClient, toml: Path,
                 daemon: subprocess.Popen[bytes], pki: dict[str, Path],
                 c3: docker.DockerClient, toml_3: Path) -> None:
        self.c1, self.c2, self.toml, self.daemon, self.pki = c1, c2, toml, daemon, pki
        self.clients = {"h1": c1, "h2": c2}
        # A third daemon (h3, its own netns) in the same swarm, for the three-host runs;
        # ``toml_3`` lists h1, h2 (TLS) and h3.
        self.c3, self.toml_3 = c3, toml_3
        self.all_clients = {"h1": c1, "h2": c2, "h3": c3}


def start_daemon_2(pki: dict[str, Path]) -> subprocess.Popen[bytes]:
    """dockerd for h2 in its namespace (again, after a stop: same data-root, so it is still a
    swarm member), on a unix socket and on TLS TCP; returns once it answers."""
    return start_daemon(NETNS, ROOT, [
        "-H", URL_2_TLS, "--tlsverify", f"--tlscacert={pki['ca']}",
        f"--tlscert={pki['server']}", f"--tlskey={pki['server_key']}"])


def start_daemon(netns: str, root: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    """dockerd in ``netns`` with everything under ``root`` (socket root/docker.sock)."""
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / "dockerd.log", "ab")
    # Its own netns, so its iptables and bridges cannot fight the main daemon's; no default
    # bridge (the overlay is all it needs).
    daemon = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{netns}", "dockerd",
         "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
         "--pidfile", str(root / "dockerd.pid"), "-H", f"unix://{root / 'docker.sock'}",
         *extra, "--bridge=none", "--ip-masq=false", "--storage-driver", "overlay2"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + 60
    while True:
        try:
            # The SDK asks the daemon for its API version on construction.
            probe = docker.DockerClient(base_url=f"unix://{root / 'docker.sock'}", timeout=10)
            try:
                probe.ping()
            finally:
                probe.close()
            return daemon
        except Exception:
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"dockerd in {netns} did not start: "
                    + (root / "dockerd.log").read_text()[-2000:]) from None
            time.sleep(0.2)


def stop_daemon_2(daemon: subprocess.Popen[bytes]) -> None:
    """What losing host h2 looks like to netorch: its daemon goes away (SIGTERM, as systemd)."""
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=60)


def _teardown(c1: docker.DockerClient | None, daemon: subprocess.Popen[bytes] | None,
              gwbridge_was_there: bool, swarm_was_ours: bool,
              daemon_3: subprocess.Popen[bytes] | None = None) -> None:
    errors: list[str] = []
    c2 = c3 = None
    if daemon is not None and daemon.poll() is None:
        try:
            c2 = docker.DockerClient(base_url=f"unix://{SOCK_2}", timeout=30)
        except docker.errors.DockerException as e:
            errors.append(f"client 2: {e}; its log: " + (ROOT / "dockerd.log").read_text()[-500:])
    if daemon_3 is not None and daemon_3.poll() is None:
        try:
            c3 = docker.DockerClient(base_url=f"unix://{SOCK_3}", timeout=30)
        except docker.errors.DockerException as e:
            errors.append(f"client 3: {e}")
    for client in (c3, c2, c1):
        if client is None:
            continue
        flt = {"label": f"{LABEL_MANAGED}=true"}
        try:
            # Only what this module's runs made: their names start with the cluster name.
            for c in client.containers.list(all=True, filters=flt, ignore_removed=True):
                if c.name.startswith(PREFIX):
                    c.remove(force=True)
        except docker.errors.DockerException as e:
            errors.append(f"containers: {e}")
    if c1 is not None:
        try:
            for n in c1.networks.list(filters={"label": f"{LABEL_MANAGED}=true"}):
                if n.name.startswith(PREFIX):
                    n.remove()
        except docker.errors.DockerException as e:
            errors.append(f"networks: {e}")
    for worker in (c2, c3):
        if worker is not None:
            try:
                worker.swarm.leave(force=True)
            except docker.errors.APIError:
                pass
            worker.close()
    if c1 is not None and swarm_was_ours:
        try:
            c1.swarm.leave(force=True)
        except docker.errors.APIError as e:
            errors.append(f"swarm leave 1: {e}")
        if not gwbridge_was_there:
            for _ in range(20):
                try:
                    for n in c1.networks.list(names=["docker_gwbridge"]):
                        n.remove()
                    break
                except docker.errors.APIError:
                    time.sleep(0.5)
    stop_netns_daemon(daemon_3, ROOT_3, VETH_HOST, NETNS_3)
    stop_netns_daemon(daemon, ROOT, VETH_HOST, NETNS)
    sh("ip", "netns", "del", NETNS_SWITCH, check=False)
    assert not errors, errors


@pytest.fixture(scope="module")
def two_hosts(docker_client: docker.DockerClient,  # noqa: F811
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoHosts]:
    if os.geteuid() != 0 or not shutil.which("dockerd") or not shutil.which("nsenter"):
        require_docker("a second daemon needs root, dockerd and nsenter")
    try:
        docker_client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        require_docker(f"image {IMAGE} is not on the daemon; build it with `netorch image build`")
    c1 = docker.DockerClient(base_url=URL_1, timeout=300)
    state = c1.info().get("Swarm", {}).get("LocalNodeState")
    if state != "inactive":
        require_docker(f"the main daemon is already in a swarm ({state}); this test makes its own")
    gwbridge_was_there = bool(c1.networks.list(names=["docker_gwbridge"]))
    daemon: subprocess.Popen[bytes] | None = None
    daemon_3: subprocess.Popen[bytes] | None = None
    swarm_ours = False
    try:
        # Leftovers of an interrupted earlier run.
        for ns in (NETNS, NETNS_3, NETNS_SWITCH):
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", VETH_HOST, check=False)
        shutil.rmtree(ROOT_3, ignore_errors=True)
        # One L2 segment, 10.250.0.0/24: a bridge in a namespace of its own (no iptables there)
        # with a veth to this host and one to each daemon's namespace.
        for ns in (NETNS, NETNS_3, NETNS_SWITCH):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", NETNS_SWITCH, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", NETNS_SWITCH, "link", "set", "br0", "up")
        for host, ns, addr in (("h1", None, ADDR_1), ("h2", NETNS, ADDR_2),
                               ("h3", NETNS_3, ADDR_3)):
            end, port = VETHS[host]
            sh("ip", "link", "add", end, "type", "veth", "peer", "name", port)
            sh("ip", "link", "set", port, "netns", NETNS_SWITCH)
            sh("ip", "-n", NETNS_SWITCH, "link", "set", port, "master", "br0")
            sh("ip", "-n", NETNS_SWITCH, "link", "set", port, "up")
            where: tuple[str, ...] = ()
            if ns is not None:
                sh("ip", "link", "set", end, "netns", ns)
                where = ("-n", ns)
            sh("ip", *where, "addr", "add", f"{addr}/24", "dev", end)
            sh("ip", *where, "link", "set", end, "up")
        ROOT.mkdir(parents=True, exist_ok=True)
        pki = openssl_pki(ROOT, ADDR_2)
        daemon = start_daemon_2(pki)
        daemon_3 = start_daemon(NETNS_3, ROOT_3, [])
        c2 = docker.DockerClient(base_url=f"unix://{SOCK_2}", timeout=300)
        c3 = docker.DockerClient(base_url=f"unix://{SOCK_3}", timeout=300)
        swarm_ours = True
        swarm_init(c1, ADDR_1)
        swarm_join(c1, c2, ADDR_2)
        swarm_join(c1, c3, ADDR_3)
        image = c1.images.get(IMAGE).save(named=True)
        archive = ROOT / "image.tar"
        with open(archive, "wb") as f:
            for chunk in image:
                f.write(chunk)
        for client in (c2, c3):
            with open(archive, "rb") as f:
                client.images.load(f)
        archive.unlink()
        toml = tmp_path_factory.mktemp("swarm") / "netorch.toml"
        toml.write_text(
            f'[[hosts]]\nname = "h1"\nurl = "{URL_1}"\n'
            f'[[hosts]]\nname = "h2"\nurl = "{URL_2_TLS}"\ntls_ca = "{pki["ca"]}"\n'
            f'tls_cert = "{pki["client"]}"\ntls_key = "{pki["client_key"]}"\n'
        )
        toml_3 = toml.with_name("netorch-3.toml")
        toml_3.write_text(toml.read_text() + f'[[hosts]]\nname = "h3"\nurl = "unix://{SOCK_3}"\n')
        hosts = TwoHosts(c1, c2, toml, daemon, pki, c3, toml_3)
        yield hosts
        daemon = hosts.daemon  # a test may have stopped and restarted it
        c2.close()
        c3.close()
    finally:
        _teardown(c1, daemon, gwbridge_was_there, swarm_ours, daemon_3)
        c1.close()


def settings_for(hosts: TwoHosts, **bench: Any) -> Any:
    return load_settings(overrides={
        "backend": "docker",
        "hosts": [{"name": "h1", "url": URL_1},
                  {"name": "h2", "url": f"unix://{SOCK_2}"}],
        "cluster": {"nodes": 4, "name": "ntsw", "timeout_s": 60},
        "network": {"subnet": OVERLAY_SUBNET, "mtu": 1450},
        "bench": {"ops": ["all_reduce"], "min_bytes": "1K", "max_bytes": "1M", "iters": 5,
                  "warmup": 1, **bench},
    })


def labelled(client: docker.DockerClient, run_id: str) -> list[str]:
    flt = {"label": f"io.netorch.run={run_id}"}
    return ([c.name for c in client.containers.list(all=True, filters=flt, ignore_removed=True)]
            + [n.name for n in client.networks.list(filters=flt)])


def netorch_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETORCH_")}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "400"})
    return env


# ---- the plan -----------------------------------------------------------------------------


def test_plan_is_an_attachable_overlay(two_hosts: TwoHosts) -> None:
    plan = build_plan(settings_for(two_hosts), "sw-plan", "docker")
    assert plan.network.driver == "overlay" and plan.network.attachable
    assert [n.host for n in plan.nodes] == ["h1", "h2", "h1", "h2"]


# ---- acceptance: 4 ranks over two daemons ---------------------------------------------------


def test_bench_across_two_hosts(two_hosts: TwoHosts, tmp_path: Path) -> None:
    planned = build_plan(settings_for(two_hosts), "sw-x", "docker")
    seen: dict[str, Any] = {}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "bench", "-c", str(two_hosts.toml),
         "--backend", "docker", "--quiet", "-o", str(tmp_path / "runs"),
         "-n", "4", "--subnet", OVERLAY_SUBNET, "--mtu", "1450", "--ops", "all_reduce",
         "-B", "1K", "-E", "1M", "-i", "5", "-w", "1", "--set", "cluster.name=ntsw",
         "--set", "cluster.timeout_s=60"],
        env=netorch_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            found = {name: [c for c in cl.containers.list(
                filters={"label": f"{LABEL_MANAGED}=true", "status": "running"})
                if c.name.startswith("ntsw-")] for name, cl in two_hosts.clients.items()}
            if sum(len(v) for v in found.values()) == 4:
                for host, cs in found.items():
                    for c in cs:
                        nets = c.attrs["NetworkSettings"]["Networks"]
                        seen[c.attrs["Config"]["Hostname"]] = (host, nets)
                return
            time.sleep(0.3)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=200)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    watcher.join(timeout=5)
    assert proc.returncode == 0, out + err
    assert "wrong: 0" in out, out
    run_id = next(p.name for p in (tmp_path / "runs").iterdir())
    import json
    report = json.loads((tmp_path / "runs" / run_id / "report.json").read_text())
    assert report["wrong_total"] == 0
    assert report["network"]["driver"] == "overlay"
    assert {n["host"] for n in report["nodes"]} == {"h1", "h2"}
    for node, plan_node in zip(report["nodes"], planned.nodes):
        assert node["ip"] == plan_node.ip == node["planned_ip"]
        assert node["host"] == plan_node.host
        assert isinstance(node["mtu"], int) and node["mtu"] <= 1450
    assert report["network"]["effective_mtu"] == min(n["mtu"] for n in report["nodes"])
    assert "effective MTU" in out
    if report["network"]["effective_mtu"] != 1450:
        assert any("VXLAN" in w for w in report["warnings"]), report["warnings"]
    # Each node ran where the plan put it, with its planned fixed IP on the overlay.
    assert len(seen) == 4, seen
    for plan_node in planned.nodes:
        host, nets = seen[plan_node.hostname]
        assert host == plan_node.host
        [net] = nets.values()
        assert net["IPAMConfig"]["IPv4Address"] == plan_node.ip
    for host, client in two_hosts.clients.items():
        assert labelled(client, run_id) == [], f"left on {host}"


# ---- fail fast across hosts ----------------------------------------------------------------


def test_kill_on_second_host_brings_the_job_down(two_hosts: TwoHosts, tmp_path: Path) -> None:
    settings = settings_for(two_hosts, max_bytes="64M", iters=200)
    plan = build_plan(settings, "sw-kill", "docker")
    backend = MultiHostDockerBackend(two_hosts.clients)
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            run_session(backend, plan, tmp_path, timeout_s=150)
        except BaseException as e:  # noqa: BLE001  (handed to the test thread)
            box["error"] = e
        box["ended"] = time.monotonic()

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    victim_spec = plan.nodes[3]  # worker-3, placed on h2
    assert victim_spec.host == "h2"
    deadline = time.monotonic() + 90
    victim = None
    while time.monotonic() < deadline and runner.is_alive():
        try:
            victim = two_hosts.c2.containers.get(victim_spec.name)
            code, outb = victim.exec_run(["cat", "/sys/class/net/eth0/statistics/rx_bytes"])
            if victim.status == "running" and code == 0 and int(outb.strip() or 0) > 2_000_000:
                break
        except docker.errors.NotFound:
            pass
        time.sleep(0.5)
    else:
        runner.join(timeout=60)
        raise AssertionError(f"the sweep never got under way: {box}")
    killed = time.monotonic()
    assert victim is not None
    victim.kill()
    runner.join(timeout=60)
    assert not runner.is_alive(), "the job did not come down after the kill"
    assert box["ended"] - killed < 20, f"took {box['ended'] - killed:.1f} s to come down"
    error = box.get("error")
    assert isinstance(error, RankFailedError), repr(error)
    assert error.node == victim_spec.name
    assert "on host h2" in error.diagnosis(), error.diagnosis()
    for host, client in two_hosts.clients.items():
        assert labelled(client, plan.run_id) == [], f"left on {host}"


# ---- preflight: a host outside the swarm -----------------------------------------------------


def test_preflight_names_a_host_outside_the_swarm(two_hosts: TwoHosts) -> None:
    plan = build_plan(settings_for(two_hosts), "sw-pre", "docker")

    class NotInSwarm:
        """h2 as a daemon that left the swarm (without making the real one leave)."""

        def __init__(self, real: Any) -> None:
            self._real = real

        def __getattr__(self, name: str) -> Any:
            return getattr(self._real, name)

        def info(self) -> dict[str, Any]:
            info = dict(self._real.info())
            info["Swarm"] = {"LocalNodeState": "inactive"}
            return info

    backend = MultiHostDockerBackend({"h1": two_hosts.c1, "h2": NotInSwarm(two_hosts.c2)})
    with pytest.raises(PreflightError, match=r"h2 are not in a swarm.*netorch swarm init"):
        backend.preflight(plan)
    MultiHostDockerBackend(two_hosts.clients).preflight(plan)  # the real pair passes


def _cli(*args: str, timeout: float = 200) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=netorch_env(),
                          capture_output=True, text=True, timeout=timeout)


BENCH_ARGS = ("--backend", "docker", "--quiet", "--subnet", OVERLAY_SUBNET,
              "--mtu", "1450", "--ops", "all_reduce", "-w", "1",
              "--set", "cluster.name=ntsw", "--set", "cluster.timeout_s=60")


def _ntsw_resources(client: docker.DockerClient) -> list[str]:
    flt = {"label": f"{LABEL_MANAGED}=true"}
    return ([c.name for c in client.containers.list(all=True, filters=flt, ignore_removed=True)
             if c.name.startswith(PREFIX)]
            + [n.name for n in client.networks.list(filters=flt) if n.name.startswith(PREFIX)])


# ---- three hosts ----------------------------------------------------------------------------


def test_bench_across_three_hosts(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """6 nodes, 2 per host (h1 local, h2 over TLS, h3), every one on its planned overlay IP."""
    runs = tmp_path / "runs"
    done = _cli("bench", "-c", str(two_hosts.toml_3), *BENCH_ARGS, "-n", "6", "-B", "1K",
                "-E", "1M", "-i", "5", "-o", str(runs), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wrong: 0" in done.stdout, done.stdout
    [run_dir] = runs.iterdir()
    import json
    report = json.loads((run_dir / "report.json").read_text())
    assert report["wrong_total"] == 0 and report["nnodes"] == 6
    planned = build_plan(load_settings(config=two_hosts.toml_3, overrides={
        "backend": "docker", "cluster": {"nodes": 6, "name": "ntsw"},
        "network": {"subnet": OVERLAY_SUBNET, "mtu": 1450}}), report["run_id"], "docker")
    assert [n.host for n in planned.nodes] == ["h1", "h2", "h3"] * 2
    for node, plan_node in zip(report["nodes"], planned.nodes):
        assert node["host"] == plan_node.host
        assert node["ip"] == node["planned_ip"] == plan_node.ip
    for host, client in two_hosts.all_clients.items():
        assert labelled(client, report["run_id"]) == [], f"left on {host}"


# ---- a tcp:// host with TLS ----------------------------------------------------------------
# test_bench_across_two_hosts above already reaches h2 over tcp:// with TLS (the module's toml).


def test_a_tls_host_with_a_wrong_ca_is_refused_and_nothing_is_created(
        two_hosts: TwoHosts, tmp_path: Path) -> None:
    toml = tmp_path / "wrong-ca.toml"
    toml.write_text(two_hosts.toml.read_text().replace(
        str(two_hosts.pki["ca"]), str(two_hosts.pki["wrong_ca"])))
    assert str(two_hosts.pki["wrong_ca"]) in toml.read_text()
    done = _cli("bench", "-c", str(toml), *BENCH_ARGS, "-n", "4", "-B", "1K", "-E", "1K", "-i", "1",
                "-o", str(tmp_path / "runs"))
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert "host h2" in line and f"TLS verification of the daemon at {URL_2_TLS} failed" in line
    assert f"tls_ca {two_hosts.pki['wrong_ca']}" in line
    for host, client in two_hosts.clients.items():
        assert _ntsw_resources(client) == [], f"left on {host}"


def test_doctor_across_three_hosts(two_hosts: TwoHosts) -> None:
    """The plan's sleeping nodes on h1, h2 (TLS) and h3, probed over the overlay: every node
    reaches every other at its planned address, the path carries the overlay's MTU (1500
    requested: 1450 inside, VXLAN's 50 bytes off), and nothing is left afterwards."""
    import json

    done = _cli("doctor", "-c", str(two_hosts.toml_3), "--json", "-n", "3", "--mtu", "1500",
                "--subnet", OVERLAY_SUBNET, "--set", "cluster.name=ntsw", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "on 3 hosts" in done.stderr
    checks = json.loads(done.stdout)
    assert [c["status"] for c in checks if c["status"] == "fail"] == []
    reach = {c["target"]: c for c in checks if c["name"] == "reachability"}
    assert sorted(reach) == ["master", "worker-1", "worker-2"]
    for target, check in reach.items():
        assert check["status"] == "pass" and "UNREACHABLE" not in check["detail"]
        others = {"master", "worker-1", "worker-2"} - {target}
        assert all(f"{o} " in check["detail"] for o in others), check["detail"]
    assert any(c["name"] == "nodes up" and c["detail"] == "3 containers running" for c in checks)
    mtus = [c for c in checks if c["name"] == "effective MTU"]
    assert len(mtus) == 3 and all(c["detail"] == "eth0 MTU 1450, network requests 1450"
                                  for c in mtus), mtus
    assert len([c for c in checks if c["name"] == "path MTU" and c["status"] == "pass"]) == 3
    for host, client in two_hosts.all_clients.items():
        assert _ntsw_resources(client) == [], f"left on {host}"


def test_sweep_across_two_hosts(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """One MTU, one run, over h1 and h2 (TLS): fresh containers on both hosts, probes between
    them, and the overlay's VXLAN cost reported as the MTU the run did not get."""
    import json

    out = tmp_path / "sweeps"
    done = _cli("sweep", "-c", str(two_hosts.toml), "--mtu", "1450", "--repeats", "1",
                "-n", "2", "--subnet", OVERLAY_SUBNET, "--ops", "all_reduce", "-B", "1K",
                "-E", "64K", "-i", "3", "-w", "1", "--tcp-seconds", "1", "--quiet",
                "--set", "cluster.name=ntsw", "--set", "cluster.timeout_s=60", "-o", str(out),
                timeout=300)
    assert "sweep across 2 hosts: every run starts fresh containers" in done.stderr, done.stderr
    # Exit 4: the run measured eth0 at 1400, not the 1450 asked for (VXLAN took 50 bytes).
    assert done.returncode == 4, done.stdout + done.stderr
    assert "effective MTU 1400 on eth0, requested 1450" in done.stdout, done.stdout
    [report_path] = out.glob("sweep-*/*/report.json")
    report = json.loads(report_path.read_text())
    assert report["wrong_total"] == 0
    assert [n["host"] for n in report["nodes"]] == ["h1", "h2"]
    assert [n["ip"] for n in report["nodes"]] == [n["planned_ip"] for n in report["nodes"]]
    for host, client in two_hosts.clients.items():
        assert _ntsw_resources(client) == [], f"left on {host}"


# ---- gang restart across hosts ----------------------------------------------------------------


def _train(out: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "train", "--backend", "docker", "-n", "2",
         "--output", str(out), "--steps", "200", "--checkpoint-every", "50", "--seed", "11",
         "--width", "128", "--quiet", "--set", "metrics.enabled=false",
         "--set", "cluster.name=ntsw", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=netorch_env(),
    )


def _train_report(out: Path) -> dict[str, Any]:
    import json

    (run,) = [d for d in out.iterdir() if not d.name.startswith("_")]
    report: dict[str, Any] = json.loads((run / "report.json").read_text())
    return report


def test_gang_restart_across_hosts_resumes_bit_identical(
        two_hosts: TwoHosts, tmp_path: Path) -> None:
    """kill -9 of the worker on h2 (reached over TLS) after the first checkpoint: the gang on
    both hosts restarts from the master's checkpoint and ends with the weights of an
    uninterrupted run (same seed, same world size, on this host alone)."""
    baseline = _train(tmp_path / "base", "--subnet", "10.252.8.0/24")
    out, _ = baseline.communicate(timeout=600)
    assert baseline.returncode == 0, out
    expected = _train_report(tmp_path / "base")

    runs = tmp_path / "killed"
    proc = _train(runs, "-c", str(two_hosts.toml), "--subnet", OVERLAY_SUBNET, "--mtu", "1450")
    out = kill_worker_after_first_checkpoint(proc, runs, lambda: [
        c for c in two_hosts.c2.containers.list(filters={"label": "io.netorch.role=worker"})
        if c.name.startswith(PREFIX)], " on h2")
    assert proc.returncode == 0, out
    r = _train_report(runs)
    assert r["restarts"] == 1 and r["ok"], out
    assert "on host h2" in r["failures"][0], r["failures"]
    assert isinstance(r["resumed_from"], int) and r["resumed_from"] >= 50
    assert r["steps_done"] == 200
    assert r["weights_sha256"] == expected["weights_sha256"]
    assert r["loss_curve"] == expected["loss_curve"]
    assert {n["host"] for n in r["nodes"]} == {"h1", "h2"}
    for host, client in two_hosts.clients.items():
        assert labelled(client, r["run_id"]) == [], f"left on {host}"


# ---- a host lost mid-run (keep last: it stops and restarts h2's daemon) ----------------------


def test_a_lost_host_brings_the_job_down_naming_it_and_down_cleans_it_when_back(
        two_hosts: TwoHosts, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "bench", "-c", str(two_hosts.toml),
         *BENCH_ARGS, "-n", "4", "-B", "1M", "-E", "64M", "-i", "200",
         "-o", str(tmp_path / "runs")],
        env=netorch_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            running = [c for c in two_hosts.c2.containers.list(
                filters={"label": f"{LABEL_MANAGED}=true", "status": "running"})
                if c.name.startswith(PREFIX)]
            if len(running) == 2:  # worker-1 and worker-3 live on h2
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"the job never ran on h2: {proc.poll()} {proc.stderr}")
        run_id = running[0].labels["io.netorch.run"]
        time.sleep(3)  # under way: past the rendezvous
        assert proc.poll() is None, "the job ended before h2 was lost"
        stop_daemon_2(two_hosts.daemon)
        lost_at = time.monotonic()
        out, err = proc.communicate(timeout=120)
        ended = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if two_hosts.daemon.poll() is not None:
            two_hosts.daemon = start_daemon_2(two_hosts.pki)
    assert proc.returncode == 3, out + err
    [line] = [ln for ln in err.splitlines() if ln.startswith("error:")]
    # dockerd stops its containers before it stops answering, so netorch sees either a node
    # killed by SIGTERM on h2 or (when the API went first) the node lost with its host.
    assert re.search(r"worker-[13] failed: (killed by SIGTERM \(exit 143\) on host h2"
                     r"|lost with host h2: the Docker daemon there stopped answering)", line), err
    # The teardown could not finish (h2 gone, or the overlay still in use by h2's tasks): says so.
    assert f"netorch down --run {run_id}" in err, err
    # "Within seconds": dockerd's own shutdown (it stops its containers first) is most of it.
    assert ended - lost_at < 60, f"took {ended - lost_at:.1f} s to come down"
    # h2 is back (same data-root): what the run left there is still labelled, and down removes it.
    deadline = time.monotonic() + 60
    while True:
        done = _cli("down", "-c", str(two_hosts.toml), "--run", run_id, timeout=120)
        if done.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)  # h2 may still be rejoining the swarm
    assert done.returncode == 0, done.stdout + done.stderr
    for host, client in two_hosts.clients.items():
        assert labelled(client, run_id) == [], f"left on {host}"
