"""The ``netorch`` command line: plan | bench | down | render | image.

Every user mistake ends as one red line and a non-zero exit code; no tracebacks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from orchestrator.backends import make_backend, resolve_backend
from orchestrator.errors import ConfigError, NetorchError, RankFailedError
from orchestrator.plan import BackendName, build_plan, new_run_id
from orchestrator.report import avg_busbw, build_report, results_table, write_report
from orchestrator.session import run_session, run_with_restarts
from orchestrator.settings import Settings, load_settings, overrides_from_pairs, parse_set_option

app = typer.Typer(
    name="netorch",
    help="Launch multi-node torch.distributed stacks (local processes or Docker), measure the "
    "interconnect like nccl-tests, and tune it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
render_app = typer.Typer(help="Write the plan as files for other tools.", no_args_is_help=True)
image_app = typer.Typer(help="Build the training image.", no_args_is_help=True)
app.add_typer(render_app, name="render")
app.add_typer(image_app, name="image")
swarm_app = typer.Typer(help="Put the configured hosts into one Docker swarm.",
                        no_args_is_help=True)
app.add_typer(swarm_app, name="swarm")

# Reports are read in CI logs and pipes too: don't squeeze tables to 80 columns there.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, highlight=False, soft_wrap=True)

# Options shared by every command that builds a plan. Each maps to a settings key; a flag left
# out leaves the TOML / environment value alone.
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML config file (default configs/default.toml when present)")]
BackendOpt = Annotated[Optional[str], typer.Option("--backend", "-b", help="auto | process | docker")]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="reports go to OUTPUT/<run_id>/")]
NodesOpt = Annotated[Optional[int], typer.Option("--nodes", "-n", help="nodes (1 master + N-1 workers)")]
PpnOpt = Annotated[Optional[int], typer.Option("--procs-per-node", help="ranks per node")]
DistOpt = Annotated[Optional[str], typer.Option("--dist-backend", help="auto | nccl | gloo")]
PortOpt = Annotated[Optional[int], typer.Option("--master-port", help="c10d rendezvous port")]
SubnetOpt = Annotated[Optional[str], typer.Option("--subnet", help="network subnet (CIDR)")]
MtuOpt = Annotated[Optional[int], typer.Option("--mtu", help="network MTU (576..9216)")]
OpsOpt = Annotated[Optional[str], typer.Option("--ops", help="comma list: all_reduce,all_gather,reduce_scatter,broadcast,all_to_all")]
MinOpt = Annotated[Optional[str], typer.Option("--min-bytes", "-B", help="smallest size, e.g. 1M (nccl-tests -b)")]
MaxOpt = Annotated[Optional[str], typer.Option("--max-bytes", "-E", help="largest size, e.g. 64M (nccl-tests -e)")]
FactorOpt = Annotated[Optional[int], typer.Option("--step-factor", "-f", help="size multiplier (nccl-tests -f)")]
WarmupOpt = Annotated[Optional[int], typer.Option("--warmup", "-w", help="untimed iterations (nccl-tests -w)")]
ItersOpt = Annotated[Optional[int], typer.Option("--iters", "-i", help="timed iterations (nccl-tests -n)")]
DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", "-d", help="comma list: float32,float16,bfloat16,float64,int32")]
CheckOpt = Annotated[Optional[bool], typer.Option("--check/--no-check", help="exact correctness check (nccl-tests -c)")]
InPlaceOpt = Annotated[Optional[str], typer.Option("--in-place", help="both | on | off")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="any setting, e.g. --set network.internal=false (repeatable)")]


# Command parameter -> settings key, for every flag that maps onto a setting.
FLAG_KEYS = {
    "backend": "backend", "output": "output", "nodes": "cluster.nodes",
    "procs_per_node": "cluster.procs_per_node", "dist_backend": "cluster.dist_backend",
    "master_port": "cluster.master_port", "subnet": "network.subnet", "mtu": "network.mtu",
    "ops": "bench.ops", "min_bytes": "bench.min_bytes", "max_bytes": "bench.max_bytes",
    "step_factor": "bench.step_factor", "warmup": "bench.warmup", "iters": "bench.iters",
    "dtype": "bench.dtype", "check": "bench.check", "in_place": "bench.in_place",
    "steps": "train.steps", "batch_size": "train.batch_size", "width": "train.width",
    "bucket_cap_mb": "train.bucket_cap_mb", "checkpoint_every": "train.checkpoint_every",
    "seed": "train.seed", "lr": "train.lr", "max_restarts": "train.max_restarts",
    "metrics_port": "metrics.port_base",
}


def _settings(
    config: Path | None,
    flags: dict[str, Any],
    sets: list[str] | None,
) -> Settings:
    pairs: dict[str, Any] = dict(parse_set_option(item) for item in sets or [])
    pairs.update({k: v for k, v in flags.items() if v is not None})
    return load_settings(config, overrides_from_pairs(pairs))


def _flags(params: dict[str, Any], **fixed: Any) -> dict[str, Any]:
    """Settings keys from a command's parameters (its ``locals()``), plus ``fixed`` values."""
    flags = {key: params[name] for name, key in FLAG_KEYS.items() if name in params}
    flags.update({FLAG_KEYS[name]: value for name, value in fixed.items()})
    return flags


