"""Santurkar et al.'s deep linear network (DLN, App. A.1), with a leading population dimension.

k square layers of d x d weights and no nonlinearity: the prediction is W_k ... W_1 x. "Standard
+ BatchNorm" puts a norm after each of the first k - 1 layers; the last layer's output is the
prediction, which must reach the targets' scale, so it has none (the paper does not say where
its BN layers sit; this is our choice). No biases: the targets A x have none. Weights start
from Glorot's uniform initialisation, U(-a, a) with a = sqrt(6 / (fan_in + fan_out)) (the paper:
"standard Glorot initialization"), per member from its own seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from bnrepro.models.layers import PopulationLinear
from bnrepro.norms import make_norm
from bnrepro.seeding import generator


class DeepLinearNet(nn.Module):
    def __init__(self, seeds: Sequence[int], dim: int = 10, depth: int = 25, norm: str = "none",
                 norm_cfg: Mapping | None = None):
        super().__init__()
        if depth < 1 or dim < 1:
            raise ValueError(f"a deep linear net needs depth >= 1 and dim >= 1, got {depth}, {dim}")
        P = len(seeds)
        self.layers = nn.ModuleList(PopulationLinear(P, dim, dim, bias=False)
                                    for _ in range(depth))
        noise = [generator(s, "noise") for s in seeds]  # read by noisy norms only
        self.norms = nn.ModuleList(make_norm(norm, P, dim, False, norm_cfg, noise)
                                   for _ in range(depth - 1))
        bound = math.sqrt(6 / (dim + dim))
        with torch.no_grad():
            for k, seed in enumerate(seeds):
                g = generator(seed, "init")
                for layer in self.layers:
                    layer.weight[k] = (torch.rand(dim, dim, generator=g) * 2 - 1) * bound

    def weight_layers(self) -> list[list[nn.Module]]:
        """Each layer's modules, its weight first (what the measures move layer by layer)."""
        norms = [[norm] for norm in self.norms] + [[]]
        return [[layer, *norm] for layer, norm in zip(self.layers, norms, strict=True)]

    def forward(self, x: torch.Tensor, preactivations: list | None = None) -> torch.Tensor:
        """x [P, N, d], or [N, d] fed to every member -> predictions [P, N, d]. Appends each
        hidden layer's output (after its norm) to `preactivations` when given."""
        h = x
        for layer, norm in zip(self.layers[:-1], self.norms, strict=True):
            h = norm(layer(h))
            if preactivations is not None:
                preactivations.append(h)
        return self.layers[-1](h)


def squared_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||W_k ... W_1 x - A x||^2 summed over examples and coordinates, per member: [P].

    A sum, not a mean: the paper writes the loss as ||.||_2^2 of the whole batch, and its
    figures' loss values (10^4 and above for 1000 examples of 10 coordinates) fit a sum."""
    return (prediction - target).square().sum(dim=(-2, -1))
