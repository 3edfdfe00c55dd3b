"""The one way netorch talks to a daemon: :func:`connect`, plus small shared helpers.

Every Docker client -- the backends', the sweep's, the doctor's, the image builder's, the CLI's --
comes from :func:`connect` (or its wrappers for settings and hosts), so pool size, TLS, ssh and
the "no daemon" message are decided once. The client it returns closes at the end of a ``with``::

    with connect_settings(settings) as client:
        ...
"""

from __future__ import annotations

import os
import re
import ssl
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import docker.api.client
import docker.client
import docker.errors
import docker.tls
import urllib3.exceptions
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

from orchestrator.backends.docker.errors import (
    DAEMON_FIX,
    DOCKER_ERRORS,
    docker_errors,
    explanation,
)
from orchestrator.errors import BackendError, DaemonUnavailableError
from orchestrator.fanout import attempt_all
from orchestrator.plan import HostSpec
from orchestrator.settings import HostSettings, Settings

T = TypeVar("T")

# Two long-lived connections per node (log stream + wait) plus room for the main thread; the SDK's
# default pool of 10 would make urllib3 open and discard extra connections (and warn) above 4 nodes.
MAX_POOL_SIZE = 2 * 256 + 16
DEFAULT_TIMEOUT_S = 60  # the SDK's own default per request


class _APIClient(docker.api.client.APIClient):  # type: ignore[misc]  # the SDK is untyped
    """The SDK's API client, whose own TLS verification wins over the environment's.

    requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace a session's ``verify`` on every
    request (psf/requests#3829): with either set -- common on managed machines -- ``tls_ca``
    would be silently swapped for the system bundle. An explicit per-request ``verify`` still wins.
    """

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any,
                                   cert: Any) -> dict[str, Any]:
        merged: dict[str, Any] = super().merge_environment_settings(
            url, proxies, stream, verify, cert)
        if verify is None and self.verify is not True:
            merged["verify"] = self.verify
        return merged


class DockerClient(docker.client.DockerClient):  # type: ignore[misc]  # the SDK is untyped
    """The SDK's client that also closes with ``with`` (the SDK's own (7.x) has ``close()`` but
    is no context manager), and keeps the TLS verification it was given (see _APIClient)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.api = _APIClient(*args, **kwargs)

    def __enter__(self) -> DockerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect(
    url: str | None = None,
    *,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_verify: bool = True,
    timeout: int = DEFAULT_TIMEOUT_S,
    max_pool_size: int = MAX_POOL_SIZE,
    label: str | None = None,
) -> DockerClient:
    """A client of the daemon at ``url`` that answered (the SDK asks it for its API version).

    ``url`` None means DOCKER_HOST (with DOCKER_TLS_VERIFY / DOCKER_CERT_PATH) or the local
    socket. ``tls_cert`` + ``tls_key`` turn on TLS for a tcp:// URL, and the daemon's
    certificate is verified -- against ``tls_ca``, else the system's CA store -- unless
    ``tls_verify`` is False (a warning says what that exposes). A tcp:// URL without TLS is
    allowed with a warning. ssh:// goes through the ``ssh`` binary. ``label`` prefixes messages
    (``"host b"``). Raises DaemonUnavailableError naming the URL and the fix when none answers,
    and naming TLS verification when the daemon's certificate did not verify.
    Use it as ``with connect(...) as client:`` to close it.
    """
    prefix = f"{label}: " if label else ""
    where = url or "DOCKER_HOST / the local socket"
    tls: Any = False
    verify_against: str | None = None
    if tls_cert and tls_key:
        if not tls_verify:
            warn_once(f"{prefix}TLS to {url} does not verify the daemon's certificate "
                      "(tls_verify = false): anyone on the path can impersonate the daemon and "
                      "receive your jobs, their environment and mounts; set tls_ca instead")
            # Said once above; urllib3 would repeat it on every request.
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        else:
            verify_against = tls_ca or system_ca_store()
    else:
        insecure = url if url else os.environ.get("DOCKER_HOST", "")
        env_tls = os.environ.get("DOCKER_TLS_VERIFY") or os.environ.get("DOCKER_CERT_PATH")
        if insecure.startswith("tcp://") and not (url is None and env_tls):
            warn_once(f"{prefix}{insecure} is plain TCP without TLS: the Docker API is "
                      "unauthenticated root on that host for anyone who reaches the port; use "
                      "tls_cert/tls_key/tls_ca (port 2376) or ssh://")
    try:
        if tls_cert and tls_key:
            tls = docker.tls.TLSConfig(
                client_cert=(tls_cert, tls_key), ca_cert=verify_against,
                verify=bool(tls_verify),
            )
        if url:
            return DockerClient(
                base_url=url, tls=tls, timeout=timeout, max_pool_size=max_pool_size,
                use_ssh_client=url.startswith("ssh://"),
            )
        client: DockerClient = DockerClient.from_env(timeout=timeout, max_pool_size=max_pool_size)
        return client
    except DOCKER_ERRORS as e:
        tls_problem = tls_failure(e)
        if tls_problem is not None:
            against = f"tls_ca {tls_ca}" if tls_ca else "the system CA store (no tls_ca set)"
            raise DaemonUnavailableError(
                f"{prefix}TLS verification of the daemon at {where} failed: {tls_problem}; "
                f"its certificate was checked against {against}. Set tls_ca to the CA that "
                "signed the daemon's certificate (the certificate must name the address in the "
                "URL), or fix the client certificate the daemon refused"
            ) from e
        if isinstance(e, docker.errors.TLSParameterError):
            raise DaemonUnavailableError(
                f"{prefix}TLS files for {where}: {explanation(e)} (tls_cert {tls_cert}, tls_key "
                f"{tls_key}, tls_ca {tls_ca}); point them at readable PEM files"
            ) from e
        raise DaemonUnavailableError(
            f"{prefix}no Docker daemon answers at {where} ({explanation(e)}); {DAEMON_FIX}"
        ) from e


def system_ca_store() -> str | None:
    """The system's CA bundle (file, else directory) that OpenSSL uses; None when there is none,
    and then requests falls back to its own bundle (certifi)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.capath):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