def _settings_from(params: dict[str, Any], **fixed: Any) -> Settings:
    """Settings for a command: ``--config``, its flags (``fixed`` wins), then ``--set`` items."""
    return _settings(params.get("config"), _flags(params, **fixed), params.get("set_"))


def _fail(error: NetorchError) -> typer.Exit:
    text = error.diagnosis() if isinstance(error, RankFailedError) else str(error)
    first, _, rest = text.partition("\n")
    err.print(f"[bold red]error:[/] {escape(first)}")
    if rest:
        err.print(escape(rest))
    return typer.Exit(error.exit_code)


@app.command()
def plan(
    config: ConfigOpt = None, backend: BackendOpt = None, output: OutputOpt = None,
    nodes: NodesOpt = None, procs_per_node: PpnOpt = None, dist_backend: DistOpt = None,
    master_port: PortOpt = None, subnet: SubnetOpt = None, mtu: MtuOpt = None,
    ops: OpsOpt = None, min_bytes: MinOpt = None, max_bytes: MaxOpt = None,
    step_factor: FactorOpt = None, warmup: WarmupOpt = None, iters: ItersOpt = None,
    dtype: DtypeOpt = None, check: CheckOpt = None, in_place: InPlaceOpt = None,
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of YAML")] = False,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="fix the run id (default: new)")] = None,
) -> None:
    """Print the plan (network, nodes, IPs, env, commands). Starts nothing."""
    try:
        settings = _settings_from(locals())
        name: BackendName = "docker" if settings.backend == "docker" else (
            "process" if settings.backend == "process" else resolve_backend(settings)[0])
        the_plan = build_plan(settings, run_id or new_run_id(), name)
    except NetorchError as e:
        raise _fail(e) from None
    data = the_plan.to_dict()
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))


