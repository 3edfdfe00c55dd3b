"""Faults a run must survive with one clear message and nothing left behind, against the real
daemon: a node OOM-killed under ``docker.memory``, two runs racing for one subnet, a full output
directory, SIGTERM during ``netorch image build``, the daemon restarted mid-run.

Each test names its resources ``nt-<hex>`` (the ``tag`` fixture fails the test when netorch left
any of them behind) and prints what it measured (``pytest -s``).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import docker
import pytest

from docker_fixtures import docker_client  # noqa: F401  (fixture)
from orchestrator.backends.docker.kwargs import container_create_kwargs
from orchestrator.errors import ConfigError
from orchestrator.plan import LABEL_RUN, build_plan
from orchestrator.settings import load_settings
from test_docker_backend import (  # noqa: F401  (fixtures)
    Tag,
    client,
    netorch,
    netorch_env,
    tag,
)

pytestmark = pytest.mark.usefixtures("isolated")


def run_id_of(text: str, tag: Tag) -> str:
    """The run id in a message naming one of ``tag``'s nodes (``nt-xxxx-<run id>-master``)."""
    for word in text.replace(":", " ").split():
        if word.startswith(tag.name + "-"):
            return word.removeprefix(tag.name + "-").rsplit("-", 1)[0]
    raise AssertionError(f"no node of {tag.name} named in: {text}")


def labels_gone(client: docker.DockerClient, run_id: str) -> None:
    flt = {"label": f"{LABEL_RUN}={run_id}"}
    assert client.containers.list(all=True, filters=flt, ignore_removed=True) == []
    assert client.networks.list(filters=flt) == []


# ---- 1. OOM under docker.memory -------------------------------------------------------------


def test_memory_limit_is_mem_and_swap_limit() -> None:
    plan = build_plan(load_settings(overrides={"docker": {"memory": "512M"}}), "run-1", "docker")
    kwargs = container_create_kwargs(plan, plan.master, "net-id", "1.41")
    # Equal limits: no swap on top, so a node past the limit is OOM-killed, not slowed down.
    assert (kwargs["mem_limit"], kwargs["memswap_limit"]) == ("512m", "512m")
    unlimited = build_plan(load_settings(), "run-1", "docker")
    assert "mem_limit" not in container_create_kwargs(unlimited, unlimited.master, "n", "1.41")


def test_memory_setting_is_a_memory_size() -> None:
    with pytest.raises(ConfigError, match=r"docker\.memory.*not a memory size"):
        load_settings(overrides={"docker": {"memory": "lots"}})


@pytest.mark.docker
def test_oom_killed_node_is_named(client: docker.DockerClient, tag: Tag, tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        netorch("bench", "--backend", "docker", "--nodes", "2", "--quiet", "-o",
                str(tmp_path / "runs"), "--set", f"cluster.name={tag.name}",
                "--set", "docker.memory=160m", "-B", "256M", "-E", "256M"),
        cwd=tmp_path, env=netorch_env(), capture_output=True, text=True, timeout=240)
    took = time.monotonic() - started
    print(f"OOM: exit {proc.returncode} after {took:.1f} s: {proc.stderr.strip()[:300]}")
    assert proc.returncode == 3, proc.stderr
    error = next(line for line in proc.stderr.splitlines() if line.startswith("error:"))
    assert "OOM-killed" in error and f"node {tag.name}-" in error, error
    assert "Traceback" not in proc.stderr
    labels_gone(client, run_id_of(error, tag))
