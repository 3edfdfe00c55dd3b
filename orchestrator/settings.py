"""Validated configuration: defaults < TOML file < ``NETORCH_*`` environment < CLI flags.

``load_settings`` is the only entry point. Every validation failure becomes one
:class:`~orchestrator.errors.ConfigError` line naming the field, the value and the fix; pydantic's
own exception never escapes. Free text is held to its real grammar (image references, Docker
names, IPC modes, variable names, daemon URLs), booleans and numbers are not taken for each other,
and ``bench.max_bytes`` is bounded by this host's RAM. ``unknown_env_warnings`` names the
``NETORCH_*`` variables no setting reads (the CLI prints them as warnings).

This module is the model (sections, fields, the validators that tie fields together) and its
loading. Around it: ``orchestrator.grammar`` (the pure grammars, pydantic-free),
``orchestrator.settings_types`` (field types binding them to pydantic),
``orchestrator.settings_errors`` (error lines and unknown-variable warnings) and
``orchestrator.settings_overrides`` (flags and ``--set`` items -> overrides).
"""

from __future__ import annotations

import contextvars
import ipaddress
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from orchestrator.errors import ConfigError
from orchestrator.grammar import (
    MTU_MAX,
    MTU_MIN,
    bench_memory_problem,
    check_env_name,
    check_gpu_capability,
    check_gpu_id,
    check_node_env_name,
    comma_list,
    shell_words,
)
from orchestrator.settings_errors import format_validation_error, unread_env_warnings
from orchestrator.settings_types import (
    BridgeName,
    DockerUrl,
    DType,
    Duration,
    GpuDriver,
    HostName,
    HttpUrl,
    ImageRef,
    InterfaceName,
    IpcMode,
    LossPercent,
    MemSize,
    Mtu,
    NamePrefix,
    NetworkName,
    Op,
    OutputDir,
    Rate,
    Size,
    Subnet,
    User,
    all_ops,
    plain_value,
)
from train.contract import DTYPE_NAMES, OP_NAMES
from train.contract import parse_size as parse_size  # what a size setting accepts

DEFAULT_CONFIG = Path("configs/default.toml")

# What an op or a dtype is lives in the workload contract (train/contract.py), the one place.
OPS = OP_NAMES
DTYPES = DTYPE_NAMES


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _plain(cls, value: object, info: ValidationInfo) -> object:
        return plain_value(cls, value, info)


class ClusterSettings(_Section):
    """How many nodes and ranks, which collective backend, which image."""

    name: NamePrefix = Field(
        "netorch", description="prefix of every resource name (Docker name chars)")
    nodes: int = Field(
        2, ge=1, description="nodes: 1 master + N-1 workers (as many as network.subnet addresses)")
    procs_per_node: int = Field(1, ge=1, le=64, description="ranks (torchrun processes) per node")
    dist_backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="torch.distributed backend; auto = nccl with CUDA, else gloo"
    )
    image: ImageRef = Field("netorch:latest", description="training image for container backends")
    launcher: Literal["netorch", "torchrun"] = Field(
        "netorch", description="in-node launcher: netorch (imports torch once, forks the ranks) "
        "or torchrun (its agent imports torch, then every rank again)")
    master_port: int = Field(29500, ge=1024, le=65535, description="c10d rendezvous port")
    omp_num_threads: int = Field(1, ge=1, le=256, description="OMP_NUM_THREADS per rank")
    timeout_s: int = Field(300, ge=10, le=7200, description="process-group timeout per collective")
    job_timeout_s: int = Field(1800, ge=10, le=7 * 86400, description="whole-run time limit")


class LinkShape(_Section):
    """One emulated link: tc on a container's eth0 (tbf rate, netem delay/jitter/loss)."""

    rate: Rate | None = Field(
        None, description="egress rate per container, tc syntax: 1gbit, 10gbit")
    delay: Duration | None = Field(None, description="one-way delay added by netem: 50us, 1ms")
    jitter: Duration | None = Field(None, description="netem delay variation (needs delay): 10us")
    loss: LossPercent | None = Field(None, description="netem random loss in percent: 0.1%")

    @model_validator(mode="after")
    def _jitter_needs_delay(self) -> LinkShape:
        if self.jitter is not None and self.delay is None:
            raise ValueError(
                f"network.link.jitter: {self.jitter} varies a delay, but network.link.delay is "
                "unset; set a delay too (e.g. delay = \"50us\")"
            )
        return self

    @property
    def shaped(self) -> bool:
        """True when this link emulates anything (rate, delay, jitter or loss)."""
        return any(v is not None for v in (self.rate, self.delay, self.jitter, self.loss))


