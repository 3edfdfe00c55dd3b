"""The ``netorch`` command line: a thin face over ``orchestrator.app``.

Shared options are declared once (:data:`PLAN_FLAGS`, :data:`BENCH_FLAGS`, ...: a parameter, the
settings key it sets, its help) and attached to commands by :func:`command`, which also maps
errors to exit codes in one place: a :class:`NetorchError` prints one red line (a rank failure
its diagnosis) and exits with its code, Ctrl-C exits 130. Command bodies only render results.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from orchestrator import app as usecases
from orchestrator.app import Hooks, SettingsRequest
from orchestrator.backends.registry import backend_names
from orchestrator.errors import ConfigError, NetorchError, OutputError, RankFailedError
from orchestrator.plan import ClusterPlan
from orchestrator.settings import unknown_env_warnings
from train.contract import DTYPE_NAMES, OPS

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
swarm_app = typer.Typer(help="Put the configured hosts into one Docker swarm.",
                        no_args_is_help=True)
app.add_typer(render_app, name="render")
app.add_typer(image_app, name="image")
app.add_typer(swarm_app, name="swarm")

# Tables fit the console's width (orchestrator/tables.py): a terminal's, or COLUMNS when set
# (a pipe has no width of its own); in a pipe without COLUMNS, 140 (CI logs are wide).
# No emoji codes: a value like the pair key "master:x" followed by ":" would print as an emoji.
console = Console(highlight=False, emoji=False,
                  width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 140)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


# --------------------------------------------------------------------------------------------
# Shared options: declared once, each bound to the settings key it sets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    """A shared option: the parameter typer sees, the settings key it sets (None: not a
    setting), and its typer annotation (``Annotated[Optional[T], typer.Option(...)]``)."""

    param: str
    key: str | None
    annotation: Any


def _opt(kind: Any, *names: str, help: str) -> Any:
    return Annotated[Optional[kind], typer.Option(*names, help=help)]


CONFIG_FLAGS = (
    Flag("config", None, _opt(Path, "--config", "-c",
                              help="TOML config file (default configs/default.toml when present)")),
    Flag("set_", None, Annotated[Optional[list[str]], typer.Option(
        "--set", help="any setting, e.g. --set network.internal=false (repeatable); flags win "
        "over --set, --set over NETORCH_* variables, those over the config file")]),
)
PLAN_FLAGS = CONFIG_FLAGS + (
    Flag("backend", "backend", _opt(str, "--backend", "-b",
                                    help="auto | " + " | ".join(backend_names()))),
    Flag("output", "output", _opt(Path, "--output", "-o", help="reports go to OUTPUT/<run_id>/")),
    Flag("nodes", "cluster.nodes", _opt(int, "--nodes", "-n",
                                        help="nodes (1 master + N-1 workers)")),
    Flag("procs_per_node", "cluster.procs_per_node", _opt(int, "--procs-per-node",
                                                          help="ranks per node")),
    Flag("dist_backend", "cluster.dist_backend", _opt(str, "--dist-backend",
                                                      help="auto | nccl | gloo")),
    Flag("master_port", "cluster.master_port", _opt(int, "--master-port",
                                                    help="c10d rendezvous port")),
    Flag("subnet", "network.subnet", _opt(str, "--subnet", help="network subnet (CIDR)")),
    Flag("mtu", "network.mtu", _opt(int, "--mtu", help="network MTU (576..9216)")),
)
BENCH_FLAGS = (
    Flag("ops", "bench.ops", _opt(str, "--ops", help="comma list or 'all': " + ", ".join(
        f"{name} ({spec.help})" for name, spec in OPS.items()))),
    Flag("min_bytes", "bench.min_bytes", _opt(str, "--min-bytes", "-B",
                                              help="smallest size, e.g. 1M (nccl-tests -b)")),
    Flag("max_bytes", "bench.max_bytes", _opt(str, "--max-bytes", "-E",
                                              help="largest size, e.g. 64M (nccl-tests -e)")),
    Flag("step_factor", "bench.step_factor", _opt(int, "--step-factor", "-f",
                                                  help="size multiplier (nccl-tests -f)")),
    Flag("warmup", "bench.warmup", _opt(int, "--warmup", "-w",
                                        help="untimed iterations (nccl-tests -w)")),
    Flag("iters", "bench.iters", _opt(int, "--iters", "-i",
                                      help="timed iterations (nccl-tests -n)")),
    Flag("dtype", "bench.dtype", _opt(str, "--dtype", "-d",
                                      help="comma list: " + ",".join(DTYPE_NAMES))),
    Flag("check", "bench.check", _opt(bool, "--check/--no-check",
                                      help="exact correctness check (nccl-tests -c)")),
    Flag("in_place", "bench.in_place", _opt(str, "--in-place", help="both | on | off")),
    Flag("blocking", "bench.blocking", _opt(str, "--blocking", "-z", help="1: wait for each op "
                                            "(default); 0: several ops in flight (nccl-tests -z)")),
)
TRAIN_FLAGS = (
    Flag("steps", "train.steps", _opt(int, "--steps", help="optimizer steps")),
    Flag("batch_size", "train.batch_size", _opt(int, "--batch-size",
                                                help="samples per rank per step")),
    Flag("width", "train.width", _opt(int, "--width", help="hidden units per layer")),
    Flag("bucket_cap_mb", "train.bucket_cap_mb", _opt(float, "--bucket-cap-mb",
                                                      help="DDP bucket size (MiB)")),
    Flag("checkpoint_every", "train.checkpoint_every", _opt(
        int, "--checkpoint-every", help="checkpoint every K steps (0: never)")),
    Flag("seed", "train.seed", _opt(int, "--seed", help="seed of model, teacher and data")),
    Flag("lr", "train.lr", _opt(float, "--lr", help="SGD learning rate")),
    Flag("max_restarts", "train.max_restarts", _opt(int, "--max-restarts",
                                                    help="gang restarts after a node dies")),
    Flag("metrics_port", "metrics.port_base", _opt(int, "--metrics-port",
                                                   help="first rank's /metrics port")),
)


RUN_FLAGS = (
    Flag("image", "run.image", _opt(str, "--image", help="image with Python and torch that "
                                    "runs the job (default cluster.image); never pulled")),
    Flag("workdir", "run.workdir", _opt(str, "--workdir", help="host folder with your code: "
                                        "read-only at /workspace, the working directory")),
    Flag("mount", "run.mounts", Annotated[Optional[list[str]], typer.Option(
        "--mount", "-v", help="SRC:DST[:ro|rw] as docker run -v: a host path or a named "
        "volume (repeatable)")]),
    Flag("checkpoint_dir", "run.checkpoint_dir", _opt(str, "--checkpoint-dir", help="host "
                                                      "folder at /checkpoints on every node")),
    Flag("max_restarts", "run.max_restarts", _opt(int, "--max-restarts", help="gang restarts "
                                                  "after a node dies (default 0)")),
    Flag("tensorboard", "run.tensorboard", _opt(bool, "--tensorboard", help="a TensorBoard log "
                                                "folder at the same path in every node "
                                                "($NETORCH_TENSORBOARD_DIR), served on "
                                                "127.0.0.1:run.tensorboard_port during the run "
                                                "and after it until Ctrl-C")),
)


def _exclude(flags: Sequence[Flag], *params: str) -> tuple[Flag, ...]:
    return tuple(f for f in flags if f.param not in params)


def command(
    typer_app: typer.Typer, *groups: Sequence[Flag], name: str | None = None,
    fixed: dict[str, Any] | None = None, context_settings: dict[str, Any] | None = None,
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register ``fn`` as a command with the shared ``groups`` of options added to its own.

    ``fn`` receives ``request: SettingsRequest`` built from them (``fixed`` settings win, e.g.
    ``backend=docker`` for docker-only commands) and may raise NetorchError or be interrupted:
    both become the documented exit codes here, with one line on stderr.
    """

    def decorate(fn: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values()
               if p.name != "request"]
        flags = [f for group in groups for f in group]
        shared = [inspect.Parameter(f.param, inspect.Parameter.KEYWORD_ONLY, default=None,
                                    annotation=f.annotation) for f in flags]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> None:
            values = {f.param: kwargs.pop(f.param, None) for f in flags}
            request = SettingsRequest(
                config=values.pop("config", None),
                flags={**{f.key: values[f.param] for f in flags if f.key is not None},
                       **(fixed or {})},
                sets=tuple(values.pop("set_", None) or ()),
            )
            for line in unknown_env_warnings():  # a misspelt NETORCH_* would be ignored silently
                err.print(f"[bold yellow]WARNING:[/] {escape(line)}")
            try:
                fn(request=request, **kwargs)
            except NetorchError as e:
                raise _fail(e) from None
            except KeyboardInterrupt:
                err.print("[bold red]interrupted[/]: everything this run started was removed")
                raise typer.Exit(130) from None

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + shared
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        typer_app.command(name=name, context_settings=context_settings,
                          short_help=_summary(fn.__doc__))(wrapper)
        return fn

    return decorate