@app.command()
def bench(
    config: ConfigOpt = None, backend: BackendOpt = None, output: OutputOpt = None,
    nodes: NodesOpt = None, procs_per_node: PpnOpt = None, dist_backend: DistOpt = None,
    master_port: PortOpt = None, subnet: SubnetOpt = None, mtu: MtuOpt = None,
    ops: OpsOpt = None, min_bytes: MinOpt = None, max_bytes: MaxOpt = None,
    step_factor: FactorOpt = None, warmup: WarmupOpt = None, iters: ItersOpt = None,
    dtype: DtypeOpt = None, check: CheckOpt = None, in_place: InPlaceOpt = None,
    set_: SetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="hide the nodes' log lines")] = False,
) -> None:
    """Run the collective benchmark: plan, start nodes, wait, collect, report, tear down.

    Exit code 0 only when every rank succeeded and no value was wrong.
    """
    try:
        settings = _settings_from(locals())
        name, why = resolve_backend(settings)
        err.print(f"[cyan]backend:[/] {name} ({escape(why)})")
        the_plan = build_plan(settings, new_run_id(), name)
        the_backend = make_backend(name, settings)
        out_dir = settings.output / the_plan.run_id

        def echo(node: str, line: str) -> None:
            if not quiet:
                short = node.removeprefix(f"{settings.cluster.name}-{the_plan.run_id}-")
                err.print(f"[dim]{escape(short):>10} |[/] {escape(line)}")

        with err.status(f"run {the_plan.run_id}: {the_plan.nnodes} nodes x "
                        f"{the_plan.nproc_per_node} ranks on {name}") as status:
            def tick(done: int, total: int) -> None:
                status.update(f"run {the_plan.run_id}: {done}/{total} nodes finished")

            outcome = run_session(the_backend, the_plan, out_dir,
                                  timeout_s=settings.cluster.job_timeout_s, echo=echo, on_tick=tick)
        report = build_report(the_plan, outcome.result, outcome.elapsed_s)
        paths = write_report(report, out_dir)
        paths["prom"] = _publish_metrics(report, out_dir, settings)
    except NetorchError as e:
        raise _fail(e) from None
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]: everything this run started was removed")
        raise typer.Exit(130) from None
    console.print(results_table(report))
    for item in report["skipped"]:
        console.print(f"[yellow]skipped[/] {item['op']} {item['dtype']}: {escape(item['reason'])}")
    for note in report["notes"]:
        console.print(f"[dim]note: {escape(note)}[/]")
    console.print(f"avg busbw: {avg_busbw(report):.3f} GB/s   wrong: {report['wrong_total']}   "
                  f"elapsed: {report['elapsed_s']:.1f} s")
    if the_plan.multi_host:
        for node in report["nodes"]:
            console.print(f"node {escape(node['name'])} on host {escape(str(node['host']))}: "
                          f"ip {node['ip']} (planned {node['planned_ip']}), mtu {node['mtu']}")
        net = report["network"]
        console.print(f"overlay {escape(net['name'])}: requested MTU {net['mtu']}, effective "
                      f"MTU {net['effective_mtu']}")
    for warning in report["warnings"]:
        console.print(f"[bold yellow]WARNING:[/] {escape(warning)}")
    console.print("report: " + "  ".join(str(p) for p in paths.values()))
    if not report["ok"]:
        err.print(f"[bold red]error:[/] {report['wrong_total']} wrong values; see {paths['json']}")
        raise typer.Exit(4)


def _publish_metrics(report: dict[str, Any], out_dir: Path, settings: Settings) -> Path:
    """metrics.prom into the run's output; a Pushgateway push when configured (warns, never fails)."""
    from orchestrator.metrics import push_report, write_textfile

    path = write_textfile(report, out_dir)
    url = settings.metrics.pushgateway_url
    if url:
        problem = push_report(report, url, settings.cluster.name, settings.metrics.push_timeout_s)
        if problem:
            report.setdefault("warnings", []).append(problem)
        else:
            err.print(f"[cyan]pushed[/] {report.get('kind', 'bench')} results to {escape(url)}")
    return path