class LinkSettings(LinkShape):
    """Link emulation: tc on each container's eth0 right after start (tbf rate, netem delay/loss).

    The fields shape every node; ``nodes.<node>`` overrides them for one node (its unset fields
    keep the common value) and ``pairs."<node>:<node>"`` shapes only the traffic between two
    nodes, both directions (tc classes filtered by the peer's address). Empty by default: no
    shaping, and no NET_ADMIN capability is granted to any container.
    """

    nodes: dict[str, LinkShape] = Field(
        default_factory=dict,
        description="per-node override, keyed by node name (master, worker-1, ...)")
    pairs: dict[str, LinkShape] = Field(
        default_factory=dict,
        description="shaping between two nodes only, keyed \"<node>:<node>\" (both directions)")

    @property
    def enabled(self) -> bool:
        """True when any emulation is configured (and containers then need NET_ADMIN)."""
        return self.shaped or any(v.shaped for v in (*self.nodes.values(), *self.pairs.values()))


class ManagementSettings(_Section):
    """An optional second network per node, beside the training fabric (docker backend, one
    host): its own subnet, a standard MTU, not internal. Egress (and whatever else the job does
    besides collectives) goes there; NCCL and gloo stay pinned to the fabric's interface."""

    subnet: Subnet | None = Field(None, description="IPv4 subnet (CIDR); unset: no management "
                                  "network")
    mtu: Mtu = Field(1500, description="MTU of the management network")
    internal: bool = Field(False, description="no route out (default: it is the way out)")
    name: NetworkName | None = Field(
        None, description="network name; default <cluster.name>-<run>-net-mgmt")

    @property
    def enabled(self) -> bool:
        return self.subnet is not None


class NetworkSettings(_Section):
    """The training fabric: one bridge network with fixed addressing."""

    name: NetworkName | None = Field(
        None, description="network name; default <cluster.name>-<run>-net")
    subnet: Subnet = Field("172.28.0.0/16", description="IPv4 subnet in CIDR form")
    gateway: str | None = Field(None, description="gateway address; default first host")
    ip_range: str | None = Field(None, description="sub-range (CIDR) node addresses come from")
    mtu: Mtu = Field(1500, description=f"bridge MTU ({MTU_MIN}..{MTU_MAX})")
    internal: bool = Field(True, description="no route out of the network (training needs none)")
    bridge_name: BridgeName | None = Field(None, description="host-side bridge interface name")
    interface: InterfaceName = Field("eth0", description="container interface NCCL/gloo must use")
    link: LinkSettings = Field(
        default_factory=LinkSettings,  # type: ignore[arg-type]
        description="link emulation with tc (rate, delay, jitter, loss); off by default",
    )
    management: ManagementSettings = Field(
        default_factory=ManagementSettings,  # type: ignore[arg-type]
        description="a second, non-internal network per node for egress/metrics; off by default",
    )

    @model_validator(mode="after")
    def _addresses(self) -> NetworkSettings:
        net = ipaddress.IPv4Network(self.subnet)
        mgmt = self.management.subnet
        if mgmt is not None and ipaddress.IPv4Network(mgmt).overlaps(net):
            raise ValueError(
                f"network.management.subnet: {mgmt} overlaps the fabric's subnet {net}; give "
                "the management network a subnet of its own"
            )
        if self.gateway is not None:
            try:
                gw = ipaddress.ip_address(self.gateway)
            except ValueError:
                raise ValueError(
                    f"network.gateway: {self.gateway!r} is not an IPv4 address; "
                    f"use a host of {net}, e.g. {next(net.hosts())}"
                ) from None
            if gw not in net or gw in (net.network_address, net.broadcast_address):
                raise ValueError(
                    f"network.gateway: {self.gateway} is not a usable host of {net}; "
                    f"use e.g. {next(net.hosts())}"
                )
        if self.ip_range is not None:
            try:
                rng = ipaddress.ip_network(self.ip_range, strict=True)
            except ValueError:
                raise ValueError(
                    f"network.ip_range: {self.ip_range!r} is not a CIDR range; "
                    f"write a sub-range of {net} like {next(net.subnets(new_prefix=min(net.prefixlen + 8, 30)))}"
                ) from None
            if not isinstance(rng, ipaddress.IPv4Network) or not rng.subnet_of(net):
                raise ValueError(
                    f"network.ip_range: {self.ip_range} is not inside subnet {net}; "
                    f"use a sub-range such as {next(net.subnets(new_prefix=min(net.prefixlen + 8, 30)))}"
                )
        return self


