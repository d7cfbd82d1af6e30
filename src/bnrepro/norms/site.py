"""What a norm builder is given: where the layer sits and which knobs it may read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Site:
    population_size: int
    num_features: int  # features of a fully-connected layer, or channels of a conv layer
    spatial: bool  # inputs [P, B, C, H, W] (conv) rather than [P, B, F] (fully connected)
    cfg: Mapping = field(default_factory=dict)  # the model config node (empty: all defaults)
    # The members' "noise" streams, one list shared by all layers of a model, so a member's
    # draws follow one sequence whatever the population around it.
    generators: Sequence[torch.Generator] = ()

    def knobs(self, **params: str) -> dict[str, Any]:
        """Keyword arguments from dotted config keys, e.g. knobs(eps="bn_eps",
        r_max="brn.r_max"); a key the config lacks is left out, so the layer's own default
        applies (models built in tests or notebooks pass no config)."""
        found = {}
        for param, dotted in params.items():
            node: Any = self.cfg
            for part in dotted.split("."):
                node = node.get(part) if isinstance(node, Mapping) else None
            if node is not None:
                found[param] = node
        return found
