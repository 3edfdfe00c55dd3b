"""Output that fits and says where it came from: --version, versions in reports, tables that fit
80 columns one line per row, --json, and a failed run that ends with its diagnosis (the
survivors' stack traces stay in their log files).

Real runs on the process backend; the sweep's 80-column table is checked on a real sweep in
test_sweep_doctor_docker.py.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from conftest import netorch_env
from orchestrator.report import merge_node_warnings
from orchestrator.session import LogBook, TracebackFilter
from orchestrator.tables import Column, fit_table
from test_docker_backend import client, tag  # noqa: F401  (fixtures)
from test_faults import free_test_subnet
from test_metrics_servers import free_port

NETORCH = [sys.executable, "-m", "orchestrator.cli"]
BENCH = ["bench", "--backend", "process", "--nodes", "2", "-B", "4K", "-E", "64K", "-f", "4",
         "-w", "1", "-i", "2", "--quiet"]

KILL_NODE = """\
import os, signal, time
import torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.ones(1)
dist.all_reduce(t)
if int(os.environ["GROUP_RANK"]) == 1:
    time.sleep(0.5)
    os.killpg(os.getpgid(0), signal.SIGKILL)  # the whole node: its launcher and its rank
while True:
    dist.all_reduce(t)
    time.sleep(0.01)
