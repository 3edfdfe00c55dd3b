"""What every backend offers: a kind (fabric, probe, factory) and an executor (apply a plan).

A backend is two objects, both defined in the backend's own module and registered once by name in
``orchestrator.backends.registry``:

* a :class:`BackendKind` -- pure knowledge: the fabric a plan gets on it (network, addresses,
  aliases, paths, metrics bind address, where a node runs), whether this host can use it (for
  ``backend = "auto"``), how to build its executor, how to remove a run's leftovers;
* a :class:`Backend` -- the executor the session drives: preflight, up, stop, down.

The session (``orchestrator.session``) owns the lifecycle (fail fast, diagnosis, results);
a backend only knows how to create, observe and remove its own resources.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from orchestrator.plan import BackendName, ClusterPlan, FabricSpec

if TYPE_CHECKING:
    from orchestrator.settings import Settings

LineSink = Callable[[str, str], None]
"""``sink(node_name, line)``: called from backend threads for every log line of a node."""


@dataclass(frozen=True)
class NodeExit:
    """How a node ended. ``finished_at`` orders failures (time.time() seconds)."""

    exit_code: int
    finished_at: float
    oom_killed: bool = False
    # The Docker host the node ran on (multi-host runs); named in the diagnosis.
    host: str | None = None
    # Its daemon stopped answering (the host was lost): the exit code is not the node's own.
    lost: bool = False

    def reason(self) -> str:
        """Human words for the exit: ``exit code 1``, ``killed by SIGKILL (exit 137)``, and
        ``on host NAME`` when the node ran on a named host."""
        if self.lost:
            where = f"host {self.host}" if self.host else "its host"
            return f"lost with {where}: the Docker daemon there stopped answering"
        text = self._reason()
        return f"{text} on host {self.host}" if self.host else text

    def _reason(self) -> str:
        code = self.exit_code
        if self.oom_killed:
            return f"OOM-killed (exit {code}); give the node more memory or shrink max_bytes"
        if code < 0:
            return f"killed by {_signame(-code)}"
        if code > 128 and code - 128 < 65:
            return f"killed by {_signame(code - 128)} (exit {code})"
        return f"exit code {code}"


def _signame(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


class NodeHandle(Protocol):
    """A started node (a process group or a container)."""

    name: str

    def poll(self) -> NodeExit | None:
        """The exit once the node has ended, else ``None``. Never blocks."""
        ...


class Backend(Protocol):
    """Applies a :class:`ClusterPlan`. Implementations: process, docker."""

    name: BackendName

    def preflight(self, plan: ClusterPlan) -> None:
        """Raise a PreflightError if the plan cannot run here. Creates nothing."""
        ...

    def up(self, plan: ClusterPlan, sink: LineSink) -> list[NodeHandle]:
        """Create and start every node; stream their log lines into ``sink``."""
        ...

    def stop(self, plan: ClusterPlan, grace_s: float) -> None:
        """Stop every node of the plan that still runs (SIGTERM, SIGKILL after ``grace_s``)."""
        ...

    def down(self, plan: ClusterPlan) -> None:
        """Remove everything this run created. Idempotent; safe after a partial ``up``."""
        ...


class BackendKind(Protocol):
    """A registered backend: everything the plan and the application layer ask of it."""

    name: str
    #: One line for ``--help`` and ``netorch plan``.
    summary: str

    def fabric(self, settings: Settings, run_id: str) -> FabricSpec:
        """The network, node addresses and placement of a plan on this backend. Pure."""
        ...

    def probe(self, settings: Settings) -> str | None:
        """None when this host can run plans on this backend now, else why not (``auto``)."""
        ...

    def ready(self, settings: Settings) -> str:
        """Why ``auto`` chose this backend after its probe passed, in a few words."""
        ...

    def create(self, settings: Settings) -> Backend:
        """The executor for ``settings`` (connects to what it drives; may raise PreflightError)."""
        ...

    def remove(self, settings: Settings, run_id: str | None) -> list[str]:
        """``netorch down``: remove what netorch left of ``run_id`` (None: of every run), and
        only what carries netorch's labels. Returns a line per thing removed."""
        ...
