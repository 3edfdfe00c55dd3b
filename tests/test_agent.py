"""train/agent.py: a warm node that runs spooled launcher jobs, each with fresh ranks, and never leaves one behind."""

from __future__ import annotations

import json
import re
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from test_launch import gone, wait_gone
from train.agent import BadJob, JobRequest, parse_job
from train.launch import parse_args

ROOT = Path(__file__).resolve().parents[1]
START, EXIT = "@@NETORCH_JOB_START@@", "@@NETORCH_JOB_EXIT@@"

# A 2-rank gloo job: prints one JSON line per rank (what it saw at its first line, its env, the sum).
GLOO = """\
import sys
torch_at_start = "torch" in sys.modules  # before this script imports anything
import json, os
import torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
print(json.dumps({"rank": int(os.environ["RANK"]), "var": os.environ.get("NETORCH_TEST_VAR"),
                  "port": os.environ["MASTER_PORT"], "pid": os.getpid(), "torch_at_start": torch_at_start,
                  "threads": torch.get_num_threads(), "sum": t.item()}), flush=True)
dist.barrier()
dist.destroy_process_group()
"""

# Writes "PID PPID" (the rank and its job child) to pid<RANK> in its own folder, then does what argv's
# RANK=ACTION says (default: sleep); a rank that exits first waits for pid0, so every pid is known.
RANKS = """\
import os, signal, sys, time
from pathlib import Path
rank = int(os.environ["RANK"])
here = Path(__file__).parent
action = dict(a.split("=") for a in sys.argv[1:]).get(str(rank), "sleep")
if action == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
(here / f"pid{rank}.tmp").write_text(f"{os.getpid()} {os.getppid()}")
os.rename(here / f"pid{rank}.tmp", here / f"pid{rank}")
if action.startswith("exit"):
    while not (here / "pid0").exists():
        time.sleep(0.02)
    sys.exit(int(action[4:]))
time.sleep(120)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_args(nproc: int = 2, port: int | None = None) -> list[str]:
    return ["--nnodes", "1", "--nproc-per-node", str(nproc), "--node-rank", "0", "--master-addr", "127.0.0.1",
            "--master-port", str(port or free_port()), "--max-restarts", "0"]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def submit(spool: Path, job_id: str, argv: list[str], env: dict[str, str] | None = None,
           cwd: str | None = None) -> None:
    """Write ``job_id.job`` as the host should: complete under another name, then renamed."""
    tmp = spool / f"{job_id}.job.tmp"
    tmp.write_text(json.dumps({"argv": argv, "env": env or {}, "cwd": cwd}))
    os.replace(tmp, spool / f"{job_id}.job")


def wait_for_pids(folder: Path, ranks: int, timeout: float = 60) -> list[int]:
    """Every pid a RANKS job wrote: each rank's and its job child's."""
    paths = [folder / f"pid{r}" for r in range(ranks)]
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        assert time.monotonic() < deadline, f"never written: {paths}"
        time.sleep(0.05)
    return sorted({int(pid) for p in paths for pid in p.read_text().split()})


class AgentProcess:
    """``python -P -m train.agent SPOOL`` with its stdout and stderr collected line by line."""

    def __init__(self, spool: Path, cwd: Path, idle_timeout: float = 120) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NETORCH_RESTART_COUNT")}
        env["PYTHONPATH"] = str(ROOT)
        self.spool = spool
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", "train.agent", str(spool), "--idle-timeout",
                                      str(idle_timeout)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self.changed = threading.Condition()
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, lines), daemon=True).start()

    def _pump(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            with self.changed:
                lines.append(line.rstrip("\n"))
                self.changed.notify_all()

    def wait_line(self, pred: Callable[[str], bool], timeout: float = 60, stream: str = "out") -> str:
        lines = self.out if stream == "out" else self.err
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for line in lines:
                    if pred(line):
                        return line
                left = deadline - time.monotonic()
                assert left > 0, f"no such line on {stream}; stdout={self.out} stderr={self.err}"
                self.changed.wait(left)

    def ready(self) -> AgentProcess:
        self.wait_line(lambda line: line.startswith("netorch-agent: ready (torch "))
        return self

    def exit_code(self, job_id: str, timeout: float = 60) -> int:
        """The code in job_id's EXIT marker, once printed; it must equal what ``job_id.exit`` holds."""
        def mine(line: str) -> bool:
            return line.startswith(f"{EXIT} ") and json.loads(line[len(EXIT) + 1:])["job"] == job_id

        line = self.wait_line(mine, timeout)
        code = json.loads(line[len(EXIT) + 1:])["code"]
        assert isinstance(code, int) and line == f"{EXIT} {json.dumps({'job': job_id, 'code': code})}"
        assert (self.spool / f"{job_id}.exit").read_text().strip() == str(code)
        return code

    def alive(self) -> bool:
        return self.proc.poll() is None


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def start(idle_timeout: float = 120) -> AgentProcess:
        agent = AgentProcess(tmp_path / "spool", tmp_path, idle_timeout)
        started.append(agent)
        return agent.ready()

    yield start
    for agent in started:
        if agent.alive():
            agent.proc.kill()
        agent.proc.wait(timeout=10)


