"""trainer.compile: the model's training forward under torch.compile, or the eager model.

torch.compile compiles lazily, frame by frame, as a call reaches them, and its backward graph
at the first backward pass: a failure (no C++ compiler for inductor, an op it cannot lower)
would surface in the middle of a training step, after part of it ran (BN's moving averages
updated, random streams drawn). So the compiled forward is tried once before training, forward
and backward on a batch of the training shape, and the model's state (parameters, buffers,
random streams, gradients) is put back as it was; the compiled code stays cached for the
real steps. Where the trial fails the run says so in one line and trains eagerly: never a
silent fallback, never a half-run step.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn

from bnrepro.models import step_streams

Forward = Callable[[torch.Tensor], torch.Tensor]


def compiled_forward(model: nn.Module, example: torch.Tensor) -> Forward:
    """`model`'s training forward: torch.compile(model) where a trial forward and backward on
    `example` (a training batch's shape) compiles and runs; else the model itself, with one
    line on stderr saying why. The model's state is as it was either way."""
    compiled = torch.compile(model)
    try:
        with preserved_state(model):
            compiled(example).float().sum().backward()
    except Exception as err:  # noqa: BLE001 (any compile failure means: train eagerly)
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}" \
            if str(err).strip() else type(err).__name__
        print(f"trainer.compile=true: torch.compile failed ({reason}); training without it "
              "(the floats of trainer.compile=false)", file=sys.stderr)
        return model
    return compiled


class preserved_state:
    """Within the block, anything may change `model`'s parameters, buffers, gradients and
    the random streams of its training forward (models.step_streams); on leaving it (also on
    an error) they are what they were."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> None:
        self.tensors = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.grads = [None if p.grad is None else p.grad.clone()
                      for p in self.model.parameters()]
        self.streams = [[g.get_state() for g in gens] for gens in step_streams(self.model)]

    def __exit__(self, *exc) -> None:
        with torch.no_grad():
            for key, value in self.model.state_dict().items():
                value.copy_(self.tensors[key])
        for p, grad in zip(self.model.parameters(), self.grads, strict=True):
            p.grad = grad
        for gens, states in zip(step_streams(self.model), self.streams, strict=True):
            for g, state in zip(gens, states, strict=True):
                g.set_state(state)
