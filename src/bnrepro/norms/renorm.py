"""Batch Renormalization (Ioffe 2017, arXiv 1702.03275, Alg. 1), per member of a population.

Training (per feature, over the mini-batch and positions):
    y = gamma * ((x - mu_B) / sigma_B * r + d) + beta,   sigma_B = sqrt(var_B + eps) (biased),
    r = clip(sigma_B / sigma, 1/r_max, r_max),  d = clip((mu_B - mu) / sigma, -d_max, d_max),
with r and d constants for the gradient (stop_gradient in the paper), and the moving averages
mu += momentum (mu_B - mu), sigma += momentum (sigma_B - sigma). Inference uses mu and sigma:
y = gamma (x - mu) / sigma + beta, which is what r and d make training agree with.

With r_max = 1, d_max = 0 this is BN; the paper starts there and relaxes them. Our schedule:
r_max = 1 and d_max = 0 for `warmup_steps`, then both move linearly to their final values over
`relax_steps`. The paper's ImageNet run: r_max 1 for 5k steps then up to 3 over 40k steps,
d_max 0 for 5k steps then up to 5 over 25k steps (separate lengths; ours share one). Our
default lengths are our own, sized for runs of 5k-50k steps (see conf/model/norms/default.yaml).
"""

from __future__ import annotations

import torch
from torch import nn

from bnrepro.norms.batch import ModalNorm, check_ghost_batch
from bnrepro.norms.minibatch import group_mean, minibatches, per_feature
from bnrepro.norms.site import Site


class BatchRenorm(ModalNorm):
    def __init__(self, population_size: int, num_features: int, eps: float = 1e-5,
                 momentum: float = 0.1, r_max: float = 3.0, d_max: float = 5.0,
                 warmup_steps: int = 500, relax_steps: int = 2000, ghost_batch: int = 0):
        super().__init__()
        check_ghost_batch(ghost_batch)
        if r_max < 1 or d_max < 0 or warmup_steps < 0 or relax_steps < 0:
            raise ValueError(f"model.brn needs r_max >= 1, d_max >= 0 and steps >= 0, got "
                             f"r_max={r_max}, d_max={d_max}, warmup_steps={warmup_steps}, "
                             f"relax_steps={relax_steps}")
        shape = (population_size, num_features)
        self.eps, self.momentum = eps, momentum
        self.final_r_max, self.final_d_max = r_max, d_max
        self.warmup_steps, self.relax_steps = warmup_steps, relax_steps
        self.weight = nn.Parameter(torch.ones(shape))  # gamma
        self.bias = nn.Parameter(torch.zeros(shape))  # beta
        self.register_buffer("running_mean", torch.zeros(shape))  # mu
        self.register_buffer("running_std", torch.ones(shape))  # sigma
        self.mode, self.ghost_batch, self.train_ghost_batch = "train", 0, ghost_batch
        # A plain attribute, not a buffer: the trainer sets it before every step (set_step),
        # so a resumed run has it right without a checkpoint entry.
        self.step = 0

    def set_step(self, step: int) -> None:
        self.step = step

    def limits(self) -> tuple[float, float]:
        """(r_max, d_max) at the current step."""
        if self.step <= self.warmup_steps:
            progress = 0.0
        elif self.relax_steps == 0:
            progress = 1.0
        else:
            progress = min(1.0, (self.step - self.warmup_steps) / self.relax_steps)
        return 1 + (self.final_r_max - 1) * progress, self.final_d_max * progress

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "eval":
            y = (x - per_feature(self.running_mean, x)) / per_feature(self.running_std, x)
            return y * per_feature(self.weight, x) + per_feature(self.bias, x)
        groups = minibatches(self, x)  # [P, batches, m, C, S]
        P, C = groups.shape[0], groups.shape[3]
        mean = groups.mean(dim=(2, 4), keepdim=True)
        std = torch.sqrt(groups.var(dim=(2, 4), unbiased=False, keepdim=True) + self.eps)
        r_max, d_max = self.limits()
        mu = self.running_mean.view(P, 1, 1, C, 1)
        sigma = self.running_std.view(P, 1, 1, C, 1)
        r = (std.detach() / sigma).clamp(1 / r_max, r_max)
        d = ((mean.detach() - mu) / sigma).clamp(-d_max, d_max)
        y = (groups - mean) / std * r + d
        y = y * self.weight.view(P, 1, 1, C, 1) + self.bias.view(P, 1, 1, C, 1)
        if self.mode == "train":
            with torch.no_grad():
                self.running_mean.lerp_(group_mean(mean), self.momentum)
                self.running_std.lerp_(group_mean(std), self.momentum)
        return y.reshape(x.shape)


def build_batch_renorm(site: Site) -> BatchRenorm:
    return BatchRenorm(site.population_size, site.num_features, **site.knobs(
        eps="bn_eps", momentum="bn_momentum", r_max="brn.r_max", d_max="brn.d_max",
        warmup_steps="brn.warmup_steps", relax_steps="brn.relax_steps",
        ghost_batch="bn_ghost_batch"))
