"""Per-member vector arithmetic over sets of tensors with a leading member dimension P."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def member_sq_norm(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """[P] float64: per member, the squared l2 norm of all `tensors` taken together as one
    vector (each tensor [P, ...]). Accumulated in float64 (without a float64 copy of the
    tensors), so a norm over millions of weights neither overflows nor loses digits."""
    total = None
    for t in tensors:
        part = torch.linalg.vector_norm(t.detach().flatten(1), dim=1, dtype=torch.float64)
        total = part.square() if total is None else total + part.square()
    if total is None:
        raise ValueError("no tensors to take a norm of")
    return total


def member_norm(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """[P] float64: per member, the l2 norm of `tensors` taken together as one vector."""
    return member_sq_norm(tensors).sqrt()


def _per_member(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.dtype).view(-1, *[1] * (like.dim() - 1))


def member_cosine(a: Iterable[torch.Tensor], b: Iterable[torch.Tensor]) -> torch.Tensor:
    """[P] float64: per member, the cosine of the angle between vectors a and b (each given
    as tensors [P, ...] in the same order), as 1 - ||a/|a| - b/|b|||^2 / 2. This equals
    <a, b> / (|a| |b|), but is exactly 1 when a and b are the same floats and keeps its
    digits near 1, where the quotient rounds. NaN where a or b is zero."""
    a, b = [t.detach() for t in a], [t.detach() for t in b]
    norm_a, norm_b = member_norm(a), member_norm(b)
    diffs = [x / _per_member(norm_a, x) - y / _per_member(norm_b, y)
             for x, y in zip(a, b, strict=True)]
    return (1 - member_sq_norm(diffs) / 2).clamp(-1, 1)
