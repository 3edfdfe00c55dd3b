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
from orchestrator.grammar import parse_rate_bits
# Re-exported: a plan is read together with its workload.
from orchestrator.workloads import CONTAINER_CHECKPOINT_DIR as CONTAINER_CHECKPOINT_DIR
from orchestrator.workloads import WORKLOADS as WORKLOADS
from orchestrator.workloads import CheckpointSpec as CheckpointSpec
from orchestrator.workloads import WorkloadSpec as WorkloadSpec
from orchestrator.workloads import checkpoint_dir as checkpoint_dir
from orchestrator.workloads import workload_for as workload_for
from orchestrator.settings import LinkSettings, LinkShape, Settings

LABEL_RUN = "io.netorch.run"
LABEL_ROLE = "io.netorch.role"
LABEL_RANK = "io.netorch.node-rank"
LABEL_MANAGED = "io.netorch.managed"

# A registered backend's name (orchestrator.backends.registry): process, docker, or a plug-in's.
BackendName = str
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


def link_spec(link: LinkShape) -> LinkSpec | None:
    """The plan's view of ``[network.link]`` (its common fields); None when nothing is emulated."""
    if not link.shaped:
        return None
    return LinkSpec(rate=link.rate, delay=link.delay, jitter=link.jitter, loss=link.loss)


def node_link_specs(link: LinkSettings) -> tuple[tuple[str, LinkSpec], ...]:
    """``[network.link.nodes.<node>]`` as (node name, that node's whole link), sorted: the
    override's fields over the common ones."""
    out = []
    for node, shape in sorted(link.nodes.items()):
        merged = {k: getattr(shape, k) if getattr(shape, k) is not None else getattr(link, k)
                  for k in ("rate", "delay", "jitter", "loss")}
        out.append((node, LinkSpec(**merged)))
    return tuple(out)


def pair_link_specs(link: LinkSettings) -> tuple[tuple[str, str, LinkSpec], ...]:
    """``[network.link.pairs."<a>:<b>"]`` as (a, b, link) with a < b, sorted."""
    out = []
    for key, shape in link.pairs.items():
        a, b = sorted(key.split(":"))
        spec = link_spec(shape)
        if spec is not None:
            out.append((a, b, spec))
    return tuple(sorted(out, key=lambda t: (t[0], t[1])))


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
    # Per-node links (node short name, its whole link) that replace ``link`` on that node, and
    # links between two nodes only (a, b, link): both directions, filtered by the peer's address.
    node_links: tuple[tuple[str, LinkSpec], ...] = ()
    pair_links: tuple[tuple[str, str, LinkSpec], ...] = ()
    # The interface this network appears as inside a node (containers): eth0, or eth1 when a
    # management network takes eth0 (see backends/docker/kind.py).
    device: str = CONTAINER_IFNAME

    @property
    def shaped(self) -> bool:
        """True when tc shapes any node (the containers then need NET_ADMIN and a start gate)."""
        return self.link is not None or bool(self.node_links) or bool(self.pair_links)


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
    # Memory limit of each container (docker.memory, e.g. "4g"); None: no limit.
    memory: str | None = None


@dataclass(frozen=True)
class MountSpec:
    """A host directory (``kind="bind"``) or a named volume mounted into a node's container.

    Only fabrics with ``in_node_paths`` (containers) mount anything; on the process backend the
    nodes see the host's files directly and a plan with mounts is refused.
    """

    source: str
    target: str
    read_only: bool = False
    kind: Literal["bind", "volume"] = "bind"


