"""``netorch run``: the user's own training script, on the process backend and on real containers.

The job is ``examples/ddp-user-project/train.py``, a plain-torch DDP script that knows nothing
about netorch (reads /data, writes /checkpoints, resumes from its newest checkpoint), plus small
scripts written per test for the failure cases.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from conftest import REPO
from docker_fixtures import docker_client, require_docker  # noqa: F401  (fixture)
from orchestrator.backends.process import run_processes
from orchestrator.plan import LABEL_RUN
from test_docker_backend import Tag, client, netorch, netorch_env, tag  # noqa: F401  (fixtures)

EXAMPLE = REPO / "examples" / "ddp-user-project"


def run(cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(netorch("run", "-o", str(cwd / "runs"), *args), cwd=cwd,
                          env=netorch_env(), capture_output=True, text=True, timeout=timeout)


def make_data(tmp: Path) -> Path:
    data = tmp / "data"
    subprocess.run([sys.executable, str(EXAMPLE / "make_data.py"), str(data)], check=True,
                   capture_output=True)
    return data


def report(cwd: Path) -> dict[str, Any]:
    (path,) = (cwd / "runs").glob("*/report.json")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def master_log(cwd: Path) -> str:
    (path,) = (cwd / "runs").glob("*/logs/*-master.log")
    return path.read_text()


def losses(log: str) -> list[float]:
    return [float(m.group(1)) for m in re.finditer(r"^step \d+ loss ([0-9.e+-]+)$", log, re.M)]


def final_sha(log: str) -> str:
    found = re.findall(r"final_weights_sha256=([0-9a-f]{64})", log)
    assert found, log[-2000:]
    return found[-1]


def write_script(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


EXIT_7 = """
import os, sys, time
if os.environ["RANK"] == "1":
    time.sleep(1.0)
    print("rank 1 gives up", flush=True)
    sys.exit(7)
