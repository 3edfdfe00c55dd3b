"""Secure by default: credentials never printed, unique temp files, TLS that verifies the
daemon, link emulation that really drops NET_ADMIN, workloads that do not run as root.

Unit tier first (no daemon); the Docker tier (marked ``docker``) runs against the real daemon.
"""

from __future__ import annotations

import base64
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netns_daemon import openssl_pki, sh, stop_netns_daemon
from docker_fixtures import docker_client  # noqa: F401  (fixture)

from orchestrator import metrics
from orchestrator.metrics import push_report, redact_url, split_credentials

REPORT: dict[str, Any] = {"run_id": "sec-1", "kind": "bench", "backend": "process",
                          "dist_backend": "gloo", "ok": True, "results": []}


# ---- credentials in a Pushgateway URL ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("http://alice:s3cret@gw.example:9091", "http://***@gw.example:9091"),
        ("https://alice:s3cret@gw.example/prefix", "https://***@gw.example/prefix"),
        ("http://token@10.0.0.1:9091", "http://***@10.0.0.1:9091"),
        ("http://u:p%40ss@[::1]:9091", "http://***@[::1]:9091"),
        ("http://127.0.0.1:9091", "http://127.0.0.1:9091"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
    assert "s3cret" not in redact_url(url) and "alice" not in redact_url(url)


def test_split_credentials_decodes_and_strips() -> None:
    assert split_credentials("http://u:p%40ss@h:9091/x") == ("http://h:9091/x", "u", "p@ss")
    assert split_credentials("http://h:9091") == ("http://h:9091", None, None)


class _Gateway(http.server.BaseHTTPRequestHandler):
    """A Pushgateway stand-in: records each request's Authorization header and path;
    answers 401 unless the expected credentials came."""

    seen: list[tuple[str, str | None]] = []
    expected = "Basic " + base64.b64encode(b"alice:s3cret-pw").decode()

    def do_PUT(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        auth = self.headers.get("Authorization")
        self.seen.append((self.path, auth))
        self.send_response(200 if auth == self.expected else 401)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[int]:
    _Gateway.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_push_sends_url_credentials_as_basic_auth(gateway: int) -> None:
    url = f"http://alice:s3cret-pw@127.0.0.1:{gateway}"
    assert push_report(REPORT, url, "netorch", timeout_s=2, attempts=1) is None
    path, auth = _Gateway.seen[-1]
    assert auth == _Gateway.expected
    assert path.startswith("/metrics/job/netorch_bench/cluster/netorch")


def test_push_failure_message_never_shows_the_password(gateway: int) -> None:
    url = f"http://alice:wrong-password@127.0.0.1:{gateway}"
    problem = push_report(REPORT, url, "netorch", timeout_s=2, attempts=1)
    assert problem is not None and "401" in problem
    assert "wrong-password" not in problem and "alice" not in problem
    assert f"http://***@127.0.0.1:{gateway}" in problem


def test_atomic_write_uses_a_unique_temp_file(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "targets.json"
    # A file squatting on the old fixed temp name is neither followed nor clobbered.
    squatter = tmp_path / f".{target.name}.tmp"
    squatter.write_text("not yours")
    temp_names: list[str] = []
    real_replace = metrics.os.replace

    def spy(src: Any, dst: Any) -> None:
        temp_names.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(metrics.os, "replace", spy)
    metrics._write_atomic(target, "one\n")
    metrics._write_atomic(target, "two\n")
    assert target.read_text() == "two\n" and squatter.read_text() == "not yours"
    assert len(set(temp_names)) == 2 and squatter.name not in temp_names
    assert sorted(p.name for p in tmp_path.iterdir()) == [squatter.name, target.name]
    assert target.stat().st_mode & 0o777 == 0o644


# ---- link emulation never hands NET_ADMIN to the workload ---------------------------------------


def _gate_script(tmp_path: Path) -> list[str]:
    """The real gate command of a link-emulating plan, its gate file moved into ``tmp_path``."""
    from orchestrator.backends.docker.kwargs import GATE_FILE, gate_command
    from orchestrator.plan import build_plan
    from orchestrator.settings import load_settings

    plan = build_plan(load_settings(overrides={"network": {"link": {"rate": "1gbit"}}}),
                      "sec-run", "docker")
    cmd = gate_command(plan.runtime, ("workload", "arg"))
    (tmp_path / "go").touch()
    return [cmd[0], cmd[1], cmd[2].replace(GATE_FILE, str(tmp_path / "go")), *cmd[3:]]


def test_gate_refuses_to_start_without_setpriv(tmp_path: Path) -> None:
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "workload").write_text("#!/bin/sh\necho WORKLOAD RAN\n")
    (bin_dir / "workload").chmod(0o755)
    done = subprocess.run(["/bin/sh", *_gate_script(tmp_path)[1:]], capture_output=True,
                          text=True, env={"PATH": str(bin_dir)}, timeout=30)
    assert done.returncode == 126
    assert "WORKLOAD RAN" not in done.stdout
    assert "no setpriv" in done.stderr and "NET_ADMIN" in done.stderr
    assert "install util-linux" in done.stderr


def test_gate_drops_the_capability_and_new_privileges(tmp_path: Path) -> None:
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "setpriv").write_text('#!/bin/sh\necho "setpriv $*"\n')
    (bin_dir / "setpriv").chmod(0o755)
    done = subprocess.run(["/bin/sh", *_gate_script(tmp_path)[1:]], capture_output=True,
                          text=True, env={"PATH": str(bin_dir)}, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("setpriv --no-new-privs --bounding-set -net_admin "
                                   "--inh-caps -net_admin -- workload arg")


# ---- TLS to a daemon: warnings and messages (no daemon) --------------------------------------


def test_plain_tcp_warns_that_the_api_is_unauthenticated_root(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from orchestrator.backends.docker import client as client_module
    from orchestrator.errors import DaemonUnavailableError

    client_module._warned.clear()
    with pytest.raises(DaemonUnavailableError):
        client_module.connect("tcp://127.0.0.1:1", timeout=2, label="host b")
    err = capsys.readouterr().err
    assert "host b: tcp://127.0.0.1:1 is plain TCP without TLS" in err
    assert "unauthenticated root on that host" in err


def test_tls_verify_false_is_explicit_and_warns(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.backends.docker import client as client_module
    from orchestrator.errors import DaemonUnavailableError
    from orchestrator.settings import HostSettings

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("x")
    key.write_text("x")
    host = HostSettings(name="b", url="tcp://127.0.0.1:1", tls_cert=str(cert),
                        tls_key=str(key), tls_verify=False)
    client_module._warned.clear()
    with pytest.raises(DaemonUnavailableError):
        client_module.connect_host(host, timeout=2)
    err = capsys.readouterr().err
    assert "does not verify the daemon's certificate (tls_verify = false)" in err


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"tls_verify": False}, "tls_verify = false only applies with TLS"),
        ({"tls_verify": False, "tls_cert": "c", "tls_key": "k", "tls_ca": "ca"},
         "tls_ca is set but tls_verify = false"),
    ],
)
def test_tls_verify_setting_is_validated(settings: dict[str, Any], needle: str) -> None:
    from pydantic import ValidationError

    from orchestrator.settings import HostSettings

    with pytest.raises(ValidationError, match=needle):
        HostSettings(name="b", url="tcp://10.0.0.2:2376", **settings)


