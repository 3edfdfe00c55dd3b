"""Faults a run must survive with one clear message and nothing left behind, against the real
daemon: a node OOM-killed under ``docker.memory``, two runs racing for one subnet, a full output
directory, SIGTERM during ``netorch image build``, the daemon restarted mid-run.

Each test names its resources ``nt-<hex>`` (the ``tag`` fixture fails the test when netorch left
any of them behind) and prints what it measured (``pytest -s``).
"""

from __future__ import annotations

import ipaddress
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from docker_fixtures import docker_client, require_docker  # noqa: F401  (fixture)
from orchestrator.backends.docker import DockerBackend
from orchestrator.backends.docker.backend import host_routes
from orchestrator.backends.docker.kwargs import container_create_kwargs
from orchestrator.errors import ConfigError, NetworkConflictError
from orchestrator.plan import LABEL_MANAGED, LABEL_RUN, build_plan
from orchestrator.settings import load_settings
from test_docker_backend import (  # noqa: F401  (fixtures)
    OWNER,
    Tag,
    client,
    netorch,
    netorch_env,
    start_bench,
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


def free_test_subnet(client: docker.DockerClient) -> str:
    """A /24 in 10.200-250.x.0 that no network and no host route uses (tests run in parallel)."""
    taken = [ipaddress.ip_network(cfg["Subnet"]) for n in client.api.networks()
             for cfg in (n.get("IPAM") or {}).get("Config") or [] if "." in cfg.get("Subnet", "")]
    taken += [route for _, route in host_routes()]
    while True:
        cand = ipaddress.ip_network(f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24")
        if not any(cand.overlaps(t) for t in taken):
            return str(cand)


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


# ---- 2. two runs, one subnet ----------------------------------------------------------------


@pytest.mark.docker
def test_subnet_taken_after_preflight_is_named(client: docker.DockerClient, tag: Tag) -> None:
    """The race itself, made certain: preflight passes, then another run's network takes the
    subnet, then ``up``: the daemon's "Pool overlaps" becomes preflight's message."""
    subnet = free_test_subnet(client)
    plan = build_plan(load_settings(overrides={
        "cluster": {"name": tag.name, "nodes": 2}, "network": {"subnet": subnet}}),
        "race-1", "docker")
    backend = DockerBackend(client)
    backend.preflight(plan)
    first = client.networks.create(
        f"{tag.name}-first", driver="bridge", labels={OWNER: tag.name},
        ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)]))
    try:
        with pytest.raises(NetworkConflictError) as caught:
            backend.up(plan, lambda node, line: None)
    finally:
        backend.down(plan)
    message = str(caught.value)
    print(f"race: {message}")
    assert f"overlaps Docker network '{first.name}'" in message, message
    assert "--subnet " in message and subnet not in message.split("--subnet ", 1)[1], message
    labels_gone(client, plan.run_id)


@pytest.mark.docker
def test_two_runs_on_one_subnet(client: docker.DockerClient, tag: Tag, tmp_path: Path) -> None:
    """Two benches started together on one subnet: one finishes, the other is refused naming
    the winner's network and a free subnet, whether preflight or ``networks.create`` saw it."""
    subnet = free_test_subnet(client)
    args = ("-n", "2", "--subnet", subnet, "-B", "1M", "-E", "1M")
    for i in range(2):
        (tmp_path / str(i)).mkdir()
    started = time.monotonic()
    procs = [start_bench(tag, tmp_path / str(i), *args) for i in range(2)]
    outs = [(*p.communicate(timeout=240), p.returncode, time.monotonic() - started)
            for p in procs]
    for _, err, rc, took in outs:
        print(f"two runs: exit {rc} after {took:.1f} s: {err.strip()[-300:]}")
    codes = sorted(rc for _, _, rc, _ in outs)
    assert codes == [0, 2], outs
    _, loser_err, _, _ = next(o for o in outs if o[2] == 2)
    winner_out, _, _, _ = next(o for o in outs if o[2] == 0)
    assert "Traceback" not in loser_err
    error = next(line for line in loser_err.splitlines() if line.startswith("error:"))
    assert f"subnet {subnet} overlaps Docker network '{tag.name}-" in error, error
    assert "use a free subnet, e.g. --subnet " in error, error
    assert "avg busbw" in winner_out