class GpuSettings(_Section):
    """GPU reservation per node: a count, or explicit device ids (one list per node)."""

    per_node: int = Field(0, ge=0, le=64, description="GPUs per node (0 = CPU only)")
    device_ids: list[list[str]] = Field(
        default_factory=list, description="explicit device ids, one list per node"
    )
    driver: GpuDriver = Field("nvidia", description="device driver for the reservation")
    capabilities: list[str] = Field(
        default_factory=lambda: ["gpu", "compute", "utility"],
        description="driver capabilities (utility is needed for NVML)",
    )

    @field_validator("capabilities", mode="before")
    @classmethod
    def _capabilities_list(cls, v: object) -> object:
        return comma_list(v)

    @field_validator("capabilities")
    @classmethod
    def _capabilities(cls, v: list[str]) -> list[str]:
        return [check_gpu_capability(item) for item in v]

    @field_validator("device_ids")
    @classmethod
    def _device_ids(cls, v: list[list[str]]) -> list[list[str]]:
        return [[check_gpu_id(item) for item in ids] for ids in v]

    @model_validator(mode="after")
    def _one_way(self) -> GpuSettings:
        if self.per_node and self.device_ids:
            raise ValueError(
                "gpu: set either per_node or device_ids, not both; drop one of them"
            )
        return self


class DockerSettings(_Section):
    """Container options the Docker backend applies to every node."""

    host: DockerUrl | None = Field(
        None, description="daemon URL; default DOCKER_HOST or the local socket")
    shm_size: MemSize = Field("1g", description="/dev/shm size (NCCL needs far more than 64m)")
    ipc_mode: IpcMode | None = Field(None, description="ipc mode, e.g. host; default private")
    memlock: int | None = Field(
        None, ge=-1, description="memlock ulimit in bytes (-1 = unlimited); default: daemon's"
    )
    stop_timeout_s: int = Field(5, ge=0, le=300, description="grace period before SIGKILL")
    memory: MemSize | None = Field(
        None, description="memory limit of each node's container, e.g. 4g (swap included, so a "
        "node past it is OOM-killed, not swapped); default no limit"
    )
    user: User | None = Field(
        None, description="uid:gid the containers run as; default the invoking user's (1000:1000 "
        "when netorch runs as root); \"root\" to run them as root"
    )


class HostSettings(_Section):
    """One Docker host of a multi-host run (``[[hosts]]``). The first host is the swarm manager."""

    name: HostName = Field(description="short host name used in placement and reports")
    url: DockerUrl = Field(
        description="daemon URL: unix:///path, tcp://host:2376 or ssh://user@host")
    tls_ca: str | None = Field(None, description="tcp:// only: CA certificate path")
    tls_cert: str | None = Field(None, description="tcp:// only: client certificate path")
    tls_key: str | None = Field(None, description="tcp:// only: client key path")
    gpus: int | None = Field(None, ge=0, le=64, description="GPUs on this host (informational)")
    tls_verify: bool = Field(
        True, description="tcp:// with TLS: verify the daemon's certificate (against tls_ca, else "
        "the system CAs); false only for testing"
    )

    @model_validator(mode="after")
    def _tls(self) -> HostSettings:
        tls = (self.tls_ca, self.tls_cert, self.tls_key)
        if any(tls) and not self.url.startswith("tcp://"):
            raise ValueError(f"hosts: {self.name}: TLS paths only apply to tcp:// URLs; drop them")
        if any(tls) and not (self.tls_cert and self.tls_key):
            raise ValueError(
                f"hosts: {self.name}: TLS needs both tls_cert and tls_key (tls_ca optional)"
            )
        return self

    @model_validator(mode="after")
    def _tls_verify(self) -> HostSettings:
        if not self.tls_verify and not self.tls_cert:
            raise ValueError(f"hosts: {self.name}: tls_verify = false only applies with TLS "
                             "(tls_cert + tls_key); drop it")
        if not self.tls_verify and self.tls_ca:
            raise ValueError(f"hosts: {self.name}: tls_ca is set but tls_verify = false would "
                             "ignore it; drop tls_verify to verify against tls_ca")
        return self


