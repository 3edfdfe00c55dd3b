"""``netorch train`` on the Docker backend: 2 containers, a real daemon, the netorch image.

Policy as for every docker test (tests/docker_fixtures.py): no daemon or no image fails in CI and
skips elsewhere. Resources are named ``nt-<hex>`` and removed afterwards whatever happens.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from docker_fixtures import (  # noqa: F401  (fixture)
    docker_client,
    kill_worker_after_first_checkpoint,
    require_docker,
)

pytestmark = pytest.mark.docker
IMAGE = "netorch:latest"


@pytest.fixture
def cluster_name(docker_client: docker.DockerClient) -> Iterator[str]:  # noqa: F811
    try:
        image = docker_client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        require_docker(f"image {IMAGE} is not on the daemon; build it with `netorch image build`")
        raise
    probe = docker_client.containers.run(image.id, ["python3", "-c", "import train.job"],
                                         entrypoint=[], remove=True, stderr=True, detach=False)
    del probe  # raises ContainerError when the image predates train/job.py
    name = "nt-" + secrets.token_hex(4)
    yield name
    for c in docker_client.containers.list(all=True, filters={"name": name}, ignore_removed=True):
        c.remove(force=True)
    for n in docker_client.networks.list(filters={"name": name}):
        n.remove()


def test_train_two_containers(cluster_name: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETORCH_")}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "400"})
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "train", "--backend", "docker", "-n", "2",
         "--output", str(tmp_path / "runs"), "--subnet", "10.241.0.0/24", "--steps", "80",
         "--checkpoint-every", "40", "--quiet", "--set", f"cluster.name={cluster_name}"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = [d for d in (tmp_path / "runs").iterdir() if not d.name.startswith("_")]
    r = json.loads((run / "report.json").read_text())
    assert r["kind"] == "train" and r["ok"] and r["backend"] == "docker"
    assert r["world_size"] == 2 and r["warnings"] == []
    assert [n["ip"] for n in r["nodes"]] == ["10.241.0.2", "10.241.0.3"]
    assert r["loss_fell"] and r["final_loss"] < r["loss_curve"][0][1]
    assert r["samples_per_s"] > 0 and 0 < r["comm_share"] <= 1
    assert r["checkpoints"]["written"] == 2
    # The master's checkpoint directory is a bind mount of the run's output (plan: NodeSpec.mounts).
    assert sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.ckpt")) == [
        "ckpt-00000040.ckpt", "ckpt-00000080.ckpt"]


def _train(cluster_name: str, out: Path, subnet: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETORCH_")}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "400"})
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "train", "--backend", "docker", "-n", "2",
         "--output", str(out), "--subnet", subnet, "--steps", "400", "--checkpoint-every", "50",
         "--seed", "11", "--width", "128", "--quiet", "--set", "metrics.enabled=false",
         "--set", f"cluster.name={cluster_name}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )


def _report(out: Path) -> dict[str, object]:
    (run,) = [d for d in out.iterdir() if not d.name.startswith("_")]
    report: dict[str, object] = json.loads((run / "report.json").read_text())
    return report


def test_killed_worker_container_restarts_bit_identical(
    cluster_name: str, tmp_path: Path, docker_client: docker.DockerClient  # noqa: F811
) -> None:
    """kill -9 of a worker container after the first checkpoint: the gang restarts from it and
    ends with the same weights as an uninterrupted run with the same seed."""
    baseline = _train(cluster_name, tmp_path / "base", "10.242.0.0/24")
    out, _ = baseline.communicate(timeout=600)
    assert baseline.returncode == 0, out
    expected = _report(tmp_path / "base")

    runs = tmp_path / "killed"
    proc = _train(cluster_name, runs, "10.242.1.0/24")
    out = kill_worker_after_first_checkpoint(proc, runs, lambda: docker_client.containers.list(
        filters={"label": "io.netorch.role=worker", "name": cluster_name}))
    assert proc.returncode == 0, out
    r = _report(runs)
    assert r["restarts"] == 1 and r["ok"], out
    assert isinstance(r["resumed_from"], int) and r["resumed_from"] >= 50
    assert r["steps_done"] == 400
    assert r["weights_sha256"] == expected["weights_sha256"]
    assert r["loss_curve"] == expected["loss_curve"]
    left = docker_client.containers.list(all=True, filters={"name": cluster_name})
    assert left == []