@dataclass(frozen=True)
class FabricSpec:
    """What a backend decides for a plan: the network, every node's address and host, and how
    nodes see paths and ports. ``BackendKind.fabric`` returns it; ``build_plan`` only reads it.

    ``ips[i]`` is node rank *i*'s address, ``placement[i]`` the host (HostSpec.name) that runs it
    (None: the backend's only host). ``aliases``: nodes get DNS aliases (short and full name) on
    the network. ``in_node_paths``: nodes are containers that see host directories only through
    mounts (False: they run on the host and see its files). ``shared_ports``: nodes share one
    network namespace, so per-node ports (metrics) must be offset. ``metrics_addr``: where a
    rank's /metrics endpoint binds.
    """

    network: NetworkSpec
    ips: tuple[str, ...]
    placement: tuple[str | None, ...]
    hosts: tuple[HostSpec, ...] = ()
    aliases: bool = True
    in_node_paths: bool = True
    shared_ports: bool = False
    metrics_addr: str = "0.0.0.0"
    # The management network beside the fabric (``[network.management]``) and every node's
    # address on it; None when there is none or the backend has no second network.
    management: NetworkSpec | None = None
    management_ips: tuple[str, ...] = ()


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
    # The node's address on the management network (ClusterPlan.management); None without one.
    management_ip: str | None = None

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
    # What the nodes run and whether rank 0 reports a result line (netorch's own workloads do; a
    # user's script does not).
    emits_result: bool = True
    workdir: str | None = None
    # The management network (egress, metrics) beside the fabric; None: the fabric only.
    management: NetworkSpec | None = None

    @property
    def fabric_interface(self) -> str:
        """The interface that holds each node's fabric address: where collectives must go.
        Docker names a container's first network eth0; local processes use loopback."""
        return self.network.interface if self.network.driver == "loopback" else self.network.device

    @property
    def master(self) -> NodeSpec:
        return self.nodes[0]

    def container_hostname(self, node: NodeSpec) -> str:
        """The hostname ``node``'s container gets: its short name (``master``), or with a
        management network its unique container name: Docker's DNS answers a container's hostname
        (and a compose service's name) on each of its networks, the first (the management
        network, eth0) included, so ``master`` must be the fabric's alias alone."""
        return node.name if self.management is not None else node.hostname

    @property
    def multi_host(self) -> bool:
        """True when nodes spread over several Docker hosts (an overlay network)."""
        return len(self.hosts) > 1

    def to_dict(self) -> dict[str, Any]:
        """Plain data for YAML/JSON output (tuples of pairs become mappings)."""
        plain: dict[str, Any] = _plain(self)
        return plain


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _plain(value: Any) -> Any:
    # dataclasses.asdict deep-copies every leaf first; walking the frozen fields directly is
    # several times faster, which a plan of 10,000 nodes notices.
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = _FIELD_NAMES.get(type(value))
        if names is None:
            names = _FIELD_NAMES[type(value)] = tuple(f.name for f in dataclasses.fields(value))
        return {name: _plain(getattr(value, name)) for name in names}
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


def _gpu_spec(settings: Settings, node_rank: int) -> GpuSpec | None:
    gpu = settings.gpu
    caps = tuple(gpu.capabilities)
    if gpu.device_ids:
        return GpuSpec(None, tuple(gpu.device_ids[node_rank]), gpu.driver, caps)
    if gpu.per_node:
        return GpuSpec(gpu.per_node, (), gpu.driver, caps)
    return None


def node_short_name(rank: int) -> str:
    """``master`` for node rank 0, ``worker-<rank>`` otherwise (hostname, alias, service name)."""
    return "master" if rank == 0 else f"worker-{rank}"


def launcher_command(settings: Settings, rank: int, master_addr: str) -> tuple[str, ...]:
    """The in-node launcher and its flags for node ``rank`` (torchrun's flag names, which
    ``python -m train.launch`` takes too)."""
    c = settings.cluster
    # -P keeps the working directory off sys.path, so a user's own train.py cannot shadow the
    # launcher's package (train/launch.py forgets the package again before the rank's target).
    launcher = ("python", "-P", "-m", "train.launch") if c.launcher == "netorch" else ("torchrun",)
    return (
        *launcher,
        "--nnodes", str(c.nodes),
        "--nproc-per-node", str(c.procs_per_node),
        "--node-rank", str(rank),
        "--master-addr", master_addr,
        "--master-port", str(c.master_port),
        "--max-restarts", "0",
    )


