"""Process backend: every node is a local ``torchrun`` process group on 127.0.0.1 (``lo``).

The embedded default: it needs no Docker daemon, only torch in this interpreter.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from orchestrator.backends.base import Backend, LineSink, NodeExit, NodeHandle
from orchestrator.errors import BackendError, PlanError, PreflightError
from orchestrator.plan import (
    BackendName,
    ClusterPlan,
    FabricSpec,
    NetworkSpec,
    NodeSpec,
    link_spec,
)
from orchestrator.settings import Settings

LOOPBACK_ADDR = "127.0.0.1"

#: Said once per run (in the master node's log and echo): torch's TCPStore server binds every
#: interface (``[::]:PORT``, dual stack) and torch 2.13 offers no bind address for the store
#: ``init_process_group`` creates (only ``TCPStore(master_listen_fd=...)`` for a caller-made one).
STORE_NOTICE = (
    "netorch: note: torch's c10d store listens on all interfaces (*:{port}) while this run "
    "lasts, not only on 127.0.0.1; on a shared or exposed host, firewall port {port} or use the "
    "docker backend (an internal network)"
)


def port_taken(port: int) -> bool:
    """True when the c10d store could not listen on ``port``: something listens there or holds
    it bound. Tested as the store binds (every interface, dual stack), with SO_REUSEADDR as it
    uses, so a port a finished run left in TIME_WAIT counts as free."""
    for family, addr in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 on this host: the IPv4 test decides
            continue
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                try:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                except OSError:
                    pass
            try:
                sock.bind((addr, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    return True
                continue  # e.g. IPv6 disabled: try IPv4
            return False
    return False


def port_holder(port: int) -> str | None:
    """``pid N (command line)`` of the process listening on TCP ``port``; ``a process of another
    user`` when the kernel hides its pid; None when nothing listens there."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for conn in conns:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
            continue
        if conn.pid is None:
            return "a process of another user"
        try:
            cmdline = " ".join(psutil.Process(conn.pid).cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            cmdline = "?"
        if len(cmdline) > 120:
            cmdline = cmdline[:117] + "..."
        return f"pid {conn.pid} ({cmdline})"
    return None


def _project_root() -> Path:
    """The folder holding the ``train`` package, so ``-m train.bench`` imports in children."""
    spec = importlib.util.find_spec("train")
    if spec is None or not spec.submodule_search_locations:
        raise PreflightError(
            "the 'train' package is not importable; install netorch (pip install -e .) first"
        )
    return Path(next(iter(spec.submodule_search_locations))).parent


def local_argv(command: tuple[str, ...], python: str) -> list[str]:
    """A node's command as this host runs it: ``torchrun`` and ``python`` become this interpreter
    (``python -m torch.distributed.run``), so nodes use the torch netorch itself runs with."""
    head, *rest = command
    if head == "torchrun":
        return [python, "-m", "torch.distributed.run", *rest]
    if head in ("python", "python3"):
        return [python, *rest]
    return list(command)


class ProcessNode:
    """One node's torchrun, in its own session so a signal reaches its whole group."""

    def __init__(self, node: NodeSpec, proc: subprocess.Popen[str], sink: LineSink) -> None:
        self.name = node.name
        self.proc = proc
        self._exit: NodeExit | None = None
        self._reader = threading.Thread(target=self._read, args=(sink,), daemon=True)
        self._reader.start()
        self._waiter = threading.Thread(target=self._wait, daemon=True)
        self._waiter.start()

    def _read(self, sink: LineSink) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            sink(self.name, line.rstrip("\n"))

    def _wait(self) -> None:
        code = self.proc.wait()
        # Let the reader drain what the process wrote before it died.
        self._reader.join(timeout=2)
        self._exit = NodeExit(exit_code=code, finished_at=time.time())

    def poll(self) -> NodeExit | None:
        return self._exit


def run_processes(run_id: str | None) -> list[psutil.Process]:
    """Every live process carrying this run's ``NETORCH_RUN_ID`` (None: any run's): the
    launchers and their ranks.

    A launcher's ranks may outlive its group (torchrun starts each in a session of its own); the
    run id in their environment finds them wherever they were re-parented.
    """
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid == os.getpid():
                continue
            owner = proc.environ().get("NETORCH_RUN_ID")
            if owner is not None and (run_id is None or owner == run_id):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


class ProcessBackend:
    """Runs a plan's nodes as local process groups on loopback."""

    name: BackendName = "process"

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable
        self._nodes: list[ProcessNode] = []
        self._store_noticed = False

    def preflight(self, plan: ClusterPlan) -> None:
        if importlib.util.find_spec("torch") is None:
            raise PreflightError(
                f"torch is not installed in {self.python}; install it (README: Installing "
                "PyTorch), e.g. pip install 'netorch[torch]'"
            )
        _project_root()
        if any(node.gpus for node in plan.nodes):
            raise PreflightError(
                "the process backend does not reserve GPUs; use --backend docker or set gpu.per_node = 0"
            )
        port = plan.master_port
        if port_taken(port):
            holder = port_holder(port)
            held = f"held by {holder}" if holder else "bound by another socket"
            raise PreflightError(
                f"master port {port} on {plan.master_addr} is in use ({held}); stop that or "
                "pick a free port with --master-port or cluster.master_port"
            )

    def up(self, plan: ClusterPlan, sink: LineSink) -> list[NodeHandle]:
        root = _project_root()
        base_env = dict(os.environ)
        pythonpath = base_env.get("PYTHONPATH")
        base_env["PYTHONPATH"] = f"{root}{os.pathsep}{pythonpath}" if pythonpath else str(root)
        handles: list[NodeHandle] = []
        cwd = plan.workdir or str(root)
        if not self._store_noticed and plan.nodes:  # once per run, not per gang restart
            self._store_noticed = True
            sink(plan.nodes[0].name, STORE_NOTICE.format(port=plan.master_port))
        for node in plan.nodes:
            argv = local_argv(node.command, self.python)
            try:
                proc = subprocess.Popen(
                    argv,
                    env={**base_env, **node.env_dict},
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    bufsize=1,
                    start_new_session=True,
                )
            except OSError as e:
                raise BackendError(f"node {node.name}: could not start {argv[0]}: {e}") from e
            pn = ProcessNode(node, proc, sink)
            self._nodes.append(pn)
            handles.append(pn)
        return handles

    def stop(self, plan: ClusterPlan, grace_s: float) -> None:
        for pn in self._nodes:
            if pn.proc.poll() is None:
                try:
                    os.killpg(pn.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        procs = run_processes(plan.run_id)
        for proc in procs:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=grace_s)

    def down(self, plan: ClusterPlan) -> None:
        self.stop(plan, grace_s=2.0)
        for pn in self._nodes:
            try:
                pn.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(pn.proc.pid, signal.SIGKILL)
        left = run_processes(plan.run_id)
        if left:
            raise BackendError(
                f"{len(left)} process(es) of run {plan.run_id} survived SIGKILL: "
                + ", ".join(str(p.pid) for p in left)
            )


class ProcessKind:
    """The process backend: nodes are local process groups on loopback (no Docker needed)."""

    name = "process"
    summary = "every node a local process group on 127.0.0.1 (lo); needs torch, no Docker"

    def fabric(self, settings: Settings, run_id: str) -> FabricSpec:
        if len(settings.hosts) > 1:
            raise PlanError(
                f"{len(settings.hosts)} hosts are configured but the process backend runs on this "
                "host only; use --backend docker (or drop [[hosts]])"
            )
        link = settings.network.link
        if link_spec(link) is not None or link.nodes or link.pairs:
            # Local processes share the host's loopback: there is no per-node interface to shape,
            # and a silently unshaped run (or a "healthy" fabric) would mislead.
            raise PlanError("network.link: the process backend cannot emulate links (tc needs a "
                            "network namespace per node); use --backend docker, or drop "
                            "[network.link]")
        n = settings.cluster.nodes
        network = NetworkSpec(
            name="lo", driver="loopback", subnet="127.0.0.0/8", gateway=None, ip_range=None,
            mtu=None, internal=True, bridge_name=None, interface="lo",
        )
        return FabricSpec(
            network=network, ips=(LOOPBACK_ADDR,) * n, placement=(None,) * n, aliases=False,
            in_node_paths=False, shared_ports=True, metrics_addr=LOOPBACK_ADDR,
        )

    def probe(self, settings: Settings) -> str | None:
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed in this interpreter"
        return None

    def ready(self, settings: Settings) -> str:
        return "running nodes as local processes"

    def create(self, settings: Settings) -> Backend:
        return ProcessBackend()

    def remove(self, settings: Settings, run_id: str | None) -> list[str]:
        """Kill what is left of a run's processes (found by NETORCH_RUN_ID in their env)."""
        procs = run_processes(run_id)
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=5)
        return [f"process {p.pid}" for p in procs]


PROCESS = ProcessKind()
