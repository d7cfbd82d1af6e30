"""What evaluation costs a Fig. 1 run at the default cadence, as a share of its time.

A Fig. 1 run here is what `make fig1` trains: the fig1_mnist config, a population of its 3
seeds. Two measurements:
- a short real run (`steps` steps, an evaluation every `eval_every`, as in the config):
  summary.json's wall_time_s and train_time_s (training steps alone) give the share of the
  run's wall time that is not training (evaluations, set-up, the final checkpoint);
- each part of one evaluation timed on its own (Alg. 2's statistics, validation + test,
  probes; medians of `repeats`), projected onto the full run: trainer.max_steps /
  trainer.eval_every + 1 evaluations against max_steps steps at the short run's step time.
The target (evaluation <= 20% of the run's wall time) reads the projection: a full run's
set-up is a sliver of it, a short run's is not.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from bnrepro.bench.timing import median_time
from bnrepro.bench.workloads import population
from bnrepro.config import compose_config
from bnrepro.data.datasets import InputTransform, load_dataset
from bnrepro.data.sampling import validation_split
from bnrepro.measures.evaluation import Evaluator
from bnrepro.models import build_model
from bnrepro.train import train_population

# torch's default threads, as the other bench rows (make fig1 trains with one per norm)
FIG1 = ["experiment=fig1_mnist", "trainer.progress=false", "trainer.checkpoint_every=0",
        "trainer.threads=null"]
SEEDS = (0, 1, 2)  # one population of `make fig1`
QUICK = ["probe.num_examples=120", "trainer.population_batches=2", "dataset.val_size=500"]


def fig1_population(overrides: list[str]) -> list[DictConfig]:
    """The configs of one `make fig1` population (seeds 0, 1, 2), with `overrides`."""
    if "fig1" not in _COMPOSED:  # composing takes ~0.5 s: once
        _COMPOSED["fig1"] = compose_config(FIG1)
    return population(OmegaConf.merge(_COMPOSED["fig1"], OmegaConf.from_dotlist(overrides)),
                      len(SEEDS))


_COMPOSED: dict[str, DictConfig] = {}


def evaluation_parts(root: str | Path, device: torch.device, repeats: int,
                     overrides: Sequence[str] = ()) -> dict[str, float]:
    """Seconds of each part of one evaluation of a Fig. 1 population (fresh weights: the
    time does not depend on them), medians of `repeats`; the whole is their sum (it is
    what Evaluator.__call__ runs)."""
    cfgs = fig1_population([f"trainer.device={device.type}", *overrides])
    cfg = cfgs[0]
    ds = load_dataset(cfg.dataset.name, root)
    transform = InputTransform(ds, cfg.dataset.binarize, cfg.dataset.standardize)
    ds = ds.to(device)
    train_index, val_index = validation_split(len(ds.train_labels), cfg.dataset.val_size)
    evaluator = Evaluator(cfg, ds, transform, train_index, val_index)
    model = build_model(cfgs, ds.image_shape).to(device).eval()
    parts = {"alg2_statistics": lambda: evaluator.estimate_statistics(model),
             "validation_and_test": lambda: evaluator.losses(model),
             "probes": lambda: evaluator.probes(model)}
    seconds = {name: median_time(fn, 1, repeats, device, warmup=repeats > 1)
               for name, fn in parts.items()}
    seconds["whole_evaluation"] = sum(seconds.values())
    return {name: round(s, 4) for name, s in seconds.items()}


def short_run(root: str | Path, device: torch.device, steps: int, eval_every: int,
              overrides: Sequence[str] = ()) -> dict:
    cfgs = fig1_population([f"trainer.max_steps={steps}", f"trainer.eval_every={eval_every}",
                            f"dataset.root={root}", f"trainer.device={device.type}",
                            *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        summary = train_population(cfgs, [Path(tmp) / str(s) for s in SEEDS])[0]
    return {"steps": steps, "eval_every": eval_every, "wall_time_s": summary["wall_time_s"],
            "train_time_s": summary["train_time_s"],
            "not_training_fraction": round(1 - summary["train_time_s"] / summary["wall_time_s"],
                                           4)}


def evaluation_cost(root: str | Path, device: torch.device, steps: int = 2000,
                    eval_every: int = 500, repeats: int = 3, quick: bool = False) -> dict:
    """The short run, the parts of one evaluation, and the projection onto a full run.
    `quick` (tests): smaller probe and Alg. 2 sets than Fig. 1's, and no warm-up call."""
    overrides = QUICK if quick else []
    run = short_run(root, device, steps, eval_every, overrides)
    parts = evaluation_parts(root, device, repeats, overrides)
    full = fig1_population([])[0].trainer
    evaluations = full.max_steps // full.eval_every + 1
    step_s = run["train_time_s"] / steps
    eval_s = evaluations * parts["whole_evaluation"]
    train_s = full.max_steps * step_s
    return {"population_size": len(SEEDS), "quick": quick, "short_run": run,
            "one_evaluation_s": parts, "full_run": {
                "max_steps": full.max_steps, "eval_every": full.eval_every,
                "evaluations": evaluations, "training_s": round(train_s, 1),
                "evaluation_s": round(eval_s, 1),
                "evaluation_fraction": round(eval_s / (eval_s + train_s), 4)}}
