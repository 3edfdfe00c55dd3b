"""Wall time of one job end to end: ``netorch bench --backend docker`` vs ``docker-compose up``.

Both run the same plan (4 nodes x 1 rank, all_reduce, small sweep) built from the same settings:
netorch through its CLI (a subprocess, so its own start-up counts), compose from netorch's own
rendered file (rendered before the clock starts, as a committed file would be) timed over
``up --abort-on-container-exit --exit-code-from master`` + ``logs master`` + ``down -v``.
Pairs alternate which side goes first, so drift (page cache, other load) hits both.

Where the time goes comes from the daemon's own event stream (network create, container
create/start/die/destroy, network destroy) for each run, relative to the moment the command was
launched.

    python benchmarks/launch_vs_compose.py [--pairs 3] [--nodes 4] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from orchestrator.plan import build_plan  # noqa: E402
from orchestrator.render.compose import compose_project, service_name, write_compose  # noqa: E402
from orchestrator.settings import load_settings  # noqa: E402
from train.results import decode_result_lines  # noqa: E402

NETORCH_SUBNET = "10.206.0.0/24"
COMPOSE_SUBNET = "10.207.0.0/24"


@dataclass
class Run:
    """One timed run of one side."""

    side: str
    run_id: str
    wall_s: float
    ok: bool
    phases: dict[str, float] = field(default_factory=dict)
    note: str = ""


def _netorch_bin() -> str:
    here = Path(sys.executable).parent / "netorch"
    found = str(here) if here.exists() else shutil.which("netorch")
    if not found:
        raise SystemExit("netorch is not installed in this environment (pip install -e .)")
    return found


def _bench_flags(args: argparse.Namespace) -> list[str]:
    return ["-n", str(args.nodes), "--ops", "all_reduce", "-B", args.min_bytes, "-E", args.max_bytes,
            "-w", str(args.warmup), "-i", str(args.iters)]


def _overrides(args: argparse.Namespace, subnet: str) -> dict[str, Any]:
    return {"cluster": {"nodes": args.nodes}, "network": {"subnet": subnet},
            "bench": {"ops": ["all_reduce"], "min_bytes": args.min_bytes,
                      "max_bytes": args.max_bytes, "warmup": args.warmup, "iters": args.iters}}


def _events(client: Any, run_id: str, since: float, until: float) -> list[tuple[float, str, str]]:
    """(time, type, action) of the daemon events whose resource name carries ``run_id``."""
    out = []
    for ev in client.events(since=dt.datetime.fromtimestamp(since - 1, dt.timezone.utc),
                            until=dt.datetime.fromtimestamp(until + 1, dt.timezone.utc),
                            decode=True, filters={"type": ["container", "network"]}):
        name = ev.get("Actor", {}).get("Attributes", {}).get("name", "")
        if run_id in name:
            out.append((ev["timeNano"] / 1e9, ev["Type"], ev["Action"] + ":" + name))
    return sorted(out)


def _phases(events: list[tuple[float, str, str]], t0: float, t_end: float) -> dict[str, float]:
    """Split a run at daemon events: before the first, create+start, job, teardown, after."""
    def first(kind: str, action: str) -> float | None:
        ts = [t for t, k, a in events if k == kind and a.split(":")[0] == action]
        return min(ts) if ts else None

    def last(kind: str, action: str) -> float | None:
        ts = [t for t, k, a in events if k == kind and a.split(":")[0] == action]
        return max(ts) if ts else None

    net_create = first("network", "create")
    last_start = last("container", "start")
    first_die = first("container", "die")
    last_gone = last("network", "destroy") or last("container", "destroy")
    if None in (net_create, last_start, first_die, last_gone):
        return {}
    assert net_create and last_start and first_die and last_gone
    return {
        "before daemon": net_create - t0,
        "create+start": last_start - net_create,
        "job (in containers)": first_die - last_start,
        "teardown": last_gone - first_die,
        "after daemon": t_end - last_gone,
    }


def run_netorch(args: argparse.Namespace, client: Any, out: Path) -> Run:
    cmd = [_netorch_bin(), "bench", "--backend", "docker", "-q", *_bench_flags(args),
           "--subnet", NETORCH_SUBNET, "-o", str(out)]
    t0 = time.time()
    env = {**os.environ, "COLUMNS": "400"}  # no wrapped lines in rich's output
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.timeout,
                          env=env)
    t1 = time.time()
    text = proc.stdout + proc.stderr
    m = re.search(r"(\d{8}-\d{6}-[0-9a-f]{4})/report\.json", text)
    run_id = m.group(1) if m else "?"
    ok = proc.returncode == 0 and "wrong: 0" in text
    note = "" if ok else f"rc={proc.returncode}: {text[-400:]!r}"
    phases = _phases(_events(client, run_id, t0, t1), t0, t1) if m else {}
    el = re.search(r"elapsed: ([0-9.]+) s", text)
    if el:
        phases["netorch 'elapsed'"] = float(el.group(1))
    return Run("netorch", run_id, t1 - t0, ok, phases, note)


def run_compose(args: argparse.Namespace, client: Any, out: Path) -> Run:
    run_id = "bc-" + secrets.token_hex(4)
    plan = build_plan(load_settings(REPO / "configs" / "default.toml",
                                    _overrides(args, COMPOSE_SUBNET)), run_id, "docker")
    file = write_compose(plan, out / run_id)
    base = ["docker-compose", "-p", compose_project(plan), "-f", str(file)]
    master = service_name(plan.master)
    t0 = time.time()
    up = subprocess.run([*base, "up", "--abort-on-container-exit", "--exit-code-from", master],
                        capture_output=True, text=True, timeout=args.timeout)
    t_up = time.time()
    logs = subprocess.run([*base, "logs", "--no-color", master], capture_output=True, text=True,
                          timeout=120)
    t_logs = time.time()
    down = subprocess.run([*base, "down", "-v"], capture_output=True, text=True, timeout=300)
    t1 = time.time()
    doc = decode_result_lines(logs.stdout.splitlines())
    ok = up.returncode == 0 and down.returncode == 0 and doc is not None and doc["wrong_total"] == 0
    note = "" if ok else f"up rc={up.returncode} down rc={down.returncode}: {up.stderr[-400:]!r}"
    phases = _phases(_events(client, run_id, t0, t1), t0, t1)
    phases.update({"compose up": t_up - t0, "compose logs": t_logs - t_up, "compose down": t1 - t_logs})
    return Run("compose", run_id, t1 - t0, ok, phases, note)


def cli_startup(runs: int = 3) -> float:
    """Median wall time of ``netorch --help`` (interpreter + imports + Typer)."""
    times = []
    for _ in range(runs):
        t0 = time.time()
        subprocess.run([_netorch_bin(), "--help"], capture_output=True, check=True)
        times.append(time.time() - t0)
    return statistics.median(times)


def compose_startup(runs: int = 3) -> float:
    """Median wall time of ``docker-compose version``."""
    times = []
    for _ in range(runs):
        t0 = time.time()
        subprocess.run(["docker-compose", "version"], capture_output=True, check=True)
        times.append(time.time() - t0)
    return statistics.median(times)


JOB = "job (in containers)"


def _overhead(run: Run) -> str:
    return f"{run.wall_s - run.phases[JOB]:.2f}" if JOB in run.phases else "-"


def report(runs: list[Run], args: argparse.Namespace, startup: tuple[float, float]) -> str:
    lines = []
    lines.append("| pair | netorch s | compose s | netorch/compose | netorch overhead s | "
                 "compose overhead s | ok |")
    lines.append("|---:|---:|---:|---:|---:|---:|---|")
    pairs = [(runs[i], runs[i + 1]) for i in range(0, len(runs) - 1, 2)]
    for i, (a, b) in enumerate(pairs, 1):
        n, c = (a, b) if a.side == "netorch" else (b, a)
        first = a.side
        lines.append(f"| {i} ({first} first) | {n.wall_s:.2f} | {c.wall_s:.2f} | "
                     f"{n.wall_s / c.wall_s:.2f} | {_overhead(n)} | {_overhead(c)} | "
                     f"{n.ok and c.ok} |")
    nets = [r.wall_s for r in runs if r.side == "netorch"]
    comps = [r.wall_s for r in runs if r.side == "compose"]
    mn, mc = statistics.median(nets), statistics.median(comps)
    on = [r.wall_s - r.phases[JOB] for r in runs if r.side == "netorch" and JOB in r.phases]
    oc = [r.wall_s - r.phases[JOB] for r in runs if r.side == "compose" and JOB in r.phases]
    med_o = (f"**{statistics.median(on):.2f}** | **{statistics.median(oc):.2f}**"
             if on and oc else "- | -")
    lines.append(f"| **median** | **{mn:.2f}** | **{mc:.2f}** | **{mn / mc:.2f}** | {med_o} | |")
    lines.append("")
    lines.append("overhead = wall time minus the job phase (last container start to first exit), "
                 "i.e. what the launcher itself costs; the job phase is the same work on both sides "
                 "but swings with host load.")
    lines.append("")
    lines.append(f"Start-up alone (median of 3): `netorch --help` {startup[0]:.2f} s, "
                 f"`docker-compose version` {startup[1]:.2f} s.")
    lines.append("")
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r.phases if k not in keys]
    lines.append("Median phase times (s), from daemon events relative to the command's launch:")
    lines.append("")
    lines.append("| phase | netorch | compose |")
    lines.append("|---|---:|---:|")
    for k in keys:
        vals = {side: [r.phases[k] for r in runs if r.side == side and k in r.phases]
                for side in ("netorch", "compose")}
        cell = {s: (f"{statistics.median(v):.2f}" if v else "-") for s, v in vals.items()}
        lines.append(f"| {k} | {cell['netorch']} | {cell['compose']} |")
    bad = [r for r in runs if not r.ok]
    for r in bad:
        lines.append(f"\nFAILED {r.side} {r.run_id}: {r.note}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--min-bytes", default="64K")
    p.add_argument("--max-bytes", default="1M")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--append", type=Path, help="append the results as a markdown section to FILE")
    args = p.parse_args()
    if shutil.which("docker-compose") is None:
        raise SystemExit("docker-compose is not installed")
    client = docker.from_env()
    load_before = os.getloadavg()[0]
    startup = (cli_startup(), compose_startup())
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="netorch-bench-") as tmp:
        out = Path(tmp)
        for i in range(args.pairs):
            order = (run_netorch, run_compose) if i % 2 == 0 else (run_compose, run_netorch)
            for fn in order:
                r = fn(args, client, out)
                runs.append(r)
                print(f"pair {i + 1}: {r.side:8s} {r.wall_s:6.2f} s ok={r.ok} run={r.run_id} "
                      + " ".join(f"{k}={v:.2f}" for k, v in r.phases.items()), flush=True)
    table = report(runs, args, startup)
    table += (f"\n\nHost 1-min load average: {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end "
              f"({os.cpu_count()} cores; the job phase stretches with it).")
    print()
    print(table)
    if args.append:
        cmd = "python " + " ".join(shlex.quote(a) for a in
                                   [str(Path(sys.argv[0]).relative_to(REPO) if Path(sys.argv[0]).is_absolute() else sys.argv[0]), *sys.argv[1:]])
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        section = (f"\n## launch_vs_compose: netorch bench --backend docker vs docker-compose up ({when})\n\n"
                   f"Command: `{cmd}` (host: {os.cpu_count()} cores; {args.nodes} nodes x 1 rank, "
                   f"all_reduce {args.min_bytes}..{args.max_bytes}, warmup {args.warmup}, "
                   f"iters {args.iters}; target netorch <= 0.6 x compose)\n\n{table}\n")
        with args.append.open("a", encoding="utf-8") as fh:
            fh.write(section)


if __name__ == "__main__":
    main()
