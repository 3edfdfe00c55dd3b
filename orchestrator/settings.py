"""Validated configuration: defaults < TOML file < ``NETORCH_*`` environment < CLI flags.

``load_settings`` is the only entry point. Every validation failure becomes one
:class:`~orchestrator.errors.ConfigError` line naming the field, the value and the fix; pydantic's
own exception never escapes. Free text is held to its real grammar (image references, Docker
names, IPC modes, variable names, daemon URLs), booleans and numbers are not taken for each other,
and ``bench.max_bytes`` is bounded by this host's RAM. ``unknown_env_warnings`` names the
``NETORCH_*`` variables no setting reads (the CLI prints them as warnings).
"""

from __future__ import annotations

import contextvars
import difflib
import ipaddress
import json
import math
import os
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
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
from train.contract import DTYPE_NAMES, OP_NAMES, parse_size

DEFAULT_CONFIG = Path("configs/default.toml")

# What an op or a dtype is lives in the workload contract (train/contract.py), the one place.
OPS = OP_NAMES
DTYPES = DTYPE_NAMES
MTU_MIN, MTU_MAX = 576, 9216

# Prefixes a user may inject through [env]; anything else is most likely a typo.
ENV_PREFIXES = (
    "NCCL_", "GLOO_", "TORCH_", "TORCHELASTIC_", "OMP_", "MKL_", "KMP_", "CUDA_", "NVIDIA_",
    "UCX_", "FI_", "PYTHON", "NETORCH_USER_",
)
# Variables the plan owns: overriding them would silently break rendezvous.
PLAN_OWNED_ENV = frozenset({
    "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "NNODES",
    "NPROC_PER_NODE", "GROUP_RANK", "LOCAL_WORLD_SIZE",
})

# Every grammar below is applied with fullmatch: `$` would let a trailing newline through.
_DOCKER_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_MEM_RE = re.compile(r"\d+[bkmg]?", re.IGNORECASE)
#: A shell / environment variable name (POSIX; the grammar orchestrator.userjob uses too).
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Docker's image reference grammar (distribution/reference: reference.go), ASCII only.
_REF_ALNUM = r"[a-z0-9]+"
_REF_PATH = rf"{_REF_ALNUM}(?:(?:[._]|__|-+){_REF_ALNUM})*"
_REF_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_REF_DOMAIN = rf"(?:{_REF_DOMAIN_PART}(?:\.{_REF_DOMAIN_PART})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
_REF_TAG = r"\w[\w.-]{0,127}"
_REF_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_IMAGE_RE = re.compile(
    rf"(?:{_REF_DOMAIN}/)?{_REF_PATH}(?:/{_REF_PATH})*(?::{_REF_TAG})?(?:@{_REF_DIGEST})?",
    re.ASCII,
)
_IMAGE_NAME_MAX = 255  # Docker's limit on the name (repository) part
# A Docker container name (daemon/names.go RestrictedNamePattern); a container id fits it too.
_CONTAINER_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
IPC_MODES = ("private", "shareable", "host", "none")
NETWORK_NAME_MAX = 64
# Address blocks no training fabric may overlap (RFC 6890 special-purpose blocks that routing or
# the kernel treat specially): what a subnet there would break, in the error message.
_RESERVED_V4 = (
    (ipaddress.IPv4Network("0.0.0.0/8"), "the unspecified/'this network' block 0.0.0.0/8"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "loopback 127.0.0.0/8"),
    (ipaddress.IPv4Network("169.254.0.0/16"), "link-local 169.254.0.0/16"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "multicast 224.0.0.0/4"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "reserved 240.0.0.0/4 (and broadcast)"),
)
# bench buffers a rank may hold at max_bytes: input, output and the check's expected values.
BENCH_BUFFERS_PER_RANK = 3
# A message that already starts with "section.field: " names its field itself.
_NAMES_FIELD = re.compile(r"^[a-z_]+(\.[a-z_]+)*: ")


def _shell_words(value: object) -> object:
    """A command from TOML (a list) or from one env/--set string (split like a shell would)."""
    if isinstance(value, str):
        import shlex

        try:
            return shlex.split(value)
        except ValueError as e:
            raise ValueError(f"{value!r} is not a command line ({e}); quote it properly") from None
    return value


def _comma_list(value: object) -> object:
    """Accept ``"a,b"`` or a JSON list ``'["a","b"]'`` from env/flags as well as a TOML list."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except ValueError:
                items = None
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ValueError(
                    f"{value!r} is not a list of names; use a,b or a JSON list like "
                    '["a", "b"]'
                )
            return [item.strip() for item in items]
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def _has_nul(value: object) -> bool:
    """True when a NUL character hides anywhere in ``value`` (strings, keys, nested items)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_nul(item) for item in value)
    return False


