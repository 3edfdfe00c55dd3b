"""The session's choice of the failure to report: the cause, not the first symptom."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.backends.base import NodeExit
from orchestrator.errors import RankFailedError
from orchestrator.plan import build_plan
from orchestrator.session import LogBook, supervise
from orchestrator.settings import load_settings


class Node:
    """A node that ends with ``ex`` once ``after`` polls have returned nothing."""

    def __init__(self, name: str, ex: NodeExit | None, after: int = 0) -> None:
        self.name, self.ex, self.after = name, ex, after

    def poll(self) -> NodeExit | None:
        if self.ex is None or self.after > 0:
            self.after -= 1
            return None
        return self.ex


class StopRecorder:
    name = "fake"

    def __init__(self) -> None:
        self.stopped = 0

    def stop(self, plan: Any, grace_s: float) -> None:
        self.stopped += 1


def run(nodes: list[Node], tmp_path: Path) -> RankFailedError:
    plan = build_plan(load_settings(overrides={"cluster": {"nodes": len(nodes)}}), "r-1", "process")
    backend = StopRecorder()
    with pytest.raises(RankFailedError) as e:
        supervise(backend, plan, nodes, LogBook(tmp_path), timeout_s=30, poll_s=0.01)  # type: ignore[arg-type]
    assert backend.stopped == 1
    return e.value


def test_a_peer_that_failed_first_does_not_hide_the_killed_node(tmp_path: Path) -> None:
    # worker-2 lost its connection and exited 1 before the killed worker-1's exit was seen.
    now = time.time()
    err = run([Node("master", None), Node("worker-1", NodeExit(-9, now + 0.05), after=5),
               Node("worker-2", NodeExit(1, now))], tmp_path)
    assert err.node == "worker-1" and "SIGKILL" in str(err)


def test_a_lost_host_is_the_cause(tmp_path: Path) -> None:
    now = time.time()
    err = run([Node("master", NodeExit(1, now)),
               Node("worker-1", NodeExit(143, now + 0.1, host="h2", lost=True), after=3)], tmp_path)
    assert err.node == "worker-1" and "lost with host h2" in str(err)


def test_a_plain_failure_alone_is_reported_within_the_wait(tmp_path: Path) -> None:
    # The user's script failed on one node and nothing else ends: reported after at most the wait.
    started = time.monotonic()
    err = run([Node("master", None), Node("worker-1", NodeExit(1, time.time()))], tmp_path)
    assert err.node == "worker-1" and "exit code 1" in str(err)
    assert time.monotonic() - started < 10


def test_an_interrupt_while_calls_are_handed_to_threads_waits_for_all_of_them() -> None:
    """Ctrl-C during the hand-over takes effect after it, and every handed call has run when
    attempt_all returns (a call left running would create a container after the teardown)."""
    import signal
    import threading

    from orchestrator.fanout import attempt_all, interrupts_held

    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            signal.raise_signal(signal.SIGINT)
            reached = True  # the block ran to its end before the interrupt
    assert reached

    done: list[int] = []
    release = threading.Event()

    def slow(item: int) -> None:
        release.wait(5)
        done.append(item)

    def interrupt_soon() -> None:
        time.sleep(0.05)
        signal.raise_signal(signal.SIGINT)
        release.set()

    threading.Thread(target=interrupt_soon, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        attempt_all(slow, list(range(8)), workers=8)
    assert sorted(done) == list(range(8))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
