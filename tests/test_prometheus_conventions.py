"""Every metrics output of netorch passes ``promtool check metrics``, and the Grafana dashboard
queries only metrics netorch exports.

Real runs on the process backend (a bench, a training run whose ranks are scraped live while it
runs), real promtool (Debian's ``prometheus`` package, installed by scripts/system-setup.sh). The
sweep's textfile is checked on a real sweep in test_sweep_doctor_docker.py and here on the
writer's output for a summary made by the sweep's own aggregation.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, netorch_env
from orchestrator.sweep import aggregate, verdicts, write_sweep
from test_metrics_servers import binary, free_port

pytestmark = pytest.mark.slow
NETORCH = [sys.executable, "-m", "orchestrator.cli"]
DASHBOARD = REPO / "compose" / "monitoring" / "grafana" / "dashboards" / "netorch.json"


def promtool_metrics(text: str) -> None:
    """Fail with promtool's own words unless ``text`` passes ``promtool check metrics``."""
    proc = subprocess.run([binary("promtool"), "check", "metrics"], input=text,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), (
        f"promtool check metrics:\n{proc.stdout}{proc.stderr}\n--- input ---\n{text}")


def sample_names(text: str) -> set[str]:
    """The sample names of a text exposition (``x_bucket``, ``x_count``, ``x_total``, ...)."""
    return {re.split(r"[{\s]", line, maxsplit=1)[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def netorch(*args: str, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*NETORCH, *args, "--backend", "process", "--output", str(out),
         "--master-port", str(free_port()), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=netorch_env(),
    )


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return str(resp.read().decode())


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The text of every metrics output of one bench and one training run: the two textfiles
    and each training rank's live ``/metrics`` (scraped until the run ends; the ranks hold their
    endpoints open after training until scraped once more)."""
    out = tmp_path_factory.mktemp("prom") / "runs"
    bench = netorch("bench", "--nodes", "2", "-B", "4K", "-E", "16K", "-f", "4", "-w", "1",
                    "-i", "2", out=out)
    bench_log = bench.communicate(timeout=300)[0]
    assert bench.returncode == 0, bench_log
    texts = {"bench textfile": next(out.glob("*/metrics.prom")).read_text()}
    port = free_port(2)
    train = netorch("train", "--nodes", "2", "--steps", "30", "--batch-size", "16",
                    "--checkpoint-every", "0", "--metrics-port", str(port),
                    "--set", "metrics.hold_s=60", "--set", "metrics.hold_scrapes=1", out=out)
    live: dict[int, str] = {}
    while train.poll() is None:
        for rank, p in enumerate((port, port + 1)):
            try:
                live[rank] = http_get(f"http://127.0.0.1:{p}/metrics")
            except OSError:
                pass  # not serving yet, or already closed
        time.sleep(0.1)
    train_log = train.communicate()[0]
    assert train.returncode == 0, train_log
    assert sorted(live) == [0, 1], f"no scrape of every rank: {sorted(live)}\n{train_log}"
    run_dirs = [d for d in out.iterdir() if d.is_dir() and not d.name.startswith("_")]
    (train_dir,) = [d for d in run_dirs
                    if json.loads((d / "report.json").read_text()).get("kind") == "train"]
    texts["train textfile"] = (train_dir / "metrics.prom").read_text()
    for rank, text in live.items():
        texts[f"rank {rank} /metrics"] = text
    return texts


def sweep_summary(tmp_path: Path) -> dict[str, Any]:
    """A sweep summary built by the sweep's own aggregation from two runs' records."""
    def record(mtu: int, busbw: float) -> dict[str, Any]:
        results = [{"op": "all_reduce", "dtype": "float32", "in_place": True,
                    "size_bytes": size, "busbw_gbps": busbw * k}
                   for k, size in ((1, 1 << 20), (2, 2 << 20))]
        tcp = [{"bits_per_second": 8e9}]
        return {"index": 0, "repeat": 0, "mtu": mtu, "link_rate": None, "run_id": f"r{mtu}",
                "results": results, "nodes": [], "elapsed_s": 1.0, "problems": [],
                "probes": {"tcp_single": tcp, "tcp_parallel": tcp}}
    records = [record(1500, 0.5), record(9000, 0.6)]
    return {"schema": 1, "sweep_id": "s1", "nnodes": 2, "procs_per_node": 1,
            "options": {"repeats": 1}, "order": ["none/1500", "none/9000"], "runs": records,
            "rows": aggregate(records), "recommendations": [v.__dict__ for v in verdicts(records)],
            "versions": {"netorch": "0.1.0"}}


@pytest.mark.parametrize("which", ["bench textfile", "train textfile", "rank 0 /metrics",
                                   "rank 1 /metrics"])
def test_every_metrics_output_passes_promtool(outputs: dict[str, str], which: str) -> None:
    text = outputs[which]
    assert "netorch_" in text
    promtool_metrics(text)


def test_step_times_are_a_summary_not_a_quantile_gauge(outputs: dict[str, str]) -> None:
    text = outputs["train textfile"]
    assert "# TYPE netorch_train_final_step_duration_seconds summary" in text
    names = sample_names(text)
    assert {"netorch_train_final_step_duration_seconds_count",
            "netorch_train_final_step_duration_seconds_sum"} <= names
    assert 'quantile="mean"' not in text
    assert re.search(r'netorch_run_info\{.*netorch_version="[^"]+".*torch_version="[^"]+"', text)


def test_sweep_textfile_passes_promtool(tmp_path: Path) -> None:
    paths = write_sweep(sweep_summary(tmp_path), tmp_path)
    text = paths["prom"].read_text()
    promtool_metrics(text)
    line = next(x for x in text.splitlines() if x.startswith(
        "netorch_sweep_busbw_median_bytes_per_second{") and 'mtu="9000"' in x
        and 'size_bytes="2097152"' in x)
    assert float(line.rsplit(" ", 1)[1]) == pytest.approx(1.2e9)


def dashboard_metric_names() -> set[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    # Label matchers ({job="netorch_bench"}) name labels and values, not metrics.
    names = {n for e in exprs
             for n in re.findall(r"\bnetorch_[a-z0-9_]+", re.sub(r"\{[^}]*\}", "", e))}
    assert names
    return names


def test_dashboard_queries_name_exported_metrics(outputs: dict[str, str],
                                                 tmp_path: Path) -> None:
    exported: set[str] = set()
    for text in outputs.values():
        exported |= sample_names(text)
    exported |= sample_names(write_sweep(sweep_summary(tmp_path), tmp_path)["prom"].read_text())
    missing = dashboard_metric_names() - exported
    assert not missing, f"the dashboard queries metrics netorch does not export: {sorted(missing)}"
