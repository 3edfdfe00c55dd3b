"""The compose renderer: field-by-field equality with the plan, the committed example, and (docker
tier) docker-compose 1.29 itself: ``config`` accepts the file, ``up --no-start`` creates what the plan
says (checked through ``docker inspect``), and ``up`` runs the benchmark to a correct result. A
user's job (``render compose ... -- COMMAND``) renders with its image, working directory, mounts
and env, and ``up`` runs the example project."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.errors import PlanError
from orchestrator.plan import LABEL_RUN, ClusterPlan, build_plan
from orchestrator.render.compose import (
    BRIDGE_NAME_OPTION,
    COMPOSE_FILE_NAME,
    MTU_OPTION,
    compose_header,
    compose_project,
    dump_compose,
    render_compose,
    service_name,
    write_compose,
)
from orchestrator.settings import load_settings
from orchestrator.userjob import run_workload
from train.results import decode_result_lines

from docker_fixtures import require_docker

pytestmark = pytest.mark.usefixtures("isolated")

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "compose" / COMPOSE_FILE_NAME
EXAMPLE_RUN_ID = "example"
RUN = "20261128-120000-abcd"
USER_EXAMPLE = REPO / "examples" / "ddp-user-project"



def make_plan(run_id: str = RUN, **overrides: Any) -> ClusterPlan:
    return build_plan(load_settings(overrides=overrides), run_id, "docker")


def make_run_plan(base: Path, run_id: str = RUN, **overrides: Any) -> ClusterPlan:
    """The plan of a user's job (``netorch run`` / ``render ... -- COMMAND``); relative host
    paths in ``overrides["run"]`` resolve against ``base``."""
    settings = load_settings(overrides=overrides)
    return build_plan(settings, run_id, "docker", run_workload(settings, base, in_node_paths=True))


# --- unit tier ---------------------------------------------------------------------------------


def test_network_equals_plan() -> None:
    plan = make_plan(network={"subnet": "10.10.0.0/24", "ip_range": "10.10.0.128/25", "mtu": 9000,
                              "gateway": "10.10.0.254", "bridge_name": "ntbr0"})
    doc = render_compose(plan)
    net = plan.network
    assert doc["version"] == "2.4"
    assert list(doc["networks"]) == [net.name]
    out = doc["networks"][net.name]
    assert out["name"] == net.name == f"netorch-{RUN}-net"
    assert out["driver"] == "bridge"
    assert out["internal"] is True is net.internal
    assert out["driver_opts"] == {MTU_OPTION: "9000", BRIDGE_NAME_OPTION: "ntbr0"}
    assert isinstance(out["driver_opts"][MTU_OPTION], str)  # compose's schema: strings only
    assert out["ipam"] == {
        "driver": "default",
        "config": [{"subnet": "10.10.0.0/24", "gateway": "10.10.0.254", "ip_range": "10.10.0.128/25"}],
    }
    assert out["labels"] == dict(net.labels) == {LABEL_RUN: RUN, "io.netorch.managed": "true"}


def test_network_optional_keys_absent_when_unset() -> None:
    plan = make_plan(network={"subnet": "10.11.0.0/24", "internal": False})
    out = render_compose(plan)["networks"][plan.network.name]
    assert out["internal"] is False
    assert out["driver_opts"] == {MTU_OPTION: "1500"}  # the plan always carries an MTU
    assert out["ipam"]["config"] == [{"subnet": "10.11.0.0/24", "gateway": "10.11.0.1"}]


def test_every_service_equals_its_node() -> None:
    plan = make_plan(cluster={"nodes": 4, "procs_per_node": 2},
                     network={"subnet": "10.12.0.0/24"}, docker={"shm_size": "2g"},
                     env={"NCCL_DEBUG": "INFO"})
    doc = render_compose(plan)
    assert list(doc["services"]) == ["master", "worker-1", "worker-2", "worker-3"]
    net = plan.network.name
    for node in plan.nodes:
        svc = doc["services"][service_name(plan, node)]
        assert svc["image"] == plan.runtime.image == "netorch:latest"
        assert svc["container_name"] == node.name
        assert svc["hostname"] == node.hostname
        assert svc["networks"] == {net: {"ipv4_address": node.ip, "aliases": list(node.aliases)}}
        # Same variables, same values, same order as the plan (user env last).
        assert list(svc["environment"].items()) == list(node.env)
        assert list(svc["environment"])[-1] == "NCCL_DEBUG"
        assert svc["command"] == list(node.command)
        assert svc["labels"] == dict(node.labels)
        assert svc["shm_size"] == "2g"
        assert svc["init"] is True
        assert svc["stop_grace_period"] == f"{plan.runtime.stop_timeout_s}s"
        assert svc["restart"] == "no"
        assert "ipc" not in svc and "ulimits" not in svc and "deploy" not in svc
        assert "depends_on" not in svc
    assert doc["services"]["master"]["networks"][net]["ipv4_address"] == plan.master_addr
    ips = [s["networks"][net]["ipv4_address"] for s in doc["services"].values()]
    assert len(set(ips)) == 4


def test_gpu_count_reservation() -> None:
    plan = make_plan(network={"subnet": "10.13.0.0/24"}, gpu={"per_node": 2})
    for node in plan.nodes:
        svc = render_compose(plan)["services"][service_name(plan, node)]
        assert svc["deploy"] == {"resources": {"reservations": {"devices": [
            {"driver": "nvidia", "count": 2, "capabilities": ["gpu", "compute", "utility"]},
        ]}}}


def test_gpu_device_ids_reservation() -> None:
    plan = make_plan(network={"subnet": "10.14.0.0/24"},
                     gpu={"device_ids": [["0", "1"], ["GPU-abc"]], "capabilities": ["gpu"]})
    services = render_compose(plan)["services"]
    assert services["master"]["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "device_ids": ["0", "1"], "capabilities": ["gpu"]}]
    assert services["worker-1"]["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "device_ids": ["GPU-abc"], "capabilities": ["gpu"]}]


@pytest.mark.parametrize("memlock", [None, -1, 8 << 20])
def test_memlock_only_when_set(memlock: int | None) -> None:
    plan = make_plan(network={"subnet": "10.15.0.0/24"}, docker={"memlock": memlock})
    for svc in render_compose(plan)["services"].values():
        if memlock is None:
            assert "ulimits" not in svc
        else:
            assert svc["ulimits"] == {"memlock": {"soft": memlock, "hard": memlock}}


def test_ipc_mode_when_set() -> None:
    plan = make_plan(network={"subnet": "10.16.0.0/24"}, docker={"ipc_mode": "host"})
    assert all(s["ipc"] == "host" for s in render_compose(plan)["services"].values())


def test_dollar_is_escaped_for_compose_interpolation() -> None:
    plan = make_plan(network={"subnet": "10.17.0.0/24"}, env={"NETORCH_USER_X": "a$b${HOME}"})
    env = render_compose(plan)["services"]["master"]["environment"]
    assert env["NETORCH_USER_X"] == "a$$b$${HOME}"


def test_process_plan_is_refused() -> None:
    plan = build_plan(load_settings(), RUN, "process")
    with pytest.raises(PlanError, match="docker backend"):
        render_compose(plan)


def test_pure_and_stable() -> None:
    plan = make_plan(network={"subnet": "10.18.0.0/24"})
    before = plan.to_dict()
    a, b = render_compose(plan), render_compose(plan)
    assert a == b
    assert plan.to_dict() == before
    assert dump_compose(plan) == dump_compose(plan)
    assert list(a["services"]["master"])[:4] == ["image", "container_name", "hostname", "init"]


def test_written_file_parses_back_and_has_header(tmp_path: Path) -> None:
    plan = make_plan(network={"subnet": "10.19.0.0/24"}, gpu={"per_node": 1},
                     docker={"memlock": -1})
    path = write_compose(plan, tmp_path / "out")
    assert path == tmp_path / "out" / "docker-compose.yml"
    text = path.read_text()
    assert yaml.safe_load(text) == render_compose(plan)
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert text.startswith("# Generated by netorch from run id " + RUN)
    assert any(f"-p {compose_project(plan)}" in line and line.endswith(" up -d")
               for line in header)
    assert any(f"docker wait {plan.master.name}" in line for line in header)
    assert any("depends_on" in line for line in header)
    assert not any("[network.link]" in line for line in header)
    shaped = make_plan(network={"subnet": "10.19.0.0/24",
                                "link": {"nodes": {"worker-1": {"rate": "1gbit"}}}})
    assert "# [network.link] is not in this file" in compose_header(shaped)


def test_cli_render_compose(tmp_path: Path) -> None:
    from orchestrator.cli import app

    result = CliRunner().invoke(app, [
        "render", "compose", "-o", str(tmp_path / "c"), "--run-id", "cli-test", "-n", "3",
        "--subnet", "10.20.0.0/24", "--mtu", "9000", "-E", "4M", "--set", "network.internal=false",
    ])
    assert result.exit_code == 0, result.output
    path = tmp_path / "c" / COMPOSE_FILE_NAME
    assert str(path) in result.output
    expected = build_plan(load_settings(overrides={
        "cluster": {"nodes": 3}, "network": {"subnet": "10.20.0.0/24", "mtu": 9000,
                                             "internal": False},
        "bench": {"max_bytes": "4M"}}), "cli-test", "docker")
    assert path.read_text() == dump_compose(expected)


def test_cli_render_compose_bad_input_is_one_line(tmp_path: Path) -> None:
    from orchestrator.cli import app

    result = CliRunner().invoke(app, ["render", "compose", "-o", str(tmp_path), "--mtu", "100"])
    assert result.exit_code != 0
    assert "mtu" in result.output and "Traceback" not in result.output


# --- unit tier: a user's job ---------------------------------------------------------------------


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A user's folder: code/, data/, and a directory whose name has compose's "$" and a space."""
    for sub in ("code", "data", "we$ird dir"):
        (tmp_path / sub).mkdir()
    return tmp_path


