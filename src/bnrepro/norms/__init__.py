"""Population-ready normalisation layers behind one name: `model.norm=<name>`.

NORMS says which norms exist and what a model needs to know about each; `make_norm` builds a
layer. Models never branch on the name. Adding a norm: a class in its family's file, one
entry below, its knobs (if any) in conf/model/norms/default.yaml.

Every layer takes [P, B, F] (fully connected) or [P, B, C, H, W] (conv; one channel is one
feature), keeps per-member gamma/beta of shape [P, F], and never mixes members.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bnrepro.norms.batch import BatchNorm
from bnrepro.norms.group import build_group_norm, build_instance_norm, build_layer_norm
from bnrepro.norms.lp import lp_builder
from bnrepro.norms.noisy import build_noise_only, build_noisy_batch_norm
from bnrepro.norms.renorm import BatchRenorm, build_batch_renorm
from bnrepro.norms.site import Site


@dataclass(frozen=True)
class NormSpec:
    build: Callable[[Site], nn.Module]
    # Subtracts a per-feature mean that a bias before it would shift by the same constant,
    # so that bias is redundant (beta takes its role, paper Sec. 3.2): models drop it.
    cancels_bias: bool
    conv_only: bool = False  # normalises over positions: nothing to do on a fully-connected layer
    batch_statistics: bool = False  # normalises by mini-batch statistics: needs >= 2 examples
    population_statistics: bool = False  # Alg. 2 applies at inference (bn_inference=population)
    knobs: tuple[str, ...] = ()  # model config keys it reads besides bn_eps/bn_momentum/...


def _build_batch_norm(site: Site) -> BatchNorm:
    return BatchNorm(site.population_size, site.num_features, **site.knobs(
        eps="bn_eps", momentum="bn_momentum", inference="bn_inference",
        ghost_batch="bn_ghost_batch"))


def _build_identity(site: Site) -> nn.Identity:
    return nn.Identity()


NORMS: dict[str, NormSpec] = {
    "none": NormSpec(_build_identity, cancels_bias=False),
    "bn": NormSpec(_build_batch_norm, cancels_bias=True, batch_statistics=True,
                   population_statistics=True, knobs=("bn_ghost_batch",)),
    "noisy_bn": NormSpec(build_noisy_batch_norm, cancels_bias=True, batch_statistics=True,
                         population_statistics=True, knobs=("noise",)),
    "noise_only": NormSpec(build_noise_only, cancels_bias=False, knobs=("noise",)),
    # bn_ghost_batch: examples per statistics group in training (0: the whole mini-batch);
    # noisy_bn does not read it, and validation refuses it there.
    "brn": NormSpec(build_batch_renorm, cancels_bias=True, batch_statistics=True,
                    knobs=("brn", "bn_ghost_batch")),
    "lp1": NormSpec(lp_builder(1), cancels_bias=True, batch_statistics=True,
                    knobs=("lp", "bn_ghost_batch")),
    "lp2": NormSpec(lp_builder(2), cancels_bias=True, batch_statistics=True,
                    knobs=("lp", "bn_ghost_batch")),
    "lpinf": NormSpec(lp_builder(math.inf), cancels_bias=True, batch_statistics=True,
                      knobs=("lp", "bn_ghost_batch")),
    # LN and GN subtract a mean over features, which a per-feature bias does not shift
    # uniformly: the bias stays. IN's mean over positions cancels a per-channel conv bias.
    "ln": NormSpec(build_layer_norm, cancels_bias=False),
    "gn": NormSpec(build_group_norm, cancels_bias=False, knobs=("norm_groups",)),
    "in": NormSpec(build_instance_norm, cancels_bias=True, conv_only=True),
}
# Every norm-specific knob of conf/model (norms/default.yaml; norm_groups in each model file).
NORM_KNOBS = tuple(sorted({knob for spec in NORMS.values() for knob in spec.knobs}))


def norm_spec(name: str) -> NormSpec:
    if name not in NORMS:
        raise ValueError(f"model.norm must be one of {list(NORMS)}, got {name!r}")
    return NORMS[name]


def make_norm(name: str, population_size: int, num_features: int, spatial: bool,
              cfg: Mapping | None = None, generators: Sequence[torch.Generator] = ()
              ) -> nn.Module:
    """The `name` layer for inputs [P, B, num_features] (or [P, B, C, H, W] when `spatial`).

    `cfg` is the model config node (knobs; None: every layer default), `generators` the
    members' "noise" streams (seeding.generator(seed, "noise")), shared by a model's layers.
    """
    spec = norm_spec(name)
    if spec.conv_only and not spatial:
        raise ValueError(f"model.norm={name!r} normalises over positions, so it applies to "
                         "conv layers only; a fully-connected net needs another model.norm")
    return spec.build(Site(population_size, num_features, spatial, cfg or {}, generators))


def member_norms(norm: nn.Module, population_size: int
                 ) -> list[Callable[[torch.Tensor], torch.Tensor]] | None:
    """Per member, `norm` applied to that member's input alone, with the floats it gives that
    member inside the population; None where the layer has no such path (it then runs on the
    whole population at once). No norm (identity), BN in its train and eval modes, LN, GN and
    IN have one."""
    if isinstance(norm, nn.Identity):
        return [norm] * population_size
    members = getattr(norm, "member_norms", None)
    return members() if members is not None else None


def head_norm(name: str) -> str:
    """The norm of a conv net's fully-connected layers: its own, unless it is conv-only (IN),
    which has no positions to normalise over there; those layers then have none."""
    return "none" if norm_spec(name).conv_only else name


def set_norm_step(model: nn.Module, step: int) -> None:
    """Tell the step-scheduled norms (Batch Renorm's r_max/d_max) the training step."""
    norm_step_setter(model)(step)


def norm_step_setter(model: nn.Module) -> Callable[[int], None]:
    """set_norm_step for `model`, its modules looked up once: the trainer calls it before
    every step's forward pass, where a walk over every module is a visible part of a small
    net's step on the CPU (cProfile of the MLP's step: module walks among its top Python
    costs)."""
    scheduled = [module for module in model.modules() if isinstance(module, BatchRenorm)]

    def set_step(step: int) -> None:
        for module in scheduled:
            module.set_step(step)

    return set_step


def unused_knobs(model_cfg: Mapping) -> list[str]:
    """Dotted keys of the norm knobs the configured norm does not read: they cannot change a
    run's trajectory (a checkpoint's fingerprint leaves them out, so adding a knob for a new
    norm does not orphan the runs of the others)."""
    used = NORMS[model_cfg["norm"]].knobs if model_cfg.get("norm") in NORMS else NORM_KNOBS
    return [f"model.{knob}" for knob in NORM_KNOBS if knob not in used]