@app.command()
def train(
    config: ConfigOpt = None, backend: BackendOpt = None, output: OutputOpt = None,
    nodes: NodesOpt = None, procs_per_node: PpnOpt = None, dist_backend: DistOpt = None,
    master_port: PortOpt = None, subnet: SubnetOpt = None, mtu: MtuOpt = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="optimizer steps")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="samples per rank per step")] = None,
    width: Annotated[Optional[int], typer.Option("--width", help="hidden units per layer")] = None,
    bucket_cap_mb: Annotated[Optional[float], typer.Option("--bucket-cap-mb", help="DDP bucket size (MiB)")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option("--checkpoint-every", help="checkpoint every K steps (0: never)")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="seed of model, teacher and data")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="SGD learning rate")] = None,
    max_restarts: Annotated[Optional[int], typer.Option("--max-restarts", help="gang restarts after a node dies")] = None,
    metrics_port: Annotated[Optional[int], typer.Option("--metrics-port", help="first rank's /metrics port")] = None,
    set_: SetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="hide the nodes' log lines (progress stays)")] = False,
) -> None:
    """Train a small MLP with DDP: progress, checkpoints, gang restarts, metrics, a report.

    Exit code 0 when the job finished all steps (restarts included) with a finite loss.
    """
    from orchestrator.metrics import write_targets
    from orchestrator.report import build_train_report, train_table, write_train_report
    from train.results import decode_progress

    try:
        settings = _settings_from(locals())
        name, why = resolve_backend(settings)
        err.print(f"[cyan]backend:[/] {name} ({escape(why)})")
        the_plan = build_plan(settings, new_run_id(), name, workload="train")
        the_backend = make_backend(name, settings)
        out_dir = settings.output / the_plan.run_id
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        targets = write_targets(the_plan, out_dir)
        if targets is not None:
            err.print(f"[cyan]metrics:[/] Prometheus file_sd targets in {escape(str(targets))}")

        with err.status(f"run {the_plan.run_id}: training on {the_plan.nnodes} nodes x "
                        f"{the_plan.nproc_per_node} ranks ({name})") as status:
            def echo(node: str, line: str) -> None:
                progress = decode_progress(line)
                if progress is not None:
                    text = (f"step {progress.get('step')}/{progress.get('steps')}  "
                            f"loss {float(progress.get('loss', 0.0)):.5f}  "
                            f"{float(progress.get('samples_per_s', 0.0)):,.0f} samples/s")
                    status.update(f"run {the_plan.run_id}: {text}")
                    err.print(f"[green]progress[/] {text}")
                elif not quiet:
                    short = node.removeprefix(f"{settings.cluster.name}-{the_plan.run_id}-")
                    err.print(f"[dim]{escape(short):>10} |[/] {escape(line)}")

            def restarted(count: int, error: RankFailedError) -> None:
                err.print(f"[bold yellow]restart {count}/{settings.train.max_restarts}:[/] "
                          f"{escape(str(error))}; resuming from the latest checkpoint")

            outcome = run_with_restarts(
                the_backend, the_plan, out_dir, timeout_s=settings.cluster.job_timeout_s,
                max_restarts=settings.train.max_restarts, echo=echo, on_restart=restarted)
        report = build_train_report(the_plan, outcome.result, outcome.elapsed_s,
                                    outcome.restarts, outcome.failures)
        paths = write_train_report(report, out_dir)
        paths["prom"] = _publish_metrics(report, out_dir, settings)
        paths["json"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    except NetorchError as e:
        raise _fail(e) from None
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]: everything this run started was removed")
        raise typer.Exit(130) from None
    console.print(train_table(report))
    for warning in report["warnings"]:
        console.print(f"[bold yellow]WARNING:[/] {escape(warning)}")
    console.print("report: " + "  ".join(str(p) for p in paths.values()))
    if not report["ok"]:
        err.print(f"[bold red]error:[/] the job did not finish its steps with a finite loss; "
                  f"see {paths['json']}")
        raise typer.Exit(4)


