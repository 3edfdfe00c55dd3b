"""Warm clusters: containers that stay up, torch imported, and run many jobs.

``netorch up --name NAME`` applies a plan whose nodes run ``python -P -m train.agent`` (see
``train/agent.py``) instead of a job, and leaves them idle. A later ``--on NAME`` run is planned
as usual, then handed to :class:`WarmDockerBackend`, which drops one job file per node into the
agents' spool folders and follows the agents' logs between the job's start and exit markers; the
agents fork fresh ranks (a fresh process group) in milliseconds. The cluster keeps its network,
addresses, MTU, link shaping, GPUs, image and mounts: a run that asks for other ones is refused
(:func:`fit_to_cluster`). An agent idle for its timeout exits; the cluster is then *expired* and
its leftovers are removed by the next ``up``, ``ls`` or ``--on``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.backends.base import LineSink, NodeExit, NodeHandle
from orchestrator.backends.docker.backend import remove_by_label
from orchestrator.backends.docker.client import concurrently
from orchestrator.backends.docker.errors import DOCKER_ERRORS, docker_errors
from orchestrator.backends.docker.nodes import LineSplitter, parse_docker_time
from orchestrator.errors import BackendError, ConfigError, PreflightError
from orchestrator.plan import (
    LABEL_MANAGED,
    LABEL_RANK,
    BackendName,
    ClusterPlan,
    MountSpec,
)
from orchestrator.settings import LinkShape, Settings
from orchestrator.workloads import WorkloadSpec

LABEL_CLUSTER = "io.netorch.cluster"
LABEL_SHAPE = "io.netorch.cluster-shape"
SPOOL_DIR = "/tmp/netorch-spool"
# A host folder of the cluster's, on every node: jobs that need a per-run host directory (the
# train job's checkpoints) get a subfolder of it, since a running container takes no new mount.
WARM_DIR = "/netorch/warm"
AGENT_READY = "netorch-agent: ready"
START_MARKER = "@@NETORCH_JOB_START@@"
EXIT_MARKER = "@@NETORCH_JOB_EXIT@@"
LAUNCHER = ("python", "-P", "-m", "train.launch")
READY_TIMEOUT_S = 120.0
# A log stream ends with these when the agent or the daemon goes away, or when we close it.
_FOLLOW_ERRORS: tuple[type[Exception], ...] = (*DOCKER_ERRORS, ValueError, AttributeError)


@dataclass(frozen=True)
class ClusterShape:
    """What a warm cluster was built with; every ``--on`` run gets exactly this.

    Each field is a setting (``section.key``) a run could ask for differently.
    """

    nodes: int
    subnet: str
    mtu: int
    interface: str
    link: tuple[tuple[str, str | None], ...]
    gpu_per_node: int
    image: str
    shm_size: str
    mounts: tuple[str, ...]
    workdir: str | None
    idle_timeout_s: float
    # network.link.nodes / .pairs: node (or "a:b") -> its shaping fields, as set at `up`.
    link_nodes: dict[str, dict[str, str | None]] = field(default_factory=dict)
    link_pairs: dict[str, dict[str, str | None]] = field(default_factory=dict)

    @staticmethod
    def of(settings: Settings, plan: ClusterPlan, idle_timeout_s: float) -> ClusterShape:
        link = settings.network.link
        return ClusterShape(
            nodes=settings.cluster.nodes, subnet=settings.network.subnet,
            mtu=settings.network.mtu, interface=settings.network.interface,
            link=tuple((k, getattr(link, k)) for k in LINK_FIELDS),
            gpu_per_node=settings.gpu.per_node, image=plan.runtime.image,
            shm_size=settings.docker.shm_size, mounts=_mount_keys(plan), workdir=plan.workdir,
            idle_timeout_s=idle_timeout_s,
            link_nodes=_link_fields(link.nodes), link_pairs=_link_fields(link.pairs),
        )

    def to_label(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @staticmethod
    def from_label(text: str) -> ClusterShape:
        data = json.loads(text)
        data["link"] = tuple(tuple(pair) for pair in data["link"])
        data["mounts"] = tuple(data["mounts"])
        return ClusterShape(**data)

    def link_text(self) -> str:
        """The shaping, for a person: ``rate 100mbit; worker-1: rate 50mbit`` (empty: none)."""
        parts = [_fields_text(dict(self.link)),
                 _links_text({**self.link_nodes, **self.link_pairs}, "; ")]
        return "; ".join(p for p in parts if p)


LINK_FIELDS = ("rate", "delay", "jitter", "loss")


def _fields_text(values: Mapping[str, str | None]) -> str:
    """``rate 50mbit delay 5ms``: the fields that are set."""
    return " ".join(f"{k} {v}" for k, v in values.items() if v is not None)


def _links_text(links: Mapping[str, Mapping[str, str | None]], sep: str) -> str:
    """``worker-1: rate 50mbit<sep>master:worker-1: delay 5ms``."""
    return sep.join(f"{name}: {_fields_text(values)}" for name, values in links.items())


def _link_fields(shapes: Mapping[str, LinkShape]) -> dict[str, dict[str, str | None]]:
    return {name: {k: getattr(shape, k) for k in LINK_FIELDS} for name, shape in
            sorted(shapes.items())}


def _mount_keys(plan: ClusterPlan) -> tuple[str, ...]:
    """The user's mounts of a plan (the cluster's own WARM_DIR left out), comparable."""
    return tuple(sorted({f"{m.kind}:{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}"
                         for node in plan.nodes for m in node.mounts if m.target != WARM_DIR}))


def agent_workload(name: str, idle_timeout_s: float, warm_dir: str,
                   base: WorkloadSpec | None = None) -> WorkloadSpec:
    """The workload of a warm cluster's nodes: the agent, idle until jobs arrive, with the host
    folder ``warm_dir`` at WARM_DIR. ``base`` (a user job's workload) lends its mounts, workdir,
    checkpoint folder and image."""
    target = ("python", "-P", "-m", "train.agent", SPOOL_DIR,
              "--idle-timeout", repr(float(idle_timeout_s)))
    agent = WorkloadSpec(kind="cluster", target=target, emits_result=False, launcher=False,
                         labels=((LABEL_CLUSTER, name),))
    own = MountSpec(warm_dir, WARM_DIR)
    if base is None:
        return dataclasses.replace(agent, mounts=(own,))
    return dataclasses.replace(
        agent, mounts=(*base.mounts, own), checkpoint=base.checkpoint, workdir=base.workdir,
        workdir_source=base.workdir_source, workdir_read_only=base.workdir_read_only,
        image=base.image,
    )


# --------------------------------------------------------------------------------------------
# Finding clusters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarmCluster:
    """A cluster found on the daemon: its containers by node rank and its shape."""

    name: str
    containers: Mapping[int, Any]
    shape: ClusterShape
    created: float | None

    @property
    def state(self) -> str:
        states = {c.status for c in self.containers.values()}
        if states == {"running"} and len(self.containers) == self.shape.nodes:
            return "up"
        return "expired" if "running" not in states else "broken"


def list_clusters(client: Any) -> list[WarmCluster]:
    """Every warm cluster on the daemon (by label), oldest first."""
    with docker_errors("listing warm clusters"):
        found = client.containers.list(all=True, filters={"label": [
            f"{LABEL_MANAGED}=true", LABEL_CLUSTER]}, ignore_removed=True)
    by_name: dict[str, dict[int, Any]] = {}
    shapes: dict[str, ClusterShape] = {}
    created: dict[str, float | None] = {}
    for c in found:
        name = c.labels[LABEL_CLUSTER]
        by_name.setdefault(name, {})[int(c.labels.get(LABEL_RANK, "0"))] = c
        if LABEL_SHAPE in c.labels:
            shapes[name] = ClusterShape.from_label(c.labels[LABEL_SHAPE])
            created[name] = parse_docker_time(c.attrs.get("Created"))
    clusters = [WarmCluster(n, by_name[n], shapes[n], created.get(n))
                for n in by_name if n in shapes]
    return sorted(clusters, key=lambda w: w.created or 0.0)


def remove_expired(client: Any, clusters: list[WarmCluster] | None = None) -> list[str]:
    """Remove what is left of clusters whose agents all exited (idle timeout); ``clusters``: as
    :func:`list_clusters` just returned them (listed again when None). Returns the names."""
    gone = []
    for cluster in list_clusters(client) if clusters is None else clusters:
        if cluster.state == "expired":
            remove_by_label(client, cluster.name)
            gone.append(cluster.name)
    return gone


def find_cluster(client: Any, name: str) -> WarmCluster:
    """The running cluster called ``name``; PreflightError with the fix otherwise."""
    for cluster in list_clusters(client):
        if cluster.name != name:
            continue
        if cluster.state == "up":
            return cluster
        if cluster.state == "expired":
            remove_by_label(client, name)
            raise PreflightError(
                f"--on {name}: the cluster expired (its nodes were idle for "
                f"{cluster.shape.idle_timeout_s:.0f} s) and was removed; `netorch up --name "
                f"{name}` again")
        raise PreflightError(
            f"--on {name}: {sum(c.status == 'running' for c in cluster.containers.values())} of "
            f"{cluster.shape.nodes} nodes run; remove it with `netorch down --run {name}` and "
            "`netorch up` again")
    raise PreflightError(f"--on {name}: no warm cluster of that name; `netorch up --name {name}` "
                         "first (netorch ls lists them)")


def image_drift(client: Any, cluster: WarmCluster) -> str | None:
    """A warning when the cluster's image tag now names another image than its nodes run (the
    image was rebuilt since ``netorch up``): a run ``--on`` it still runs the code the nodes
    started with. None when they agree, or when the tag cannot be looked up."""
    try:
        current = str(client.images.get(cluster.shape.image).id)
    except DOCKER_ERRORS:
        return None
    running = {str(c.attrs.get("Image", "")) for c in cluster.containers.values()}
    if not running or running == {current}:
        return None
    was = ", ".join(sorted(r.removeprefix("sha256:")[:12] for r in running))
    return (f"WARNING: cluster {cluster.name} runs {cluster.shape.image} as it was at `netorch up` "
            f"({was}); the tag now names {current.removeprefix('sha256:')[:12]}. This run uses "
            f"the cluster's image and the code in it; `netorch down --run {cluster.name}` and "
            "`netorch up` again to run the new one")


def fit_to_cluster(settings: Settings, shape: ClusterShape, name: str,
                   asked: Collection[str] | None = None) -> Settings:
    """``settings`` with the cluster's shape; ConfigError when a run explicitly asks otherwise.

    ``asked``: the ``section.key`` settings the run named itself (flags, ``--set``,
    ``NETORCH_*``; the CLI passes them); those are refused when they differ from the cluster's,
    whatever their value, and everything else silently takes the cluster's value. Without
    ``asked``, every setting any source set (the config file too) counts as asked.
    """

    def named(section: Any, dotted: str) -> bool:
        if asked is None:
            return dotted.split(".", 1)[1] in section.model_fields_set
        return dotted in asked

    c, net, gpu, dk = settings.cluster, settings.network, settings.gpu, settings.docker
    wanted = {
        "cluster.nodes": (c, "nodes", shape.nodes),
        "cluster.image": (c, "image", shape.image),
        "network.subnet": (net, "subnet", shape.subnet),
        "network.mtu": (net, "mtu", shape.mtu),
        "network.interface": (net, "interface", shape.interface),
        "gpu.per_node": (gpu, "per_node", shape.gpu_per_node),
        "docker.shm_size": (dk, "shm_size", shape.shm_size),
    }
    clashes = [f"{key}={getattr(section, field)!r} (the cluster has {value!r})"
               for key, (section, field, value) in wanted.items()
               if named(section, key) and getattr(section, field) != value]
    def link_named(*fields: str) -> bool:
        """Whether the run names any of these ``network.link`` fields (or the whole section)."""
        if asked is None:
            return bool(net.link.model_fields_set & set(fields))
        return any(k == "network.link" or k.split(".")[2:3] == [f]
                   for k in asked if k.startswith("network.link") for f in fields)

    link = tuple((k, getattr(net.link, k)) for k in LINK_FIELDS)
    if link_named(*LINK_FIELDS) and link != shape.link:
        clashes.append(f"network.link={dict(link)} (the cluster has {dict(shape.link)})")
    for key, mine, theirs in (("nodes", _link_fields(net.link.nodes), shape.link_nodes),
                              ("pairs", _link_fields(net.link.pairs), shape.link_pairs)):
        if link_named(key) and mine != theirs:
            want, have = _links_text(mine, ", "), _links_text(theirs, ", ")
            clashes.append(f"network.link.{key}={{{want}}} (the cluster has {{{have}}}; "
                           "per-node and per-pair links are set when a cluster starts)")
    if net.management.enabled:
        clashes.append("network.management (a warm cluster has the fabric only)")
    if clashes:
        raise ConfigError(
            f"--on {name}: this run asks for {', '.join(clashes)}; a warm cluster keeps what it "
            f"was built with: drop those settings, or `netorch up` another cluster with them")
    return settings.model_copy(update={
        "cluster": c.model_copy(update={"nodes": shape.nodes, "image": shape.image}),
        "network": net.model_copy(update={
            "subnet": shape.subnet, "mtu": shape.mtu, "interface": shape.interface,
            "link": net.link.model_copy(update={
                **dict(shape.link),
                "nodes": {k: LinkShape(**v) for k, v in shape.link_nodes.items()},
                "pairs": {k: LinkShape(**v) for k, v in shape.link_pairs.items()}})}),
        "gpu": gpu.model_copy(update={"per_node": shape.gpu_per_node}),
        "docker": dk.model_copy(update={"shm_size": shape.shm_size}),
    })


def check_job_fits(plan: ClusterPlan, cluster: WarmCluster) -> None:
    """Refuse a job whose image, mounts or launcher the cluster's running nodes cannot give."""
    shape = cluster.shape
    if plan.runtime.image != shape.image:
        raise ConfigError(f"--on {cluster.name}: the job wants image {plan.runtime.image} but the "
                          f"cluster runs {shape.image}; `netorch up` a cluster with --image")
    asks = bool(_mount_keys(plan)) or plan.workdir is not None
    if asks and (_mount_keys(plan) != shape.mounts or plan.workdir != shape.workdir):
        raise ConfigError(
            f"--on {cluster.name}: the job's mounts/workdir ({list(_mount_keys(plan)) or 'none'}, "
            f"{plan.workdir or 'no workdir'}) differ from the cluster's ({list(shape.mounts) or 'none'}, "
            f"{shape.workdir or 'no workdir'}); give `netorch up` the same --workdir/--mount/"
            "--checkpoint-dir flags")
    if plan.master.command[:len(LAUNCHER)] != LAUNCHER:
        raise ConfigError(f"--on {cluster.name}: warm clusters fork ranks with netorch's launcher; "
                          "drop cluster.launcher=torchrun")


