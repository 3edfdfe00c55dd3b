"""What every node runs, independent of the backend: netorch's workloads and the user's.

A :class:`WorkloadSpec` is the launcher's target (``-m MODULE ARGS`` / ``SCRIPT.py ARGS`` /
``--no-python CMD ARGS``) plus what it needs from the plan (mounts, checkpoints, env, image).
``build_plan`` combines one with the backend's fabric. The flags of netorch's own workloads come
from the workload contract (``train/contract.py``), so host and node agree by construction.
The user's job (``netorch run``) is built in ``orchestrator/userjob.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.errors import PlanError
from orchestrator.settings import BenchSettings, MetricsSettings, Settings, TrainSettings
from train.contract import BenchArgs, FabricArgs, TrainArgs, workload_argv

if TYPE_CHECKING:
    from orchestrator.plan import MountSpec

WORKLOADS = ("bench", "train", "fabric")
# Where the master's checkpoint directory appears inside its container (a bind mount).
CONTAINER_CHECKPOINT_DIR = "/netorch/checkpoints"


@dataclass(frozen=True)
class CheckpointSpec:
    """A host directory of checkpoints and where nodes see it.

    On a fabric with ``in_node_paths`` it is bind-mounted at ``in_node_dir`` (on the master only
    when ``master_only``: netorch's train job reads and writes checkpoints on rank 0 alone); on
    the process backend nodes use ``host_dir`` itself. ``NETORCH_CHECKPOINT_DIR`` tells the job.
    """

    host_dir: str
    in_node_dir: str
    master_only: bool


@dataclass(frozen=True)
class WorkloadSpec:
    """What every node runs, independent of the backend: the launcher's target and its needs.

    ``target`` follows the launcher (``-m MODULE ARGS`` / ``SCRIPT.py ARGS`` / ``--no-python
    CMD ARGS``). ``emits_result``: rank 0 prints a result line the session must collect (netorch's
    own workloads). ``mounts`` go on every node; ``workdir`` is the nodes' working directory,
    bind-mounted from ``workdir_source`` when set. ``image`` overrides ``cluster.image``.
    ``placeholders``: ``{node_rank}``-style fields in ``target`` are filled in per node.
    """

    kind: str
    target: tuple[str, ...]
    emits_result: bool = True
    env: tuple[tuple[str, str], ...] = ()
    mounts: tuple[MountSpec, ...] = ()
    checkpoint: CheckpointSpec | None = None
    workdir: str | None = None
    workdir_source: str | None = None
    workdir_read_only: bool = True
    image: str | None = None
    metrics: bool = False
    placeholders: bool = False
    # False: ``target`` is the whole command (a warm node's agent), not the launcher's target.
    launcher: bool = True
    labels: tuple[tuple[str, str], ...] = ()


def bench_args(bench: BenchSettings, dist_backend: str, timeout_s: int, run_id: str) -> BenchArgs:
    """The workload contract's ``python -m train.bench`` config equal to ``bench``."""
    return BenchArgs(
        ops=tuple(bench.ops), min_bytes=bench.min_bytes, max_bytes=bench.max_bytes,
        step_factor=bench.step_factor, warmup=bench.warmup, iters=bench.iters,
        dtypes=tuple(bench.dtype), check=bench.check, in_place=bench.in_place,
        reduce_op=bench.reduce_op, blocking=bench.blocking, dist_backend=dist_backend,
        timeout_s=timeout_s, run_id=run_id,
    )


def train_args(
    train: TrainSettings, metrics: MetricsSettings, dist_backend: str, timeout_s: int, run_id: str
) -> TrainArgs:
    """The workload contract's ``python -m train.job`` config equal to ``train`` (+ metrics)."""
    return TrainArgs(
        steps=train.steps, batch_size=train.batch_size, width=train.width, depth=train.depth,
        bucket_cap_mb=train.bucket_cap_mb, checkpoint_every=train.checkpoint_every,
        keep_checkpoints=train.keep_checkpoints, seed=train.seed, lr=train.lr,
        progress_every=train.progress_every, dist_backend=dist_backend, timeout_s=timeout_s,
        run_id=run_id, metrics_hold_s=metrics.hold_s, metrics_hold_scrapes=metrics.hold_scrapes,
    )


def checkpoint_dir(settings: Settings, run_id: str) -> str:
    """The host directory of a run's checkpoints: ``<output>/<run_id>/checkpoints``, absolute.

    Absolute because process-backend nodes run in the project root and Docker binds need it; it
    is resolved against the current directory, like every other relative path the user gives.
    """
    return os.path.abspath(os.path.join(settings.output, run_id, "checkpoints"))


def bench_workload(settings: Settings, run_id: str) -> WorkloadSpec:
    """netorch's collective benchmark (``python -m train.bench``)."""
    c = settings.cluster
    args = bench_args(settings.bench, c.dist_backend, c.timeout_s, run_id)
    return WorkloadSpec(kind="bench", target=workload_argv(args))


def train_workload(settings: Settings, run_id: str) -> WorkloadSpec:
    """netorch's DDP training job (``python -m train.job``): checkpoints on rank 0, metrics."""
    c = settings.cluster
    args = train_args(settings.train, settings.metrics, c.dist_backend, c.timeout_s, run_id)
    return WorkloadSpec(
        kind="train",
        target=workload_argv(args),
        checkpoint=CheckpointSpec(checkpoint_dir(settings, run_id), CONTAINER_CHECKPOINT_DIR,
                                  master_only=True),
        metrics=settings.metrics.enabled,
    )


def fabric_workload(settings: Settings, run_id: str) -> WorkloadSpec:
    """netorch's pairwise link matrix (``python -m train.fabric``), one rank per node."""
    c, f = settings.cluster, settings.fabric
    args = FabricArgs(bw_bytes=f.bw_bytes, bw_iters=f.bw_iters, bw_seconds=f.bw_seconds,
                      lat_bytes=f.lat_bytes,
                      lat_iters=f.lat_iters, warmup=f.warmup, passes=f.passes,
                      schedule=f.schedule, slow_fraction=f.slow_fraction,
                      dist_backend=c.dist_backend,
                      timeout_s=c.timeout_s, run_id=run_id)
    return WorkloadSpec(kind="fabric", target=workload_argv(args))


def workload_for(name: str, settings: Settings, run_id: str) -> WorkloadSpec:
    """The built-in workload called ``name`` (bench, train)."""
    if name == "bench":
        return bench_workload(settings, run_id)
    if name == "train":
        return train_workload(settings, run_id)
    if name == "fabric":
        return fabric_workload(settings, run_id)
    raise PlanError(f"workload {name!r} is unknown; use one of {', '.join(WORKLOADS)}")

