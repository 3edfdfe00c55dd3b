"""``netorch doctor``: diagnose a plan's network and containers before (or while) a job runs.

Two modes, one set of checks:

- **plan**: the plan's network and containers come up with ``sleep`` instead of torchrun
  (:func:`sleeping_plan`), the checks run inside them, and everything is torn down again;
- **run** (``--run ID``): the containers of a running run, found by label; the plan is read back
  from what the daemon knows (each container's environment, address and network).

Each check maps to a pitfall in FACTS.md: reachability (a dead or missing peer hangs the group),
the master alias and the hostname (gloo on 127.0.1.1), the interface NCCL/gloo will pick, effective
and path MTU (large messages hang on a mismatch), /dev/shm (NCCL's posix_fallocate), memlock, GPU
visibility, the master port, and fail-fast settings. Every result carries the fix.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from orchestrator.backends.docker import (
    MTU_OPTION,
    DockerBackend,
    apply_link,
    docker_errors,
    run_filters,
)
from orchestrator.errors import BackendError, NetorchError
from orchestrator.netprobe import ProbeNode, concurrently, path_mtu, ping, run_in
from orchestrator.plan import LABEL_RANK, ClusterPlan

Status = Literal["pass", "warn", "fail", "skip"]
SHM_WARN_BYTES = 1 << 30  # NCCL wants room for its buffers; 1 GiB is the usual advice
SHM_FAIL_BYTES = 64 << 20  # Docker's default: NCCL's posix_fallocate fails (nccl#342)
MASTER_ALIAS = "master"  # the master's hostname and DNS alias in every plan
SLEEP_S = "3600"  # a probe container outlives any diagnosis, and not a crashed host by much
_SECTION = re.compile(r"^@@(\w+)$")

# One exec per container gathers every local fact; sections are parsed by _sections().
FACTS_SCRIPT = r"""
echo @@addr; ip -4 -o addr show 2>&1
echo @@mtu; for d in /sys/class/net/*; do echo "${d##*/} $(cat "$d/mtu")"; done
echo @@master; getent ahostsv4 "$1" 2>&1 | head -n 1
echo @@self; getent hosts "$(hostname)" 2>&1 | head -n 1
echo @@shm; df -kP /dev/shm 2>&1 | tail -n 1
echo @@memlock; ulimit -l
echo @@gpu; ls /dev/nvidia* 2>/dev/null
echo @@port; python3 -c 'import socket,sys
s = socket.socket()
try:
    s.bind(("0.0.0.0", int(sys.argv[1]))); print("free")
except OSError as e:
    print("busy", e)' "$2" 2>&1
echo @@route; ip -4 route show default 2>&1 | head -n 1
echo @@end
"""


@dataclass(frozen=True)
class Check:
    """One diagnosis: what was checked where, the verdict, what was seen and how to fix it."""

    name: str
    target: str
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class DoctorNode:
    """A node the doctor examines: its container and the environment the plan gave it."""

    name: str
    short: str
    node_rank: int
    planned_ip: str
    container: Any
    env: Mapping[str, str]
    # The node's planned address on the management network, when the plan has one.
    management_ip: str | None = None


@dataclass(frozen=True)
class DoctorTarget:
    """What is diagnosed: the nodes present and what the plan expected."""

    run_id: str
    mode: Literal["plan", "run"]
    nodes: tuple[DoctorNode, ...]
    expected_nodes: int
    network_mtu: int | None
    gpus_planned: bool
    master_addr: str
    master_port: int


def sleeping_plan(plan: ClusterPlan, net_admin: bool = False) -> ClusterPlan:
    """``plan`` whose nodes sleep instead of running torchrun: containers to probe from.

    ``net_admin`` grants NET_ADMIN (link emulation grants it anyway); tests use it to break a
    container's MTU on purpose.
    """
    caps = set(plan.runtime.cap_add) | ({"NET_ADMIN"} if net_admin else set())
    runtime = dataclasses.replace(plan.runtime, cap_add=tuple(sorted(caps)), start_gate=False)
    nodes = tuple(dataclasses.replace(n, command=("sleep", SLEEP_S)) for n in plan.nodes)
    return dataclasses.replace(plan, runtime=runtime, nodes=nodes)


def target_from_plan(plan: ClusterPlan, containers: Mapping[str, Any]) -> DoctorTarget:
    """The target of plan mode: the plan's nodes and the containers made from it."""
    nodes = tuple(
        DoctorNode(n.name, n.hostname, n.node_rank, n.ip, containers[n.name], n.env_dict,
                   n.management_ip)
        for n in plan.nodes if n.name in containers
    )
    mtu = plan.network.mtu
    if mtu is not None and plan.network.driver == "overlay":
        # The overlay's MTU option counts the VXLAN headers: eth0 gets 50 bytes less (README:
        # "What the overlay costs"), which is what the path must carry.
        mtu -= VXLAN_OVERHEAD
    return DoctorTarget(
        plan.run_id, "plan", nodes, len(plan.nodes), mtu,
        any(n.gpus is not None for n in plan.nodes), plan.master_addr, plan.master_port,
    )


