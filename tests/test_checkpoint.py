"""Checkpoint framing: intact files load, damaged ones are skipped for the previous one."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from train.checkpoint import (
    HEADER_SIZE,
    CheckpointError,
    checkpoint_name,
    frame,
    latest_loadable,
    latest_valid,
    list_checkpoints,
    prune,
    unframe,
    write_atomic,
)


def test_frame_round_trip() -> None:
    payload = bytes(range(256)) * 10
    assert unframe(frame(payload)) == payload
    assert unframe(frame(b"")) == b""


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d[:-1], "truncated"),
        (lambda d: d[: HEADER_SIZE - 1], "shorter than"),
        (lambda d: b"X" + d[1:], "bad magic"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "SHA-256 mismatch"),
        (lambda d: d + b"extra", "header says"),
    ],
)
def test_damaged_frames_are_refused(damage: object, message: str) -> None:
    good = frame(b"payload bytes" * 100)
    with pytest.raises(CheckpointError, match=message):
        unframe(damage(good))  # type: ignore[operator]


def test_truncated_newest_falls_back_to_previous(tmp_path: Path) -> None:
    write_atomic(tmp_path, 10, b"ten")
    newest = write_atomic(tmp_path, 20, b"twenty" * 1000)
    newest.write_bytes(newest.read_bytes()[:100])  # a crash mid-copy
    loaded, skipped = latest_valid(tmp_path)
    assert loaded is not None
    assert (loaded.step, loaded.payload) == (10, b"ten")
    assert [p.name for p, _ in skipped] == [checkpoint_name(20)]
    assert "truncated" in skipped[0][1]


def test_no_valid_checkpoint(tmp_path: Path) -> None:
    assert latest_valid(tmp_path / "missing") == (None, ())
    (tmp_path / checkpoint_name(5)).write_bytes(b"garbage")
    loaded, skipped = latest_valid(tmp_path)
    assert loaded is None and len(skipped) == 1


def test_atomic_write_leaves_only_the_final_file(tmp_path: Path) -> None:
    path = write_atomic(tmp_path / "ck", 7, b"data")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [path.name]
    assert unframe(path.read_bytes()) == b"data"


def test_prune_keeps_newest(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        write_atomic(tmp_path, step, b"x")
    (tmp_path / "unrelated.txt").write_text("keep me")
    removed = prune(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == [checkpoint_name(1), checkpoint_name(2)]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 3]
    assert (tmp_path / "unrelated.txt").exists()


# ---- a payload that is framed intact but does not load falls back to the previous one -----------


def test_unloadable_newest_falls_back_to_previous(tmp_path: Path) -> None:
    write_atomic(tmp_path, 10, b"v1:ten")
    write_atomic(tmp_path, 20, b"v2:twenty")  # intact frame, a format this reader refuses

    def read(payload: bytes) -> str:
        version, _, body = payload.decode().partition(":")
        if version != "v1":
            raise ValueError(f"format {version}, this reader reads v1")
        return body

    found, skipped = latest_loadable(tmp_path, read)
    assert found is not None
    assert (found.checkpoint.step, found.value) == (10, "ten")
    assert [p.name for p, _ in skipped] == [checkpoint_name(20)]
    assert "could not be loaded (ValueError: format v2" in skipped[0][1]


def test_nothing_loadable_is_none_with_every_reason(tmp_path: Path) -> None:
    write_atomic(tmp_path, 1, b"a")
    (tmp_path / checkpoint_name(2)).write_bytes(b"garbage")

    def refuse(payload: bytes) -> None:
        raise RuntimeError("no")

    found, skipped = latest_loadable(tmp_path, refuse)
    assert found is None
    assert [p.name for p, _ in skipped] == [checkpoint_name(2), checkpoint_name(1)]
    assert "bad magic" in skipped[0][1] or "shorter" in skipped[0][1]
    assert "RuntimeError: no" in skipped[1][1]


@pytest.fixture
def single_rank_group(tmp_path: Path) -> Iterator[None]:
    """A one-rank gloo process group, so the job's collective loader runs as it does in a job."""
    dist = pytest.importorskip("torch.distributed")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _torch_payload(step: int, fmt: int) -> bytes:
    import torch

    doc = {"format": fmt, "step": step, "world_size": 1, "model": {"w": torch.ones(3) * step},
           "optimizer": {"state": {}, "param_groups": []}}
    buf = io.BytesIO()
    torch.save(doc, buf)
    return buf.getvalue()


@pytest.mark.parametrize("damage", ["truncated-pickle", "newer-format"])
def test_job_resumes_from_previous_when_newest_does_not_load(
    tmp_path: Path, single_rank_group: None, damage: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from train import job

    ckpts = tmp_path / "ckpts"
    write_atomic(ckpts, 10, _torch_payload(10, job.CHECKPOINT_FORMAT))
    if damage == "truncated-pickle":
        # Damaged *before* framing: the frame's hash matches, torch.load raises.
        bad = _torch_payload(20, job.CHECKPOINT_FORMAT)[:200]
    else:
        bad = _torch_payload(20, job.CHECKPOINT_FORMAT + 1)
    write_atomic(ckpts, 20, bad)
    with pytest.raises(Exception):
        job.decode_checkpoint(bad)

    state, skipped = job.load_latest(ckpts)
    assert state is not None and state["step"] == 10
    assert state["model"]["w"].tolist() == [10.0, 10.0, 10.0]
    assert [s["file"] for s in skipped] == [checkpoint_name(20)]
    assert "could not be loaded" in skipped[0]["reason"]


def test_job_starts_fresh_when_no_checkpoint_loads(tmp_path: Path, single_rank_group: None) -> None:
    from train import job

    write_atomic(tmp_path, 5, b"not a torch file")
    state, skipped = job.load_latest(tmp_path)
    assert state is None
    assert [s["file"] for s in skipped] == [checkpoint_name(5)]