# ---------------------------------------------------------------- unit tier: no process started


def test_parse_job_takes_the_launchers_argv_env_and_cwd() -> None:
    argv = [*node_args(2, 29400), "-m", "train.bench", "--ops", "all_reduce"]
    job = parse_job("run-1_a.b", json.dumps({"argv": argv, "env": {"NCCL_ALGO": "Ring"}, "cwd": "/w"}))
    assert job == JobRequest(job_id="run-1_a.b", spec=parse_args(argv), env=(("NCCL_ALGO", "Ring"),), cwd="/w")
    bare = parse_job("x", json.dumps({"argv": ["s.py"]}))
    assert (bare.env, bare.cwd, bare.spec.target) == ((), None, "s.py")


@pytest.mark.parametrize(("job_id", "doc", "reason"), [
    ("bad id", {"argv": ["s.py"]}, "job ID 'bad id' must match"),
    ("x" * 65, {"argv": ["s.py"]}, "must match"),
    ("j", ["s.py"], "JSON object, not list"),
    ("j", {"argv": ["s.py"], "image": "x"}, "unknown key(s) 'image'"),
    ("j", {"argv": "s.py"}, "'argv' must be a list of strings"),
    ("j", {"argv": ["s.py", 3]}, "'argv' must be a list of strings"),
    ("j", {"argv": ["s.py"], "env": {"A": 1}}, "'env' must map names to string values"),
    ("j", {"argv": ["s.py"], "env": {"A=B": "1"}}, "without '='"),
    ("j", {"argv": ["s.py"], "cwd": 5}, "'cwd' must be a directory path or null"),
    ("j", {"argv": ["--nproc-per-node", "0", "s.py"]}, "--nproc-per-node 0: must be >= 1"),
    ("j", {"argv": []}, "the following arguments are required: target"),
])
def test_parse_job_rejects_what_it_will_not_run(job_id: str, doc: object, reason: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(BadJob) as e:
        parse_job(job_id, json.dumps(doc))
    assert reason in str(e.value)
    assert capsys.readouterr() == ("", "")  # argparse's usage text is not printed: the reason is one line


def test_parse_job_lets_a_half_written_file_be_read_again() -> None:
    with pytest.raises(json.JSONDecodeError):
        parse_job("j", '{"argv": ["s.py"')


# ---------------------------------------------------------------- process tier


@pytest.mark.slow
def test_jobs_run_in_name_order_each_with_fresh_ranks_and_its_own_env(
        tmp_path: Path, start_agent: Callable[..., AgentProcess]) -> None:
    script = write(tmp_path / "gloo.py", GLOO)
    agent = start_agent()
    ports = {"j1": free_port(), "j2": free_port()}
    # Both queued at once: j2 first on disk, yet j1 runs first; each finishes before the next starts.
    submit(agent.spool, "j2", [*node_args(2, ports["j2"]), str(script)], {"NETORCH_TEST_VAR": "second"})
    submit(agent.spool, "j1", [*node_args(2, ports["j1"]), str(script)], {"NETORCH_TEST_VAR": "first"})
    assert agent.exit_code("j1") == 0
    assert agent.exit_code("j2") == 0
    out = agent.out
    starts = [out.index(f'{START} {{"job": "{j}"}}') for j in ("j1", "j2")]
    exits = [out.index(f'{EXIT} {{"job": "{j}", "code": 0}}') for j in ("j1", "j2")]
    assert starts[0] < exits[0] < starts[1] < exits[1]
    pids: dict[str, set[int]] = {}
    for job, var, lo, hi in (("j1", "first", starts[0], exits[0]), ("j2", "second", starts[1], exits[1])):
        docs = sorted((json.loads(re.sub(r"^\[rank \d+\] ", "", line)) for line in out[lo + 1:hi]),
                      key=lambda d: int(d["rank"]))
        assert [d["rank"] for d in docs] == [0, 1]
        for d in docs:
            assert (d["var"], d["port"], d["sum"]) == (var, str(ports[job]), 3.0)
            assert d["torch_at_start"]  # inherited from the agent's one import
            assert d["threads"] == 1  # OMP_NUM_THREADS's default for 2 ranks, though torch loaded before
        pids[job] = {d["pid"] for d in docs}
    assert not pids["j1"] & pids["j2"]
    assert sorted(p.name for p in agent.spool.iterdir()) == ["j1.done", "j1.exit", "j2.done", "j2.exit"]
    assert "NETORCH_TEST_VAR" not in os.environ and agent.alive()


@pytest.mark.slow
def test_a_failed_rank_is_the_jobs_exit_code_and_the_agent_runs_the_next(
        tmp_path: Path, start_agent: Callable[..., AgentProcess]) -> None:
    script = write(tmp_path / "fail" / "ranks.py", RANKS)
    agent = start_agent()
    submit(agent.spool, "fail", [*node_args(2), str(script), "1=exit7"])
    assert agent.exit_code("fail") == 7
    assert wait_gone(wait_for_pids(script.parent, 2), timeout=5)
    agent.wait_line(lambda line: "rank 1 (local rank 1) exited with code 7" in line, stream="err")
    submit(agent.spool, "next", [*node_args(1), "--no-python", "sh", "-c", "echo next-ran-in-$PWD"],
           cwd=str(tmp_path / "fail"))
    assert agent.exit_code("next") == 0
    assert f"next-ran-in-{tmp_path / 'fail'}" in agent.out
    assert agent.alive()


@pytest.mark.slow
def test_cancel_stops_the_job_then_kills_its_group_after_the_grace(
        tmp_path: Path, start_agent: Callable[..., AgentProcess]) -> None:
    agent = start_agent()
    for job_id, actions, code in (("polite", [], 128 + signal.SIGTERM), ("stubborn", ["0=ignore-term"], 137)):
        script = write(tmp_path / job_id / "ranks.py", RANKS)
        submit(agent.spool, job_id, [*node_args(2), str(script), *actions])
        pids = wait_for_pids(script.parent, 2)
        assert len(pids) == 3  # two ranks and their job child
        cancelled = time.monotonic()
        (agent.spool / f"{job_id}.cancel").write_text("")
        assert agent.exit_code(job_id, timeout=10) == code
        assert wait_gone(pids, timeout=5 - (time.monotonic() - cancelled))
        assert not (agent.spool / f"{job_id}.cancel").exists()
    assert "netorch-agent: job stubborn: still running 3 s after the signal; killing its process group" in agent.err
    assert agent.alive()
    (agent.spool / "late.cancel").write_text("")  # cancelled while still queued: never starts
    submit(agent.spool, "late", [*node_args(1), "--no-python", "true"])
    assert agent.exit_code("late") == 128 + signal.SIGTERM
    assert f'{START} {{"job": "late"}}' not in agent.out


@pytest.mark.slow
def test_broken_jobs_exit_2_and_a_half_written_one_is_read_again(
        tmp_path: Path, start_agent: Callable[..., AgentProcess]) -> None:
    agent = start_agent()
    half = agent.spool / "half.job"
    half.write_text('{"argv": ["--nproc-per-node", "1", ')  # as a put_archive caught midway
    time.sleep(1)
    assert not (agent.spool / "half.exit").exists() and not any("half" in line for line in agent.out)
    half.write_text(json.dumps({"argv": [*node_args(1), "--no-python", "true"]}))
    assert agent.exit_code("half") == 0
    submit(agent.spool, "badargv", [*node_args(2), "-m", "--no-python", "x"])
    assert agent.exit_code("badargv") == 2
    agent.wait_line(lambda line: line.startswith("netorch-agent: job badargv: invalid launcher argv"), stream="err")
    (agent.spool / "bad id!.job").write_text(json.dumps({"argv": ["x.py"]}))
    assert agent.exit_code("bad id!") == 2
    (agent.spool / "folder.job").mkdir()
    assert agent.exit_code("folder") == 2
    (agent.spool / "garbage.job").write_text("{not json")  # never completed: rejected after the grace
    assert agent.exit_code("garbage", timeout=30) == 2
    agent.wait_line(lambda line: line.startswith("netorch-agent: job garbage: not valid JSON after"), stream="err")
    assert not any(line.startswith(START) and "half" not in line for line in agent.out)
    submit(agent.spool, "after", [*node_args(1), "--no-python", "true"])
    assert agent.exit_code("after") == 0 and agent.alive()


@pytest.mark.slow
def test_idle_agent_exits_0_by_itself(start_agent: Callable[..., AgentProcess]) -> None:
    agent = start_agent(idle_timeout=2)
    assert agent.proc.wait(timeout=30) == 0
    agent.wait_line(lambda line: line == "netorch-agent: idle for 2 s, exiting")


@pytest.mark.slow
def test_sigterm_to_the_agent_stops_the_job_reports_it_and_exits_143(
        tmp_path: Path, start_agent: Callable[..., AgentProcess]) -> None:
    script = write(tmp_path / "job" / "ranks.py", RANKS)
    agent = start_agent()
    submit(agent.spool, "job", [*node_args(2), str(script)])
    pids = wait_for_pids(script.parent, 2)
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(timeout=20) == 128 + signal.SIGTERM
    assert agent.exit_code("job", timeout=5) == 128 + signal.SIGTERM
    assert wait_gone(pids, timeout=5)


@pytest.mark.slow
def test_job_processes_die_with_a_sigkilled_agent(tmp_path: Path, start_agent: Callable[..., AgentProcess]) -> None:
    script = write(tmp_path / "job" / "ranks.py", RANKS)
    agent = start_agent()
    submit(agent.spool, "job", [*node_args(2), str(script)])
    pids = wait_for_pids(script.parent, 2)
    agent.proc.kill()
    agent.proc.wait(timeout=10)
    assert wait_gone(pids, timeout=10), "PR_SET_PDEATHSIG should have killed the job child and its ranks"