def test_tls_failure_is_found_in_the_sdk_error_chain() -> None:
    from orchestrator.backends.docker.client import tls_failure

    inner = Exception("HTTPSConnectionPool(host='10.0.0.2', port=2376): Max retries exceeded "
                      "(Caused by SSLError(SSLCertVerificationError(1, '[SSL: "
                      "CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed "
                      "certificate in certificate chain (_ssl.c:1006)')))")
    outer = Exception("Error while fetching server API version")
    outer.__cause__ = inner
    assert tls_failure(outer) == ("certificate verify failed: self-signed certificate in "
                                  "certificate chain")
    assert tls_failure(Exception("[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca")) == \
        "the TLS handshake failed: tlsv1 alert unknown ca"
    assert tls_failure(Exception("Connection refused")) is None


# =================================== Docker tier: the real daemon ===============================

TLS_NETNS = "nttls"
TLS_VETH_HOST, TLS_VETH_NS = "nttls0", "nttls1"
TLS_ADDR_HOST, TLS_ADDR_NS = "10.253.0.1", "10.253.0.2"
TLS_ROOT = Path("/tmp/netorch-tls-test")
TLS_URL = f"tcp://{TLS_ADDR_NS}:2376"


_sh = sh


def _tls_teardown(daemon: subprocess.Popen[bytes] | None) -> None:
    stop_netns_daemon(daemon, TLS_ROOT, TLS_VETH_HOST, TLS_NETNS)


