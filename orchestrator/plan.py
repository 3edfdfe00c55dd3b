"""The plan: what a run is, before anything exists.

``build_plan(settings, run_id, backend)`` is pure and deterministic: the same inputs give an equal
:class:`ClusterPlan`. Backends apply a plan, renderers write it as files, ``netorch plan`` prints
it. Plan objects are frozen dataclasses of tuples so nothing downstream can mutate them.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.errors import PlanError
from orchestrator.settings import (
    BenchSettings,
    LinkSettings,
    MetricsSettings,
    Settings,
    TrainSettings,
    address_pool,
    node_placement,
    parse_rate_bits,
)

LABEL_RUN = "io.netorch.run"
LABEL_ROLE = "io.netorch.role"
LABEL_RANK = "io.netorch.node-rank"
LABEL_MANAGED = "io.netorch.managed"

BackendName = Literal["process", "docker"]
WORKLOADS = ("bench", "train")
# The in-node module each workload runs (``python -m ...`` under torchrun).
WORKLOAD_MODULES = {"bench": "train.bench", "train": "train.job"}
# Where the master's checkpoint directory appears inside its container (a bind mount).
CONTAINER_CHECKPOINT_DIR = "/netorch/checkpoints"
MAX_DOCKER_NAME = 63
_RUN_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{2,31}$")


class Role(str, enum.Enum):
    """A node's part in the job: node_rank 0 is the master and hosts the c10d store."""

    MASTER = "master"
    WORKER = "worker"


def new_run_id() -> str:
    """A sortable, unique run id: ``YYYYmmdd-HHMMSS-xxxx``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


# Docker names a container's interface on its first network eth0, whatever NCCL/gloo are told to
# use; link emulation shapes that interface.
CONTAINER_IFNAME = "eth0"
# tbf queue bound: how long a packet may wait for tokens before it is dropped.
TBF_LATENCY = "50ms"


@dataclass(frozen=True)
class LinkSpec:
    """Link emulation applied with tc to every container's eth0 right after start.

    ``rate`` shapes egress with tbf; ``delay``/``jitter``/``loss`` use netem (root qdisc, with
    tbf as its child when both are set). Values are tc syntax, validated by the settings.
    """

    rate: str | None = None
    delay: str | None = None
    jitter: str | None = None
    loss: str | None = None

    @property
    def rate_bits(self) -> int | None:
        """The rate in bit/s, or None when the rate is not shaped."""
        return parse_rate_bits(self.rate) if self.rate else None


def link_spec(link: LinkSettings) -> LinkSpec | None:
    """The plan's view of ``[network.link]``; None when nothing is emulated."""
    if not link.enabled:
        return None
    return LinkSpec(rate=link.rate, delay=link.delay, jitter=link.jitter, loss=link.loss)


