"""What one Santurkar measure (bnrepro.measures: gradient ICS, loss landscape) costs, in
training steps of the Fig. 1 population.

Off by default (conf/measures), so a default run pays nothing; a run that turns them on pays
per measured step. One real run of the fig1_mnist population (seeds 0, 1, 2) measures ICS at
some steps and the landscape at others, with its default knobs (every layer; 8 step lengths);
the trainer's on_step clock gives every step's duration, and a measure's cost is the median
duration of the steps that ran it minus the median of the steps that ran none. No evaluation
falls inside a timed step (the only one is after the last step's clock).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from bnrepro.bench.evaluation_cost import SEEDS, fig1_population
from bnrepro.bench.timing import synchronize
from bnrepro.train import train_population


def measures_cost(root: str | Path, device: torch.device, measured_steps: int = 5,
                  spacing: int = 10, eval_every: int = 500) -> dict:
    """ms per ICS measurement and per landscape measurement, each also in training steps
    and as a share of training if taken once every `eval_every` steps."""
    ics = [spacing * (2 * i + 1) for i in range(measured_steps)]
    landscape = [spacing * (2 * i + 2) for i in range(measured_steps)]
    max_steps = landscape[-1] + spacing
    cfgs = fig1_population([f"trainer.max_steps={max_steps}", f"trainer.eval_every={max_steps}",
                            f"dataset.root={root}", f"trainer.device={device.type}",
                            f"measures.ics.steps={ics}", f"measures.landscape.steps={landscape}",
                            "probe.networks=[]"])
    clock: dict[int, float] = {}

    def on_step(step: int) -> None:
        synchronize(device)
        clock[step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        train_population(cfgs, [Path(tmp) / str(s) for s in SEEDS], on_step)
    duration = {t: clock[t] - clock[t - 1] for t in clock if t - 1 in clock}
    plain = statistics.median(d for t, d in duration.items() if t not in {*ics, *landscape})
    result = {"population_size": len(SEEDS), "step_ms": round(plain * 1000, 3)}
    for name, steps in (("ics", ics), ("landscape", landscape)):
        extra = statistics.median(duration[t] for t in steps) - plain
        result[name] = {"ms": round(extra * 1000, 3), "training_steps": round(extra / plain, 2),
                        f"share_if_every_{eval_every}_steps": round(
                            extra / (extra + eval_every * plain), 4)}
    return result
