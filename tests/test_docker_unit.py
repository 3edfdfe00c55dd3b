"""Docker backend, unit tier: no daemon. Plan -> SDK arguments field by field, error translation
against a fake client, log line splitting, exit publication."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests

from orchestrator.backends.docker import (
    BRIDGE_NAME_OPTION,
    MTU_OPTION,
    DockerBackend,
    DockerNode,
    LineSplitter,
    container_create_kwargs,
    device_requests,
    down_all,
    host_routes,
    network_create_kwargs,
    parse_docker_time,
    run_filters,
    translate_error,
)
from orchestrator.errors import (
    BackendError,
    ConfigError,
    DaemonUnavailableError,
    ImageError,
    NetworkConflictError,
    PreflightError,
)
from orchestrator.backends.docker import kwargs as kwargs_module
from orchestrator.backends.docker.kwargs import (
    FALLBACK_USER,
    ROOT_USER,
    container_user,
    netorch_mount_sources,
)
from orchestrator.plan import (
    LABEL_MANAGED,
    LABEL_RUN,
    ClusterPlan,
    GpuSpec,
    MountSpec,
    build_plan,
)
from orchestrator.settings import load_settings

pytestmark = pytest.mark.usefixtures("isolated")

RUN = "20261128-120000-beef"
API = "1.41"



def make_plan(**overrides: Any) -> ClusterPlan:
    overrides.setdefault("network", {"subnet": "10.233.0.0/24"})
    return build_plan(load_settings(overrides=overrides), RUN, "docker")


def api_error(status: int, explanation: str, cls: type[docker.errors.APIError] = docker.errors.APIError) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return cls(f"{status} error", response=response, explanation=explanation)


# ---- plan -> SDK arguments ------------------------------------------------------------------


def test_network_kwargs_field_by_field() -> None:
    plan = make_plan(network={"subnet": "10.233.0.0/24", "gateway": "10.233.0.254",
                              "ip_range": "10.233.0.128/25", "mtu": 9000, "internal": False,
                              "bridge_name": "ntbr9"})
    kw = network_create_kwargs(plan)
    assert kw["name"] == plan.network.name
    assert kw["driver"] == "bridge"
    assert kw["options"] == {MTU_OPTION: "9000", BRIDGE_NAME_OPTION: "ntbr9"}
    assert kw["internal"] is False
    assert kw["check_duplicate"] is True
    assert kw["labels"] == {LABEL_RUN: RUN, LABEL_MANAGED: "true"}
    assert kw["ipam"]["Driver"] == "default"
    assert kw["ipam"]["Config"] == [
        {"Subnet": "10.233.0.0/24", "Gateway": "10.233.0.254", "IPRange": "10.233.0.128/25",
         "AuxiliaryAddresses": None}
    ]


def test_network_kwargs_without_bridge_name() -> None:
    kw = network_create_kwargs(make_plan())
    assert BRIDGE_NAME_OPTION not in kw["options"]
    assert kw["internal"] is True  # training needs no route out


def test_cpu_container_kwargs_field_by_field() -> None:
    plan = make_plan(cluster={"nodes": 3})
    node = plan.nodes[2]
    kw = container_create_kwargs(plan, node, "netid123", API, user="1234:5678")
    assert kw["image"] == "netorch:latest"
    assert kw["command"] == list(node.command)
    assert kw["name"] == node.name
    assert kw["hostname"] == "worker-2"
    assert kw["user"] == "1234:5678"
    # A uid the image does not know gets a writable HOME (Docker would say HOME=/).
    assert kw["environment"] == {**node.env_dict, "HOME": "/tmp"}
    assert kw["labels"] == node.labels_dict
    assert kw["init"] is True
    assert kw["shm_size"] == "1g"
    assert kw["detach"] is True
    # The networking_config key must equal network= or the SDK drops the fixed IP.
    assert kw["network"] == "netid123"
    assert list(kw["networking_config"]) == ["netid123"]
    endpoint = kw["networking_config"]["netid123"]
    assert endpoint["IPAMConfig"] == {"IPv4Address": "10.233.0.4"}
    assert endpoint["Aliases"] == ["worker-2", node.name]
    for absent in ("ulimits", "device_requests", "ipc_mode"):
        assert absent not in kw


@pytest.mark.parametrize(
    ("setting", "uid", "gid", "environ", "expected"),
    [
        (None, 1001, 1002, {}, "1001:1002"),        # the invoking user
        (None, 0, 0, {}, FALLBACK_USER),             # root (CI): never root in the container
        (None, 0, 0, {"SUDO_UID": "1003", "SUDO_GID": "1004"}, "1003:1004"),  # sudo's caller
        (None, 0, 0, {"SUDO_UID": "0", "SUDO_GID": "0"}, FALLBACK_USER),
        ("2000:2001", 0, 0, {}, "2000:2001"),        # docker.user wins
        ("root", 1001, 1002, {}, ROOT_USER),         # the opt-out
    ],
)
def test_container_user(setting: str | None, uid: int, gid: int, environ: dict[str, str],
                        expected: str) -> None:
    assert container_user(setting, uid, gid, environ) == expected


def test_invoking_user_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = make_plan()
    monkeypatch.setattr(kwargs_module.os, "getuid", lambda: 4321)
    monkeypatch.setattr(kwargs_module.os, "getgid", lambda: 8765)
    kw = container_create_kwargs(plan, plan.master, "n", API)
    assert kw["user"] == "4321:8765" and kw["environment"]["HOME"] == "/tmp"


def test_root_opt_out_keeps_the_images_home() -> None:
    plan = make_plan()
    kw = container_create_kwargs(plan, plan.master, "n", API, user="root")
    assert kw["user"] == ROOT_USER and "HOME" not in kw["environment"]


def test_a_home_in_the_plan_env_is_kept() -> None:
    plan = make_plan()
    node = dataclasses.replace(plan.master, env=(*plan.master.env, ("HOME", "/data/home")))
    kw = container_create_kwargs(plan, node, "n", API, user="1000:1000")
    assert kw["environment"]["HOME"] == "/data/home"


@pytest.mark.parametrize("bad", ["alice", "1000", "1000:", ":1000", "1000:1000\n", "-1:0"])
def test_docker_user_setting_is_validated(bad: str) -> None:
    with pytest.raises(ConfigError, match="docker.user"):
        load_settings(overrides={"docker": {"user": bad}})


def test_netorch_mount_sources_are_its_own_writable_binds_only() -> None:
    plan = make_plan()
    node = dataclasses.replace(
        plan.master,
        env=(*plan.master.env, ("NETORCH_CHECKPOINT_DIR", "/checkpoints")),
        mounts=(MountSpec("/host/ckpt", "/checkpoints"),
                MountSpec("/host/warm", "/netorch/warm"),
                MountSpec("/host/data", "/data"),                       # the user's own
                MountSpec("/host/ro", "/netorch/ro", read_only=True),
                MountSpec("vol", "/netorch/vol", kind="volume")),
    )
    assert netorch_mount_sources(node) == ("/host/ckpt", "/host/warm")


@pytest.mark.parametrize("memlock", [-1, 8 << 20])
def test_memlock_ulimit_only_when_set(memlock: int) -> None:
    plan = make_plan(docker={"memlock": memlock, "ipc_mode": "host"})
    kw = container_create_kwargs(plan, plan.nodes[0], "n", API)
    assert [dict(u) for u in kw["ulimits"]] == [{"Name": "memlock", "Soft": memlock, "Hard": memlock}]
    assert kw["ipc_mode"] == "host"


def test_gpu_count_request_and_env() -> None:
    plan = make_plan(gpu={"per_node": 2}, cluster={"nodes": 2})
    for node in plan.nodes:
        kw = container_create_kwargs(plan, node, "n", API)
        [req] = kw["device_requests"]
        assert req["Driver"] == "nvidia"
        assert req["Count"] == 2
        assert req["DeviceIDs"] == []
        assert req["Capabilities"] == [["gpu", "compute", "utility"]]
        env = kw["environment"]
        assert env["NCCL_SOCKET_IFNAME"] == "=eth0"
        assert env["GLOO_SOCKET_IFNAME"] == "eth0"
        assert env["NCCL_IB_DISABLE"] == "1"
        assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
        assert env["MASTER_ADDR"] == plan.master_addr
        assert env["NODE_RANK"] == str(node.node_rank)
        assert env["NETORCH_PLANNED_IP"] == node.ip


def test_gpu_device_ids_request() -> None:
    plan = make_plan(gpu={"device_ids": [["0", "1"], ["GPU-abc"]], "capabilities": ["gpu", "utility"]},
                     cluster={"nodes": 2})
    reqs = [container_create_kwargs(plan, n, "n", API)["device_requests"][0] for n in plan.nodes]
    assert [r["DeviceIDs"] for r in reqs] == [["0", "1"], ["GPU-abc"]]
    assert all(r["Count"] == 0 for r in reqs)  # count unset: exactly the listed devices
    assert all(r["Capabilities"] == [["gpu", "utility"]] for r in reqs)


def test_no_device_requests_for_cpu_node() -> None:
    assert device_requests(None) == []
    [req] = device_requests(GpuSpec(1, (), "nvidia", ("gpu",)))
    assert req["Count"] == 1


def test_run_filters() -> None:
    assert run_filters(None) == {"label": [f"{LABEL_MANAGED}=true"]}
    assert run_filters("r1") == {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_RUN}=r1"]}


# ---- small pure helpers ---------------------------------------------------------------------


def test_parse_docker_time() -> None:
    assert parse_docker_time("0001-01-01T00:00:00Z") is None
    assert parse_docker_time("") is None
    assert parse_docker_time("2024-01-02T03:04:05.123456789Z") == pytest.approx(1704164645.123456789)
    assert parse_docker_time("2024-01-02T04:04:05+01:00") == pytest.approx(1704164645.0)


def test_line_splitter_handles_split_lines_and_utf8() -> None:
    s = LineSplitter()
    text = "first line\nsecond µ line\r\nlast without newline".encode()
    split_at = text.index("µ".encode()) + 1  # inside the two-byte character
    out = s.feed(text[:5]) + s.feed(text[5:split_at]) + s.feed(text[split_at:]) + s.close()
    assert out == ["first line", "second µ line", "last without newline"]
    assert s.close() == []


def test_host_routes_skips_default(tmp_path: Path) -> None:
    table = tmp_path / "route"
    table.write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
        "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    )
    assert [(i, str(n)) for i, n in host_routes(table)] == [
        ("docker0", "172.17.0.0/16"), ("eth0", "192.0.2.0/24")
    ]


# ---- error translation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "cls", "words"),
    [
        (api_error(409, 'Conflict. The container name "/x" is already in use'), NetworkConflictError,
         ["already taken", "netorch down"]),
        (api_error(403, "Pool overlaps with other one on this address space"), NetworkConflictError,
         ["10.233.0.0/24", "overlaps", "--subnet"]),
        (api_error(403, "Address already in use"), NetworkConflictError, ["already taken"]),
        (api_error(500, "failed to allocate gateway (10.9.9.9): No available addresses"),
         BackendError, ["gateway", "network.gateway"]),
        (api_error(500, "Invalid address 10.9.0.9: It does not belong to any of this network's subnets"),
         BackendError, ["outside 10.233.0.0/24"]),
        (api_error(500, 'could not select device driver "nvidia" with capabilities: [[gpu]]'),
         PreflightError, ["NVIDIA Container Toolkit", "gpu.per_node = 0"]),
        (api_error(404, "No such image", docker.errors.ImageNotFound), ImageError,
         ["netorch image build", "never pulls"]),
        (api_error(500, "something odd"), BackendError, ["answered 500", "something odd"]),
        (docker.errors.DockerException("Error while fetching server API version"),
         DaemonUnavailableError, ["dockerd", "DOCKER_HOST"]),
        (requests.exceptions.ConnectionError("refused"), DaemonUnavailableError, ["dockerd"]),
    ],
)
def test_translate_error(error: BaseException, cls: type[Exception], words: list[str]) -> None:
    out = translate_error(error, "creating X", make_plan())
    assert type(out) is cls
    assert "\n" not in str(out)
    assert str(out).startswith("creating X")
    for word in words:
        assert word in str(out)


# ---- a fake client: preflight and up translate at the boundary -----------------------------


class FakeContainer:
    def __init__(self, name: str, start_error: BaseException | None = None) -> None:
        self.name = name
        self.status = "created"
        self.start_error = start_error
        self.attrs: dict[str, Any] = {"State": {}}
        self.removed = False

    def start(self) -> None:
        if self.start_error:
            raise self.start_error
        self.status = "running"

    def reload(self) -> None:
        pass

    def remove(self, force: bool = False, v: bool = False) -> None:
        self.removed = True


class FakeCollection:
    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.start_error: BaseException | None = None
        self.listed: list[Any] = []
        self.list_calls: list[dict[str, Any]] = []

    def create(self, **kwargs: Any) -> Any:
        if self.error:
            raise self.error
        self.created.append(kwargs)
        if "image" in kwargs:
            return FakeContainer(kwargs["name"], self.start_error)
        return type("Net", (), {"id": "netid", "name": kwargs["name"]})()

    def list(self, **kwargs: Any) -> list[Any]:
        self.list_calls.append(kwargs)
        return list(self.listed)


class FakeImage:
    """An image; netorch's own builds carry the inputs-hash label (a user's image does not)."""

    def __init__(self, netorch_built: bool = True) -> None:
        labels = {"io.netorch.inputs-hash": "abc"} if netorch_built else {}
        self.attrs: dict[str, Any] = {"Config": {"Labels": labels}}


class FakeImages:
    def __init__(self, present: bool) -> None:
        self.present = present

    def get(self, name: str) -> object:
        if not self.present:
            raise docker.errors.ImageNotFound(f"No such image: {name}")
        return FakeImage()


class FakeAPI:
    base_url = "http+docker://localhost"
    api_version = API

    def __init__(self) -> None:
        self.net_list: list[dict[str, Any]] = []
        self.container_list: list[dict[str, Any]] = []

    def networks(self) -> list[dict[str, Any]]:
        return self.net_list

    def containers(self, all: bool = False) -> list[dict[str, Any]]:
        return self.container_list


class FakeClient:
    def __init__(self, *, up: bool = True, image: bool = True, runtimes: tuple[str, ...] = ("runc",)) -> None:
        self.up = up
        self.runtimes = runtimes
        self.images = FakeImages(image)
        self.api = FakeAPI()
        self.networks = FakeCollection()
        self.containers = FakeCollection()

    def ping(self) -> bool:
        if not self.up:
            raise requests.exceptions.ConnectionError("connection refused")
        return True

    def info(self) -> dict[str, Any]:
        return {"Runtimes": {r: {} for r in self.runtimes}}


def backend(client: FakeClient, tmp_path: Path, routes: str = "") -> DockerBackend:
    table = tmp_path / "route"
    table.write_text("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n" + routes)
    return DockerBackend(client, route_table=table)


def test_preflight_ok(tmp_path: Path) -> None:
    client = FakeClient()
    backend(client, tmp_path).preflight(make_plan())
    assert client.networks.created == [] and client.containers.created == []


def test_preflight_daemon_down(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnavailableError, match="dockerd"):
        backend(FakeClient(up=False), tmp_path).preflight(make_plan())


def test_preflight_image_missing(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="netorch image build"):
        backend(FakeClient(image=False), tmp_path).preflight(make_plan())


def test_preflight_gpu_without_nvidia_runtime(tmp_path: Path) -> None:
    client = FakeClient()
    with pytest.raises(PreflightError, match="no nvidia runtime .runtimes: runc.") as info:
        backend(client, tmp_path).preflight(make_plan(gpu={"per_node": 1}))
    assert "gpu.per_node = 0" in str(info.value)
    assert client.networks.created == [] and client.containers.created == []


def test_preflight_gpu_with_nvidia_runtime(tmp_path: Path) -> None:
    backend(FakeClient(runtimes=("runc", "nvidia")), tmp_path).preflight(make_plan(gpu={"per_node": 1}))


def test_preflight_subnet_overlaps_docker_network(tmp_path: Path) -> None:
    client = FakeClient()
    client.api.net_list = [{"Name": "users-net", "Id": "abc",
                            "IPAM": {"Config": [{"Subnet": "10.233.0.128/25"}]}}]
    with pytest.raises(NetworkConflictError) as info:
        backend(client, tmp_path).preflight(make_plan())
    msg = str(info.value)
    assert "'users-net'" in msg and "10.233.0.128/25" in msg
    assert "--subnet 172.16.0.0/24" in msg  # a free suggestion


def test_preflight_subnet_overlaps_host_route(tmp_path: Path) -> None:
    route = "eth1\t0000E90A\t00000000\t0001\t0\t0\t0\t0000FFFF\n"  # 10.233.0.0/16
    with pytest.raises(NetworkConflictError, match="host route 10.233.0.0/16 on eth1"):
        backend(FakeClient(), tmp_path, route).preflight(make_plan())


def test_preflight_names_a_network_the_daemon_routed_before_listing_it(tmp_path: Path) -> None:
    """Two runs started together: the other run's bridge (br-<id>) is routed before its network
    is listed; preflight looks again until it can name the network, not the bare route."""
    route = "br-0a1b2c3d4e5f\t0000E90A\t00000000\t0001\t0\t0\t0\t0000FFFF\n"  # 10.233.0.0/16
    client = FakeClient()
    other = {"Name": "other-run-net", "Id": "0a1b2c3d4e5f",
             "IPAM": {"Config": [{"Subnet": "10.233.0.0/16"}]}}
    lists = iter([[], [], [other]])
    client.api.networks = lambda: next(lists, [other])  # type: ignore[method-assign]
    with pytest.raises(NetworkConflictError, match="overlaps Docker network 'other-run-net'"):
        backend(client, tmp_path, route).preflight(make_plan())


def test_preflight_default_route_is_no_conflict(tmp_path: Path) -> None:
    route = "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\n"
    backend(FakeClient(), tmp_path, route).preflight(make_plan())


def test_preflight_names_taken(tmp_path: Path) -> None:
    plan = make_plan()
    client = FakeClient()
    client.api.net_list = [{"Name": plan.network.name, "Id": "abcdef", "IPAM": {}}]
    with pytest.raises(NetworkConflictError, match="network name .* already taken"):
        backend(client, tmp_path).preflight(plan)
    client.api.net_list = []
    client.api.container_list = [{"Names": [f"/{plan.nodes[1].name}"]}]
    with pytest.raises(NetworkConflictError, match=f"container name.*{plan.nodes[1].name}"):
        backend(client, tmp_path).preflight(plan)


def test_up_translates_pool_overlap(tmp_path: Path) -> None:
    client = FakeClient()
    client.networks.error = api_error(403, "Pool overlaps with other one on this address space")
    with pytest.raises(NetworkConflictError, match="overlaps") as info:
        backend(client, tmp_path).up(make_plan(), lambda n, l: None)
    assert isinstance(info.value.__cause__, docker.errors.APIError)


def test_up_translates_gpu_start_failure(tmp_path: Path) -> None:
    client = FakeClient()
    client.containers.start_error = api_error(
        500, 'could not select device driver "nvidia" with capabilities: [[gpu]]')
    with pytest.raises(PreflightError, match="NVIDIA Container Toolkit"):
        backend(client, tmp_path).up(make_plan(gpu={"per_node": 1}), lambda n, l: None)
    assert len(client.containers.created) == 2  # created, failed to start: down() removes them


def test_down_all_filters_on_managed_label_only() -> None:
    client = FakeClient()
    assert down_all(client, None) == []
    assert client.containers.list_calls == [
        {"all": True, "filters": {"label": [f"{LABEL_MANAGED}=true"]}, "ignore_removed": True}
    ]
    assert client.networks.list_calls == [{"filters": {"label": [f"{LABEL_MANAGED}=true"]}}]


def test_from_settings_no_daemon() -> None:
    settings = load_settings(overrides={"docker": {"host": "unix:///nonexistent/docker.sock"}})
    with pytest.raises(DaemonUnavailableError, match="unix:///nonexistent/docker.sock.*dockerd"):
        DockerBackend.from_settings(settings)


# ---- exit publication waits for the log stream ----------------------------------------------


class ScriptedContainer:
    """Logs arrive slowly; wait() returns before the last chunk has been delivered."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.attrs = {"State": {"ExitCode": 137, "OOMKilled": True,
                                "FinishedAt": "2024-01-02T03:04:05.5Z"}}
        self.status = "exited"

    def logs(self, **kwargs: Any) -> Any:
        yield b"partial "
        self.released.set()
        time.sleep(0.3)
        yield b"line\n@@NETORCH_RESULT@@ {}"

    def wait(self, timeout: int) -> dict[str, int]:
        self.released.wait()
        return {"StatusCode": 137}

    def reload(self) -> None:
        pass


