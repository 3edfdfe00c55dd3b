"""The one way netorch talks to a daemon: :func:`connect`, plus small shared helpers.

Every Docker client -- the backends', the sweep's, the doctor's, the image builder's, the CLI's --
comes from :func:`connect` (or its wrappers for settings and hosts), so pool size, TLS, ssh and
the "no daemon" message are decided once. The client it returns closes at the end of a ``with``::

    with connect_settings(settings) as client:
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker.client
import docker.tls
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

from orchestrator.backends.docker.errors import (
    DAEMON_FIX,
    DOCKER_ERRORS,
    docker_errors,
    explanation,
)
from orchestrator.errors import BackendError, DaemonUnavailableError
from orchestrator.plan import HostSpec
from orchestrator.settings import HostSettings, Settings

T = TypeVar("T")

# Two long-lived connections per node (log stream + wait) plus room for the main thread; the SDK's
# default pool of 10 would make urllib3 open and discard extra connections (and warn) above 4 nodes.
MAX_POOL_SIZE = 2 * 256 + 16
DEFAULT_TIMEOUT_S = 60  # the SDK's own default per request


class DockerClient(docker.client.DockerClient):  # type: ignore[misc]  # the SDK is untyped
    """The SDK's client that also closes with ``with``: the SDK's own (7.x) has ``close()``
    but is no context manager."""

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
    timeout: int = DEFAULT_TIMEOUT_S,
    max_pool_size: int = MAX_POOL_SIZE,
    label: str | None = None,
) -> DockerClient:
    """A client of the daemon at ``url`` that answered (the SDK asks it for its API version).

    ``url`` None means DOCKER_HOST (with DOCKER_TLS_VERIFY / DOCKER_CERT_PATH) or the local
    socket. ``tls_cert`` + ``tls_key`` (and ``tls_ca`` to verify the daemon) turn on TLS for a
    tcp:// URL; ssh:// goes through the ``ssh`` binary. ``label`` prefixes the error message
    (``"host b"``). Raises DaemonUnavailableError naming the URL and the fix when none answers.
    Use it as ``with connect(...) as client:`` to close it.
    """
    tls: Any = False
    if tls_cert and tls_key:
        tls = docker.tls.TLSConfig(
            client_cert=(tls_cert, tls_key), ca_cert=tls_ca, verify=bool(tls_ca),
        )
    try:
        if url:
            return DockerClient(
                base_url=url, tls=tls, timeout=timeout, max_pool_size=max_pool_size,
                use_ssh_client=url.startswith("ssh://"),
            )
        client: DockerClient = DockerClient.from_env(timeout=timeout, max_pool_size=max_pool_size)
        return client
    except DOCKER_ERRORS as e:
        where = url or "DOCKER_HOST / the local socket"
        prefix = f"{label}: " if label else ""
        raise DaemonUnavailableError(
            f"{prefix}no Docker daemon answers at {where} ({explanation(e)}); {DAEMON_FIX}"
        ) from e


def connect_host(host: HostSpec | HostSettings, timeout: int = DEFAULT_TIMEOUT_S) -> DockerClient:
    """A client of one configured host (its URL and TLS files); errors name the host."""
    return connect(
        host.url, tls_ca=host.tls_ca, tls_cert=host.tls_cert, tls_key=host.tls_key,
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
    failures: list[tuple[T, BaseException]] = []
    if not items:
        return failures
    pool = ThreadPoolExecutor(max_workers=min(16, len(items)))
    try:
        futures = [(item, pool.submit(fn, item)) for item in items]
        for item, future in futures:
            exc = future.exception()
            if exc is not None:
                failures.append((item, exc))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return failures


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


def exec_checked(container: Any, argv: Sequence[str], what: str) -> str:
    """Run ``argv`` in ``container`` (docker exec); its output, or a BackendError naming ``what``."""
    with docker_errors(f"{what} in {container.name}"):
        result = container.exec_run(list(argv))
    output = result.output.decode("utf-8", "replace") if result.output else ""
    if result.exit_code != 0:
        raise BackendError(
            f"{what} in {container.name}: `{' '.join(argv)}` exited {result.exit_code}: "
            f"{output.strip()[-300:]}"
        )
    return output