# --------------------------------------------------------------------------------------------
# Running a job on a warm cluster
# --------------------------------------------------------------------------------------------


def _job_tar(name: str, text: str) -> bytes:
    data = text.encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _marker_job(line: str, marker: str) -> str | None:
    try:
        value = json.loads(line[len(marker):]).get("job")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


class WarmNode:
    """One node's share of a job: its agent's log lines between the job's markers, and its code."""

    def __init__(self, name: str, container: Any, job: str, sink: LineSink, since: float) -> None:
        self.name = name
        self.container = container
        self.job = job
        self._sink = sink
        self._exit: NodeExit | None = None
        self._stream: Any = None
        self._thread = threading.Thread(target=self._follow, args=(since,), daemon=True,
                                        name=f"warm-{name}")
        self._thread.start()

    def _follow(self, since: float) -> None:
        splitter = LineSplitter()
        inside = False
        try:
            self._stream = self.container.logs(stream=True, follow=True, since=since)
            for chunk in self._stream:
                for line in splitter.feed(chunk):
                    if line.startswith(EXIT_MARKER) and _marker_job(line, EXIT_MARKER) == self.job:
                        code = json.loads(line[len(EXIT_MARKER):])["code"]
                        self._exit = NodeExit(int(code), time.time())
                        self._stream.close()
                        return
                    if not inside:
                        # Lines before our start marker belong to the agent or an earlier job,
                        # except the agent's word on why it refused this job.
                        inside = (line.startswith(START_MARKER)
                                  and _marker_job(line, START_MARKER) == self.job)
                        if line.startswith(f"netorch-agent: job {self.job}:"):
                            self._sink(self.name, line)
                        continue
                    self._sink(self.name, line)
        except _FOLLOW_ERRORS:
            pass
        if self._exit is None:  # the stream ended: the agent (the container) is gone
            code = -1
            try:
                self.container.reload()
                code = int(self.container.attrs["State"].get("ExitCode", -1)) or -1
            except DOCKER_ERRORS:
                pass
            self._exit = NodeExit(code, time.time())

    def poll(self) -> NodeExit | None:
        return self._exit

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class WarmDockerBackend:
    """Runs plans on a warm cluster's agents; creates and removes nothing.

    ``stop`` cancels the job on every node (the agents stop its ranks); ``down`` waits until the
    job has ended everywhere, so the next run starts on idle nodes.
    """

    name: BackendName = "docker"

    def __init__(self, client: Any, cluster: WarmCluster) -> None:
        self.client = client
        self.cluster = cluster
        self._nodes: list[WarmNode] = []

    def preflight(self, plan: ClusterPlan) -> None:
        check_job_fits(plan, self.cluster)
        for rank, container in self.cluster.containers.items():
            with docker_errors(f"checking node {container.name}", plan):
                container.reload()
            if container.status != "running":
                raise PreflightError(f"--on {self.cluster.name}: node {container.name} is "
                                     f"{container.status}; `netorch down --run "
                                     f"{self.cluster.name}` and `netorch up` again")

    def up(self, plan: ClusterPlan, sink: LineSink) -> list[NodeHandle]:
        since = time.time() - 1.0
        jobs = []
        for node in plan.nodes:
            container = self.cluster.containers[node.node_rank]
            # A job that names no workdir runs in the cluster's (its mounts are the cluster's).
            spec = {"argv": list(node.command[len(LAUNCHER):]), "env": node.env_dict,
                    "cwd": plan.workdir or self.cluster.shape.workdir}
            jobs.append((node, container, _job_tar(f"{plan.run_id}.job", json.dumps(spec))))

        def submit(item: tuple[Any, Any, bytes]) -> None:
            node, container, tar = item
            if not container.put_archive(SPOOL_DIR, tar):
                raise BackendError(f"could not hand the job to node {container.name}")

        self._nodes = [WarmNode(node.name, container, plan.run_id, sink, since)
                       for node, container, _ in jobs]
        failures = concurrently(submit, jobs)
        if failures:
            self.stop(plan, 0)
            raise BackendError(f"submitting run {plan.run_id} to cluster {self.cluster.name}: "
                               f"{failures[0][1]}")
        return list(self._nodes)

    def _cancel(self, plan: ClusterPlan) -> None:
        tar = _job_tar(f"{plan.run_id}.cancel", "")

        def cancel(node: WarmNode) -> None:
            if node.poll() is None:
                node.container.put_archive(SPOOL_DIR, tar)

        concurrently(cancel, list(self._nodes))

    def stop(self, plan: ClusterPlan, grace_s: float) -> None:
        self._cancel(plan)

    def down(self, plan: ClusterPlan) -> None:
        if any(n.poll() is None for n in self._nodes):
            self._cancel(plan)
        deadline = time.monotonic() + 10.0  # the agent's grace (3 s) and the markers' way back
        for node in self._nodes:
            node.join(max(0.0, deadline - time.monotonic()))
        self._nodes = []


