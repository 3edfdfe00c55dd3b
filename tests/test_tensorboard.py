"""``netorch run --tensorboard``: every node writes event files into one folder at the same path,
a real TensorBoard (PyPI, on the host) serves it on 127.0.0.1, and its HTTP API lists the runs
and the scalar while netorch keeps serving after the run, until Ctrl-C (SIGINT here).

The job runs on real containers of the netorch image, which has no tensorboard package: the
script writes its events with a few lines of its own (TFRecord framing, CRC32C and the Event
protobuf by hand), the format ``torch.utils.tensorboard`` writes where the package exists.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import netorch_env
from test_docker_backend import Tag, client, tag  # noqa: F401  (fixtures)
from test_faults import free_test_subnet
from test_metrics_servers import free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow]

WRITER = r'''
import os, socket, struct, time

def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF

def masked(data):
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

def varint(n):
    out = b""
    while True:
        bits, n = n & 0x7F, n >> 7
        out += bytes([bits | (0x80 if n else 0)])
        if not n:
            return out

def field(number, wire, payload):
    return varint(number << 3 | wire) + payload

def length_delimited(number, payload):
    return field(number, 2, varint(len(payload)) + payload)

def event(step, tag=None, value=None, version=None):
    body = field(1, 1, struct.pack("<d", time.time())) + field(2, 0, varint(step))
    if version is not None:
        body += length_delimited(3, version.encode())
    if tag is not None:
        summary_value = length_delimited(1, tag.encode()) + field(2, 5, struct.pack("<f", value))
        body += length_delimited(5, length_delimited(1, summary_value))
    return body

def record(data):
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked(header)) + data + struct.pack("<I", masked(data))

rank = int(os.environ["RANK"])
folder = os.path.join(os.environ["NETORCH_TENSORBOARD_DIR"], f"rank{rank}")
os.makedirs(folder, exist_ok=True)
name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
with open(os.path.join(folder, name), "wb") as fh:
    fh.write(record(event(0, version="brain.Event:2")))
    for step in range(5):
        fh.write(record(event(step, "train/loss", 1.0 / (step + 1) + rank)))
print(f"rank {rank} wrote {folder}", flush=True)
'''


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read().decode())


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_run_with_tensorboard_serves_every_nodes_scalars(
        tag: Tag, client: Any, tmp_path: Path) -> None:  # noqa: F811
    code = tmp_path / "code"  # 0755: the containers' user reads it (tmp_path is 0700)
    code.mkdir()
    (code / "job.py").write_text(WRITER)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "run", "--backend", "docker", "--nodes", "2",
         "--subnet", free_test_subnet(client), "--set", f"cluster.name={tag.name}",
         "-o", str(tmp_path / "runs"), "--workdir", "code", "--tensorboard",
         "--set", f"run.tensorboard_port={port}", "--", "python", "job.py"],
        cwd=tmp_path, env=netorch_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: any("TensorBoard keeps serving" in x for x in lines) or proc.poll(),
                 240, "the run to finish")
        assert proc.poll() is None, "".join(lines)
        text = "".join(lines)
        assert "every rank exited 0 on 2 node(s)" in text, text
        (run_dir,) = (tmp_path / "runs").iterdir()
        logdir = run_dir / "tensorboard"
        assert sorted(p.name for p in logdir.iterdir()) == ["rank0", "rank1"]
        runs = wait_for(lambda: sorted(get_json(f"{base}/data/runs")) == ["rank0", "rank1"],
                        60, "TensorBoard to list both runs")
        assert runs
        tags = get_json(f"{base}/data/plugin/scalars/tags")
        assert set(tags) == {"rank0", "rank1"} and all("train/loss" in t for t in tags.values())
        points = get_json(f"{base}/data/plugin/scalars/scalars?run=rank1&tag=train/loss")
        assert [p[1] for p in points] == [0, 1, 2, 3, 4]  # [wall_time, step, value]
        assert points[-1][2] == pytest.approx(1.0 / 5 + 1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: TensorBoard stops, netorch exits 0
        rc = proc.wait(timeout=60)
        reader.join(timeout=5)
    assert rc == 0, "".join(lines)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{base}/data/runs", timeout=2)