def _scalar_kind(annotation: object) -> type | None:
    """``bool``, ``int`` or ``float`` when a field holds that scalar (optionally ``| None``)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = kinds[0] if len(kinds) == 1 else None
    return next((kind for kind in (bool, int, float) if annotation is kind), None)


def _plain_value(model: type[BaseModel], value: object, info: ValidationInfo) -> object:
    """The checks every field gets before its own: no NUL anywhere (no path, argv or env value
    can carry one), and booleans and numbers kept apart (pydantic's lax mode reads ``nodes =
    true`` as 1 and ``check = 1`` as true). Strings stay accepted: the environment, ``--set``
    and flags deliver ``"true"``, ``"0"``, ``"2"``."""
    name = info.field_name
    annotation = model.model_fields[name].annotation if name else None
    inner = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else annotation
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return value  # a section (or [[hosts]]) checks its own fields, naming them
    if _has_nul(value):
        shown = re.sub(r"//[^/\s]*@", "//***@", repr(value))  # no URL credentials in messages
        raise ValueError(f"{shown} contains a NUL character; remove it")
    kind = _scalar_kind(annotation)
    if kind is bool and isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(f"{value!r} is a number, not a boolean; write true or false")
    if kind in (int, float) and isinstance(value, bool):
        example = "2" if kind is int else "2.5"
        raise ValueError(f"{value!r} is a boolean, not a number; write a number such as {example}")
    return value


def check_image_ref(value: str) -> str:
    """``value`` if it is a Docker image reference ``[host[:port]/]name[:tag][@digest]``, else
    ValueError naming the value and the fix (lowercase repository, no blanks, length limits)."""
    if not value:
        raise ValueError("'' is empty; name an image, e.g. netorch:latest")
    bad = next((c for c in value if c.isspace() or not c.isprintable()), None)
    if bad is not None:
        raise ValueError(
            f"{value!r} contains whitespace or a control character ({bad!r}); write an image "
            "reference such as netorch:latest"
        )
    if len(value) > _IMAGE_NAME_MAX + 200 or not _IMAGE_RE.fullmatch(value):
        lower = value.lower()
        if lower != value and _IMAGE_RE.fullmatch(lower):
            raise ValueError(f"{value!r} has capitals; repository names are lowercase: {lower!r}")
        raise ValueError(
            f"{value!r} is not an image reference; write [registry[:port]/]name[:tag][@digest] "
            "with a lowercase name, e.g. netorch:latest or localhost:5000/team/img:1.0"
        )
    base = value.partition("@")[0]
    name = base[: base.rfind(":")] if base.rfind(":") > base.rfind("/") else base
    if len(name) > _IMAGE_NAME_MAX:
        raise ValueError(
            f"{value[:40]!r}... has a {len(name)}-character name; Docker allows at most "
            f"{_IMAGE_NAME_MAX}: shorten it"
        )
    return value


Size = Annotated[int, BeforeValidator(parse_size)]


def _known(names: tuple[str, ...], what: str) -> Any:
    """A validator accepting only ``names`` (the contract's), with the list in the message."""

    def check(value: str) -> str:
        if value not in names:
            raise ValueError(f"{value!r} is not allowed; {what} is one of {', '.join(names)}")
        return value

    return AfterValidator(check)


def _all_ops(value: object) -> object:
    """``all`` (alone) means every op of the contract, as for ``python -m train.bench``."""
    items = _comma_list(value)
    return list(OP_NAMES) if items == ["all"] else items


Op = Annotated[str, _known(OP_NAMES, "an op")]
DType = Annotated[str, _known(DTYPE_NAMES, "a dtype")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _plain(cls, value: object, info: ValidationInfo) -> object:
        return _plain_value(cls, value, info)


class ClusterSettings(_Section):
    """How many nodes and ranks, which collective backend, which image."""

    name: str = Field("netorch", description="prefix of every resource name (Docker name chars)")
    nodes: int = Field(2, ge=1, le=256, description="nodes: 1 master + N-1 workers")
    procs_per_node: int = Field(1, ge=1, le=64, description="ranks (torchrun processes) per node")
    dist_backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="torch.distributed backend; auto = nccl with CUDA, else gloo"
    )
    image: str = Field("netorch:latest", description="training image for container backends")
    launcher: Literal["netorch", "torchrun"] = Field(
        "netorch", description="in-node launcher: netorch (imports torch once, forks the ranks) "
        "or torchrun (its agent imports torch, then every rank again)")
    master_port: int = Field(29500, ge=1024, le=65535, description="c10d rendezvous port")
    omp_num_threads: int = Field(1, ge=1, le=256, description="OMP_NUM_THREADS per rank")
    timeout_s: int = Field(300, ge=10, le=7200, description="process-group timeout per collective")
    job_timeout_s: int = Field(1800, ge=10, le=7 * 86400, description="whole-run time limit")

    @field_validator("name")
    @classmethod
    def _docker_name(cls, v: str) -> str:
        if not _DOCKER_NAME_RE.fullmatch(v) or len(v) > 24:
            raise ValueError(
                f"{v!r} is not a usable name prefix; use 1-24 characters of letters, digits, "
                "'_', '.', '-', starting with a letter or digit"
            )
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        return check_image_ref(v)


_RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|tbit)$", re.IGNORECASE)
_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}
_TIME_RE = re.compile(r"^(\d+(?:\.\d+)?)(us|ms|s)$", re.IGNORECASE)


