"""Per-example norms: Layer Norm (Ba et al. 2016), Group Norm (Wu & He 2018) and Instance Norm
(Ulyanov et al. 2016) as one layer, since each is Group Norm with some number of groups.

Inputs [P, B, F] or [P, B, C, H, W]. Each example is normalised over the features of a group
(and, for maps, every position) by its own statistics, so no batch statistics exist: training
and inference compute the same thing and bn_mode does not apply. gamma/beta are per
feature/channel and member, [P, C], as for BN.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from bnrepro.norms.site import Site


class GroupNorm(nn.Module):
    # Default groups are ours: Wu & He's 32 exceed our narrowest layers (16 channels).
    def __init__(self, population_size: int, num_features: int, groups: int = 4,
                 eps: float = 1e-5):
        super().__init__()
        if num_features % groups:
            raise ValueError(f"model.norm_groups={groups} must divide the layer width "
                             f"{num_features}")
        shape = (population_size, num_features)
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(shape))  # gamma
        self.bias = nn.Parameter(torch.zeros(shape))  # beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Fold the population into channels, [P, B, C, ...] -> [B, P*C, ...], and ask for P
        # times the groups: torch's groups are runs of consecutive channels, so none straddles
        # two members.
        P, B = x.shape[:2]
        flat = x.transpose(0, 1).reshape(B, -1, *x.shape[3:])
        y = F.group_norm(flat, P * self.groups, self.weight.view(-1), self.bias.view(-1),
                         self.eps)
        return y.view(B, P, *x.shape[2:]).transpose(0, 1)

    def member_norms(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """Per member, this layer on that member's input alone ([B, C, ...]): the floats its
        slice of `forward` gets (torch normalises each example's group on its own)."""
        return [partial(F.group_norm, num_groups=self.groups, weight=w, bias=b, eps=self.eps)
                for w, b in zip(self.weight.unbind(0), self.bias.unbind(0), strict=True)]


def build_layer_norm(site: Site) -> GroupNorm:
    """One group: each example over all its features (and positions)."""
    return GroupNorm(site.population_size, site.num_features, 1, **site.knobs(eps="bn_eps"))


def build_group_norm(site: Site) -> GroupNorm:
    """`model.norm_groups` groups of consecutive features (channels for maps)."""
    return GroupNorm(site.population_size, site.num_features,
                     **site.knobs(groups="norm_groups", eps="bn_eps"))


def build_instance_norm(site: Site) -> GroupNorm:
    """A group per channel: each example and channel over positions (conv only)."""
    return GroupNorm(site.population_size, site.num_features, site.num_features,
                     **site.knobs(eps="bn_eps"))
