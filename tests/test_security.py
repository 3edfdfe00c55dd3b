"""Secure by default: credentials never printed, unique temp files, TLS that verifies the
daemon, link emulation that really drops NET_ADMIN, workloads that do not run as root.

Unit tier first (no daemon); the Docker tier (marked ``docker``) runs against the real daemon.
"""

from __future__ import annotations

import base64
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
