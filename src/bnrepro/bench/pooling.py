"""Max-pooling of the folded conv layout: torch's F.max_pool2d against models.pooling.max_pool2d.

For each pooled activation of the quick CNN (width 0.5, batch 64), at population sizes 1 and 8
(the layout [B, P*C, H, W], contiguous as a batch without augmentation reaches it): ms per
model of a training call (forward + backward) and of an evaluation call (forward, no grad),
each way (`python -m bnrepro.bench.pooling`; `make bench` records it in results/bench.json).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bnrepro.bench.timing import median_time
from bnrepro.models.pooling import max_pool2d

BATCH = 64
SIZES = [(8, 32), (16, 16), (32, 8)]  # (channels, height = width) before each of its 3 pools
POPULATIONS = (1, 8)
WAYS = {"torch": lambda x: F.max_pool2d(x, 2), "ours": lambda x: max_pool2d(x, 2)}


def ms_per_model(pool, population_size: int, channels: int, size: int, train: bool,
                 device: torch.device, repeats: int = 3, calls: int = 5) -> float:
    P = population_size
    x = torch.relu(torch.randn(BATCH, P * channels, size, size, device=device))
    x.requires_grad_(train)
    upstream = torch.randn(BATCH, P * channels, size // 2, size // 2, device=device)

    def call() -> None:
        if train:
            x.grad = None
            pool(x).backward(upstream)
        else:
            with torch.no_grad():
                pool(x)

    return median_time(call, calls, repeats, device) / P * 1000


def measure(device: torch.device, populations=POPULATIONS, sizes=SIZES, repeats: int = 3
            ) -> list[dict]:
    rows = []
    for channels, size in sizes:
        for P in populations:
            row: dict = {"input": f"{channels} maps at {size}x{size}", "P": P}
            for phase, train in (("train", True), ("eval", False)):
                for name, pool in WAYS.items():
                    row[f"{phase}_{name}_ms"] = round(
                        ms_per_model(pool, P, channels, size, train, device, repeats), 4)
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| pooled input (batch 64) | P | training: torch | training: ours | "
             "evaluation: torch | evaluation: ours |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['input']} | {r['P']} | {r['train_torch_ms']:.3f} | "
                     f"{r['train_ours_ms']:.3f} | {r['eval_torch_ms']:.3f} | "
                     f"{r['eval_ours_ms']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"{device}, {torch.get_num_threads()} threads, torch {torch.__version__}; ms per "
          "model (training: forward + backward; evaluation: forward)")
    print(table(measure(device, repeats=args.repeats)))


if __name__ == "__main__":
    main()
