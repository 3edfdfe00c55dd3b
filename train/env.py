"""Who this rank is and which network interface it talks on, as the kernel reports it.

The interface is the one the process group is told to use (``NETORCH_IFNAME`` injected by the plan,
else the gloo/NCCL variables a user may have set), not a guess from the hostname: a hostname that
resolves to 127.0.1.1 is a classic way for gloo to end up on loopback. The IPv4 address and the MTU
are read from the kernel for that interface, because a container's effective MTU can differ from the
one requested (an overlay asked for 1450 may deliver 1400).

No torch import here: the identity is plain data, gathered to rank 0 by the caller.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

SIOCGIFADDR: Final = 0x8915  # linux/sockios.h: get the interface's primary IPv4 address
IFNAMSIZ: Final = 16  # linux/if.h: interface names are at most 15 bytes + NUL
RTF_UP: Final = 0x0001  # linux/route.h
SYS_CLASS_NET: Final = Path("/sys/class/net")
PROC_NET_ROUTE: Final = Path("/proc/net/route")


@dataclass(frozen=True)
class RankInfo:
    """Identity of one rank: torchrun's numbering plus the interface it communicates on.

    ``ipv4`` is None when the interface has no IPv4 address (or does not exist); ``mtu`` is None when
    the kernel does not expose it. Neither is ever invented.
    """

    rank: int
    local_rank: int
    node_rank: int
    world_size: int
    node_name: str
    hostname: str
    pid: int
    ifname: str
    ipv4: str | None
    mtu: int | None

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict (the rank entry of the result document)."""
        return asdict(self)


def _env_int(env: Mapping[str, str], names: tuple[str, ...], default: int) -> int:
    """Return the first of ``names`` set in ``env`` as an int, else ``default``."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return int(value)
    return default


def _valid_ifname(name: str) -> bool:
    """True when ``name`` is a syntactically possible Linux interface name (safe in a /sys path)."""
    return 0 < len(name) < IFNAMSIZ and "/" not in name and name not in (".", "..")


def _existing_interfaces(sys_class_net: Path) -> list[str]:
    """Return the interface names the kernel lists, sorted; empty when /sys is unreadable."""
    try:
        return sorted(p.name for p in sys_class_net.iterdir())
    except OSError:
        return []


def _from_socket_ifname(value: str, sys_class_net: Path) -> str | None:
    """Resolve a GLOO/NCCL_SOCKET_IFNAME value to one interface name, or None.

    Both accept a comma list; the first entry is the one used. NCCL's syntax: ``=eth0`` is an exact
    match, ``eth`` a prefix match, ``^docker0`` an exclusion list, which names no interface to use,
    so it is skipped here rather than misread as the interface "^docker0".
    """
    first = value.split(",")[0].strip()
    if not first or first.startswith("^"):
        return None
    if first.startswith("="):
        return first[1:] or None
    names = _existing_interfaces(sys_class_net)
    if not names or first in names:
        return first
    prefixed = [n for n in names if n.startswith(first)]
    return prefixed[0] if prefixed else first


def default_route_ifname(route_table: Path = PROC_NET_ROUTE) -> str | None:
    """Return the interface of the lowest-metric default IPv4 route in /proc/net/route, or None."""
    try:
        lines = route_table.read_text().splitlines()
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for line in lines[1:]:
        fields = line.split()
        if len(fields) < 7:
            continue
        iface, destination, flags, metric = fields[0], fields[1], fields[3], fields[6]
        try:
            up = int(flags, 16) & RTF_UP
            metric_value = int(metric)
        except ValueError:
            continue
        if destination == "00000000" and up and (best is None or metric_value < best[0]):
            best = (metric_value, iface)
    return best[1] if best else None


def resolve_ifname(
    env: Mapping[str, str] | None = None,
    route_table: Path = PROC_NET_ROUTE,
    sys_class_net: Path = SYS_CLASS_NET,
) -> str:
    """Return the interface this rank communicates on.

    Order: ``NETORCH_IFNAME``, ``GLOO_SOCKET_IFNAME``, ``NCCL_SOCKET_IFNAME``, the default route's
    interface, then ``lo``.
    """
    env = os.environ if env is None else env
    explicit = env.get("NETORCH_IFNAME", "").strip()
    if explicit:
        return explicit
    for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        resolved = _from_socket_ifname(env.get(name, ""), sys_class_net)
        if resolved:
            return resolved
    return default_route_ifname(route_table) or "lo"


def interface_ipv4(ifname: str) -> str | None:
    """Return the primary IPv4 address of ``ifname`` via ioctl(SIOCGIFADDR), or None."""
    if not _valid_ifname(ifname):
        return None
    request = struct.pack("256s", ifname.encode()[: IFNAMSIZ - 1])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            reply = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)
    except OSError:  # no such device, or no IPv4 address assigned
        return None
    # struct ifreq: 16-byte name, then struct sockaddr_in (family 2, port 2, addr 4).
    return socket.inet_ntoa(reply[20:24])


def interface_mtu(ifname: str, sys_class_net: Path = SYS_CLASS_NET) -> int | None:
    """Return the kernel's MTU for ``ifname`` from /sys/class/net/<if>/mtu, or None."""
    if not _valid_ifname(ifname):
        return None
    try:
        return int((sys_class_net / ifname / "mtu").read_text().strip())
    except (OSError, ValueError):
        return None


