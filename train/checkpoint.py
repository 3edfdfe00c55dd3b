"""Checkpoint files: framed, hashed, written atomically; the latest valid one wins.

A checkpoint file ``ckpt-<step:08d>.ckpt`` is::

    MAGIC (12 bytes) | payload length (8 bytes, big-endian) | SHA-256 of payload (32 bytes) | payload

The payload is opaque here (the job stores ``torch.save`` bytes). A file whose magic, length or hash
does not match is *invalid*: a crash mid-write, a full disk or a truncating copy leaves such files,
and resuming from one would either crash or, worse, silently load garbage. ``latest_valid`` skips
invalid files and falls back to the previous checkpoint, naming each skipped file and why. An
intact frame can still hold a payload its reader refuses (written by another format version, or
bytes that were damaged before they were framed): ``latest_loadable`` runs the reader on each
candidate, newest first, and falls back the same way when it raises.

Writes go to a temporary file in the same directory, are fsynced, renamed over the final name and
the directory is fsynced: a reader sees either the old set of files or the new complete one.

No torch import: the framing is plain bytes, testable anywhere.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Generic, TypeVar

MAGIC: Final = b"NETORCHCKPT1"
_LEN: Final = struct.Struct(">Q")
HEADER_SIZE: Final = len(MAGIC) + _LEN.size + hashlib.sha256().digest_size
_NAME_RE: Final = re.compile(r"^ckpt-(\d{8,})\.ckpt$")

T = TypeVar("T")


class CheckpointError(Exception):
    """A checkpoint file is not a complete, intact netorch checkpoint."""


def checkpoint_name(step: int) -> str:
    """The file name of the checkpoint taken after ``step`` optimizer steps."""
    return f"ckpt-{step:08d}.ckpt"


def frame(payload: bytes) -> bytes:
    """Return ``payload`` framed with magic, length and SHA-256."""
    return MAGIC + _LEN.pack(len(payload)) + hashlib.sha256(payload).digest() + payload


def unframe(data: bytes) -> bytes:
    """Return the payload of a framed checkpoint; raise :class:`CheckpointError` when damaged."""
    if len(data) < HEADER_SIZE:
        raise CheckpointError(f"{len(data)} bytes is shorter than the {HEADER_SIZE}-byte header")
    if data[: len(MAGIC)] != MAGIC:
        raise CheckpointError("bad magic (not a netorch checkpoint)")
    (length,) = _LEN.unpack_from(data, len(MAGIC))
    digest = data[len(MAGIC) + _LEN.size : HEADER_SIZE]
    payload = data[HEADER_SIZE:]
    if len(payload) != length:
        raise CheckpointError(f"payload is {len(payload)} bytes, header says {length} (truncated?)")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError("SHA-256 mismatch (corrupt)")
    return payload


def write_atomic(directory: Path, step: int, payload: bytes) -> Path:
    """Write checkpoint ``step`` into ``directory`` atomically; return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / checkpoint_name(step)
    tmp = directory / f".{final.name}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(frame(payload))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return final


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint-named file in ``directory``, newest step first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        m = _NAME_RE.match(path.name)
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found, reverse=True)


@dataclass(frozen=True)
class Loaded:
    """The checkpoint chosen to resume from: its step, file and verified payload."""

    step: int
    path: Path
    payload: bytes


def latest_valid(directory: Path) -> tuple[Loaded | None, tuple[tuple[Path, str], ...]]:
    """The newest intact checkpoint in ``directory`` (or None) and every (file, reason) skipped."""
    found, skipped = latest_loadable(directory, lambda payload: payload)
    return (found.checkpoint if found else None), skipped


@dataclass(frozen=True)
class Decoded(Generic[T]):
    """A checkpoint whose payload its reader accepted, and what the reader made of it."""

    checkpoint: Loaded
    value: T


def latest_loadable(
    directory: Path, read: Callable[[bytes], T],
) -> tuple[Decoded[T] | None, tuple[tuple[Path, str], ...]]:
    """The newest checkpoint in ``directory`` that is intact *and* that ``read`` accepts.

    ``read(payload)`` decodes a verified payload (``torch.load`` plus a format check); any
    exception it raises marks that checkpoint unusable and the previous one is tried, so one bad
    file costs the steps since the one before it, never the run. Returns the chosen checkpoint
    (None when none qualifies) and every (file, reason) skipped, newest first.
    """
    skipped: list[tuple[Path, str]] = []
    for step, path in list_checkpoints(directory):
        try:
            payload = unframe(path.read_bytes())
        except (OSError, CheckpointError) as e:
            skipped.append((path, str(e)))
            continue
        try:
            value = read(payload)
        except Exception as e:  # whatever the reader raises, the previous checkpoint may do
            reason = " ".join(str(e).split())[:200] or "no message"
            skipped.append((path, f"could not be loaded ({type(e).__name__}: {reason})"))
            continue
        return Decoded(Loaded(step, path, payload), value), tuple(skipped)
    return None, tuple(skipped)


def prune(directory: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints; return what was deleted.

    Keeping more than one matters: if the newest turns out damaged, the previous one is the fallback.
    """
    removed = []
    for _, path in list_checkpoints(directory)[max(keep, 1):]:
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed
