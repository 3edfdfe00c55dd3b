"""A run's containers from creation to exit: start them, follow their logs and exits, open
the start gate.

Shared by the single-host and the multi-host backend: both hand :func:`start_containers` a way
to find each node's client, then :func:`follow_nodes` the result.
"""

from __future__ import annotations

import codecs
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from orchestrator.backends.base import LineSink, NodeExit
from orchestrator.backends.docker.client import concurrently, exec_checked, is_local, retry
from orchestrator.backends.docker.errors import (
    DOCKER_ERRORS,
    TRANSPORT_ERRORS,
    docker_errors,
    translate_error,
)
from orchestrator.backends.docker.kwargs import (
    GATE_FILE,
    ROOT_USER,
    container_create_kwargs,
    container_user,
    netorch_mount_sources,
    user_ids,
)
from orchestrator.errors import BackendError
from orchestrator.backends.docker.linkem import plan_tc_commands
from orchestrator.plan import ClusterPlan, NodeSpec

# Wait requests are bounded so a waiter notices a vanished daemon instead of hanging forever.
WAIT_POLL_S = 30
LOG_DRAIN_S = 5.0

SetupHook = Callable[[ClusterPlan, Mapping[str, Any]], None]
"""``hook(plan, containers)``: runs after every container started, before the gate opens;
``containers`` maps node name to the SDK container. Raise a NetorchError to fail the run."""


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
        except DOCKER_ERRORS:
            pass  # the container was removed under us (down) or the daemon went away
        for line in splitter.close():
            self._sink(self.name, line)

    def _wait(self) -> None:
        status: int | None = None
        # The node's daemon stopped answering (its host was lost): what became of it is unknown.
        lost = False
        while status is None:
            try:
                status = int(self.container.wait(timeout=WAIT_POLL_S).get("StatusCode", -1))
            except TRANSPORT_ERRORS:
                # A bounded wait timed out (the SDK reports it as ConnectionError): still running?
                try:
                    self.container.reload()
                except DOCKER_ERRORS as e:
                    status, lost = -1, isinstance(e, TRANSPORT_ERRORS)
                    break
                if self.container.status not in ("running", "created", "restarting"):
                    status = int(self.container.attrs["State"].get("ExitCode", -1))
            except DOCKER_ERRORS:
                status = -1  # removed while waiting
        self._logs.join(timeout=LOG_DRAIN_S)
        finished, oom = time.time(), False
        try:
            self.container.reload()
            state = self.container.attrs["State"]
            status = int(state.get("ExitCode", status))
            oom = bool(state.get("OOMKilled", False))
            finished = parse_docker_time(state.get("FinishedAt")) or finished
        except TRANSPORT_ERRORS:
            lost = status != 0  # e.g. a daemon that stopped its containers on its way down
        except DOCKER_ERRORS:
            pass
        self._exit = NodeExit(exit_code=status, finished_at=finished, oom_killed=oom,
                              host=self.host, lost=lost)

    def poll(self) -> NodeExit | None:
        return self._exit

    def join(self, timeout: float) -> None:
        """Wait (bounded) for both threads, e.g. after down removed the container."""
        deadline = time.monotonic() + timeout
        for thread in (self._waiter, self._logs):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


def apply_link(plan: ClusterPlan, containers: Mapping[str, Any]) -> None:
    """Shape every container's eth0 as ``plan.network`` says: the common link, per-node links and
    links between pairs (tc, via docker exec)."""
    per_node = plan_tc_commands(plan)
    if not per_node:
        return

    def shape(item: tuple[str, Any]) -> None:
        name, container = item
        for argv in per_node.get(name, ()):
            try:
                exec_checked(container, argv, "link emulation", user="root")
            except BackendError as e:
                text = str(e)
                if "qdisc kind is unknown" in text:
                    kind = "netem" if "netem" in argv else ("htb" if "htb" in argv else "tbf")
                    raise BackendError(
                        f"link emulation: the host kernel has no {kind} qdisc ({text}); load it "
                        f"(modprobe sch_{kind}) or drop network.link."
                        + ("rate" if kind in ("tbf", "htb") else "delay/jitter/loss")
                    ) from None
                if "not permitted" in text:
                    raise BackendError(
                        f"{text}; the container lacks NET_ADMIN (plan.runtime.cap_add); "
                        "netorch grants it whenever network.link is set"
                    ) from None
                raise

    failures = concurrently(shape, list(containers.items()))
    if failures:
        raise failures[0][1]


def hand_over(sources: tuple[str, ...], user: str) -> None:
    """Give ``user`` (``uid:gid``) the root-owned host directories in ``sources``.

    Only when netorch runs as root and the containers do not: the directories netorch made for
    a node to write (:func:`netorch_mount_sources`) are then root's, and the unprivileged
    workload could not write its checkpoints. The directory itself changes owner, not its files.
    """
    if os.getuid() != 0 or user == ROOT_USER:
        return
    uid, gid = user_ids(user)
    for source in sources:
        try:
            if os.stat(source).st_uid == 0:
                os.chown(source, uid, gid)
        except FileNotFoundError:
            continue  # Docker refuses a missing bind source itself, naming it
        except OSError as e:
            raise BackendError(
                f"cannot hand {source} to the containers' user {user} ({e.strerror}); make it "
                "writable for that uid, or set docker.user to a user who can write it"
            ) from None


def start_containers(
    plan: ClusterPlan,
    network_id: str,
    client_for: Callable[[NodeSpec], Any],
    describe: Callable[[NodeSpec], str],
    user: str | None = None,
    management_id: str | None = None,
) -> dict[str, Any]:
    """Create every node's container concurrently through ``client_for(node)``, then start them.

    Returns node name -> container. ``describe(node)`` names a node in errors (with its host when
    there are several). ``user`` is the ``docker.user`` setting (None: the invoking user).
    ``management_id``: the management network every container joins as its second. A
    container whose start failed stays in "created": down() removes it by label.
    """
    created: dict[str, Any] = {}
    run_as = container_user(user)

    def create(node: NodeSpec) -> None:
        client = client_for(node)
        if is_local(client):
            hand_over(netorch_mount_sources(node), run_as)
        kwargs = container_create_kwargs(plan, node, network_id, str(client.api.api_version),
                                         user=run_as)
        created[node.name] = client.containers.create(**kwargs)
        if management_id is not None:
            # Connected after create, before start: the second interface (eth1, see kind.py).
            client.api.connect_container_to_network(
                created[node.name].id, management_id, ipv4_address=node.management_ip)

    failures = concurrently(create, list(plan.nodes))
    if failures:
        node, exc = failures[0]
        raise translate_error(exc, f"creating container {describe(node)}", plan) from exc

    def start(node: NodeSpec) -> None:
        container = created[node.name]
        container.start()
        # Start is synchronous, but reload until the daemon reports it past "created" so a
        # start that silently did nothing is caught here rather than as a hung run.
        retry(
            lambda: _expect_started(container),
            retry_on=lambda e: isinstance(e, _NotYetStarted),
            seconds=10,
            every=0.1,
        )

    failures = concurrently(start, list(plan.nodes))
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
        with docker_errors("the set-up phase", plan):
            after_start(plan, containers)

    def release(container: Any) -> None:
        exec_checked(container, ["touch", GATE_FILE], "opening the start gate", user="root")

    failures = concurrently(release, list(containers.values()))
    if failures:
        raise failures[0][1]


class _NotYetStarted(Exception):
    pass


def _expect_started(container: Any) -> None:
    container.reload()
    if container.status == "created":
        raise _NotYetStarted(container.name)
