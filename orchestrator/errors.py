"""One error tree for netorch.

Every failure a user can cause or meet is a ``NetorchError``; the CLI prints its message as one
line and exits non-zero, never with a traceback. A message says what failed, the value given and
the fix.

    NetorchError
    ├── ConfigError            a setting is invalid (field, value, fix); nothing was created
    ├── PlanError              settings are valid one by one but cannot form a plan
    ├── PreflightError         the host cannot run the plan (port busy, GPUs missing, ...)
    │   ├── DaemonUnavailableError   no Docker daemon answers
    │   ├── ImageError               the training image is missing or failed to build
    │   └── NetworkConflictError     subnet / name clashes with something that exists
    ├── BackendError           the backend failed while applying the plan
    ├── RankFailedError        a node exited non-zero; carries node, exit code, log tail
    ├── Interrupted            Ctrl-C / SIGTERM stopped the command after it cleaned up (exit 130)
    ├── ResultError            the job finished but produced no (or bad) results
    │   └── OutputError        a file of the run's output could not be written (disk full, ...)
    └── RegressionError        below expectation: the run regressed against its baseline (exit 5)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path


class NetorchError(Exception):
    """Root of every error netorch raises on purpose."""

    exit_code: int = 2


class ConfigError(NetorchError):
    """A setting is invalid. Raised before any resource exists."""


class PlanError(NetorchError):
    """The settings cannot be turned into a plan (e.g. the subnet is too small)."""


class PreflightError(NetorchError):
    """The host cannot run this plan; found before anything was created."""


class DaemonUnavailableError(PreflightError):
    """No Docker daemon answers at the configured endpoint."""


class ImageError(PreflightError):
    """The training image is missing or could not be built."""


class NetworkConflictError(PreflightError):
    """The planned network clashes with an existing network, route or name."""


class BackendError(NetorchError):
    """The backend failed while applying or tearing down the plan."""


class ResultError(NetorchError):
    """The job ended without usable results (none emitted, or wrong values found)."""

    exit_code = 4


class OutputError(ResultError):
    """A file of the run's output (a node's log, report.json, results.csv, busbw.png,
    metrics.prom) could not be written: the results are incomplete, so the run is no success.

    Names the path and the system's words (``No space left on device``) on one line.
    """

    def __init__(self, path: str | os.PathLike[str], error: OSError) -> None:
        self.path = str(path)
        self.reason = str(error.strerror or error)
        super().__init__(
            f"cannot write {self.path}: {error.strerror or error}; the run's output is "
            "incomplete; free space there or choose another output directory (--output)"
        )


class Interrupted(NetorchError):
    """Ctrl-C or SIGTERM stopped the command, and what it had started was cleaned up; the
    message says what was stopped and what stays as it was. Exit 130, like a shell's."""

    exit_code = 130


class RankFailedError(NetorchError):
    """A node of the job exited non-zero; the whole job was taken down.

    Carries the node's name, its exit code, a human reason (``"killed by SIGKILL"``,
    ``"OOM-killed"``) and the last lines of its log.
    """

    exit_code = 3

    def __init__(
        self,
        node: str,
        exit_code: int | None,
        reason: str,
        log_tail: Sequence[str] = (),
        container: str | None = None,
        node_exits: Mapping[str, str] | None = None,
    ) -> None:
        self.node = node
        # How every node that had ended by then ended (node name -> reason), for the report.
        self.node_exits = dict(node_exits or {})
        # Set by gang restarts: how many happened before this failure, and their diagnoses.
        self.restarts = 0
        self.failures: tuple[str, ...] = ()
        self.node_exit_code = exit_code
        self.reason = reason
        self.log_tail = tuple(log_tail)
        self.container = container
        # Set by the session: where every node's log file is, and how many stack-trace lines
        # of each node were kept off the terminal (they are in its log file).
        self.log_dir: Path | None = None
        self.hidden_lines: Mapping[str, int] = {}
        # Set when tearing the job down failed too (e.g. on a lost host): what is left and how
        # to remove it.
        self.teardown: str | None = None
        super().__init__(f"node {node} failed: {reason}")

    def screen_lines(self) -> list[str]:
        """The diagnosis for a terminal: the failed node's last lines first, then the verdict,
        then where the logs are; so the verdict stays in view as the last lines printed."""
        lines = []
        if self.log_tail:
            lines.append(f"last {len(self.log_tail)} log lines of {self.node}:")
            lines.extend(f"    {line}" for line in self.log_tail)
        lines.append(str(self))
        if self.container:
            lines.append(f"  container: {self.container}")
        if not self.log_tail:
            lines.append(f"  last log lines of {self.node}: none (it printed nothing)")
        if self.log_dir is not None:
            hidden = {n: c for n, c in self.hidden_lines.items() if c}
            kept = (f"; {sum(hidden.values())} stack-trace lines of {len(hidden)} node(s) are "
                    "there, not shown here") if hidden else ""
            lines.append(f"  logs: {self.log_dir}/<node>.log{kept}")
        if self.teardown:
            lines.append(f"  {self.teardown}")
        return lines

    def diagnosis(self) -> str:
        """Multi-line explanation: which node, how it died, its last log lines."""
        lines = [str(self)]
        if self.container:
            lines.append(f"  container: {self.container}")
        if self.log_tail:
            lines.append(f"  last {len(self.log_tail)} log lines of {self.node}:")
            lines.extend(f"    {line}" for line in self.log_tail)
        else:
            lines.append(f"  last log lines of {self.node}: none (it printed nothing)")
        if self.teardown:
            lines.append(f"  {self.teardown}")
        return "\n".join(lines)


class RegressionError(NetorchError):
    """The run finished correctly but fell below its baseline beyond the noise (exit 5)."""

    exit_code = 5
