"""One lifecycle for every backend: preflight, up, supervise (fail fast), collect, down.

``run_session`` is the only code path that applies a plan. Teardown runs in ``finally`` and on
SIGINT/SIGTERM, so a run never leaves processes, containers or networks behind.
"""

from __future__ import annotations

import collections
import dataclasses
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from orchestrator.backends.base import Backend, NodeExit, NodeHandle
from orchestrator.errors import (
    BackendError,
    ConfigError,
    DaemonUnavailableError,
    NetorchError,
    OutputError,
    RankFailedError,
    ResultError,
)
from orchestrator.plan import ClusterPlan, with_restart
from train.results import RESULT_MARKER, decode_result_lines

LOG_TAIL_LINES = 30

Echo = Callable[[str, str], None]


TRACEBACK_START = "Traceback (most recent call last):"
TRACEBACK_GLUE = ("During handling of the above exception", "The above exception was the direct")


class TracebackFilter:
    """Tells a node's Python stack-trace lines from the rest, for the terminal.

    When one node dies, every survivor prints a traceback (gloo's "connection closed by peer",
    torchrun's SignalException as it is stopped): a hundred lines that bury the one that matters.
    Those lines stay in the node's log file; the terminal gets the exception's last line only
    (``RuntimeError: ...``). A traceback is recognised by its header, keeps the header's prefix
    (``[rank0]: `` from torch's per-rank redirection) and ends at the first line under that prefix
    that is not indented: the exception line.
    """

    def __init__(self) -> None:
        self._prefix: dict[str, str] = {}  # node -> the prefix of its open traceback
        self._ended: dict[str, str] = {}   # node -> the prefix of the traceback that just ended
        self.hidden: dict[str, int] = {}   # node -> traceback lines kept off the terminal

    def _hide(self, node: str) -> bool:
        self.hidden[node] = self.hidden.get(node, 0) + 1
        return False

    def show(self, node: str, line: str) -> bool:
        """False for a line of a traceback (counted in ``hidden``); True otherwise."""
        at = line.find(TRACEBACK_START)
        if at >= 0:
            self._prefix[node] = line[:at]
            self._ended.pop(node, None)
            return self._hide(node)
        ended = self._ended.get(node)
        if ended is not None:  # a chained exception's glue: blank lines and "During handling"
            glue = line[len(ended):] if line.startswith(ended) else line
            if not glue.strip() or glue.startswith(TRACEBACK_GLUE):
                return self._hide(node)
            del self._ended[node]
        prefix = self._prefix.get(node)
        if prefix is None:
            return True
        rest = line[len(prefix):] if line.startswith(prefix) else None
        if rest is not None and (not rest.strip() or rest[:1].isspace() or rest.startswith("^")
                                 or rest.startswith(TRACEBACK_GLUE)):
            return self._hide(node)
        self._ended[node] = self._prefix.pop(node)
        return True  # the exception line: the traceback's one line worth showing


class LogBook:
    """Collects every node's log lines: a file per node, a tail for diagnoses, the result line.

    Fed from backend reader threads, hence the lock. Every node has a log file, even one that
    printed nothing (:meth:`touch`). Stack traces go to the files but not to ``echo`` nor to the
    tail a diagnosis shows (:class:`TracebackFilter`; ``hidden`` counts them per node).
    """

    def __init__(self, log_dir: Path, echo: Echo | None = None,
                 on_result: Callable[[str, str], None] | None = None) -> None:
        self.log_dir = log_dir
        self.echo = echo
        self.on_result = on_result  # (node, result line), called from the reader thread
        self._lock = threading.Lock()
        self._tails: dict[str, collections.deque[str]] = {}
        self._files: dict[str, Any] = {}
        self._results: dict[str, str] = {}
        self._filter = TracebackFilter()
        self.hidden = self._filter.hidden
        # The first log file that could not be written (disk full): logging to files stops,
        # tails and results stay in memory, and the session fails the run with it at the end.
        self.write_error: OutputError | None = None
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                f"cannot create {log_dir} ({e.strerror or e}); nothing was started; free space "
                "there or choose another output directory (--output)"
            ) from None

    def _write(self, node: str, line: str) -> None:
        self._write_lines(node, [line])

    def _write_lines(self, node: str, lines: list[str]) -> None:
        """Append ``lines`` to the node's log file (lock held); a failure is kept, not raised:
        this runs in the backend's log reader threads."""
        if self.write_error is not None:
            return
        path = self.log_dir / f"{node}.log"
        try:
            fh = self._files.get(node)
            if fh is None:
                fh = self._files[node] = open(path, "a", encoding="utf-8")
            for line in lines:
                fh.write(line + "\n")
            fh.flush()
        except OSError as e:
            self.write_error = OutputError(path, e)
            self._close_files()

    def touch(self, nodes: Iterable[str]) -> None:
        """Create every node's log file now: a node killed before it printed a line still has
        one (empty), so the report's log paths always exist."""
        with self._lock:
            for node in nodes:
                self._write_lines(node, [])

    def sink(self, node: str, line: str) -> None:
        with self._lock:
            self._write(node, line)
            is_result = RESULT_MARKER in line
            show = False
            if is_result:
                self._results[node] = line
            elif self._filter.show(node, line):
                show = True
                self._tails.setdefault(node, collections.deque(maxlen=LOG_TAIL_LINES)).append(line)
        if is_result:
            if self.on_result is not None:
                self.on_result(node, line)
            return
        if show and self.echo is not None:
            self.echo(node, line)

    def tail(self, node: str, lines: int = LOG_TAIL_LINES) -> list[str]:
        with self._lock:
            return list(self._tails.get(node, ()))[-lines:]

    def result(self, node: str) -> dict[str, Any] | None:
        with self._lock:
            line = self._results.get(node)
        return decode_result_lines([line]) if line else None

    def _close_files(self) -> None:
        for fh in self._files.values():
            try:
                fh.close()
            except OSError:
                pass  # a full disk: its buffer was flushed already, or the error is recorded
        self._files.clear()

    def close(self) -> None:
        with self._lock:
            self._close_files()


