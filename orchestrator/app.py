"""Use cases: what each ``netorch`` command does, as functions that return typed results.

The CLI (``orchestrator.cli``) parses flags into a :class:`SettingsRequest`, calls one function
here, and only renders what comes back; benchmarks and tests call the same functions. Every
function either returns a result or raises a :class:`~orchestrator.errors.NetorchError`; reports
are written exactly once, after everything that adds to them (a Pushgateway warning included).

Layers (each imports only those below it)::

    cli.py                      flags -> SettingsRequest -> app -> rendered output, exit code
    app.py                      use cases: run_bench, run_train, run_job, sweep, doctor, down, render
    session.py, report.py, metrics.py, sweep.py, doctor.py, render/
    plan.py, backends/ (registry -> kinds -> executors)
    settings.py, placement.py, errors.py
    train/                      runs inside the nodes; imports nothing of orchestrator/
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.backends import Backend, make_backend, resolve_backend
from orchestrator.backends.registry import backend_kind
from orchestrator.errors import ConfigError, OutputError, RankFailedError
from orchestrator.plots import preload
from orchestrator.linerate import LineRate, LineRateOptions
from orchestrator.linerate import annotate as annotate_line_rate
from orchestrator.plan import ClusterPlan, WorkloadSpec, build_plan, new_run_id, with_start_gate
from orchestrator.session import Echo, run_session, run_with_restarts
from orchestrator.settings import Settings, load_settings
from orchestrator.versions import versions, versions_soon
from orchestrator.settings_overrides import (
    overrides_from_pairs,
    parse_set_option,
    refuse_flag_set_conflicts,
)


@dataclass(frozen=True)
class SettingsRequest:
    """How a command asked for its settings: a config file, flag values by settings key, and
    ``--set KEY=VALUE`` items. Flags win over ``--set`` items, which win over the environment
    and the file. :meth:`load` validates; ``extra`` (e.g. one sweep variant) wins over all."""

    config: Path | None = None
    flags: Mapping[str, Any] = field(default_factory=dict)
    sets: tuple[str, ...] = ()

    def load(self, extra: Mapping[str, Any] | None = None) -> Settings:
        pairs: dict[str, Any] = dict(parse_set_option(item) for item in self.sets)
        flags = {k: v for k, v in self.flags.items() if v is not None}
        refuse_flag_set_conflicts(flags, pairs)  # `--mtu 1500 --set network.mtu=9000`
        pairs.update(flags)
        pairs.update(extra or {})
        return load_settings(self.config, overrides_from_pairs(pairs))

    def asked_keys(self, environ: Mapping[str, str] | None = None) -> frozenset[str]:
        """The settings this request names itself (flags, ``--set``, ``NETORCH_*`` variables),
        as ``section.key``; the config file's values do not count: a warm cluster's shape
        overrides them silently, while these are refused when they differ from it."""
        import os

        keys = {k for k, v in self.flags.items() if v is not None}
        keys |= {parse_set_option(item)[0] for item in self.sets}
        env = os.environ if environ is None else environ
        keys |= {name[len("NETORCH_"):].lower().replace("__", ".") for name in env
                 if name.startswith("NETORCH_")}
        return frozenset(keys)


@dataclass(frozen=True)
class Hooks:
    """What the caller wants to see while a run goes on (all optional, called from threads)."""

    echo: Echo | None = None
    on_backend: Callable[[str, str], None] | None = None
    on_start: Callable[[ClusterPlan], None] | None = None
    on_tick: Callable[[int, int], None] | None = None
    on_restart: Callable[[int, RankFailedError], None] | None = None
    on_notice: Callable[[str], None] | None = None


@dataclass(frozen=True)
class RunResult:
    """A finished bench, train or user run: its plan, its report and where the files are."""

    plan: ClusterPlan
    report: dict[str, Any]
    paths: dict[str, Path]
    # ``netorch run --tensorboard``: the server, still serving (the caller stops it).
    tensorboard: Any = None

    @property
    def ok(self) -> bool:
        return bool(self.report.get("ok", False))


def _chosen_backend(settings: Settings, hooks: Hooks) -> str:
    name, why = resolve_backend(settings)
    if hooks.on_backend is not None:
        hooks.on_backend(name, why)
    return name


def plan_only(settings: Settings, run_id: str | None = None,
              workload: str | WorkloadSpec = "bench") -> ClusterPlan:
    """``netorch plan``: the plan the settings give, on the backend ``auto`` would pick."""
    name = settings.backend if settings.backend != "auto" else resolve_backend(settings)[0]
    return build_plan(settings, run_id or new_run_id(), name, workload)


def _notice(hooks: Hooks, text: str) -> None:
    if hooks.on_notice is not None:
        hooks.on_notice(text)


def _publish(report: dict[str, Any], out_dir: Path, settings: Settings, hooks: Hooks) -> Path:
    """metrics.prom; a Pushgateway push when configured (a failure is a report warning)."""
    from orchestrator.metrics import TEXTFILE, push_report, redact_url, write_textfile
    from orchestrator.report import writing

    url = settings.metrics.pushgateway_url
    if url:
        problem = push_report(report, url, settings.cluster.name, settings.metrics.push_timeout_s)
        if problem:
            report.setdefault("warnings", []).append(problem)
        else:
            _notice(hooks, f"pushed {report.get('kind', 'bench')} results to {redact_url(url)}")
    with writing(out_dir / TEXTFILE):
        return write_textfile(report, out_dir)


def _executor(settings: Settings, hooks: Hooks, on: str | None,
              asked: Collection[str] | None = None) -> tuple[str, Settings, Backend | None]:
    """The backend name, the settings the plan is built from, and a ready executor for runs on
    a warm cluster (``--on NAME``: the cluster's shape wins, see ``fit_to_cluster``)."""
    if on is None:
        return _chosen_backend(settings, hooks), settings, None
    from orchestrator.backends.docker import connect_settings
    from orchestrator.backends.docker.warm import (
        WarmDockerBackend,
        find_cluster,
        fit_to_cluster,
        image_drift,
    )

    if settings.backend == "process":
        raise ConfigError(f"--on {on}: warm clusters run on the docker backend; drop "
                          "--backend process")
    single_host(settings, "up/--on")
    client = connect_settings(settings)
    try:
        cluster = find_cluster(client, on)
    except BaseException:
        client.close()
        raise
    if hooks.on_backend is not None:
        hooks.on_backend("docker", f"--on {on}: warm cluster of {cluster.shape.nodes} nodes")
    if (drift := image_drift(client, cluster)) is not None:
        _notice(hooks, drift)
    return "docker", fit_to_cluster(settings, cluster.shape, on, asked), WarmDockerBackend(
        client, cluster)


def run_bench(settings: Settings, hooks: Hooks = Hooks(), on: str | None = None,
              asked: Collection[str] | None = None,
              line_rate: LineRateOptions | None = None) -> RunResult:
    """``netorch bench``: plan, start nodes, wait (fail fast), collect, report, tear down.

    With ``on``, the run forks fresh ranks on a warm cluster's nodes instead (``netorch up``).
    With ``line_rate``, the TCP line rate between ring neighbours is measured first, on idle
    nodes (see orchestrator.linerate), and the report gives busbw as a share of it."""
    from orchestrator.report import build_report, prefetch_hook, write_report

    name, settings, warm = _executor(settings, hooks, on, asked)
    plan = build_plan(settings, new_run_id(), name, "bench")
    backend = warm or make_backend(name, settings)
    line = _line_rate_setup(backend, plan, line_rate, hooks) if line_rate else None
    if line is not None and warm is None and name == "docker":
        plan = with_start_gate(plan)  # the hook measures between up and the workload's start
    out_dir = settings.output / plan.run_id
    preload()  # the plot's imports, while the nodes work
    found = versions_soon(settings, name)
    if hooks.on_start is not None:
        hooks.on_start(plan)
    outcome = run_session(backend, plan, out_dir, timeout_s=settings.cluster.job_timeout_s,
                          echo=hooks.echo, on_tick=hooks.on_tick, on_result=prefetch_hook(plan))
    report = build_report(plan, outcome.result, outcome.elapsed_s)
    report["versions"] = found(report.get("torch_version"))
    if line is not None:
        annotate_line_rate(report, line)
    prom = _publish(report, out_dir, settings, hooks)
    paths = write_report(report, out_dir)
    paths["prom"] = prom
    return RunResult(plan, report, paths)


def _line_rate_setup(backend: Backend, plan: ClusterPlan, options: LineRateOptions,
                     hooks: Hooks) -> LineRate:
    """Arrange for the line rate to be measured before the benchmark: over loopback now
    (process backend), in the set-up phase of a gated plan (docker), or on a warm cluster's idle
    nodes now (``--on``). ConfigError for a backend where none of these applies."""
    from orchestrator.backends.docker import DockerBackend
    from orchestrator.backends.docker.warm import WarmDockerBackend, containers_by_node
    from orchestrator.linerate import container_hook, measure_loopback

    _notice(hooks, "line rate: measuring TCP between ring neighbours before the benchmark")
    if backend.name == "process":
        return measure_loopback(options)
    line = LineRate()
    if isinstance(backend, WarmDockerBackend):
        container_hook(options, line)(plan, containers_by_node(plan, backend.cluster))
        return line
    if type(backend) is DockerBackend:
        backend.after_start = container_hook(options, line)
        return line
    raise ConfigError(f"--line-rate: the {backend.name} backend of this run (several hosts) has "
                      "no set-up phase to measure in; run on one host or drop --line-rate")


def run_train(settings: Settings, hooks: Hooks = Hooks(), on: str | None = None,
              asked: Collection[str] | None = None) -> RunResult:
    """``netorch train``: the DDP job with checkpoints, gang restarts, metrics and a report.

    On a warm cluster (``on``) the checkpoints live in the cluster's folder
    (``OUTPUT/warm/NAME/<run_id>/checkpoints``): a running container takes no new mount."""
    from orchestrator.metrics import write_targets
    from orchestrator.report import build_train_report, write_train_report, writing
    from orchestrator.workloads import train_workload

    name, settings, warm = _executor(settings, hooks, on, asked)
    run_id = new_run_id()
    work = train_workload(settings, run_id)
    out_dir = settings.output / run_id
    with writing(out_dir / "checkpoints"):
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    if on is not None:
        from orchestrator.backends.docker.warm import WARM_DIR

        from orchestrator.backends.docker.kwargs import container_user
        from orchestrator.backends.docker.nodes import hand_over

        host = warm_dir(settings, on) / run_id / "checkpoints"
        host.mkdir(parents=True, exist_ok=True)
        # The agents already run as the container user: the new folder must be theirs.
        hand_over((str(host.parent), str(host)), container_user(settings.docker.user))
        work = dataclasses.replace(work, checkpoint=None, env=(
            ("NETORCH_CHECKPOINT_DIR", f"{WARM_DIR}/{run_id}/checkpoints"),))
    plan = build_plan(settings, run_id, name, work)
    backend = warm or make_backend(name, settings)
    with writing(out_dir):
        targets = write_targets(plan, out_dir)
    if targets is not None:
        _notice(hooks, f"metrics: Prometheus file_sd targets in {targets}")
    if hooks.on_start is not None:
        hooks.on_start(plan)
    outcome = run_with_restarts(
        backend, plan, out_dir, timeout_s=settings.cluster.job_timeout_s,
        max_restarts=settings.train.max_restarts, echo=hooks.echo, on_restart=hooks.on_restart)
    report = build_train_report(plan, outcome.result, outcome.elapsed_s, outcome.restarts,
                                outcome.failures)
    report["versions"] = versions(settings, name, report.get("torch_version"))
    prom = _publish(report, out_dir, settings, hooks)
    paths = write_train_report(report, out_dir)
    paths["prom"] = prom
    return RunResult(plan, report, paths)


@dataclass(frozen=True)
class FabricResult:
    """A finished ``netorch fabric``: its plan, the analysed matrix (``fabric.json``), files."""

    plan: ClusterPlan
    report: dict[str, Any]
    paths: dict[str, Path]

    @property
    def suspects(self) -> list[Any]:
        """Suspect node names and [node, node] links (empty: healthy)."""
        return list(self.report["suspects"])


def run_fabric(settings: Settings, hooks: Hooks = Hooks(), on: str | None = None,
               asked: Collection[str] | None = None) -> FabricResult:
    """``netorch fabric``: bandwidth and latency between every pair of nodes (one rank per
    node, N/2 disjoint pairs at a time), the matrix, its outliers and the verdict."""
    from orchestrator.fabric import analyse, write_fabric


    def check(settings: Settings, where: str = "") -> None:
        if settings.cluster.nodes < 2:
            raise ConfigError(f"cluster.nodes: {settings.cluster.nodes} node(s){where} make no "
                              "pair; netorch fabric needs 2 or more (3 or more to name a suspect)")
        if settings.cluster.procs_per_node != 1:
            raise ConfigError(f"cluster.procs_per_node: {settings.cluster.procs_per_node}; "
                              "netorch fabric measures nodes, one rank each: drop "
                              "--procs-per-node")

    check(settings)
    name, settings, warm = _executor(settings, hooks, on, asked)
    check(settings, f" in cluster {on}" if on else "")  # a warm cluster brings its own count
    plan = build_plan(settings, new_run_id(), name, "fabric")
    backend = warm or make_backend(name, settings)
    out_dir = settings.output / plan.run_id
    preload()
    if hooks.on_start is not None:
        hooks.on_start(plan)
    outcome = run_session(backend, plan, out_dir, timeout_s=settings.cluster.job_timeout_s,
                          echo=hooks.echo, on_tick=hooks.on_tick)
    report = analyse(plan, outcome.result, settings.fabric.slow_fraction, settings.fabric.mad_k)
    return FabricResult(plan, report, write_fabric(report, out_dir))


def down(settings: Settings, run_id: str | None) -> list[str]:
    """``netorch down``: remove what netorch left of ``run_id`` (None: of every run) on the
    configured backend (``auto``: docker), only what carries netorch's labels."""
    name = "docker" if settings.backend == "auto" else settings.backend
    return backend_kind(name).remove(settings, run_id)


def single_host(settings: Settings, command: str) -> None:
    """Refuse commands that run on one Docker host when several are configured."""
    if len(settings.hosts) > 1:
        raise ConfigError(
            f"netorch {command} runs on one Docker host; {len(settings.hosts)} [[hosts]] are "
            "configured; use `netorch bench` / `netorch train` across hosts, or a config with one host"
        )


@dataclass(frozen=True)
class SweepResult:
    """A finished sweep: its summary (runs, aggregated rows, recommendations) and files."""

    summary: dict[str, Any]
    paths: dict[str, Path]

    @property
    def problems(self) -> list[str]:
        """Every run's verification problem, ``run_id: text`` (exit 4 when any)."""
        return [f"{r['run_id']}: {p}" for r in self.summary["runs"] for p in r["problems"]]


def sweep(
    request: SettingsRequest,
    axes: list[Any],
    repeats: int,
    tcp_seconds: float,
    tcp_streams: int,
    tcp_pairs: int,
    hooks: Hooks = Hooks(),
    on_point: Callable[[Any, str, int], None] | None = None,
    fresh: bool = False,
) -> SweepResult:
    """``netorch sweep``: every variant of ``axes`` (:class:`orchestrator.sweep.Axis`, their
    Cartesian product), validated up front like ``bench``, run ``repeats`` times interleaved on
    the docker backend; summary, CSV/JSON, plot, verdicts."""
    from orchestrator.backends.docker import connect_settings
    from orchestrator.sweep import SweepOptions, run_sweep, variants_of, write_sweep

    base = request.load({"backend": "docker"})
    if len(base.hosts) > 1 and not fresh:
        fresh = True  # warm clusters live on one daemon; every run starts its own containers
        _notice(hooks, f"sweep across {len(base.hosts)} hosts: every run starts fresh containers")
    keys = [a.key for a in axes]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ConfigError(f"sweep: {', '.join(twice)} is varied twice (--mtu/--link-rate are "
                          "--vary network.mtu / network.link.rate); give each key once")
    combos = variants_of(axes)
    subnets: list[str | None] = [None] * len(combos)
    if not fresh:
        subnets = _variant_subnets(base, len(subnets))
    # Every variant is validated before the first container exists.
    variants: dict[Any, Settings] = {}
    for variant, subnet in zip(combos, subnets):
        extra: dict[str, Any] = {"backend": "docker", **dict(variant)}
        if subnet is not None:
            extra["network.subnet"] = subnet
        variants[variant] = request.load(extra)
    options = SweepOptions(tuple(axes), repeats, tcp_seconds, tcp_streams, tcp_pairs)
    sweep_id = new_run_id()
    out_dir = base.output / f"sweep-{sweep_id}"
    total = len(combos) * repeats

    def point_started(point: Any, run_id: str) -> None:
        if on_point is not None:
            on_point(point, run_id, total)

    if len(base.hosts) > 1:
        from orchestrator.backends.docker import connect_host

        clients: dict[str, Any] = {}
        try:
            for h in base.hosts:
                clients[h.name] = connect_host(h)
            summary = run_sweep(variants, options, next(iter(clients.values())), sweep_id,
                                out_dir, hooks.echo, point_started, fresh=True, hosts=clients)
        finally:
            for c in clients.values():
                c.close()
        return SweepResult(summary, write_sweep(summary, out_dir))
    with connect_settings(base) as client:
        summary = run_sweep(variants, options, client, sweep_id, out_dir, hooks.echo,
                            point_started, fresh=fresh)
    summary["versions"] = versions(base, "docker", _node_torch(out_dir, summary))
    return SweepResult(summary, write_sweep(summary, out_dir))


def _node_torch(out_dir: Path, summary: dict[str, Any]) -> str | None:
    """The torch version the sweep's ranks ran (from its first run's report)."""
    for run in summary.get("runs", []):
        try:
            return str(json.loads((out_dir / run["run_id"] / "report.json").read_text())
                       ["torch_version"])
        except (OSError, ValueError, KeyError):
            continue
    return None


def _variant_subnets(base: Settings, count: int) -> list[str | None]:
    """One subnet per sweep variant, carved from ``network.subnet``: the variants' warm
    clusters are up at the same time (runs interleave), and two networks cannot share one."""
    import ipaddress

    net = base.network
    if count == 1:
        return [None]
    if net.gateway is not None or net.ip_range is not None:
        raise ConfigError(
            "sweep: each variant's warm cluster needs its own part of network.subnet, which "
            "network.gateway / network.ip_range pin; drop them or pass --fresh")
    whole = ipaddress.IPv4Network(net.subnet)
    bits = (count - 1).bit_length()
    parts = list(whole.subnets(prefixlen_diff=bits)) if whole.prefixlen + bits <= 29 else []
    if not parts or parts[0].num_addresses - 3 < base.cluster.nodes:
        need = 32 - max(3, (base.cluster.nodes + 3 - 1).bit_length()) - bits
        raise ConfigError(
            f"sweep: {count} variants need {count} subnets of {base.cluster.nodes} nodes each, "
            f"and network.subnet {net.subnet} is too small to split; use a /{need} or larger, "
            "or pass --fresh")
    return [str(p) for p in parts[:count]]


@dataclass(frozen=True)
class DoctorResult:
    """The doctor's checks and what they were run on (``plan <id>`` or ``run <id>``)."""

    scope: str
    checks: list[Any]

    @property
    def failed(self) -> list[Any]:
        return [c for c in self.checks if c.status == "fail"]


def doctor(settings: Settings, run_id: str | None, hooks: Hooks = Hooks()) -> DoctorResult:
    """``netorch doctor``: diagnose a running run, or bring the plan up sleeping and diagnose it."""
    from orchestrator.backends.docker import connect_settings
    from orchestrator.doctor import doctor_plan, doctor_run

    if len(settings.hosts) > 1:
        return _doctor_hosts(settings, run_id, hooks)
    with connect_settings(settings) as client:
        if run_id is not None:
            return DoctorResult(f"run {run_id}", doctor_run(client, run_id))
        plan = build_plan(settings, new_run_id(), "docker")
        _notice(hooks, f"doctor: bringing up {plan.nnodes} sleeping containers of plan "
                       f"{plan.run_id} on {plan.network.subnet}")
        return DoctorResult(f"plan {plan.run_id}", doctor_plan(plan, client))


def _doctor_hosts(settings: Settings, run_id: str | None, hooks: Hooks) -> DoctorResult:
    """``netorch doctor`` across [[hosts]]: the nodes on every host, probed over the overlay."""
    from orchestrator.backends.docker import connect_host
    from orchestrator.doctor import doctor_plan, doctor_run

    clients: dict[str, Any] = {}
    try:
        for h in settings.hosts:
            clients[h.name] = connect_host(h)
        manager, *others = clients.values()
        if run_id is not None:
            return DoctorResult(f"run {run_id}", doctor_run(manager, run_id, others))
        plan = build_plan(settings, new_run_id(), "docker")
        _notice(hooks, f"doctor: bringing up {plan.nnodes} sleeping containers of plan "
                       f"{plan.run_id} on {len(clients)} hosts, overlay {plan.network.subnet}")
        return DoctorResult(f"plan {plan.run_id}", doctor_plan(plan, manager, hosts=clients))
    finally:
        for c in clients.values():
            c.close()


def render_workload(settings: Settings, base_dir: Path | None = None) -> str | WorkloadSpec:
    """What a render writes: the user's job when ``run.command`` is set (``render ... --
    COMMAND``), else the benchmark. Containers see mounts, so the docker fabric's rules apply."""
    if not settings.run.command:
        return "bench"
    from orchestrator.userjob import run_workload

    return run_workload(settings, base_dir or Path.cwd(), in_node_paths=True)


def render_compose(settings: Settings, out_dir: Path, run_id: str | None = None,
                   workload: str | WorkloadSpec = "bench") -> Path:
    """``netorch render compose``: the docker plan as OUT/docker-compose.yml. Starts nothing."""
    from orchestrator.render.compose import write_compose

    plan = build_plan(settings, run_id or new_run_id(), "docker", workload)
    return write_compose(plan, out_dir)


def render_k8s(settings: Settings, out_dir: Path, flavor: str, namespace: str | None,
               run_id: str | None = None, workload: str | WorkloadSpec = "bench",
               master_wait_s: int | None = None) -> list[Path]:
    """``netorch render k8s``: the plan as Kubernetes objects. Starts nothing."""
    from orchestrator.errors import PlanError
    from orchestrator.render.k8s import FLAVORS, MASTER_WAIT_S, write_k8s

    if flavor not in FLAVORS:
        raise PlanError(f"--flavor {flavor!r} is unknown; use one of {', '.join(FLAVORS)}")
    # The docker plan: its node IPs do not matter in Kubernetes (DNS names replace them).
    plan = build_plan(settings, run_id or new_run_id(), "docker", workload)
    wait_s = MASTER_WAIT_S if master_wait_s is None else master_wait_s
    return list(write_k8s(plan, out_dir, flavor, namespace, wait_s))  # type: ignore[arg-type]


def run_job(settings: Settings, hooks: Hooks = Hooks(), base_dir: Path | None = None,
            on: str | None = None, asked: Collection[str] | None = None) -> RunResult:
    """``netorch run``: the user's own command on every rank, on the planned fabric.

    Fail fast with a diagnosis, gang restarts up to ``run.max_restarts`` (the job resumes from
    its own checkpoints; ``NETORCH_RESTART_COUNT`` / ``TORCHELASTIC_RESTART_COUNT`` say which
    attempt it is), logs per node, and a ``kind: run`` report written also when the job failed.
    """
    from orchestrator.userjob import run_workload

    name, settings, warm = _executor(settings, hooks, on, asked)
    run_id = new_run_id()
    fabric = backend_kind(name).fabric(settings, run_id)
    out_dir = settings.output / run_id
    board = None
    if settings.run.tensorboard:
        from orchestrator.tensorboard import TensorBoard

        board = TensorBoard((out_dir / "tensorboard").resolve(), settings.run.tensorboard_port)
    work = run_workload(settings, base_dir or Path.cwd(), fabric.in_node_paths,
                        board.logdir if board is not None else None)
    plan = build_plan(settings, run_id, name, work)
    backend = warm or make_backend(name, settings)
    if board is not None:
        url = board.start()
        _notice(hooks, f"TensorBoard: {url} serves {board.logdir} (NETORCH_TENSORBOARD_DIR in "
                "every node)")
    try:
        result = _run_job(settings, hooks, plan, backend, out_dir, name)
    except BaseException:
        if board is not None:
            board.stop()
            _notice(hooks, f"TensorBoard stopped; serve the logs again with: tensorboard "
                    f"--logdir {board.logdir}")
        raise
    return dataclasses.replace(result, tensorboard=board)


def _run_job(settings: Settings, hooks: Hooks, plan: ClusterPlan, backend: Backend,
             out_dir: Path, name: str) -> RunResult:
    from orchestrator.report import build_run_report, write_run_report

    if hooks.on_start is not None:
        hooks.on_start(plan)
    started = time.monotonic()
    try:
        outcome = run_with_restarts(
            backend, plan, out_dir, timeout_s=settings.cluster.job_timeout_s,
            max_restarts=settings.run.max_restarts, echo=hooks.echo, on_tick=hooks.on_tick,
            on_restart=hooks.on_restart)
    except RankFailedError as e:
        report = build_run_report(plan, time.monotonic() - started, e.node_exits, e.restarts,
                                  e.failures, str(e), out_dir / "logs")
        report["versions"] = versions(settings, name)
        try:
            write_run_report(report, out_dir)
        except OutputError:
            pass  # the node's failure is the news; a full disk must not hide it
        raise
    exits = {node: ex.reason() for node, ex in outcome.exits}
    report = build_run_report(plan, outcome.elapsed_s, exits, outcome.restarts,
                              outcome.failures, None, outcome.log_dir)
    report["versions"] = versions(settings, name)
    return RunResult(plan, report, write_run_report(report, out_dir))



# --------------------------------------------------------------------------------------------
# Warm clusters
# --------------------------------------------------------------------------------------------

_CLUSTER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{2,31}$")


def warm_dir(settings: Settings, name: str) -> Path:
    """The host folder of a warm cluster (every node sees it at WARM_DIR)."""
    return (settings.output / "warm" / name).resolve()


@dataclass(frozen=True)
class ClusterInfo:
    """A warm cluster as ``netorch ls`` shows it."""

    name: str
    state: str
    nodes: int
    subnet: str
    mtu: int
    image: str
    idle_timeout_s: float
    created: float | None
    containers: tuple[str, ...]
    link: str = ""  # the link shaping it was built with ("" for none)


def _info(cluster: Any) -> ClusterInfo:
    shape = cluster.shape
    return ClusterInfo(cluster.name, cluster.state, shape.nodes, shape.subnet, shape.mtu,
                       shape.image, shape.idle_timeout_s, cluster.created,
                       tuple(c.name for _, c in sorted(cluster.containers.items())),
                       shape.link_text())


def up(settings: Settings, name: str, idle_timeout_s: float, hooks: Hooks = Hooks(),
       base_dir: Path | None = None) -> ClusterInfo:
    """``netorch up``: create the network and nodes of ``settings`` and leave them idle, torch
    imported, for ``--on NAME`` runs; they go away after ``idle_timeout_s`` without a job (0:
    never) or with ``netorch down --run NAME``. ``run.*`` settings (image, workdir, mounts,
    checkpoint folder) become the cluster's."""
    from orchestrator.backends.docker import connect_settings
    from orchestrator.backends.docker.warm import remove_expired, start_cluster
    from orchestrator.userjob import run_workload

    if not _CLUSTER_NAME.match(name):
        raise ConfigError(f"--name {name!r}: use 3-32 characters of [a-z0-9-], starting with a "
                          "letter or digit")
    if settings.backend == "process":
        raise ConfigError("netorch up: warm clusters run on the docker backend; drop --backend "
                          "process")
    if idle_timeout_s < 0:
        raise ConfigError(f"--idle-timeout {idle_timeout_s}: give seconds >= 0 (0: never)")
    if settings.network.management.enabled:
        # Its runs would pin NCCL/gloo to the cluster's recorded interface (eth0), which a
        # management network takes; warm clusters have the fabric only.
        raise ConfigError(f"network.management.subnet={settings.network.management.subnet}: a "
                          "warm cluster has the fabric only; drop [network.management] for "
                          "netorch up (runs without --on support it)")
    single_host(settings, "up")
    run = settings.run
    base = None
    if run.workdir or run.mounts or run.checkpoint_dir or run.image:
        base = run_workload(settings.model_copy(update={"run": run.model_copy(
            update={"command": ["python", "-c", "pass"]})}), base_dir or Path.cwd(), True)
    folder = warm_dir(settings, name)
    folder.mkdir(parents=True, exist_ok=True)
    with connect_settings(settings) as client:
        for gone in remove_expired(client):
            _notice(hooks, f"removed expired cluster {gone}")
        return _info(start_cluster(client, settings, name, idle_timeout_s, str(folder), base,
                                   hooks.on_start))




def clusters(settings: Settings, hooks: Hooks = Hooks()) -> list[ClusterInfo]:
    """``netorch ls``: the warm clusters on the daemon; expired ones are removed (and listed)."""
    from orchestrator.backends.docker import connect_settings
    from orchestrator.backends.docker.warm import list_clusters, remove_expired

    with connect_settings(settings) as client:
        found = list_clusters(client)
        remove_expired(client, found)
    return [_info(c) for c in found]
