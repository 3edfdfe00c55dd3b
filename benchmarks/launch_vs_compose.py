"""Cold wall time of one 4-node job: ``netorch bench --backend docker`` vs a hand-written compose file.

The baseline is what a user writes by hand from the seed guide's distributed-training recipe:
``benchmarks/seed_compose/docker-compose.yml`` (4 services on a fixed-subnet bridge, same image
``netorch:latest``) running ``benchmarks/seed_compose/allreduce.py`` (a plain torch.distributed
script: env://, gloo, 1 MiB float32 all_reduce, 3 warmup + 10 timed iterations). Not netorch's own
rendered compose file: that carries netorch's in-node costs and would hide them.

One run alternates, for ``--pairs N`` pairs, these sides (the order reversed in every other pair so
drift from other load hits each side in each position):

- netorch: ``netorch bench --backend docker --nodes 4 --ops all_reduce -B 1M -E 1M -w 3 -i 10
  --no-check -q -o TMP`` as a subprocess, whole command timed (``-o`` only keeps reports out of the
  repository's ``runs/``);
- compose: ``docker-compose -p UNIQUE -f .../docker-compose.yml up --abort-on-container-exit
  --exit-code-from master`` then ``down -v``, both timed (the hand-written flow needs both); the
  time of ``up`` alone is reported too;
- torchrun (``--with-torchrun``): the netorch command with ``--set cluster.launcher=torchrun``,
  which shows what the in-node launcher saves.

A run fails when its command exits non-zero, times out or leaves a container or network behind;
a failed run is listed and left out of the medians, and the script then exits 1. Where the time
goes comes from the daemon's event stream (network create, container start/die, network destroy)
relative to the launch of the command.

    python benchmarks/launch_vs_compose.py [--pairs 3] [--with-torchrun] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import docker

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "benchmarks" / "seed_compose" / "docker-compose.yml"
COMPOSE_SERVICES = ("master", "worker-1", "worker-2", "worker-3")
NETORCH_ARGS = ("bench", "--backend", "docker", "--nodes", "4", "--ops", "all_reduce",
                "-B", "1M", "-E", "1M", "-w", "3", "-i", "10", "--no-check", "-q")
TORCHRUN_ARGS = ("--set", "cluster.launcher=torchrun")
LABEL_NETORCH_RUN = "io.netorch.run"  # orchestrator.plan.LABEL_RUN; not imported: this script is a user
LABEL_COMPOSE_PROJECT = "com.docker.compose.project"
RUN_ID = re.compile(r"\b(\d{8}-\d{6}-[0-9a-f]{4})\b")
SIDES = ("netorch", "compose", "torchrun")
JOB = "job (in containers)"


@dataclass
class Run:
    """One timed run of one side; ``wall_s`` is the whole flow (compose: up + down)."""

    side: str
    pair: int
    position: int
    run_id: str
    wall_s: float
    ok: bool
    up_s: float | None = None
    down_s: float | None = None
    phases: dict[str, float] = field(default_factory=dict)
    note: str = ""


def _netorch_bin() -> str:
    here = Path(sys.executable).parent / "netorch"
    found = str(here) if here.exists() else shutil.which("netorch")
    if not found:
        raise SystemExit("netorch is not installed in this environment; run `pip install -e .`")
    return found


def _run(cmd: list[str], timeout: float) -> tuple[int, str, bool]:
    """(exit code, stdout+stderr, timed out). On timeout SIGINT first, so netorch tears down."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "COLUMNS": "200"})
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out, False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        return proc.returncode, out, True


def _events(client: Any, key: str, since: float, until: float) -> list[tuple[float, str, str]]:
    """(time, type, action) of the daemon's container/network events whose name carries ``key``."""
    out = []
    for ev in client.events(since=dt.datetime.fromtimestamp(since - 1, dt.timezone.utc),
                            until=dt.datetime.fromtimestamp(until + 1, dt.timezone.utc),
                            decode=True, filters={"type": ["container", "network"]}):
        name = ev.get("Actor", {}).get("Attributes", {}).get("name", "")
        if key in name:
            out.append((ev["timeNano"] / 1e9, ev["Type"], ev["Action"]))
    return sorted(out)


def _phases(events: list[tuple[float, str, str]], t0: float, t_end: float) -> dict[str, float]:
    """Split a run at daemon events: before the first, create+start, job, teardown, after."""
    def times(kind: str, action: str) -> list[float]:
        return [t for t, k, a in events if k == kind and a == action]

    creates, starts, dies = times("network", "create"), times("container", "start"), times("container", "die")
    gone = times("network", "destroy") or times("container", "destroy")
    if not (creates and starts and dies and gone):
        return {}
    return {
        "before daemon": min(creates) - t0,
        "create+start": max(starts) - min(creates),
        JOB: min(dies) - max(starts),
        "teardown": max(gone) - min(dies),
        "after daemon": t_end - max(gone),
    }