def _summary(doc: str | None) -> str | None:
    """A command's line in ``netorch --help``: its docstring's first paragraph as one line (the
    list would otherwise keep the docstring's own line breaks inside its wrapping)."""
    if not doc:
        return None
    return " ".join(inspect.cleandoc(doc).split("\n\n", 1)[0].split())


def _fail(error: NetorchError) -> typer.Exit:
    if isinstance(error, RankFailedError):
        verdict = str(error)
        for line in error.screen_lines():
            err.print(f"[bold red]error:[/] {escape(line)}" if line == verdict else escape(line))
        return typer.Exit(error.exit_code)
    text = str(error)
    first, _, rest = text.partition("\n")
    err.print(f"[bold red]error:[/] {escape(first)}")
    if rest:
        err.print(escape(rest))
    return typer.Exit(error.exit_code)


def _writable(out_dir: Path, write: Callable[[], Any]) -> Any:
    """Run ``write``; an OSError becomes a ConfigError naming the directory (exit 2)."""
    try:
        return write()
    except OSError as e:
        raise ConfigError(f"--output {out_dir}: cannot write there ({e.strerror or e}); choose "
                          "a writable directory") from None


def _node_echo(plan_prefix: Callable[[], str], quiet: bool) -> Callable[[str, str], None]:
    def echo(node: str, line: str) -> None:
        if not quiet:
            short = node.removeprefix(plan_prefix())
            err.print(f"[dim]{escape(short):>10} |[/] {escape(line)}")

    return echo


JsonOpt = Annotated[bool, typer.Option(
    "--json", help="print the report as JSON on stdout (logs and progress stay on stderr)")]


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _version(value: bool) -> None:
    if value:
        from orchestrator.versions import host_torch_version, netorch_version

        torch = host_torch_version()
        sys.stdout.write(f"netorch {netorch_version()}"
                         + (f" (host torch {torch})" if torch else "") + "\n")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="print netorch's version and exit")] = False) -> None:
    """Launch multi-node torch.distributed stacks (local processes or Docker), measure the
    interconnect like nccl-tests, and tune it."""


def _print_backend(name: str, why: str) -> None:
    err.print(f"[cyan]backend:[/] {name} ({escape(why)})")


WARNING = "WARNING: "  # a notice that starts so is printed as a warning


def _notice(text: str) -> None:
    if text.startswith(WARNING):
        err.print(f"[bold yellow]WARNING:[/] {escape(text.removeprefix(WARNING))}")
    else:
        err.print(f"[cyan]{escape(text)}[/]")


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="hide the nodes' log lines")]
OnOpt = Annotated[Optional[str], typer.Option(
    "--on", help="run on the warm cluster NAME (netorch up): fresh ranks in seconds")]