@pytest.fixture(scope="module")
def tls_daemon() -> Iterator[dict[str, Path]]:
    """A second dockerd in its own network namespace, reachable only at TLS_URL, requiring TLS
    with a client certificate (``--tlsverify``). Yields the PKI; everything goes afterwards."""
    from docker_fixtures import require_docker

    for tool in ("dockerd", "nsenter", "openssl", "ip"):
        if not shutil.which(tool):
            require_docker(f"the TLS test needs {tool}")
    if os.geteuid() != 0:
        require_docker("the TLS test starts a second daemon in a network namespace: needs root")
    daemon: subprocess.Popen[bytes] | None = None
    _tls_teardown(None)  # leftovers of an interrupted earlier run
    try:
        TLS_ROOT.mkdir(parents=True)
        pki = openssl_pki(TLS_ROOT, TLS_ADDR_NS)
        _sh("ip", "netns", "add", TLS_NETNS)
        _sh("ip", "link", "add", TLS_VETH_HOST, "type", "veth", "peer", "name", TLS_VETH_NS)
        _sh("ip", "link", "set", TLS_VETH_NS, "netns", TLS_NETNS)
        _sh("ip", "addr", "add", f"{TLS_ADDR_HOST}/30", "dev", TLS_VETH_HOST)
        _sh("ip", "link", "set", TLS_VETH_HOST, "up")
        for argv in (("ip", "addr", "add", f"{TLS_ADDR_NS}/30", "dev", TLS_VETH_NS),
                     ("ip", "link", "set", TLS_VETH_NS, "up"), ("ip", "link", "set", "lo", "up")):
            _sh("ip", "netns", "exec", TLS_NETNS, *argv)
        log = open(TLS_ROOT / "dockerd.log", "wb")
        # nsenter, not `ip netns exec`: that one hides the cgroup mounts dockerd needs.
        daemon = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{TLS_NETNS}", "dockerd",
             "--data-root", str(TLS_ROOT / "data"), "--exec-root", str(TLS_ROOT / "exec"),
             "--pidfile", str(TLS_ROOT / "dockerd.pid"), "--bridge=none", "--iptables=false",
             "--ip-masq=false", "--tlsverify", f"--tlscacert={pki['ca']}",
             f"--tlscert={pki['server']}", f"--tlskey={pki['server_key']}",
             "-H", f"{TLS_URL}", "-H", f"unix://{TLS_ROOT / 'docker.sock'}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 40
        while not (TLS_ROOT / "docker.sock").exists() or _sh(
                "docker", "-H", f"unix://{TLS_ROOT / 'docker.sock'}", "version",
                check=False).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the TLS daemon did not start: "
                                     + (TLS_ROOT / "dockerd.log").read_text()[-2000:])
            time.sleep(0.3)
        yield pki
    finally:
        _tls_teardown(daemon)