@render_app.command("compose")
def render_compose_cmd(
    out_dir: Annotated[Path, typer.Option("--output", "-o", help="directory for docker-compose.yml")],
    config: ConfigOpt = None,
    nodes: NodesOpt = None, procs_per_node: PpnOpt = None, dist_backend: DistOpt = None,
    master_port: PortOpt = None, subnet: SubnetOpt = None, mtu: MtuOpt = None,
    ops: OpsOpt = None, min_bytes: MinOpt = None, max_bytes: MaxOpt = None,
    step_factor: FactorOpt = None, warmup: WarmupOpt = None, iters: ItersOpt = None,
    dtype: DtypeOpt = None, check: CheckOpt = None, in_place: InPlaceOpt = None,
    set_: SetOpt = None,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="fix the run id (default: new)")] = None,
) -> None:
    """Write the Docker plan as OUTPUT/docker-compose.yml (docker-compose 1.27+). Starts nothing."""
    from orchestrator.render.compose import write_compose

    try:
        settings = _settings_from(locals())
        the_plan = build_plan(settings, run_id or new_run_id(), "docker")
        path = write_compose(the_plan, out_dir)
    except NetorchError as e:
        raise _fail(e) from None
    except OSError as e:
        err.print(f"[bold red]error:[/] cannot write {escape(str(out_dir))}: {escape(str(e))}; "
                  "choose a writable directory")
        raise typer.Exit(2) from None
    console.print(str(path))


def _comma_items(text: str, what: str) -> list[str]:
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise ConfigError(f"{what}: {text!r} names nothing; give a comma list, e.g. 1500,9000")
    return list(dict.fromkeys(items))


@app.command()
def sweep(
    mtus: Annotated[str, typer.Option("--mtu", help="comma list of MTUs to compare, e.g. 1500,4000,9000")] = "1500,9000",
    repeats: Annotated[int, typer.Option("--repeats", "-r", min=1, help="runs per MTU, interleaved")] = 3,
    link_rate: Annotated[Optional[str], typer.Option("--link-rate", help="comma list of emulated link rates (tc tbf), e.g. 1gbit,10gbit; 'none' = unshaped")] = None,
    tcp_seconds: Annotated[float, typer.Option("--tcp-seconds", min=1.0, help="duration of each TCP baseline test (whole seconds with iperf3)")] = 2.0,
    tcp_streams: Annotated[int, typer.Option("--tcp-streams", min=1, help="streams of the parallel TCP test")] = 4,
    tcp_pairs: Annotated[int, typer.Option("--tcp-pairs", min=1, help="ring neighbour pairs measured per run")] = 1,
    config: ConfigOpt = None, output: OutputOpt = None,
    nodes: NodesOpt = None, procs_per_node: PpnOpt = None, dist_backend: DistOpt = None,
    master_port: PortOpt = None, subnet: SubnetOpt = None,
    ops: OpsOpt = None, min_bytes: MinOpt = None, max_bytes: MaxOpt = None,
    step_factor: FactorOpt = None, warmup: WarmupOpt = None, iters: ItersOpt = None,
    dtype: DtypeOpt = None, check: CheckOpt = None, in_place: InPlaceOpt = None,
    set_: SetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="hide the nodes' log lines")] = False,
) -> None:
    """Compare MTUs (and link rates) on the Docker backend: interleaved repeats, verified MTUs,
    a TCP line-rate baseline, a table, CSV/JSON, a plot and a recommendation.

    Writes OUTPUT/sweep-<id>/. Exit 0 when every run succeeded (a recommendation of "no
    significant difference" is a result, not a failure); 4 when a run's MTU could not be verified.
    """
    from orchestrator.backends.docker import client_from_settings
    from orchestrator.sweep import NO_LINK, SweepOptions, run_sweep, sweep_table, write_sweep

    try:
        mtu_list: list[int] = []
        for item in _comma_items(mtus, "--mtu"):
            if not item.isdigit():
                raise ConfigError(f"--mtu: {item!r} is not a number; write e.g. 1500,9000")
            mtu_list.append(int(item))
        rates: list[str | None] = [None if r.lower() in (NO_LINK, "off") else r
                                   for r in _comma_items(link_rate, "--link-rate")] if link_rate else [None]
        flags = _flags(locals(), backend="docker")
        base = _settings(config, flags, set_)
        _single_host_only(base, "sweep")
        # Every variant is validated up front, with the same rules as `netorch bench`: a bad MTU
        # or rate fails before the first container exists.
        variants = {}
        for rate in rates:
            for mtu in mtu_list:
                extra: dict[str, Any] = {"network.mtu": mtu}
                if rate is not None:
                    extra["network.link.rate"] = rate
                variants[(mtu, rate)] = _settings(config, {**flags, **extra}, set_)
        if link_rate is None and base.network.link.rate is not None:
            variants = {(m, base.network.link.rate): v for (m, _), v in variants.items()}
            rates = [base.network.link.rate]
        options = SweepOptions(tuple(mtu_list), tuple(rates), repeats, tcp_seconds,
                               tcp_streams, tcp_pairs)
        sweep_id = new_run_id()
        out_dir = base.output / f"sweep-{sweep_id}"
        client = client_from_settings(base)
        total = len(mtu_list) * len(rates) * repeats

        def echo(node: str, line: str) -> None:
            if not quiet:
                err.print(f"[dim]{escape(node.removeprefix(base.cluster.name + '-')):>28} |[/] "
                          f"{escape(line)}")

        def on_point(point: Any, run_id: str) -> None:
            err.print(f"[cyan]sweep {point.index + 1}/{total}:[/] MTU {point.mtu}, link "
                      f"{point.link_rate or NO_LINK}, repeat {point.repeat + 1} (run {run_id})")

        try:
            summary = run_sweep(variants, options, client, sweep_id, out_dir, echo, on_point)
        finally:
            client.close()
        paths = write_sweep(summary, out_dir)
    except NetorchError as e:
        raise _fail(e) from None
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]: everything the current run started was removed")
        raise typer.Exit(130) from None
    console.print(sweep_table(summary))
    unverified = [f"{r['run_id']}: {p}" for r in summary["runs"] for p in r["problems"]]
    for line in unverified:
        console.print(f"[bold yellow]WARNING:[/] {escape(line)}")
    for verdict in summary["recommendations"]:
        console.print(f"[bold]recommendation:[/] {escape(verdict['text'])}")
    console.print("report: " + "  ".join(str(p) for p in paths.values()))
    if unverified:
        raise typer.Exit(4)


