"""Docker backend: every node is a container on one bridge network with fixed addresses.

Talks to the daemon through the Docker SDK only. Everything it creates carries the run's labels
(``io.netorch.run=<run_id>``, ``io.netorch.managed=true``) and is found again *by label*, never by
name, so teardown cannot touch a user's own containers or networks.

Two pure helpers, :func:`network_create_kwargs` and :func:`container_create_kwargs`, turn the
plan into SDK arguments; they are what unit tests check field by field without a daemon.
"""

from __future__ import annotations

import codecs
import ipaddress
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import docker.errors
import docker.types
import requests.exceptions
# From docker.client rather than the package: mypy run from the repo root resolves a bare
# ``docker`` to the repo's docker/ folder (a namespace package) and loses the SDK's attributes.
from docker.client import DockerClient
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

from orchestrator.backends.base import LineSink, NodeExit, NodeHandle
from orchestrator.errors import (
    BackendError,
    DaemonUnavailableError,
    ImageError,
    NetorchError,
    NetworkConflictError,
    PreflightError,
)
from orchestrator.plan import (
    LABEL_MANAGED,
    LABEL_RUN,
    BackendName,
    ClusterPlan,
    GpuSpec,
    NodeSpec,
    RuntimeSpec,
    tc_commands,
)
from orchestrator.settings import Settings

T = TypeVar("T")

MTU_OPTION = "com.docker.network.driver.mtu"
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
# Two long-lived connections per node (log stream + wait) plus room for the main thread; the SDK's
# default pool of 10 would make urllib3 open and discard extra connections (and warn) above 4 nodes.
MAX_POOL_SIZE = 2 * 256 + 16
DAEMON_FIX = (
    "start it (dockerd & / systemctl start docker), or set docker.host / DOCKER_HOST "
    "to a daemon that runs"
)
PROC_NET_ROUTE = Path("/proc/net/route")
SYS_CLASS_NET = Path("/sys/class/net")
# Wait requests are bounded so a waiter notices a vanished daemon instead of hanging forever.
WAIT_POLL_S = 30
LOG_DRAIN_S = 5.0

_TRANSPORT_ERRORS = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)

# The start gate (plan.runtime.start_gate): the container's command waits for this file, which
# the backend creates (docker exec) once its set-up phase -- tc, probes -- has run in every node.
GATE_FILE = "/tmp/.netorch-go"
# A gate nobody opens (the host side died) must not leave a container waiting forever.
GATE_TIMEOUT_S = 900

SetupHook = Callable[[ClusterPlan, Mapping[str, Any]], None]
"""``hook(plan, containers)``: runs after every container started, before the gate opens;
``containers`` maps node name to the SDK container. Raise a NetorchError to fail the run."""


def gate_command(runtime: RuntimeSpec, command: tuple[str, ...]) -> list[str]:
    """``command`` behind the start gate: wait for :data:`GATE_FILE`, then exec it.

    Capabilities in ``runtime.cap_add`` (NET_ADMIN for tc) stay in the *container's* bounding set
    for its whole life -- Docker has no way to grant them to ``docker exec`` alone (a privileged
    exec fails with "unable to apply caps" on engine 20.10) -- so the gate removes them from the
    workload's bounding set with setpriv: torchrun and every rank run without them, while the
    set-up execs (which get the container's set) still have them.
    """
    drop = ",".join(f"-{cap.lower()}" for cap in runtime.cap_add)
    limit = GATE_TIMEOUT_S * 10
    script = (
        f'i=0; while [ ! -e {GATE_FILE} ]; do i=$((i+1)); '
        f'if [ "$i" -gt {limit} ]; then echo "netorch: the start gate never opened" >&2; '
        'exit 125; fi; sleep 0.1; done; '
    )
    if drop:
        script += (
            f'if command -v setpriv >/dev/null; then exec setpriv --bounding-set {drop} '
            f'--inh-caps {drop} -- "$@"; fi; '
            'echo "netorch: setpriv is missing: the workload keeps ' + drop.replace("-", "")
            + '" >&2; '
        )
    script += 'exec "$@"'
    return ["sh", "-c", script, "netorch-gate", *command]


# --------------------------------------------------------------------------------------------
# Pure helpers: plan -> SDK arguments
# --------------------------------------------------------------------------------------------