def _leftovers(client: Any, label: str, value: str) -> list[str]:
    """Containers and networks still carrying ``label=value`` (a clean run leaves none)."""
    flt = {"label": f"{label}={value}"}
    return ([f"container {c.name}" for c in client.containers.list(all=True, filters=flt)]
            + [f"network {n.name}" for n in client.networks.list(filters=flt)])


def run_netorch(side: str, client: Any, out: Path, timeout: float) -> Run:
    """Time one ``netorch bench`` (with the torchrun launcher for side ``torchrun``)."""
    cmd = [_netorch_bin(), *NETORCH_ARGS, "-o", str(out)]
    if side == "torchrun":
        cmd += TORCHRUN_ARGS
    t0 = time.time()
    rc, text, timed_out = _run(cmd, timeout)
    t1 = time.time()
    m = RUN_ID.search(text)
    run_id = m.group(1) if m else "?"
    notes = []
    if timed_out:
        notes.append(f"timed out after {timeout:.0f} s")
    if rc != 0:
        notes.append(f"exit {rc}: {text[-600:]!r}")
    if m:
        left = _leftovers(client, LABEL_NETORCH_RUN, run_id)
        if left:
            notes.append("left behind: " + ", ".join(left))
            subprocess.run([_netorch_bin(), "down", "--run", run_id], capture_output=True)
    elif rc == 0:
        notes.append(f"no run id in the output: {text[-600:]!r}")
    phases = _phases(_events(client, run_id, t0, t1), t0, t1) if m else {}
    return Run(side, 0, 0, run_id, t1 - t0, not notes, phases=phases, note="; ".join(notes))


def run_compose(side: str, client: Any, out: Path, timeout: float) -> Run:
    """Time ``docker-compose up`` + ``down -v`` of the hand-written file; down always runs."""
    project = "lvc" + secrets.token_hex(4)
    base = ["docker-compose", "-p", project, "-f", str(COMPOSE_FILE)]
    notes = []
    t0 = time.time()
    t_up = t1 = t0
    try:
        rc, text, timed_out = _run([*base, "up", "--abort-on-container-exit", "--exit-code-from",
                                    "master"], timeout)
        t_up = time.time()
        if timed_out:
            notes.append(f"up timed out after {timeout:.0f} s")
        # --exit-code-from master: rc is the master's exit code (137 = killed at the stop timeout).
        if rc != 0:
            notes.append(f"up exit {rc}: {text[-600:]!r}")
        elif "us/iter" not in text:
            notes.append(f"master printed no time: {text[-600:]!r}")
    finally:
        down_rc, down_text, _ = _run([*base, "down", "-v"], 300)
        t1 = time.time()
    if down_rc != 0:
        notes.append(f"down exit {down_rc}: {down_text[-400:]!r}")
    left = _leftovers(client, LABEL_COMPOSE_PROJECT, project)
    if left:
        notes.append("left behind: " + ", ".join(left))
    phases = _phases(_events(client, project, t0, t1), t0, t1)
    return Run(side, 0, 0, project, t1 - t0, not notes, up_s=t_up - t0, down_s=t1 - t_up,
               phases=phases, note="; ".join(notes))


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def summarize(runs: list[Run], sides: tuple[str, ...]) -> dict[str, Any]:
    """Medians per side over the runs that passed, and per-pair ratios against compose."""
    ok = [r for r in runs if r.ok]
    med: dict[str, float | None] = {s: _median([r.wall_s for r in ok if r.side == s]) for s in sides}
    med["compose up only"] = _median([r.up_s for r in ok if r.side == "compose" and r.up_s is not None])
    pairs = sorted({r.pair for r in runs})
    ratios: dict[str, list[float]] = {}
    for s in sides:
        if s == "compose":
            continue
        for against, attr in (("compose", "wall_s"), ("compose up only", "up_s")):
            per_pair = []
            for p in pairs:
                a = [r for r in ok if r.pair == p and r.side == s]
                b = [r for r in ok if r.pair == p and r.side == "compose"]
                if a and b and getattr(b[0], attr):
                    per_pair.append(a[0].wall_s / getattr(b[0], attr))
            ratios[f"{s}/{against}"] = per_pair
    if "torchrun" in sides:
        ratios["netorch/torchrun"] = [
            a.wall_s / b.wall_s for p in pairs
            for a in ok if a.pair == p and a.side == "netorch"
            for b in ok if b.pair == p and b.side == "torchrun"]
    phase_keys: list[str] = []
    for r in ok:
        phase_keys += [k for k in r.phases if k not in phase_keys]
    phases = {k: {s: _median([r.phases[k] for r in ok if r.side == s and k in r.phases])
                  for s in sides} for k in phase_keys}
    return {
        "median_wall_s": med,
        "median_paired_ratio": {k: _median(v) for k, v in ratios.items()},
        "paired_ratios": ratios,
        "ratio_of_medians": {f"{s}/compose": _ratio(med[s], med["compose"])
                             for s in sides if s != "compose"},
        "median_phases_s": phases,
        "failed": [asdict(r) for r in runs if not r.ok],
    }


