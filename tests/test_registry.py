"""Backends are plug-ins: a new one is one object registered by name, nothing else edited.

The in-memory backend below runs no process at all: each "node" replays what its command asks for
(its own node rank, the plan's env) and rank 0 emits a result line. It goes through the real
registry, ``build_plan``, the session (fail fast, teardown) and the CLI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.backends import backend_names, make_backend, register_backend, resolve_backend
from orchestrator.backends.base import Backend, LineSink, NodeExit, NodeHandle
from orchestrator.backends.registry import backend_kind, unregister_backend
from orchestrator.cli import app
from orchestrator.errors import ConfigError, RankFailedError
from orchestrator.plan import ClusterPlan, FabricSpec, NetworkSpec, build_plan
from orchestrator.session import run_session
from orchestrator.settings import Settings, load_settings
from train.results import encode_result

pytestmark = pytest.mark.usefixtures("isolated")


@dataclass
class _Node:
    name: str
    exit: NodeExit | None = None

    def poll(self) -> NodeExit | None:
        return self.exit


@dataclass
class MemoryBackend:
    """An executor that 'runs' a node by echoing its plan; ``fail`` names a node that exits 7."""

    fail: str | None = None
    name: str = "memory"
    up_calls: int = 0
    removed: list[str] = field(default_factory=list)

    def preflight(self, plan: ClusterPlan) -> None:
        pass

    def up(self, plan: ClusterPlan, sink: LineSink) -> list[NodeHandle]:
        self.up_calls += 1
        handles: list[NodeHandle] = []
        for node in plan.nodes:
            sink(node.name, f"node_rank={node.env_dict['NODE_RANK']} "
                            f"world={node.env_dict['WORLD_SIZE']}")
            code = 7 if node.name.endswith(self.fail or "\0") else 0
            if node.node_rank == 0:
                sink(node.name, encode_result({"kind": "bench", "ranks": [], "results": [],
                                               "skipped": [], "notes": [], "wrong_total": 0}))
            handles.append(_Node(node.name, NodeExit(code, time.time())))
        return handles

    def stop(self, plan: ClusterPlan, grace_s: float) -> None:
        pass

    def down(self, plan: ClusterPlan) -> None:
        self.removed.append(plan.run_id)


class MemoryKind:
    name = "memory"
    summary = "nodes simulated in memory (tests)"

    def __init__(self) -> None:
        self.executor = MemoryBackend()

    def fabric(self, settings: Settings, run_id: str) -> FabricSpec:
        n = settings.cluster.nodes
        net = NetworkSpec(name="mem", driver="loopback", subnet="127.0.0.0/8", gateway=None,
                          ip_range=None, mtu=None, internal=True, bridge_name=None,
                          interface="mem0")
        return FabricSpec(network=net, ips=tuple(f"127.0.0.{i + 1}" for i in range(n)),
                          placement=(None,) * n, aliases=False, in_node_paths=False)

    def probe(self, settings: Settings) -> str | None:
        return "only on request"

    def ready(self, settings: Settings) -> str:
        return "simulated"

    def create(self, settings: Settings) -> Backend:
        return self.executor

    def remove(self, settings: Settings, run_id: str | None) -> list[str]:
        return [f"memory run {run_id}"]


@pytest.fixture
def memory() -> Iterator[MemoryKind]:
    kind = MemoryKind()
    register_backend(kind)
    try:
        yield kind
    finally:
        unregister_backend("memory")


def test_registered_backend_is_selectable_and_planned_by_its_fabric(memory: MemoryKind) -> None:
    assert "memory" in backend_names()
    settings = load_settings(overrides={"backend": "memory", "cluster": {"nodes": 3}})
    plan = build_plan(settings, "reg-test", "memory")
    assert plan.backend == "memory"
    assert [n.ip for n in plan.nodes] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert plan.master_addr == "127.0.0.1"
    assert all(n.env_dict["NCCL_SOCKET_IFNAME"] == "=mem0" for n in plan.nodes)
    assert all(n.aliases == () for n in plan.nodes)
    assert resolve_backend(settings) == ("memory", "--backend memory")
    assert make_backend("memory", settings) is memory.executor


def test_session_runs_a_registered_backend(memory: MemoryKind, tmp_path: Path) -> None:
    settings = load_settings(overrides={"backend": "memory", "cluster": {"nodes": 2}})
    plan = build_plan(settings, "reg-run", "memory")
    outcome = run_session(memory.executor, plan, tmp_path, timeout_s=10)
    assert outcome.result["kind"] == "bench"
    assert [name for name, _ in outcome.exits] == [n.name for n in plan.nodes]
    assert memory.executor.removed == ["reg-run"]
    log = (tmp_path / "logs" / f"{plan.nodes[1].name}.log").read_text()
    assert "node_rank=1 world=2" in log


def test_session_fails_fast_on_a_registered_backend(memory: MemoryKind, tmp_path: Path) -> None:
    memory.executor.fail = "worker-1"
    plan = build_plan(load_settings(overrides={"cluster": {"nodes": 2}}), "reg-fail", "memory")
    with pytest.raises(RankFailedError, match="worker-1 failed: exit code 7"):
        run_session(memory.executor, plan, tmp_path, timeout_s=10)
    assert memory.executor.removed == ["reg-fail"]


def test_cli_plan_and_down_reach_a_registered_backend(memory: MemoryKind) -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["plan", "--backend", "memory", "--nodes", "2", "--json"])
    assert out.exit_code == 0, out.output
    data: dict[str, Any] = json.loads(out.stdout)
    assert data["backend"] == "memory" and data["network"]["interface"] == "mem0"
    out = runner.invoke(app, ["down", "--backend", "memory", "--run", "abc"])
    assert out.exit_code == 0, out.output
    assert "removed memory run abc" in out.stdout


def test_unknown_backend_is_one_clear_line() -> None:
    with pytest.raises(ConfigError, match=r"^backend: 'memory' is not a backend; use auto or one"):
        load_settings(overrides={"backend": "memory"})
    with pytest.raises(ConfigError, match="not a backend"):
        backend_kind("memory")
    with pytest.raises(ValueError, match="already registered"):
        register_backend(backend_kind("process"))