def parse_rate_bits(value: str) -> int:
    """Bits per second from a tc rate: ``"1gbit"`` -> 1_000_000_000 (decimal multiples, as tc)."""
    m = _RATE_RE.match(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a rate; write e.g. 1gbit, 10gbit, 500mbit")
    bits = int(float(m.group(1)) * _RATE_UNITS[m.group(2).lower()])
    if bits < 8000:
        raise ValueError(f"{value!r} is below 8kbit; write e.g. 1gbit")
    return bits


class LinkSettings(_Section):
    """Link emulation: tc on each container's eth0 right after start (tbf rate, netem delay/loss).

    Empty by default: no shaping, and no NET_ADMIN capability is granted to any container.
    """

    rate: str | None = Field(None, description="egress rate per container, tc syntax: 1gbit, 10gbit")
    delay: str | None = Field(None, description="one-way delay added by netem: 50us, 1ms")
    jitter: str | None = Field(None, description="netem delay variation (needs delay): 10us")
    loss: str | None = Field(None, description="netem random loss in percent: 0.1%")

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: str | None) -> str | None:
        if v is None:
            return None
        parse_rate_bits(v)
        return v.strip().lower()

    @field_validator("delay", "jitter")
    @classmethod
    def _time(cls, v: str | None) -> str | None:
        if v is not None and not _TIME_RE.match(v.strip()):
            raise ValueError(f"{v!r} is not a duration; write e.g. 50us, 1ms")
        return None if v is None else v.strip().lower()

    @field_validator("loss")
    @classmethod
    def _loss(cls, v: str | None) -> str | None:
        if v is None:
            return None
        text = v.strip().removesuffix("%")
        try:
            pct = float(text)
        except ValueError:
            raise ValueError(f"{v!r} is not a loss percentage; write e.g. 0.1%") from None
        if not 0 <= pct <= 100:
            raise ValueError(f"{v!r} is outside 0..100%; write e.g. 0.1%")
        return f"{text}%"

    @model_validator(mode="after")
    def _jitter_needs_delay(self) -> LinkSettings:
        if self.jitter is not None and self.delay is None:
            raise ValueError(
                f"network.link.jitter: {self.jitter} varies a delay, but network.link.delay is "
                "unset; set a delay too (e.g. delay = \"50us\")"
            )
        return self

    @property
    def enabled(self) -> bool:
        """True when any emulation is configured (and containers then need NET_ADMIN)."""
        return any(v is not None for v in (self.rate, self.delay, self.jitter, self.loss))