def run_filters(run_id: str | None) -> dict[str, list[str]]:
    """SDK list filters selecting netorch's own resources (of one run, or of every run)."""
    labels = [f"{LABEL_MANAGED}=true"]
    if run_id is not None:
        labels.append(f"{LABEL_RUN}={run_id}")
    return {"label": labels}


def network_create_kwargs(plan: ClusterPlan) -> dict[str, Any]:
    """Keyword arguments of ``client.networks.create`` for the plan's network."""
    net = plan.network
    options: dict[str, str] = {}
    if net.mtu is not None:
        options[MTU_OPTION] = str(net.mtu)
    if net.bridge_name:
        options[BRIDGE_NAME_OPTION] = net.bridge_name
    pool = docker.types.IPAMPool(subnet=net.subnet, gateway=net.gateway, iprange=net.ip_range)
    extra: dict[str, Any] = {}
    if net.driver == "overlay":
        # Attachable: standalone containers (fixed IPs, GPUs) may join, which services cannot.
        extra["attachable"] = True
    return {
        **extra,
        "name": net.name,
        "driver": net.driver,
        "ipam": docker.types.IPAMConfig(driver="default", pool_configs=[pool]),
        "options": options,
        "internal": net.internal,
        "labels": dict(net.labels),
        # Without it engine 20.10 lets two networks share a name, and a later start fails with
        # "network ... not found".
        "check_duplicate": True,
    }


def device_requests(gpus: GpuSpec | None) -> list[docker.types.DeviceRequest]:
    """The ``--gpus`` equivalent of a node's reservation (empty for a CPU node)."""
    if gpus is None:
        return []
    request: dict[str, Any] = {
        "driver": gpus.driver,
        # One capability set, all of whose entries must hold (docker's AND semantics).
        "capabilities": [list(gpus.capabilities)],
    }
    if gpus.device_ids:
        request["device_ids"] = list(gpus.device_ids)
    else:
        request["count"] = gpus.count
    return [docker.types.DeviceRequest(**request)]


