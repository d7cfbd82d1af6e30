"""The mini-batches a modal norm (see batch.ModalNorm) takes its statistics from."""

from __future__ import annotations

import torch

from bnrepro.norms.batch import ModalNorm


def minibatches(layer: ModalNorm, x: torch.Tensor) -> torch.Tensor:
    """x [P, N, C, ...] -> [P, N // m, m, C, S] (S positions per map, 1 for fully connected).

    In train mode the whole input is one mini-batch (m = N), or each group of
    `train_ghost_batch` examples is one (a ghost batch); in batch and collect modes each
    group of `ghost_batch` examples is one, as a training mini-batch of that size would be.
    Statistics are then taken over dims (2, 4): examples and positions (Sec. 3.2).
    """
    P, N, C = x.shape[:3]
    m = (layer.ghost_batch if layer.mode in ("batch", "collect") else layer.train_ghost_batch) \
        or N
    positions = x[0, 0, 0].numel()
    if N % m or m * positions < 2:
        raise ValueError(f"{type(layer).__name__} in mode {layer.mode!r} needs mini-batches of "
                         f"at least 2 values per feature that divide the input, got {N} "
                         f"examples in groups of {m}")
    return x.reshape(P, N // m, m, C, positions)


def per_feature(stat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [P, C] statistic or parameter viewed to broadcast over x [P, B, C, ...]."""
    return stat.view(*stat.shape[:1], 1, stat.shape[1], *[1] * (like.dim() - 3))


def group_mean(stat: torch.Tensor) -> torch.Tensor:
    """A per-group statistic [P, batches, 1, C, 1] -> its mean over the groups [P, C] (the
    moving averages' update; with one group, that group's values exactly)."""
    return stat.mean(dim=1).view(stat.shape[0], stat.shape[3])
