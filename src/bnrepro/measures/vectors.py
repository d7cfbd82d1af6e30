"""Per-member vector arithmetic over sets of tensors with a leading member dimension P."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def member_sq_norm(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """[P] float64: per member, the squared l2 norm of all `tensors` taken together as one
    vector (each tensor [P, ...]). Summed in float64 so that a norm over millions of weights
    does not lose the small differences the measures are about."""
    total = None
    for t in tensors:
        part = t.detach().flatten(1).double().square().sum(1)
        total = part if total is None else total + part
    if total is None:
        raise ValueError("no tensors to take a norm of")
    return total


def member_norm(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """[P] float64: per member, the l2 norm of `tensors` taken together as one vector."""
    return member_sq_norm(tensors).sqrt()


def member_cosine(a: Iterable[torch.Tensor], b: Iterable[torch.Tensor]) -> torch.Tensor:
    """[P] float64: per member, the cosine of the angle between vectors a and b (each given
    as tensors [P, ...] in the same order), as 1 - ||a/|a| - b/|b|||^2 / 2. This equals
    <a, b> / (|a| |b|), but is exactly 1 when a and b are the same floats and keeps its
    digits near 1, where the quotient rounds. NaN where a or b is zero."""
    a, b = list(a), list(b)
    norm_a, norm_b = member_norm(a), member_norm(b)
    diffs = []
    for x, y in zip(a, b, strict=True):
        x, y = x.detach().flatten(1).double(), y.detach().flatten(1).double()
        diffs.append(x / norm_a[:, None] - y / norm_b[:, None])
    return (1 - member_sq_norm(diffs) / 2).clamp(-1, 1)
