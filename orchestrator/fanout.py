"""Thread fan-out for calls that mostly wait (Docker API requests, docker exec): one place.

``map_threads`` returns results in order and raises the first error; ``attempt_all`` runs every
call and returns the failures, for teardown paths that must try everything.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import FrameType
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
MAX_WORKERS = 16


HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until this (short) block is done, then take effect as usual.

    ``ThreadPoolExecutor.submit`` starts a worker thread and then waits for it to run; an
    interrupt in that wait leaves a started thread the executor does not know of, so its
    ``shutdown(wait=True)`` returns while that thread still runs the call (a container created
    after the teardown listed what exists). Handing the calls over with interrupts held closes
    that window. Main thread only (signals are handled there); elsewhere a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in HELD}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(pending):  # each held signal once, to its own handler again
            signal.raise_signal(signum)


def _submit_all(pool: ThreadPoolExecutor, fn: Callable[[T], R],
                items: Sequence[T]) -> list[Future[R]]:
    with interrupts_held():
        return [pool.submit(fn, item) for item in items]


def map_threads(fn: Callable[[T], R], items: Sequence[T], workers: int = MAX_WORKERS) -> list[R]:
    """``[fn(item) for item in items]``, computed in threads; the first error is raised."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return [future.result() for future in _submit_all(pool, fn, items)]


def attempt_all(fn: Callable[[T], None], items: Sequence[T],
                workers: int = MAX_WORKERS) -> list[tuple[T, BaseException]]:
    """Run ``fn`` on every item in threads; return the failures (all items were attempted).

    On Ctrl-C the queued calls are cancelled and the running ones awaited, so that nothing is
    created after the caller's teardown has listed what exists.
    """
    failures: list[tuple[T, BaseException]] = []
    if not items:
        return failures
    pool = ThreadPoolExecutor(max_workers=min(workers, len(items)))
    try:
        futures = list(zip(items, _submit_all(pool, fn, items)))
        for item, future in futures:
            exc = future.exception()
            if exc is not None:
                failures.append((item, exc))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return failures
