"""Which execution of a population's conv is faster on this device: grouped or per member.

For each conv size of the quick CNN (width 0.5, batch 64) and the issue's 16->32 conv at
16x16, and each population size P: ms per member of one forward + backward of
PopulationConv2d in each execution (models/layers.py), its input laid out as inside the net
(a view of [B, P*C, H, W]), next to a lone conv (P = 1) of the same size. The default of
model.conv_execution=auto on each device type comes from this table
(`python -m bnrepro.bench.conv_execution`; `make bench` records it in results/bench.json).
"""

from __future__ import annotations

import argparse

import torch

from bnrepro.bench.timing import median_time
from bnrepro.models.layers import PopulationConv2d, unfold

BATCH = 64
# (in channels, out channels, height = width) of the quick CNN at width 0.5, then the issue's
SIZES = [(3, 8, 32), (8, 16, 16), (16, 32, 8), (16, 32, 16)]
POPULATIONS = (4, 8, 32)


def ms_per_member(population_size: int, in_channels: int, out_channels: int, size: int,
                  execution: str, device: torch.device, repeats: int = 3, calls: int = 3
                  ) -> float:
    """Median ms per member of forward + backward (input and weight gradients)."""
    P = population_size
    conv = PopulationConv2d(P, in_channels, out_channels, bias=False,
                            execution=execution).to(device)
    torch.nn.init.normal_(conv.weight)
    folded = torch.randn(BATCH, P * in_channels, size, size, device=device, requires_grad=True)

    def step() -> None:
        conv(unfold(folded, P)).sum().backward()

    return median_time(step, calls, repeats, device) / P * 1000


def measure(device: torch.device, populations=POPULATIONS, sizes=SIZES, repeats: int = 3
            ) -> list[dict]:
    rows = []
    for c_in, c_out, size in sizes:
        alone = ms_per_member(1, c_in, c_out, size, "grouped", device, repeats)
        for P in populations:
            times = {mode: ms_per_member(P, c_in, c_out, size, mode, device, repeats)
                     for mode in ("grouped", "per_member")}
            rows.append({"conv": f"{c_in}->{c_out} at {size}x{size}", "P": P,
                         "alone_ms": round(alone, 4),
                         **{f"{mode}_ms": round(t, 4) for mode, t in times.items()},
                         "faster": min(times, key=times.get)})
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'conv (batch 64)':<20}{'P':>4}{'alone':>9}{'grouped':>9}{'per_member':>12}"
             "   ms per member, forward + backward"]
    for r in rows:
        lines.append(f"{r['conv']:<20}{r['P']:>4}{r['alone_ms']:>9.3f}{r['grouped_ms']:>9.3f}"
                     f"{r['per_member_ms']:>12.3f}   {r['faster']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--populations", type=int, nargs="+", default=list(POPULATIONS))
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"{device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(table(measure(device, args.populations, repeats=args.repeats)))


if __name__ == "__main__":
    main()