VXLAN_OVERHEAD = 50


def target_from_run(client: Any, run_id: str, others: Sequence[Any] = ()) -> DoctorTarget:
    """The target of run mode, read back from the daemon by the run's label (and from the
    ``others`` hosts' daemons of a multi-host run; ``client`` is the manager's)."""
    with docker_errors(f"listing run {run_id}"):
        containers = [c for cl in (client, *others) for c in cl.containers.list(
            all=True, filters=run_filters(run_id), ignore_removed=True)]
        networks = client.networks.list(filters=run_filters(run_id))
    if not containers:
        raise BackendError(
            f"run {run_id} has no containers on this daemon; check the id (`docker ps --filter "
            f"label=io.netorch.run`) or diagnose a plan instead (netorch doctor without --run)"
        )
    mtu = None
    if networks:
        opt = (networks[0].attrs.get("Options") or {}).get(MTU_OPTION)
        mtu = int(opt) if opt else 1500  # the bridge driver's default when no option was given
    nodes = []
    for c in sorted(containers, key=lambda c: int(c.labels.get(LABEL_RANK, "0"))):
        env = dict(item.split("=", 1) for item in c.attrs["Config"].get("Env") or [] if "=" in item)
        nodes.append(DoctorNode(
            c.name, c.attrs["Config"].get("Hostname", c.name), int(c.labels.get(LABEL_RANK, "0")),
            env.get("NETORCH_PLANNED_IP", ""), c, env,
        ))
    env0 = nodes[0].env
    return DoctorTarget(
        run_id, "run", tuple(nodes), int(env0.get("NNODES", len(nodes))), mtu,
        any(c.attrs["HostConfig"].get("DeviceRequests") for c in containers),
        env0.get("MASTER_ADDR", ""), int(env0.get("MASTER_PORT", "29500")),
    )


# ------------------------------------------------------------------------------- facts