def tc_commands(link: LinkSpec, ifname: str = CONTAINER_IFNAME) -> tuple[tuple[str, ...], ...]:
    """The tc invocations (argv) that make ``ifname`` behave like ``link``, in order.

    tbf's burst must hold at least one GSO super-packet (64 KiB on veth) or tbf splits every
    packet in software; 4 ms worth of tokens is above that from ~130 Mbit/s up and keeps the
    long-run rate exact (bursts only shift when bytes leave, not how many leave per second).
    """
    commands: list[tuple[str, ...]] = []
    parent: tuple[str, ...] = ("root", "handle", "1:")
    if link.delay or link.loss:
        netem: list[str] = ["tc", "qdisc", "add", "dev", ifname, "root", "handle", "1:", "netem"]
        if link.delay:
            netem += ["delay", link.delay]
            if link.jitter:
                netem.append(link.jitter)
        if link.loss:
            netem += ["loss", link.loss]
        commands.append(tuple(netem))
        parent = ("parent", "1:1", "handle", "10:")
    bits = link.rate_bits
    if bits:
        burst = max(64 * 1024 * 2, bits // 8 // 250)
        commands.append((
            "tc", "qdisc", "add", "dev", ifname, *parent, "tbf", "rate", f"{bits}bit",
            "burst", str(burst), "latency", TBF_LATENCY,
        ))
    return tuple(commands)


@dataclass(frozen=True)
class NetworkSpec:
    """The fabric the nodes share. ``driver="loopback"`` means the host's ``lo`` (process backend);
    ``"overlay"`` (several hosts) is an attachable swarm overlay created through the manager."""

    name: str
    driver: Literal["bridge", "overlay", "loopback"]
    subnet: str
    gateway: str | None
    ip_range: str | None
    mtu: int | None
    internal: bool
    bridge_name: str | None
    interface: str
    labels: tuple[tuple[str, str], ...] = ()
    link: LinkSpec | None = None
    # Overlay only: standalone containers (fixed IPs, GPUs) may join; services cannot do either.
    attachable: bool = False


@dataclass(frozen=True)
class HostSpec:
    """A Docker host of a multi-host plan; ``hosts[0]`` is the swarm manager."""

    name: str
    url: str
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    gpus: int | None = None


@dataclass(frozen=True)
class GpuSpec:
    """A GPU reservation: ``count`` devices, or exactly ``device_ids``."""

    count: int | None
    device_ids: tuple[str, ...]
    driver: str
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class RuntimeSpec:
    """Container options shared by every node (ignored by the process backend)."""

    image: str
    shm_size: str
    ipc_mode: str | None
    memlock: int | None
    init: bool
    stop_timeout_s: int
    # Capabilities added to every container. NET_ADMIN only when link emulation needs tc; the
    # start gate drops it from the workload's bounding set again (see backends/docker.py).
    cap_add: tuple[str, ...] = ()
    # Hold the workload until the backend's set-up phase (tc, probes) has run in every node.
    start_gate: bool = False


@dataclass(frozen=True)
class MountSpec:
    """A host directory bind-mounted into a node's container (ignored by the process backend,
    whose nodes see the host's files directly)."""

    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class NodeSpec:
    """One node: a container (or process group) running torchrun for ``nproc_per_node`` ranks."""

    name: str
    hostname: str
    role: Role
    node_rank: int
    ip: str
    aliases: tuple[str, ...]
    gpus: GpuSpec | None
    env: tuple[tuple[str, str], ...]
    command: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]
    mounts: tuple[MountSpec, ...] = ()
    # The host (HostSpec.name) whose daemon runs the node; None: the local / configured daemon.
    host: str | None = None

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    @property
    def labels_dict(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True)
class ClusterPlan:
    """Everything needed to run one job, decided up front."""

    run_id: str
    backend: BackendName
    workload: str
    dist_backend: str
    nnodes: int
    nproc_per_node: int
    world_size: int
    master_addr: str
    master_port: int
    network: NetworkSpec
    runtime: RuntimeSpec
    nodes: tuple[NodeSpec, ...]
    labels: tuple[tuple[str, str], ...] = field(default=())
    hosts: tuple[HostSpec, ...] = ()

    @property
    def master(self) -> NodeSpec:
        return self.nodes[0]

    @property
    def multi_host(self) -> bool:
        """True when nodes spread over several Docker hosts (an overlay network)."""
        return len(self.hosts) > 1

    def to_dict(self) -> dict[str, Any]:
        """Plain data for YAML/JSON output (tuples of pairs become mappings)."""
        plain: dict[str, Any] = _plain(dataclasses.asdict(self))
        return plain


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], str)
                         for v in value):
            return {k: _plain(v) for k, v in value}
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def bench_args(bench: BenchSettings, dist_backend: str, timeout_s: int, run_id: str) -> tuple[str, ...]:
    """The ``python -m train.bench`` flags equal to ``bench`` (nccl-tests meanings)."""
    return (
        "--ops", ",".join(bench.ops),
        "--min-bytes", str(bench.min_bytes),
        "--max-bytes", str(bench.max_bytes),
        "--step-factor", str(bench.step_factor),
        "--warmup", str(bench.warmup),
        "--iters", str(bench.iters),
        "--dtype", ",".join(bench.dtype),
        "--check", "1" if bench.check else "0",
        "--in-place", bench.in_place,
        "--reduce-op", bench.reduce_op,
        "--dist-backend", dist_backend,
        "--timeout-s", str(timeout_s),
        "--run-id", run_id,
    )


