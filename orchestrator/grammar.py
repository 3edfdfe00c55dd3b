"""The grammars free-text and numeric settings are held to, as plain functions.

Each ``check_*`` takes a value and returns it (normalised where said) or raises ValueError with
one line naming the value and the fix; the settings model (``orchestrator.settings``) applies
them to its fields, and other inputs that share a grammar (``netorch run --env``) use them too.
No pydantic and no I/O here: every rule can be read and tested on its own. Grammars are applied
with ``fullmatch``: ``$`` would let a trailing newline through.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from collections.abc import Mapping

from train.contract import NONBLOCKING_DEPTH

MTU_MIN, MTU_MAX = 576, 9216
NETWORK_NAME_MAX = 64
IPC_MODES = ("private", "shareable", "host", "none")
# bench buffers a rank may hold at max_bytes: input, output and the check's expected values.
BENCH_BUFFERS_PER_RANK = 3

#: A shell / environment variable name (POSIX).
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
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

_DOCKER_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_MEM_RE = re.compile(r"\d+[bkmg]?", re.IGNORECASE)
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
# Address blocks no training fabric may overlap (RFC 6890 special-purpose blocks that routing or
# the kernel treat specially): what a subnet there would break, in the error message.
_RESERVED_V4 = (
    (ipaddress.IPv4Network("0.0.0.0/8"), "the unspecified/'this network' block 0.0.0.0/8"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "loopback 127.0.0.0/8"),
    (ipaddress.IPv4Network("169.254.0.0/16"), "link-local 169.254.0.0/16"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "multicast 224.0.0.0/4"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "reserved 240.0.0.0/4 (and broadcast)"),
)
_RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|tbit)$", re.IGNORECASE)
_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}
_TIME_RE = re.compile(r"^(\d+(?:\.\d+)?)(us|ms|s)$", re.IGNORECASE)
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_URL_AUTHORITY_RE = re.compile(
    rf"(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9_.-]*)@)?"
    rf"(?P<host>\[[0-9A-Fa-f:.]+\]|{_HOST_LABEL}(?:\.{_HOST_LABEL})*)"
    r"(?::(?P<port>[0-9]{1,5}))?/?",
    re.ASCII,
)
_URL_HINT = "write unix:///var/run/docker.sock, tcp://host:2376 or ssh://user@host"


# --- list-shaped values as one string (environment, --set, flags) -----------------------------


def shell_words(value: object) -> object:
    """A command from TOML (a list) or from one env/--set string (split like a shell would)."""
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as e:
            raise ValueError(f"{value!r} is not a command line ({e}); quote it properly") from None
    return value


def comma_list(value: object) -> object:
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


def has_nul(value: object) -> bool:
    """True when a NUL character hides anywhere in ``value`` (strings, keys, nested items)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(has_nul(item) for item in value)
    return False


# --- Docker: images, names, daemon URLs, container options ------------------------------------


def _fullmatch(pattern: str, value: str, message: str) -> str:
    """``value`` when all of it matches ``pattern``, else ValueError(``message``)."""
    if not re.fullmatch(pattern, value):
        raise ValueError(message)
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


def check_name_prefix(value: str) -> str:
    """``value`` if it can prefix every Docker resource name of a run (1-24 name characters)."""
    if not _DOCKER_NAME_RE.fullmatch(value) or len(value) > 24:
        raise ValueError(
            f"{value!r} is not a usable name prefix; use 1-24 characters of letters, digits, "
            "'_', '.', '-', starting with a letter or digit"
        )
    return value


def check_network_name(value: str) -> str:
    """``value`` if it is a Docker network name of at most NETWORK_NAME_MAX characters."""
    if len(value) > NETWORK_NAME_MAX or not _DOCKER_NAME_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a Docker network name; use 1-{NETWORK_NAME_MAX} letters, digits, "
            "'_', '.', '-', starting with a letter or digit (or leave it unset)"
        )
    return value


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


def check_host_name(value: str) -> str:
    """``value`` if it names a ``[[hosts]]`` entry: 1-31 of ``[a-z0-9-]``."""
    return _fullmatch(
        r"[a-z0-9][a-z0-9-]{0,30}", value,
        f"{value!r} is not a usable host name; use 1-31 of [a-z0-9-]",
    )