def test_run_job_services(project: Path) -> None:
    plan = make_run_plan(
        project, cluster={"nodes": 3}, network={"subnet": "10.21.0.0/24"},
        run={"command": ["python", "train.py", "--rank", "{node_rank}", "--of", "{nnodes}",
                         "--ckpt", "{checkpoint_dir}"],
             "image": "my/ddp:1.0", "workdir": "code", "checkpoint_dir": "ck",
             "mounts": ["./data:/data:ro", "./we$ird dir:/odd", "cache:/cache"],
             "env": {"MY_SETTING": "a=b c", "PRICE": "5$"}})
    doc = render_compose(plan)
    assert plan.emits_result is False and plan.workdir == "/workspace"
    for rank, node in enumerate(plan.nodes):
        svc = doc["services"][service_name(plan, node)]
        assert svc["image"] == "my/ddp:1.0" == plan.runtime.image
        assert svc["working_dir"] == "/workspace"
        # The plan expanded the placeholders per node; the file carries each node's own argv.
        assert svc["command"] == list(node.command)
        assert svc["command"][-6:] == ["--rank", str(rank), "--of", "3", "--ckpt", "/checkpoints"]
        env = svc["environment"]
        assert list(env)[-2:] == ["MY_SETTING", "PRICE"]
        assert env["MY_SETTING"] == "a=b c" and env["PRICE"] == "5$$"
        assert env["NETORCH_CHECKPOINT_DIR"] == "/checkpoints"
        assert svc["volumes"] == [
            {"type": "bind", "source": str(project / "code"), "target": "/workspace",
             "read_only": True},
            {"type": "bind", "source": str(project / "ck"), "target": "/checkpoints",
             "read_only": False},
            {"type": "bind", "source": str(project / "data"), "target": "/data",
             "read_only": True},
            {"type": "bind", "source": str(project / "we$$ird dir"), "target": "/odd",
             "read_only": False},
            {"type": "volume", "source": "cache", "target": "/cache", "read_only": False},
        ]
    assert doc["services"]["master"]["command"] != doc["services"]["worker-1"]["command"]
    # Declared under its own name and external: compose neither prefixes the project name nor
    # deletes the user's volume on `down -v`.
    assert doc["volumes"] == {"cache": {"name": "cache", "external": True}}
    assert list(doc) == ["version", "services", "networks", "volumes"]