def _sections(output: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = ""
    for line in output.splitlines():
        m = _SECTION.match(line.strip())
        if m:
            current = m.group(1)
            out[current] = []
        elif current:
            out[current].append(line.rstrip())
    return out


@dataclass(frozen=True)
class NodeFacts:
    """What one container reports about itself (one exec)."""

    running: bool
    addrs: dict[str, str]  # interface -> IPv4
    mtus: dict[str, int]
    master_lookup: str
    self_lookup: str
    shm_bytes: int | None
    memlock: str
    gpu_devices: tuple[str, ...]
    port: str
    default_route: str = ""


def gather(node: DoctorNode, master_port: int) -> NodeFacts:
    """Run :data:`FACTS_SCRIPT` in the node's container and parse it."""
    node.container.reload()
    if node.container.status != "running":
        return NodeFacts(False, {}, {}, "", "", None, "", (), "")
    code, out = run_in(node.container, ["sh", "-c", FACTS_SCRIPT, "facts", MASTER_ALIAS,
                                        str(master_port)])
    s = _sections(out)
    addrs = {}
    for line in s.get("addr", []):
        f = line.split()
        if len(f) >= 4 and f[2] == "inet":
            addrs[f[1]] = f[3].split("/")[0]
    mtus = {}
    for line in s.get("mtu", []):
        f = line.split()
        if len(f) == 2 and f[1].isdigit():
            mtus[f[0]] = int(f[1])
    shm = None
    shm_line = (s.get("shm") or [""])[0].split()
    if len(shm_line) >= 2 and shm_line[1].isdigit():
        shm = int(shm_line[1]) * 1024
    return NodeFacts(
        True, addrs, mtus, " ".join(s.get("master", [])).strip(),
        " ".join(s.get("self", [])).strip(), shm, " ".join(s.get("memlock", [])).strip(),
        tuple(x for x in s.get("gpu", []) if x), " ".join(s.get("port", [])).strip(),
        " ".join(s.get("route", [])).strip(),
    )


# ------------------------------------------------------------------------------- checks


def _ifname(value: str) -> str:
    return value.split(",")[0].strip().lstrip("=")


def _management_check(n: DoctorNode, f: NodeFacts) -> Check:
    """Beside a management network: it holds its planned address, collectives stay off it, and
    the way out (the default route) goes through it."""
    holder = next((i for i, a in f.addrs.items() if a == n.management_ip), None)
    fabric_if = _ifname(n.env.get("GLOO_SOCKET_IFNAME", ""))
    problems = []
    if holder is None:
        problems.append(f"no interface holds the management address {n.management_ip}")
    elif holder == fabric_if:
        problems.append(f"GLOO_SOCKET_IFNAME={fabric_if} is the management interface")
    if holder is not None and f" dev {holder}" not in f" {f.default_route} ":
        problems.append(f"the default route is {f.default_route or 'missing'}, not via {holder}")
    return Check(
        "management network", n.short, "fail" if problems else "pass",
        "; ".join(problems) or f"{holder} holds {n.management_ip} and the default route; "
        f"collectives on {fabric_if}",
        "keep network.interface on the fabric and network.management.internal = false"
        if problems else "")


def diagnose(target: DoctorTarget) -> list[Check]:
    """Every check against ``target``; the order follows a job's start-up."""
    checks: list[Check] = []
    facts = dict(zip([n.name for n in target.nodes],
                     concurrently(lambda n: gather(n, target.master_port), target.nodes)))
    live = [n for n in target.nodes if facts[n.name].running]

    # Presence: a planned node without a running container hangs everyone at rendezvous.
    ranks = {n.node_rank for n in live}
    missing = [r for r in range(target.expected_nodes) if r not in ranks]
    checks.append(Check(
        "nodes up", f"{target.expected_nodes} planned", "fail" if missing else "pass",
        f"no running container for node rank(s) {missing}" if missing
        else f"{len(live)} containers running",
        "start the missing nodes (or rerun the job); one absent rank stalls the whole group"
        if missing else ""))

    # Reachability and latency, all pairs, plus the master address when no live node holds it.
    peers = [(n.short, n.planned_ip) for n in live]
    if target.master_addr and target.master_addr not in {ip for _, ip in peers}:
        peers.append((f"{MASTER_ALIAS} (no container)", target.master_addr))
    probes = {n.name: ProbeNode(n.name, n.planned_ip, n.container) for n in live}
    jobs = [(n, name, ip) for n in live for name, ip in peers if ip != n.planned_ip]
    results = concurrently(lambda j: ping(probes[j[0].name], j[1], j[2]), jobs)
    for n in live:
        mine = [r for r in results if r.src == n.name]
        bad = [r for r in mine if not r.ok]
        detail = ", ".join(f"{r.dst} {r.rtt_ms:.3f} ms" if r.ok else f"{r.dst} ({r.dst_ip}) "
                           f"UNREACHABLE" for r in mine) or "no peers"
        checks.append(Check(
            "reachability", n.short, "fail" if bad else "pass", detail,
            f"{', '.join(r.dst_ip for r in bad)} answer nothing on the run's network: the peer's "
            "container is down or was never started there; bring it up (or fix its address)"
            if bad else ""))

    for n in live:
        f = facts[n.name]
        # The master alias and the hostname: gloo on 127.0.1.1 (pytorch#15592).
        got = f.master_lookup.split()[0] if f.master_lookup else ""
        problems = []
        if got != target.master_addr:
            problems.append(f"`getent hosts {MASTER_ALIAS}` gives {got or 'nothing'}, the "
                            f"master is {target.master_addr}")
        own = f.self_lookup.split()[0] if f.self_lookup else ""
        if own.startswith("127.") or ":" in own:
            problems.append(f"its hostname resolves to {own}")
        try:
            ipaddress.IPv4Address(n.env.get("MASTER_ADDR", ""))
        except ValueError:
            problems.append(f"MASTER_ADDR={n.env.get('MASTER_ADDR')!r} is not an IPv4 address")
        checks.append(Check(
            "alias resolution", n.short, "fail" if problems else "pass",
            "; ".join(problems) or f"{MASTER_ALIAS} -> {got}; hostname -> {own}",
            "the master's container is missing or not on this network (aliases come from "
            "Docker's DNS on the run's network); keep MASTER_ADDR an IPv4 literal"
            if problems else ""))

        # The interface gloo / NCCL will pick must exist and hold the planned address.
        holder = next((i for i, a in f.addrs.items() if a == n.planned_ip), None)
        problems = []
        for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            value = n.env.get(var, "")
            if not value:
                problems.append(f"{var} is unset (the library guesses, and may pick lo)")
                continue
            if value.startswith("^"):
                problems.append(f"{var}={value}: an exclusion only" + (
                    "; gloo does not accept ^ at all" if var.startswith("GLOO") else
                    "; NCCL may then pick lo"))
                continue
            name = _ifname(value)
            if name not in f.addrs and name not in f.mtus:
                problems.append(f"{var}={value}: no interface {name} in the container "
                                f"(it has {', '.join(sorted(f.mtus)) or 'none'})")
            elif f.addrs.get(name) != n.planned_ip:
                problems.append(f"{var}={value}: {name} holds {f.addrs.get(name)}, not the "
                                f"planned {n.planned_ip}")
        checks.append(Check(
            "interface", n.short, "fail" if problems else "pass",
            "; ".join(problems) or f"{_ifname(n.env.get('GLOO_SOCKET_IFNAME', ''))} holds "
            f"{n.planned_ip}",
            f"set network.interface = \"{holder}\" (the interface holding {n.planned_ip})"
            if problems and holder else ("the planned address is on no interface: is the "
                                         "container on the run's network?" if problems else "")))

        if n.management_ip:
            checks.append(_management_check(n, f))

        # Effective MTU: what the kernel uses, against the request.
        mtu = f.mtus.get(holder) if holder else None
        ok = mtu is not None and (target.network_mtu is None or mtu == target.network_mtu)
        checks.append(Check(
            "effective MTU", n.short, "pass" if ok else "fail",
            f"{holder or '?'} MTU {mtu}, network requests {target.network_mtu}",
            "" if ok else f"the interface runs at {mtu}, not {target.network_mtu}: something "
            f"changed it after start (ip link set {holder} mtu {target.network_mtu}) or the "
            "network driver lowered it (overlay: 50 bytes of VXLAN); set network.mtu to what "
            "every hop carries"))

        # /dev/shm: Docker's 64 MiB default breaks NCCL (nccl#342).
        shm = f.shm_bytes
        status: Status = "fail" if shm is not None and shm <= SHM_FAIL_BYTES else (
            "warn" if shm is None or shm < SHM_WARN_BYTES else "pass")
        checks.append(Check(
            "/dev/shm", n.short, status,
            f"{shm / (1 << 20):.0f} MiB" if shm is not None else "not mounted",
            "" if status == "pass" else "set docker.shm_size = \"1g\" (or larger); NCCL fails "
            "with 'posix_fallocate failed' or a bus error on Docker's 64m default"))

        # memlock: NCCL pins memory; RDMA needs it unlimited. The daemon may cap it (8 MiB here).
        unlimited = f.memlock == "unlimited"
        status = "pass" if unlimited or not target.gpus_planned else "warn"
        checks.append(Check(
            "memlock", n.short, status,
            f"ulimit -l = {f.memlock}" + ("" if unlimited else " KiB"),
            "" if status == "pass" else "set docker.memlock = -1 (unlimited) if the daemon "
            "allows it, else raise the daemon's default-ulimits"))

        # GPU visibility, when the plan reserves GPUs.
        if target.gpus_planned:
            checks.append(Check(
                "GPU visibility", n.short, "pass" if f.gpu_devices else "fail",
                ", ".join(f.gpu_devices) or "no /dev/nvidia* devices",
                "" if f.gpu_devices else "install the NVIDIA Container Toolkit and keep "
                "'utility' in gpu.capabilities"))
        else:
            checks.append(Check("GPU visibility", n.short, "skip", "no GPUs planned"))

        # Fail fast: without async error handling, one dead rank hangs the rest (pytorch#97191).
        fast = n.env.get("TORCH_NCCL_ASYNC_ERROR_HANDLING") == "1"
        checks.append(Check(
            "fail-fast", n.short, "pass" if fast else "warn",
            f"TORCH_NCCL_ASYNC_ERROR_HANDLING={n.env.get('TORCH_NCCL_ASYNC_ERROR_HANDLING')}",
            "" if fast else "keep TORCH_NCCL_ASYNC_ERROR_HANDLING=1 and a short cluster.timeout_s"))

    # Path MTU: don't-fragment probes at the requested MTU between every pair of live nodes.
    if target.network_mtu is not None and len(live) > 1:
        mtu_req = target.network_mtu
        jobs2 = [(a, b) for a in live for b in live if a is not b]
        pm = concurrently(lambda j: path_mtu(probes[j[0].name], j[1].short, j[1].planned_ip,
                                             mtu_req), jobs2)
        for n in live:
            mine2 = [r for r in pm if r.src == n.name]
            bad2 = [r for r in mine2 if not r.ok]
            checks.append(Check(
                "path MTU", n.short, "fail" if bad2 else "pass",
                "; ".join(f"-> {r.dst}: {r.detail}" for r in (bad2 or mine2[:1])),
                "every interface on the path must carry the same MTU: large messages hang on a "
                "mismatch while small ones work; align the MTUs (network.mtu, the hosts' NICs "
                "and switches for jumbo frames)" if bad2 else ""))

    # The master port: free before the job starts; the c10d store's once it runs.
    master = next((n for n in live if n.planned_ip == target.master_addr), None)
    if master is not None:
        port = facts[master.name].port
        busy = port.startswith("busy")
        status = "fail" if busy and target.mode == "plan" else "pass"
        detail = (f"{target.master_port} is free" if not busy else
                  f"{target.master_port} is in use" + (" (the running job's c10d store)"
                                                       if target.mode == "run" else ""))
        checks.append(Check("master port", master.short, status, detail,
                            "choose another cluster.master_port" if status == "fail" else ""))
    else:
        checks.append(Check("master port", MASTER_ALIAS, "fail",
                            f"no running container holds MASTER_ADDR {target.master_addr}",
                            "bring the master up first; every worker connects to it"))
    return checks


def doctor_plan(
    plan: ClusterPlan, client: Any,
    after_up: Callable[[ClusterPlan, Mapping[str, Any]], None] | None = None,
    hosts: Mapping[str, Any] | None = None,
) -> list[Check]:
    """Plan mode: bring ``plan`` up sleeping, diagnose, tear it down (always).

    ``hosts`` (host name -> client) for a multi-host plan: the nodes come up on their hosts'
    daemons over the overlay, and are probed from where they run."""
    from orchestrator.backends.base import Backend

    probe = sleeping_plan(plan)
    backend: Backend = DockerBackend(client)
    clients = [client]
    if hosts is not None and plan.multi_host:
        from orchestrator.backends.swarm import MultiHostDockerBackend

        backend, clients = MultiHostDockerBackend(hosts), list(hosts.values())
    backend.preflight(probe)
    checks: list[Check] = []
    try:
        backend.up(probe, lambda node, line: None)
        containers = {c.name: c for cl in clients for c in cl.containers.list(
            filters=run_filters(probe.run_id), ignore_removed=True)}
        if probe.network.shaped:
            try:
                apply_link(probe, containers)
                checks.append(Check("link emulation", "all nodes", "pass",
                                    f"tc applied: {probe.network.link}"))
            except NetorchError as e:
                checks.append(Check("link emulation", "all nodes", "fail", str(e),
                                    "see the message; delay/jitter/loss need the sch_netem module"))
        if after_up is not None:
            after_up(probe, containers)
        checks = diagnose(target_from_plan(probe, containers)) + checks
    finally:
        backend.down(probe)
    return checks


def doctor_run(client: Any, run_id: str, others: Sequence[Any] = ()) -> list[Check]:
    """Run mode: diagnose the containers of a run that exists (on ``client``'s daemon and the
    ``others`` of a multi-host run)."""
    return diagnose(target_from_run(client, run_id, others))


def failed(checks: Sequence[Check]) -> list[Check]:
    """The checks that failed (the CLI exits non-zero when there is any)."""
    return [c for c in checks if c.status == "fail"]


DOCTOR_COLOURS: dict[str, str] = {"pass": "green", "warn": "yellow", "fail": "bold red",
                                  "skip": "dim"}


def doctor_report(checks: Sequence[Check], scope: str, width: int) -> tuple[Any, list[str]]:
    """The terminal's view of the checks: a table of one line per check (fitted to ``width``, long
    details cut), then one full line per failed or warned check with what was seen and the fix,
    which is what a reader acts on and must never be cut. ``--json`` has every field."""
    from rich.markup import escape

    from orchestrator.tables import Column, fit_table

    columns = [Column("check", priority=2, cut=False), Column("node", priority=2, cut=False),
               Column("status", priority=2, cut=False), Column("detail", priority=2)]
    rows = [[c.name, escape(c.target), f"[{DOCTOR_COLOURS[c.status]}]{c.status.upper()}[/]",
             escape(c.detail)] for c in checks]
    table = fit_table(f"netorch doctor · {escape(scope)}", columns, rows, width)
    problems = [
        f"[{DOCTOR_COLOURS[c.status]}]{c.status.upper()}[/] {escape(c.name)} ({escape(c.target)}): "
        f"{escape(c.detail)}" + (f"; fix: {escape(c.fix)}" if c.fix else "")
        for c in checks if c.status in ("fail", "warn")]
    return table, problems
