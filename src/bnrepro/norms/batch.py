"""Batch Normalization per Ioffe & Szegedy (2015): Alg. 1 in training, Alg. 2 for inference.

Every tensor carries a leading population dimension P (P models trained at once; P = 1 is an
ordinary run). Inputs are [P, B, F] for fully-connected layers or [P, B, C, H, W] for
convolutions, where one feature map is one BN dimension (paper Sec. 3.2). Members never mix:
each has its own gamma, beta and statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

# What a BN layer does on forward:
#   train   - Alg. 1 with mini-batch statistics, and update the moving averages. With a ghost
#             batch (train_ghost_batch = b > 0; model.bn_ghost_batch) each group of b examples
#             of the SGD mini-batch is normalised by its own statistics, as per-GPU BN does
#             (Wu & He 2018), and the moving averages take the mean of the groups' statistics.
#   batch   - the training network N_BN^tr without side effects: each group of `ghost_batch`
#             examples (the whole input when 0) is normalised by its own statistics, as a
#             training mini-batch of that size would be; nothing is updated (for probes).
#   collect - Alg. 2 line 10: like batch, and accumulate E[mu_B] and E[sigma_B^2] over groups.
#   eval    - fixed statistics: moving averages ("running") or Alg. 2's ("population").
MODES = ("train", "batch", "collect", "eval")
INFERENCE = ("running", "population")


class ModalNorm(nn.Module):
    """A norm that uses batch statistics in training, so it follows `bn_mode` (MODES) rather
    than module.train()/eval(): BN, noisy BN, Batch Renorm, l_p normalisation. Those without
    Alg. 2 treat collect as batch. Layers that normalise each example on its own (LN, GN, IN)
    are not modal: they ignore bn_mode."""

    mode: str
    ghost_batch: int
    train_ghost_batch: int = 0  # examples per statistics group in train mode (0: all of them)


class BatchNorm(ModalNorm):
    def __init__(self, population_size: int, num_features: int, eps: float = 1e-5,
                 momentum: float = 0.1, inference: str = "population", ghost_batch: int = 0):
        super().__init__()
        check_ghost_batch(ghost_batch)
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
        self.train_ghost_batch = ghost_batch
        self._sums: list | None = None
        self._values_per_batch = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode in ("batch", "collect") or (self.mode == "train" and self.train_ghost_batch):
            return self._normalize_groups(x, accumulate=self.mode == "collect")
        # Fold the population into channels so torch's fused kernel normalises every
        # (member, feature) pair on its own: [P, B, F, ...] -> [B, P*F, ...].
        P, B = x.shape[:2]
        flat = x.transpose(0, 1).reshape(B, -1, *x.shape[3:])
        mean, var, use_batch = self._statistics()
        y = F.batch_norm(flat, mean.view(-1), var.view(-1), self.weight.view(-1),
                         self.bias.view(-1), use_batch, self.momentum, self.eps)
        return y.view(B, P, *x.shape[2:]).transpose(0, 1)

    def _statistics(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(mean, var) [P, F] of the train and eval modes, and whether the batch's own are used:
        in training the moving averages (updated in place), in eval the set `inference` names."""
        if self.mode != "eval":
            return self.running_mean, self.running_var, True
        if self.inference == "running":
            return self.running_mean, self.running_var, False
        return self.population_mean, self.population_var, False

    def member_norms(self) -> list[Callable[[torch.Tensor], torch.Tensor]] | None:
        """Per member, this layer on that member's input alone ([B, F, ...]): the floats its
        slice of `forward` gets (torch's kernel normalises each feature on its own), its moving
        averages updated in place through views. None in the batch and collect modes, whose
        grouped statistics only `forward` computes, and in train mode with a ghost batch."""
        if self.mode not in ("train", "eval") or (self.mode == "train" and self.train_ghost_batch):
            return None
        mean, var, use_batch = self._statistics()
        return [partial(F.batch_norm, running_mean=m, running_var=v, weight=w, bias=b,
                        training=use_batch, momentum=self.momentum, eps=self.eps)
                for m, v, w, b in zip(mean.unbind(0), var.unbind(0), self.weight.unbind(0),
                                      self.bias.unbind(0), strict=True)]

    def _normalize_groups(self, x: torch.Tensor, accumulate: bool) -> torch.Tensor:
        """Normalise each group of examples by its own statistics (Alg. 1): `ghost_batch`
        of them in the batch and collect modes, `train_ghost_batch` in train mode (0: the whole
        input). With `accumulate` add them to the Alg. 2 sums (line 10); in train mode update
        the moving averages with the mean over groups of the groups' statistics (torch's
        update: rate `momentum`, unbiased variance)."""
        P, N, C = x.shape[:3]
        m = (self.train_ghost_batch if self.mode == "train" else self.ghost_batch) or N
        if m < 2 or N % m:
            raise ValueError(f"BN mode {self.mode!r} needs a batch that is a multiple of "
                             f"ghost_batch={m} >= 2, got {N}")
        groups = x.reshape(P, N // m, m, C, -1)  # [P, batches, m, C, spatial]
        mean = groups.mean(dim=(2, 4), keepdim=True)
        var = groups.var(dim=(2, 4), unbiased=False, keepdim=True)  # sigma_B^2, biased (Alg. 1)
        values = m * groups.shape[4]
        if accumulate:
            self._accumulate(mean, var, values)
        if self.mode == "train":
            with torch.no_grad():
                self.running_mean.lerp_(mean.mean(dim=1).view(P, C), self.momentum)
                self.running_var.lerp_(var.mean(dim=1).view(P, C) * values / (values - 1),
                                       self.momentum)
        y = (groups - mean) * torch.rsqrt(var + self.eps)
        y = y * self.weight.view(P, 1, 1, C, 1) + self.bias.view(P, 1, 1, C, 1)
        return y.view_as(x)

    def _accumulate(self, mean: torch.Tensor, var: torch.Tensor, values_per_batch: int) -> None:
        P, batches, C = mean.shape[0], mean.shape[1], mean.shape[3]
        if self._sums is None:
            self._sums = [torch.zeros_like(self.population_mean) for _ in range(2)] + [0]
        self._values_per_batch = values_per_batch  # m' = m * H * W for conv maps (Sec. 3.2)
        self._sums[0] += mean.sum(dim=1).view(P, C)
        self._sums[1] += var.sum(dim=1).view(P, C)
        self._sums[2] += batches

    def finish_collect(self) -> None:
        """E[x] <- E_B[mu_B];  Var[x] <- m/(m-1) E_B[sigma_B^2] (m: values per feature, batch)."""
        sum_mean, sum_var, batches = self._sums
        m = self._values_per_batch
        self.population_mean.copy_(sum_mean / batches)
        self.population_var.copy_(sum_var / batches * m / (m - 1))
        self._sums = None


def check_ghost_batch(ghost_batch: int) -> None:
    """A ghost batch (examples per statistics group in training) is 0 (off) or >= 2."""
    if not isinstance(ghost_batch, int) or isinstance(ghost_batch, bool) or ghost_batch < 0 \
            or ghost_batch == 1:
        raise ValueError(f"model.bn_ghost_batch must be 0 (the whole mini-batch) or an "
                         f"integer >= 2, got {ghost_batch!r}")


def batch_norms(model: nn.Module) -> list[BatchNorm]:
    return [m for m in model.modules() if isinstance(m, BatchNorm)]


def modal_norms(model: nn.Module) -> list[ModalNorm]:
    return [m for m in model.modules() if isinstance(m, ModalNorm)]


@contextmanager
def bn_mode(model: nn.Module, mode: str, ghost_batch: int = 0) -> Iterator[None]:
    """Temporarily put every modal norm of `model` (BN and the other norms with batch
    statistics) in `mode` (see MODES); `ghost_batch` is the mini-batch size of the batch and
    collect modes (0: the whole input is one batch)."""
    if mode not in MODES:
        raise ValueError(f"BN mode must be one of {MODES}, got {mode!r}")
    layers = modal_norms(model)
    previous = [(bn.mode, bn.ghost_batch) for bn in layers]
    for bn in layers:
        bn.mode, bn.ghost_batch = mode, ghost_batch
    try:
        yield
    finally:
        for bn, (old_mode, old_ghost) in zip(layers, previous, strict=True):
            bn.mode, bn.ghost_batch = old_mode, old_ghost


@contextmanager
def bn_inference(model: nn.Module, inference: str) -> Iterator[None]:
    """Temporarily make every BN layer of `model` (BN, noisy BN) infer with `inference`
    statistics (INFERENCE: "running" = the moving averages, "population" = Alg. 2's) in eval
    mode, whatever model.bn_inference configured. Both sets of buffers exist in every BN layer:
    training updates the moving averages at every step (torch's update: rate bn_momentum,
    unbiased batch variance) whichever inference is configured, and Alg. 2 refills the
    population ones at each evaluation. The other modal norms (Batch Renorm, l_p) have only
    moving averages and are left as they are."""
    if inference not in INFERENCE:
        raise ValueError(f"BN inference must be one of {INFERENCE}, got {inference!r}")
    layers = batch_norms(model)
    previous = [bn.inference for bn in layers]
    for bn in layers:
        bn.inference = inference
    try:
        yield
    finally:
        for bn, old in zip(layers, previous, strict=True):
            bn.inference = old


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
    with bn_mode(model, "collect", batch_size):
        for x in batches:
            forward(x)
    for bn in layers:
        bn.finish_collect()