def _node_mounts(work: WorkloadSpec, fabric: FabricSpec, rank: int) -> tuple[MountSpec, ...]:
    mounts: list[MountSpec] = []
    if work.workdir_source is not None and work.workdir is not None:
        mounts.append(MountSpec(work.workdir_source, work.workdir, work.workdir_read_only))
    ckpt = work.checkpoint
    if ckpt is not None and (rank == 0 or not ckpt.master_only):
        mounts.append(MountSpec(ckpt.host_dir, ckpt.in_node_dir))
    mounts.extend(work.mounts)
    return tuple(mounts) if fabric.in_node_paths else ()


def build_plan(
    settings: Settings, run_id: str, backend: BackendName,
    workload: str | WorkloadSpec = "bench",
) -> ClusterPlan:
    """Turn validated settings into a plan. Pure: no I/O, no clock, no randomness.

    The backend's kind (``orchestrator.backends.registry``) decides the fabric: network,
    addresses, aliases, placement, how nodes see paths and ports. The workload decides what
    every node runs. Nothing here knows a backend by name.
    """
    from orchestrator.backends.registry import backend_kind

    if not _RUN_ID_RE.match(run_id):
        raise PlanError(
            f"run id {run_id!r} is not usable in resource names; use 3-32 of [a-z0-9-]"
        )
    work = workload if isinstance(workload, WorkloadSpec) else workload_for(
        workload, settings, run_id)
    fabric = backend_kind(backend).fabric(settings, run_id)
    if not fabric.in_node_paths and (work.mounts or work.workdir_source):
        raise PlanError(
            f"the {backend} backend runs nodes on this host's own filesystem and mounts nothing; "
            "pass host paths to your script instead, or use --backend docker for --mount"
        )
    if settings.network.management.enabled and fabric.management is None:
        raise PlanError(
            f"network.management: the {backend} backend has no second network; use "
            "--backend docker on one host, or drop [network.management]")
    c = settings.cluster
    n = c.nodes
    world = n * c.procs_per_node
    prefix = f"{c.name}-{run_id}"
    run_labels = ((LABEL_RUN, run_id), (LABEL_MANAGED, "true"))
    master_addr = fabric.ips[0]

    # Every node's env in one order: the shared values once, then per node the values that
    # differ (rank, name, address, metrics port), unless the workload or the user set them.
    ckpt = work.checkpoint
    ckpt_dir = None
    if ckpt is not None:
        ckpt_dir = ckpt.in_node_dir if fabric.in_node_paths else ckpt.host_dir
    shared = _shared_env(settings, fabric, work, run_id, master_addr, ckpt_dir)
    per_node = {"NODE_RANK", "NETORCH_NODE_NAME", "NETORCH_PLANNED_IP"}
    if work.metrics and fabric.shared_ports:
        per_node.add("NETORCH_METRICS_PORT_BASE")
    per_node -= {*work.env, *settings.env}
    port_base = settings.metrics.port_base
    gpus_shared = None if settings.gpu.device_ids else _gpu_spec(settings, 0)
    nodes = []
    for rank in range(n):
        role = Role.MASTER if rank == 0 else Role.WORKER
        short = node_short_name(rank)
        name = f"{prefix}-{short}"
        env = shared.copy()
        if per_node:
            values = {"NODE_RANK": str(rank), "NETORCH_NODE_NAME": name,
                      "NETORCH_PLANNED_IP": fabric.ips[rank],
                      # Nodes that share the host's ports (local processes) get a block each.
                      "NETORCH_METRICS_PORT_BASE": str(port_base + rank * c.procs_per_node)}
            for key in per_node:
                env[key] = values[key]
        target = work.target
        if work.placeholders:
            target = _expand_placeholders(target, settings, rank, master_addr, ckpt_dir)
        nodes.append(
            NodeSpec(
                name=name,
                hostname=short,
                role=role,
                node_rank=rank,
                ip=fabric.ips[rank],
                aliases=(short, name) if fabric.aliases else (),
                gpus=_gpu_spec(settings, rank) if settings.gpu.device_ids else gpus_shared,
                env=tuple(env.items()),
                command=(*launcher_command(settings, rank, master_addr), *target)
                if work.launcher else target,
                labels=(*run_labels, (LABEL_ROLE, role.value), (LABEL_RANK, str(rank)),
                        *work.labels),
                mounts=_node_mounts(work, fabric, rank),
                host=fabric.placement[rank],
                management_ip=fabric.management_ips[rank] if fabric.management else None,
            )
        )
    d = settings.docker
    shaped = fabric.network.shaped
    return ClusterPlan(
        run_id=run_id,
        backend=backend,
        workload=work.kind,
        dist_backend=c.dist_backend,
        nnodes=n,
        nproc_per_node=c.procs_per_node,
        world_size=world,
        master_addr=master_addr,
        master_port=c.master_port,
        network=dataclasses.replace(fabric.network, labels=run_labels),
        runtime=RuntimeSpec(
            image=work.image or c.image, shm_size=d.shm_size, ipc_mode=d.ipc_mode,
            memlock=d.memlock, init=True, stop_timeout_s=d.stop_timeout_s,
            # tc needs NET_ADMIN; granted only when a link is emulated, and the gate holds the
            # workload until the shaping is in place.
            cap_add=("NET_ADMIN",) if shaped else (),
            start_gate=shaped,
            memory=d.memory,
        ),
        nodes=tuple(nodes),
        labels=run_labels,
        hosts=fabric.hosts,
        emits_result=work.emits_result,
        workdir=work.workdir,
        management=None if fabric.management is None
        else dataclasses.replace(fabric.management, labels=run_labels),
    )