"""


def netorch(*args: str, columns: int = 400, cwd: Path | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """stdout and stderr in one stream, as a terminal shows them."""
    return subprocess.run([*NETORCH, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=netorch_env(columns), cwd=cwd, timeout=300)


def only_report(out: Path) -> dict[str, object]:
    (path,) = out.glob("*/report.json")
    report: dict[str, object] = json.loads(path.read_text())
    return report


def test_version() -> None:
    proc = netorch("--version")
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.split()[:2] == ["netorch", metadata.version("netorch")]


@pytest.mark.slow
def test_bench_piped_at_80_columns_one_line_per_row_with_versions(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    proc = netorch(*BENCH, "--output", str(out), "--master-port", str(free_port()), columns=80)
    assert proc.returncode == 0, proc.stdout
    report = only_report(out)
    lines = proc.stdout.splitlines()
    table = [line for line in lines if line[:1] in "┏┃┡│└"]
    assert table and all(len(line) <= 80 for line in table), proc.stdout
    body = [line for line in table if line.startswith("│")]
    assert len(body) == len(report["results"]), proc.stdout  # type: ignore[arg-type]
    assert "busbw GB/s" in proc.stdout
    versions = report["versions"]
    assert versions == {
        "netorch": metadata.version("netorch"), "torch": report["torch_version"],
        "host_torch": metadata.version("torch"), "python": platform.python_version(),
        "docker_engine": None, "kernel": platform.release(),
        "os": platform.platform(terse=True), "host": platform.node(),
        "machine": platform.machine(),
    }


@pytest.mark.slow
def test_bench_json_is_the_report(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    proc = subprocess.run(
        [*NETORCH, *BENCH, "--json", "--output", str(out), "--master-port", str(free_port())],
        capture_output=True, text=True, env=netorch_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout) == only_report(out)


@pytest.mark.slow
def test_killed_node_ends_with_its_diagnosis_and_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text(KILL_NODE)
    out = tmp_path / "runs"
    proc = netorch("run", "--backend", "process", "--nodes", "3", "--output", str(out),
                   "--master-port", str(free_port()), "--workdir", str(tmp_path),
                   "--", "python", "job.py", columns=100, cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout
    lines = proc.stdout.splitlines()
    last = "\n".join(lines[-5:])
    assert "error: node " in last and "worker-1 failed: killed by SIGKILL" in last, proc.stdout
    assert "Traceback" not in proc.stdout and '  File "' not in proc.stdout, proc.stdout
    (run_dir,) = out.iterdir()
    logs = sorted(p.name for p in (run_dir / "logs").iterdir())
    assert logs == [f"netorch-{run_dir.name}-{n}.log" for n in ("master", "worker-1", "worker-2")]
    kept = [p for p in (run_dir / "logs").iterdir() if "Traceback" in p.read_text()]
    assert kept, "the survivors' stack traces are not in their log files"
    assert f"logs: {run_dir / 'logs'}/<node>.log;" in last
    assert "stack-trace lines of" in last


def test_traceback_filter_keeps_the_exception_line() -> None:
    f = TracebackFilter()
    lines = ["step 1", "[rank0]: Traceback (most recent call last):",
             '[rank0]:   File "x.py", line 3, in <module>', "[rank0]:     f()",
             "[rank0]:     ^^^", "[rank0]: RuntimeError: peer closed", "done"]
    assert [line for line in lines if f.show("n", line)] == [
        "step 1", "[rank0]: RuntimeError: peer closed", "done"]
    assert f.hidden == {"n": 4}
    chained = ["Traceback (most recent call last):", '  File "a.py", line 1', "KeyError: 1", "",
               "During handling of the above exception, another exception occurred:", "",
               "Traceback (most recent call last):", '  File "b.py", line 2',
               "SignalException: got signal: 15", "after"]
    assert [line for line in chained if f.show("m", line)] == [
        "KeyError: 1", "SignalException: got signal: 15", "after"]


def test_logbook_files_for_every_node_and_no_traceback_in_the_tail(tmp_path: Path) -> None:
    echoed: list[str] = []
    book = LogBook(tmp_path, lambda node, line: echoed.append(line))
    book.touch(["a", "b"])
    for line in ("Traceback (most recent call last):", '  File "x.py", line 1', "ValueError: x"):
        book.sink("a", line)
    book.close()
    assert (tmp_path / "b.log").read_text() == ""
    assert len((tmp_path / "a.log").read_text().splitlines()) == 3
    assert echoed == book.tail("a") == ["ValueError: x"]


def test_same_warning_for_many_nodes_is_one_line() -> None:
    assert merge_node_warnings([
        "node m: effective MTU 1400 differs", "node w-1: effective MTU 1400 differs",
        "node w-2: no rank reported", "run x: other",
    ]) == ["nodes m, w-1: effective MTU 1400 differs", "node w-2: no rank reported",
           "run x: other"]


def test_fit_table_drops_low_priority_columns_and_never_wraps() -> None:
    columns = [Column("name", priority=2), Column("detail", priority=0),
               Column("value", "right", 2)]
    rows = [["a" * 10, "d" * 60, "1.0"], ["b", "e", "2.0"]]
    for width, shown in ((120, 3), (40, 2)):
        console = Console(width=width, record=True, file=open("/dev/null", "w"))
        console.print(fit_table("t", columns, rows, width))
        text = console.export_text()
        assert sum(line.startswith("│") for line in text.splitlines()) == 2, text
        assert text.splitlines()[1].count("┳") == shown - 1, text
        below = " ".join(text.split("└")[1].split())  # the caption, wrapped to the table
        assert ("not shown at this width: detail" in below) == (width == 40), text


def test_the_command_list_gives_each_command_one_paragraph() -> None:
    """`netorch --help` lists each command by its docstring's first paragraph, joined: the
    docstring's own line breaks would otherwise survive inside rich's wrapping."""
    from orchestrator.cli import _summary, app

    doc = """Start a WARM cluster: network and nodes up. Then
    `netorch bench --on NAME` forks ranks;
    `netorch ls` lists clusters.

    Details that belong to ``--help`` of the command only.
    """
    assert _summary(doc) == ("Start a WARM cluster: network and nodes up. Then `netorch bench "
                             "--on NAME` forks ranks; `netorch ls` lists clusters.")
    summaries = {c.name or c.callback.__name__: c.short_help  # type: ignore[union-attr]
                 for c in app.registered_commands}
    assert {"bench", "up", "sweep", "doctor", "run"} <= set(summaries)
    assert all(text and "\n" not in text for text in summaries.values()), summaries


def test_doctor_report_keeps_one_line_per_check_and_every_fix_whole() -> None:
    from orchestrator.doctor import Check, doctor_report

    fix = ("raise docker.shm_size (e.g. --set docker.shm_size=2g): NCCL and DataLoader workers "
           "keep their buffers in /dev/shm")
    checks = [Check("alias resolution", "master", "pass",
                    "master -> 172.28.0.2; hostname -> 172.28.0.2; worker-1 -> 172.28.0.3"),
              Check("/dev/shm", "worker-1", "fail", "64 MiB, below the 256 MiB a node needs", fix),
              Check("GPU visibility", "master", "skip", "no GPUs planned")]
    table, problems = doctor_report(checks, "plan 20261129-000000-abcd", 80)
    console = Console(width=80, record=True, file=open("/dev/null", "w"))
    console.print(table)
    for line in problems:
        console.print(line)
    text = console.export_text()
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert len(rows) == len(checks) and all(len(line) <= 80 for line in rows), text
    assert "│ worker-1 │" in text and "│ alias resolution │" in text  # names are never cut
    (problem,) = problems  # the failed check only: passes and skips need no action
    flat = " ".join(text.split("┘", 1)[1].split())
    assert f"FAIL /dev/shm (worker-1): 64 MiB, below the 256 MiB a node needs; fix: {fix}" in flat


LOOP = """\
import os, time
import torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.ones(1)
dist.all_reduce(t)
if os.environ["RANK"] == "0":
    print("all ranks joined", flush=True)
