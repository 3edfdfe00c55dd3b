"""``netorch train`` end to end on the process backend: learning, reporting, gang restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.backends.process import run_processes

pytestmark = pytest.mark.slow
NETORCH = [sys.executable, "-m", "orchestrator.cli"]
# Long enough that a worker can be killed between the first checkpoints and the end.
TRAIN_ARGS = ("--nodes", "2", "--steps", "600", "--checkpoint-every", "50", "--seed", "7",
              "--width", "128", "--set", "metrics.enabled=false", "--quiet")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("NETORCH_")}


def netorch_train(out: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*NETORCH, "train", "--backend", "process", "--output", str(out),
         "--master-port", str(free_port()), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env(),
    )


def only_run(out: Path) -> Path:
    dirs = [d for d in out.iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not seen within {timeout:.0f} s")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted run: the reference for learning and for the weights' hash."""
    out = tmp_path_factory.mktemp("baseline")
    proc = netorch_train(out, *TRAIN_ARGS)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    report: dict[str, Any] = json.loads((only_run(out) / "report.json").read_text())
    report["_output"] = output
    report["_dir"] = str(only_run(out))
    return report


def test_train_two_nodes_learns_and_reports(baseline: dict[str, Any]) -> None:
    r = baseline
    assert r["kind"] == "train" and r["ok"] and r["backend"] == "process"
    assert r["world_size"] == 2 and r["dist_backend"] == "gloo"
    assert sorted(x["rank"] for x in r["ranks"]) == [0, 1]
    assert r["steps_done"] == 600 and r["restarts"] == 0 and r["resumed_from"] is None
    curve = r["loss_curve"]
    assert curve[0][0] == 1 and curve[-1][0] == 600 and len(curve) >= 5
    assert r["final_loss"] < 0.5 * curve[0][1]  # it learns, not just wiggles
    assert r["samples_per_s"] > 0
    t = r["step_time_s"]
    assert 0 < t["p50"] <= t["p95"] and t["mean"] > 0
    assert 0 < r["comm_share"] <= 1 and 0 <= r["comm_exposed_share"] <= 1
    assert len(r["weights_sha256"]) == 64
    run = Path(r["_dir"])
    assert (run / "loss.csv").read_text().splitlines()[0] == "step,loss"
    assert "netorch_train_samples_per_second" in (run / "metrics.prom").read_text()
    assert sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.ckpt")) == [
        "ckpt-00000500.ckpt", "ckpt-00000550.ckpt", "ckpt-00000600.ckpt"]  # 3 kept
    assert "progress step 600/600" in r["_output"]
    assert_no_strays(r["run_id"])


def assert_no_strays(run_id: str) -> None:
    wait_for(lambda: not run_processes(run_id), 10, "processes of the run gone")


def test_killed_worker_restarts_and_ends_bit_identical(
    tmp_path: Path, baseline: dict[str, Any]
) -> None:
    proc = netorch_train(tmp_path, *TRAIN_ARGS)
    lines: list[str] = []
    restarted = threading.Event()

    def read() -> None:
        for line in proc.stdout or []:
            lines.append(line)
            if "restart 1/" in line:
                restarted.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        run = wait_for(lambda: any(tmp_path.iterdir()) and only_run(tmp_path), 60, "run dir")
        ckpts = run / "checkpoints"

        def worker_rank() -> Any:
            return next((p for p in run_processes(run.name)
                         if p.environ().get("NETORCH_NODE_NAME", "").endswith("-worker-1")
                         and "train.job" in p.cmdline() and "torch.distributed.run" not in
                         " ".join(p.cmdline())), None)

        victim = wait_for(worker_rank, 90, "the worker's rank process")
        # After the second checkpoint, so that one can be damaged and the first one still used.
        wait_for(lambda: (ckpts / "ckpt-00000100.ckpt").exists(), 120, "checkpoint at step 100")
        victim.send_signal(signal.SIGKILL)
        assert restarted.wait(120), "".join(lines)
        # The gang is down and coming back: damage the newest checkpoint before it is read.
        newest = sorted(ckpts.glob("ckpt-*.ckpt"))[-1]
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    output = "".join(lines)
    assert proc.returncode == 0, output
    r = json.loads((run / "report.json").read_text())
    assert r["restarts"] == 1 and r["ok"], output
    assert "worker-1" in r["failures"][0]
    step = int(newest.name[5:13])
    assert [s["file"] for s in r["checkpoints"]["skipped"]] == [newest.name]
    assert r["resumed_from"] == step - 50  # the damaged one was skipped for the previous one
    assert r["steps_done"] == 600
    assert r["weights_sha256"] == baseline["weights_sha256"]
    assert r["final_loss"] == baseline["final_loss"]
    assert r["loss_curve"] == baseline["loss_curve"]
    assert_no_strays(r["run_id"])