@dataclass(frozen=True)
class SessionOutcome:
    """What came back from a finished run."""

    plan: ClusterPlan
    result: dict[str, Any]
    elapsed_s: float
    log_dir: Path
    restarts: int = 0
    failures: tuple[str, ...] = ()
    # How each node ended (node name -> exit), in plan order.
    exits: tuple[tuple[str, NodeExit], ...] = ()


class _Interrupted(KeyboardInterrupt):
    """SIGTERM turned into KeyboardInterrupt so ``finally`` blocks run."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C for the duration (main thread only): a KeyboardInterrupt
    whose text is ``received SIGTERM``, so ``finally`` and ``except`` blocks clean up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted(f"received {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# How long a plain failure (exit 1..128) waits for a root cause to show on another node.
ROOT_CAUSE_WAIT_S = 1.0


def _root_cause(ex: NodeExit) -> bool:
    """A failure that others follow from: a signal, the OOM killer, a lost host."""
    return ex.exit_code < 0 or ex.exit_code > 128 or ex.oom_killed or ex.lost


def _first_failure(exits: dict[str, NodeExit]) -> tuple[str, NodeExit]:
    """The node whose failure caused the others: earliest to end, a signal death preferred.

    When one node is killed, its peers fail a moment later with connection errors; a node that
    died of a signal (or with its host) within a second of the earliest failure is the likelier
    root cause.
    """
    failed = sorted(exits.items(), key=lambda item: item[1].finished_at)
    first_time = failed[0][1].finished_at
    for name, ex in failed:
        if ex.finished_at - first_time > ROOT_CAUSE_WAIT_S:
            break
        if _root_cause(ex):
            return name, ex
    return failed[0]


def _settle(handles: list[NodeHandle], exits: dict[str, NodeExit], poll_s: float
            ) -> dict[str, NodeExit]:
    """After a plain failure, poll the other nodes a moment longer: a peer that lost its
    connection can exit before the node that was killed (or whose host went away) is seen, and
    the diagnosis must name the cause, not the first symptom."""
    deadline = time.monotonic() + ROOT_CAUSE_WAIT_S
    while (not any(_root_cause(ex) for ex in exits.values() if ex.exit_code != 0)
           and len(exits) < len(handles) and time.monotonic() < deadline):
        time.sleep(poll_s)
        exits = {**exits, **{h.name: ex for h in handles
                             if h.name not in exits and (ex := h.poll()) is not None}}
    return exits


def supervise(
    backend: Backend,
    plan: ClusterPlan,
    handles: list[NodeHandle],
    logbook: LogBook,
    timeout_s: float,
    poll_s: float = 0.02,  # reads flags the nodes' waiter threads set: costs nothing
    on_tick: Callable[[int, int], None] | None = None,
) -> dict[str, NodeExit]:
    """Wait for every node; on the first non-zero exit stop the rest and raise the diagnosis.

    Returns how every node ended (all exit 0) when the run finished.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        exits = {h.name: ex for h in handles if (ex := h.poll()) is not None}
        failed = {name: ex for name, ex in exits.items() if ex.exit_code != 0}
        if failed:
            exits = _settle(handles, exits, poll_s)
            failed = {name: ex for name, ex in exits.items() if ex.exit_code != 0}
            backend.stop(plan, grace_s=float(plan.runtime.stop_timeout_s))
            name, ex = _first_failure(failed)
            raise RankFailedError(
                name, ex.exit_code, ex.reason() + "; the other nodes were stopped",
                logbook.tail(name),
                node_exits={n: e.reason() for n, e in failed.items()},
            )
        if on_tick is not None:
            on_tick(len(exits), len(handles))
        if len(exits) == len(handles):
            return exits
        if time.monotonic() > deadline:
            backend.stop(plan, grace_s=float(plan.runtime.stop_timeout_s))
            raise BackendError(
                f"run {plan.run_id} did not finish within {timeout_s:.0f} s; raise "
                "cluster.job_timeout_s or shrink the sweep (bench.max_bytes, bench.iters)"
            )
        time.sleep(poll_s)