RunIdOpt = Annotated[Optional[str], typer.Option("--run-id", help="fix the run id (default: new)")]
BaselineOpt = Annotated[Optional[list[Path]], typer.Option(
    "--baseline", help="compare with this saved report.json, run folder or sweep folder "
    "(repeatable: several runs are repeats); exit 5 on a regression beyond the noise")]
ConfirmOpt = Annotated[int, typer.Option(
    "--confirm", min=0, help="with --baseline: while a figure looks regressed, run again up to "
    "this many times and judge the best of the runs (0: judge the first run alone)")]
ToleranceOpt = Annotated[str, typer.Option(
    "--tolerance", help="auto: the baseline's own spread (max-min over its runs, at least 20%; "
    "50% against a single run); or the percentage drop allowed, e.g. 10")]


def _baseline_gate(paths: list[Path] | None, tolerance: str, confirm: int, kind: str
                   ) -> Callable[[usecases.RunResult, str, Callable[[], usecases.RunResult], bool],
                                 None]:
    """Check ``--baseline``/``--tolerance`` now (exit 2 before anything runs); return the step
    that compares a finished run with it (re-running it up to ``confirm`` times while a figure
    looks regressed, judging the best of the runs), prints the deltas, saves baseline.json and
    exits 5 on a regression (nothing without ``--baseline``). A baseline of another ``kind``
    (train reports for a bench) is refused before the run too."""
    from orchestrator.baseline import (
        best_of,
        compare,
        delta_table,
        gate,
        load_baseline,
        parse_tolerance,
    )

    allowed = parse_tolerance(tolerance)
    if not paths:
        def no_gate(result: usecases.RunResult, unit: str,
                    rerun: Callable[[], usecases.RunResult], as_json: bool = False) -> None:
            return None

        return no_gate
    baseline = load_baseline(paths)
    if baseline.kind != kind:
        raise ConfigError(f"--baseline: {', '.join(baseline.sources)} holds {baseline.kind} "
                          f"reports, this run is {kind}; compare like with like")

    def check(result: usecases.RunResult, unit: str,
              rerun: Callable[[], usecases.RunResult], as_json: bool = False) -> None:
        matched = baseline.matching(result.report)  # a sweep's runs of this run's variant
        reports = [result.report]
        deltas = compare(result.report, matched, allowed)
        while any(d.regressed for d in deltas) and len(reports) <= confirm:
            _notice(f"baseline: below it beyond the noise; confirming with run "
                    f"{len(reports)}/{confirm}")
            again = rerun()
            if not again.ok:
                _finish(again, "a confirmation run failed")
            reports.append(again.report)
            deltas = compare(best_of(reports), matched, allowed)
        # With --json, stdout holds the report alone: the deltas go to stderr and baseline.json.
        shown = err if as_json else console
        shown.print(delta_table(deltas, matched, unit, shown.width))
        out = result.paths["json"].parent / "baseline.json"
        _writable(out.parent, lambda: out.write_text(json.dumps({
            "baseline": list(matched.sources), "baseline_runs": list(matched.run_ids),
            "runs": [r["run_id"] for r in reports], "tolerance": tolerance,
            "deltas": [d.to_dict() for d in deltas]}, indent=2) + "\n"))
        gate(deltas, matched)

    return check


@command(app, PLAN_FLAGS, BENCH_FLAGS)
def plan(
    request: SettingsRequest,
    as_json: Annotated[bool, typer.Option(
        "--json", help="print JSON instead of YAML, every node however many")] = False,
    run_id: RunIdOpt = None,
) -> None:
    """Print the plan (network, nodes, IPs, env, commands). Starts nothing.

    Past 16 nodes the YAML shows the first and last nodes only (the others differ in rank, name
    and address alone) and says how many it left out; --json prints them all.
    """
    the_plan = usecases.plan_only(request.load(), run_id)
    if as_json:
        sys.stdout.write(json.dumps(the_plan.to_dict(), indent=2) + "\n")
        return
    shown = PLAN_YAML_NODES
    if the_plan.nnodes <= shown:
        sys.stdout.write(yaml.safe_dump(the_plan.to_dict(), sort_keys=False))
        return
    nodes = (*the_plan.nodes[:shown - 1], the_plan.nodes[-1])
    data = replace(the_plan, nodes=nodes).to_dict()
    data["nodes_not_shown"] = the_plan.nnodes - shown
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    err.print(f"[dim]{the_plan.nnodes - shown} of {the_plan.nnodes} nodes not shown (ranks "
              f"{shown - 1}..{the_plan.nnodes - 2}); --json prints every node[/]")


# Nodes `netorch plan` prints as YAML; YAML of 10,000 nodes would take seconds and a terminal.
PLAN_YAML_NODES = 16


def _finish(result: usecases.RunResult, failure: str, as_json: bool = False) -> None:
    """A run's tail: its warnings, where the report is, and exit 4 when it is not ok."""
    if as_json:
        _print_json(result.report)
        if not result.ok:
            err.print(f"[bold red]error:[/] {failure}; see {result.paths['json']}")
            raise typer.Exit(4)
        return
    for warning in result.report["warnings"]:
        console.print(f"[bold yellow]WARNING:[/] {escape(warning)}")
    console.print("report: " + "  ".join(str(p) for p in result.paths.values()))
    if not result.ok:
        err.print(f"[bold red]error:[/] {failure}; see {result.paths['json']}")
        raise typer.Exit(4)


def _run_hooks(settings_prefix: str, quiet: bool) -> tuple[Hooks, list[ClusterPlan]]:
    started: list[ClusterPlan] = []

    def prefix() -> str:
        return f"{settings_prefix}-{started[0].run_id}-" if started else ""

    return Hooks(echo=_node_echo(prefix, quiet), on_backend=_print_backend,
                 on_start=started.append, on_notice=_notice), started


