"""Measures of Santurkar et al. (2018) taken during training: `conf/measures/<name>`.

MEASURES says which exist. Each is a pure function of a loss function and weights with a
leading member dimension P (usable by any training loop: ics.gradient_ics,
landscape.landscape), plus the trainer's hook around it (run) and its config checks
(problems). The trainer runs a measure at the steps its config asks for (schedule.py), at
step t between the backward pass and the update, and logs one number per member and key in
that step's row. A measure changes nothing in training (replay.py): a run with measures gives
bit-identical weights and metrics to one without. Adding a measure: its module here, one entry
below, its knobs in conf/measures/default.yaml (and in conf/train.yaml's exclude_keys).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from bnrepro.measures.context import LayerParams, MeasureContext, model_layers
from bnrepro.measures.ics import gradient_ics, ics_problems, run_ics
from bnrepro.measures.landscape import (
    Landscape,
    landscape,
    landscape_problems,
    run_landscape,
    step_multipliers,
)
from bnrepro.measures.replay import StepReplay, forward_generators
from bnrepro.measures.schedule import is_due, is_scheduled, schedule_problems

__all__ = ["MEASURES", "Landscape", "LayerParams", "MeasureContext", "MeasureSpec",
           "StepReplay", "forward_generators", "gradient_ics", "is_due", "is_scheduled",
           "landscape", "measure_problems", "model_layers", "step_multipliers"]


@dataclass(frozen=True)
class MeasureSpec:
    # (context of step t, the measure's config node) -> {logged key: [P] values}
    run: Callable[[MeasureContext, Mapping], dict[str, torch.Tensor]]
    # (the measure's config node, the model's number of weight layers or None) -> problems
    problems: Callable[[Mapping, int | None], list[str]]


MEASURES: dict[str, MeasureSpec] = {
    # Def. 2.1: ||G - G'|| and cos(G, G') per layer (Sec. 2.2, Fig. 3)
    "ics": MeasureSpec(run_ics, ics_problems),
    # loss variation, gradient predictiveness, effective beta along the gradient (Sec. 3.2)
    "landscape": MeasureSpec(run_landscape, landscape_problems),
}


def measure_problems(measures_cfg: Mapping | None, max_steps: object,
                     num_layers: int | None) -> list[str]:
    """Every bad value under `measures` (validation.py turns them into one ConfigError)."""
    problems: list[str] = []
    for name, spec in MEASURES.items():
        knobs = (measures_cfg or {}).get(name)
        if knobs is None:
            continue  # a config without the group (older runs): the measure is off
        problems += schedule_problems(f"measures.{name}", knobs, max_steps)
        problems += spec.problems(knobs, num_layers)
    return problems