class PlacementSettings(_Section):
    """Which host runs which node: round-robin over ``hosts`` or an explicit node -> host map."""

    strategy: Literal["round-robin", "explicit"] = Field(
        "round-robin", description="round-robin: node i on host i mod len(hosts)"
    )
    nodes: dict[str, str] = Field(
        default_factory=dict,
        description="explicit: node (master, worker-1, ... or its rank) -> host name",
    )


class BenchSettings(_Section):
    """The collective sweep, with nccl-tests' meaning for every knob."""

    ops: Annotated[list[Op], BeforeValidator(all_ops)] = Field(
        default_factory=lambda: ["all_reduce"], description="collectives to measure (or all)"
    )
    min_bytes: Size = Field(1 << 20, description="smallest size (nccl-tests -b)")
    max_bytes: Size = Field(64 << 20, description="largest size (nccl-tests -e)")
    step_factor: int = Field(2, description="size multiplier between steps (nccl-tests -f)")
    warmup: int = Field(5, ge=0, le=10_000, description="untimed iterations (nccl-tests -w)")
    iters: int = Field(20, ge=1, le=100_000, description="timed iterations (nccl-tests -n)")
    dtype: Annotated[list[DType], BeforeValidator(comma_list)] = Field(
        default_factory=lambda: ["float32"], description="data types (nccl-tests -d)"
    )
    check: bool = Field(True, description="exact correctness check after timing (nccl-tests -c)")
    in_place: Literal["both", "on", "off"] = Field(
        "both", description="report in-place rows, out-of-place rows, or both"
    )
    reduce_op: Literal["sum", "max", "min", "prod"] = Field("sum", description="nccl-tests -o")
    blocking: bool = Field(
        True, description="true: wait for each op; false: issue the timed ops asynchronously, "
        "several in flight on their own buffers, and wait for all (nccl-tests -z 0)")

    @field_validator("step_factor")
    @classmethod
    def _factor(cls, v: int) -> int:
        if v < 2:
            raise ValueError(f"{v} would not grow the size; use 2 or more (nccl-tests -f)")
        return v

    @field_validator("ops", "dtype")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("the list is empty; name at least one")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _range(self) -> BenchSettings:
        if self.min_bytes > self.max_bytes:
            raise ValueError(
                f"bench.min_bytes: {self.min_bytes} is larger than bench.max_bytes "
                f"{self.max_bytes}; swap them or raise max_bytes"
            )
        return self


class TrainSettings(_Section):
    """The training job (``python -m train.job``): DDP on a small MLP, checkpoints, restarts."""

    steps: int = Field(200, ge=1, le=10_000_000, description="optimizer steps in total")
    batch_size: int = Field(64, ge=1, le=1 << 20, description="samples per rank per step")
    width: int = Field(256, ge=1, le=1 << 16, description="hidden units per layer")
    depth: int = Field(3, ge=1, le=64, description="hidden layers")
    bucket_cap_mb: float = Field(25.0, gt=0, le=4096, description="DDP gradient bucket size (MiB)")
    checkpoint_every: int = Field(50, ge=0, description="checkpoint every K steps (0 = never)")
    keep_checkpoints: int = Field(3, ge=1, le=1000, description="newest checkpoints kept")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of model init, teacher and data")
    lr: float = Field(0.05, gt=0, le=10, description="SGD learning rate (momentum 0.9)")
    progress_every: int = Field(20, ge=1, description="rank 0 prints progress every N steps")
    max_restarts: int = Field(
        2, ge=0, le=100, description="gang restarts from the latest checkpoint after a node dies"
    )