def report(runs: list[Run], sides: tuple[str, ...], summary: dict[str, Any]) -> str:
    """Markdown: one row per pair, the medians, the ratios and the phase split."""
    head = ["pair (order)", *(f"{s} s" for s in sides), "compose up only s",
            *(f"{s}/compose" for s in sides if s != "compose")]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for p in sorted({r.pair for r in runs}):
        in_pair = sorted((r for r in runs if r.pair == p), key=lambda r: r.position)
        by_side = {r.side: r for r in in_pair}
        c = by_side.get("compose")

        def cell(r: Run | None) -> str:
            return "-" if r is None else (f"{r.wall_s:.2f}" if r.ok else f"FAILED ({r.wall_s:.2f})")

        row = [f"{p} ({', '.join(r.side for r in in_pair)})", *(cell(by_side.get(s)) for s in sides),
               _fmt(c.up_s) if c else "-"]
        for s in sides:
            if s == "compose":
                continue
            r = by_side.get(s)
            row.append(f"{r.wall_s / c.wall_s:.2f}" if r and c and r.ok and c.ok else "-")
        lines.append("| " + " | ".join(row) + " |")
    med, pr = summary["median_wall_s"], summary["median_paired_ratio"]
    lines.append("| **median** | " + " | ".join(f"**{_fmt(med[s])}**" for s in sides)
                 + f" | **{_fmt(med['compose up only'])}** | "
                 + " | ".join(f"**{_fmt(pr[f'{s}/compose'])}**" for s in sides if s != "compose")
                 + " |")
    lines.append("")
    lines.append("Ratios are medians of the per-pair ratios; ratio of the medians: "
                 + ", ".join(f"{k} {_fmt(v)}" for k, v in summary["ratio_of_medians"].items())
                 + "; against `up` alone: "
                 + ", ".join(f"{s}/compose-up {_fmt(pr[f'{s}/compose up only'])}"
                             for s in sides if s != "compose")
                 + (f"; netorch/torchrun launcher {_fmt(pr['netorch/torchrun'])}"
                    if "netorch/torchrun" in pr else "") + ".")
    lines.append("")
    lines.append("Median phases (s), from the daemon's events relative to the command's launch "
                 "(job = last container start to first container exit):")
    lines.append("")
    lines.append("| phase | " + " | ".join(sides) + " |")
    lines.append("|---" + "|---:" * len(sides) + "|")
    for k, vals in summary["median_phases_s"].items():
        lines.append(f"| {k} | " + " | ".join(_fmt(vals[s]) for s in sides) + " |")
    for r in runs:
        if not r.ok:
            lines.append(f"\nFAILED pair {r.pair} {r.side} {r.run_id}: {r.note}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=3, help="pairs (rounds of every side); default 3")
    p.add_argument("--with-torchrun", action="store_true",
                   help="also time netorch with --set cluster.launcher=torchrun")
    p.add_argument("--timeout", type=float, default=300, help="seconds per command before it fails")
    p.add_argument("--json", type=Path, help="write the runs and figures as JSON to FILE")
    args = p.parse_args()
    if shutil.which("docker-compose") is None:
        raise SystemExit("docker-compose is not installed; apt-get install docker-compose")
    client = docker.from_env()
    sides = SIDES if args.with_torchrun else SIDES[:2]
    runners = {"netorch": run_netorch, "torchrun": run_netorch, "compose": run_compose}
    load = [os.getloadavg()[0]]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="netorch-lvc-") as tmp:
        for pair in range(1, args.pairs + 1):
            order = sides if pair % 2 else tuple(reversed(sides))
            for pos, side in enumerate(order):
                r = runners[side](side, client, Path(tmp), args.timeout)
                r.pair, r.position = pair, pos
                runs.append(r)
                extra = f" (up {r.up_s:.2f}, down {r.down_s:.2f})" if r.up_s is not None else ""
                print(f"pair {pair} #{pos + 1} {side:8s} {r.wall_s:6.2f} s{extra} "
                      f"{'ok' if r.ok else 'FAILED'} {r.run_id} "
                      + " ".join(f"[{k} {v:.2f}]" for k, v in r.phases.items())
                      + (f" {r.note}" if r.note else ""), flush=True)
    load.append(os.getloadavg()[0])
    summary = summarize(runs, sides)
    table = report(runs, sides, summary)
    table += (f"\n\nHost: {os.cpu_count()} cores, 1-min load average {load[0]:.1f} at start, "
              f"{load[1]:.1f} at end.")
    print()
    print(table)
    if args.json:
        doc = {"started": started, "command": shlex.join([sys.argv[0], *sys.argv[1:]]),
               "netorch_command": shlex.join(["netorch", *NETORCH_ARGS]),
               "compose_file": str(COMPOSE_FILE.relative_to(REPO)),
               "cores": os.cpu_count(), "load_average": load, "sides": list(sides),
               "runs": [asdict(r) for r in runs], **summary}
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
