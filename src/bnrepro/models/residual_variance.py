"""De & Smith's (2020) measure of how much a residual block changes its input.

A residual block computes x_{l+1} = s_l(x_l) + alpha_l * f_l(x_l): the skip path s_l (the
identity, or at a stage's first block a strided 1x1 conv) plus the scaled residual branch.
De & Smith (arXiv 2002.10444, Sec. 2, Fig. 2) compare the variance of the two terms at
initialisation: with batch normalisation the branch's variance stays about 1 while the skip's
grows by about 1 per block, so their ratio falls like 1/l ("batch normalization downscales
the residual branch relative to the skip connection, by a normalizing factor on the order of
the square root of the network depth"); without normalisation both grow together.

`ResidualMoments` receives, per block and per chunk of examples, the two terms the block adds
(skip = s_l(x_l), branch = alpha_l * f_l(x_l), each [P, B, C, H, W]) and keeps float64 sums of
their values and squares per member. `result` gives per member and block i (from 1):
  resid/b{i}/var_skip   = variance of all values of s_l(x_l) over the examples, channels and
                          positions (one pooled population variance, E[v^2] - E[v]^2);
  resid/b{i}/var_branch = the same for alpha_l * f_l(x_l);
  resid/b{i}/var_ratio  = var_branch / var_skip;
and the per-channel form (our reading of De & Smith's Fig. 2, whose text we do not hold: the
variance of each channel over the examples and positions, averaged over the channels; it
leaves out the spread of the channel means, which the pooled form counts):
  resid/b{i}/var_skip_channel, var_branch_channel, var_ratio_channel (their ratio).
"""

from __future__ import annotations

import torch

PREFIX = "resid"


class ResidualMoments:
    """Pooled first and second moments of each block's skip and branch terms, per member."""

    def __init__(self) -> None:
        self._block = 0  # index of the next block within the current forward pass
        self.sums: list[torch.Tensor] = []  # per block [2 (skip, branch), 3 (n, sum, sum sq), P]
        # per block [2 (skip, branch), 3 (n, sum, sum sq), P, C]: per channel
        self.channel_sums: list[torch.Tensor] = []

    def start_pass(self) -> None:
        """Call before each forward pass: the model reports its blocks in order, from 0."""
        self._block = 0

    @torch.no_grad()
    def add(self, skip: torch.Tensor, branch: torch.Tensor) -> None:
        """One block's two terms for one chunk of examples, [P, B, C, H, W] each."""
        if self._block == len(self.sums):
            # On the activations' device: no host copy (and wait) per block and chunk.
            self.sums.append(torch.zeros(2, 3, skip.shape[0], dtype=torch.float64,
                                         device=skip.device))
            self.channel_sums.append(torch.zeros(2, 3, *skip.shape[:1], skip.shape[2],
                                                 dtype=torch.float64, device=skip.device))
        self.sums[self._block] += torch.stack([_moments(t.reshape(t.shape[0], -1))
                                               for t in (skip, branch)])
        self.channel_sums[self._block] += torch.stack([
            _moments(t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1))
            for t in (skip, branch)])
        self._block += 1

    def variances(self) -> torch.Tensor:
        """[blocks, 2 (skip, branch), P] pooled population variances."""
        return _variance(torch.stack(self.sums), 2)  # [blocks, 2, 3, P]

    def channel_variances(self) -> torch.Tensor:
        """[blocks, 2 (skip, branch), P]: each channel's population variance over the examples
        and positions, averaged over the channels (blocks differ in width: one at a time)."""
        return torch.stack([_variance(sums, 1).mean(-1) for sums in self.channel_sums])

    def result(self) -> list[dict[str, float]]:
        """Per member: {"resid/b{i}/var_skip", ".../var_branch", ".../var_ratio"}."""
        if not self.sums:
            return []
        # one copy to the host
        both = torch.stack([self.variances(), self.channel_variances()]).tolist()
        rows: list[dict[str, float]] = [{} for _ in range(len(both[0][0][0]))]
        for var, suffix in zip(both, ("", "_channel"), strict=True):
            for i, (skip, branch) in enumerate(var):
                for k, row in enumerate(rows):
                    key = f"{PREFIX}/b{i + 1}/"
                    ratio = branch[k] / skip[k] if skip[k] > 0 else float("nan")
                    row |= {f"{key}var_skip{suffix}": skip[k],
                            f"{key}var_branch{suffix}": branch[k],
                            f"{key}var_ratio{suffix}": ratio}
        return rows


def _moments(flat: torch.Tensor) -> torch.Tensor:
    """[3 (n, sum, sum of squares), ...] over the last dimension of `flat`, in float64."""
    flat = flat.detach().double()
    count = torch.full(flat.shape[:-1], float(flat.shape[-1]), dtype=torch.float64,
                       device=flat.device)
    return torch.stack([count, flat.sum(-1), flat.square().sum(-1)])


def _variance(sums: torch.Tensor, dim: int) -> torch.Tensor:
    """Population variances from moments (n, sum, sum of squares) along `dim` of `sums`."""
    n, total, squares = sums.unbind(dim)
    mean = total / n
    return (squares / n - mean.square()).clamp_min(0)