def run_session(
    backend: Backend,
    plan: ClusterPlan,
    out_dir: Path,
    timeout_s: float,
    echo: Echo | None = None,
    on_tick: Callable[[int, int], None] | None = None,
    preflight: bool = True,
    on_result: Callable[[str, str], None] | None = None,
) -> SessionOutcome:
    """Apply ``plan`` on ``backend`` and bring back rank 0's results. Always tears down.

    ``preflight=False`` is for a gang restart: the same plan passed preflight moments ago, and the
    checks would now trip over the previous attempt's sockets in TIME_WAIT on the master port.
    ``on_result(node, line)`` is called (from a log reader thread) when a node prints its result
    line, before teardown.
    """
    if preflight:
        backend.preflight(plan)
    logbook = LogBook(out_dir / "logs", echo, on_result=on_result)
    logbook.touch(n.name for n in plan.nodes)
    started = time.monotonic()
    try:
        with sigterm_as_interrupt():
            try:
                handles = backend.up(plan, logbook.sink)
                exits = supervise(backend, plan, handles, logbook, timeout_s, on_tick=on_tick)
            except RankFailedError as failure:
                # A lost host of several also fails the teardown there: report both, the cause
                # first. When the only daemon is gone, that is the run's story (exit 2).
                try:
                    backend.down(plan)
                except DaemonUnavailableError:
                    raise
                except NetorchError as e:
                    failure.teardown = str(e)
                raise
            except BaseException:
                backend.down(plan)
                raise
            else:
                backend.down(plan)
    except RankFailedError as e:
        # The survivors' tracebacks arrive while they are stopped: the counts are final only
        # after ``down``; the error keeps the live mapping for whoever prints it.
        e.log_dir = out_dir / "logs"
        e.hidden_lines = logbook.hidden
        raise
    finally:
        logbook.close()
    if logbook.write_error is not None:
        raise logbook.write_error  # the nodes finished, but their logs are incomplete
    elapsed = time.monotonic() - started
    ordered = tuple((n.name, exits[n.name]) for n in plan.nodes if n.name in exits)
    result = logbook.result(plan.master.name)
    if not plan.emits_result:
        # A user's own script reports nothing to us: every rank exiting 0 is the result.
        return SessionOutcome(plan=plan, result=result or {}, elapsed_s=elapsed,
                              log_dir=out_dir / "logs", exits=ordered)
    if result is None:
        tail = "\n".join(f"    {line}" for line in logbook.tail(plan.master.name, 15))
        raise ResultError(
            f"run {plan.run_id}: the master ({plan.master.name}) exited 0 but emitted no results; "
            f"its last lines:\n{tail}"
        )
    return SessionOutcome(plan=plan, result=result, elapsed_s=elapsed, log_dir=out_dir / "logs",
                          exits=ordered)


def run_with_restarts(
    backend: Backend,
    plan: ClusterPlan,
    out_dir: Path,
    timeout_s: float,
    max_restarts: int,
    echo: Echo | None = None,
    on_tick: Callable[[int, int], None] | None = None,
    on_restart: Callable[[int, RankFailedError], None] | None = None,
) -> SessionOutcome:
    """:func:`run_session` with gang restarts, for jobs that resume from checkpoints (train).

    When a node fails (:class:`RankFailedError`), the whole gang has already been stopped and torn
    down; it is brought up again from the same plan (``with_restart``: the env says which restart
    it is), and the job resumes from its latest valid checkpoint. At most ``max_restarts`` times;
    the last failure is raised as is. Nothing else restarts: a bad config, a failed preflight, a
    missing result or Ctrl-C end the run. ``timeout_s`` bounds all attempts together.
    """
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    restarts = 0
    failures: list[str] = []
    current = plan
    while True:
        try:
            outcome = run_session(
                backend, current, out_dir, max(1.0, deadline - time.monotonic()), echo, on_tick,
                preflight=restarts == 0,
            )
        except RankFailedError as e:
            failures.append(f"{e.node}: {e.reason}")
            if restarts >= max_restarts:
                e.restarts, e.failures = restarts, tuple(failures)
                raise
            restarts += 1
            if on_restart is not None:
                on_restart(restarts, e)
            current = with_restart(plan, restarts)
            continue
        return dataclasses.replace(
            outcome, plan=plan, elapsed_s=time.monotonic() - started, restarts=restarts,
            failures=tuple(failures),
        )
