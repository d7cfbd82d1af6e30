"""l_p normalisation (Santurkar et al. 2018, Sec. 3.3), per member of a population.

Per feature, over the mini-batch (and positions for maps), like BN but dividing by a mean l_p
norm instead of the standard deviation:
    y = gamma * (x - mu_B) / (n_p + eps) + beta,
    n_p = (mean |v|^p)^(1/p) for p = 1, 2;  n_inf = max |v|,
with v = x, the activations "before shifting the mean" (the default, `model.lp.norm_of=raw`).
"Mean" makes n_p the power mean, whose scale does not grow with the batch: n_2 is the root mean
square of x, n_1 its mean absolute value, n_inf its largest magnitude. The paper's whole
definition (Sec. 3.3): "schemes that fix the first order moment of the activations, as
BatchNorm does, and then normalizes them by the average of their l_p-norm (before shifting the
mean), for p = 1, 2, inf. Note that for these normalization schemes, the distributions of layer
inputs are no longer Gaussian-like (see Figure 6). Hence, normalization with such l_p-norm does
not guarantee anymore any control over the distribution moments". Two things it leaves open.
"Average of their l_p-norm": we take the power mean above (for p = 1 literally the average of
|x|; a plain ||x||_p / m would shrink with the batch for p > 1). "Before shifting the mean": we
read it literally, the norm of x before mu_B is subtracted. The other reading, the norm of the
centred values v = x - mu_B (`model.lp.norm_of=centered`), makes n_2 the biased standard
deviation: lp2 is then BN up to where eps enters, so it controls the second moment, which the
paper says these schemes do not; it stays as a control.

Inference has no batch: like BN with bn_inference=running, it uses moving averages of mu_B and
n_p (rate bn_momentum), updated in training; no m/(m-1) correction, which is specific to the
variance. Alg. 2 (averaged mini-batch statistics) is not used here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from bnrepro.norms.batch import ModalNorm, check_ghost_batch
from bnrepro.norms.minibatch import group_mean, minibatches, per_feature
from bnrepro.norms.site import Site

NORM_OF = ("raw", "centered")


def mean_lp_norm(v: torch.Tensor, p: float, dim: tuple[int, ...]) -> torch.Tensor:
    """(mean |v|^p)^(1/p) over `dim` (kept), or max |v| for p = inf."""
    if math.isinf(p):
        return v.abs().amax(dim=dim, keepdim=True)
    if p == 1:
        return v.abs().mean(dim=dim, keepdim=True)
    return v.abs().pow(p).mean(dim=dim, keepdim=True).pow(1 / p)


class LpNorm(ModalNorm):
    def __init__(self, population_size: int, num_features: int, p: float, eps: float = 1e-5,
                 momentum: float = 0.1, norm_of: str = "raw", ghost_batch: int = 0):
        super().__init__()
        check_ghost_batch(ghost_batch)
        if norm_of not in NORM_OF:
            raise ValueError(f"model.lp.norm_of must be one of {NORM_OF}, got {norm_of!r}")
        shape = (population_size, num_features)
        self.p, self.eps, self.momentum, self.norm_of = p, eps, momentum, norm_of
        self.weight = nn.Parameter(torch.ones(shape))  # gamma
        self.bias = nn.Parameter(torch.zeros(shape))  # beta
        self.register_buffer("running_mean", torch.zeros(shape))
        self.register_buffer("running_norm", torch.ones(shape))
        self.mode, self.ghost_batch, self.train_ghost_batch = "train", 0, ghost_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "eval":
            y = (x - per_feature(self.running_mean, x)) / \
                (per_feature(self.running_norm, x) + self.eps)
            return y * per_feature(self.weight, x) + per_feature(self.bias, x)
        groups = minibatches(self, x)  # [P, batches, m, C, S]
        P, C = groups.shape[0], groups.shape[3]
        mean = groups.mean(dim=(2, 4), keepdim=True)
        centered = groups - mean
        norm = mean_lp_norm(centered if self.norm_of == "centered" else groups, self.p, (2, 4))
        y = centered / (norm + self.eps)
        y = y * self.weight.view(P, 1, 1, C, 1) + self.bias.view(P, 1, 1, C, 1)
        if self.mode == "train":
            with torch.no_grad():
                self.running_mean.lerp_(group_mean(mean), self.momentum)
                self.running_norm.lerp_(group_mean(norm), self.momentum)
        return y.reshape(x.shape)


def lp_builder(p: float) -> Callable[[Site], LpNorm]:
    """The builder of l_p normalisation for one p (lp1, lp2, lpinf in the registry)."""

    def build(site: Site) -> LpNorm:
        return LpNorm(site.population_size, site.num_features, p, **site.knobs(
            eps="bn_eps", momentum="bn_momentum", norm_of="lp.norm_of",
            ghost_batch="bn_ghost_batch"))

    return build
