"""Our trainer as a bench row: `train_population`, exactly as `python -m bnrepro.train` runs.

Each sample is a fresh run of warm-up + timed steps in a temporary run directory; the timed
span runs from the end of step `warmup` to the end of the last step (train_population's
on_step), so it holds nothing but training steps: data indexing, augmentation, the forward
and backward passes, the divergence checks and the update (summed over the chunks a
population bigger than trainer.members_at_once trains in). The evaluations at step 0 and at
the end, set-up and the final checkpoint fall outside it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bnrepro.bench.timing import synchronize
from bnrepro.bench.workloads import Workload, trainer_dataset
from bnrepro.train import train_population


def our_trainer(w: Workload, population_size: int, extra: list[str] | None = None,
                span: tuple[Callable[[], object], Callable[[], object]] | None = None):
    """The sample function of our trainer with `population_size` members (seeds 0..P-1);
    `extra` config overrides (e.g. model.conv_execution=grouped); `span`: (start, stop) called
    where the clock starts and stops (bench.profile's profiler)."""
    settings = [f"trainer.device={w.device.type}", "trainer.progress=false",
                "trainer.checkpoint_every=0", *(extra or [])]
    configs = w.population(population_size, settings)

    def sample(warmup: int, steps: int) -> float:
        if warmup < 1:
            raise ValueError("our trainer's samples need warmup >= 1 (the clock starts at the "
                             "end of a step)")
        # A population bigger than trainer.members_at_once trains as chunks one after another,
        # each through steps 1..warmup+steps: the timed spans of all chunks add up.
        clock = {"started": 0.0, "seconds": 0.0}

        def on_step(step: int) -> None:
            if step in (warmup, warmup + steps):
                synchronize(w.device)
                if step == warmup:
                    clock["started"] = time.perf_counter()
                else:
                    clock["seconds"] += time.perf_counter() - clock["started"]
                if span is not None:
                    span[step != warmup]()

        for cfg in configs:  # evaluate only at step 0 and the end, both outside the clock
            cfg.trainer.max_steps = cfg.trainer.eval_every = warmup + steps
        with tempfile.TemporaryDirectory() as tmp, trainer_dataset(w.dataset):
            train_population(configs, [Path(tmp) / str(k) for k in range(population_size)],
                             on_step)
        return clock["seconds"] / steps / population_size * 1000

    return sample
