"""The result channel between rank 0 and the host: one marked JSON line on stdout.

Rank 0 of ``python -m train.bench`` prints exactly one line::

    @@NETORCH_RESULT@@ {"schema": 1, "kind": "bench", ...}

stdout is the channel because it is the one thing every backend can read back: a local process's
pipe, ``docker logs`` of a container on this or another host, ``kubectl logs``. Log collectors often
prefix each line (``node0 | ``, a timestamp), so the decoder looks for the marker anywhere in a line.

This module must stay importable without torch: the host imports it to parse logs.

Document shape (``schema`` 1, ``kind`` "bench")::

    run_id        str | null         echoed from --run-id
    dist_backend  "gloo" | "nccl"
    device        "cpu" | "cuda"
    torch_version str
    world_size    int
    ranks         [RankEntry]        sorted by rank; see train.env.RankInfo.to_dict (+ "pid")
    settings      {ops, min_bytes, max_bytes, step_factor, warmup, iters, dtypes, check, in_place,
                   reduce_op}
    results       [ResultRow]
    skipped       [{op, dtype, reason}]  (op, dtype) pairs measured by no row, with why
    notes         [str]              backend caveats that change how a row should be read
    wrong_total   int | null         null when --check 0
    elapsed_s     float

Document shape (``schema`` 1, ``kind`` "train", from ``python -m train.job``)::

    run_id, dist_backend, device, torch_version, world_size, ranks   as for "bench"
    settings        {steps, batch_size, width, depth, bucket_cap_mb, checkpoint_every, seed, lr}
    steps_done      int                 optimizer steps the model has taken (resumed ones included)
    resumed_from    int | null          checkpoint step this attempt started from (null: fresh)
    restarts        int                 gang restarts before this attempt (from the host)
    final_loss      float               mean over ranks of the last step's loss
    loss_curve      [[step, loss]]      a few points, mean over ranks
    samples_per_s   float               global samples / wall time of this attempt's training loop
    step_time_s     {mean, p50, p95, count, sum} rank 0's step wall times (first step of an attempt excluded)
    comm_share      float | null        share of step time with a gradient allreduce in flight
    comm_exposed_share float | null     share of step time spent after the last bucket was launched
    weights_sha256  str                 SHA-256 over the final parameters (names + raw bytes)
    checkpoints     {dir, written, skipped: [{file, reason}]}
    elapsed_s       float

Rank 0 of the training job also prints progress lines every few steps, not results::

    @@NETORCH_PROGRESS@@ {"step": 40, "steps": 200, "loss": 0.12, "samples_per_s": 5120.0}
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final, NotRequired, TypedDict

RESULT_MARKER: Final = "@@NETORCH_RESULT@@"
PROGRESS_MARKER: Final = "@@NETORCH_PROGRESS@@"
SCHEMA_VERSION: Final = 1


class TimeUs(TypedDict):
    """Per-op time in microseconds, aggregated across ranks (each rank: elapsed / iters)."""

    min: float
    avg: float
    max: float


class Traffic(TypedDict):
    """Bytes on the wire of one result row (see train/traffic.py)."""

    expected_bytes_per_rank: float
    tx_bytes_per_rank: list[dict[str, float]]


class ResultRow(TypedDict):
    """One measured (op, dtype, size, in_place) case, with nccl-tests' meaning of every field.

    ``size_bytes``/``count`` describe the full buffer nccl-tests prints: the output for all_gather,
    the input for reduce_scatter, the whole send buffer for all_to_all. ``algbw_gbps`` and
    ``busbw_gbps`` derive from ``time_us.avg``; ``busbw_gbps == algbw_gbps * bus_factor(op, n)``.
    ``wrong`` is the number of mismatched elements summed over ranks, null when not checked.
    ``redop`` is the reduction for all_reduce / reduce_scatter, null for the other ops.
    """

    op: str
    dtype: str
    size_bytes: int
    count: int
    in_place: bool
    redop: str | None
    time_us: TimeUs
    algbw_gbps: float
    busbw_gbps: float
    wrong: int | None
    # Traffic proof (train/traffic.py): what one rank must send per op, and per rank the bytes
    # each interface of its network namespace sent per iteration (warmup + timed).
    traffic: NotRequired[Traffic]


class SkippedEntry(TypedDict):
    """An (op, dtype) pair that produced no rows, and why (never silently dropped)."""

    op: str
    dtype: str
    reason: str


def encode_result(doc: dict[str, Any]) -> str:
    """Return the single result line for ``doc``: marker, one space, compact JSON, no newline.

    JSON floats are written with ``repr`` precision, so a decoded document holds the very floats
    that were encoded (tests rely on exact ``busbw == algbw * factor``). NaN/inf are refused: they
    are not JSON and a host parser would choke on them.
    """
    body = json.dumps(doc, separators=(",", ":"), sort_keys=False, allow_nan=False)
    if "\n" in body:  # json.dumps escapes newlines inside strings; this guards the invariant
        raise ValueError("encoded result must be a single line")
    return f"{RESULT_MARKER} {body}"


def decode_result_lines(lines: Iterable[str]) -> dict[str, Any] | None:
    """Return the last well-formed result document found in ``lines``, or None.

    A line counts when it contains the marker anywhere (any log prefix before it is ignored) and
    the rest of the line parses as a JSON object. Lines whose JSON is cut or corrupt are skipped
    rather than raising, so one truncated log line does not hide an earlier good result.
    """
    found: dict[str, Any] | None = None
    for line in lines:
        pos = line.find(RESULT_MARKER)
        if pos < 0:
            continue
        payload = line[pos + len(RESULT_MARKER) :].strip()
        try:
            doc = json.loads(payload)
        except ValueError:
            continue
        if isinstance(doc, dict):
            found = doc
    return found


def encode_progress(doc: dict[str, Any]) -> str:
    """Return one progress line: marker, one space, compact JSON (same rules as results)."""
    body = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    return f"{PROGRESS_MARKER} {body}"


def decode_progress(line: str) -> dict[str, Any] | None:
    """The progress document in ``line`` (marker anywhere), or None when there is none."""
    pos = line.find(PROGRESS_MARKER)
    if pos < 0:
        return None
    try:
        doc = json.loads(line[pos + len(PROGRESS_MARKER) :].strip())
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None