def train_args(
    train: TrainSettings, metrics: MetricsSettings, dist_backend: str, timeout_s: int, run_id: str
) -> tuple[str, ...]:
    """The ``python -m train.job`` flags equal to ``train`` (and the metrics hold)."""
    return (
        "--steps", str(train.steps),
        "--batch-size", str(train.batch_size),
        "--width", str(train.width),
        "--depth", str(train.depth),
        "--bucket-cap-mb", repr(train.bucket_cap_mb),
        "--checkpoint-every", str(train.checkpoint_every),
        "--keep-checkpoints", str(train.keep_checkpoints),
        "--seed", str(train.seed),
        "--lr", repr(train.lr),
        "--progress-every", str(train.progress_every),
        "--dist-backend", dist_backend,
        "--timeout-s", str(timeout_s),
        "--run-id", run_id,
        "--metrics-hold-s", repr(metrics.hold_s),
        "--metrics-hold-scrapes", str(metrics.hold_scrapes),
    )


def checkpoint_dir(settings: Settings, run_id: str) -> str:
    """The host directory of a run's checkpoints: ``<output>/<run_id>/checkpoints``, absolute.

    Absolute because process-backend nodes run in the project root and Docker binds need it; it
    is resolved against the current directory, like every other relative path the user gives.
    """
    return os.path.abspath(os.path.join(settings.output, run_id, "checkpoints"))


def with_restart(plan: ClusterPlan, restart: int) -> ClusterPlan:
    """``plan`` for gang restart number ``restart`` (1, 2, ...): every node's env says which.

    The job reports it; nothing else changes (same names, addresses and checkpoint directory).
    """
    nodes = tuple(
        dataclasses.replace(
            node,
            env=(*((k, v) for k, v in node.env if k != "NETORCH_RESTART_COUNT"),
                 ("NETORCH_RESTART_COUNT", str(restart))),
        )
        for node in plan.nodes
    )
    return dataclasses.replace(plan, nodes=nodes)


def with_start_gate(plan: ClusterPlan) -> ClusterPlan:
    """``plan`` whose workload waits until the backend's set-up phase released it.

    The sweep uses it to probe path MTU and TCP line rate with every container up but the
    benchmark not yet started, so neither disturbs the other.
    """
    return dataclasses.replace(plan, runtime=dataclasses.replace(plan.runtime, start_gate=True))


def _overlay_dynamic_range(subnet: str, ip_range: str | None, ips: list[str]) -> str:
    """The overlay's ``ip_range``: the upper half of the subnet, kept for swarm's own addresses.

    Swarm gives every host that joins an overlay a load-balancer address taken dynamically from
    the pool -- the lowest free ones, i.e. exactly the fixed node addresses -- and the start of a
    node then fails with "could not allocate IP ... Address already in use" / "context deadline
    exceeded". Fixed IPs may lie outside ``ip_range`` (inside the subnet), so nodes take the
    lower half and dynamic allocation is confined to the upper half.
    """
    net = ipaddress.IPv4Network(subnet)
    if ip_range is not None:
        raise PlanError(
            f"network.ip_range {ip_range} cannot be used on a multi-host overlay: netorch keeps "
            f"the upper half of {subnet} for swarm's own per-host addresses and places nodes in "
            "the lower half; drop network.ip_range"
        )
    lower, upper = net.subnets(prefixlen_diff=1)
    outside = [ip for ip in ips if ipaddress.IPv4Address(ip) not in lower]
    if outside:
        need = 32 - max(3, (len(ips) + 3).bit_length()) - 1
        raise PlanError(
            f"network.subnet {subnet}: on an overlay the nodes must fit in its lower half {lower} "
            f"(the upper half is swarm's), but {len(ips)} nodes do not; use a /{need} or larger"
        )
    return str(upper)