_TLS_REASON = re.compile(r"certificate verify failed: ([^()'\"]+)|(tlsv1 alert [a-z ]+|"
                         r"sslv3 alert [a-z ]+|wrong version number)", re.IGNORECASE)


def tls_failure(e: BaseException) -> str | None:
    """The TLS reason in an SDK/transport error (its text or any cause's), else None."""
    seen: BaseException | None = e
    depth = 0
    while seen is not None and depth < 8:
        m = _TLS_REASON.search(str(seen))
        if m:
            reason = (m.group(1) or m.group(2)).strip()
            if m.group(1):
                return f"certificate verify failed: {reason}"
            return f"the TLS handshake failed: {reason}"
        seen = seen.__cause__ or seen.__context__
        depth += 1
    return None


_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(text: str) -> None:
    """Print a security warning to stderr, once per process and text (connect runs often)."""
    with _warned_lock:
        if text in _warned:
            return
        _warned.add(text)
    print(f"netorch: WARNING: {text}", file=sys.stderr, flush=True)


def connect_host(host: HostSpec | HostSettings, timeout: int = DEFAULT_TIMEOUT_S) -> DockerClient:
    """A client of one configured host (its URL and TLS files); errors name the host.

    ``tls_verify`` is a setting only (HostSettings); a HostSpec from a plan always verifies."""
    return connect(
        host.url, tls_ca=host.tls_ca, tls_cert=host.tls_cert, tls_key=host.tls_key,
        tls_verify=host.tls_verify if isinstance(host, HostSettings) else True,
        timeout=timeout, label=f"host {host.name}",
    )


def connect_settings(settings: Settings, timeout: int = DEFAULT_TIMEOUT_S) -> DockerClient:
    """A client of the configured daemon: the first of ``hosts`` when hosts are listed, else
    ``docker.host`` (else DOCKER_HOST / the local socket)."""
    if settings.hosts:
        return connect_host(settings.hosts[0], timeout=timeout)
    return connect(settings.docker.host, timeout=timeout)


def is_local(client: Any) -> bool:
    """True when the daemon runs on this host (unix socket): only then are host routes relevant."""
    base = str(getattr(client.api, "base_url", ""))
    return base.startswith("http+docker://") or "localhost" in base or "127.0.0.1" in base


def concurrently(fn: Callable[[T], None], items: Sequence[T]) -> list[tuple[T, BaseException]]:
    """Run ``fn`` on every item in threads; return the failures (all items were attempted).

    On Ctrl-C the queued calls are cancelled and the running ones awaited, so that nothing is
    created after the caller's teardown has listed what exists.
    """
    return attempt_all(fn, items)


def retry(
    fn: Callable[[], T], *, retry_on: Callable[[BaseException], bool], seconds: float,
    every: float = 0.25,
) -> T:
    """Call ``fn`` until it stops raising an error ``retry_on`` accepts, for at most ``seconds``;
    then the last error is raised."""
    for attempt in Retrying(
        retry=retry_if_exception(retry_on), stop=stop_after_delay(seconds), wait=wait_fixed(every),
        reraise=True,
    ):
        with attempt:
            return fn()
    raise AssertionError("unreachable: Retrying re-raises the last error")


def exec_checked(container: Any, argv: Sequence[str], what: str, user: str | None = None) -> str:
    """Run ``argv`` in ``container`` (docker exec); its output, or a BackendError naming ``what``.

    ``user`` (e.g. ``"root"``) overrides the container's user: the set-up phase (tc, the start
    gate) needs root and the container's capabilities while the workload runs unprivileged.
    """
    extra = {"user": user} if user is not None else {}
    with docker_errors(f"{what} in {container.name}"):
        result = container.exec_run(list(argv), **extra)
    output = result.output.decode("utf-8", "replace") if result.output else ""
    if result.exit_code != 0:
        raise BackendError(
            f"{what} in {container.name}: `{' '.join(argv)}` exited {result.exit_code}: "
            f"{output.strip()[-300:]}"
        )
    return output