class RunSettings(_Section):
    """The user's own job (``netorch run``): their command, image, code, mounts and env.

    Validated further (paths exist, mount syntax, variable names) when the job is planned, before
    anything is created; see ``orchestrator.userjob``.
    """

    command: Annotated[list[str], BeforeValidator(shell_words)] = Field(
        default_factory=list, description="what every rank runs (the words after --)")
    image: ImageRef | None = Field(
        None, description="image with Python and torch; default cluster.image")
    workdir: str | None = Field(
        None, description="host directory with the code: mounted read-only at /workspace and the "
        "working directory there (process backend: the working directory)")
    workdir_writable: bool = Field(False, description="mount the workdir read-write")
    mounts: Annotated[list[str], BeforeValidator(comma_list)] = Field(
        default_factory=list, description="docker -v style SRC:DST[:ro|rw] mounts on every node")
    checkpoint_dir: str | None = Field(
        None, description="host directory mounted read-write at /checkpoints on every node")
    env: dict[str, str] = Field(
        default_factory=dict, description="variables for the job (any valid name but the plan's)")
    max_restarts: int = Field(
        0, ge=0, le=100, description="gang restarts after a node dies (the job resumes itself)")
    tensorboard: bool = Field(
        False, description="a TensorBoard log folder in every node (NETORCH_TENSORBOARD_DIR), "
        "served by TensorBoard on 127.0.0.1")
    tensorboard_port: int = Field(6006, ge=1024, le=65535, description="TensorBoard's port")
    tensorboard_keep: bool = Field(
        True, description="keep serving TensorBoard after the run until Ctrl-C")

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            check_env_name(key, "run.env")
        return v


class MetricsSettings(_Section):
    """Prometheus: per-rank endpoints, file_sd targets, textfile, optional Pushgateway."""

    enabled: bool = Field(True, description="each training rank serves /metrics")
    port_base: int = Field(
        9400, ge=1024, le=65000, description="rank ports: port_base + local rank (+ node offset "
        "on the process backend, where nodes share the host)"
    )
    hold_s: float = Field(
        0.0, ge=0, le=3600, description="after training, keep /metrics open up to this long"
    )
    hold_scrapes: int = Field(2, ge=0, le=100, description="... or until this many more scrapes")
    pushgateway_url: HttpUrl | None = Field(
        None, description="push final results here, e.g. http://127.0.0.1:9091"
    )
    push_timeout_s: float = Field(5.0, gt=0, le=120, description="per push attempt")


class FabricSettings(_Section):
    """``netorch fabric``: what every pair sends, and when a pair counts as slow."""

    bw_bytes: Size = Field(4 << 20, description="message size of the bandwidth test")
    bw_iters: int = Field(50, ge=1, le=10_000, description="most timed messages per direction")
    bw_seconds: float = Field(0.25, gt=0.0, le=60.0,
                              description="aim of one direction's timed transfer (s)")
    lat_bytes: Size = Field(8, description="message size of the latency test")
    lat_iters: int = Field(20, ge=1, le=100_000, description="timed round trips per pair")
    warmup: int = Field(2, ge=1, le=1000, description="untimed messages before each timed run")
    passes: int = Field(2, ge=1, le=100, description="schedule repeats; each direction keeps "
                        "its best pass")
    slow_fraction: float = Field(
        0.5, gt=0.0, lt=1.0,
        description="a pair is slow below this fraction of the reference bandwidth (and below "
        "reference - mad_k x MAD)")
    mad_k: float = Field(3.0, gt=0.0, le=100.0, description="robust z-score limit (MADs)")
    schedule: Literal["all", "bisect"] = Field(
        "all", description="all: every pair (N-1 rounds); bisect: N/2 pairs, then only the slow "
        "pairs' nodes again (large N)")


