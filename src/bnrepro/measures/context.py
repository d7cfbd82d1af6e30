"""What the training loop hands a measure at a measured step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from bnrepro.measures.ics import LayerParams
from bnrepro.measures.replay import LossFn


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