@app.command()
def doctor(
    run: Annotated[Optional[str], typer.Option("--run", help="diagnose this running run instead of a plan")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the checks as JSON")] = False,
    config: ConfigOpt = None, nodes: NodesOpt = None, procs_per_node: PpnOpt = None,
    master_port: PortOpt = None, subnet: SubnetOpt = None, mtu: MtuOpt = None,
    set_: SetOpt = None,
) -> None:
    """Diagnose the network and containers: reachability, aliases, interface, MTU, /dev/shm,
    memlock, GPUs, master port. Without --run, the plan comes up with sleeping containers and is
    torn down afterwards. Exit 1 when any check fails.
    """
    from rich.table import Table

    from orchestrator.backends.docker import client_from_settings
    from orchestrator.doctor import doctor_plan, doctor_run, failed

    try:
        settings = _settings_from(locals(), backend="docker")
        _single_host_only(settings, "doctor")
        client = client_from_settings(settings)
        try:
            if run is not None:
                checks = doctor_run(client, run)
                scope = f"run {run}"
            else:
                the_plan = build_plan(settings, new_run_id(), "docker")
                err.print(f"[cyan]doctor:[/] bringing up {the_plan.nnodes} sleeping containers "
                          f"of plan {the_plan.run_id} on {the_plan.network.subnet}")
                checks = doctor_plan(the_plan, client)
                scope = f"plan {the_plan.run_id}"
        finally:
            client.close()
    except NetorchError as e:
        raise _fail(e) from None
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]: the doctor's containers were removed")
        raise typer.Exit(130) from None
    bad = failed(checks)
    if as_json:
        sys.stdout.write(json.dumps([c.__dict__ for c in checks], indent=2) + "\n")
    else:
        table = Table(title=f"netorch doctor · {scope}", title_justify="left")
        for col in ("check", "node", "status", "detail", "fix"):
            table.add_column(col)
        colour = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}
        for c in checks:
            table.add_row(c.name, escape(c.target), f"[{colour[c.status]}]{c.status.upper()}[/]",
                          escape(c.detail), escape(c.fix))
        console.print(table)
        console.print(f"{len(checks)} checks: {len(bad)} failed, "
                      f"{sum(c.status == 'warn' for c in checks)} warnings")
    if bad:
        raise typer.Exit(1)