def test_one_volume_mounted_twice_is_declared_once(project: Path) -> None:
    plan = make_run_plan(project, network={"subnet": "10.22.0.0/24"},
                         run={"command": ["python", "x.py"],
                              "mounts": ["shared:/a", "shared:/b:ro", "other.v_1:/c"]})
    doc = render_compose(plan)
    assert doc["volumes"] == {"shared": {"name": "shared", "external": True},
                              "other.v_1": {"name": "other.v_1", "external": True}}
    assert [v["read_only"] for v in doc["services"]["master"]["volumes"]] == [False, True, False]


def test_run_job_without_mounts_or_workdir(project: Path) -> None:
    plan = make_run_plan(project, network={"subnet": "10.23.0.0/24"},
                         run={"command": ["python", "-m", "mypkg.train"]})
    doc = render_compose(plan)
    assert "volumes" not in doc
    for svc in doc["services"].values():
        assert "volumes" not in svc and "working_dir" not in svc
        assert svc["image"] == "netorch:latest"
        assert svc["command"][-2:] == ["-m", "mypkg.train"]


def test_bench_has_no_working_dir_or_volumes() -> None:
    doc = render_compose(make_plan(network={"subnet": "10.24.0.0/24"}))
    assert "volumes" not in doc
    assert all("working_dir" not in s and "volumes" not in s for s in doc["services"].values())