def _gpu_spec(settings: Settings, node_rank: int) -> GpuSpec | None:
    gpu = settings.gpu
    caps = tuple(gpu.capabilities)
    if gpu.device_ids:
        return GpuSpec(None, tuple(gpu.device_ids[node_rank]), gpu.driver, caps)
    if gpu.per_node:
        return GpuSpec(gpu.per_node, (), gpu.driver, caps)
    return None


def build_plan(
    settings: Settings, run_id: str, backend: BackendName, workload: str = "bench"
) -> ClusterPlan:
    """Turn validated settings into a plan. Pure: no I/O, no clock, no randomness.

    Addresses: on ``docker`` the master takes the first usable address of ``ip_range`` (or the
    subnet) that is not the gateway, worker *i* the *i*-th after it. On ``process`` every node is
    ``127.0.0.1`` on ``lo``.
    """
    if not _RUN_ID_RE.match(run_id):
        raise PlanError(
            f"run id {run_id!r} is not usable in resource names; use 3-32 of [a-z0-9-]"
        )
    if workload not in WORKLOADS:
        raise PlanError(f"workload {workload!r} is unknown; use one of {', '.join(WORKLOADS)}")
    c = settings.cluster
    n = c.nodes
    world = n * c.procs_per_node
    prefix = f"{c.name}-{run_id}"
    run_labels = ((LABEL_RUN, run_id), (LABEL_MANAGED, "true"))

    try:
        placement = node_placement(settings)
    except ValueError as e:
        raise PlanError(str(e)) from None
    hosts = tuple(
        HostSpec(h.name, h.url, h.tls_ca, h.tls_cert, h.tls_key, h.gpus) for h in settings.hosts
    )
    if backend == "process" and len(hosts) > 1:
        raise PlanError(
            f"{len(hosts)} hosts are configured but the process backend runs on this host only; "
            "use --backend docker (or drop [[hosts]])"
        )
    overlay = backend == "docker" and len(hosts) > 1
    if backend == "docker":
        net = settings.network
        subnet = ipaddress.IPv4Network(net.subnet)
        gateway = net.gateway or str(next(subnet.hosts()))
        ips = [str(a) for a in address_pool(net)[:n]]
        ip_range = net.ip_range
        if overlay:
            ip_range = _overlay_dynamic_range(net.subnet, net.ip_range, ips)
        ifname = net.interface
        network = NetworkSpec(
            name=net.name or f"{prefix}-net",
            driver="overlay" if overlay else "bridge",
            subnet=str(subnet),
            gateway=gateway,
            ip_range=ip_range,
            mtu=net.mtu,
            internal=net.internal,
            # A bridge name is a host interface; an overlay has none on the hosts.
            bridge_name=None if overlay else net.bridge_name,
            interface=ifname,
            labels=run_labels,
            link=link_spec(net.link),
            attachable=overlay,
        )
    else:
        ips = ["127.0.0.1"] * n
        ifname = "lo"
        network = NetworkSpec(
            name="lo", driver="loopback", subnet="127.0.0.0/8", gateway=None, ip_range=None,
            mtu=None, internal=True, bridge_name=None, interface=ifname, labels=run_labels,
        )
    master_addr = ips[0]
    if workload == "train":
        args = train_args(settings.train, settings.metrics, c.dist_backend, c.timeout_s, run_id)
    else:
        args = bench_args(settings.bench, c.dist_backend, c.timeout_s, run_id)
    ckpt_host = checkpoint_dir(settings, run_id)

    nodes = []
    for rank in range(n):
        role = Role.MASTER if rank == 0 else Role.WORKER
        short = "master" if rank == 0 else f"worker-{rank}"
        name = f"{prefix}-{short}"
        env: dict[str, str] = {
            "MASTER_ADDR": master_addr,
            "MASTER_PORT": str(c.master_port),
            "WORLD_SIZE": str(world),
            "NNODES": str(n),
            "NODE_RANK": str(rank),
            "NPROC_PER_NODE": str(c.procs_per_node),
            # "=" makes NCCL match the interface exactly instead of by prefix (eth0 vs eth01).
            "NCCL_SOCKET_IFNAME": f"={ifname}",
            "GLOO_SOCKET_IFNAME": ifname,
            "NCCL_IB_DISABLE": "1",
            "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
            "OMP_NUM_THREADS": str(c.omp_num_threads),
            "PYTHONUNBUFFERED": "1",
            "NETORCH_RUN_ID": run_id,
            "NETORCH_NODE_NAME": name,
            "NETORCH_IFNAME": ifname,
            "NETORCH_PLANNED_IP": ips[rank],
        }
        mounts: tuple[MountSpec, ...] = ()
        if workload == "train":
            # Only rank 0 (on the master) reads and writes checkpoints; it broadcasts on resume.
            if backend == "docker":
                env["NETORCH_CHECKPOINT_DIR"] = CONTAINER_CHECKPOINT_DIR
                if rank == 0:
                    mounts = (MountSpec(ckpt_host, CONTAINER_CHECKPOINT_DIR),)
            else:
                env["NETORCH_CHECKPOINT_DIR"] = ckpt_host
            if settings.metrics.enabled:
                # Containers have their own ports; local process nodes share the host's.
                base = settings.metrics.port_base
                if backend != "docker":
                    base += rank * c.procs_per_node
                env["NETORCH_METRICS_ADDR"] = "0.0.0.0" if backend == "docker" else "127.0.0.1"
                env["NETORCH_METRICS_PORT_BASE"] = str(base)
        env.update(settings.env)  # user env last: it may override NCCL_IB_DISABLE & co.
        command = (
            "torchrun",
            "--nnodes", str(n),
            "--nproc-per-node", str(c.procs_per_node),
            "--node-rank", str(rank),
            "--master-addr", master_addr,
            "--master-port", str(c.master_port),
            "--max-restarts", "0",
            "-m", WORKLOAD_MODULES[workload],
            *args,
        )
        nodes.append(
            NodeSpec(
                name=name,
                hostname=short,
                role=role,
                node_rank=rank,
                ip=ips[rank],
                aliases=(short, name) if backend == "docker" else (),
                gpus=_gpu_spec(settings, rank),
                env=tuple(env.items()),
                command=command,
                labels=(*run_labels, (LABEL_ROLE, role.value), (LABEL_RANK, str(rank))),
                mounts=mounts,
                host=placement[rank] if backend == "docker" else None,
            )
        )
    d = settings.docker
    link = network.link
    return ClusterPlan(
        run_id=run_id,
        backend=backend,
        workload=workload,
        dist_backend=c.dist_backend,
        nnodes=n,
        nproc_per_node=c.procs_per_node,
        world_size=world,
        master_addr=master_addr,
        master_port=c.master_port,
        network=network,
        runtime=RuntimeSpec(
            image=c.image, shm_size=d.shm_size, ipc_mode=d.ipc_mode, memlock=d.memlock,
            init=True, stop_timeout_s=d.stop_timeout_s,
            # tc needs NET_ADMIN; granted only when a link is emulated, and the gate holds the
            # workload until the shaping is in place.
            cap_add=("NET_ADMIN",) if link is not None else (),
            start_gate=link is not None,
        ),
        nodes=tuple(nodes),
        labels=run_labels,
        hosts=hosts if backend == "docker" else (),
    )