class NetworkSettings(_Section):
    """The training fabric: one bridge network with fixed addressing."""

    name: str | None = Field(None, description="network name; default <cluster.name>-<run>-net")
    subnet: str = Field("172.28.0.0/16", description="IPv4 subnet in CIDR form")
    gateway: str | None = Field(None, description="gateway address; default first host")
    ip_range: str | None = Field(None, description="sub-range (CIDR) node addresses come from")
    mtu: int = Field(1500, description=f"bridge MTU ({MTU_MIN}..{MTU_MAX})")
    internal: bool = Field(True, description="no route out of the network (training needs none)")
    bridge_name: str | None = Field(None, description="host-side bridge interface name")
    interface: str = Field("eth0", description="container interface NCCL/gloo must use")
    link: LinkSettings = Field(
        default_factory=LinkSettings,  # type: ignore[arg-type]
        description="link emulation with tc (rate, delay, jitter, loss); off by default",
    )

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, v: str) -> str:
        try:
            net = ipaddress.ip_network(v, strict=True)
        except ValueError:
            try:
                loose = ipaddress.ip_network(v, strict=False)
            except ValueError:
                raise ValueError(f"{v!r} is not a subnet; write CIDR like 172.28.0.0/16") from None
            raise ValueError(
                f"{v!r} has host bits set; did you mean {loose}?"
            ) from None
        if net.version != 4:
            raise ValueError(f"{v!r} is IPv6; netorch plans IPv4 fabrics (write e.g. 172.28.0.0/16)")
        if net.prefixlen > 29:
            raise ValueError(f"{v!r} is too small for a network; use a /29 or larger")
        for block, what in _RESERVED_V4:
            if net.overlaps(block):
                raise ValueError(
                    f"{v!r} overlaps {what}; use a private range like 172.28.0.0/16 or "
                    "10.77.0.0/24"
                )
        return str(net)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > NETWORK_NAME_MAX or not _DOCKER_NAME_RE.fullmatch(v)):
            raise ValueError(
                f"{v!r} is not a Docker network name; use 1-{NETWORK_NAME_MAX} letters, digits, "
                "'_', '.', '-', starting with a letter or digit (or leave it unset)"
            )
        return v

    @field_validator("mtu")
    @classmethod
    def _mtu(cls, v: int) -> int:
        if not MTU_MIN <= v <= MTU_MAX:
            raise ValueError(
                f"{v} is outside {MTU_MIN}..{MTU_MAX}; use 1500 (standard) or 9000 (jumbo frames)"
            )
        return v

    @field_validator("bridge_name")
    @classmethod
    def _bridge(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-zA-Z0-9_.-]{1,15}", v):
            raise ValueError(f"{v!r} is not a Linux interface name; use 1-15 of [a-zA-Z0-9_.-]")
        return v

    @field_validator("interface")
    @classmethod
    def _iface(cls, v: str) -> str:
        if not re.fullmatch(r"[a-zA-Z0-9_.-]{1,15}", v):
            raise ValueError(f"{v!r} is not an interface name; use e.g. eth0")
        return v

    @model_validator(mode="after")
    def _addresses(self) -> NetworkSettings:
        net = ipaddress.IPv4Network(self.subnet)
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
    driver: str = Field("nvidia", description="device driver for the reservation")
    capabilities: list[str] = Field(
        default_factory=lambda: ["gpu", "compute", "utility"],
        description="driver capabilities (utility is needed for NVML)",
    )

    @field_validator("driver")
    @classmethod
    def _driver(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", v):
            raise ValueError(f"{v!r} is not a device driver name; write e.g. nvidia")
        return v

    @field_validator("capabilities", mode="before")
    @classmethod
    def _capabilities_list(cls, v: object) -> object:
        return _comma_list(v)

    @field_validator("capabilities")
    @classmethod
    def _capabilities(cls, v: list[str]) -> list[str]:
        for item in v:
            if not re.fullmatch(r"[a-z0-9_]{1,32}", item):
                raise ValueError(
                    f"{item!r} is not a driver capability; write e.g. gpu, compute, utility")
        return v

    @field_validator("device_ids")
    @classmethod
    def _device_ids(cls, v: list[list[str]]) -> list[list[str]]:
        for ids in v:
            for item in ids:
                if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}", item):
                    raise ValueError(
                        f"{item!r} is not a GPU id; write an index (0) or a UUID (GPU-...)")
        return v

    @model_validator(mode="after")
    def _one_way(self) -> GpuSettings:
        if self.per_node and self.device_ids:
            raise ValueError(
                "gpu: set either per_node or device_ids, not both; drop one of them"
            )
        return self


_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_URL_AUTHORITY_RE = re.compile(
    rf"(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9_.-]*)@)?"
    rf"(?P<host>\[[0-9A-Fa-f:.]+\]|{_HOST_LABEL}(?:\.{_HOST_LABEL})*)"
    r"(?::(?P<port>[0-9]{1,5}))?/?",
    re.ASCII,
)
_URL_HINT = "write unix:///var/run/docker.sock, tcp://host:2376 or ssh://user@host"