def start_cluster(client: Any, settings: Settings, name: str, idle_timeout_s: float,
                  warm_dir: str, base: WorkloadSpec | None = None,
                  on_start: Callable[[ClusterPlan], None] | None = None) -> WarmCluster:
    """Create a warm cluster's network and nodes from ``settings`` and wait for every agent.

    On any failure (or Ctrl-C) what was created is removed again. ``base``: a user job's
    workload whose mounts, workdir and image the cluster takes.
    """
    from pathlib import Path

    from orchestrator.backends.docker.backend import DockerBackend
    from orchestrator.plan import build_plan

    Path(warm_dir).mkdir(parents=True, exist_ok=True)
    plan = build_plan(settings, name, "docker",
                      agent_workload(name, idle_timeout_s, warm_dir, base))
    # Every node carries the cluster's shape, so a later `--on` run can be checked against it.
    shape = (LABEL_SHAPE, ClusterShape.of(settings, plan, idle_timeout_s).to_label())
    plan = dataclasses.replace(plan, nodes=tuple(
        dataclasses.replace(node, labels=(*node.labels, shape)) for node in plan.nodes))
    if any(c.name == name for c in list_clusters(client)):
        raise ConfigError(f"--name {name}: a warm cluster of that name exists; use it with "
                          f"--on {name}, or remove it with `netorch down --run {name}`")
    backend = DockerBackend(client, user=settings.docker.user)
    backend.preflight(plan)
    if on_start is not None:
        on_start(plan)
    try:
        backend.up(plan, lambda node, line: None)
        with docker_errors(f"listing the nodes of cluster {name}", plan):
            started = {c.name: c for c in client.containers.list(
                filters={"label": f"{LABEL_CLUSTER}={name}"}, ignore_removed=True)}
        wait_ready(started)
    except BaseException:
        backend.down(plan)
        raise
    (found,) = [c for c in list_clusters(client) if c.name == name]
    return found


