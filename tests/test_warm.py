"""Warm clusters against the real daemon: ``netorch up``, runs ``--on`` it, ``ls``, ``down``, expiry."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from docker_fixtures import docker_client  # noqa: F401  (fixture)
from orchestrator.backends.docker.warm import LABEL_CLUSTER
from orchestrator.plan import LABEL_RUN
from test_docker_backend import Tag, client, netorch, netorch_env, tag  # noqa: F401  (fixtures)

pytestmark = pytest.mark.docker


def cli(cwd: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(netorch(*args), cwd=cwd, env=netorch_env(), capture_output=True,
                          text=True, timeout=timeout)


def cluster_name() -> str:
    return "w" + secrets.token_hex(4)


def leftovers(client: docker.DockerClient, name: str) -> list[str]:  # noqa: F811
    flt = {"label": f"{LABEL_RUN}={name}"}
    found = [c.name for c in client.containers.list(all=True, filters=flt, ignore_removed=True)]
    return found + [n.name for n in client.networks.list(filters=flt)]


def up(cwd: Path, tag: Tag, name: str, subnet: str, *args: str) -> None:  # noqa: F811
    out = cli(cwd, "up", "--name", name, "--subnet", subnet, "--set",
              f"cluster.name={tag.name}", "-o", str(cwd / "runs"), *args)
    assert out.returncode == 0, out.stderr
    assert f"cluster {name}:" in out.stdout


def test_up_run_many_jobs_then_down(client: docker.DockerClient, tag: Tag,  # noqa: F811
                                    tmp_path: Path) -> None:
    name = cluster_name()
    up(tmp_path, tag, name, "10.83.1.0/24", "--nodes", "3", "--mtu", "1400")
    try:
        listed = json.loads(cli(tmp_path, "ls", "--json").stdout)
        (mine,) = [c for c in listed if c["name"] == name]
        assert mine["state"] == "up" and mine["nodes"] == 3 and mine["mtu"] == 1400
        bench = cli(tmp_path, "bench", "--on", name, "-q", "-o", str(tmp_path / "runs"),
                    "--ops", "all_reduce,sendrecv", "-B", "64K", "-E", "256K")
        assert bench.returncode == 0, bench.stderr
        (report_path,) = (tmp_path / "runs").glob("*/report.json")
        report: dict[str, Any] = json.loads(report_path.read_text())
        assert report["wrong_total"] == 0 and report["world_size"] == 3
        assert [n["mtu"] for n in report["nodes"]] == [1400] * 3  # the cluster's fabric
        # Fresh ranks per job: each job sees its own env (NCCL_*/GLOO_* take effect).
        seen = []
        for value in ("first", "second"):
            job = cli(tmp_path, "run", "--on", name, "-o", str(tmp_path / "runs"),
                      "--set", f"env.NCCL_NETORCH_PROBE={value}", "--", "sh", "-c",
                      'echo "probe=$NCCL_NETORCH_PROBE rank=$RANK pid=$$"')
            assert job.returncode == 0, job.stderr
            seen.append(job.stderr)
        assert "probe=first rank=2" in seen[0] and "probe=second rank=2" in seen[1]
        assert "probe=first" not in seen[1]
    finally:
        down = cli(tmp_path, "down", "--run", name)
    assert down.returncode == 0, down.stderr
    assert leftovers(client, name) == []


def test_a_run_that_asks_for_another_shape_is_refused(client: docker.DockerClient,  # noqa: F811
                                                      tag: Tag, tmp_path: Path) -> None:
    name = cluster_name()
    up(tmp_path, tag, name, "10.83.2.0/24", "--nodes", "2")
    try:
        # A config file's values give way to the cluster's: only what the run names is checked.
        work = tmp_path / "project"
        (work / "configs").mkdir(parents=True)
        (work / "configs" / "default.toml").write_text(
            '[cluster]\nnodes = 3\n[network]\nmtu = 9000\nsubnet = "10.99.0.0/16"\n')
        fine = cli(work, "bench", "--on", name, "-q", "-B", "64K", "-E", "64K",
                   "-o", str(tmp_path / "runs"))
        assert fine.returncode == 0, fine.stderr
        out = cli(tmp_path, "bench", "--on", name, "--mtu", "9000", "--nodes", "2", "-q")
        assert out.returncode == 2, out.stderr
        assert f"--on {name}: this run asks for network.mtu=9000 (the cluster has 1500)" in (
            out.stderr)
        assert "Traceback" not in out.stderr
        missing = cli(tmp_path, "bench", "--on", "nosuchcluster", "-q")
        assert missing.returncode == 2 and "no warm cluster of that name" in missing.stderr
    finally:
        cli(tmp_path, "down", "--run", name)
    assert leftovers(client, name) == []


def test_a_killed_rank_fails_the_job_not_the_cluster(client: docker.DockerClient,  # noqa: F811
                                                     tag: Tag, tmp_path: Path) -> None:
    name = cluster_name()
    up(tmp_path, tag, name, "10.83.3.0/24", "--nodes", "2")
    try:
        script = ("import os, signal, time\n"
                  "if os.environ['RANK'] == '1':\n"
                  "    os.kill(os.getpid(), signal.SIGKILL)\n"
                  "time.sleep(600)\n")
        started = time.monotonic()
        out = cli(tmp_path, "run", "--on", name, "-o", str(tmp_path / "runs"), "--",
                  "python", "-c", script)
        assert out.returncode == 3, out.stderr
        assert "worker-1 failed: killed by SIGKILL (exit 137)" in out.stderr
        # netorch stopped rank 0: its script alone would have run for 10 minutes.
        assert time.monotonic() - started < 300
        again = cli(tmp_path, "bench", "--on", name, "-q", "-B", "64K", "-E", "64K")
        assert again.returncode == 0, again.stderr
        running = client.containers.list(filters={"label": f"{LABEL_CLUSTER}={name}"})
        assert len(running) == 2
    finally:
        cli(tmp_path, "down", "--run", name)
    assert leftovers(client, name) == []


def test_an_idle_cluster_expires_and_leaves_nothing(client: docker.DockerClient,  # noqa: F811
                                                    tag: Tag, tmp_path: Path) -> None:
    name = cluster_name()
    up(tmp_path, tag, name, "10.83.4.0/24", "--nodes", "2", "--idle-timeout", "2")
    deadline = time.monotonic() + 60
    while client.containers.list(filters={"label": f"{LABEL_CLUSTER}={name}"}):
        assert time.monotonic() < deadline, "the idle cluster did not expire"
        time.sleep(0.5)
    listed = cli(tmp_path, "ls")
    assert listed.returncode == 0 and "expired (removed)" in listed.stdout
    assert leftovers(client, name) == []
    out = cli(tmp_path, "bench", "--on", name, "-q")
    assert out.returncode == 2 and "no warm cluster of that name" in out.stderr


def test_up_and_down_print_json(client: docker.DockerClient, tag: Tag,  # noqa: F811
                                tmp_path: Path) -> None:
    from test_faults import free_test_subnet

    name = cluster_name()
    subnet = free_test_subnet(client)
    out = cli(tmp_path, "up", "--name", name, "--subnet", subnet, "--nodes", "2", "--set",
              f"cluster.name={tag.name}", "-o", str(tmp_path / "runs"), "--json")
    try:
        assert out.returncode == 0, out.stderr
        info = json.loads(out.stdout)  # stdout holds the JSON alone
        assert (info["name"], info["nodes"], info["subnet"]) == (name, 2, subnet)
        assert len(info["containers"]) == 2
    finally:
        down = cli(tmp_path, "down", "--run", name, "--json")
    assert down.returncode == 0, down.stderr
    removed = json.loads(down.stdout)
    assert removed["run"] == name
    assert {f"container {c}" for c in info["containers"]} <= set(removed["removed"]), removed
    assert leftovers(client, name) == []


def test_a_rebuilt_image_is_named_on_the_next_run(client: docker.DockerClient,  # noqa: F811
                                                  tag: Tag, tmp_path: Path) -> None:
    """`--on` after the cluster's image tag moved (a rebuild): the run goes on on the cluster's
    image, and one warning says so and how to pick up the new one."""
    from conftest import TEST_IMAGE

    image = client.images.get(TEST_IMAGE or "netorch:latest")
    private = f"netorch-drift-test:{tag.name}"
    image.tag(private)
    name = cluster_name()
    try:
        up(tmp_path, tag, name, "10.83.5.0/24", "--nodes", "2", "--set", f"cluster.image={private}")
        same = cli(tmp_path, "bench", "--on", name, "-q", "-B", "64K", "-E", "64K",
                   "-o", str(tmp_path / "runs"))
        # The run names no image: it takes the cluster's. Naming another one is refused.
        assert same.returncode == 0 and "WARNING" not in same.stderr, same.stderr
        other_image = cli(tmp_path, "bench", "--on", name, "-q", "--set",
                          f"cluster.image={TEST_IMAGE or 'netorch:latest'}")
        assert other_image.returncode == 2, other_image.stderr
        assert f"asks for cluster.image='{TEST_IMAGE or 'netorch:latest'}'" in other_image.stderr
        other = next(i for i in client.images.list() if i.id != image.id)
        other.tag(private)  # what a rebuild does to the tag
        moved = cli(tmp_path, "bench", "--on", name, "-q", "-B", "64K", "-E", "64K",
                    "-o", str(tmp_path / "runs"))
        assert moved.returncode == 0, moved.stderr
        assert (f"WARNING: cluster {name} runs {private} as it was at `netorch up` "
                f"({image.id.removeprefix('sha256:')[:12]}); the tag now names "
                f"{other.id.removeprefix('sha256:')[:12]}") in moved.stderr
        assert f"`netorch down --run {name}` and `netorch up` again" in moved.stderr
    finally:
        cli(tmp_path, "down", "--run", name)
        client.images.remove(private, noprune=True)
    assert leftovers(client, name) == []
