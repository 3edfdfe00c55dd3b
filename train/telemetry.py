"""Per-rank Prometheus endpoint of the training job.

Every rank serves ``/metrics`` on ``NETORCH_METRICS_ADDR:NETORCH_METRICS_PORT_BASE + LOCAL_RANK``
(the plan decides both: 127.0.0.1 and a per-node base on the process backend, where all nodes share
the host's ports; 0.0.0.0 and one base inside containers, which each have their own). Series carry
two low-cardinality labels, ``rank`` and ``node`` (the node rank); the run id comes from the scrape
target's labels (``prometheus_targets.json``), not from every sample.

Metrics (Prometheus naming: base units, ``_total`` for counters, ``_ratio`` for 0..1)::

    netorch_train_step_duration_seconds   histogram  wall time of one optimizer step
    netorch_train_samples_total           counter    samples this rank trained on
    netorch_train_steps_total             counter    optimizer steps this rank finished
    netorch_train_loss                    gauge      last training loss of this rank
    netorch_train_comm_share_ratio        gauge      share of step time with an allreduce in flight

Telemetry must never break training: a missing ``prometheus_client`` or a port already in use turns
metrics off with one warning on stderr, and the job goes on.

A short job can end before Prometheus scrapes it; ``hold`` keeps the endpoint open after training
until it has been scraped ``scrapes`` more times or ``timeout_s`` passed.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, Final

STEP_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)


class _ScrapeCounter:
    """A collector that yields nothing and counts how often the registry was collected (= scrapes)."""

    def __init__(self) -> None:
        self.count = 0
        self.cond = threading.Condition()

    def describe(self) -> Iterable[Any]:
        """No metrics of its own (also keeps ``register`` from calling ``collect``)."""
        return []

    def collect(self) -> Iterable[Any]:
        """Count one scrape."""
        with self.cond:
            self.count += 1
            self.cond.notify_all()
        return []


class Telemetry:
    """One rank's metrics and its HTTP endpoint; every method is a no-op when metrics are off."""

    def __init__(self, rank: int, node_rank: int) -> None:
        self.enabled = False
        self.address: str | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._scrapes = _ScrapeCounter()
        self._labels = {"rank": str(rank), "node": str(node_rank)}
        self._step: Any = None
        self._samples: Any = None
        self._steps: Any = None
        self._loss: Any = None
        self._comm: Any = None

    def start(self, addr: str, port: int) -> str | None:
        """Create the metrics and serve them on ``addr:port``; return a warning or None."""
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
            from prometheus_client.exposition import start_http_server
        except ImportError:
            return "prometheus_client is not installed; metrics are off"
        registry = CollectorRegistry()
        names = ("rank", "node")
        self._step = Histogram(
            "netorch_train_step_duration_seconds", "Wall time of one optimizer step.",
            names, registry=registry, buckets=STEP_BUCKETS,
        ).labels(**self._labels)
        self._samples = Counter(
            "netorch_train_samples", "Samples this rank trained on.", names, registry=registry,
        ).labels(**self._labels)
        self._steps = Counter(
            "netorch_train_steps", "Optimizer steps this rank finished.", names, registry=registry,
        ).labels(**self._labels)
        self._loss = Gauge(
            "netorch_train_loss", "Last training loss of this rank.", names, registry=registry,
        ).labels(**self._labels)
        self._comm = Gauge(
            "netorch_train_comm_share_ratio",
            "Share of the last step's wall time with a gradient allreduce in flight.",
            names, registry=registry,
        ).labels(**self._labels)
        registry.register(self._scrapes)
        try:
            self._server, self._thread = start_http_server(port, addr=addr, registry=registry)
        except OSError as e:
            return f"cannot serve metrics on {addr}:{port} ({e}); metrics are off"
        self.enabled = True
        self.address = f"{addr}:{port}"
        return None

    def observe_step(self, duration_s: float, samples: int, loss: float | None,
                     comm_share: float | None) -> None:
        """Record one finished optimizer step."""
        if not self.enabled:
            return
        self._step.observe(duration_s)
        self._samples.inc(samples)
        self._steps.inc()
        if loss is not None:
            self._loss.set(loss)
        if comm_share is not None:
            self._comm.set(comm_share)

    def hold(self, scrapes: int, timeout_s: float) -> int:
        """Keep serving until ``scrapes`` more scrapes happened or ``timeout_s`` passed.

        Returns the scrapes seen while holding.
        """
        if not self.enabled or timeout_s <= 0 or scrapes <= 0:
            return 0
        deadline = time.monotonic() + timeout_s
        with self._scrapes.cond:
            start = self._scrapes.count
            while self._scrapes.count - start < scrapes:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._scrapes.cond.wait(left)
            return self._scrapes.count - start

    def close(self) -> None:
        """Stop serving (releases the port for a restarted gang)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.enabled = False


def warn(message: str) -> None:
    """One telemetry warning line on stderr (never the result channel)."""
    print(f"netorch telemetry: warning: {message}", file=sys.stderr, flush=True)
