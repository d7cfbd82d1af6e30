"""The fully-connected net of Fig. 1, with a leading population dimension (models.layers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from bnrepro.models.layers import (
    ACTIVATIONS,
    PopulationDropout,
    PopulationLinear,
    check_norm_and_activation,
)
from bnrepro.norms import make_norm, norm_spec
from bnrepro.seeding import generator


class MLP(nn.Module):
    """Fully-connected net: hidden layers x -> [norm] -> activation -> [dropout], then 10-way
    linear. `norm` names a layer of the registry (bnrepro.norms), built with the knobs of
    `norm_cfg` (the model config node; None: the layers' defaults).

    When the norm cancels a bias (BN: its mean subtraction does, and beta takes the bias's
    role, paper Sec. 3.2) the affine bias is dropped. Weights start as N(0, init_std^2),
    "small random Gaussian".
    """

    def __init__(self, seeds: Sequence[int], in_features: int, hidden: Sequence[int],
                 num_classes: int = 10, norm: str = "none", activation: str = "sigmoid",
                 dropout: Sequence[float] | float = 0.0, init_std: float = 0.1,
                 norm_cfg: Mapping | None = None):
        super().__init__()
        check_norm_and_activation(norm, activation)
        P = len(seeds)
        self.activation = ACTIVATIONS[activation]
        widths = [in_features, *hidden]
        self.hidden = nn.ModuleList(
            PopulationLinear(P, a, b, bias=not norm_spec(norm).cancels_bias)
            for a, b in zip(widths[:-1], widths[1:], strict=True))
        noise = [generator(s, "noise") for s in seeds]  # read by noisy norms only
        self.norms = nn.ModuleList(make_norm(norm, P, w, False, norm_cfg, noise) for w in hidden)
        probabilities = torch.as_tensor(dropout, dtype=torch.float).expand(P)
        self.dropout = PopulationDropout(probabilities, [generator(s, "dropout") for s in seeds])
        self.head = PopulationLinear(P, widths[-1], num_classes, bias=True)
        # Floats one example produces at the widest layer, over all members (sizes eval chunks).
        self.widest_activation = P * max(widths[1:])
        with torch.no_grad():  # each member's weights from its own stream, layer by layer
            for k, seed in enumerate(seeds):
                g = generator(seed, "init")
                for layer in [*self.hidden, self.head]:
                    layer.weight[k] = torch.randn(layer.weight.shape[1:], generator=g) * init_std

    def weight_layers(self) -> list[list[nn.Module]]:
        """The layers from the input up, each as [its weight module, the modules after it
        with parameters of their own (the norm)]: what measures.ics calls layer 1, 2, ..."""
        return [*([linear, norm] for linear, norm in zip(self.hidden, self.norms, strict=True)),
                [self.head]]

    def forward(self, x: torch.Tensor, preactivations: list | None = None,
                shared: bool = False) -> torch.Tensor:
        """x [P, B, ...] (or [B, ...] fed to every member when `shared`) -> logits [P, B, C].

        Appends each hidden layer's input to the nonlinearity to `preactivations` when given.
        """
        h = x.flatten(1) if shared else x.flatten(2)
        for linear, norm in zip(self.hidden, self.norms, strict=True):
            h = norm(linear(h))
            if preactivations is not None:
                preactivations.append(h)
            h = self.dropout(self.activation(h))
        return self.head(h)
