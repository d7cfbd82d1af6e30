"""What the network's hidden units see: quantiles of the inputs to each nonlinearity.

Fig. 1(b, c) of the paper follows one "typical" unit of the last hidden layer and plots the
15th, 50th and 85th percentiles of its input over a fixed set of examples, as training goes.
We record that for the tracked unit of every hidden layer, and the same quantiles pooled over
all units of the layer, plus their mean and standard deviation.

Probes run chunk by chunk (a chunk's activations of a wide CNN population do not all fit in
memory at once): the tracked unit's values are kept whole; the pooled values of all units are
kept whole up to `max_pooled` per member and layer, else as an evenly strided sample of them
(mean and std always use every value). Everything stays on the device the activations are on
(the quantiles too: on a GPU, a copy of every value to the host and a one-thread sort there
cost more than the forward passes); only the results are read back, one copy per tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

QUANTILE_LIMIT = 2**24  # torch.quantile refuses larger inputs


def quantile_key(q: float) -> str:
    return f"q{round(q * 100):02d}"


def _quantiles(values: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per row of values [P, M]: the quantiles q [Q] -> [Q, P]; in slices when too large."""
    if values.numel() <= QUANTILE_LIMIT:
        return torch.quantile(values, q, dim=1)
    return torch.stack([torch.quantile(row, q) for row in values], dim=1)


class ProbeCollector:
    """Accumulates per-layer probe values over chunks of one probe set; `result` gives, per
    member, {"<prefix>/h{i}/q15": ..., "<prefix>/h{i}/all_q15": ..., "<prefix>/h{i}/mean": ...}
    with hidden layers i counted from 1. For conv layers a unit is a feature map."""

    def __init__(self, unit: int, quantiles: Sequence[float], num_examples: int,
                 prefix: str = "act", max_pooled: int = 2**20):
        self.unit, self.prefix = unit, prefix
        self.quantiles = list(quantiles)
        self.num_examples, self.max_pooled = num_examples, max_pooled
        self.tracked: list[list[torch.Tensor]] = []
        self.pooled: list[list[torch.Tensor]] = []
        self.moments: list[torch.Tensor] = []  # per layer [3, P]: count, sum, sum of squares

    def add(self, preactivations: Sequence[torch.Tensor]) -> None:
        """One chunk of examples: per hidden layer, [P, n, F, ...] inputs to the nonlinearity."""
        if not self.tracked:
            n = len(preactivations)
            self.tracked, self.pooled = [[] for _ in range(n)], [[] for _ in range(n)]
            self.moments = [torch.zeros(3, preactivations[0].shape[0], dtype=torch.float64,
                                        device=preactivations[0].device) for _ in range(n)]
        for i, h in enumerate(preactivations):
            h = h.detach().float()
            if not 0 <= self.unit < h.shape[2]:
                raise ValueError(f"probe.unit={self.unit} but hidden layer {i + 1} has "
                                 f"{h.shape[2]} units")
            P = h.shape[0]
            self.tracked[i].append(h[:, :, self.unit].reshape(P, -1))
            flat = h.reshape(P, -1)
            per_example = flat.shape[1] // h.shape[1]
            stride = max(1, math.ceil(per_example * self.num_examples / self.max_pooled))
            self.pooled[i].append(flat[:, ::stride])
            wide = flat.double()
            self.moments[i] += torch.stack([torch.full((P,), float(flat.shape[1]),
                                                       dtype=torch.float64, device=flat.device),
                                            wide.sum(1), wide.square().sum(1)])

    def result(self) -> list[dict[str, float]]:
        q = torch.tensor(self.quantiles, dtype=torch.float32, device=self.moments[0].device)
        names = [quantile_key(x) for x in self.quantiles]
        P = self.moments[0].shape[1]
        metrics: list[dict[str, float]] = [{} for _ in range(P)]
        for i in range(len(self.tracked)):
            layer = f"{self.prefix}/h{i + 1}/"
            values = {"": _quantiles(torch.cat(self.tracked[i], 1), q),
                      "all_": _quantiles(torch.cat(self.pooled[i], 1), q)}
            count, total, squares = self.moments[i]
            mean = total / count
            std = ((squares - count * mean.square()).clamp(min=0) / (count - 1)).sqrt()
            for k in range(P):
                for kind, vals in values.items():
                    for name, v in zip(names, vals[:, k].tolist(), strict=True):
                        metrics[k][f"{layer}{kind}{name}"] = v
                metrics[k][f"{layer}mean"] = mean[k].item()
                metrics[k][f"{layer}std"] = std[k].item()
        return metrics


def sigmoid_input_quantiles(preactivations: Sequence[torch.Tensor], unit: int,
                            quantiles: Sequence[float], prefix: str = "act"
                            ) -> list[dict[str, float]]:
    """The probes of one whole probe set: per hidden layer, [P, N, F, ...] inputs to the
    nonlinearity -> per member {"act/h{i}/q15": ..., "act/h{i}/all_q15": ..., ...}."""
    collector = ProbeCollector(unit, quantiles, preactivations[0].shape[1], prefix,
                               max_pooled=QUANTILE_LIMIT)
    collector.add(preactivations)
    return collector.result()
