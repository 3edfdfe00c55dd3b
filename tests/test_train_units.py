"""Training plan, settings, metrics files and report: no processes, no servers (except a closed port)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.metrics import (
    metrics_targets,
    push_report,
    report_registry,
    write_targets,
    write_textfile,
)
from orchestrator.plan import (
    CONTAINER_CHECKPOINT_DIR,
    MountSpec,
    build_plan,
    checkpoint_dir,
    with_restart,
)
from orchestrator.report import build_train_report
from orchestrator.settings import load_settings
from train.results import decode_progress, encode_progress

RUN = "20261128-000000-beef"


pytestmark = pytest.mark.usefixtures("isolated")


def test_train_plan_process(tmp_path: Path) -> None:
    s = load_settings(overrides={"cluster": {"nodes": 2, "procs_per_node": 2},
                                 "train": {"steps": 7, "seed": 3},
                                 "metrics": {"port_base": 9500}})
    plan = build_plan(s, RUN, "process", workload="train")
    assert plan == build_plan(s, RUN, "process", workload="train")  # pure
    master, worker = plan.nodes
    cmd = master.command
    assert cmd[cmd.index("-m", cmd.index("--max-restarts")) + 1] == "train.job"
    assert cmd[cmd.index("--steps") + 1] == "7" and cmd[cmd.index("--seed") + 1] == "3"
    ckpt = str(tmp_path / "runs" / RUN / "checkpoints")
    assert checkpoint_dir(s, RUN) == ckpt
    assert master.env_dict["NETORCH_CHECKPOINT_DIR"] == ckpt
    assert master.mounts == worker.mounts == ()  # processes see the host's files
    # Nodes share the host's ports: the worker's ranks start after the master's.
    assert master.env_dict["NETORCH_METRICS_PORT_BASE"] == "9500"
    assert worker.env_dict["NETORCH_METRICS_PORT_BASE"] == "9502"
    assert worker.env_dict["NETORCH_METRICS_ADDR"] == "127.0.0.1"
    targets = metrics_targets(plan)
    assert [t["targets"] for t in targets] == [["127.0.0.1:9500", "127.0.0.1:9501"],
                                                ["127.0.0.1:9502", "127.0.0.1:9503"]]
    assert targets[1]["labels"] == {"run_id": RUN, "netorch_node": "worker-1",
                                    "netorch_workload": "train"}
    path = write_targets(plan, tmp_path / "out")
    assert path is not None and json.loads(path.read_text()) == targets
    assert json.loads((tmp_path / "_file_sd" / f"{RUN}.json").read_text()) == targets


def test_train_plan_docker_mounts_checkpoints_on_master_only() -> None:
    s = load_settings(overrides={"cluster": {"nodes": 3}})
    plan = build_plan(s, RUN, "docker", workload="train")
    assert plan.nodes[0].mounts == (MountSpec(checkpoint_dir(s, RUN), CONTAINER_CHECKPOINT_DIR),)
    assert all(n.mounts == () for n in plan.nodes[1:])
    assert all(n.env_dict["NETORCH_METRICS_ADDR"] == "0.0.0.0" for n in plan.nodes)
    assert {n.env_dict["NETORCH_METRICS_PORT_BASE"] for n in plan.nodes} == {"9400"}
    assert [t["targets"] for t in metrics_targets(plan)] == [
        ["172.28.0.2:9400"], ["172.28.0.3:9400"], ["172.28.0.4:9400"]]


def test_bench_plan_unchanged_by_training_settings() -> None:
    s = load_settings()
    trained = load_settings(overrides={"train": {"steps": 7, "checkpoint_every": 3,
                                                 "max_restarts": 5},
                                       "metrics": {"enabled": True, "port_base": 9500}})
    plan = build_plan(s, RUN, "docker")
    assert build_plan(trained, RUN, "docker") == plan
    assert all(n.mounts == () for n in plan.nodes)
    assert "NETORCH_CHECKPOINT_DIR" not in plan.nodes[0].env_dict
    assert "NETORCH_METRICS_ADDR" not in plan.nodes[0].env_dict
    assert metrics_targets(plan) == []


def test_metrics_off_means_no_endpoints() -> None:
    s = load_settings(overrides={"metrics": {"enabled": False}})
    plan = build_plan(s, RUN, "process", workload="train")
    assert "NETORCH_METRICS_ADDR" not in plan.nodes[0].env_dict
    assert metrics_targets(plan) == []


def test_with_restart_only_changes_the_restart_env() -> None:
    plan = build_plan(load_settings(), RUN, "process", workload="train")
    again = with_restart(with_restart(plan, 1), 2)
    assert [n.env_dict["NETORCH_RESTART_COUNT"] for n in again.nodes] == ["2", "2"]
    assert [n.command for n in again.nodes] == [n.command for n in plan.nodes]
    assert [{k: v for k, v in n.env if k != "NETORCH_RESTART_COUNT"} for n in again.nodes] == [
        n.env_dict for n in plan.nodes]


def test_settings_validation() -> None:
    with pytest.raises(ConfigError, match="metrics.pushgateway_url"):
        load_settings(overrides={"metrics": {"pushgateway_url": "localhost:9091"}})
    with pytest.raises(ConfigError, match="train.steps"):
        load_settings(overrides={"train": {"steps": 0}})
    s = load_settings(overrides={"train": {"max_restarts": "3"}})
    assert s.train.max_restarts == 3


def _train_result() -> dict[str, object]:
    return {
        "schema": 1, "kind": "train", "dist_backend": "gloo", "world_size": 2,
        "ranks": [{"rank": 0, "node_rank": 0, "local_rank": 0, "ipv4": "127.0.0.1", "mtu": 65536,
                   "ifname": "lo", "hostname": "h"},
                  {"rank": 1, "node_rank": 1, "local_rank": 0, "ipv4": "127.0.0.1", "mtu": 65536,
                   "ifname": "lo", "hostname": "h"}],
        "settings": {"steps": 40}, "steps_done": 40, "resumed_from": 20,
        "final_loss": 0.05, "loss_curve": [[1, 0.4], [20, 0.1], [40, 0.05]],
        "samples_per_s": 1000.0, "step_time_s": {"mean": 0.01, "p50": 0.009, "p95": 0.02},
        "comm_share": 0.5, "comm_exposed_share": 0.3, "weights_sha256": "ab" * 32,
        "checkpoints": {"dir": "/x", "written": 1, "skipped": []},
    }


def test_train_report_and_textfile(tmp_path: Path) -> None:
    plan = build_plan(load_settings(), RUN, "process", workload="train")
    report = build_train_report(plan, _train_result(), 12.5, restarts=1, failures=("n: x",))
    assert report["kind"] == "train" and report["ok"] and report["loss_fell"]
    assert report["restarts"] == 1 and report["resumed_from"] == 20
    assert "results" not in report and report["warnings"] == []
    text = write_textfile(report, tmp_path).read_text()
    assert 'netorch_run_info{backend="process",dist_backend="gloo",kind="train",' in text
    assert "netorch_train_samples_per_second 1000.0" in text
    assert 'netorch_train_final_step_duration_seconds{quantile="0.95"} 0.02' in text
    assert "netorch_train_restarts 1.0" in text


def test_bench_registry_labels() -> None:
    report = {"run_id": RUN, "kind": "bench", "backend": "process", "dist_backend": "gloo",
              "ok": True, "wrong_total": 0, "results": [
                  {"op": "all_reduce", "dtype": "float32", "size_bytes": 1024, "in_place": True,
                   "time_us": {"avg": 10.0}, "algbw_gbps": 0.1024, "busbw_gbps": 0.1024}]}
    from prometheus_client import generate_latest

    text = generate_latest(report_registry(report)).decode()
    assert ('netorch_bench_busbw_bytes_per_second{dtype="float32",in_place="true",'
            'op="all_reduce",size_bytes="1024"} 1.024e+08') in text
    assert "netorch_bench_wrong_elements 0.0" in text


def test_unreachable_pushgateway_is_a_warning() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    report = {"run_id": RUN, "kind": "bench", "backend": "process", "dist_backend": "gloo",
              "ok": True, "results": []}
    problem = push_report(report, f"http://127.0.0.1:{port}", "netorch", timeout_s=1, attempts=2)
    assert problem is not None and f"127.0.0.1:{port}" in problem


def test_progress_line_round_trip() -> None:
    line = "master | " + encode_progress({"step": 3, "loss": 0.5})
    assert decode_progress(line) == {"step": 3, "loss": 0.5}
    assert decode_progress("no marker") is None