class Settings(BaseSettings):
    """Everything netorch needs to plan and run a job."""

    model_config = SettingsConfigDict(
        env_prefix="NETORCH_",
        env_nested_delimiter="__",
        # Lists come from the environment as "a,b" (like the CLI), not as JSON.
        enable_decoding=False,
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    backend: str = Field(
        "auto", description="where nodes run: auto, process, docker (or a registered plug-in); "
        "auto = docker if a daemon and the image are there, else process"
    )
    output: OutputDir = Field(Path("runs"), description="reports go to <output>/<run_id>/")
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)  # type: ignore[arg-type]
    network: NetworkSettings = Field(default_factory=NetworkSettings)  # type: ignore[arg-type]
    gpu: GpuSettings = Field(default_factory=GpuSettings)  # type: ignore[arg-type]
    docker: DockerSettings = Field(default_factory=DockerSettings)  # type: ignore[arg-type]
    bench: BenchSettings = Field(default_factory=BenchSettings)  # type: ignore[arg-type]
    train: TrainSettings = Field(default_factory=TrainSettings)  # type: ignore[arg-type]
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)  # type: ignore[arg-type]
    run: RunSettings = Field(default_factory=RunSettings)  # type: ignore[arg-type]
    fabric: FabricSettings = Field(default_factory=FabricSettings)  # type: ignore[arg-type]
    env: dict[str, str] = Field(default_factory=dict, description="extra NCCL_*/GLOO_*/TORCH_* env")
    hosts: list[HostSettings] = Field(
        default_factory=list,
        description="Docker hosts (empty: the local daemon); more than one runs on a swarm overlay",
    )
    placement: PlacementSettings = Field(default_factory=PlacementSettings)  # type: ignore[arg-type]

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        from orchestrator.backends.registry import backend_names

        known = backend_names()
        if v != "auto" and v not in known:
            raise ValueError(f"{v!r} is not a backend; use auto or one of {', '.join(known)}")
        return v

    @field_validator("*", mode="before")
    @classmethod
    def _plain(cls, value: object, info: ValidationInfo) -> object:
        return plain_value(cls, value, info)

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        # NETORCH_ENV__NCCL_DEBUG arrives lower-cased (settings are case-insensitive).
        return {check_node_env_name(key): value for key, value in v.items()}

    @model_validator(mode="after")
    def _fits(self) -> Settings:
        needed = self.cluster.nodes
        from orchestrator.placement import node_placement, usable_addresses

        usable = usable_addresses(self.network)
        if usable < needed:
            where = f"ip_range {self.network.ip_range}" if self.network.ip_range else (
                f"subnet {self.network.subnet}"
            )
            prefix = 32 - max(3, (needed + 3 - 1).bit_length())
            fix = f"use a /{prefix} or larger" if prefix >= 1 else "no IPv4 subnet holds that many"
            raise ValueError(
                f"network: {where} has {usable} usable addresses but the plan needs {needed} "
                f"(1 master + {needed - 1} workers); {fix}"
            )
        if self.gpu.device_ids and len(self.gpu.device_ids) != self.cluster.nodes:
            raise ValueError(
                f"gpu.device_ids: {len(self.gpu.device_ids)} lists for {self.cluster.nodes} nodes; "
                "give one list of device ids per node"
            )
        link_node_problem = _link_node_problem(self.network.link, self.cluster.nodes)
        if link_node_problem:
            raise ValueError(link_node_problem)
        names = [h.name for h in self.hosts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"hosts: name(s) {', '.join(dupes)} appear twice; give each host its own")
        if self.placement.strategy == "explicit":
            if len(self.hosts) < 2:
                raise ValueError(
                    "placement: strategy explicit needs at least two [[hosts]]; add them or use "
                    "round-robin"
                )
            node_placement(self)  # raises ValueError naming the unplaced node or unknown host
        elif self.placement.nodes:
            raise ValueError(
                "placement.nodes is set but placement.strategy is round-robin; set "
                "strategy = \"explicit\" or drop the map"
            )
        return self

    @model_validator(mode="after")
    def _bench_fits_memory(self) -> Settings:
        # Every rank holds about grammar.BENCH_BUFFERS_PER_RANK buffers of max_bytes; more than this
        # host's RAM shared among its ranks ends in the OOM killer mid-sweep, so refuse it now.
        # Only the process backend certainly puts every node here; a docker plan may be rendered
        # for or run on other machines, so there one node's ranks are counted. Remote daemons'
        # RAM is unknown here: no bound then.
        remote = bool(self.hosts) or (self.docker.host or "unix://").startswith(("tcp:", "ssh:"))
        if remote and self.backend != "process":
            return self
        nodes_here = self.cluster.nodes if self.backend == "process" else 1
        ranks = nodes_here * self.cluster.procs_per_node
        problem = bench_memory_problem(self.bench.max_bytes, ranks, host_memory_bytes(),
                                       blocking=self.bench.blocking)
        if problem:
            raise ValueError(f"bench.max_bytes: {problem}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: CLI flags (init kwargs) > NETORCH_* env > TOML file > defaults.
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = _TOML_PATH.get()
        if toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)


