"""Batch Normalization per Ioffe & Szegedy (2015): Alg. 1 in training, Alg. 2 for inference.

Every tensor carries a leading population dimension P (P models trained at once; P = 1 is an
ordinary run). Inputs are [P, B, F] for fully-connected layers or [P, B, C, H, W] for
convolutions, where one feature map is one BN dimension (paper Sec. 3.2). Members never mix:
each has its own gamma, beta and statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

# What a BN layer does on forward:
#   train   - Alg. 1 with mini-batch statistics, and update the moving averages.
#   batch   - mini-batch statistics, nothing updated (the training network N_BN^tr, for probes).
#   collect - Alg. 2 line 10: normalise each group of `ghost_batch` examples by its own
#             statistics and accumulate E[mu_B] and E[sigma_B^2] over those groups.
#   eval    - fixed statistics: moving averages ("running") or Alg. 2's ("population").
MODES = ("train", "batch", "collect", "eval")
INFERENCE = ("running", "population")


class BatchNorm(nn.Module):
    def __init__(self, population_size: int, num_features: int, eps: float = 1e-5,
                 momentum: float = 0.1, inference: str = "population"):
        super().__init__()
        if inference not in INFERENCE:
            raise ValueError(f"BN inference must be one of {INFERENCE}, got {inference!r}")
        shape = (population_size, num_features)
        self.eps, self.momentum, self.inference = eps, momentum, inference
        self.weight = nn.Parameter(torch.ones(shape))  # gamma
        self.bias = nn.Parameter(torch.zeros(shape))  # beta
        self.register_buffer("running_mean", torch.zeros(shape))
        self.register_buffer("running_var", torch.ones(shape))
        self.register_buffer("population_mean", torch.zeros(shape))
        self.register_buffer("population_var", torch.ones(shape))
        self.mode = "train"
        self.ghost_batch = 0
        self._sums: list | None = None
        self._values_per_batch = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "collect":
            return self._collect(x)
        # Fold the population into channels so torch's fused kernel normalises every
        # (member, feature) pair on its own: [P, B, F, ...] -> [B, P*F, ...].
        P, B = x.shape[:2]
        flat = x.transpose(0, 1).reshape(B, -1, *x.shape[3:])
        if self.mode == "eval":
            stats = (self.running_mean, self.running_var) if self.inference == "running" \
                else (self.population_mean, self.population_var)
            mean, var, use_batch = stats[0].view(-1), stats[1].view(-1), False
        else:
            update = self.mode == "train"
            mean = self.running_mean.view(-1) if update else None
            var = self.running_var.view(-1) if update else None
            use_batch = True
        y = F.batch_norm(flat, mean, var, self.weight.view(-1), self.bias.view(-1),
                         use_batch, self.momentum, self.eps)
        return y.view(B, P, *x.shape[2:]).transpose(0, 1)

    def _collect(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise by per-mini-batch statistics and accumulate them (Alg. 2, line 10)."""
        P, N, C = x.shape[:3]
        m = self.ghost_batch
        if m < 2 or N % m:
            raise ValueError(f"collect needs a batch that is a multiple of ghost_batch={m} >= 2")
        groups = x.reshape(P, N // m, m, C, -1)  # [P, batches, m, C, spatial]
        mean = groups.mean(dim=(2, 4), keepdim=True)
        var = groups.var(dim=(2, 4), unbiased=False, keepdim=True)  # sigma_B^2, biased (Alg. 1)
        if self._sums is None:
            self._sums = [torch.zeros_like(self.population_mean) for _ in range(2)] + [0]
        self._values_per_batch = m * groups.shape[4]  # m' = m * H * W for conv maps (Sec. 3.2)
        self._sums[0] += mean.sum(dim=1).view(P, C)
        self._sums[1] += var.sum(dim=1).view(P, C)
        self._sums[2] += N // m
        y = (groups - mean) * torch.rsqrt(var + self.eps)
        y = y * self.weight.view(P, 1, 1, C, 1) + self.bias.view(P, 1, 1, C, 1)
        return y.view_as(x)

    def finish_collect(self) -> None:
        """E[x] <- E_B[mu_B];  Var[x] <- m/(m-1) E_B[sigma_B^2] (m: values per feature, batch)."""
        sum_mean, sum_var, batches = self._sums
        m = self._values_per_batch
        self.population_mean.copy_(sum_mean / batches)
        self.population_var.copy_(sum_var / batches * m / (m - 1))
        self._sums = None


def batch_norms(model: nn.Module) -> list[BatchNorm]:
    return [m for m in model.modules() if isinstance(m, BatchNorm)]


@contextmanager
def bn_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Temporarily put every BN layer of `model` in `mode` (see MODES)."""
    if mode not in MODES:
        raise ValueError(f"BN mode must be one of {MODES}, got {mode!r}")
    layers = batch_norms(model)
    previous = [bn.mode for bn in layers]
    for bn in layers:
        bn.mode = mode
    try:
        yield
    finally:
        for bn, old in zip(layers, previous, strict=True):
            bn.mode = old


@torch.no_grad()
def estimate_population_statistics(model: nn.Module, batches: Iterable[torch.Tensor],
                                   batch_size: int,
                                   forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                                   ) -> None:
    """Alg. 2 lines 8-12: average mini-batch statistics over training batches of `batch_size`.

    `batches` yields inputs of k * batch_size examples, passed to `forward` (default: model);
    each group of batch_size examples is normalised as in training on that mini-batch.
    """
    forward = forward or model
    layers = batch_norms(model)
    if not layers:
        return
    for bn in layers:
        bn.ghost_batch = batch_size
    with bn_mode(model, "collect"):
        for x in batches:
            forward(x)
    for bn in layers:
        bn.finish_collect()
