"""Joining the job's process group, and the head of the result document: what every workload
(``train.bench``, ``train.job``, ``train.fabric``) does the same way."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from train.env import wait_for_master
from train.results import SCHEMA_VERSION


def resolve_backend(requested: str) -> str:
    """Return the process-group backend: ``auto`` is nccl when CUDA and NCCL are there, else gloo."""
    if requested != "auto":
        return requested
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def join_process_group(requested: str, timeout_s: float) -> tuple[str, torch.device]:
    """Init the default process group from torchrun's environment; return (backend, device).

    NCCL ranks bind their GPU (LOCAL_RANK) first: NCCL ties the communicator to it. Ranks other
    than 0 wait until the master's store listens, so they join within milliseconds of it.
    """
    backend = resolve_backend(requested)
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    wait_for_master(os.environ, timeout_s)
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return backend, device


@contextmanager
def process_group(requested: str, timeout_s: float) -> Iterator[tuple[str, torch.device]]:
    """:func:`join_process_group` for the block; then every rank leaves together and the group
    is destroyed (also on an error).

    Leaving together: a worker that tore gloo down while rank 0 was still writing the final
    checkpoint and result was seen to abort ("terminate called without an active exception",
    SIGABRT) and so fail a job that had finished all its steps.
    """
    backend, device = join_process_group(requested, timeout_s)
    try:
        yield backend, device
        dist.barrier()
    finally:
        dist.destroy_process_group()


def result_head(kind: str, run_id: str | None, backend: str, device: torch.device,
                ranks: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The fields every result document starts with (see train/results.py), ranks sorted."""
    return {
        "schema": SCHEMA_VERSION,
        "kind": kind,
        "run_id": run_id,
        "dist_backend": backend,
        "device": device.type,
        "torch_version": torch.__version__,
        "world_size": dist.get_world_size(),
        "ranks": sorted(ranks, key=lambda r: int(r["rank"])),
    }