def rank_info(env: Mapping[str, str] | None = None) -> RankInfo:
    """Return this process's identity from the launcher's environment and the kernel.

    Reads torchrun's ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and ``GROUP_RANK`` (node index;
    ``NETORCH_NODE_RANK`` or ``NODE_RANK`` win when set), defaulting to a single-process world.
    """
    env = os.environ if env is None else env
    hostname = socket.gethostname()
    ifname = resolve_ifname(env)
    return RankInfo(
        rank=_env_int(env, ("RANK",), 0),
        local_rank=_env_int(env, ("LOCAL_RANK",), 0),
        node_rank=_env_int(env, ("NETORCH_NODE_RANK", "NODE_RANK", "GROUP_RANK"), 0),
        world_size=_env_int(env, ("WORLD_SIZE",), 1),
        node_name=env.get("NETORCH_NODE_NAME", "").strip() or hostname,
        hostname=hostname,
        pid=os.getpid(),
        ifname=ifname,
        ipv4=interface_ipv4(ifname),
        mtu=interface_mtu(ifname),
    )


# The variables a rank reports it ran with (``env`` of its identity): the communication libraries'
# tuning knobs, so a sweep over them can verify that every rank really got its variant's value.
TUNING_ENV_PREFIXES: Final = ("NCCL_", "GLOO_", "TORCH_NCCL_", "TORCH_GLOO_", "OMP_")


def tuning_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``NCCL_*``, ``GLOO_*``, ``TORCH_NCCL_*``, ``TORCH_GLOO_*`` and ``OMP_*`` variables of
    ``env`` (default ``os.environ``), sorted by name."""
    env = os.environ if env is None else env
    return {k: env[k] for k in sorted(env) if k.startswith(TUNING_ENV_PREFIXES)}


MASTER_POLL_S: Final = 0.01


def wait_for_master(env: Mapping[str, str], timeout_s: float) -> bool:
    """On a rank other than 0, wait until rank 0's store accepts connections; True once it does.

    ``init_process_group`` on a rank whose first connection to MASTER_ADDR:MASTER_PORT is
    refused (rank 0 still importing torch, or its node started later) backs off for about half a
    second to a second before retrying; a plain connect every MASTER_POLL_S s instead joins
    within milliseconds of the store coming up. Returns False at once on rank 0 or without
    MASTER_ADDR/MASTER_PORT, and after ``timeout_s`` (init then reports what is wrong).
    """
    addr, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT", "")
    if env.get("RANK", "0") == "0" or not addr or not port.isdigit():
        return False
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((addr, int(port)), timeout=1.0).close()
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(MASTER_POLL_S)
