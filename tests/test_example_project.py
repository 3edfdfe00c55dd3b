"""examples/ddp-user-project under plain torchrun (no netorch, no Docker): it learns, and a run
killed with SIGKILL and resumed from its checkpoints ends with bit-identical weights."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parent.parent / "examples" / "ddp-user-project"
TRAIN = PROJECT / "train.py"
# Enough steps after the checkpoint at 100 that the kill lands before the run ends.
STEPS = 300
ARGS = ("--steps", str(STEPS), "--checkpoint-every", "50", "--seed", "3")
SHA_RE = re.compile(r"^final_weights_sha256=([0-9a-f]{64})$", re.M)
LOSS_RE = re.compile(r"^step (\d+) loss ([0-9.]+)$", re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(data: Path, ckpt: Path, *extra: str) -> subprocess.Popen[str]:
    # A user's script must not see netorch's own settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NETORCH_", "TORCHELASTIC_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
         "--master-port", str(free_port()),
         str(TRAIN), "--data", str(data), "--checkpoints", str(ckpt), *ARGS, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=PROJECT,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def final_sha(out: str) -> str:
    found = SHA_RE.findall(out)
    assert len(found) == 1, out
    return str(found[0])


def worker(proc: subprocess.Popen[str], rank: int) -> psutil.Process:
    """The torchrun worker process of ``rank`` (torchrun's children carry RANK in their env)."""
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if str(TRAIN) in child.cmdline() and child.environ().get("RANK") == str(rank):
                return child
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no worker with RANK={rank} under torchrun {proc.pid}")


def kill_when_checkpoint(proc: subprocess.Popen[str], ckpt: Path, step: int, rank: int) -> None:
    """SIGKILL ``rank`` as soon as the checkpoint of ``step`` exists."""
    target = ckpt / f"ckpt-{step:08d}.pt"
    deadline = time.monotonic() + 120
    while not target.exists():
        assert proc.poll() is None, "torchrun ended before the checkpoint appeared"
        assert time.monotonic() < deadline, f"{target} not written within 120 s"
        time.sleep(0.005)
    worker(proc, rank).send_signal(signal.SIGKILL)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("data")
    subprocess.run([sys.executable, str(PROJECT / "make_data.py"), str(d)], check=True,
                   capture_output=True)
    return d


@pytest.fixture(scope="module")
def uninterrupted(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """Run A: never stopped. Returns its output and checkpoint directory."""
    ckpt = tmp_path_factory.mktemp("ckpt-a")
    rc, out = finish(torchrun(data, ckpt))
    assert rc == 0, out
    return out, ckpt


def test_make_data_is_deterministic(data: Path, tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(PROJECT / "make_data.py"), str(tmp_path)], check=True,
                   capture_output=True)
    assert (tmp_path / "train.pt").read_bytes() == (data / "train.pt").read_bytes()


def test_learns_and_reports(uninterrupted: tuple[str, Path]) -> None:
    out, ckpt = uninterrupted
    assert re.search(r"^world_size=2 master_addr=127\.0\.0\.1 master_port=\d+ rank=0 restart=0$",
                     out, re.M), out
    losses = [(int(s), float(v)) for s, v in LOSS_RE.findall(out)]
    assert losses[0][0] == 1 and losses[-1][0] == STEPS, losses
    assert losses[-1][1] < losses[0][1] / 10, losses  # the loss falls visibly
    assert "resumed" not in out
    final_sha(out)
    assert out.rstrip().endswith("done") or "\ndone\n" in out
    # Every 50 steps, newest three kept, no temporary file left behind.
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "ckpt-00000200.pt", "ckpt-00000250.pt", "ckpt-00000300.pt"]


def test_killed_then_rerun_resumes_to_identical_weights(
    data: Path, tmp_path: Path, uninterrupted: tuple[str, Path]
) -> None:
    sha_a = final_sha(uninterrupted[0])
    proc = torchrun(data, tmp_path)
    kill_when_checkpoint(proc, tmp_path, 100, rank=1)
    rc, out = finish(proc)
    assert rc != 0, f"the killed run must fail (did it finish before the kill?)\n{out}"
    assert "done" not in out.splitlines()

    rc, out = finish(torchrun(data, tmp_path))
    assert rc == 0, out
    resumed = re.search(r"^resumed from \S+ckpt-(\d{8})\.pt at step (\d+)$", out, re.M)
    assert resumed, out
    assert 100 <= int(resumed.group(2)) < STEPS
    assert final_sha(out) == sha_a


def test_single_process_without_launcher_reports_restart_count(data: Path, tmp_path: Path) -> None:
    # No torchrun: the script runs alone; the restart count comes from TORCHELASTIC_RESTART_COUNT.
    # (torchrun's own in-place restarts, --max-restarts > 0, failed to reconnect gloo on this
    # torch: netorch restarts a job by launching it afresh, as the test above does.)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NETORCH_", "TORCHELASTIC_"))}
    env |= {"TORCHELASTIC_RESTART_COUNT": "2", "MASTER_PORT": str(port)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, str(TRAIN), "--data", str(data), "--checkpoints", str(tmp_path),
         "--steps", "20", "--checkpoint-every", "10"],
        capture_output=True, text=True, env=env, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (f"world_size=1 master_addr=127.0.0.1 master_port={port} rank=0 restart=2\n"
            in proc.stdout)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000010.pt", "ckpt-00000020.pt"]
    assert proc.stdout.endswith("done\n")


def test_damaged_checkpoint_is_skipped(
    data: Path, tmp_path: Path, uninterrupted: tuple[str, Path]
) -> None:
    a_ckpt = uninterrupted[1]
    good = (a_ckpt / "ckpt-00000250.pt").read_bytes()
    (tmp_path / "ckpt-00000250.pt").write_bytes(good)
    (tmp_path / "ckpt-00000290.pt").write_bytes(good[: len(good) // 2])  # a torn copy
    rc, out = finish(torchrun(data, tmp_path))
    assert rc == 0, out
    assert re.search(r"skipping damaged checkpoint \S+ckpt-00000290\.pt", out), out
    assert re.search(r"^resumed from \S+ckpt-00000250\.pt at step 250$", out, re.M), out
    assert final_sha(out) == final_sha(uninterrupted[0])


def test_unwritable_checkpoint_dir_fails_clearly(data: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    rc, out = finish(torchrun(data, blocker / "ckpt"))
    assert rc != 0
    assert f"train.py: error: --checkpoints {blocker / 'ckpt'}: cannot create it" in out, out
    assert "step 1 loss" not in out


def test_missing_data_fails_clearly(tmp_path: Path) -> None:
    rc, out = finish(torchrun(tmp_path / "none", tmp_path / "ckpt"))
    assert rc != 0
    assert f"--data {tmp_path / 'none'}: no train.pt there" in out, out
