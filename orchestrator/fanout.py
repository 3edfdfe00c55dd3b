"""Thread fan-out for calls that mostly wait (Docker API requests, docker exec): one place.

``map_threads`` returns results in order and raises the first error; ``attempt_all`` runs every
call and returns the failures, for teardown paths that must try everything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
MAX_WORKERS = 16


def map_threads(fn: Callable[[T], R], items: Sequence[T], workers: int = MAX_WORKERS) -> list[R]:
    """``[fn(item) for item in items]``, computed in threads; the first error is raised."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


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
        futures = [(item, pool.submit(fn, item)) for item in items]
        for item, future in futures:
            exc = future.exception()
            if exc is not None:
                failures.append((item, exc))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return failures