time.sleep(120)
"""


# ---- process backend --------------------------------------------------------------------------


@pytest.mark.slow
def test_example_runs_on_the_process_backend(tmp_path: Path) -> None:
    data, ckpt = make_data(tmp_path), tmp_path / "ckpt"
    out = run(tmp_path, "--backend", "process", "--nodes", "2", "--master-port", "29611",
              "--workdir", str(EXAMPLE), "--checkpoint-dir", str(ckpt), "--",
              "python", "train.py", "--data", str(data), "--checkpoints", "{checkpoint_dir}",
              "--steps", "60", "--checkpoint-every", "30")
    assert out.returncode == 0, out.stderr[-3000:]
    log = master_log(tmp_path)
    assert "world_size=2 master_addr=127.0.0.1 master_port=29611 rank=0" in log
    curve = losses(log)
    assert len(curve) >= 3 and curve[-1] < curve[0] / 2
    assert sorted(p.name for p in ckpt.iterdir()) == ["ckpt-00000030.pt", "ckpt-00000060.pt"]
    rep = report(tmp_path)
    assert rep["kind"] == "run" and rep["ok"] is True and rep["world_size"] == 2
    assert [n["exit"] for n in rep["nodes"]] == ["exit code 0", "exit code 0"]
    assert rep["restarts"] == 0 and rep["error"] is None


@pytest.mark.slow
def test_rank_exit_7_fails_fast_naming_node_and_code(tmp_path: Path) -> None:
    write_script(tmp_path / "code", "quit7.py", EXIT_7)
    started = time.monotonic()
    out = run(tmp_path, "--backend", "process", "--nodes", "2", "--master-port", "29612",
              "--workdir", str(tmp_path / "code"), "--", "python", "quit7.py")
    took = time.monotonic() - started
    assert out.returncode == 3, out.stderr
    assert took < 10, f"took {took:.1f} s"
    assert re.search(r"node \S+-worker-1 failed: exit code 7", out.stderr), out.stderr
    assert "rank 1 gives up" in out.stderr
    rep = report(tmp_path)
    assert rep["ok"] is False and "exit code 7" in rep["error"]
    assert run_processes(rep["run_id"]) == []


@pytest.mark.slow
def test_placeholders_and_env_reach_every_node(tmp_path: Path) -> None:
    out = run(tmp_path, "--backend", "process", "--nodes", "2", "--master-port", "29613",
              "--env", "MY_SETTING=a=b c", "--", "sh", "-c",
              'echo "ARGS $0 $1 $2 $3 $4 rank=$RANK local=$LOCAL_RANK mine=$MY_SETTING"',
              "{node_rank}", "{nnodes}", "{world_size}", "{master_addr}", "{master_port}")
    assert out.returncode == 0, out.stderr
    logs = {p.name.rsplit("-", 1)[-1]: p.read_text() for p in (tmp_path / "runs").glob("*/logs/*.log")}
    assert "ARGS 0 2 2 127.0.0.1 29613 rank=0 local=0 mine=a=b c" in logs["master.log"]
    assert "ARGS 1 2 2 127.0.0.1 29613 rank=1 local=0 mine=a=b c" in logs["1.log"]


@pytest.mark.parametrize(("args", "message"), [
    (["--backend", "process", "-v", "/tmp:/data", "--", "python", "x.py"],
     "--mount '/tmp:/data:rw': the process backend runs nodes on this host's own filesystem"),
    (["--backend", "process", "--env", "RANK=3", "--", "python", "x.py"],
     "--env 'RANK=3': the plan sets RANK on every node"),
    (["--backend", "process", "--workdir", "/no/such/dir", "--", "python", "x.py"],
     "--workdir /no/such/dir: no such directory"),
    (["--backend", "process", "--", "python", "x.py", "{rank}"],
     "unknown placeholder {rank}"),
    (["--backend", "docker", "-v", "./missing:/data", "--", "python", "x.py"],
     "does not exist"),
    (["--backend", "process"], "Missing argument"),
])
def test_bad_run_input_is_one_line_and_creates_nothing(tmp_path: Path, args: list[str],
                                                       message: str) -> None:
    out = run(tmp_path, *args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ---- docker backend ---------------------------------------------------------------------------


def docker_args(tag: Tag, subnet: str) -> list[str]:
    return ["--backend", "docker", "--subnet", subnet, "--set", f"cluster.name={tag.name}"]


def assert_gone(client: docker.DockerClient, run_id: str) -> None:  # noqa: F811
    flt = {"label": f"{LABEL_RUN}={run_id}"}
    assert client.containers.list(all=True, filters=flt, ignore_removed=True) == []
    assert client.networks.list(filters=flt) == []


@pytest.mark.docker
def test_example_runs_on_three_containers(client: docker.DockerClient, tag: Tag,  # noqa: F811
                                          tmp_path: Path) -> None:
    data, ckpt = make_data(tmp_path), tmp_path / "ckpt"
    out = run(tmp_path, *docker_args(tag, "10.81.1.0/24"), "--nodes", "3",
              "--workdir", str(EXAMPLE), "--checkpoint-dir", str(ckpt),
              "-v", f"{data}:/data:ro", "--", "python", "train.py", "--steps", "60",
              "--checkpoint-every", "30")
    assert out.returncode == 0, out.stderr[-3000:]
    log = master_log(tmp_path)
    assert "world_size=3 master_addr=10.81.1.2 master_port=29500 rank=0" in log
    curve = losses(log)
    assert curve[-1] < curve[0] / 2
    assert (ckpt / "ckpt-00000060.pt").is_file()
    rep = report(tmp_path)
    assert rep["ok"] and [n["ip"] for n in rep["nodes"]] == ["10.81.1.2", "10.81.1.3", "10.81.1.4"]
    assert {"source": str(data), "target": "/data", "read_only": True, "kind": "bind"} in (
        rep["nodes"][1]["mounts"])
    assert_gone(client, rep["run_id"])


@pytest.mark.docker
def test_read_only_mount_gives_erofs_and_the_host_is_unchanged(
        client: docker.DockerClient, tag: Tag, tmp_path: Path) -> None:  # noqa: F811
    data = make_data(tmp_path)
    before = sorted(p.name for p in data.iterdir())
    code = write_script(tmp_path / "code", "write.py", (
        "import errno\n"
        "try:\n"
        "    open('/data/intruder.txt', 'w').write('x')\n"
        "except OSError as e:\n"
        "    print('write failed:', errno.errorcode[e.errno], e.strerror, flush=True)\n"
        "    raise SystemExit(5)\n"))
    out = run(tmp_path, *docker_args(tag, "10.81.2.0/24"), "--nodes", "2",
              "--workdir", str(code.parent), "-v", f"{data}:/data:ro", "--", "python", "write.py")
    assert out.returncode == 3, out.stderr
    assert "write failed: EROFS Read-only file system" in out.stderr
    assert sorted(p.name for p in data.iterdir()) == before
    assert_gone(client, report(tmp_path)["run_id"])


@pytest.mark.docker
def test_container_rank_exit_7_fails_fast(client: docker.DockerClient, tag: Tag,  # noqa: F811
                                          tmp_path: Path) -> None:
    write_script(tmp_path / "code", "quit7.py", EXIT_7)
    started = time.monotonic()
    out = run(tmp_path, *docker_args(tag, "10.81.3.0/24"), "--nodes", "2",
              "--workdir", str(tmp_path / "code"), "--", "python", "quit7.py")
    took = time.monotonic() - started
    assert out.returncode == 3, out.stderr
    assert re.search(r"node \S+-worker-1 failed: exit code 7", out.stderr), out.stderr
    assert took < 20, f"took {took:.1f} s in all (containers start, the rank waits 1 s)"
    assert_gone(client, report(tmp_path)["run_id"])


@pytest.mark.docker
def test_killed_worker_restarts_and_resumes_bit_identical(
        client: docker.DockerClient, tag: Tag, tmp_path: Path) -> None:  # noqa: F811
    data = make_data(tmp_path)
    job = ["--", "python", "train.py", "--steps", "300", "--checkpoint-every", "25"]
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref = run(ref_dir, *docker_args(tag, "10.81.4.0/24"), "--nodes", "2", "--workdir",
              str(EXAMPLE), "--checkpoint-dir", str(ref_dir / "ckpt"), "-v", f"{data}:/data:ro",
              *job)
    assert ref.returncode == 0, ref.stderr[-3000:]
    want = final_sha(master_log(ref_dir))

    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen(
        netorch("run", "-o", str(tmp_path / "runs"), *docker_args(tag, "10.81.4.0/24"),
                "--nodes", "2", "--max-restarts", "1", "--workdir", str(EXAMPLE),
                "--checkpoint-dir", str(ckpt), "-v", f"{data}:/data:ro", *job),
        cwd=tmp_path, env=netorch_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        deadline = time.monotonic() + 120
        while not (ckpt / "ckpt-00000100.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint 100"
            time.sleep(0.05)
        (worker,) = [c for c in tag.containers() if c.name.endswith("-worker-1")]
        worker.kill()  # SIGKILL, mid-run
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "restart 1/1" in err and "killed by SIGKILL" in err
    log = master_log(tmp_path)
    assert "restart=1" in log and "resumed from" in log
    assert final_sha(log) == want
    rep = report(tmp_path)
    assert rep["restarts"] == 1 and "SIGKILL" in rep["failures"][0]
    assert_gone(client, rep["run_id"])


@pytest.mark.docker
def test_code_baked_into_a_user_image_runs(client: docker.DockerClient, tag: Tag,  # noqa: F811
                                           tmp_path: Path) -> None:
    image = f"{tag.name}-example:test"
    client.images.build(path=str(EXAMPLE), tag=image, rm=True, forcerm=True)
    try:
        data = make_data(tmp_path)
        out = run(tmp_path, *docker_args(tag, "10.81.5.0/24"), "--nodes", "2", "--image", image,
                  "-v", f"{data}:/data:ro", "--", "python", "train.py", "--steps", "40",
                  "--checkpoint-every", "0")
        assert out.returncode == 0, out.stderr[-3000:]
        assert "done" in master_log(tmp_path)
        assert report(tmp_path)["image"] == image
    finally:
        client.images.remove(image, force=True)


@pytest.mark.docker
def test_image_without_python_or_torch_is_refused_before_anything_exists(
        client: docker.DockerClient, tag: Tag, tmp_path: Path) -> None:  # noqa: F811
    try:
        client.images.get("netorch-base:bookworm")
    except docker.errors.ImageNotFound:
        require_docker("netorch-base:bookworm (the offline base image) is missing")
    out = run(tmp_path, *docker_args(tag, "10.81.6.0/24"), "--nodes", "2",
              "--image", "netorch-base:bookworm", "--", "python3", "-c", "print(1)")
    assert out.returncode == 2, out.stderr
    assert "netorch-base:bookworm has no `python` on its PATH" in out.stderr, out.stderr
    assert tag.netorch_made() == []
    # The throw-away check container, whose start failed, is gone too.
    assert client.containers.list(all=True, filters={
        "ancestor": "netorch-base:bookworm", "label": "io.netorch.managed=true"}) == []
    out = run(tmp_path, *docker_args(tag, "10.81.6.0/24"), "--nodes", "2",
              "--image", f"nt-missing-{secrets.token_hex(3)}:none", "--", "python", "x.py")
    assert out.returncode == 2 and "netorch never pulls" in out.stderr, out.stderr
