"""Gradient internal covariate shift (Santurkar et al. 2018, Sec. 2.2, Definition 2.1).

For layer i at step t, on the step's batch (x_t, y_t):
    G_i  = grad_{W_i} L(W_1^t, ..., W_k^t)                       the gradient step t applies;
    G'_i = grad_{W_i} L(W_1^{t+1}, ..., W_{i-1}^{t+1}, W_i^t, ..., W_k^t)
the same gradient after the layers below i (only those) have taken step t's update. ICS is
||G_i - G'_i||_2, logged with cos(G_i, G'_i) (their Fig. 3: "ideally 0" and "ideally 1").

Choices (Def. 2.1 leaves them open):
- W_i, the compared gradient, is layer i's weight matrix or kernel alone: neither its bias nor
  its norm's gamma/beta (Fig. 3 plots "the gradients" of "a layer"; the weight is what the
  layer's input multiplies, so it is where a changed input shows).
- "Layers 1..i-1 take this step's update": every parameter of those layers moves (weight,
  bias, the norm's gamma/beta), by the optimizer's actual update of step t (PopulationSGD:
  the member's rate at t, momentum, weight decay). Layer i and above keep W^t.
- L is the training loss of the step: the same batch, dropout masks and norm noise as the
  step's forward pass (replay.py), the data loss without the weight-decay term.
- Layer 1 has nothing below it: G'_1 is G_1 recomputed at unchanged weights, so its ICS is
  exactly 0 and its cosine exactly 1 (checked by the tests, not imposed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from bnrepro.measures.context import LayerParams, MeasureContext
from bnrepro.measures.replay import LossFn
from bnrepro.measures.vectors import member_cosine, member_norm


def gradient_ics(loss_fn: LossFn, params: Mapping[str, torch.Tensor],
                 grads: Mapping[str, torch.Tensor], updated: Mapping[str, torch.Tensor],
                 layers: Sequence[LayerParams], measured: Iterable[int]
                 ) -> dict[int, dict[str, torch.Tensor]]:
    """Definition 2.1 for each 1-based layer index in `measured`.

    loss_fn(weights) -> per-member loss [P] on the step's batch (names it is not given keep
    their current values); params: the weights x_t by name, [P, ...] each; grads: G, the
    gradient of the loss at x_t, by name (at least the measured layers' weights); updated:
    the weights after this step's update, by name (at least every parameter of the layers
    below the highest measured one); layers: the layer structure, input first.

    Returns {i: {"l2": ||G_i - G'_i|| [P], "cos": cos(G_i, G'_i) [P]}} (float64, per member).
    One forward and backward pass per measured layer, down to that layer only.
    """
    fixed = {name: t.detach() for name, t in params.items()}
    results = {}
    for i in sorted(set(measured)):
        if not 1 <= i <= len(layers):
            raise ValueError(f"layer {i} does not exist: layers are 1..{len(layers)}")
        below = {name: updated[name].detach() for layer in layers[:i - 1]
                 for name in layer.params}
        name = layers[i - 1].weight
        weight = fixed[name].clone().requires_grad_()
        loss = loss_fn({**fixed, **below, name: weight})
        (g_shifted,) = torch.autograd.grad(loss.sum(), [weight])
        g = grads[name]
        results[i] = {"l2": member_norm([g - g_shifted]),
                      "cos": member_cosine([g], [g_shifted])}
    return results


def run_ics(ctx: MeasureContext, knobs: Mapping) -> dict[str, torch.Tensor]:
    """The trainer's hook: `ics/h{i}/l2` and `ics/h{i}/cos` for the layers of knobs.layers
    (1-based, input first, head last; null = all), [P] each."""
    layers = knobs.get("layers")
    measured = range(1, len(ctx.layers) + 1) if layers is None else layers
    results = gradient_ics(ctx.loss_fn, ctx.params, ctx.grads, ctx.next_params(), ctx.layers,
                           measured)
    return {f"ics/h{i}/{key}": value for i, result in results.items()
            for key, value in result.items()}


def ics_problems(knobs: Mapping, num_layers: int | None) -> list[str]:
    """Bad values of measures.ics beyond its schedule: `layers` must name existing layers."""
    layers = knobs.get("layers")
    if layers is None:
        return []
    ok = not isinstance(layers, str) and hasattr(layers, "__iter__") and len(list(layers)) > 0 \
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 1
                and (num_layers is None or i <= num_layers) for i in layers)
    if ok:
        return []
    span = f"1..{num_layers}" if num_layers is not None else ">= 1"
    return [f"measures.ics.layers={list(layers) if hasattr(layers, '__iter__') else layers!r}"
            f" is not allowed: must be null (all) or a non-empty list of weight layers in "
            f"{span} (input first, head last)"]