def _shared_env(settings: Settings, fabric: FabricSpec, work: WorkloadSpec, run_id: str,
                master_addr: str, ckpt_dir: str | None) -> dict[str, str]:
    """The env every node gets, in order; the per-node keys hold node 0's values here."""
    c = settings.cluster
    ifname = fabric.network.interface
    env: dict[str, str] = {
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(c.master_port),
        "WORLD_SIZE": str(c.nodes * c.procs_per_node),
        "NNODES": str(c.nodes),
        "NODE_RANK": "0",
        "NPROC_PER_NODE": str(c.procs_per_node),
        # "=" makes NCCL match the interface exactly instead of by prefix (eth0 vs eth01).
        "NCCL_SOCKET_IFNAME": f"={ifname}",
        "GLOO_SOCKET_IFNAME": ifname,
        "NCCL_IB_DISABLE": "1",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "OMP_NUM_THREADS": str(c.omp_num_threads),
        "PYTHONUNBUFFERED": "1",
        "NETORCH_RUN_ID": run_id,
        "NETORCH_NODE_NAME": "",
        "NETORCH_IFNAME": ifname,
        "NETORCH_PLANNED_IP": fabric.ips[0],
    }
    if ckpt_dir is not None:
        env["NETORCH_CHECKPOINT_DIR"] = ckpt_dir
    if work.metrics:
        env["NETORCH_METRICS_ADDR"] = fabric.metrics_addr
        env["NETORCH_METRICS_PORT_BASE"] = str(settings.metrics.port_base)
    env.update(work.env)
    env.update(settings.env)  # user env last: it may override NCCL_IB_DISABLE & co.
    return env


def _expand_placeholders(
    target: tuple[str, ...], settings: Settings, rank: int, master_addr: str,
    checkpoint_dir: str | None,
) -> tuple[str, ...]:
    """``{node_rank}``, ``{nnodes}``, ... in a user's command, for node ``rank``."""
    from orchestrator.userjob import expand_command

    c = settings.cluster
    values: dict[str, str | int] = {
        "node_rank": rank, "nnodes": c.nodes, "nproc_per_node": c.procs_per_node,
        "world_size": c.nodes * c.procs_per_node, "master_addr": master_addr,
        "master_port": c.master_port,
    }
    if checkpoint_dir is not None:
        values["checkpoint_dir"] = checkpoint_dir
    return expand_command(target, values)