@app.command()
def down(
    run: Annotated[Optional[str], typer.Option("--run", help="remove the resources of this run id")] = None,
    all_: Annotated[bool, typer.Option("--all", help="remove the resources of every netorch run")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Remove netorch's containers and networks (only those labelled io.netorch.managed=true)."""
    if (run is None) == (not all_):
        err.print("[bold red]error:[/] give exactly one of --run ID or --all")
        raise typer.Exit(2)
    try:
        from orchestrator.backends.docker import client_from_settings, down_all

        settings = _settings(config, {}, set_)
        if len(settings.hosts) > 1:
            from orchestrator.backends.swarm import down_hosts, host_client

            clients: dict[str, Any] = {}
            try:
                for h in settings.hosts:
                    clients[h.name] = host_client(h)
                removed = down_hosts(clients, None if all_ else run, [h.name for h in settings.hosts])
            finally:
                for c in clients.values():
                    c.close()
        else:
            if settings.hosts:
                from orchestrator.backends.swarm import host_client

                client = host_client(settings.hosts[0])
            else:
                client = client_from_settings(settings)
            try:
                removed = down_all(client, None if all_ else run)
            finally:
                client.close()
    except NetorchError as e:
        raise _fail(e) from None
    for item in removed:
        console.print(f"removed {escape(item)}")
    scope = "every netorch run" if all_ else f"run {run}"
    console.print(f"{len(removed)} resource(s) of {escape(scope)} removed")


@render_app.command("k8s")
def render_k8s_cmd(
    out_dir: Annotated[Path, typer.Option("--output", "-o", help="directory for netorch-<run_id>.yaml")],
    flavor: Annotated[str, typer.Option("--flavor", help="indexed-job | pytorchjob | jobset")] = "indexed-job",
    namespace: Annotated[Optional[str], typer.Option("--namespace", help="write this namespace into every object")] = None,
    config: ConfigOpt = None,
    nodes: NodesOpt = None, procs_per_node: PpnOpt = None, dist_backend: DistOpt = None,
    master_port: PortOpt = None, subnet: SubnetOpt = None, mtu: MtuOpt = None,
    ops: OpsOpt = None, min_bytes: MinOpt = None, max_bytes: MaxOpt = None,
    step_factor: FactorOpt = None, warmup: WarmupOpt = None, iters: ItersOpt = None,
    dtype: DtypeOpt = None, check: CheckOpt = None, in_place: InPlaceOpt = None,
    set_: SetOpt = None,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="fix the run id (default: new)")] = None,
) -> None:
    """Write the plan as Kubernetes objects in OUTPUT/netorch-<run_id>.yaml. Starts nothing."""
    from orchestrator.errors import PlanError
    from orchestrator.render.k8s import FLAVORS, Flavor, write_k8s

    try:
        if flavor not in FLAVORS:
            raise PlanError(f"--flavor {flavor!r} is unknown; use one of {', '.join(FLAVORS)}")
        chosen: Flavor = flavor  # type: ignore[assignment]  # checked against FLAVORS above
        settings = _settings_from(locals())
        # The docker plan: its node IPs do not matter in Kubernetes (DNS names replace them).
        the_plan = build_plan(settings, run_id or new_run_id(), "docker")
        paths = write_k8s(the_plan, out_dir, chosen, namespace)
    except NetorchError as e:
        raise _fail(e) from None
    except OSError as e:
        err.print(f"[bold red]error:[/] cannot write {escape(str(out_dir))}: {escape(str(e))}; "
                  "choose a writable directory")
        raise typer.Exit(2) from None
    for path in paths:
        console.print(str(path))


