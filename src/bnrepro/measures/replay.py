"""A training step's loss as a function of the weights, replayed without touching anything.

The measures evaluate the loss of step t at weights other than the current ones. To be the
loss the step trained on, such a forward pass must see what the step's forward pass saw:
its batch, its dropout masks and norm noise (drawn from each member's own generators), and
its norm statistics (Batch Renorm's r and d read the moving averages as they were before the
step). And it must leave no trace, or a run with measures would no longer train as one
without: no generator advanced, no moving average or Alg. 2 statistic updated.

`StepReplay` is captured right before the step's own forward pass (generator states and every
buffer); its loss function restores the captured generator states before each forward pass,
so every replay draws the step's own masks and noise, and runs on fresh copies of the captured
buffers (torch.func.functional_call), so the model's own buffers are never written. On leaving
`replaying`, the generators are put back where the step's forward pass left them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call

from bnrepro.models import step_streams

# (logits [P, B, C], labels [P, B]) -> per-member loss [P]: the trainer's own criterion.
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# weights by name (any subset of the model's parameters) -> per-member loss [P]
LossFn = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]


def forward_generators(model: nn.Module) -> list[torch.Generator]:
    """Every random generator a training forward pass of `model` draws from (dropout masks,
    norm noise; models.step_streams), each once."""
    return [g for generators in step_streams(model) for g in generators]


class StepReplay:
    """The state a training step's forward pass starts from; create it right before that pass."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.generators = forward_generators(model)
        self.rng_before = [g.get_state() for g in self.generators]
        self.buffers = {name: b.detach().clone() for name, b in model.named_buffers()}

    @contextmanager
    def replaying(self, x: torch.Tensor, y: torch.Tensor, criterion: Criterion
                  ) -> Iterator[LossFn]:
        """Within: a loss function `loss_fn(weights) -> [P]` that is the step's training loss
        on (x, y) at `weights` (names not given keep the model's current values). Enter after
        the step's own forward pass: on exit, the generators return to where it left them."""
        rng_after = [g.get_state() for g in self.generators]

        def loss_fn(weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
            for g, state in zip(self.generators, self.rng_before, strict=True):
                g.set_state(state)
            buffers = {name: b.clone() for name, b in self.buffers.items()}
            logits = functional_call(self.model, {**buffers, **weights}, (x,))
            return criterion(logits, y)

        try:
            yield loss_fn
        finally:
            for g, state in zip(self.generators, rng_after, strict=True):
                g.set_state(state)