def test_exit_published_after_logs_drained() -> None:
    plan = make_plan()
    lines: list[str] = []
    node = DockerNode(plan.nodes[0], ScriptedContainer(), lambda n, l: lines.append(l))
    deadline = time.monotonic() + 5
    while (ex := node.poll()) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ex is not None
    assert lines == ["partial line", "@@NETORCH_RESULT@@ {}"]
    assert ex.exit_code == 137 and ex.oom_killed
    assert ex.finished_at == pytest.approx(1704164645.5)


def test_cli_down_needs_exactly_one_scope(tmp_path: Path) -> None:
    import subprocess
    import sys

    for args in ([], ["--run", "x", "--all"]):
        proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "down", *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1", "COLUMNS": "200"})
        assert proc.returncode == 2
        assert "exactly one of --run ID or --all" in proc.stderr


# ---- a user's image: what the runtime check finds in it ---------------------------------------


class _RunningImage:
    """``containers.run`` of the runtime check: prints what it finds, or fails like Docker."""

    def __init__(self, output: str = "", error: BaseException | None = None) -> None:
        self.output, self.error = output, error
        self.calls: list[dict[str, Any]] = []

    def list(self, **kwargs: Any) -> list[Any]:
        return []

    def run(self, image: str, command: list[str], **kwargs: Any) -> bytes:
        self.calls.append({"image": image, "command": command, **kwargs})
        if self.error is not None:
            raise self.error
        return self.output.encode()