@image_app.command("build")
def image_build(
    offline: Annotated[bool, typer.Option(
        "--offline/--online",
        help="offline: mmdebstrap base + torch wheels from the host (no registry); online: a "
        "CUDA PyTorch base image that already has torch")] = True,
    tag: Annotated[str, typer.Option("--tag", help="image tag")] = "netorch:latest",
    base_image: Annotated[Optional[str], typer.Option("--base-image", help="override the base image")] = None,
    force: Annotated[bool, typer.Option("--force", help="rebuild without the layer cache")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the summary")] = False,
) -> None:
    """Build the training image through the Docker SDK; a no-op when its inputs are unchanged."""
    from orchestrator.image import build_image, client

    def progress(line: str) -> None:
        if not quiet:
            err.print(f"[dim]  {escape(line)}[/]")

    try:
        result = build_image(client(), tag=tag, offline=offline, base_image=base_image,
                             force=force, progress=progress)
    except NetorchError as e:
        raise _fail(e) from None
    state = "up to date" if result.up_to_date else "built"
    console.print(f"{result.tag}: {state} ({result.image_id[:19]}, {result.seconds:.1f} s)")


def _single_host_only(settings: Settings, command: str) -> None:
    if len(settings.hosts) > 1:
        raise ConfigError(
            f"netorch {command} runs on one Docker host; {len(settings.hosts)} [[hosts]] are "
            "configured; use `netorch bench` / `netorch train` across hosts, or a config with one host"
        )


def _swarm_hosts(config: Optional[Path], set_: Optional[list[str]]) -> list[Any]:
    settings = _settings(config, {}, set_)
    if not settings.hosts:
        raise ConfigError("hosts: no [[hosts]] configured; list the Docker hosts (the first one "
                          "becomes the swarm manager) in the config file")
    return list(settings.hosts)


@swarm_app.command("init")
def swarm_init_cmd(
    advertise_addr: Annotated[str, typer.Option("--advertise-addr", help="manager address the other hosts reach")],
    listen_addr: Annotated[Optional[str], typer.Option("--listen-addr", help="default ADVERTISE:2377")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Make the first configured host a swarm manager (docker swarm init). Idempotent."""
    from orchestrator.backends.swarm import host_client, swarm_init

    try:
        first = _swarm_hosts(config, set_)[0]
        client = host_client(first)
        try:
            node_id = swarm_init(client, advertise_addr, listen_addr)
        finally:
            client.close()
    except NetorchError as e:
        raise _fail(e) from None
    console.print(f"host {escape(first.name)} manages the swarm (node {node_id[:12]})")


@swarm_app.command("join")
def swarm_join_cmd(
    host: Annotated[Optional[str], typer.Option("--host", help="host to join (default: every host but the first)")] = None,
    advertise_addr: Annotated[Optional[str], typer.Option("--advertise-addr", help="the joining host's own address (with --host)")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Join the other configured hosts to the first one's swarm as workers (docker swarm join)."""
    from orchestrator.backends.swarm import host_client, swarm_join

    try:
        hosts = _swarm_hosts(config, set_)
        targets = [h for h in hosts[1:] if host is None or h.name == host]
        if host is not None and not targets:
            raise ConfigError(f"--host {host!r} is not one of the joining hosts: "
                              + ", ".join(h.name for h in hosts[1:]))
        if advertise_addr and len(targets) != 1:
            raise ConfigError("--advertise-addr names one host's address; give --host too")
        manager = host_client(hosts[0])
        try:
            for target in targets:
                worker = host_client(target)
                try:
                    node_id = swarm_join(manager, worker, advertise_addr)
                finally:
                    worker.close()
                console.print(f"host {escape(target.name)} is in the swarm (node {node_id[:12]})")
        finally:
            manager.close()
    except NetorchError as e:
        raise _fail(e) from None


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