def _node_names(nodes: int) -> list[str]:
    return ["master", *(f"worker-{i}" for i in range(1, nodes))]


def _link_node_problem(link: LinkSettings, nodes: int) -> str | None:
    """Why a ``network.link.nodes`` / ``pairs`` key names no node of the plan, or None."""
    names = _node_names(nodes)
    known = f"the plan's nodes are {', '.join(names[:4])}{', ...' if nodes > 4 else ''}"
    for key in link.nodes:
        if key not in names:
            return f"network.link.nodes.{key}: no node {key!r}; {known}"
    for key in link.pairs:
        ends = key.split(":")
        if len(ends) != 2 or ends[0] == ends[1]:
            return (f"network.link.pairs.{key}: expected two different nodes as "
                    f"\"<node>:<node>\" (e.g. \"master:worker-1\"); {known}")
        for end in ends:
            if end not in names:
                return f"network.link.pairs.{key}: no node {end!r}; {known}"
    return None


def host_memory_bytes() -> int:
    """Total RAM of this host (what ``bench.max_bytes`` is bounded by)."""
    import psutil

    return int(psutil.virtual_memory().total)


_TOML_PATH: contextvars.ContextVar[Path | None] = contextvars.ContextVar("toml", default=None)


@contextmanager
def _toml(path: Path | None) -> Iterator[None]:
    token = _TOML_PATH.set(path)
    try:
        yield
    finally:
        _TOML_PATH.reset(token)


def load_settings(
    config: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build :class:`Settings` from ``config`` (or ``configs/default.toml`` if present), the
    ``NETORCH_*`` environment and ``overrides`` (nested dict from CLI flags).

    Raises :class:`ConfigError` with one line per problem; never a pydantic exception.
    """
    if config is not None:
        if config.is_dir():
            raise ConfigError(
                f"--config: {config} is a directory; pass a TOML file "
                f"(e.g. {config / 'netorch.toml'})"
            )
        if not config.is_file():
            raise ConfigError(
                f"--config: {config} does not exist; pass an existing TOML file "
                f"(e.g. {DEFAULT_CONFIG})"
            )
        toml_path: Path | None = config
    else:
        toml_path = DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None
    try:
        with _toml(toml_path):
            return Settings(**dict(overrides or {}))
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, Settings)) from None
    except ValueError as e:  # a TOML syntax error surfaces as ValueError/TOMLDecodeError
        if "EnvSettingsSource" in str(e):
            raise ConfigError(f"NETORCH_* environment: {e}; fix that variable") from None
        raise ConfigError(f"{toml_path}: {e}; fix the TOML syntax") from None
    except OSError as e:  # the file vanished or is unreadable
        raise ConfigError(
            f"--config: cannot read {toml_path} ({e.strerror or e}); check the file's permissions"
        ) from None


def unknown_env_warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per ``NETORCH_*`` variable of ``environ`` (default ``os.environ``) that no
    setting reads, e.g. a misspelt ``NETORCH_BAKEND``, with the closest valid name. Such a
    variable is silently ignored by the settings, hence the warning (not an error: it may belong
    to something else). A wrong key below a known section (``NETORCH_NETWORK__MTUU``) is not
    listed: loading the settings refuses it with an error."""
    return unread_env_warnings(Settings, os.environ if environ is None else environ)