def test_run_job_header_says_how_to_read_it(project: Path) -> None:
    plan = make_run_plan(project, network={"subnet": "10.25.0.0/24"},
                         run={"command": ["python", "train.py"], "workdir": "code",
                              "mounts": ["cache:/cache"]})
    text = dump_compose(plan)
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert "@@NETORCH_RESULT@@" not in text  # a user's script prints no result line
    assert "# Run (the master's exit code is the run's; the job's output is in the logs):" in header
    assert (f"#   docker-compose -p {compose_project(plan)} -f docker-compose.yml logs "
            "--no-color master") in header
    assert any("-- COMMAND" in line for line in header)
    assert any(str(project / "code") in line for line in header)
    assert "#   docker volume create cache" in header
    assert yaml.safe_load(text) == render_compose(plan)
    bench = dump_compose(make_plan(network={"subnet": "10.25.0.0/24"}))
    assert "| grep @@NETORCH_RESULT@@" in bench and "docker volume create" not in bench


def test_cli_render_compose_user_job(project: Path) -> None:
    from orchestrator.cli import app

    out = project / "c"
    result = CliRunner().invoke(app, [
        "render", "compose", "-o", str(out), "--run-id", "cli-run", "--nodes", "2",
        "--subnet", "10.26.0.0/24", "--image", "my/ddp:1.0", "--workdir", str(project / "code"),
        "--checkpoint-dir", str(project / "ck"), "-v", f"{project / 'data'}:/data:ro",
        "--env", "MY_SETTING=1", "--", "python", "train.py", "--rank", "{node_rank}",
    ])
    assert result.exit_code == 0, result.output
    expected = make_run_plan(
        project, "cli-run", cluster={"nodes": 2}, network={"subnet": "10.26.0.0/24"},
        run={"command": ["python", "train.py", "--rank", "{node_rank}"], "image": "my/ddp:1.0",
             "workdir": str(project / "code"), "checkpoint_dir": str(project / "ck"),
             "mounts": [f"{project / 'data'}:/data:ro"], "env": {"MY_SETTING": "1"}})
    assert (out / COMPOSE_FILE_NAME).read_text() == dump_compose(expected)
    assert render_compose(expected)["services"]["worker-1"]["command"][-2:] == ["--rank", "1"]


def test_committed_example_is_up_to_date() -> None:
    """compose/docker-compose.yml is the default config rendered with run id "example"."""
    plan = build_plan(load_settings(REPO / "configs" / "default.toml"), EXAMPLE_RUN_ID, "docker")
    assert EXAMPLE.read_text() == dump_compose(plan), (
        "compose/docker-compose.yml is stale; regenerate it with: netorch render compose "
        "-c configs/default.toml --run-id example -o compose"
    )


# --- docker tier -------------------------------------------------------------------------------

COMPOSE_BIN = shutil.which("docker-compose")


@pytest.fixture()
def compose_env(docker_client: Any) -> Any:
    """A daemon, the image and the docker-compose binary; skip (fail in CI) without them."""
    import docker.errors

    if COMPOSE_BIN is None:
        require_docker("docker-compose is not installed (apt-get install docker-compose)")
    try:
        docker_client.images.get("netorch:latest")
    except docker.errors.ImageNotFound:
        require_docker("image netorch:latest is missing; build it with netorch image build")
    return docker_client