@command(app, PLAN_FLAGS, BENCH_FLAGS)
def bench(request: SettingsRequest, quiet: QuietOpt = False, on: OnOpt = None,
          as_json: JsonOpt = False,
          baseline: BaselineOpt = None, tolerance: ToleranceOpt = "auto", confirm: ConfirmOpt = 2,
          line_rate: Annotated[bool, typer.Option(
              "--line-rate", help="first measure single-stream and parallel TCP between ring "
              "neighbours (as the sweep does) and report busbw as a share of it")] = False,
          tcp_seconds: Annotated[float, typer.Option("--tcp-seconds", min=1.0, help="with "
                                 "--line-rate: duration of each TCP test")] = 2.0,
          tcp_streams: Annotated[int, typer.Option("--tcp-streams", min=1, help="with "
                                 "--line-rate: streams of the parallel TCP test")] = 4) -> None:
    """Run the collective benchmark: plan, start nodes, wait, collect, report, tear down.

    Exit code 0 only when every rank succeeded and no value was wrong; 5 when --baseline is
    given and a size's busbw fell below it beyond the noise.
    """
    from orchestrator.linerate import LineRateOptions, line_rate_table
    from orchestrator.report import avg_busbw, results_table

    settings = request.load()
    check_baseline = _baseline_gate(baseline, tolerance, confirm, "bench")
    hooks, _ = _run_hooks(settings.cluster.name, quiet)

    def run_once() -> usecases.RunResult:
        return usecases.run_bench(settings, hooks, on, request.asked_keys(),
                                  LineRateOptions(tcp_seconds, tcp_streams) if line_rate else None)

    with err.status("benchmark running"):
        result = run_once()
    report, the_plan = result.report, result.plan
    if as_json:
        _finish(result, f"{report['wrong_total']} wrong values", as_json=True)
        check_baseline(result, "busbw GB/s", run_once, True)
        return
    console.print(results_table(report, console.width))
    if "line_rate" in report:
        console.print(line_rate_table(report, console.width))
    from orchestrator.traffic import traffic_table

    traffic = traffic_table(report, console.width)
    if traffic is not None:
        console.print(traffic)
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
    _finish(result, f"{report['wrong_total']} wrong values")
    check_baseline(result, "busbw GB/s", run_once, False)


@command(app, PLAN_FLAGS, TRAIN_FLAGS)
def train(request: SettingsRequest,
          quiet: Annotated[bool, typer.Option("--quiet", "-q", help="hide the nodes' log lines "
                                              "(progress stays)")] = False,
          on: OnOpt = None, as_json: JsonOpt = False, baseline: BaselineOpt = None,
          tolerance: ToleranceOpt = "auto", confirm: ConfirmOpt = 2) -> None:
    """Train a small MLP with DDP: progress, checkpoints, gang restarts, metrics, a report.

    Exit code 0 when the job finished all steps (restarts included) with a finite loss; 5 when
    --baseline is given and samples/s fell below it beyond the noise.
    """
    from orchestrator.report import train_table
    from train.results import decode_progress

    settings = request.load()
    check_baseline = _baseline_gate(baseline, tolerance, confirm, "train")
    hooks, started = _run_hooks(settings.cluster.name, quiet)
    node_echo = hooks.echo
    assert node_echo is not None
    with err.status("training") as status:
        def echo(node: str, line: str) -> None:
            progress = decode_progress(line)
            if progress is None:
                node_echo(node, line)
                return
            text = (f"step {progress.get('step')}/{progress.get('steps')}  "
                    f"loss {float(progress.get('loss', 0.0)):.5f}  "
                    f"{float(progress.get('samples_per_s', 0.0)):,.0f} samples/s")
            status.update(f"run {started[0].run_id if started else ''}: {text}")
            err.print(f"[green]progress[/] {text}")

        def restarted(count: int, error: RankFailedError) -> None:
            err.print(f"[bold yellow]restart {count}/{settings.train.max_restarts}:[/] "
                      f"{escape(str(error))}; resuming from the latest checkpoint")

        result = usecases.run_train(settings, replace(hooks, echo=echo, on_restart=restarted),
                                    on, request.asked_keys())
    report = result.report
    if not as_json:
        console.print(train_table(report))
    _finish(result, "the job did not finish its steps with a finite loss", as_json)
    check_baseline(result, "samples/s", lambda: usecases.run_train(
        settings, replace(hooks, on_restart=restarted), on, request.asked_keys()), as_json)


FABRIC_FLAGS = (
    Flag("bw_bytes", "fabric.bw_bytes", _opt(str, "--bw-bytes",
                                             help="message size of the bandwidth test, e.g. 4M")),
    Flag("bw_iters", "fabric.bw_iters", _opt(int, "--bw-iters",
                                             help="timed messages per direction of a pair")),
    Flag("lat_iters", "fabric.lat_iters", _opt(int, "--lat-iters",
                                               help="timed round trips per pair (latency)")),
    Flag("schedule", "fabric.schedule", _opt(str, "--schedule", help="all (every pair, N-1 "
                                             "rounds) | bisect (N/2 pairs, then the slow "
                                             "pairs' nodes again; large N)")),
)


@command(app, PLAN_FLAGS, FABRIC_FLAGS)
def fabric(request: SettingsRequest, quiet: QuietOpt = False, on: OnOpt = None,
           as_json: JsonOpt = False) -> None:
    """Measure every pair of nodes (send/recv bandwidth, latency), N/2 disjoint pairs at a
    time, and name the slow node or link.

    Writes fabric.json, .csv, .png in OUTPUT/<run_id>/; exit 0 healthy, 5 on a suspect.
    """
    settings = request.load()
    hooks, _ = _run_hooks(settings.cluster.name, quiet)
    with err.status("measuring every pair"):
        result = usecases.run_fabric(settings, hooks, on, request.asked_keys())
    report = result.report
    if as_json:
        _print_json(report)
        if result.suspects:
            raise typer.Exit(5)
        return
    from orchestrator.fabric import fabric_table

    console.print(fabric_table(report, console.width))
    for pair in report["pairs"]:
        if pair["latency_outlier"]:
            console.print(f"[yellow]note:[/] latency {pair['a']} <-> {pair['b']} "
                          f"{pair['latency_us']:.0f} us is far above the others")
    colour = "green" if not result.suspects else "bold red"
    console.print(f"[{colour}]verdict:[/] {escape(report['verdict'])}")
    console.print("report: " + "  ".join(str(p) for p in result.paths.values()))
    if result.suspects:
        raise typer.Exit(5)