# ---- 3. the output directory full -------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (root only): the output directory that fills up during a run."""
    mnt = tmp_path / "out"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        require_docker(f"cannot mount a tmpfs (root needed): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.docker
@pytest.mark.parametrize("prefill", [False, True], ids=["fills-up", "full-from-start"])
def test_full_output_directory(client: docker.DockerClient, tag: Tag, tmp_path: Path,
                               small_tmpfs: Path, prefill: bool) -> None:
    """No success claimed: exit 4 and one line naming the file and "No space left on device",
    whether the report (fills up) or the nodes' logs (full from the start) hit the limit."""
    if prefill:
        with (small_tmpfs / "ballast").open("wb", buffering=0) as fh:
            with pytest.raises(OSError, match="No space left"):
                while True:
                    fh.write(b"\0" * 4096)
    started = time.monotonic()
    proc = subprocess.run(
        netorch("bench", "--backend", "docker", "--nodes", "2", "-o", str(small_tmpfs),
                "--set", f"cluster.name={tag.name}", "--subnet", free_test_subnet(client),
                "-B", "1K", "-E", "4M"),
        cwd=tmp_path, env=netorch_env(), capture_output=True, text=True, timeout=240)
    took = time.monotonic() - started
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    print(f"disk full ({'prefilled' if prefill else 'empty'}): exit {proc.returncode} after "
          f"{took:.1f} s: {errors}")
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert len(errors) == 1, proc.stderr[-2000:]
    path = errors[0].split()[3].rstrip(":")
    assert path.startswith(f"{small_tmpfs}/"), errors[0]
    assert "No space left on device" in errors[0], errors[0]
    if prefill:
        assert path.endswith(".log"), errors[0]  # a node's log: the first write
    run_id = path.removeprefix(f"{small_tmpfs}/").split("/")[0]
    labels_gone(client, run_id)


# ---- 4. SIGTERM during `netorch image build` ------------------------------------------------

BASE = "netorch-base:bookworm"
# `netorch image build` with the Dockerfile replaced by a throw-away one (the build context is
# otherwise netorch's own): the same code path, a build of seconds instead of minutes.
BUILD_WITH = (
    "import pathlib, sys, orchestrator.image as image\n"
    "image.DOCKERFILE = pathlib.Path(sys.argv.pop(1))\n"
    "from orchestrator.cli import app\n"
    "app()\n"
)


def image_build(dockerfile: Path, tag: str) -> list[str]:
    # --force: the inputs hash covers netorch's own Dockerfile, not this one.
    return [*netorch()[:1], "-c", BUILD_WITH, str(dockerfile), "image", "build", "--online",
            "--base-image", BASE, "--tag", tag, "--force"]


@pytest.mark.docker
def test_sigterm_stops_image_build(client: docker.DockerClient, tmp_path: Path, tag: Tag) -> None:
    try:
        client.images.get(BASE)
    except docker.errors.ImageNotFound:
        require_docker(f"base image {BASE} is missing; `netorch image build` makes it")
    image_tag = f"{tag.name}:tmp"
    marker = f"{tag.name}-building"
    quick, slow = tmp_path / "Dockerfile.quick", tmp_path / "Dockerfile.slow"
    quick.write_text(f"ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\nRUN echo {tag.name} > /previous\n")
    slow.write_text(f"ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\nRUN echo {marker}; sleep 300\n")
    try:
        done = subprocess.run(image_build(quick, image_tag), cwd=tmp_path, env=netorch_env(),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        previous = client.images.get(image_tag).id
        proc = subprocess.Popen(image_build(slow, image_tag), cwd=tmp_path, env=netorch_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            seen: list[str] = []
            for line in proc.stderr:  # the RUN step is under way once it prints the marker
                seen.append(line)
                if line.strip() == marker:
                    break
            else:
                raise AssertionError("the build never reached its RUN step:\n" + "".join(seen))
            signalled = time.monotonic()
            proc.terminate()
            rest = proc.communicate(timeout=60)[1]
            took = time.monotonic() - signalled
        finally:
            if proc.poll() is None:
                proc.kill()
        errors = [line for line in rest.splitlines() if line.startswith("error:")]
        print(f"image build: SIGTERM -> exit {proc.returncode} in {took:.1f} s: {errors}")
        assert proc.returncode == 130, rest
        assert len(errors) == 1 and "Traceback" not in rest, rest
        assert f"building {image_tag} was interrupted (received SIGTERM)" in errors[0]
        assert "intermediate containers were removed" in errors[0]
        assert f"{image_tag} is still the previous image {previous[:19]}" in errors[0]
        # Nothing of the builder left: no container runs (or waits in "created") the step.
        steps = [c.id[:12] for c in client.containers.list(all=True, ignore_removed=True)
                 if marker in " ".join(c.attrs["Config"].get("Cmd") or [])]
        assert steps == [], steps
        assert client.images.get(image_tag).id == previous
    finally:
        try:
            client.images.remove(image_tag, force=True)
        except docker.errors.ImageNotFound:
            pass


# ---- 5. the daemon restarted mid-run --------------------------------------------------------

DAEMON_ROOT = Path("/tmp/netorch-faults-daemon")
DAEMON_NETNS = "ntfaults"
DAEMON_URL = f"unix://{DAEMON_ROOT / 'docker.sock'}"


class SecondDaemon:
    """A dockerd of this module's own, in a network namespace (its iptables and bridges cannot
    touch the main daemon's) with its own data-root: one that may be stopped and restarted."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> docker.DockerClient:
        log = (DAEMON_ROOT / "dockerd.log").open("ab")
        # nsenter, not `ip netns exec`: that one hides the cgroup mounts dockerd needs.
        self.process = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{DAEMON_NETNS}", "dockerd",
             "--data-root", str(DAEMON_ROOT / "data"), "--exec-root", str(DAEMON_ROOT / "exec"),
             "--pidfile", str(DAEMON_ROOT / "dockerd.pid"), "-H", DAEMON_URL,
             "--bridge=none", "--iptables=false", "--ip-masq=false",
             "--storage-driver", "overlay2"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 40
        while True:
            try:
                c2 = docker.DockerClient(base_url=DAEMON_URL, timeout=300)
                c2.ping()
                return c2
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("the second daemon did not start: " + (
                        DAEMON_ROOT / "dockerd.log").read_text()[-2000:]) from None
                time.sleep(0.2)


@pytest.fixture(scope="module")
def second_daemon(docker_client: docker.DockerClient) -> Iterator[SecondDaemon]:  # noqa: F811
    import os
    import shutil

    from netns_daemon import sh, stop_netns_daemon

    if os.geteuid() != 0 or not shutil.which("dockerd") or not shutil.which("nsenter"):
        require_docker("a second daemon needs root, dockerd and nsenter")
    daemon = SecondDaemon()
    stop_netns_daemon(None, DAEMON_ROOT, "ntfaults-none", DAEMON_NETNS)  # an earlier run's
    try:
        DAEMON_ROOT.mkdir(parents=True)
        sh("ip", "netns", "add", DAEMON_NETNS)
        sh("ip", "netns", "exec", DAEMON_NETNS, "ip", "link", "set", "lo", "up")
        c2 = daemon.start()
        # Its image store is its own: the image travels by save -> load.
        c2.images.load(docker_client.images.get("netorch:latest").save(named=True))
        c2.close()
        yield daemon
    finally:
        stop_netns_daemon(daemon.process, DAEMON_ROOT, "ntfaults-none", DAEMON_NETNS)


@pytest.mark.docker
def test_daemon_restarted_mid_run(client: docker.DockerClient, second_daemon: SecondDaemon,
                                  tmp_path: Path) -> None:
    c2 = docker.DockerClient(base_url=DAEMON_URL, timeout=60)
    proc = subprocess.Popen(
        netorch("bench", "--backend", "docker", "-n", "2", "--quiet", "-o", str(tmp_path / "runs"),
                "--set", f"docker.host={DAEMON_URL}", "--subnet", free_test_subnet(client),
                "--set", "bench.iters=100000", "-B", "1M", "-E", "1M"),
        cwd=tmp_path, env=netorch_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(c2.containers.list(filters={"label": f"{LABEL_MANAGED}=true"})) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.3)
        time.sleep(3)  # the collectives are under way
        stopped = time.monotonic()
        assert second_daemon.process is not None
        second_daemon.process.terminate()  # SIGTERM, as a service manager's restart sends it
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
        c2.close()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    print(f"daemon restart: exit {proc.returncode} {took:.1f} s after SIGTERM: {errors}")
    assert proc.returncode == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert f"the Docker daemon at {DAEMON_URL} stopped answering during run " in errors[0]
    run_id = errors[0].split("during run ", 1)[1].split(",")[0]
    assert f"`netorch down --run {run_id}`" in errors[0]
    assert took < 15, took

    second_daemon.process.wait(timeout=60)
    c2 = second_daemon.start()
    try:
        flt = {"label": f"{LABEL_RUN}={run_id}"}
        left = [c.name for c in c2.containers.list(all=True, filters=flt)]
        print(f"after the restart, run {run_id} left: {left}")
        done = subprocess.run(
            netorch("down", "--run", run_id, "--set", f"docker.host={DAEMON_URL}"),
            cwd=tmp_path, env=netorch_env(), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        labels_gone(c2, run_id)
    finally:
        c2.close()