while True:
    dist.all_reduce(t)
    time.sleep(0.01)
"""


@pytest.mark.docker
@pytest.mark.slow
def test_killed_container_ends_with_its_diagnosis_and_every_node_has_a_log(
        tag: Any, client: Any, tmp_path: Path) -> None:  # noqa: F811
    code = tmp_path / "code"  # 0755: the containers' user reads it (tmp_path is 0700)
    code.mkdir()
    (code / "loop.py").write_text(LOOP)
    out = tmp_path / "runs"
    proc = subprocess.Popen(
        [*NETORCH, "run", "--backend", "docker", "--nodes", "3", "--subnet",
         free_test_subnet(client), "--set", f"cluster.name={tag.name}", "-o", str(out),
         "--workdir", str(code), "--", "python", "loop.py"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=netorch_env(100))
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "all ranks joined" in line:
                break
        (worker,) = [c for c in tag.containers() if c.name.endswith("-worker-1")]
        worker.kill()  # SIGKILL: the node dies mid-run, having printed nothing
        lines.extend(proc.stdout)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(lines)
    assert proc.returncode == 3, text
    last = "\n".join(text.splitlines()[-5:])
    assert "worker-1 failed: killed by SIGKILL" in last, text
    assert "Traceback" not in text and '  File "' not in text, text
    (run_dir,) = out.iterdir()
    logs = {p.name.rsplit("-", 1)[-1]: p for p in (run_dir / "logs").iterdir()}
    assert sorted(logs) == ["1.log", "2.log", "master.log"]
    assert logs["1.log"].read_text() == ""
    assert any("Traceback" in p.read_text() for p in logs.values())


def _bench_report(run_id: str, busbw: float) -> dict[str, Any]:
    return {"kind": "bench", "run_id": run_id, "settings": {"iters": 3}, "results": [
        {"op": "all_reduce", "dtype": "float32", "in_place": True, "size_bytes": 1 << 20,
         "busbw_gbps": busbw}]}


def test_compare_render_and_down_print_json(tmp_path: Path) -> None:
    runs = []
    for run_id, busbw in (("r-a", 1.0), ("r-b", 0.5)):
        (tmp_path / run_id).mkdir()
        (tmp_path / run_id / "report.json").write_text(json.dumps(_bench_report(run_id, busbw)))
        runs.append(str(tmp_path / run_id))
    proc = subprocess.run([*NETORCH, "compare", *runs, "-o", str(tmp_path / "cmp"), "--json"],
                          capture_output=True, text=True, env=netorch_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    compared = json.loads(proc.stdout)
    assert compared == json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert compared["runs"] == ["r-a", "r-b"]
    assert compared["deltas"][0]["change"][1] == pytest.approx(-0.5)
    (tmp_path / "a-file").write_text("")
    proc = subprocess.run([*NETORCH, "compare", *runs, "-o", str(tmp_path / "a-file")],
                          capture_output=True, text=True, env=netorch_env(), timeout=120)
    assert proc.returncode == 2, proc.stderr  # a bad -o, nothing measured: exit 2
    assert proc.stderr.startswith(f"error: --output {tmp_path / 'a-file'}: cannot write"), \
        proc.stderr
    assert "Traceback" not in proc.stderr
    for kind in ("compose", "k8s"):
        proc = subprocess.run([*NETORCH, "render", kind, "-o", str(tmp_path / kind), "--json"],
                              capture_output=True, text=True, env=netorch_env(), timeout=60)
        assert proc.returncode == 0, proc.stderr
        (written,) = json.loads(proc.stdout)["files"]
        assert Path(written).parent == tmp_path / kind and Path(written).is_file()
    proc = subprocess.run([*NETORCH, "down", "--backend", "process", "--run", "nt-none",
                           "--json"], capture_output=True, text=True, env=netorch_env(),
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"run": "nt-none", "removed": []}


def test_ls_table_fits_80_columns_one_line_per_cluster() -> None:
    from orchestrator.app import ClusterInfo
    from orchestrator.cli import clusters_table

    found = [ClusterInfo(f"cluster-{i}", "up", 4, f"10.83.{i}.0/24", 9000,
                         "registry.example.com/team/netorch-with-a-long-name:2026-11-29", 1800.0,
                         None, ()) for i in range(2)]
    for width in (80, 200):
        console = Console(width=width, record=True, file=open("/dev/null", "w"))
        console.print(clusters_table(found, width))
        lines = console.export_text().splitlines()
        assert all(len(line) <= width for line in lines), lines
        assert sum(line.startswith("│") for line in lines) == 2, lines
        assert ("netorch-with-a-long-name" in lines[4]) == (width == 200), lines  # a row