@command(app, PLAN_FLAGS, RUN_FLAGS,
         context_settings={"allow_interspersed_args": False})
def run(
    request: SettingsRequest,
    command_: Annotated[list[str], typer.Argument(
        metavar="-- COMMAND [ARGS]...", show_default=False,
        help="what every rank runs, e.g. -- python train.py --epochs 3; placeholders "
        "{node_rank} {nnodes} {nproc_per_node} {world_size} {master_addr} {master_port} "
        "{checkpoint_dir} are filled in per node")],
    env: Annotated[Optional[list[str]], typer.Option(
        "--env", "-e", help="NAME=VALUE for the job (repeatable); the plan's own variables "
        "(MASTER_ADDR, RANK, ...) are refused")] = None,
    quiet: QuietOpt = False,
    on: OnOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run YOUR training command on every node: your image, code, data and checkpoints, with
    the environment torchrun gives (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, ...).

    Fails fast naming the node and its exit code or signal; gang restarts with --max-restarts;
    logs per node and report.json under OUTPUT/<run_id>/. Exit 0 when every rank exits 0.
    """
    from orchestrator.userjob import OWNED_ENV, parse_env

    variables = parse_env(env or [], OWNED_ENV)
    settings = request.load({"run.command": list(command_),
                             **({"run.env": variables} if variables else {})})
    hooks, _ = _run_hooks(settings.cluster.name, quiet)

    def restarted(count: int, error: RankFailedError) -> None:
        err.print(f"[bold yellow]restart {count}/{settings.run.max_restarts}:[/] "
                  f"{escape(str(error))}; starting every node again")

    result = usecases.run_job(settings, replace(hooks, on_restart=restarted), on=on,
                              asked=request.asked_keys())
    report = result.report
    try:
        if as_json:
            _print_json(report)
        else:
            restarts = f", {report['restarts']} restart(s)" if report["restarts"] else ""
            console.print(f"run {report['run_id']}: every rank exited 0 on {report['nnodes']} "
                          f"node(s) x {report['nproc_per_node']} rank(s){restarts} in "
                          f"{report['elapsed_s']:.1f} s")
            console.print("report: " + "  ".join(str(p) for p in result.paths.values()))
        board = result.tensorboard
        if board is not None and settings.run.tensorboard_keep:
            err.print(f"[cyan]TensorBoard keeps serving {board.url} (logs in {board.logdir}); "
                      "Ctrl-C to stop[/]")
            try:
                board.serve_until_interrupted()
            except KeyboardInterrupt:
                err.print("TensorBoard stopped")
    finally:
        if result.tensorboard is not None:
            result.tensorboard.stop()


@command(app, PLAN_FLAGS, _exclude(RUN_FLAGS, "max_restarts"))
def up(
    request: SettingsRequest,
    name: Annotated[str, typer.Option("--name", help="the cluster's name (3-32 of a-z, 0-9, -)")],
    idle_timeout: Annotated[float, typer.Option(
        "--idle-timeout", help="seconds without a job after which the nodes go away (0: never)")] = 1800.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the cluster as JSON (as "
                                          "netorch ls --json lists it)")] = False,
) -> None:
    """Start a WARM cluster: network and nodes up, torch imported, idle. Then
    `netorch bench|train|run --on NAME` forks fresh ranks on it in seconds; `netorch ls` lists
    clusters; `netorch down --run NAME` removes one."""
    settings = request.load()
    with err.status(f"starting warm cluster {name}"):
        info = usecases.up(settings, name, idle_timeout, Hooks(on_notice=_notice))
    if as_json:
        from dataclasses import asdict

        _print_json(asdict(info))
        return
    link = f", link {escape(info.link)}" if info.link else ""
    console.print(f"cluster {info.name}: {info.nodes} node(s) up on {info.subnet} (MTU {info.mtu})"
                  f"{link}, image {escape(info.image)}, idle timeout {info.idle_timeout_s:.0f} s")
    console.print(f"run on it with --on {info.name}; remove it with netorch down --run {info.name}")


@command(app, CONFIG_FLAGS)
def ls(request: SettingsRequest,
       as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """List warm clusters (netorch up); expired ones are removed."""
    from dataclasses import asdict

    found = usecases.clusters(request.load())
    if as_json:
        sys.stdout.write(json.dumps([asdict(c) for c in found], indent=2) + "\n")
        return
    console.print(clusters_table(found, console.width))


def clusters_table(found: Sequence[usecases.ClusterInfo], width: int) -> Any:
    """``netorch ls``'s table, fitted to ``width`` (orchestrator/tables.py)."""
    from orchestrator.tables import Column, fit_table

    columns = [Column("name", priority=3), Column("state", priority=3),
               Column("nodes", "right", 2), Column("subnet", priority=2),
               Column("mtu", "right", 1), Column("image", priority=1),
               Column("idle timeout", "right"), Column("link")]
    rows = [[escape(c.name), c.state + (" (removed)" if c.state == "expired" else ""),
             str(c.nodes), c.subnet, str(c.mtu), escape(c.image), f"{c.idle_timeout_s:.0f} s",
             escape(c.link) or "-"] for c in found]
    return fit_table("warm clusters", columns, rows, width)


SOCKET_PRESET_HELP = (
    "gloo: env.GLOO_SOCKET_IFNAME = the interface listed 1, 2, 4 times",
    "nccl: env.NCCL_SOCKET_NTHREADS = 1,2,4 x env.NCCL_NSOCKS_PERTHREAD = 1,4",
)


def _comma_items(text: str, what: str) -> list[str]:
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise ConfigError(f"{what}: {text!r} names nothing; give a comma list, e.g. 1500,9000")
    return list(dict.fromkeys(items))


@command(app, _exclude(PLAN_FLAGS, "backend", "mtu"), BENCH_FLAGS)
def sweep(
    request: SettingsRequest,
    mtus: Annotated[Optional[str], typer.Option("--mtu", help="comma list of MTUs to compare, e.g. 1500,4000,9000 (= --vary network.mtu=...; default 1500,9000 when nothing else is varied)")] = None,
    vary: Annotated[Optional[list[str]], typer.Option("--vary", help="KEY=V1,V2: compare these values of any setting (network.mtu, network.link.rate, env.NCCL_SOCKET_NTHREADS, env.GLOO_SOCKET_IFNAME, cluster.procs_per_node, cluster.dist_backend, bench.blocking, ...); a JSON list for values with commas: 'env.GLOO_SOCKET_IFNAME=[\"eth0\",\"eth0,eth0\"]'; repeatable: the sweep runs every combination")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="sockets: the socket parallelism of the run's backend: " + "; ".join(SOCKET_PRESET_HELP))] = None,
    repeats: Annotated[int, typer.Option("--repeats", "-r", min=1, help="runs per variant, interleaved")] = 3,
    link_rate: Annotated[Optional[str], typer.Option("--link-rate", help="comma list of emulated link rates (tc tbf), e.g. 1gbit,10gbit; 'none' = unshaped (= --vary network.link.rate=...)")] = None,
    tcp_seconds: Annotated[float, typer.Option("--tcp-seconds", min=1.0, help="duration of each TCP baseline test (whole seconds with iperf3)")] = 2.0,
    tcp_streams: Annotated[int, typer.Option("--tcp-streams", min=1, help="streams of the parallel TCP test")] = 4,
    tcp_pairs: Annotated[int, typer.Option("--tcp-pairs", min=1, help="ring neighbour pairs measured per run")] = 1,
    fresh: Annotated[bool, typer.Option("--fresh", help="new containers for every run instead of "
                                        "one warm cluster per variant")] = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Compare settings on the Docker backend (MTU, link rate, NCCL/gloo variables, any key):
    interleaved repeats, verified variants, a TCP line-rate baseline, a table, CSV/JSON, a plot
    and a recommendation per varied setting.

    Writes OUTPUT/sweep-<id>/. Exit 0 when every run succeeded (a recommendation of "no
    significant difference" is a result, not a failure); 4 when a run's variant could not be
    verified (its MTU, or a rank's environment).
    """
    from orchestrator.sweep import Axis, parse_vary, sockets_preset_for, sweep_table, timing_line

    axes: list[Axis] = []
    if mtus is not None:
        mtu_list: list[int] = []
        for item in _comma_items(mtus, "--mtu"):
            if not item.isdigit():
                raise ConfigError(f"--mtu: {item!r} is not a number; write e.g. 1500,9000")
            mtu_list.append(int(item))
        axes.append(Axis("network.mtu", tuple(mtu_list)))
    if link_rate is not None:
        axes.insert(0, parse_vary(f"network.link.rate={link_rate}"))
    axes += [parse_vary(item) for item in vary or ()]
    if preset is not None:
        if preset != "sockets":
            raise ConfigError(f"--preset: {preset!r} is not a preset; the one preset is sockets")
        axes += sockets_preset_for(request.load({"backend": "docker"}))
    if not axes or all(a.key == "network.link.rate" for a in axes):
        axes.append(Axis("network.mtu", (1500, 9000)))

    def echo(node: str, line: str) -> None:
        if not quiet:
            err.print(f"[dim]{escape(node):>28} |[/] {escape(line)}")

    started = time.monotonic()

    def on_point(point: Any, run_id: str, total: int) -> None:
        done = point.index
        eta = ""
        if done:  # the runs so far say how long the rest will take
            left = (time.monotonic() - started) / done * (total - done)
            eta = f", about {left / 60:.0f} min left" if left >= 90 else f", about {left:.0f} s left"
        err.print(f"[cyan]sweep run {done + 1} of {total}:[/] {escape(point.label)}, repeat "
                  f"{point.repeat + 1} (run {run_id}{eta})")

    result = usecases.sweep(request, axes, repeats, tcp_seconds, tcp_streams, tcp_pairs,
                            Hooks(echo=echo, on_notice=_notice), on_point, fresh)
    if as_json:
        _print_json(result.summary)
        if result.problems:
            raise typer.Exit(4)
        return
    console.print(sweep_table(result.summary, console.width))
    for line in result.problems:
        console.print(f"[bold yellow]WARNING:[/] {escape(line)}")
    for verdict in result.summary["recommendations"]:
        console.print(f"[bold]recommendation:[/] {escape(verdict['text'])}")
    if (timing := timing_line(result.summary)) is not None:
        console.print(escape(timing))
    console.print("report: " + "  ".join(str(p) for p in result.paths.values()))
    if result.problems:
        raise typer.Exit(4)


@command(app, CONFIG_FLAGS)
def compare(
    request: SettingsRequest,
    runs: Annotated[list[str], typer.Argument(
        help="two or more runs: a report.json, a run folder, or a run id under the output "
        "folder (settings' output, default runs/)", show_default=False)],
    out: Annotated[Path, typer.Option("--output", "-o", help="folder for compare.html, "
                                      "compare.png and compare.json")] = Path("compare"),
    as_json: Annotated[bool, typer.Option(
        "--json", help="print compare.json (runs, busbw deltas, differences) on stdout")] = False,
) -> None:
    """Compare runs: overlaid busbw curves, a delta table and a diff of everything that differed
    (settings, env, MTU, versions, hosts, line rate) in one self-contained compare.html, plus
    compare.png and compare.json."""
    from orchestrator.compare import load_reports, write_compare

    reports = load_reports(runs, request.load().output)
    try:
        paths = write_compare(reports, out)
    except OutputError as e:  # nothing was measured: a folder it cannot write is a bad -o
        raise ConfigError(f"--output {out}: cannot write {e.path} ({e.reason}); choose a "
                          "writable directory") from None
    if as_json:
        sys.stdout.write(paths["json"].read_text(encoding="utf-8"))
        return
    console.print("compare: " + "  ".join(str(p) for p in paths.values()))


@command(app, CONFIG_FLAGS, _exclude(PLAN_FLAGS, "config", "set_", "backend", "output",
                                     "dist_backend"), fixed={"backend": "docker"})
def doctor(
    request: SettingsRequest,
    run: Annotated[Optional[str], typer.Option("--run", help="diagnose this running run instead of a plan")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the checks as JSON")] = False,
) -> None:
    """Diagnose the network and containers: reachability, aliases, interface, MTU, /dev/shm,
    memlock, GPUs, master port. Without --run, the plan comes up with sleeping containers and is
    torn down afterwards. Exit 1 when any check fails.
    """
    from orchestrator.doctor import doctor_report

    result = usecases.doctor(request.load(), run, Hooks(on_notice=_notice))
    checks, bad = result.checks, result.failed
    if as_json:
        sys.stdout.write(json.dumps([c.__dict__ for c in checks], indent=2) + "\n")
    else:
        table, problems = doctor_report(checks, result.scope, console.width)
        console.print(table)
        for line in problems:
            console.print(line)
        console.print(f"{len(checks)} checks: {len(bad)} failed, "
                      f"{sum(c.status == 'warn' for c in checks)} warnings")
    if bad:
        raise typer.Exit(1)


@command(app, CONFIG_FLAGS, (PLAN_FLAGS[2],))
def down(
    request: SettingsRequest,
    run: Annotated[Optional[str], typer.Option("--run", help="remove the resources of this run id")] = None,
    all_: Annotated[bool, typer.Option("--all", help="remove the resources of every netorch run")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print what was removed as JSON")] = False,
) -> None:
    """Remove what netorch left behind: containers and networks labelled io.netorch.managed=true
    (docker, the default) or processes carrying a run id (--backend process)."""
    if (run is None) == (not all_):
        raise ConfigError("give exactly one of --run ID or --all")
    removed = usecases.down(request.load(), None if all_ else run)
    if as_json:
        _print_json({"run": None if all_ else run, "removed": list(removed)})
        return
    for item in removed:
        console.print(f"removed {escape(item)}")
    scope = "every netorch run" if all_ else f"run {run}"
    console.print(f"{len(removed)} resource(s) of {escape(scope)} removed")


RenderCommandArg = Annotated[Optional[list[str]], typer.Argument(
    metavar="[-- COMMAND [ARGS]...]", show_default=False,
    help="render YOUR job (as netorch run would start it) instead of the benchmark")]
RenderEnvOpt = Annotated[Optional[list[str]], typer.Option("--env", "-e",
                                                           help="NAME=VALUE for the job")]
RenderJsonOpt = Annotated[bool, typer.Option("--json", help="print the written files as JSON "
                                             "({\"files\": [...]})")]
RENDER_FLAGS = (_exclude(PLAN_FLAGS, "backend", "output"), BENCH_FLAGS,
                _exclude(RUN_FLAGS, "max_restarts"))


def _render_request(request: SettingsRequest, command_: list[str] | None,
                    env: list[str] | None) -> tuple[Any, Any]:
    from orchestrator.userjob import OWNED_ENV, parse_env

    variables = parse_env(env or [], OWNED_ENV)
    extra: dict[str, Any] = {"run.command": list(command_)} if command_ else {}
    if variables:
        extra["run.env"] = variables
    settings = request.load(extra)
    return settings, usecases.render_workload(settings)


@command(render_app, *RENDER_FLAGS, name="compose",
         context_settings={"allow_interspersed_args": False})
def render_compose_cmd(
    request: SettingsRequest,
    out_dir: Annotated[Path, typer.Option("--output", "-o", help="directory for docker-compose.yml")],
    command_: RenderCommandArg = None,
    env: RenderEnvOpt = None,
    run_id: RunIdOpt = None,
    as_json: RenderJsonOpt = False,
) -> None:
    """Write the Docker plan as OUTPUT/docker-compose.yml (docker-compose 1.27+). Starts nothing.

    With `-- COMMAND`, the file runs your job (image, command, mounts, env) instead of the
    benchmark."""
    settings, work = _render_request(request, command_, env)
    path = _writable(out_dir, lambda: usecases.render_compose(settings, out_dir, run_id, work))
    if as_json:
        _print_json({"files": [str(path)]})
        return
    console.print(str(path))


@command(render_app, *RENDER_FLAGS, name="k8s",
         context_settings={"allow_interspersed_args": False})
def render_k8s_cmd(
    request: SettingsRequest,
    out_dir: Annotated[Path, typer.Option("--output", "-o", help="directory for netorch-<run_id>.yaml")],
    command_: RenderCommandArg = None,
    env: RenderEnvOpt = None,
    flavor: Annotated[str, typer.Option("--flavor", help="indexed-job | pytorchjob | jobset")] = "indexed-job",
    namespace: Annotated[Optional[str], typer.Option("--namespace", help="write this namespace into every object")] = None,
    run_id: RunIdOpt = None,
    master_wait: Annotated[Optional[int], typer.Option(
        "--master-wait", metavar="SECONDS",
        help="how long each pod's readiness step waits for the master's name and port "
        "[default: 600]")] = None,
    as_json: RenderJsonOpt = False,
) -> None:
    """Write the plan as Kubernetes objects in OUTPUT/netorch-<run_id>.yaml. Starts nothing.

    Every pod first waits (init container wait-master) until the master's DNS name resolves
    and its port accepts; with network.internal (the default) a NetworkPolicy admits only the
    job's own pods. With `-- COMMAND`, the objects run your job; --mount host paths become
    hostPath volumes and named volumes PersistentVolumeClaims of that name."""
    settings, work = _render_request(request, command_, env)
    paths = _writable(out_dir, lambda: usecases.render_k8s(settings, out_dir, flavor, namespace,
                                                           run_id, work, master_wait))
    if as_json:
        _print_json({"files": [str(p) for p in paths]})
        return
    for path in paths:
        console.print(str(path))


@command(image_app, name="build")
def image_build(
    request: SettingsRequest,
    offline: Annotated[bool, typer.Option(
        "--offline/--online",
        help="offline: mmdebstrap base + torch wheels from the host (no registry); online: a "
        "CUDA runtime base and the pinned torch's CUDA build from PyTorch's index")] = True,
    tag: Annotated[str, typer.Option("--tag", help="image tag")] = "netorch:latest",
    base_image: Annotated[Optional[str], typer.Option("--base-image", help="override the base image")] = None,
    force: Annotated[bool, typer.Option("--force", help="rebuild without the layer cache")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the summary")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print what would be built (base, "
                                          "build arguments, torch, wheels); build nothing")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (with --dry-run: what "
                                          "would be built)")] = False,
) -> None:
    """Build the training image through the Docker SDK; a no-op when its inputs are unchanged."""
    from orchestrator.backends.docker import connect
    from orchestrator.image import build_image, image_build_spec

    if dry_run:
        spec = image_build_spec(tag=tag, offline=offline, base_image=base_image)
        if as_json:
            _print_json(spec.to_dict())
            return
        console.print(f"would build {spec.tag} ({spec.mode}) from {spec.base_image}")
        console.print(f"  torch: {spec.torch}")
        for key, value in spec.build_args:
            console.print(f"  build arg {key}={escape(value)}")
        if spec.wheelhouse is not None:
            console.print(f"  wheels in {spec.wheelhouse}: " + (", ".join(spec.wheels) or
                          "none yet (pip downloads them on the host first)"))
        return

    def progress(line: str) -> None:
        if not quiet:
            err.print(f"[dim]  {escape(line)}[/]")

    with connect() as client:
        result = build_image(client, tag=tag, offline=offline, base_image=base_image,
                             force=force, progress=progress)
    if as_json:
        from dataclasses import asdict

        _print_json(asdict(result))
        return
    state = "up to date" if result.up_to_date else "built"
    console.print(f"{result.tag}: {state} ({result.image_id[:19]}, {result.seconds:.1f} s)")


def _swarm_hosts(request: SettingsRequest) -> list[Any]:
    settings = request.load()
    if not settings.hosts:
        raise ConfigError("hosts: no [[hosts]] configured; list the Docker hosts (the first one "
                          "becomes the swarm manager) in the config file")
    return list(settings.hosts)


@command(swarm_app, CONFIG_FLAGS, name="init")
def swarm_init_cmd(
    request: SettingsRequest,
    advertise_addr: Annotated[str, typer.Option("--advertise-addr", help="manager address the other hosts reach")],
    listen_addr: Annotated[Optional[str], typer.Option("--listen-addr", help="default ADVERTISE:2377")] = None,
) -> None:
    """Make the first configured host a swarm manager (docker swarm init). Idempotent."""
    from orchestrator.backends.docker import connect_host
    from orchestrator.backends.swarm import swarm_init

    first = _swarm_hosts(request)[0]
    with connect_host(first) as client:
        node_id = swarm_init(client, advertise_addr, listen_addr)
    console.print(f"host {escape(first.name)} manages the swarm (node {node_id[:12]})")


@command(swarm_app, CONFIG_FLAGS, name="join")
def swarm_join_cmd(
    request: SettingsRequest,
    host: Annotated[Optional[str], typer.Option("--host", help="host to join (default: every host but the first)")] = None,
    advertise_addr: Annotated[Optional[str], typer.Option("--advertise-addr", help="the joining host's own address (with --host)")] = None,
) -> None:
    """Join the other configured hosts to the first one's swarm as workers (docker swarm join)."""
    from orchestrator.backends.docker import connect_host
    from orchestrator.backends.swarm import swarm_join

    hosts = _swarm_hosts(request)
    targets = [h for h in hosts[1:] if host is None or h.name == host]
    if host is not None and not targets:
        raise ConfigError(f"--host {host!r} is not one of the joining hosts: "
                          + ", ".join(h.name for h in hosts[1:]))
    if advertise_addr and len(targets) != 1:
        raise ConfigError("--advertise-addr names one host's address; give --host too")
    with connect_host(hosts[0]) as manager:
        for target in targets:
            with connect_host(target) as worker:
                node_id = swarm_join(manager, worker, advertise_addr)
            console.print(f"host {escape(target.name)} is in the swarm (node {node_id[:12]})")


def main() -> None:
    """Console-script entry point: run the command, then leave without finalizing the interpreter.

    Tearing down an interpreter that loaded docker, pydantic, rich and matplotlib takes 0.24 s on
    our 2-core host, after the report is written and before the shell gets its prompt back. The
    command has written and closed every file it makes by the time it returns; its threads are
    daemons (log readers, the plot's head start) or already joined. So: atexit handlers, flush,
    ``os._exit`` with the status ``sys.exit`` would have given (the launcher's ``exit_now``).
    """
    try:
        app()
        code: object = 0
    except SystemExit as e:
        code = e.code
    if code is not None and not isinstance(code, int):
        err.print(str(code))
        code = 1
    from train.launch import exit_now

    exit_now(code or 0)


if __name__ == "__main__":
    main()
