"""Write a small synthetic regression dataset: DIR/train.pt holding tensors X (N x 16) and y (N x 1).

The same command always writes the same tensors (a fixed generator seed), so runs on different
machines train on identical data.

    python make_data.py /data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

FEATURES = 16
SAMPLES = 4096


def make(n: int = SAMPLES, seed: int = 1234) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=g)
    w = torch.randn(FEATURES, 1, generator=g)
    # A smooth non-linear target plus a little noise: a small MLP fits it well within a few
    # hundred steps, so the loss visibly falls.
    y = torch.tanh(x @ w / 2.0) * 2.0 + 0.1 * x[:, :1] ** 2 + 0.05 * torch.randn(n, 1, generator=g)
    return {"X": x, "y": y}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="directory to write train.pt into (created)")
    parser.add_argument("--samples", type=int, default=SAMPLES)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / "train.pt"
    torch.save(make(args.samples, args.seed), path)
    print(f"wrote {path} ({args.samples} samples, {FEATURES} features)")


if __name__ == "__main__":
    main()
