"""compose/monitoring/ as the tools read it: ``docker-compose config`` accepts the stack,
``promtool check config`` the Prometheus configuration, and the pieces point at each other
(Prometheus finds netorch's file_sd files and the Pushgateway, Grafana finds Prometheus).

The stack's images come from a registry, which this kind of machine cannot reach: the tools
that would run it check it instead (Debian's docker-compose and prometheus packages).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from conftest import REPO
from orchestrator.metrics import FILE_SD_DIR
from test_metrics_servers import binary

STACK = REPO / "compose" / "monitoring"


def compose_config(runs: Path) -> dict[str, object]:
    env = {**os.environ, "NETORCH_RUNS": str(runs)}
    proc = subprocess.run([binary("docker-compose"), "-f", str(STACK / "docker-compose.yml"),
                           "config"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    config: dict[str, object] = yaml.safe_load(proc.stdout)
    return config


def test_compose_stack_passes_docker_compose_config(tmp_path: Path) -> None:
    config = compose_config(tmp_path)
    services = config["services"]
    assert isinstance(services, dict)
    assert set(services) == {"prometheus", "pushgateway", "grafana"}
    prom = services["prometheus"]
    assert f"{tmp_path}:/runs:ro" in prom["volumes"]
    listen = next(a for a in prom["command"] if a.startswith("--web.listen-address="))
    # Grafana reaches Prometheus where it listens: both on the host's network, on loopback.
    assert prom["network_mode"] == services["grafana"]["network_mode"] == "host"
    datasource = yaml.safe_load(
        (STACK / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://" + listen.split("=", 1)[1]


def test_prometheus_config_passes_promtool_and_finds_netorch() -> None:
    proc = subprocess.run([binary("promtool"), "check", "config", str(STACK / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr
    config = yaml.safe_load((STACK / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    # netorch writes <output>/_file_sd/<run_id>.json; the stack mounts <output> at /runs.
    assert jobs["netorch"]["file_sd_configs"][0]["files"] == [f"/runs/{FILE_SD_DIR}/*.json"]
    pushed = jobs["pushgateway"]
    assert pushed["honor_labels"] is True
    assert pushed["static_configs"][0]["targets"] == ["127.0.0.1:9091"]
