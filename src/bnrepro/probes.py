"""What the network's hidden units see: quantiles of the inputs to each nonlinearity.

Fig. 1(b, c) of the paper follows one "typical" unit of the last hidden layer and plots the
15th, 50th and 85th percentiles of its input over a fixed set of examples, as training goes.
We record that for the tracked unit of every hidden layer, and the same quantiles pooled over
all units of the layer, plus their mean and standard deviation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def quantile_key(q: float) -> str:
    return f"q{round(q * 100):02d}"


def sigmoid_input_quantiles(preactivations: Sequence[torch.Tensor], unit: int,
                            quantiles: Sequence[float]) -> list[dict[str, float]]:
    """preactivations: per hidden layer, [P, N, F, ...] inputs to the nonlinearity.

    Returns, per member, {"act/h{i}/q15": ..., "act/h{i}/all_q15": ..., "act/h{i}/mean": ...}
    with i counted from 1. For conv layers a unit is a feature map (all its positions count).
    """
    q = torch.tensor(list(quantiles), dtype=torch.float32)
    names = [quantile_key(x) for x in quantiles]
    P = preactivations[0].shape[0]
    metrics: list[dict[str, float]] = [{} for _ in range(P)]
    for i, h in enumerate(preactivations, start=1):
        h = h.detach().float().cpu()
        if not 0 <= unit < h.shape[2]:
            raise ValueError(f"probe.unit={unit} but hidden layer {i} has {h.shape[2]} units")
        tracked = h[:, :, unit].reshape(P, -1)  # [P, N * positions]
        pooled = h.reshape(P, -1)
        values = {
            "": torch.quantile(tracked, q.to(h.dtype), dim=1),  # [Q, P]
            "all_": torch.quantile(pooled, q.to(h.dtype), dim=1),
        }
        mean, std = pooled.mean(dim=1), pooled.std(dim=1)
        for k in range(P):
            for prefix, vals in values.items():
                for name, v in zip(names, vals[:, k].tolist(), strict=True):
                    metrics[k][f"act/h{i}/{prefix}{name}"] = v
            metrics[k][f"act/h{i}/mean"] = mean[k].item()
            metrics[k][f"act/h{i}/std"] = std[k].item()
    return metrics
