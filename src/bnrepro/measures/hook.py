"""The training loop's side of the measures: which run at a step, and with what.

At a step where a measure is due, the trainer calls `capture` right before the step's forward
pass, then, after the backward pass and the optimizer's `set_step` but before its update,
`measure`. It gets {key: [P] floats}; members that are frozen (diverged) get nothing logged.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from bnrepro.measures import MEASURES, MeasureContext, is_due, is_scheduled, model_layers
from bnrepro.measures.replay import Criterion, StepReplay
from bnrepro.optim import PopulationSGD


class StepMeasures:
    """The measures `measures_cfg` (the config's `measures` node) asks for, for one model."""

    def __init__(self, measures_cfg: Mapping | None, model: nn.Module,
                 optimizer: PopulationSGD, criterion: Criterion):
        self.model, self.optimizer, self.criterion = model, optimizer, criterion
        if isinstance(measures_cfg, DictConfig):  # plain containers: checked at every step
            measures_cfg = OmegaConf.to_container(measures_cfg, resolve=True)
        self.knobs = {name: measures_cfg[name] for name in MEASURES
                      if measures_cfg and measures_cfg.get(name) is not None
                      and is_scheduled(measures_cfg[name])}
        for knobs in self.knobs.values():
            knobs["steps"] = frozenset(knobs.get("steps") or ())
        self.layers = model_layers(model) if self.knobs else []

    def due(self, step: int) -> list[str]:
        return [name for name, knobs in self.knobs.items() if is_due(knobs, step)]

    def capture(self, step: int) -> StepReplay | None:
        """Call right before step `step`'s forward pass: what a replay needs, or None when no
        measure is due (nothing is copied then)."""
        return StepReplay(self.model) if self.due(step) else None

    def measure(self, step: int, replay: StepReplay, x: torch.Tensor, y: torch.Tensor,
                loss: torch.Tensor, alive: torch.Tensor) -> dict[str, list[float]]:
        """The due measures of step `step` on its batch (x, y), whose per-member loss [P] the
        forward pass gave and whose gradients are in the parameters' .grad; {key: P floats}."""
        named = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        params = dict(named)
        grads = {name: p.grad for name, p in named}

        def next_params() -> dict[str, torch.Tensor]:
            values = self.optimizer.next_values(alive)
            return {name: v for (name, _), v in zip(named, values, strict=True)}

        out: dict[str, list[float]] = {}
        with replay.replaying(x, y, self.criterion) as loss_fn:
            ctx = MeasureContext(loss_fn=loss_fn, params=params, grads=grads,
                                 loss=loss.detach(), lr=self.optimizer.lr,
                                 next_params=next_params, layers=self.layers)
            for name in self.due(step):
                for key, values in MEASURES[name].run(ctx, self.knobs[name]).items():
                    out[key] = values.tolist()
        return out