def _check(output: str = "", error: BaseException | None = None, **cluster: Any) -> _RunningImage:
    from orchestrator.backends.docker.backend import check_image_runtime

    plan = make_plan(cluster={"image": "user/img:1", **cluster})
    client = type("C", (), {})()
    client.containers = _RunningImage(output, error)
    check_image_runtime(client, plan, FakeImage(netorch_built=False))
    return client.containers


def test_user_image_with_torch_and_launcher_passes_without_network() -> None:
    ran = _check("NETORCH_MISSING=\n")
    (call,) = ran.calls
    assert call["image"] == "user/img:1" and call["command"][0] == "python"
    assert call["network_disabled"] is True and call["remove"] is True


def test_netorch_built_images_are_not_run() -> None:
    from orchestrator.backends.docker.backend import check_image_runtime

    client = type("C", (), {})()
    client.containers = _RunningImage(error=AssertionError("must not run"))
    check_image_runtime(client, make_plan(), FakeImage(netorch_built=True))


@pytest.mark.parametrize("output, launcher, message", [
    ("NETORCH_MISSING=torch,train.launch", "netorch", "user/img:1 has no torch"),
    ("NETORCH_MISSING=train.launch", "netorch", "lacks netorch's in-node launcher.*cluster.launcher=torchrun"),
    ("NETORCH_MISSING=torchrun,train.launch", "torchrun", "no `torchrun` on its PATH"),
    ("something else", "netorch", "printed nothing usable"),
])
def test_user_image_without_what_the_launcher_needs_is_refused(output: str, launcher: str, message: str) -> None:
    with pytest.raises(PreflightError, match=message):
        _check(output, launcher=launcher)


def test_user_image_without_python_is_refused() -> None:
    error = docker.errors.APIError("start failed", explanation='exec: "python": executable file not found in $PATH')
    with pytest.raises(PreflightError, match="has no `python` on its PATH"):
        _check(error=error)
