"""Noisy BN (Santurkar et al. 2018, App. A.2.1, Alg. 1): BN whose output is perturbed in
training by noise whose distribution itself changes every step: "covariate shift" on purpose.

The paper (App. A.2.1): "At every time step, our noise model consists of perturbing each
activation for each sample in a batch with noise i.i.d. from a non-zero mean, non-unit variance
distribution D_j^t. The distribution D_j^t itself is time varying and its parameters are drawn
i.i.d from another distribution D_j." Its Alg. 1, line 4 takes a_ij^t <- "Batch-normalized
activation for unit j and sample i", then:
Per layer and step t, per unit j:    mu_j ~ U(-n_mu, n_mu),  sigma_j ~ U(1, n_sigma);
per example i and unit j:           m_ij ~ U(mu_j - r_mu, mu_j + r_mu),  s_ij ~ N(sigma_j, r_sigma);
                                     a_ij <- s_ij * a_ij + m_ij.
For maps a unit is a channel and height and width count as batch ("For convolutional layers,
we follow the standard convention of treating the height and width dimensions as part of the
batch"), so "per example" means per (example, position). Paper values: n_mu 0.5, n_sigma 1.25,
r_mu = r_sigma = 0.1. Two choices the paper leaves open are knobs (conf/model/norms/):
  sigma_param: std | variance  - whether r_sigma in N(sigma, r_sigma) is a standard deviation
               (our default; the usual reading in ML papers) or a variance.
  where: after_affine | before_affine - whether a is BN's output after gamma/beta (our default:
         the paper calls a's mean and variance "possibly learnable", i.e. beta and gamma) or
         the normalised x_hat, with gamma/beta applied to the perturbed value.
No noise at inference, in Alg. 2's collect pass or in probes (only module.training together
with BN mode "train"): the network evaluated is BN's.

Draws come from each member's own "noise" stream, on the CPU (device-independent, as dropout),
so a member's noise does not depend on its population. `noise_only` puts the same noise on a
net without BN; the paper (Sec. 2.1): "adding the same amount of noise to the activations of
the standard (non-BatchNorm) network prevents it from training entirely."
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bnrepro.norms.batch import BatchNorm
from bnrepro.norms.minibatch import per_feature
from bnrepro.norms.site import Site

SIGMA_PARAMS = ("std", "variance")
WHERE = ("after_affine", "before_affine")


class SanturkarNoise(nn.Module):
    """Alg. 1 lines 6-14 on a [P, B, C, ...] input; on its own, the `noise_only` layer."""

    def __init__(self, generators: Sequence[torch.Generator], n_mu: float = 0.5,
                 n_sigma: float = 1.25, r_mu: float = 0.1, r_sigma: float = 0.1,
                 sigma_param: str = "std"):
        super().__init__()
        if sigma_param not in SIGMA_PARAMS:
            raise ValueError(f"model.noise.sigma_param must be one of {SIGMA_PARAMS}, got "
                             f"{sigma_param!r}")
        if not generators:
            raise ValueError("noise needs the members' 'noise' generators (Site.generators)")
        # The model's own list, not a copy: every noisy layer draws from the same streams,
        # in forward order, and checkpoints save each stream once.
        self.generators = generators
        self.n_mu, self.n_sigma, self.r_mu = n_mu, n_sigma, r_mu
        self.s_std = r_sigma if sigma_param == "std" else r_sigma ** 0.5

    def draw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, m) shaped like x [P, B, C, ...]: one step's noise, a fresh (mu, sigma) per unit."""
        if len(self.generators) != x.shape[0]:
            raise ValueError(f"{len(self.generators)} noise streams for a population of "
                             f"{x.shape[0]}")
        C, per_member = x.shape[2], x.shape[1:]
        units = (1, C, *[1] * (x.dim() - 3))  # a unit is a feature, or a channel of a map
        scales, shifts = [], []
        for g in self.generators:
            mu = ((torch.rand(C, generator=g) * 2 - 1) * self.n_mu).view(units)
            sigma = (1 + torch.rand(C, generator=g) * (self.n_sigma - 1)).view(units)
            shifts.append(mu + (torch.rand(per_member, generator=g) * 2 - 1) * self.r_mu)
            scales.append(sigma + torch.randn(per_member, generator=g) * self.s_std)
        return torch.stack(scales).to(x), torch.stack(shifts).to(x)

    def perturb(self, a: torch.Tensor) -> torch.Tensor:
        s, m = self.draw(a)
        return s * a + m

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.perturb(a) if self.training else a


class NoisyBatchNorm(BatchNorm):
    """BN (Alg. 1/2 exactly as BatchNorm, population statistics included) plus the noise."""

    def __init__(self, population_size: int, num_features: int,
                 generators: Sequence[torch.Generator], eps: float = 1e-5,
                 momentum: float = 0.1, inference: str = "population",
                 where: str = "after_affine", **noise: float | str):
        super().__init__(population_size, num_features, eps, momentum, inference)
        if where not in WHERE:
            raise ValueError(f"model.noise.where must be one of {WHERE}, got {where!r}")
        self.where = where
        self.noise = SanturkarNoise(generators, **noise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Noise only where the network trains: module.training (model.eval() in the
        # evaluator) and BN mode "train" (not Alg. 2's collect pass, not the probes' batch).
        if not (self.training and self.mode == "train"):
            return super().forward(x)
        if self.where == "after_affine":
            return self.noise.perturb(super().forward(x))
        # BatchNorm's training path without gamma/beta, which go on after the noise.
        P, B = x.shape[:2]
        flat = x.transpose(0, 1).reshape(B, -1, *x.shape[3:])
        x_hat = F.batch_norm(flat, self.running_mean.view(-1), self.running_var.view(-1), None,
                             None, True, self.momentum, self.eps)
        a = self.noise.perturb(x_hat.view(B, P, *x.shape[2:]).transpose(0, 1))
        return a * per_feature(self.weight, x) + per_feature(self.bias, x)


NOISE_KNOBS = {name: f"noise.{name}" for name in ("n_mu", "n_sigma", "r_mu", "r_sigma",
                                                   "sigma_param")}


def build_noisy_batch_norm(site: Site) -> NoisyBatchNorm:
    return NoisyBatchNorm(site.population_size, site.num_features, site.generators,
                          **site.knobs(eps="bn_eps", momentum="bn_momentum",
                                       inference="bn_inference", where="noise.where",
                                       **NOISE_KNOBS))


def build_noise_only(site: Site) -> SanturkarNoise:
    return SanturkarNoise(site.generators, **site.knobs(**NOISE_KNOBS))
