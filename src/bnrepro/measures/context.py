"""What the training loop hands a measure at a measured step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bnrepro.measures.replay import LossFn


@dataclass(frozen=True)
class LayerParams:
    """One weight layer by parameter names: `weight`, whose gradient ICS compares, and
    `params`, everything that moves when the layer is below a measured one (weight first)."""
    weight: str
    params: tuple[str, ...]


def model_layers(model: nn.Module) -> list[LayerParams]:
    """The weight layers of a bnrepro model (its weight_layers(): input first, head last)."""
    names = {id(p): name for name, p in model.named_parameters() if p.requires_grad}
    return [LayerParams(names[id(modules[0].weight)],
                        tuple(names[id(p)] for m in modules for p in m.parameters()
                              if id(p) in names))
            for modules in model.weight_layers()]


@dataclass(frozen=True)
class MeasureContext:
    """Step t of training, between its backward pass and its update.

    Every tensor has the leading member dimension P. Names are the model's parameter names
    (model.named_parameters()), trainable ones only.
    """
    loss_fn: LossFn  # weights -> the step's training loss [P] there (replay.StepReplay)
    params: dict[str, torch.Tensor]  # the weights x_t (the model's own parameters)
    grads: dict[str, torch.Tensor]  # the gradient of the step's loss at x_t, per parameter
    loss: torch.Tensor  # [P] the step's loss at x_t
    lr: torch.Tensor  # [P] the rate of step t (after the schedule's decay)
    next_params: Callable[[], dict[str, torch.Tensor]]  # x_{t+1}: the optimizer's update
    layers: list[LayerParams]  # the weight layers, input first