def _compose(file: Path, project: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    assert COMPOSE_BIN is not None
    return subprocess.run([COMPOSE_BIN, "-p", project, "-f", str(file), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def _up_and_wait(file: Path, project: str, master: str) -> subprocess.CompletedProcess[str]:
    """What the file's header says: ``up -d``, then wait for the master container; the result's
    returncode is the master's exit code (or compose's, when ``up`` itself failed)."""
    import docker as docker_sdk

    up = _compose(file, project, "up", "-d", timeout=300)
    if up.returncode != 0:
        return up
    client = docker_sdk.from_env(timeout=300)
    try:
        code = int(client.containers.get(master).wait(timeout=300)["StatusCode"])
    finally:
        client.close()
    return subprocess.CompletedProcess(up.args, code, up.stdout, up.stderr)


def _leftovers(client: Any, run_id: str) -> tuple[list[str], list[str]]:
    label = f"{LABEL_RUN}={run_id}"
    return ([c.name for c in client.containers.list(all=True, filters={"label": label})],
            [n.name for n in client.networks.list(filters={"label": label})])


def _sweep(client: Any, run_id: str) -> None:
    """Remove whatever still carries the run label (a failed ``down`` must not leak)."""
    label = f"{LABEL_RUN}={run_id}"
    for c in client.containers.list(all=True, filters={"label": label}):
        c.remove(force=True)
    for n in client.networks.list(filters={"label": label}):
        n.remove()


@pytest.fixture()
def compose_run(compose_env: Any, tmp_path: Path) -> Iterator[Any]:
    """Yields ``start(plan) -> (file, project)``; afterwards ``down -v``, then asserts nothing is
    left with the run label (and sweeps by label, so a failing test leaks nothing either)."""
    started: list[tuple[Path, str, str]] = []

    def start(plan: ClusterPlan) -> tuple[Path, str]:
        file = write_compose(plan, tmp_path / plan.run_id)
        project = compose_project(plan)
        started.append((file, project, plan.run_id))
        return file, project

    yield start
    problems = []
    for file, project, run_id in started:
        down = _compose(file, project, "down", "-v", "--remove-orphans")
        containers, networks = _leftovers(compose_env, run_id)
        _sweep(compose_env, run_id)
        if down.returncode != 0:
            problems.append(f"down failed: {down.stderr[-2000:]}")
        if containers or networks:
            problems.append(f"left after down: containers {containers}, networks {networks}")
    assert not problems, problems


def _run_id() -> str:
    return "nt-" + secrets.token_hex(4)


@pytest.mark.docker
def test_compose_config_accepts_file(compose_run: Any) -> None:
    plan = make_plan(_run_id(), cluster={"nodes": 3}, gpu={"per_node": 1},
                     network={"subnet": "10.204.0.0/24", "ip_range": "10.204.0.64/26"},
                     docker={"memlock": 8 << 20, "ipc_mode": "host"})
    file, project = compose_run(plan)
    result = _compose(file, project, "config")
    assert result.returncode == 0, result.stderr
    seen = yaml.safe_load(result.stdout)  # compose's normalised view of the file
    net = seen["networks"][plan.network.name]
    assert net["ipam"]["config"] == [{"subnet": "10.204.0.0/24", "gateway": "10.204.0.1",
                                      "ip_range": "10.204.0.64/26"}]
    assert net["driver_opts"][MTU_OPTION] == "1500" and net["internal"] is True
    for node in plan.nodes:
        svc = seen["services"][node.hostname]
        assert svc["networks"][plan.network.name]["ipv4_address"] == node.ip
        assert svc["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 1
        assert svc["ulimits"]["memlock"] == {"soft": 8 << 20, "hard": 8 << 20}


@pytest.mark.docker
@pytest.mark.parametrize("gpu,subnet", [
    ({"per_node": 2}, "10.202.0.0/24"),
    ({"device_ids": [["0"], ["1", "2"]]}, "10.203.0.0/24"),
])
def test_compose_creates_what_the_plan_says(compose_run: Any, compose_env: Any,
                                            gpu: dict[str, Any], subnet: str) -> None:
    """``up --no-start`` then ``docker inspect``: docker-compose 1.29 really applies every field
    (GPU requests fail only at start on a host without the nvidia runtime, so create suffices)."""
    bridge = "nt" + secrets.token_hex(4)
    plan = make_plan(_run_id(), gpu=gpu, env={"NETORCH_USER_X": "a$b"},
                     network={"subnet": subnet, "mtu": 1400, "bridge_name": bridge},
                     docker={"memlock": 8 << 20, "shm_size": "256m"})
    file, project = compose_run(plan)
    result = _compose(file, project, "up", "--no-start")
    assert result.returncode == 0, result.stderr

    net = compose_env.networks.get(plan.network.name).attrs
    assert net["IPAM"]["Config"] == [{"Subnet": subnet, "Gateway": plan.network.gateway}]
    assert net["Options"] == {MTU_OPTION: "1400", BRIDGE_NAME_OPTION: bridge}
    assert net["Internal"] is True
    assert net["Labels"][LABEL_RUN] == plan.run_id

    for node in plan.nodes:
        c = compose_env.containers.get(node.name).attrs
        host = c["HostConfig"]
        assert c["Config"]["Hostname"] == node.hostname
        assert c["Config"]["Cmd"] == list(node.command)
        env = c["Config"]["Env"]
        assert env[: len(node.env)] == [f"{k}={v}" for k, v in node.env]  # order kept, "$" literal
        assert "NETORCH_USER_X=a$b" in env
        assert {k: c["Config"]["Labels"][k] for k, _ in node.labels} == dict(node.labels)
        assert host["ShmSize"] == 256 << 20
        assert host["Init"] is True
        assert host["Ulimits"] == [{"Name": "memlock", "Soft": 8 << 20, "Hard": 8 << 20}]
        assert c["Config"]["StopTimeout"] == plan.runtime.stop_timeout_s
        endpoint = c["NetworkSettings"]["Networks"][plan.network.name]
        assert endpoint["IPAMConfig"]["IPv4Address"] == node.ip
        assert set(node.aliases) <= set(endpoint["Aliases"])
        assert node.gpus is not None
        [request] = host["DeviceRequests"]
        assert request["Driver"] == "nvidia"
        assert request["Capabilities"] == [list(node.gpus.capabilities)]
        if node.gpus.device_ids:
            assert request["DeviceIDs"] == list(node.gpus.device_ids)
        else:
            assert request["Count"] == node.gpus.count


@pytest.mark.docker
@pytest.mark.slow
def test_compose_up_runs_the_bench(compose_run: Any) -> None:
    plan = make_plan(_run_id(), cluster={"nodes": 2, "timeout_s": 60},
                     network={"subnet": "10.201.0.0/24"},
                     bench={"ops": ["all_reduce"], "min_bytes": "64K", "max_bytes": "1M",
                            "warmup": 1, "iters": 3})
    file, project = compose_run(plan)
    master = service_name(plan, plan.master)
    up = _up_and_wait(file, project, plan.master.name)
    logs = _compose(file, project, "logs", "--no-color", master)
    assert up.returncode == 0, (up.stdout[-6000:], up.stderr[-3000:], logs.stdout[-3000:])
    doc = decode_result_lines(logs.stdout.splitlines())
    assert doc is not None, logs.stdout[-3000:]
    assert doc["run_id"] == plan.run_id
    assert doc["world_size"] == 2
    assert doc["wrong_total"] == 0
    sizes = sorted({row["size_bytes"] for row in doc["results"]})
    assert sizes == [64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20]


@pytest.mark.docker
def test_netorch_down_removes_a_compose_run(compose_run: Any, compose_env: Any) -> None:
    """The plan's labels travel with the compose file, so ``netorch down --run`` cleans up too."""
    from orchestrator.cli import app

    plan = make_plan(_run_id(), network={"subnet": "10.208.0.0/24"})
    file, project = compose_run(plan)
    result = _compose(file, project, "up", "--no-start")
    assert result.returncode == 0, result.stderr
    containers, networks = _leftovers(compose_env, plan.run_id)
    assert sorted(containers) == sorted(n.name for n in plan.nodes)
    assert networks == [plan.network.name]
    down = CliRunner().invoke(app, ["down", "--run", plan.run_id])
    assert down.exit_code == 0, down.output
    assert _leftovers(compose_env, plan.run_id) == ([], [])


def _make_example_data(folder: Path) -> Path:
    data = folder / "data"
    subprocess.run([sys.executable, str(USER_EXAMPLE / "make_data.py"), str(data)], check=True,
                   capture_output=True, timeout=120)
    return data


@pytest.mark.docker
@pytest.mark.slow
def test_compose_up_runs_the_user_example(compose_env: Any, tmp_path: Path) -> None:
    """The issue's acceptance: ``render compose ... -- python train.py`` writes a file that runs
    the example project under docker-compose 1.29 unchanged, and ``down -v`` leaves nothing."""
    from orchestrator.cli import app

    run_id = _run_id()
    data, ckpt, out = _make_example_data(tmp_path), tmp_path / "ck", tmp_path / "out"
    rendered = CliRunner().invoke(app, [
        "render", "compose", "-o", str(out), "--run-id", run_id, "--nodes", "2",
        "--subnet", "10.79.0.0/24", "--workdir", str(USER_EXAMPLE), "--checkpoint-dir", str(ckpt),
        "-v", f"{data}:/data:ro", "--", "python", "train.py", "--steps", "60",
        "--checkpoint-every", "30",
    ])
    assert rendered.exit_code == 0, rendered.output
    file = out / COMPOSE_FILE_NAME
    project = f"netorch-{run_id}"
    try:
        config = _compose(file, project, "config")
        assert config.returncode == 0, config.stderr
        up = _up_and_wait(file, project, f"netorch-{run_id}-master")
        logs = _compose(file, project, "logs", "--no-color", "master")
        assert up.returncode == 0, (up.stdout[-6000:], up.stderr[-3000:], logs.stdout[-3000:])
        assert "world_size=2 master_addr=10.79.0.2 master_port=29500 rank=0" in logs.stdout
        assert logs.stdout.rstrip().endswith("done"), logs.stdout[-3000:]
        assert sorted(p.name for p in ckpt.iterdir()) == ["ckpt-00000030.pt", "ckpt-00000060.pt"]
        master = compose_env.containers.get(f"netorch-{run_id}-master").attrs
        assert master["Config"]["WorkingDir"] == "/workspace"
        mounts = {m["Destination"]: (m["Type"], m["Source"], m["RW"]) for m in master["Mounts"]}
        assert mounts["/workspace"] == ("bind", str(USER_EXAMPLE), False)
        assert mounts["/data"] == ("bind", str(data), False)
        assert mounts["/checkpoints"] == ("bind", str(ckpt), True)
    finally:
        down = _compose(file, project, "down", "-v", "--remove-orphans")
        left = _leftovers(compose_env, run_id)
        _sweep(compose_env, run_id)
    assert down.returncode == 0, down.stderr[-2000:]
    assert left == ([], [])
    gone = CliRunner().invoke(app, ["down", "--run", run_id])
    assert gone.exit_code == 0, gone.output
    assert "0 resource(s)" in gone.output


@pytest.mark.docker
def test_beside_a_management_network_master_resolves_to_the_fabric(
        compose_run: Any, compose_env: Any, project: Path) -> None:
    """docker-compose 1.29 makes a service key a DNS name on every network the service joins:
    keyed by container name, "master" is the fabric's alias alone, on every node."""
    from test_faults import free_test_subnet

    fabric = free_test_subnet(compose_env)
    mgmt = free_test_subnet(compose_env)
    while mgmt == fabric:
        mgmt = free_test_subnet(compose_env)
    probe = ("import socket; print('master is', sorted({a[4][0] for a in "
             "socket.getaddrinfo('master', None)}), flush=True)")
    plan = make_run_plan(project, _run_id(), cluster={"nodes": 2},
                         network={"subnet": fabric, "management": {"subnet": mgmt}},
                         run={"command": ["python", "-c", probe]})
    file, project_name = compose_run(plan)
    up = _up_and_wait(file, project_name, plan.master.name)
    for node in plan.nodes:
        logs = _compose(file, project_name, "logs", "--no-color", service_name(plan, node))
        assert up.returncode == 0, (up.stderr[-3000:], logs.stdout[-3000:])
        assert f"master is ['{plan.master.ip}']" in logs.stdout, logs.stdout[-3000:]