def check_mem_size(value: str) -> str:
    """A Docker memory size such as ``1g`` or ``512m``, lower-cased."""
    if not _MEM_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a memory size; write e.g. 1g, 512m")
    return value.lower()


def check_ipc_mode(value: str) -> str:
    """One of IPC_MODES or ``container:NAME`` (a container's name or id)."""
    if value in IPC_MODES:
        return value
    kind, sep, name = value.partition(":")
    if kind == "container" and sep and _CONTAINER_NAME_RE.fullmatch(name):
        return value
    raise ValueError(
        f"{value!r} is not an IPC mode; use one of {', '.join(IPC_MODES)} or "
        "container:NAME (a container's name or id)"
    )


def check_user(value: str) -> str:
    """A numeric ``uid:gid`` or ``root``: who a container runs as."""
    if value != "root" and not re.fullmatch(r"\d{1,10}:\d{1,10}", value):
        raise ValueError(f"{value!r} is not a user; write numeric uid:gid (e.g. 1000:1000), or "
                         "root to run the containers as root")
    return value


# --- GPUs ---------------------------------------------------------------------------------------


def check_gpu_driver(value: str) -> str:
    """A device driver name such as ``nvidia``."""
    return _fullmatch(
        r"[a-z0-9][a-z0-9_.-]{0,63}", value,
        f"{value!r} is not a device driver name; write e.g. nvidia",
    )


def check_gpu_capability(value: str) -> str:
    """A driver capability such as ``gpu``, ``compute`` or ``utility``."""
    return _fullmatch(
        r"[a-z0-9_]{1,32}", value,
        f"{value!r} is not a driver capability; write e.g. gpu, compute, utility",
    )


def check_gpu_id(value: str) -> str:
    """A GPU index (``0``) or UUID (``GPU-...``)."""
    return _fullmatch(
        r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}", value,
        f"{value!r} is not a GPU id; write an index (0) or a UUID (GPU-...)",
    )


# --- the fabric: subnets, interfaces, MTU, link emulation ----------------------------------------


def check_subnet(value: str) -> str:
    """A private-use IPv4 CIDR of /29 or larger, normalised (``str(ip_network)``); refused with
    the reason when it has host bits set, is IPv6, or overlaps a special-purpose block."""
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not a subnet; write CIDR like 172.28.0.0/16") from None
        raise ValueError(f"{value!r} has host bits set; did you mean {loose}?") from None
    if net.version != 4:
        raise ValueError(
            f"{value!r} is IPv6; netorch plans IPv4 fabrics (write e.g. 172.28.0.0/16)"
        )
    if net.prefixlen > 29:
        raise ValueError(f"{value!r} is too small for a network; use a /29 or larger")
    for block, what in _RESERVED_V4:
        if net.overlaps(block):
            raise ValueError(
                f"{value!r} overlaps {what}; use a private range like 172.28.0.0/16 or "
                "10.77.0.0/24"
            )
    return str(net)


def check_mtu(value: int) -> int:
    """An MTU within MTU_MIN..MTU_MAX."""
    if not MTU_MIN <= value <= MTU_MAX:
        raise ValueError(
            f"{value} is outside {MTU_MIN}..{MTU_MAX}; use 1500 (standard) or 9000 (jumbo frames)"
        )
    return value


def check_bridge_name(value: str) -> str:
    """A Linux interface name for the host-side bridge (1-15 characters)."""
    return _fullmatch(
        r"[a-zA-Z0-9_.-]{1,15}", value,
        f"{value!r} is not a Linux interface name; use 1-15 of [a-zA-Z0-9_.-]",
    )


def check_interface_name(value: str) -> str:
    """The container interface name NCCL/gloo are told to use, such as ``eth0``."""
    return _fullmatch(
        r"[a-zA-Z0-9_.-]{1,15}", value,
        f"{value!r} is not an interface name; use e.g. eth0",
    )