def container_create_kwargs(
    plan: ClusterPlan, node: NodeSpec, network_id: str, api_version: str
) -> dict[str, Any]:
    """Keyword arguments of ``client.containers.create`` for one node.

    ``network_id`` is both the ``network=`` value and the ``networking_config`` key: the SDK
    silently drops the fixed IP when the two differ.
    """
    rt = plan.runtime
    endpoint = docker.types.EndpointConfig(
        api_version, aliases=list(node.aliases), ipv4_address=node.ip
    )
    command = gate_command(rt, node.command) if rt.start_gate else list(node.command)
    kwargs: dict[str, Any] = {
        "image": rt.image,
        "command": command,
        "name": node.name,
        "hostname": node.hostname,
        "environment": node.env_dict,
        "labels": node.labels_dict,
        # tini as PID 1 forwards SIGTERM; a PID-1 python ignores it and every stop takes the grace.
        "init": rt.init,
        "shm_size": rt.shm_size,
        "network": network_id,
        "networking_config": {network_id: endpoint},
        "stop_signal": "SIGTERM",
        "detach": True,
    }
    if rt.ipc_mode:
        kwargs["ipc_mode"] = rt.ipc_mode
    if rt.cap_add:
        kwargs["cap_add"] = list(rt.cap_add)
    if rt.memlock is not None:
        # Only when asked: the daemon's hard cap may be low (8 MiB here), and -1 then fails at start.
        kwargs["ulimits"] = [docker.types.Ulimit(name="memlock", soft=rt.memlock, hard=rt.memlock)]
    if node.mounts:
        # Checkpoints must outlive the container: a host directory, bound where train/ writes.
        kwargs["volumes"] = {
            m.source: {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in node.mounts
        }
    requests_ = device_requests(node.gpus)
    if requests_:
        kwargs["device_requests"] = requests_
    return kwargs


def parse_docker_time(value: str | None) -> float | None:
    """Epoch seconds from Docker's RFC 3339 timestamps (nanosecond fractions); None if unset."""
    if not value or value.startswith("0001-01-01"):
        return None
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", value)
    if not m:
        return None
    base, frac, tz = m.groups()
    stamp = datetime.fromisoformat(base + (tz if tz and tz != "Z" else "+00:00"))
    seconds = stamp.astimezone(timezone.utc).timestamp()
    return seconds + (float("0." + frac) if frac else 0.0)


def host_routes(route_table: Path = PROC_NET_ROUTE) -> list[tuple[str, ipaddress.IPv4Network]]:
    """``(interface, destination)`` of every IPv4 route in ``route_table`` but the default."""
    try:
        lines = route_table.read_text().splitlines()
    except OSError:
        return []
    routes = []
    for line in lines[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            # /proc/net/route prints addresses as host-order (little-endian) hex.
            dest = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
            mask = ipaddress.IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
            net = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
        except ValueError:
            continue
        if net.prefixlen == 0:
            continue
        routes.append((fields[0], net))
    return routes


def free_subnet_hint(
    taken: Iterable[ipaddress.IPv4Network], prefixlen: int, plan_subnet: str
) -> str | None:
    """A private subnet of ``prefixlen`` that overlaps nothing in ``taken`` (for error messages)."""
    taken = list(taken)
    wanted = ipaddress.IPv4Network(plan_subnet)
    for parent in ("172.16.0.0/12", "10.0.0.0/8", "192.168.0.0/16"):
        space = ipaddress.IPv4Network(parent)
        if prefixlen < space.prefixlen:
            continue
        for i, cand in enumerate(space.subnets(new_prefix=prefixlen)):
            if i > 4096:
                break
            if cand != wanted and not any(cand.overlaps(t) for t in taken):
                return str(cand)
    return None


# --------------------------------------------------------------------------------------------
# Error translation: docker.errors.* -> the netorch tree
# --------------------------------------------------------------------------------------------


def _explanation(e: BaseException) -> str:
    text = getattr(e, "explanation", None) or str(e)
    return str(text).strip()


def translate_error(e: BaseException, what: str, plan: ClusterPlan | None = None) -> NetorchError:
    """Map an SDK/transport error met while doing ``what`` to one clear netorch error."""
    if isinstance(e, NetorchError):
        return e
    expl = _explanation(e)
    low = expl.lower()
    subnet = plan.network.subnet if plan else "the subnet"
    if isinstance(e, docker.errors.ImageNotFound):
        image = plan.runtime.image if plan else "the image"
        return ImageError(
            f"{what}: image {image} is not on the daemon; build it with `netorch image build` "
            "(netorch never pulls)"
        )
    if isinstance(e, docker.errors.APIError):
        status = e.status_code
        if 'could not select device driver' in low:
            return PreflightError(
                f"{what}: the daemon cannot hand out GPUs ({expl}); install the NVIDIA Container "
                "Toolkit (nvidia-ctk runtime configure --runtime=docker, restart dockerd) or set "
                "gpu.per_node = 0"
            )
        if status == 409 or "already exists" in low or "is already in use" in low:
            return NetworkConflictError(
                f"{what}: name already taken ({expl}); remove the leftover with `netorch down "
                "--run <id>` (or docker rm/network rm if it is yours) or change cluster.name / "
                "network.name"
            )
        if "pool overlaps" in low:
            return NetworkConflictError(
                f"{what}: subnet {subnet} overlaps an existing network ({expl}); choose a free "
                "subnet with --subnet or network.subnet"
            )
        if "address already in use" in low:
            return NetworkConflictError(
                f"{what}: a planned address is already taken on the network ({expl}); another "
                "container holds it; pick another subnet / ip_range"
            )
        if "failed to allocate gateway" in low:
            gw = plan.network.gateway if plan else "the gateway"
            return BackendError(
                f"{what}: the daemon could not allocate gateway {gw} in {subnet} ({expl}); set "
                "network.gateway to a free host address inside the subnet"
            )
        if "does not belong" in low or "invalid address" in low:
            return BackendError(
                f"{what}: a node address lies outside {subnet} ({expl}); fix network.subnet / "
                "network.ip_range so every node address is inside the subnet"
            )
        if isinstance(e, docker.errors.NotFound):
            return BackendError(f"{what}: not found ({expl}); was it removed meanwhile?")
        return BackendError(f"{what}: the daemon answered {status}: {expl}")
    if isinstance(e, (docker.errors.DockerException, *_TRANSPORT_ERRORS)):
        return DaemonUnavailableError(f"{what}: no Docker daemon answers ({expl}); {DAEMON_FIX}")
    return BackendError(f"{what}: {type(e).__name__}: {expl}")


def _retry(
    fn: Callable[[], T], *, retry_on: Callable[[BaseException], bool], seconds: float,
    every: float = 0.25,
) -> T:
    """Call ``fn`` until it stops raising an error ``retry_on`` accepts, for at most ``seconds``."""
    for attempt in Retrying(
        retry=retry_if_exception(retry_on), stop=stop_after_delay(seconds), wait=wait_fixed(every),
        reraise=True,
    ):
        with attempt:
            return fn()
    raise AssertionError("unreachable: Retrying re-raises the last error")


def _concurrently(fn: Callable[[T], None], items: list[T]) -> list[tuple[T, BaseException]]:
    """Run ``fn`` on every item in threads; return the failures (all items were attempted).

    On Ctrl-C the queued calls are cancelled and the running ones awaited, so that nothing is
    created after the caller's teardown has listed what exists.
    """
    failures: list[tuple[T, BaseException]] = []
    if not items:
        return failures
    pool = ThreadPoolExecutor(max_workers=min(16, len(items)))
    try:
        futures = [(item, pool.submit(fn, item)) for item in items]
        for item, future in futures:
            exc = future.exception()
            if exc is not None:
                failures.append((item, exc))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return failures


# --------------------------------------------------------------------------------------------
# A running node
# --------------------------------------------------------------------------------------------


class LineSplitter:
    """Turns a stream of byte chunks into whole decoded lines (chunks may split lines or UTF-8)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""

    def feed(self, chunk: bytes) -> list[str]:
        """The lines completed by ``chunk``, without their line endings."""
        self._buffer += self._decoder.decode(chunk)
        *lines, self._buffer = self._buffer.split("\n")
        return [line.rstrip("\r") for line in lines]

    def close(self) -> list[str]:
        """What is left at the end of the stream (a last line without newline)."""
        self._buffer += self._decoder.decode(b"", final=True)
        rest, self._buffer = self._buffer, ""
        return [rest.rstrip("\r")] if rest else []


class DockerNode:
    """One node's container: a log-streaming thread and a waiter thread.

    The waiter publishes the exit only after the log thread has drained, so rank 0's result line
    and a failed node's log tail are complete when the session sees the exit.
    """

    def __init__(self, node: NodeSpec, container: Any, sink: LineSink) -> None:
        self.name = node.name
        self.host = node.host
        self.container = container
        self._sink = sink
        self._exit: NodeExit | None = None
        self._logs = threading.Thread(target=self._stream_logs, name=f"logs-{node.name}", daemon=True)
        self._waiter = threading.Thread(target=self._wait, name=f"wait-{node.name}", daemon=True)
        self._logs.start()
        self._waiter.start()

    def _stream_logs(self) -> None:
        splitter = LineSplitter()
        try:
            for chunk in self.container.logs(stream=True, follow=True, stdout=True, stderr=True):
                for line in splitter.feed(chunk):
                    self._sink(self.name, line)
        except (docker.errors.DockerException, *_TRANSPORT_ERRORS):
            pass  # the container was removed under us (down) or the daemon went away
        for line in splitter.close():
            self._sink(self.name, line)

    def _wait(self) -> None:
        status: int | None = None
        while status is None:
            try:
                status = int(self.container.wait(timeout=WAIT_POLL_S).get("StatusCode", -1))
            except _TRANSPORT_ERRORS:
                # A bounded wait timed out (the SDK reports it as ConnectionError): still running?
                try:
                    self.container.reload()
                except (docker.errors.DockerException, *_TRANSPORT_ERRORS):
                    status = -1
                    break
                if self.container.status not in ("running", "created", "restarting"):
                    status = int(self.container.attrs["State"].get("ExitCode", -1))
            except docker.errors.DockerException:
                status = -1  # removed while waiting
        self._logs.join(timeout=LOG_DRAIN_S)
        finished, oom = time.time(), False
        try:
            self.container.reload()
            state = self.container.attrs["State"]
            status = int(state.get("ExitCode", status))
            oom = bool(state.get("OOMKilled", False))
            finished = parse_docker_time(state.get("FinishedAt")) or finished
        except (docker.errors.DockerException, *_TRANSPORT_ERRORS):
            pass
        self._exit = NodeExit(exit_code=status, finished_at=finished, oom_killed=oom, host=self.host)

    def poll(self) -> NodeExit | None:
        return self._exit

    def join(self, timeout: float) -> None:
        """Wait (bounded) for both threads, e.g. after down removed the container."""
        deadline = time.monotonic() + timeout
        for thread in (self._waiter, self._logs):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


# --------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------


def client_from_settings(settings: Settings) -> Any:
    """A Docker client for ``docker.host`` (or DOCKER_HOST / the local socket) that answered."""
    host = settings.docker.host
    try:
        if host:
            client = DockerClient(base_url=host, max_pool_size=MAX_POOL_SIZE)
        else:
            client = DockerClient.from_env(max_pool_size=MAX_POOL_SIZE)
    except (docker.errors.DockerException, *_TRANSPORT_ERRORS) as e:
        where = host or "DOCKER_HOST / the local socket"
        raise DaemonUnavailableError(
            f"no Docker daemon answers at {where} ({_explanation(e)}); {DAEMON_FIX}"
        ) from e
    return client


def _is_local(client: Any) -> bool:
    """True when the daemon runs on this host (unix socket): only then are host routes relevant."""
    base = str(getattr(client.api, "base_url", ""))
    return base.startswith("http+docker://") or "localhost" in base or "127.0.0.1" in base


def exec_checked(container: Any, argv: list[str] | tuple[str, ...], what: str) -> str:
    """Run ``argv`` in ``container`` (docker exec); its output, or a BackendError naming ``what``."""
    try:
        result = container.exec_run(list(argv))
    except (docker.errors.DockerException, *_TRANSPORT_ERRORS) as e:
        raise translate_error(e, f"{what} in {container.name}") from e
    output = result.output.decode("utf-8", "replace") if result.output else ""
    if result.exit_code != 0:
        raise BackendError(
            f"{what} in {container.name}: `{' '.join(argv)}` exited {result.exit_code}: "
            f"{output.strip()[-300:]}"
        )
    return output


def apply_link(plan: ClusterPlan, containers: Mapping[str, Any]) -> None:
    """Shape every container's eth0 as ``plan.network.link`` says (tc, via docker exec)."""
    link = plan.network.link
    if link is None:
        return
    commands = tc_commands(link)

    def shape(container: Any) -> None:
        for argv in commands:
            try:
                exec_checked(container, argv, "link emulation")
            except BackendError as e:
                text = str(e)
                if "qdisc kind is unknown" in text:
                    kind = "netem" if "netem" in argv else "tbf"
                    raise BackendError(
                        f"link emulation: the host kernel has no {kind} qdisc ({text}); load it "
                        f"(modprobe sch_{kind}) or drop network.link."
                        + ("rate" if kind == "tbf" else "delay/jitter/loss")
                    ) from None
                if "not permitted" in text:
                    raise BackendError(
                        f"{text}; the container lacks NET_ADMIN (plan.runtime.cap_add); "
                        "netorch grants it whenever network.link is set"
                    ) from None
                raise

    failures = _concurrently(shape, list(containers.values()))
    if failures:
        raise failures[0][1]


def start_containers(
    plan: ClusterPlan,
    network_id: str,
    client_for: Callable[[NodeSpec], Any],
    describe: Callable[[NodeSpec], str],
) -> dict[str, Any]:
    """Create every node's container concurrently through ``client_for(node)``, then start them.

    Returns node name -> container. ``describe(node)`` names a node in errors (with its host when
    there are several). A container whose start failed stays in "created": down() removes it by
    label.
    """
    created: dict[str, Any] = {}

    def create(node: NodeSpec) -> None:
        client = client_for(node)
        kwargs = container_create_kwargs(plan, node, network_id, str(client.api.api_version))
        created[node.name] = client.containers.create(**kwargs)

    failures = _concurrently(create, list(plan.nodes))
    if failures:
        node, exc = failures[0]
        raise translate_error(exc, f"creating container {describe(node)}", plan) from exc

    def start(node: NodeSpec) -> None:
        container = created[node.name]
        container.start()
        # Start is synchronous, but reload until the daemon reports it past "created" so a
        # start that silently did nothing is caught here rather than as a hung run.
        _retry(
            lambda: _expect_started(container),
            retry_on=lambda e: isinstance(e, _NotYetStarted),
            seconds=10,
            every=0.1,
        )

    failures = _concurrently(start, list(plan.nodes))
    if failures:
        node, exc = failures[0]
        raise translate_error(exc, f"starting container {describe(node)}", plan) from exc
    return created


def follow_nodes(
    plan: ClusterPlan, containers: dict[str, Any], sink: LineSink, after_start: SetupHook | None
) -> list[DockerNode]:
    """Start following every started container's logs and exit, then open the start gates.

    Log streams run before the gated set-up, so a node that dies during it is diagnosed fully.
    """
    nodes = [DockerNode(node, containers[node.name], sink) for node in plan.nodes]
    if plan.runtime.start_gate:
        open_start_gates(plan, containers, after_start)
    return nodes


def open_start_gates(
    plan: ClusterPlan, containers: dict[str, Any], after_start: SetupHook | None
) -> None:
    """The gated start's set-up phase: tc, the caller's hook, then open every gate."""
    apply_link(plan, containers)
    if after_start is not None:
        try:
            after_start(plan, containers)
        except NetorchError:
            raise
        except (docker.errors.DockerException, *_TRANSPORT_ERRORS) as e:
            raise translate_error(e, "the set-up phase", plan) from e

    def release(container: Any) -> None:
        exec_checked(container, ["touch", GATE_FILE], "opening the start gate")

    failures = _concurrently(release, list(containers.values()))
    if failures:
        raise failures[0][1]


class DockerBackend:
    """Applies a plan as one labelled bridge network plus one labelled container per node.

    ``after_start`` runs in the set-up phase of a gated plan (``plan.runtime.start_gate``): every
    container is up, link emulation is in place, the workload has not started. The sweep probes
    path MTU and TCP line rate there.
    """

    name: BackendName = "docker"

    def __init__(
        self, client: Any, route_table: Path = PROC_NET_ROUTE,
        after_start: SetupHook | None = None,
    ) -> None:
        self.client = client
        self.route_table = route_table
        self.after_start = after_start
        self._nodes: list[DockerNode] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> DockerBackend:
        """Connect to the configured daemon; DaemonUnavailableError with the fix if none answers."""
        return cls(client_from_settings(settings))

    # -- preflight -------------------------------------------------------------------------

    def preflight(self, plan: ClusterPlan) -> None:
        """Every check that can fail before anything exists: daemon, image, GPUs, clashes."""
        try:
            self.client.ping()
            info = self.client.info()
        except (docker.errors.DockerException, *_TRANSPORT_ERRORS) as e:
            raise DaemonUnavailableError(
                f"no Docker daemon answers ({_explanation(e)}); {DAEMON_FIX}"
            ) from e
        try:
            self.client.images.get(plan.runtime.image)
        except docker.errors.ImageNotFound as e:
            raise ImageError(
                f"image {plan.runtime.image} is not on the Docker daemon; build it with "
                "`netorch image build` (netorch never pulls)"
            ) from e
        except (docker.errors.DockerException, *_TRANSPORT_ERRORS) as e:
            raise translate_error(e, f"looking up image {plan.runtime.image}", plan) from e
        self._check_gpus(plan, info)
        try:
            networks = self.client.api.networks()
            containers = self.client.api.containers(all=True)
        except (docker.errors.DockerException, *_TRANSPORT_ERRORS) as e:
            raise translate_error(e, "listing networks and containers", plan) from e
        self._check_network(plan, networks)
        self._check_names(plan, containers)

    def _check_gpus(self, plan: ClusterPlan, info: dict[str, Any]) -> None:
        gpu_nodes = [n for n in plan.nodes if n.gpus is not None]
        if not gpu_nodes:
            return
        runtimes = sorted((info.get("Runtimes") or {}).keys())
        drivers = {n.gpus.driver for n in gpu_nodes if n.gpus is not None}
        if "nvidia" in drivers and "nvidia" not in runtimes:
            raise PreflightError(
                f"the plan reserves GPUs on {len(gpu_nodes)} node(s) but the Docker daemon has no "
                f"nvidia runtime (runtimes: {', '.join(runtimes) or 'none'}); install the NVIDIA "
                "Container Toolkit and run `nvidia-ctk runtime configure --runtime=docker` then "
                "restart dockerd, or set gpu.per_node = 0 for a CPU run"
            )

    def _check_network(self, plan: ClusterPlan, networks: list[dict[str, Any]]) -> None:
        net = plan.network
        wanted = ipaddress.IPv4Network(net.subnet)
        taken: list[ipaddress.IPv4Network] = []
        clash: tuple[str, ipaddress.IPv4Network] | None = None
        for other in networks:
            if other.get("Name") == net.name:
                raise NetworkConflictError(
                    f"network name {net.name!r} is already taken (id {str(other.get('Id'))[:12]}); "
                    "remove it (`netorch down --run <id>` if netorch made it) or set network.name"
                )
            for cfg in (other.get("IPAM") or {}).get("Config") or []:
                try:
                    sub = ipaddress.ip_network(cfg.get("Subnet", ""), strict=False)
                except ValueError:
                    continue
                if not isinstance(sub, ipaddress.IPv4Network):
                    continue
                taken.append(sub)
                if clash is None and sub.overlaps(wanted):
                    clash = (str(other.get("Name")), sub)
        routes = host_routes(self.route_table) if _is_local(self.client) else []
        taken.extend(r for _, r in routes)
        if clash is not None:
            hint = free_subnet_hint(taken, wanted.prefixlen, net.subnet)
            raise NetworkConflictError(
                f"subnet {net.subnet} overlaps Docker network {clash[0]!r} ({clash[1]}); "
                + (f"use a free subnet, e.g. --subnet {hint}" if hint else "choose a free subnet")
            )
        for iface, route in routes:
            if route.overlaps(wanted):
                hint = free_subnet_hint(taken, wanted.prefixlen, net.subnet)
                raise NetworkConflictError(
                    f"subnet {net.subnet} overlaps the host route {route} on {iface}; containers "
                    "could not reach those hosts and the bridge would shadow them; "
                    + (f"use a free subnet, e.g. --subnet {hint}" if hint else "choose a free subnet")
                )
        if net.bridge_name and _is_local(self.client) and (SYS_CLASS_NET / net.bridge_name).exists():
            raise NetworkConflictError(
                f"network.bridge_name {net.bridge_name!r} is already a host interface; pick another "
                "name or leave it unset"
            )

    def _check_names(self, plan: ClusterPlan, containers: list[dict[str, Any]]) -> None:
        existing = {name.lstrip("/") for c in containers for name in c.get("Names") or []}
        taken = [n.name for n in plan.nodes if n.name in existing]
        if taken:
            raise NetworkConflictError(
                f"container name(s) already taken: {', '.join(taken)}; remove them "
                "(`netorch down --run <id>` if netorch made them) or change cluster.name"
            )

    # -- up --------------------------------------------------------------------------------

    def up(self, plan: ClusterPlan, sink: LineSink) -> list[NodeHandle]:
        """Create the network, create every container concurrently, then start them."""
        try:
            network = self.client.networks.create(**network_create_kwargs(plan))
        except (docker.errors.DockerException, *_TRANSPORT_ERRORS) as e:
            raise translate_error(e, f"creating network {plan.network.name}", plan) from e
        containers = start_containers(plan, network.id, lambda node: self.client, lambda n: n.name)
        nodes = follow_nodes(plan, containers, sink, self.after_start)
        self._nodes.extend(nodes)
        return list(nodes)

    # -- stop / down -----------------------------------------------------------------------

    def _list_containers(self, run_id: str, running_only: bool = False) -> list[Any]:
        filters: dict[str, Any] = run_filters(run_id)
        if running_only:
            filters["status"] = "running"
        # ignore_removed: list() inspects each hit, and a concurrent down may remove one meanwhile.
        return list(self.client.containers.list(
            all=not running_only, filters=filters, ignore_removed=True
        ))

    def stop(self, plan: ClusterPlan, grace_s: float) -> None:
        """SIGTERM every running container of the run, SIGKILL after ``grace_s``, concurrently.

        Errors are not raised: stop runs on the failure path, and down() force-removes anyway.
        """
        try:
            running = self._list_containers(plan.run_id, running_only=True)
        except (docker.errors.DockerException, *_TRANSPORT_ERRORS):
            return
        timeout = max(0, int(grace_s + 0.999))

        def stop_one(container: Any) -> None:
            try:
                container.stop(timeout=timeout)
            except (docker.errors.DockerException, *_TRANSPORT_ERRORS):
                pass  # already gone, or stopping anyway

        _concurrently(stop_one, running)

    def down(self, plan: ClusterPlan) -> None:
        """Force-remove the run's containers, then its network, found by label. Idempotent."""
        try:
            remove_by_label(self.client, plan.run_id)
        finally:
            # Removal ends every log stream and wait; give the threads a moment to notice.
            deadline = time.monotonic() + 2.0
            for dn in self._nodes:
                dn.join(timeout=max(0.0, deadline - time.monotonic()))
            self._nodes = []  # a gang restart brings the same plan up again on this backend

    # -- inspection helpers (tests, doctor) ------------------------------------------------

    def inspect(self, plan: ClusterPlan) -> dict[str, Any]:
        """The daemon's view of the run: network attrs and each container's attrs, by node name."""
        nets = self.client.networks.list(filters=run_filters(plan.run_id))
        return {
            "network": nets[0].attrs if nets else None,
            "containers": {c.name: c.attrs for c in self._list_containers(plan.run_id)},
        }


class _NotYetStarted(Exception):
    pass


def _expect_started(container: Any) -> None:
    container.reload()
    if container.status == "created":
        raise _NotYetStarted(container.name)


def _still_attached(e: BaseException) -> bool:
    """Network removal races the endpoint detach of just-removed containers; that is transient."""
    if isinstance(e, docker.errors.NotFound):
        return False
    if isinstance(e, docker.errors.APIError):
        low = _explanation(e).lower()
        return "active endpoints" in low or "in progress" in low or e.status_code in (409, 500)
    return isinstance(e, _TRANSPORT_ERRORS)


def _remove_container(container: Any) -> None:
    try:
        _retry(
            lambda: container.remove(force=True, v=True),
            retry_on=lambda e: isinstance(e, docker.errors.APIError)
            and not isinstance(e, docker.errors.NotFound)
            and "in progress" in _explanation(e).lower(),
            seconds=10,
        )
    except docker.errors.NotFound:
        pass  # removed meanwhile: that is the goal


def remove_by_label(
    client: Any, run_id: str | None, with_networks: bool = True
) -> list[str]:
    """Force-remove netorch's containers, then networks, of one run (``None``: of every run).

    Only resources labelled ``io.netorch.managed=true`` (and the run id) are touched. Returns
    ``"container NAME"`` / ``"network NAME"`` for each thing removed; raises BackendError naming
    what could not be removed. ``with_networks=False`` leaves networks alone (a swarm worker, whose
    overlay only the manager may remove).
    """
    filters = run_filters(run_id)
    what = f"run {run_id}" if run_id else "every netorch run"
    try:
        # ignore_removed: list() inspects each hit, and a concurrent down may remove one meanwhile.
        containers = list(client.containers.list(all=True, filters=filters, ignore_removed=True))
    except (docker.errors.DockerException, *_TRANSPORT_ERRORS) as e:
        raise translate_error(e, f"listing containers of {what}") from e
    failures = _concurrently(_remove_container, containers)
    removed = [f"container {c.name}" for c in containers if c not in {f[0] for f in failures}]
    try:
        networks = list(client.networks.list(filters=filters)) if with_networks else []
    except (docker.errors.DockerException, *_TRANSPORT_ERRORS) as e:
        raise translate_error(e, f"listing networks of {what}") from e
    net_failures: list[tuple[Any, BaseException]] = []
    for net in networks:
        try:
            _retry(net.remove, retry_on=_still_attached, seconds=10)
            removed.append(f"network {net.name}")
        except docker.errors.NotFound:
            removed.append(f"network {net.name}")
        except (docker.errors.DockerException, *_TRANSPORT_ERRORS) as e:
            net_failures.append((net, e))
    if failures or net_failures:
        left = [f"container {c.name}: {_explanation(e)}" for c, e in failures]
        left += [f"network {n.name}: {_explanation(e)}" for n, e in net_failures]
        raise BackendError(
            f"could not remove everything of {what}: " + "; ".join(left)
            + f"; retry with `netorch down {'--run ' + run_id if run_id else '--all'}`"
        )
    return removed


def down_all(client: Any, run_id: str | None) -> list[str]:
    """``netorch down``: remove netorch-managed resources of ``run_id``, or of every run (None)."""
    return remove_by_label(client, run_id)