@pytest.mark.docker
def test_tls_with_the_right_ca_verifies_and_pings(tls_daemon: dict[str, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.backends.docker.client import connect_host, system_ca_store
    from orchestrator.settings import HostSettings

    # requests would let this replace tls_ca (psf/requests#3829); connect's client must not.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", system_ca_store() or "/etc/ssl/certs")

    host = HostSettings(name="tls", url=TLS_URL, tls_ca=str(tls_daemon["ca"]),
                        tls_cert=str(tls_daemon["client"]), tls_key=str(tls_daemon["client_key"]))
    with connect_host(host, timeout=20) as client:
        assert client.ping() is True
        assert client.api.verify == str(tls_daemon["ca"])


@pytest.mark.docker
def test_tls_with_a_wrong_ca_is_refused_naming_verification(
    tls_daemon: dict[str, Path],
) -> None:
    from orchestrator.backends.docker.client import connect_host
    from orchestrator.errors import DaemonUnavailableError
    from orchestrator.settings import HostSettings

    host = HostSettings(name="tls", url=TLS_URL, tls_ca=str(tls_daemon["wrong_ca"]),
                        tls_cert=str(tls_daemon["client"]), tls_key=str(tls_daemon["client_key"]))
    with pytest.raises(DaemonUnavailableError) as info:
        connect_host(host, timeout=20)
    text = str(info.value)
    assert text.startswith(f"host tls: TLS verification of the daemon at {TLS_URL} failed")
    assert "certificate verify failed" in text and str(tls_daemon["wrong_ca"]) in text


@pytest.mark.docker
def test_tls_without_a_ca_checks_the_system_store_and_says_set_tls_ca(
    tls_daemon: dict[str, Path],
) -> None:
    from orchestrator.backends.docker.client import connect_host
    from orchestrator.errors import DaemonUnavailableError
    from orchestrator.settings import HostSettings

    host = HostSettings(name="tls", url=TLS_URL, tls_cert=str(tls_daemon["client"]),
                        tls_key=str(tls_daemon["client_key"]))
    with pytest.raises(DaemonUnavailableError) as info:
        connect_host(host, timeout=20)
    text = str(info.value)
    assert "TLS verification of the daemon" in text and "certificate verify failed" in text
    assert "the system CA store (no tls_ca set)" in text and "Set tls_ca" in text


@pytest.mark.docker
def test_tls_verify_false_connects_with_a_warning(tls_daemon: dict[str, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.backends.docker import client as client_module
    from orchestrator.settings import HostSettings

    client_module._warned.clear()
    host = HostSettings(name="tls", url=TLS_URL, tls_cert=str(tls_daemon["client"]),
                        tls_key=str(tls_daemon["client_key"]), tls_verify=False)
    with client_module.connect_host(host, timeout=20) as client:
        assert client.ping() is True
    assert "does not verify the daemon's certificate" in capsys.readouterr().err


@pytest.mark.docker
def test_a_client_without_the_daemons_trust_is_refused(tls_daemon: dict[str, Path],
                                                       tmp_path: Path) -> None:
    """--tlsverify on the daemon: a client certificate from another CA gets no API."""
    from orchestrator.backends.docker.client import connect
    from orchestrator.errors import DaemonUnavailableError

    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    _sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        "/CN=stranger", "-keyout", str(key), "-out", str(cert))
    with pytest.raises(DaemonUnavailableError, match="TLS"):
        connect(TLS_URL, tls_ca=str(tls_daemon["ca"]), tls_cert=str(cert), tls_key=str(key),
                timeout=20)


# ---- the workload runs unprivileged; its files on the host are the invoking user's ------------


def _netorch_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETORCH_")}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "400"})
    return env


@pytest.fixture
def docker_names(docker_client: Any) -> Iterator[str]:  # noqa: F811
    """A random cluster name; every container and network carrying it is removed afterwards."""
    import secrets

    try:
        docker_client.images.get("netorch:latest")
    except Exception:
        from docker_fixtures import require_docker

        require_docker("image netorch:latest is not on the daemon; build it first")
    name = "nt-" + secrets.token_hex(4)
    yield name
    for c in docker_client.containers.list(all=True, filters={"name": name}, ignore_removed=True):
        c.remove(force=True)
    for n in docker_client.networks.list(filters={"name": name}):
        n.remove()


@pytest.mark.docker
def test_train_checkpoints_belong_to_the_invoking_user(docker_names: str,
                                                       tmp_path: Path) -> None:
    from orchestrator.backends.docker.kwargs import container_user, user_ids

    uid, gid = user_ids(container_user(None))
    assert uid != 0  # root invokers (CI) get FALLBACK_USER, never root
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "train", "--backend", "docker", "-n", "1",
         "--output", str(tmp_path / "runs"), "--subnet", "10.254.7.0/24", "--steps", "20",
         "--checkpoint-every", "10", "--quiet", "--set", "metrics.enabled=false",
         "--set", f"cluster.name={docker_names}"],
        capture_output=True, text=True, env=_netorch_env(), timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = [d for d in (tmp_path / "runs").iterdir() if not d.name.startswith("_")]
    files = sorted((run / "checkpoints").glob("ckpt-*.ckpt"))
    assert [f.name for f in files] == ["ckpt-00000010.ckpt", "ckpt-00000020.ckpt"]
    for f in files:
        st = f.stat()
        assert (st.st_uid, st.st_gid) == (uid, gid), f"{f.name} belongs to {st.st_uid}:{st.st_gid}"


@pytest.mark.docker
def test_explicit_user_gated_link_emulation_and_no_net_admin(
    docker_client: Any, docker_names: str, tmp_path: Path,  # noqa: F811
) -> None:
    """docker.user = 2345:2346 with a shaped link: tc and the gate run as root via exec, the
    workload runs as 2345 with HOME=/tmp, cannot use NET_ADMIN, and its file is 2345's."""
    import dataclasses

    from orchestrator.backends.docker.kwargs import network_create_kwargs
    from orchestrator.backends.docker.nodes import follow_nodes, start_containers
    from orchestrator.plan import MountSpec, build_plan
    from orchestrator.settings import load_settings

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    if os.geteuid() == 0:
        os.chown(ckpt, 0, 0)
    settings = load_settings(overrides={
        "cluster": {"name": docker_names, "nodes": 1},
        "network": {"subnet": "10.254.8.0/24", "link": {"rate": "1gbit"}}})
    plan = build_plan(settings, "sec-user", "docker")
    script = ('echo "uid=$(id -u) gid=$(id -g) home=$HOME"; '
              'if ip link set eth0 mtu 1400 2>/dev/null; then echo NET_ADMIN=yes; '
              'else echo NET_ADMIN=no; fi; tc qdisc show dev eth0; '
              'echo data > /netorch/checkpoints/written')
    master = dataclasses.replace(
        plan.master, command=("sh", "-c", script),
        mounts=(MountSpec(str(ckpt), "/netorch/checkpoints"),))
    plan = dataclasses.replace(plan, nodes=(master,))
    lines: list[str] = []
    network = docker_client.networks.create(**network_create_kwargs(plan))
    try:
        containers = start_containers(plan, network.id, lambda node: docker_client,
                                      lambda node: node.name, user="2345:2346")
        (node,) = follow_nodes(plan, containers, lambda _, line: lines.append(line), None)
        deadline = time.monotonic() + 60
        while node.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        result = node.poll()
        assert result is not None and result.exit_code == 0, lines
    finally:
        for c in docker_client.containers.list(all=True, filters={"name": docker_names}):
            c.remove(force=True)
        network.remove()
    assert "uid=2345 gid=2346 home=/tmp" in lines
    assert "NET_ADMIN=no" in lines
    assert any("qdisc tbf" in line for line in lines), lines  # set-up exec (root) shaped it
    written = ckpt / "written"
    assert (written.stat().st_uid, written.stat().st_gid) == (2345, 2346)
    if os.geteuid() == 0:  # netorch (root) handed its folder to the containers' user
        assert (ckpt.stat().st_uid, ckpt.stat().st_gid) == (2345, 2346)


@pytest.mark.docker
def test_an_image_without_setpriv_never_runs_the_workload_with_net_admin(
    docker_client: Any, docker_names: str,  # noqa: F811
) -> None:
    import dataclasses
    import io

    from orchestrator.backends.docker.kwargs import GATE_NO_SETPRIV_EXIT, network_create_kwargs
    from orchestrator.backends.docker.nodes import follow_nodes, start_containers
    from orchestrator.plan import build_plan
    from orchestrator.settings import load_settings

    image = f"{docker_names}-nosetpriv:test"
    dockerfile = b"FROM netorch:latest\nRUN rm -f /usr/bin/setpriv /bin/setpriv\n"
    docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=image, rm=True, forcerm=True)
    settings = load_settings(overrides={
        "cluster": {"name": docker_names, "nodes": 1, "image": image},
        "network": {"subnet": "10.254.9.0/24", "link": {"rate": "1gbit"}}})
    plan = build_plan(settings, "sec-nosetpriv", "docker")
    master = dataclasses.replace(plan.master, command=("sh", "-c", "echo WORKLOAD RAN"))
    plan = dataclasses.replace(plan, nodes=(master,))
    lines: list[str] = []
    network = docker_client.networks.create(**network_create_kwargs(plan))
    try:
        containers = start_containers(plan, network.id, lambda node: docker_client,
                                      lambda node: node.name, user="root")
        (node,) = follow_nodes(plan, containers, lambda _, line: lines.append(line), None)
        deadline = time.monotonic() + 60
        while node.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        result = node.poll()
    finally:
        for c in docker_client.containers.list(all=True, filters={"name": docker_names}):
            c.remove(force=True)
        network.remove()
        docker_client.images.remove(image, force=True)
    assert result is not None and result.exit_code == GATE_NO_SETPRIV_EXIT, lines
    assert "WORKLOAD RAN" not in lines
    assert any("the image has no setpriv" in line and "NET_ADMIN" in line for line in lines)