def check_docker_url(value: str) -> str:
    """``value`` if it is a Docker daemon URL netorch can use, else ValueError with the fix:
    ``unix:///absolute/path``, ``tcp://HOST[:PORT]`` or ``ssh://[USER@]HOST[:PORT]``, where HOST
    is a DNS name, an IPv4 address or a bracketed IPv6 address and PORT is 1..65535."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("unix", "tcp", "ssh"):
        raise ValueError(f"{value!r} is not a Docker URL; {_URL_HINT}")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"{value!r} contains whitespace or a control character; {_URL_HINT}")
    if scheme == "unix":
        if not rest.startswith("/") or rest.endswith("/"):
            raise ValueError(f"{value!r} does not name a socket by absolute path; {_URL_HINT}")
        return value
    m = _URL_AUTHORITY_RE.fullmatch(rest)
    if not m or (scheme == "tcp" and m["user"]):
        raise ValueError(f"{value!r} does not name a host (and port); {_URL_HINT}")
    host = m["host"]
    try:
        if host.startswith("["):
            ipaddress.IPv6Address(host[1:-1])
        elif all(part.isdigit() for part in host.split(".")):
            ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"{value!r}: {host} is not an IP address; {_URL_HINT}") from None
    if len(host) > 253:
        raise ValueError(f"{value!r}: the host name is longer than 253 characters; shorten it")
    if m["port"] is not None and not 1 <= int(m["port"]) <= 65535:
        raise ValueError(f"{value!r}: port {m['port']} is outside 1..65535; {_URL_HINT}")
    return value


class DockerSettings(_Section):
    """Container options the Docker backend applies to every node."""

    host: str | None = Field(None, description="daemon URL; default DOCKER_HOST or the local socket")
    shm_size: str = Field("1g", description="/dev/shm size (NCCL needs far more than 64m)")
    ipc_mode: str | None = Field(None, description="ipc mode, e.g. host; default private")
    memlock: int | None = Field(
        None, ge=-1, description="memlock ulimit in bytes (-1 = unlimited); default: daemon's"
    )
    stop_timeout_s: int = Field(5, ge=0, le=300, description="grace period before SIGKILL")
    user: str | None = Field(
        None, description="uid:gid the containers run as; default the invoking user's (1000:1000 "
        "when netorch runs as root); \"root\" to run them as root"
    )

    @field_validator("shm_size")
    @classmethod
    def _shm(cls, v: str) -> str:
        if not _MEM_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a memory size; write e.g. 1g, 512m")
        return v.lower()

    @field_validator("ipc_mode")
    @classmethod
    def _ipc(cls, v: str | None) -> str | None:
        if v is None or v in IPC_MODES:
            return v
        kind, sep, name = v.partition(":")
        if kind == "container" and sep and _CONTAINER_NAME_RE.fullmatch(name):
            return v
        raise ValueError(
            f"{v!r} is not an IPC mode; use one of {', '.join(IPC_MODES)} or "
            "container:NAME (a container's name or id)"
        )

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        return None if v is None else check_docker_url(v)

    @field_validator("user")
    @classmethod
    def _user(cls, v: str | None) -> str | None:
        if v is not None and v != "root" and not re.fullmatch(r"\d{1,10}:\d{1,10}", v):
            raise ValueError(f"{v!r} is not a user; write numeric uid:gid (e.g. 1000:1000), or "
                             "root to run the containers as root")
        return v


class HostSettings(_Section):
    """One Docker host of a multi-host run (``[[hosts]]``). The first host is the swarm manager."""

    name: str = Field(description="short host name used in placement and reports")
    url: str = Field(description="daemon URL: unix:///path, tcp://host:2376 or ssh://user@host")
    tls_ca: str | None = Field(None, description="tcp:// only: CA certificate path")
    tls_cert: str | None = Field(None, description="tcp:// only: client certificate path")
    tls_key: str | None = Field(None, description="tcp:// only: client key path")
    gpus: int | None = Field(None, ge=0, le=64, description="GPUs on this host (informational)")
    tls_verify: bool = Field(
        True, description="tcp:// with TLS: verify the daemon's certificate (against tls_ca, else "
        "the system CAs); false only for testing"
    )

    @field_validator("name")
    @classmethod
    def _host_name(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,30}", v):
            raise ValueError(f"{v!r} is not a usable host name; use 1-31 of [a-z0-9-]")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_docker_url(v)

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

    ops: Annotated[list[Op], BeforeValidator(_all_ops)] = Field(
        default_factory=lambda: ["all_reduce"], description="collectives to measure (or all)"
    )
    min_bytes: Size = Field(1 << 20, description="smallest size (nccl-tests -b)")
    max_bytes: Size = Field(64 << 20, description="largest size (nccl-tests -e)")
    step_factor: int = Field(2, description="size multiplier between steps (nccl-tests -f)")
    warmup: int = Field(5, ge=0, le=10_000, description="untimed iterations (nccl-tests -w)")
    iters: int = Field(20, ge=1, le=100_000, description="timed iterations (nccl-tests -n)")
    dtype: Annotated[list[DType], BeforeValidator(_comma_list)] = Field(
        default_factory=lambda: ["float32"], description="data types (nccl-tests -d)"
    )
    check: bool = Field(True, description="exact correctness check after timing (nccl-tests -c)")
    in_place: Literal["both", "on", "off"] = Field(
        "both", description="report in-place rows, out-of-place rows, or both"
    )
    reduce_op: Literal["sum", "max", "min", "prod"] = Field("sum", description="nccl-tests -o")

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

    command: Annotated[list[str], BeforeValidator(_shell_words)] = Field(
        default_factory=list, description="what every rank runs (the words after --)")
    image: str | None = Field(None, description="image with Python and torch; default cluster.image")
    workdir: str | None = Field(
        None, description="host directory with the code: mounted read-only at /workspace and the "
        "working directory there (process backend: the working directory)")
    workdir_writable: bool = Field(False, description="mount the workdir read-write")
    mounts: Annotated[list[str], BeforeValidator(_comma_list)] = Field(
        default_factory=list, description="docker -v style SRC:DST[:ro|rw] mounts on every node")
    checkpoint_dir: str | None = Field(
        None, description="host directory mounted read-write at /checkpoints on every node")
    env: dict[str, str] = Field(
        default_factory=dict, description="variables for the job (any valid name but the plan's)")
    max_restarts: int = Field(
        0, ge=0, le=100, description="gang restarts after a node dies (the job resumes itself)")

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        return None if v is None else check_image_ref(v)

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            _check_env_name(key, "run.env")
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
    pushgateway_url: str | None = Field(
        None, description="push final results here, e.g. http://127.0.0.1:9091"
    )
    push_timeout_s: float = Field(5.0, gt=0, le=120, description="per push attempt")

    @field_validator("pushgateway_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        # Printable ASCII without blanks: a newline here would end up in an HTTP request line.
        if v is not None and not re.fullmatch(r"https?://[!-.0-~]+(?:/[!-~]*)?", v):
            shown = re.sub(r"//[^/]*@", "//***@", v)  # never echo credentials
            raise ValueError(f"{shown!r} is not an http(s) URL; write e.g. http://127.0.0.1:9091")
        return v


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
    output: Path = Field(Path("runs"), description="reports go to <output>/<run_id>/")
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)  # type: ignore[arg-type]
    network: NetworkSettings = Field(default_factory=NetworkSettings)  # type: ignore[arg-type]
    gpu: GpuSettings = Field(default_factory=GpuSettings)  # type: ignore[arg-type]
    docker: DockerSettings = Field(default_factory=DockerSettings)  # type: ignore[arg-type]
    bench: BenchSettings = Field(default_factory=BenchSettings)  # type: ignore[arg-type]
    train: TrainSettings = Field(default_factory=TrainSettings)  # type: ignore[arg-type]
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)  # type: ignore[arg-type]
    run: RunSettings = Field(default_factory=RunSettings)  # type: ignore[arg-type]
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
        return _plain_value(cls, value, info)

    @field_validator("output")
    @classmethod
    def _output(cls, v: Path) -> Path:
        # The run directory is created under it later: a file on the way fails there with a
        # traceback, so name it now.
        try:
            for path in (v, *v.parents):
                if path.exists():
                    if not path.is_dir():
                        where = "" if path == v else f" (in {str(v)!r})"
                        raise ValueError(
                            f"{str(path)!r} is a file, not a directory{where}; point output "
                            "(--output) at a directory (it is created when missing)"
                        )
                    break
        except OSError as e:
            raise ValueError(
                f"{str(v)!r} cannot be used ({e.strerror or e}); choose another directory"
            ) from None
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        # NETORCH_ENV__NCCL_DEBUG arrives lower-cased (settings are case-insensitive).
        v = {key.upper(): value for key, value in v.items()}
        for key in v:
            _check_env_name(key, "env")
            if key in PLAN_OWNED_ENV:
                raise ValueError(
                    f"{key} is set by the plan; remove it (change cluster/network settings instead)"
                )
            if not key.startswith(ENV_PREFIXES):
                raise ValueError(
                    f"{key!r} is not a known variable family; use one starting with "
                    + ", ".join(p for p in ENV_PREFIXES)
                )
        return v

    @model_validator(mode="after")
    def _fits(self) -> Settings:
        needed = self.cluster.nodes
        from orchestrator.placement import address_pool, node_placement

        pool = address_pool(self.network)
        if len(pool) < needed:
            where = f"ip_range {self.network.ip_range}" if self.network.ip_range else (
                f"subnet {self.network.subnet}"
            )
            prefix = 32 - max(3, (needed + 3 - 1).bit_length())
            raise ValueError(
                f"network: {where} has {len(pool)} usable addresses but the plan needs {needed} "
                f"(1 master + {needed - 1} workers); use a /{prefix} or larger"
            )
        if self.gpu.device_ids and len(self.gpu.device_ids) != self.cluster.nodes:
            raise ValueError(
                f"gpu.device_ids: {len(self.gpu.device_ids)} lists for {self.cluster.nodes} nodes; "
                "give one list of device ids per node"
            )
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
        # Every rank holds about BENCH_BUFFERS_PER_RANK buffers of max_bytes; more than this
        # host's RAM shared among its ranks ends in the OOM killer mid-sweep, so refuse it now.
        # Only the process backend certainly puts every node here; a docker plan may be rendered
        # for or run on other machines, so there one node's ranks are counted. Remote daemons'
        # RAM is unknown here: no bound then.
        remote = bool(self.hosts) or (self.docker.host or "unix://").startswith(("tcp:", "ssh:"))
        if remote and self.backend != "process":
            return self
        nodes_here = self.cluster.nodes if self.backend == "process" else 1
        ranks = nodes_here * self.cluster.procs_per_node
        problem = bench_memory_problem(self.bench.max_bytes, ranks)
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


def host_memory_bytes() -> int:
    """Total RAM of this host (what ``bench.max_bytes`` is bounded by)."""
    import psutil

    return int(psutil.virtual_memory().total)


def bench_memory_problem(max_bytes: int, ranks_here: int, total: int | None = None) -> str | None:
    """Why ``max_bytes`` buffers cannot fit ``ranks_here`` ranks on a host with ``total`` bytes
    of RAM (default: this host's), each holding BENCH_BUFFERS_PER_RANK buffers of that size;
    None when they fit. The message names the size, the limit in bytes and the fix."""
    total = host_memory_bytes() if total is None else total
    limit = total // (max(1, ranks_here) * BENCH_BUFFERS_PER_RANK)
    if max_bytes <= limit:
        return None
    return (
        f"{max_bytes} bytes ({_human_bytes(max_bytes)}) is more than a rank can hold here: "
        f"{ranks_here} rank(s) on this host x {BENCH_BUFFERS_PER_RANK} buffers each share "
        f"{_human_bytes(total)} of RAM, so the limit is {limit} bytes ({_human_bytes(limit)}); "
        "lower bench.max_bytes (-E) or run fewer ranks on this host"
    )


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _check_env_name(key: str, field: str) -> None:
    """ValueError unless ``key`` is a variable name (``NCCL_A=B`` as a key is a typo of a value)."""
    if not ENV_NAME_RE.fullmatch(key):
        hint = ""
        name, sep, value = key.partition("=")
        if sep and ENV_NAME_RE.fullmatch(name):
            hint = f" (to set {name} to {value!r}, write {field}.{name}={value})"
        raise ValueError(
            f"{field}: {key!r} is not a variable name; use letters, digits and '_', not starting "
            f"with a digit{hint}"
        )


_TOML_PATH: contextvars.ContextVar[Path | None] = contextvars.ContextVar("toml", default=None)


def _deep_set(target: dict[str, Any], dotted: str, value: object) -> None:
    node = target
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{_show_loc(dotted.split('.'))}: {part!r} is not a section; "
                              "check the key")
    node[leaf] = value


def overrides_from_pairs(pairs: Mapping[str, object]) -> dict[str, Any]:
    """``{"network.mtu": 9000}`` -> ``{"network": {"mtu": 9000}}`` (``None`` values dropped)."""
    out: dict[str, Any] = {}
    for key, value in pairs.items():
        if value is not None:
            _deep_set(out, key, value)
    return out


def parse_set_option(item: str) -> tuple[str, object]:
    """``--set network.mtu=9000`` -> ``("network.mtu", "9000")``."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set network.mtu=9000")
    return key.strip(), value.strip()