def containers_by_node(plan: ClusterPlan, cluster: WarmCluster) -> dict[str, Any]:
    """A run's node names -> the cluster containers that run them (by node rank)."""
    return {node.name: cluster.containers[node.node_rank] for node in plan.nodes}


def wait_ready(containers: Mapping[str, Any], timeout_s: float = READY_TIMEOUT_S) -> None:
    """Wait until every agent printed its ready line; BackendError naming a node that died."""
    deadline = time.monotonic() + timeout_s
    pending = dict(containers)
    while pending:
        for name, container in list(pending.items()):
            with docker_errors(f"waiting for node {name}"):
                logs = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
                container.reload()
            if AGENT_READY in logs:
                del pending[name]
            elif container.status != "running":
                tail = "\n".join(f"    {line}" for line in logs.splitlines()[-10:])
                raise BackendError(f"node {name} exited before its agent was ready:\n{tail}")
        if pending and time.monotonic() > deadline:
            raise BackendError(f"node(s) {', '.join(pending)} not ready within {timeout_s:.0f} s")
        if pending:
            time.sleep(0.1)


__all__ = [
    "LABEL_CLUSTER", "ClusterShape", "WarmCluster", "WarmDockerBackend",
    "agent_workload", "check_job_fits", "find_cluster", "fit_to_cluster", "list_clusters",
    "remove_expired", "wait_ready",
]
