"""Where a tier's training time went, read from its run store: per experiment, the share of
its processes' wall time that was not training steps (evaluations, the measures, set-up,
checkpoints). Issue 27's target: evaluation <= 20% of each CIFAR experiment's wall time.

    python -m bnrepro.bench.store_costs runs/long        # one line per experiment
    python -m bnrepro.bench.store_costs runs --json out.json

Each finished run's summary.json holds its process's wall_time_s and train_time_s (the
training steps alone) since the process last started it, so a resumed run counts its last
stretch only: the share is over the stretches recorded. The members of a population share
one process and record the same times, so each member counts 1 / population_size of them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bnrepro.run.store import read_summary


@dataclass
class ExperimentCost:
    experiment: str      # the run store's folder (fig2_cifar10-jpeg, depth_cifar10-jpeg, ...)
    runs: int            # finished runs with both times recorded
    wall_s: float        # the processes' wall time, each population counted once
    train_s: float       # of which training steps

    @property
    def not_training(self) -> float:
        return 1.0 - self.train_s / self.wall_s if self.wall_s > 0 else 0.0


def experiment_cost(folder: Path) -> ExperimentCost | None:
    """The cost of the runs under `folder` (None if none has both times)."""
    runs, wall, train = 0, 0.0, 0.0
    for path in sorted(folder.rglob("summary.json")):
        try:
            s = read_summary(path.parent)
        except ValueError:  # cut short by a kill: its run is not finished either
            continue
        if s.get("wall_time_s") is None or s.get("train_time_s") is None:
            continue
        weight = 1.0 / (s.get("population_size") or 1)
        runs, wall, train = runs + 1, wall + weight * s["wall_time_s"], \
            train + weight * s["train_time_s"]
    return ExperimentCost(folder.name, runs, wall, train) if runs else None


def store_costs(runs: Path) -> list[ExperimentCost]:
    """Every experiment folder of a run store (logs/ aside), in name order."""
    return [cost for folder in sorted(p for p in Path(runs).iterdir()
                                      if p.is_dir() and p.name != "logs")
            if (cost := experiment_cost(folder)) is not None]


def line(cost: ExperimentCost) -> str:
    return (f"{cost.experiment}: {cost.runs} runs, {cost.wall_s:.0f} s of process wall time, "
            f"{cost.not_training:.0%} not training steps")


def main(argv: Sequence[str] | None = None) -> list[ExperimentCost]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, help="a run store: runs/ or runs/long/")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)
    if not args.runs.is_dir():
        raise SystemExit(f"error: {args.runs} is not a run store (a folder of experiments' "
                         f"runs, such as runs/ or runs/long/)")
    costs = store_costs(args.runs)
    for cost in costs:
        print(line(cost))
    if not costs:
        print(f"{args.runs}: no finished run records its times")
    if args.json:
        args.json.write_text(json.dumps(
            [asdict(c) | {"not_training": round(c.not_training, 4)} for c in costs],
            indent=2) + "\n")
    return costs


if __name__ == "__main__":
    main()