def _flag_text(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _same_value(flag: object, text: object) -> bool:
    """Whether a ``--set`` string says what a typed flag value says (``9000`` and ``"9000"``,
    ``True`` and ``"yes"``), so repeating one value both ways is no conflict."""
    text = str(text).strip()
    if isinstance(flag, bool):
        return text.lower() in (("true", "1", "yes", "on") if flag else ("false", "0", "no", "off"))
    if isinstance(flag, (int, float)):
        try:
            return float(text) == float(flag)
        except ValueError:
            return False
    return _flag_text(flag) == text


def refuse_flag_set_conflicts(flags: Mapping[str, object], sets: Mapping[str, object]) -> None:
    """ConfigError when a flag and a ``--set`` item give one key different values
    (``--mtu 1500 --set network.mtu=9000``): flags would win silently, so ask which is meant."""
    for key, value in flags.items():
        if value is not None and key in sets and not _same_value(value, sets[key]):
            raise ConfigError(
                f"{key}: --set {key}={sets[key]!s} disagrees with the command-line value "
                f"{_flag_text(value)}; give {key} once"
            )


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
        raise ConfigError(format_validation_error(e)) from None
    except ValueError as e:  # a TOML syntax error surfaces as ValueError/TOMLDecodeError
        if "EnvSettingsSource" in str(e):
            raise ConfigError(f"NETORCH_* environment: {e}; fix that variable") from None
        raise ConfigError(f"{toml_path}: {e}; fix the TOML syntax") from None
    except OSError as e:  # the file vanished or is unreadable
        raise ConfigError(
            f"--config: cannot read {toml_path} ({e.strerror or e}); check the file's permissions"
        ) from None


#: ``NETORCH_*`` variables netorch sets inside the nodes (not settings): never warned about.
NODE_ENV = frozenset({
    "NETORCH_RUN_ID", "NETORCH_NODE_NAME", "NETORCH_NODE_RANK", "NETORCH_IFNAME",
    "NETORCH_PLANNED_IP", "NETORCH_CHECKPOINT_DIR", "NETORCH_METRICS_ADDR",
    "NETORCH_METRICS_PORT_BASE", "NETORCH_RESTART_COUNT", "NETORCH_JOB_START", "NETORCH_JOB_EXIT",
    "NETORCH_RESULT", "NETORCH_PROGRESS", "NETORCH_ARGS",
})


def setting_env_names() -> list[str]:
    """Every ``NETORCH_*`` variable name a setting is read from (``NETORCH_NETWORK__MTU``, ...);
    dict-valued settings as their prefix (``NETORCH_ENV__``)."""
    names: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            env_name = f"{prefix}{name.upper()}"
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, env_name + "__")
            elif typing.get_origin(annotation) is dict:
                names.append(env_name + "__")
            else:
                names.append(env_name)

    walk(Settings, "NETORCH_")
    return names


