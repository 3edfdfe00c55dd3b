"""Checkpoint framing: intact files load, damaged ones are skipped for the previous one."""

from __future__ import annotations

from pathlib import Path

import pytest

from train.checkpoint import (
    HEADER_SIZE,
    CheckpointError,
    checkpoint_name,
    frame,
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
