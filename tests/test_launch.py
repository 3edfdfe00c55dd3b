"""train/launch.py: torchrun's worker environment from one torch import, and a supervisor that leaves no rank behind."""

from __future__ import annotations

import json
import re
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from train.launch import LaunchSpec, parse_args, worker_env

ROOT = Path(__file__).resolve().parents[1]

# The documented differences: torchrun's agent holds the store, writes error files, and handles these signals.
TORCHRUN_ONLY = {"TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_ERROR_FILE", "TORCHELASTIC_SIGNALS_TO_HANDLE"}

DUMP = """\
import json, os, sys
torch_at_start = "torch" in sys.modules  # before this script imports anything heavy
import torch
print(json.dumps({"torch_at_start": torch_at_start, "cuda_initialized": torch.cuda.is_initialized(),
                  "threads": torch.get_num_threads(), "argv": sys.argv, "path0": sys.path[0],
                  "name": __name__, "env": dict(os.environ)}), flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NETORCH_RESTART_COUNT")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def node_args(nproc: int = 2, port: int | None = None) -> list[str]:
    return ["--nnodes", "1", "--nproc-per-node", str(nproc), "--node-rank", "0", "--master-addr", "127.0.0.1",
            "--master-port", str(port or free_port()), "--max-restarts", "0"]


def launch(args: list[str], cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "train.launch", *args], cwd=cwd, env=child_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "train.launch", *args], cwd=cwd, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


RANK_PREFIX = re.compile(r"^\[rank \d+\] ")


def json_lines(out: str) -> list[dict[str, Any]]:
    """The JSON documents the ranks printed (the launcher's ``[rank N]`` prefix removed)."""
    lines = (RANK_PREFIX.sub("", line) for line in out.splitlines())
    # torchrun's ranks share one stdout pipe: two ranks' documents (each one atomic write) can end
    # up on one line, as '{...}{...}'.
    decoder, docs = json.JSONDecoder(), []
    for line in lines:
        at = 0
        while line.startswith("{", at):
            doc, at = decoder.raw_decode(line, at)
            docs.append(doc)
    return sorted(docs, key=lambda d: int(d["env"]["RANK"]))


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def wait_for_files(*paths: Path, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while not all(p.exists() and p.read_text().strip() for p in paths):
        assert time.monotonic() < deadline, f"never written: {paths}"
        time.sleep(0.05)
    return [int(p.read_text()) for p in paths]


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie awaiting a reaper that is not us counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids: list[int], timeout: float = 10) -> bool:
    """True when every pid is gone within ``timeout``; else kill the survivors (no strays) and return False."""
    deadline = time.monotonic() + timeout
    while not all(gone(p) for p in pids):
        if time.monotonic() > deadline:
            for pid in pids:
                if not gone(pid):
                    os.kill(pid, signal.SIGKILL)
            return False
        time.sleep(0.05)
    return True


# Each rank does what argv's RANK=ACTION says (default: sleep), once it has written its pid to pid<RANK>;
# a rank that exits or dies first waits for pid0, so rank 0 is known (and set up) before it is stopped.
RANK_SCRIPT = """\
import os, signal, sys, time
from pathlib import Path
rank = int(os.environ["RANK"])
here = Path(__file__).parent
action = dict(a.split("=") for a in sys.argv[1:]).get(str(rank), "sleep")
if action == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
(here / f"pid{rank}.tmp").write_text(str(os.getpid()))
os.rename(here / f"pid{rank}.tmp", here / f"pid{rank}")
if action == "kill" or action.startswith("exit"):
    while not (here / "pid0").exists():
        time.sleep(0.02)
if action == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
elif action.startswith("exit"):
    sys.exit(int(action[4:]))
time.sleep(120)
"""


# ---------------------------------------------------------------- unit tier: no process started


def test_parse_args_mirrors_torchrun_flags() -> None:
    spec = parse_args(["--nnodes", "4", "--nproc_per_node", "2", "--node_rank", "3", "--master_addr", "10.0.0.2",
                       "--master-port", "29400", "--max-restarts", "0", "--rdzv-id", "job7", "-m", "train.bench",
                       "--ops", "all_reduce", "-m", "x"])
    assert spec == LaunchSpec(nnodes=4, nproc_per_node=2, node_rank=3, master_addr="10.0.0.2", master_port=29400,
                              max_restarts=0, run_id="job7", role="default", module=True, no_python=False,
                              target="train.bench", args=("--ops", "all_reduce", "-m", "x"))
    script = parse_args(["--nnodes", "2:2", "--run-id", "r", "train.py", "--lr", "1"])
    assert (script.nnodes, script.run_id, script.module, script.target, script.args) == (2, "r", False, "train.py",
                                                                                          ("--lr", "1"))
    cmd = parse_args(["--no-python", "sh", "-c", "echo $RANK"])
    assert (cmd.no_python, cmd.target, cmd.args, cmd.run_id, cmd.master_port) == (True, "sh", ("-c", "echo $RANK"),
                                                                                  "none", 29500)


@pytest.mark.parametrize("argv", [
    ["--nnodes", "1:4", "x.py"],
    ["--nnodes", "2", "--node-rank", "2", "x.py"],
    ["--nproc-per-node", "0", "x.py"],
    ["--max-restarts", "3", "x.py"],
    ["-m", "--no-python", "x"],
    ["--nproc-per-node", "2"],
])
def test_parse_args_rejects_what_it_cannot_honour(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    assert "python -m train.launch" in capsys.readouterr().err


def test_worker_env_numbers_ranks_like_torchrun_static_rendezvous() -> None:
    spec = parse_args(["--nnodes", "3", "--nproc-per-node", "2", "--node-rank", "1", "--master-addr", "m",
                       "--master-port", "1234", "--role", "trainer", "x.py"])
    base = {"PATH": "/bin", "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_ERROR_FILE": "/e.json",
            "NETORCH_RESTART_COUNT": "2", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3"}
    env = worker_env(spec, 1, base)
    assert env == {
        "PATH": "/bin", "NETORCH_RESTART_COUNT": "2",
        "RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1", "ROLE_RANK": "3", "ROLE_NAME": "trainer",
        "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "6", "GROUP_WORLD_SIZE": "3", "ROLE_WORLD_SIZE": "6",
        "MASTER_ADDR": "m", "MASTER_PORT": "1234", "TORCHELASTIC_RESTART_COUNT": "2",
        "TORCHELASTIC_MAX_RESTARTS": "0", "TORCHELASTIC_RUN_ID": "none", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3",
    }
    fresh = worker_env(spec, 0, {})
    assert (fresh["TORCHELASTIC_RESTART_COUNT"], fresh["TORCH_NCCL_ASYNC_ERROR_HANDLING"], fresh["RANK"]) == \
        ("0", "1", "2")


# ---------------------------------------------------------------- process tier


@pytest.mark.slow
def test_rank_env_equals_torchrun_but_for_the_agent_store(tmp_path: Path) -> None:
    script = write(tmp_path / "dump.py", DUMP)
    tr_port, our_port = free_port(), free_port()
    tr = subprocess.run([sys.executable, "-m", "torch.distributed.run", *node_args(2, tr_port), str(script), "a", "b"],
                        cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=120)
    assert tr.returncode == 0, tr.stderr
    ours = launch([*node_args(2, our_port), str(script), "a", "b"], tmp_path)
    assert ours.returncode == 0, ours.stderr
    theirs, mine = json_lines(tr.stdout), json_lines(ours.stdout)
    assert [d["env"]["RANK"] for d in mine] == [d["env"]["RANK"] for d in theirs] == ["0", "1"]
    for t, m in zip(theirs, mine):
        te, me = t["env"], m["env"]
        assert set(te) - set(me) == TORCHRUN_ONLY
        assert set(me) - set(te) == set()
        assert te["TORCHELASTIC_USE_AGENT_STORE"] == "True"  # the one that changes who creates the store
        assert {k for k in me if me[k] != te[k]} == {"MASTER_PORT"}
        assert (te["MASTER_PORT"], me["MASTER_PORT"]) == (str(tr_port), str(our_port))
        assert me["OMP_NUM_THREADS"] == "1" and m["threads"] == t["threads"] == 1  # set before OpenMP loaded
        assert (m["argv"], m["path0"], m["name"]) == (t["argv"], t["path0"], t["name"]) == \
            ([str(script), "a", "b"], str(tmp_path), "__main__")
        assert not m["cuda_initialized"]


@pytest.mark.slow
def test_torch_is_imported_once_by_the_launcher(tmp_path: Path) -> None:
    """A rank finds torch loaded at its first line: inherited through fork, not imported again."""
    script = write(tmp_path / "dump.py", DUMP)
    ours = launch([*node_args(2), str(script)], tmp_path)
    assert ours.returncode == 0, ours.stderr
    docs = json_lines(ours.stdout)
    assert len(docs) == 2 and all(d["torch_at_start"] for d in docs)
    assert all(d["env"]["TORCHELASTIC_RESTART_COUNT"] == "0" for d in docs)


@pytest.mark.slow
def test_gloo_all_reduce_across_two_forked_ranks(tmp_path: Path) -> None:
    script = write(tmp_path / "gloo.py", """\
        import torch, torch.distributed as dist
        dist.init_process_group("gloo")  # rank 0 creates the store: there is no agent store
        t = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(t)
        print(f"rank {dist.get_rank()} of {dist.get_world_size()} sum {t.item()}")
        dist.barrier()
        dist.destroy_process_group()
    """)
    out = launch([*node_args(2), str(script)], tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == ["[rank 0] rank 0 of 2 sum 3.0",
                                               "[rank 1] rank 1 of 2 sum 3.0"]


@pytest.mark.slow
def test_module_target_with_restart_count(tmp_path: Path) -> None:
    write(tmp_path / "netorch_probe_mod.py", """\
        import json, os, sys
        print(json.dumps({"argv": sys.argv, "name": __name__, "env": dict(os.environ)}))
        sys.exit(0 if sys.argv[1:] == ["--flag", "v"] else 5)
    """)
    out = launch([*node_args(2), "-m", "netorch_probe_mod", "--flag", "v"], tmp_path, NETORCH_RESTART_COUNT="4")
    assert out.returncode == 0, out.stderr
    docs = json_lines(out.stdout)
    assert [d["env"]["LOCAL_RANK"] for d in docs] == ["0", "1"]
    for d in docs:
        assert d["argv"] == [str(tmp_path / "netorch_probe_mod.py"), "--flag", "v"]  # as `python -m` sets argv[0]
        assert d["name"] == "__main__"
        assert d["env"]["TORCHELASTIC_RESTART_COUNT"] == "4"


@pytest.mark.slow
def test_no_python_target_is_execd_per_rank(tmp_path: Path) -> None:
    out = launch([*node_args(3), "--no-python", "sh", "-c", 'echo "rank=$RANK of $WORLD_SIZE"'], tmp_path)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == ["rank=0 of 3", "rank=1 of 3", "rank=2 of 3"]
    missing = launch([*node_args(1), "--no-python", "netorch-no-such-command"], tmp_path)
    assert missing.returncode == 127
    assert "netorch-no-such-command" in missing.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("body", "code", "stderr_has"), [
    ("import sys; sys.exit('bad config')", 1, "bad config"),
    ("raise ValueError('boom')", 1, "ValueError: boom"),
    ("import sys; sys.exit(None)", 0, ""),
])
def test_exit_status_is_pythons(tmp_path: Path, body: str, code: int, stderr_has: str) -> None:
    script = write(tmp_path / "t.py", body + "\n")
    out = launch([*node_args(1), str(script)], tmp_path)
    assert out.returncode == code
    assert stderr_has in out.stderr
    assert "train/launch.py" not in out.stderr  # tracebacks show the target's frames, as python does


@pytest.mark.slow
def test_rank_killed_by_sigkill_stops_the_node(tmp_path: Path) -> None:
    script = write(tmp_path / "ranks.py", RANK_SCRIPT)
    out = launch([*node_args(2), str(script), "1=kill"], tmp_path)
    assert out.returncode == 137
    lines = [line for line in out.stderr.splitlines() if line.startswith("netorch-launch:")]
    assert lines == ["netorch-launch: rank 1 (local rank 1) was killed by SIGKILL; stopping the other 1 local rank(s)"]
    assert wait_gone(wait_for_files(tmp_path / "pid0"), timeout=0)


@pytest.mark.slow
def test_rank_exit_code_is_the_launchers_and_siblings_stop_fast(tmp_path: Path) -> None:
    script = write(tmp_path / "ranks.py", RANK_SCRIPT)
    started = time.monotonic()
    out = launch([*node_args(2), str(script), "1=exit7"], tmp_path)
    assert out.returncode == 7
    assert time.monotonic() - started < 10  # rank 0 sleeps 120 s: it was stopped, not awaited
    assert "rank 1 (local rank 1) exited with code 7" in out.stderr
    assert wait_gone(wait_for_files(tmp_path / "pid0"), timeout=0)


@pytest.mark.slow
def test_sibling_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    script = write(tmp_path / "ranks.py", RANK_SCRIPT)
    started = time.monotonic()
    out = launch([*node_args(2), str(script), "0=ignore-term", "1=exit3"], tmp_path)
    assert out.returncode == 3
    assert time.monotonic() - started < 20
    assert wait_gone(wait_for_files(tmp_path / "pid0"), timeout=0)


@pytest.mark.slow
def test_sigterm_to_launcher_reaches_every_rank(tmp_path: Path) -> None:
    script = write(tmp_path / "ranks.py", RANK_SCRIPT)
    proc = start([*node_args(2), str(script)], tmp_path)
    try:
        pids = wait_for_files(tmp_path / "pid0", tmp_path / "pid1")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert "received SIGTERM" in err
    assert wait_gone(pids)


@pytest.mark.slow
def test_ranks_die_with_a_sigkilled_launcher(tmp_path: Path) -> None:
    script = write(tmp_path / "ranks.py", RANK_SCRIPT)
    proc = start([*node_args(2), str(script)], tmp_path)
    try:
        pids = wait_for_files(tmp_path / "pid0", tmp_path / "pid1")
        proc.kill()
        proc.wait(timeout=10)
    finally:
        proc.kill()
    assert wait_gone(pids), "PR_SET_PDEATHSIG should have killed the orphaned ranks"


def test_own_package_is_kept_unless_the_target_path_shadows_it(tmp_path: Path) -> None:
    """A rank keeps netorch's loaded train modules unless its first sys.path entry has another train."""
    import train
    from train.launch import _shadows_own_package

    assert not _shadows_own_package(str(tmp_path))  # nothing named train there
    assert not _shadows_own_package(str(Path(train.__file__).parent.parent))  # ours itself
    (tmp_path / "train.py").write_text("x = 1\n")
    assert _shadows_own_package(str(tmp_path))
    other = tmp_path / "pkg"
    (other / "train").mkdir(parents=True)
    assert _shadows_own_package(str(other))


@pytest.mark.slow
def test_lines_carry_the_rank_when_ranks_share_a_node(tmp_path: Path) -> None:
    script = write(tmp_path / "hi.py", """
        import os, sys
        print("hello", os.environ["RANK"])
        print("to", end="", file=sys.stderr)
        print(" stderr", file=sys.stderr)
    """)
    two = launch(["--nproc-per-node", "2", "--master-port", str(free_port()), str(script)], tmp_path)
    assert two.returncode == 0, two.stderr
    assert sorted(two.stdout.splitlines()) == ["[rank 0] hello 0", "[rank 1] hello 1"]
    assert sorted(two.stderr.splitlines()) == ["[rank 0] to stderr", "[rank 1] to stderr"]
    one = launch(["--nproc-per-node", "1", "--master-port", str(free_port()), str(script)], tmp_path)
    assert one.stdout.splitlines() == ["hello 0"]  # one rank: the node's prefix says it all
