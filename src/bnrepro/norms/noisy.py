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
No training noise at inference, in Alg. 2's collect pass or in probes (only module.training
together with BN mode "train"): the network evaluated is BN's. The probes of the training
network (evaluation.py, `act_train/`, with probe.train_noise) perturb with the same noise
drawn from a separate "probe_noise" stream inside `probe_noise(...)` (see ProbeNoise): the
training streams never advance outside training steps.

Draws come from each member's own "noise" stream, on the training device (as dropout's; see
seeding.py), so a member's noise does not depend on its population. `noise_only` puts the
same noise on a net without BN; the paper (Sec. 2.1): "adding the same amount of noise to the
activations of the standard (non-BatchNorm) network prevents it from training entirely."
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from bnrepro.norms.batch import BatchNorm
from bnrepro.norms.minibatch import per_feature
from bnrepro.norms.site import Site
from bnrepro.seeding import load_stream_states, occasion_generator, stream_states

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
        self.probe: ProbeNoise | None = None  # set inside probe_noise(): draw from it instead

    def member_states(self) -> list[dict]:
        """Each member's stream (bnrepro.state.MemberState). Every noisy layer of a model holds
        the same list, so each saves and restores the same states: any one of them would do."""
        return stream_states(self.generators)

    def load_member_states(self, states: Sequence[dict | None]) -> None:
        load_stream_states(self.generators, states)

    def unit_parameters(self, C: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Alg. 1 lines 7-8 for C units: (mu [C], sigma [C]) of one step's D_j^t."""
        mu = (torch.rand(C, generator=g, device=g.device) * 2 - 1) * self.n_mu
        sigma = 1 + torch.rand(C, generator=g, device=g.device) * (self.n_sigma - 1)
        return mu, sigma

    def element_noise(self, mu: torch.Tensor, sigma: torch.Tensor, shape: torch.Size,
                      g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Alg. 1 lines 12-13 for values of `shape` [B, C, ...] given the units' (mu, sigma):
        (s, m) of that shape."""
        units = (1, shape[1], *[1] * (len(shape) - 2))  # a unit is a feature, or a map channel
        m = mu.view(units) + (torch.rand(shape, generator=g, device=g.device) * 2 - 1) * self.r_mu
        s = sigma.view(units) + torch.randn(shape, generator=g, device=g.device) * self.s_std
        return s, m

    def draw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, m) shaped like x [P, B, C, ...]: one step's noise, a fresh (mu, sigma) per unit."""
        if self.probe is not None:
            return self.probe.draw(self, x)
        if len(self.generators) != x.shape[0]:
            raise ValueError(f"{len(self.generators)} noise streams for a population of "
                             f"{x.shape[0]}")
        scales, shifts = [], []
        for g in self.generators:
            s, m = self.element_noise(*self.unit_parameters(x.shape[2], g), x.shape[1:], g)
            scales.append(s)
            shifts.append(m)
        return torch.stack(scales).to(x), torch.stack(shifts).to(x)

    def perturb(self, a: torch.Tensor) -> torch.Tensor:
        s, m = self.draw(a)
        return s * a + m

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.perturb(a) if self.training or self.probe is not None else a


class ProbeNoise:
    """Alg. 1's noise for probing the training network, from the "probe_noise" stream.

    One evaluation is one time step t: each noisy layer draws one (mu_j, sigma_j) per unit
    for the whole probe set (the D_j^t a training step at t would draw), from a generator of
    (member seed, step, layer); the per-value (m, s) come from a generator of (member seed,
    step, layer, mini-batch index), so they depend neither on how the evaluator chunks the
    probe set nor on the population. The training streams are never touched.
    """

    def __init__(self, seeds: Sequence[int], step: int, batch_size: int,
                 layers: Sequence[SanturkarNoise]):
        self.seeds, self.step, self.batch_size = list(seeds), step, batch_size
        self.layer_index = {id(layer): i for i, layer in enumerate(layers)}
        self.offset = 0  # index in the probe set of the first example of the next forward pass
        self._units: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def draw(self, layer: SanturkarNoise, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, m) shaped like x [P, n, C, ...], n whole mini-batches starting at `offset`."""
        P, n, C = x.shape[:3]
        if len(self.seeds) != P or n % self.batch_size or self.offset % self.batch_size:
            raise ValueError(f"probe noise for {len(self.seeds)} members in mini-batches of "
                             f"{self.batch_size}, got [{P}, {n}] at offset {self.offset}")
        i = self.layer_index[id(layer)]
        scales, shifts = [], []
        for k, seed in enumerate(self.seeds):
            if (k, i) not in self._units:
                g = occasion_generator(seed, "probe_noise", self.step, i)
                self._units[k, i] = layer.unit_parameters(C, g)
            member_s, member_m = [], []
            for b in range(n // self.batch_size):
                batch = (self.offset // self.batch_size) + b
                g = occasion_generator(seed, "probe_noise", self.step, i, batch)
                s, m = layer.element_noise(*self._units[k, i],
                                           torch.Size((self.batch_size, *x.shape[2:])), g)
                member_s.append(s)
                member_m.append(m)
            scales.append(torch.cat(member_s))
            shifts.append(torch.cat(member_m))
        return torch.stack(scales).to(x), torch.stack(shifts).to(x)


@contextmanager
def probe_noise(model: nn.Module, seeds: Sequence[int], step: int, batch_size: int
                ) -> Iterator[ProbeNoise | None]:
    """Inside: every noisy layer of `model` perturbs its output with ProbeNoise (None when the
    model has none); set `.offset` before each forward pass over part of the probe set."""
    layers = [m for m in model.modules() if isinstance(m, SanturkarNoise)]
    if not layers:
        yield None
        return
    draws = ProbeNoise(seeds, step, batch_size, layers)
    for layer in layers:
        layer.probe = draws
    try:
        yield draws
    finally:
        for layer in layers:
            layer.probe = None


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

    def member_norms(self) -> None:
        """None: the noise is drawn for the whole population at once (forward)."""
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.noise.probe is not None:  # a probe of the training network (probe_noise)
            y = super().forward(x)
            s, m = self.noise.draw(y)
            if self.where == "after_affine":
                return s * y + m
            # before_affine: gamma (s x_hat + m) + beta, written with y = gamma x_hat + beta
            beta = per_feature(self.bias, y)
            return s * (y - beta) + per_feature(self.weight, y) * m + beta
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
