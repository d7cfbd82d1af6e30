"""`make bench`: ms per training step on the Figure 1 configuration, measured side by side.

Rows: the canonical PyTorch loop (torchvision MNIST + DataLoader + nn.Sequential +
torch.optim.SGD), our trainer with one model, and our trainer stepping populations of 16 and
64 models at once (ms per model-step). Both sides include their per-step data loading; set-up
(reading the dataset) and evaluation are excluded from both. Ratios are against the canonical
loop, measured in this same process, so machine noise affects both sides alike.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from itertools import cycle
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
from torch import nn
from torch.utils.data import DataLoader

from bnrepro.atomic import atomic_write_json
from bnrepro.config import compose_config
from bnrepro.data import load_dataset
from bnrepro.train import resolve_device, train_population


def write_idx(tensor: torch.Tensor, path: Path) -> None:
    """Write a uint8 tensor as an IDX file, the format torchvision's MNIST reads."""
    header = (0x08 << 8 | tensor.dim()).to_bytes(4, "big")
    header += b"".join(d.to_bytes(4, "big") for d in tensor.shape)
    path.write_bytes(header + tensor.contiguous().numpy().tobytes())


def canonical_ms_per_step(steps: int, lr: float, device: torch.device) -> float:
    """The loop a PyTorch tutorial would write for Fig. 1's network."""
    ds = load_dataset("mnist")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for prefix, images, labels in (("train", ds.train_images, ds.train_labels),
                                       ("t10k", ds.test_images, ds.test_labels)):
            write_idx(images.squeeze(1), raw / f"{prefix}-images-idx3-ubyte")
            write_idx(labels.to(torch.uint8), raw / f"{prefix}-labels-idx1-ubyte")
        binary = T.Compose([T.ToTensor(), T.Lambda(lambda x: (x >= 0.5).float())])
        train = torchvision.datasets.MNIST(tmp, train=True, transform=binary)
        loader = DataLoader(train, batch_size=60, shuffle=True, drop_last=True)
        layers: list[nn.Module] = [nn.Flatten()]
        for n_in in (784, 100, 100):
            layers += [nn.Linear(n_in, 100, bias=False), nn.BatchNorm1d(100), nn.Sigmoid()]
        model = nn.Sequential(*layers, nn.Linear(100, 10)).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        batches = cycle(loader)

        def step() -> None:
            x, y = next(batches)
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        for _ in range(20):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps * 1000


def ours_ms_per_model_step(population_size: int, steps: int, device: torch.device) -> float:
    cfgs = [compose_config(["experiment=fig1_mnist", f"seed={k}", f"trainer.max_steps={steps}",
                            f"trainer.eval_every={steps}", "trainer.progress=false",
                            "trainer.checkpoint_every=0",
                            f"trainer.device={device.type}"])
            for k in range(population_size)]
    with tempfile.TemporaryDirectory() as tmp:
        summaries = train_population(cfgs, [Path(tmp) / str(k) for k in range(population_size)])
    return summaries[0]["train_time_s"] / steps / population_size * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="steps per measurement")
    parser.add_argument("--populations", type=int, nargs="*", default=[16, 64])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/bench.json")
    args = parser.parse_args()
    device = resolve_device(args.device)
    lr = compose_config(["experiment=fig1_mnist"]).optim.lr

    rows = [("canonical PyTorch loop", 1, canonical_ms_per_step(args.steps // 2, lr, device))]
    rows.append(("bnrepro single run", 1, ours_ms_per_model_step(1, args.steps, device)))
    for p in args.populations:
        rows.append((f"bnrepro population P={p}", p,
                     ours_ms_per_model_step(p, max(200, args.steps // p * 8), device)))

    canonical = rows[0][2]
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    print(f"\nFigure 1 MLP (784-100-100-100-10, BN, sigmoid, batch 60) on {device} ({name}), "
          f"{torch.get_num_threads()} threads")
    print(f"{'loop':<28}{'ms / model-step':>16}{'speed-up':>10}")
    for label, _, ms in rows:
        print(f"{label:<28}{ms:>16.3f}{canonical / ms:>9.1f}x")
    atomic_write_json(args.out, {
        "device": str(device), "device_name": name, "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": [{"loop": label, "population_size": p, "ms_per_model_step": round(ms, 4),
                  "speedup_vs_canonical": round(canonical / ms, 2)} for label, p, ms in rows]})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
