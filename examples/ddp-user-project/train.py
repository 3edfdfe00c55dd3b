"""A plain PyTorch DDP training script: a small MLP fits the regression data of make_data.py.

Launch it the usual way, with torchrun (or anything that sets the same environment: RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Without them it runs as a single process.

    torchrun --nnodes 1 --nproc-per-node 2 train.py --data /data --checkpoints /checkpoints

- gloo on CPU, nccl when CUDA is available (one GPU per local rank).
- Rank 0 writes a checkpoint (model, optimizer, step) every --checkpoint-every steps, atomically
  (a temporary file renamed into place), and keeps the newest three.
- On start, rank 0 loads the newest intact checkpoint and sends it to every rank, so a restarted
  job carries on where it stopped (the checkpoint directory need only exist on rank 0's machine).
- Deterministic: the batch of step s depends only on (seed, s, rank), so a run that is killed
  and resumed ends with the same weights, bit for bit, as one that never stopped (on CPU).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

KEEP_CHECKPOINTS = 3
CHECKPOINT_RE = re.compile(r"^ckpt-(\d{8,})\.pt$")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="DDP regression example")
    parser.add_argument("--data", type=Path, default=Path("/data"),
                        help="directory holding train.pt (made by make_data.py)")
    parser.add_argument("--checkpoints", type=Path, default=Path("/checkpoints"),
                        help="where rank 0 writes checkpoints and every start resumes from")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps in total")
    parser.add_argument("--checkpoint-every", type=int, default=50,
                        help="save every K steps (0: never)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per rank and step")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=20, help="print the loss every N steps")
    return parser.parse_args()


def fail(message: str) -> NoReturn:
    print(f"train.py: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def load_data(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    path = data_dir / "train.pt"
    if not path.is_file():
        fail(f"--data {data_dir}: no train.pt there; create it with: python make_data.py {data_dir}")
    data = torch.load(path, map_location="cpu", weights_only=True)
    return data["X"], data["y"]


def checkpoint_problem(directory: Path) -> str:
    """Why rank 0 cannot write checkpoints into ``directory``; empty when it can."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return (f"--checkpoints {directory}: cannot create it ({e.strerror}); "
                "pass a writable directory with --checkpoints DIR")
    if not os.access(directory, os.W_OK | os.X_OK):
        return (f"--checkpoints {directory} is not writable (read-only mount or permissions); "
                "mount a writable directory there or pass --checkpoints DIR")
    return ""


def batch_indices(seed: int, step: int, rank: int, n: int, batch_size: int) -> torch.Tensor:
    """The sample indices of ``rank``'s batch at ``step``: a function of (seed, step, rank) only."""
    digest = hashlib.sha256(f"{seed}:{step}:{rank}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randint(n, (batch_size,), generator=generator)


def build_model(features: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 64), nn.Tanh(), nn.Linear(64, 1))


def checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoint files in ``directory``, newest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def load_newest(directory: Path) -> tuple[dict[str, Any] | None, str]:
    """The newest checkpoint that loads, and its path; damaged files are skipped, with a note."""
    for _, path in checkpoints(directory):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not {"model", "optimizer", "step"} <= state.keys():
                raise ValueError("missing model/optimizer/step")
        except Exception as e:  # a damaged file is any error while loading it
            print(f"skipping damaged checkpoint {path}: {e}", file=sys.stderr, flush=True)
            continue
        return state, str(path)
    return None, ""


def save_checkpoint(directory: Path, step: int, model: nn.Module,
                    optimizer: torch.optim.Optimizer) -> Path:
    """Write ``ckpt-<step>.pt`` atomically, then delete all but the newest KEEP_CHECKPOINTS."""
    final = directory / f"ckpt-{step:08d}.pt"
    tmp = directory / f".{final.name}.tmp"
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)  # readers see the old set of files or the complete new one
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename is durable once the directory entry is on disk
    finally:
        os.close(fd)
    for _, old in checkpoints(directory)[KEEP_CHECKPOINTS:]:
        old.unlink(missing_ok=True)
    return final


def weights_sha256(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for param in model.parameters():
        flat = param.detach().cpu().contiguous().flatten()
        digest.update(bytes(flat.view(torch.uint8).tolist()))
    return digest.hexdigest()


def main() -> None:
    args = parse_args()
    # Run as one process when no launcher set the environment (python train.py ...).
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"),
                        ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
        os.environ.setdefault(name, value)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))

    x, y = load_data(args.data)
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    dist.init_process_group(backend, init_method="env://")
    if rank == 0:
        print(f"world_size={world_size} master_addr={os.environ['MASTER_ADDR']} "
              f"master_port={os.environ['MASTER_PORT']} rank=0 restart={restart}", flush=True)

    # Rank 0 decides; every rank learns the verdict, so a bad directory stops all of them.
    verdict = [checkpoint_problem(args.checkpoints) if rank == 0 else ""]
    dist.broadcast_object_list(verdict, src=0)
    if verdict[0]:
        if rank == 0:
            print(f"train.py: error: {verdict[0]}", file=sys.stderr, flush=True)
        dist.destroy_process_group()
        sys.exit(2)

    model = build_model(x.shape[1], args.seed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    resume = [load_newest(args.checkpoints) if rank == 0 else (None, "")]
    dist.broadcast_object_list(resume, src=0)
    state, source = resume[0]
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        if rank == 0:
            print(f"resumed from {source} at step {start}", flush=True)
    ddp = DistributedDataParallel(model)
    x, y = x.to(device), y.to(device)

    for step in range(start, args.steps):
        idx = batch_indices(args.seed, step, rank, len(x), args.batch_size).to(device)
        loss = nn.functional.mse_loss(ddp(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = step + 1
        if done % args.log_every == 0 or done == args.steps or step == start:
            mean = loss.detach().clone()
            dist.all_reduce(mean)
            if rank == 0:
                print(f"step {done} loss {mean.item() / world_size:.6f}", flush=True)
        if rank == 0 and args.checkpoint_every > 0 and done % args.checkpoint_every == 0:
            save_checkpoint(args.checkpoints, done, model, optimizer)

    if rank == 0:
        print(f"final_weights_sha256={weights_sha256(model)}", flush=True)
        print("done", flush=True)
    dist.barrier()  # leave together: no rank tears down the group while another still uses it
    # DDP's reducer holds the process group: drop it first, so the group's threads stop here and
    # not in interpreter shutdown, where a still-running gloo thread aborts the process.
    del ddp
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
