"""The Docker error boundary and client factory, unit tier: ``docker_errors`` applies the one
translation table at every SDK call site; ``connect`` fails with the fix when no daemon answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests

from orchestrator.backends.docker import (
    DOCKER_ERRORS,
    connect,
    connect_settings,
    docker_errors,
    exec_checked,
)
from orchestrator.errors import (
    BackendError,
    DaemonUnavailableError,
    ImageError,
    NetorchError,
    NetworkConflictError,
    PreflightError,
)
from orchestrator.plan import ClusterPlan, build_plan
from orchestrator.settings import load_settings

pytestmark = pytest.mark.usefixtures("isolated")

RUN = "20261128-120000-e220"



def make_plan() -> ClusterPlan:
    settings = load_settings(overrides={"network": {"subnet": "10.233.0.0/24",
                                                    "gateway": "10.233.0.254"}})
    return build_plan(settings, RUN, "docker")


def api_error(status: int, explanation: str,
              cls: type[docker.errors.APIError] = docker.errors.APIError) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return cls(f"{status} error", response=response, explanation=explanation)


def raised(error: BaseException, plan: ClusterPlan | None = None,
           fallback: type[NetorchError] = BackendError) -> NetorchError:
    """What leaves ``with docker_errors("creating X", plan)`` when the block raises ``error``."""
    with pytest.raises(NetorchError) as info:
        with docker_errors("creating X", plan, fallback):
            raise error
    assert info.value.__cause__ is error  # `raise ... from e`: the SDK's error stays visible
    assert str(info.value).startswith("creating X: ")
    assert "\n" not in str(info.value)
    return info.value


# ---- one case per rule of the table ----------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "cls", "words"),
    [
        (api_error(404, "No such image: netorch:latest", docker.errors.ImageNotFound), ImageError,
         ["image netorch:latest is not on the daemon", "netorch image build", "never pulls"]),
        (api_error(409, 'Conflict. The container name "/x" is already in use'),
         NetworkConflictError, ["name already taken", "netorch down --run"]),
        (api_error(403, "Pool overlaps with other one on this address space"),
         NetworkConflictError, ["subnet 10.233.0.0/24 overlaps", "--subnet"]),
        (api_error(403, "Address already in use"), NetworkConflictError,
         ["planned address is already taken", "ip_range"]),
        (api_error(500, "failed to allocate gateway (10.233.0.254): No available addresses"),
         BackendError, ["gateway 10.233.0.254 in 10.233.0.0/24", "network.gateway"]),
        (api_error(500, "Invalid address 10.9.0.9: It does not belong to any of this network's "
                        "subnets"), BackendError, ["outside 10.233.0.0/24", "network.subnet"]),
        (api_error(500, 'could not select device driver "nvidia" with capabilities: [[gpu]]'),
         PreflightError, ["cannot hand out GPUs", "gpu.per_node = 0"]),
        (api_error(404, "network nt-abc not found", docker.errors.NotFound), BackendError,
         ["not found (network nt-abc not found)", "removed meanwhile"]),
        (api_error(500, "something odd"), BackendError, ["the daemon answered 500: something odd"]),
        (docker.errors.DockerException("Error while fetching server API version"),
         DaemonUnavailableError, ["no Docker daemon answers", "fetching server API version",
                                  "dockerd", "DOCKER_HOST"]),
        (requests.exceptions.ConnectionError("connection refused"), DaemonUnavailableError,
         ["no Docker daemon answers (connection refused)", "dockerd"]),
        (requests.exceptions.ReadTimeout("read timed out"), DaemonUnavailableError,
         ["no Docker daemon answers (read timed out)"]),
    ],
)
def test_each_rule(error: BaseException, cls: type[NetorchError], words: list[str]) -> None:
    out = raised(error, make_plan())
    assert type(out) is cls
    for word in words:
        assert word in str(out)


def test_without_a_plan_the_message_still_reads() -> None:
    out = raised(api_error(403, "Pool overlaps with other one on this address space"))
    assert type(out) is NetworkConflictError and "subnet the subnet overlaps" in str(out)
    assert "image the image is not" in str(
        raised(api_error(404, "No such image", docker.errors.ImageNotFound)))


def test_fallback_names_the_class_of_an_unexplained_api_error() -> None:
    out = raised(api_error(500, "Dockerfile parse error"), fallback=ImageError)
    assert type(out) is ImageError and "answered 500: Dockerfile parse error" in str(out)
    # The specific rules still win over the fallback.
    assert type(raised(api_error(409, "already exists"), fallback=ImageError)) is (
        NetworkConflictError)


def test_a_netorch_error_passes_through_unchanged() -> None:
    original = NetworkConflictError("subnet 10.0.0.0/24 overlaps 'users-net'; use --subnet X")
    with pytest.raises(NetworkConflictError) as info:
        with docker_errors("creating X", make_plan()):
            raise original
    assert info.value is original and info.value.__cause__ is None


def test_errors_of_our_own_code_are_not_disguised_as_daemon_errors() -> None:
    with pytest.raises(KeyError):
        with docker_errors("creating X"):
            raise KeyError("bug")


def test_a_block_that_succeeds_is_left_alone() -> None:
    with docker_errors("creating X"):
        value = 1 + 1
    assert value == 2


def test_docker_errors_tuple_covers_the_sdk_and_its_transport() -> None:
    for error in (docker.errors.APIError("x"), docker.errors.DockerException("x"),
                  requests.exceptions.ConnectionError("x"), requests.exceptions.Timeout("x")):
        assert isinstance(error, DOCKER_ERRORS)
    assert not isinstance(OSError("disk"), DOCKER_ERRORS)


# ---- exec_checked goes through the same table ------------------------------------------------


class ExecContainer:
    name = "nt-abc-worker-1"

    def __init__(self, error: BaseException | None = None, exit_code: int = 0,
                 output: bytes = b"") -> None:
        self.error, self.exit_code, self.output = error, exit_code, output

    def exec_run(self, argv: list[str]) -> Any:
        if self.error is not None:
            raise self.error
        return type("Result", (), {"exit_code": self.exit_code, "output": self.output})()


def test_exec_checked() -> None:
    assert exec_checked(ExecContainer(output=b"1500\n"), ["cat", "mtu"], "reading") == "1500\n"
    with pytest.raises(BackendError, match=r"reading in nt-abc-worker-1: `cat mtu` exited 1: nope"):
        exec_checked(ExecContainer(exit_code=1, output=b"nope"), ["cat", "mtu"], "reading")
    with pytest.raises(DaemonUnavailableError, match="reading in nt-abc-worker-1: no Docker") as info:
        exec_checked(ExecContainer(requests.exceptions.ConnectionError("gone")), ["true"], "reading")
    assert isinstance(info.value.__cause__, requests.exceptions.ConnectionError)


# ---- connect: the one client factory ----------------------------------------------------------


def test_connect_fails_with_the_fix_on_a_missing_socket(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/no/such/docker.sock"
    with pytest.raises(DaemonUnavailableError) as info:
        connect(url, timeout=5)
    msg = str(info.value)
    assert f"no Docker daemon answers at {url}" in msg
    assert "dockerd" in msg and "DOCKER_HOST" in msg
    assert isinstance(info.value.__cause__, DOCKER_ERRORS)


def test_connect_without_url_reads_docker_host(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/absent.sock")
    with pytest.raises(DaemonUnavailableError, match="at DOCKER_HOST / the local socket"):
        connect(timeout=5)


def test_connect_settings_prefers_the_first_host(tmp_path: Path) -> None:
    hosts = [{"name": "a", "url": f"unix://{tmp_path}/a.sock"},
             {"name": "b", "url": f"unix://{tmp_path}/b.sock"}]
    with pytest.raises(DaemonUnavailableError, match=rf"^host a: .*at unix://{tmp_path}/a.sock"):
        connect_settings(load_settings(overrides={"hosts": hosts}), timeout=5)
    single = load_settings(overrides={"docker": {"host": f"unix://{tmp_path}/d.sock"}})
    with pytest.raises(DaemonUnavailableError, match=rf"^no Docker daemon answers at unix://{tmp_path}/d.sock"):
        connect_settings(single, timeout=5)


def test_connect_returns_a_client_that_closes_with_with(monkeypatch: pytest.MonkeyPatch) -> None:
    import docker.api.client

    from orchestrator.backends.docker import DockerClient

    # No daemon: skip the version request the SDK makes when it builds a client.
    monkeypatch.setattr(docker.api.client.APIClient, "_retrieve_server_version",
                        lambda self: "1.41")
    closed: list[bool] = []
    monkeypatch.setattr(DockerClient, "close", lambda self: closed.append(True))
    with connect("unix:///nonexistent/docker.sock", timeout=5) as client:
        assert isinstance(client, DockerClient)
        assert client.api.base_url == "http+docker://localhost"
        assert closed == []
    assert closed == [True]


@pytest.mark.docker
def test_auto_backend_finds_the_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    """resolve_backend probes through connect_settings (a ``with`` block): with a daemon and an
    image present it picks docker, with the image absent the process backend."""
    from docker_fixtures import require_docker

    from orchestrator.backends import resolve_backend

    try:
        client = connect(timeout=10)
    except DaemonUnavailableError as e:
        require_docker(str(e))
    with client:
        tags = [t for img in client.images.list() for t in img.tags]
    if not tags:
        require_docker("the daemon has no tagged image to probe for")
    found = load_settings(overrides={"backend": "auto", "cluster": {"image": tags[0]}})
    assert resolve_backend(found) == ("docker", f"auto: Docker daemon answers and {tags[0]} exists")
    absent = load_settings(overrides={"backend": "auto",
                                      "cluster": {"image": "netorch-test-absent:never"}})
    name, why = resolve_backend(absent)
    assert (name, "image netorch-test-absent:never missing" in why) == ("process", True)