def unknown_env_warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per ``NETORCH_*`` variable of ``environ`` (default ``os.environ``) that no
    setting reads, e.g. a misspelt ``NETORCH_BAKEND``, with the closest valid name. Such a
    variable is silently ignored by the settings, hence the warning (not an error: it may belong
    to something else). A wrong key below a known section (``NETORCH_NETWORK__MTUU``) is not
    listed: loading the settings refuses it with an error."""
    env = os.environ if environ is None else environ
    known = setting_env_names()
    lines = []
    for name in sorted(env):
        upper = name.upper()
        if not upper.startswith("NETORCH_") or upper in NODE_ENV:
            continue
        if upper.startswith("NETORCH_USER_"):  # the users' own family (see ENV_PREFIXES)
            continue
        head = upper.removeprefix("NETORCH_").split("__", 1)[0].lower()
        if head in Settings.model_fields:
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "see the README's Configuration section"
        lines.append(f"{name} is not a netorch setting and is ignored; {hint}")
    return lines


def format_validation_error(error: ValidationError) -> str:
    """One line per problem: ``field: value ...; fix``."""
    lines = []
    for item in error.errors(include_url=False):
        loc = _show_loc(item["loc"])
        msg = item["msg"].removeprefix("Value error, ")
        value = item.get("input")
        kind = item["type"]
        if kind == "extra_forbidden":
            section = _section_fields(item["loc"][:-1])
            known = ", ".join(section) if section else "see README config reference"
            line = f"{loc}: unknown key; known keys here: {known}"
        elif kind == "value_error":
            # Our validators already name the value and the fix; model validators name the field.
            line = msg if _NAMES_FIELD.match(msg) or not loc else f"{loc}: {msg}"
        elif kind == "literal_error":
            line = f"{loc}: {value!r} is not allowed; {msg.lower()}"
        else:
            line = f"{loc}: {value!r} is invalid ({msg.lower()}); see README config reference"
        lines.append(line)
    return "; ".join(lines)


def _show_loc(parts: Sequence[int | str]) -> str:
    """``env.NCCL_DEBUG``; a part that is no plain name (a hostile dict key) is quoted, so the
    message stays one printable line."""
    return ".".join(
        str(p) if re.fullmatch(r"[A-Za-z0-9_-]+", str(p)) else repr(str(p)) for p in parts
    )


def _section_fields(loc: tuple[int | str, ...]) -> list[str]:
    model: type[BaseModel] = Settings
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(
            field.annotation, BaseModel
        ):
            return []
        model = field.annotation
    return list(model.model_fields)