def parse_rate_bits(value: str) -> int:
    """Bits per second from a tc rate: ``"1gbit"`` -> 1_000_000_000 (decimal multiples, as tc)."""
    m = _RATE_RE.match(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a rate; write e.g. 1gbit, 10gbit, 500mbit")
    bits = int(float(m.group(1)) * _RATE_UNITS[m.group(2).lower()])
    if bits < 8000:
        raise ValueError(f"{value!r} is below 8kbit; write e.g. 1gbit")
    return bits


def check_rate(value: str) -> str:
    """A tc rate of at least 8kbit (see :func:`parse_rate_bits`), stripped and lower-cased."""
    parse_rate_bits(value)
    return value.strip().lower()


def check_duration(value: str) -> str:
    """A netem duration such as ``50us`` or ``1ms``, stripped and lower-cased."""
    if not _TIME_RE.match(value.strip()):
        raise ValueError(f"{value!r} is not a duration; write e.g. 50us, 1ms")
    return value.strip().lower()


def check_loss(value: str) -> str:
    """A loss percentage within 0..100, as ``<number>%`` (the ``%`` is optional on input)."""
    text = value.strip().removesuffix("%")
    try:
        pct = float(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a loss percentage; write e.g. 0.1%") from None
    if not 0 <= pct <= 100:
        raise ValueError(f"{value!r} is outside 0..100%; write e.g. 0.1%")
    return f"{text}%"


# --- environment variables and URLs --------------------------------------------------------------


def check_env_name(key: str, field: str) -> str:
    """``key`` if it is a variable name; else ValueError prefixed by ``field`` (the setting),
    with the fix for ``NCCL_A=B`` written as a key (a typo of a value)."""
    if not ENV_NAME_RE.fullmatch(key):
        hint = ""
        name, sep, value = key.partition("=")
        if sep and ENV_NAME_RE.fullmatch(name):
            hint = f" (to set {name} to {value!r}, write {field}.{name}={value})"
        raise ValueError(
            f"{field}: {key!r} is not a variable name; use letters, digits and '_', not starting "
            f"with a digit{hint}"
        )
    return key


def check_node_env_name(key: str) -> str:
    """An ``[env]`` key (the variables netorch injects into every rank), upper-cased: a variable
    name of a known family (ENV_PREFIXES) that the plan does not own (PLAN_OWNED_ENV)."""
    key = check_env_name(key.upper(), "env")
    if key in PLAN_OWNED_ENV:
        raise ValueError(
            f"{key} is set by the plan; remove it (change cluster/network settings instead)"
        )
    if not key.startswith(ENV_PREFIXES):
        raise ValueError(
            f"{key!r} is not a known variable family; use one starting with "
            + ", ".join(p for p in ENV_PREFIXES)
        )
    return key


def redact_url_credentials(text: str) -> str:
    """``text`` with every ``//user:password@`` of a URL shown as ``//***@``."""
    return re.sub(r"//[^/\s]*@", "//***@", text)


def check_http_url(value: str) -> str:
    """An ``http(s)://`` URL of printable ASCII without blanks (a newline here would end up in an
    HTTP request line); the message never echoes the URL's credentials."""
    if not re.fullmatch(r"https?://[!-.0-~]+(?:/[!-~]*)?", value):
        shown = re.sub(r"//[^/]*@", "//***@", value)
        raise ValueError(f"{shown!r} is not an http(s) URL; write e.g. http://127.0.0.1:9091")
    return value


# --- sizes against memory ------------------------------------------------------------------------


def bench_memory_problem(max_bytes: int, ranks_here: int, total: int,
                         blocking: bool = True) -> str | None:
    """Why ``max_bytes`` buffers cannot fit ``ranks_here`` ranks on a host with ``total`` bytes
    of RAM, each holding BENCH_BUFFERS_PER_RANK buffers of that size (non-blocking: one input and
    output per op in flight more); None when they fit. The message names the size, the limit in
    bytes and the fix."""
    buffers = BENCH_BUFFERS_PER_RANK + (0 if blocking else 2 * (NONBLOCKING_DEPTH - 1))
    limit = total // (max(1, ranks_here) * buffers)
    if max_bytes <= limit:
        return None
    return (
        f"{max_bytes} bytes ({human_bytes(max_bytes)}) is more than a rank can hold here: "
        f"{ranks_here} rank(s) on this host x {buffers} buffers each share "
        f"{human_bytes(total)} of RAM, so the limit is {limit} bytes ({human_bytes(limit)}); "
        "lower bench.max_bytes (-E) or run fewer ranks on this host"
    )


def human_bytes(n: int) -> str:
    """``n`` bytes in binary units with one decimal (``1.5 GiB``; plain bytes as ``512 B``)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
