"""Building blocks with a leading population dimension: P independent models evaluated as one.

Weights carry the member dimension first ([P, in, out] for linear layers, [P, out, in, k, k]
for convolutions) and are applied with batched products, so P small networks cost about as
much Python overhead as one. P = 1 is an ordinary single model.

Conv activations are [P, B, C, H, W] at every module boundary, but are laid out in memory as
[B, P*C, H, W]: the population is folded into channels, so each conv, pool and BN layer is one
torch call on a view, with no copies between layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bnrepro.norms import norm_spec

ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu}


def check_norm_and_activation(norm: str, activation: str) -> None:
    norm_spec(norm)  # raises, naming model.norm and the registry's names
    if activation not in ACTIVATIONS:
        raise ValueError(f"model.activation must be one of {sorted(ACTIVATIONS)}, got "
                         f"{activation!r}")


class PopulationLinear(nn.Module):
    """y = x W + b per member: x [P, B, in] -> [P, B, out]."""

    def __init__(self, population_size: int, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(population_size, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(population_size, 1, out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [P, B, in], or [B, in] shared by all members (one GEMM, no P copies of x)."""
        if x.dim() == 2:
            P, n_in, n_out = self.weight.shape
            y = (x @ self.weight.transpose(0, 1).reshape(n_in, P * n_out)).view(-1, P, n_out)
            y = y.transpose(0, 1)
            return y if self.bias is None else y + self.bias
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias, x, self.weight)


class PopulationDropout(nn.Module):
    """Inverted dropout with a probability and a random stream per member."""

    def __init__(self, probabilities: torch.Tensor, generators: Sequence[torch.Generator]):
        super().__init__()
        self.register_buffer("keep", 1 - probabilities.float())
        self.generators = list(generators)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or bool((self.keep == 1).all()):
            return x
        # Drawn on the generators' device (CPU), so masks are the same on every device.
        noise = torch.stack([torch.rand(x.shape[1:], generator=g) for g in self.generators])
        noise = noise.to(x.device)
        keep = self.keep.view(-1, *[1] * (x.dim() - 1))
        return x * (noise < keep) / keep


def fold(x: torch.Tensor) -> torch.Tensor:
    """[P, B, C, H, W] -> [B, P*C, H, W] (a view when x came from `unfold`)."""
    return x.transpose(0, 1).reshape(x.shape[1], -1, *x.shape[3:])


def unfold(y: torch.Tensor, population_size: int) -> torch.Tensor:
    """[B, P*C, H, W] -> [P, B, C, H, W], a view."""
    B, PC = y.shape[:2]
    return y.view(B, population_size, PC // population_size, *y.shape[2:]).transpose(0, 1)


class PopulationConv2d(nn.Module):
    """Per-member 2-D convolution: x [P, B, C, H, W] -> [P, B, out, H', W'] (H' = H with the
    defaults; about H / stride with a stride)."""

    def __init__(self, population_size: int, in_channels: int, out_channels: int,
                 kernel_size: int = 3, padding: int = 1, *, bias: bool, stride: int = 1):
        super().__init__()
        shape = (population_size, out_channels, in_channels, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.zeros(population_size, out_channels)) if bias else None
        self.padding, self.stride = padding, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [P, B, C, H, W], or [B, C, H, W] shared by all members."""
        P, n_out, n_in, k, _ = self.weight.shape
        weight = self.weight.reshape(P * n_out, n_in, k, k)
        bias = None if self.bias is None else self.bias.reshape(-1)
        if x.dim() == 4:
            # Shared input: one ungrouped conv whose P*out filters all read the same x,
            # so x is never copied P times.
            return unfold(F.conv2d(x, weight, bias, self.stride, self.padding), P)
        # Grouped conv with groups=P: group p sees only member p's channels and filters.
        return unfold(F.conv2d(fold(x), weight, bias, self.stride, self.padding, groups=P), P)
