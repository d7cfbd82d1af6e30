"""The networks behind `model.kind=<name>`, all with a leading population dimension.

MODELS says which models exist and what the rest of the harness needs to know about each;
`build_model` builds one for a population of configs. Nothing else branches on the kind.
Adding a model: its module here, one entry below, and its config file in conf/model/.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bnrepro.models.cnn import CNN, stage_widths
from bnrepro.models.layers import (
    ACTIVATIONS,
    CONV_EXECUTIONS,
    MEMORY_FORMATS,
    PopulationConv2d,
    PopulationDropout,
    PopulationLinear,
    check_norm_and_activation,
)
from bnrepro.models.mlp import MLP
from bnrepro.models.resnet import RESIDUAL_SCALES, STAGES, ResNet, blocks_per_stage
from bnrepro.norms import head_norm
from bnrepro.norms.noisy import SanturkarNoise
from bnrepro.seeding import on_device

__all__ = ["ACTIVATIONS", "CNN", "CONV_EXECUTIONS", "MEMORY_FORMATS", "MLP", "MODELS",
           "ModelSpec",
           "PopulationConv2d", "PopulationDropout", "PopulationLinear", "ResNet", "build_model",
           "check_norm_and_activation", "move_step_streams", "step_streams"]


@dataclass(frozen=True)
class ModelSpec:
    # (model config node, per-member keyword arguments, input image shape) -> module
    build: Callable[[Mapping, dict, tuple[int, ...]], nn.Module]
    conv: bool  # has conv layers, so conv-only norms (IN) apply
    # Widths that model.norm normalises (model.norm_groups must divide each of them).
    normalised_widths: Callable[[Mapping], list[int]]
    # Weight layers (the model's weight_layers(), input first, head last): measures.ics.layers
    num_layers: Callable[[Mapping], int]
    # The model's own config checks: (key under model., ok, what is allowed) per key
    # (validation.py turns a failed one into a ConfigError naming model.<key>).
    checks: Callable[[Mapping], list[tuple[str, bool, str]]] = lambda m: []
    # Has residual blocks: every evaluation measures their branch/skip variances
    # (residual_variance.py, probe.residual_variance).
    residual: bool = False


def _build_mlp(m: Mapping, common: dict, image_shape: tuple[int, ...]) -> nn.Module:
    return MLP(in_features=math.prod(image_shape), hidden=list(m.hidden), num_classes=10,
               **common)


def _build_cnn(m: Mapping, common: dict, image_shape: tuple[int, ...]) -> nn.Module:
    return CNN(in_channels=image_shape[0], num_classes=10, widths=list(m.widths),
               convs_per_stage=m.convs_per_stage, width_multiplier=m.width_multiplier,
               classifier_hidden=m.classifier_hidden, image_size=tuple(image_shape[1:]),
               **_speed_knobs(m), **common)


def _build_resnet(m: Mapping, common: dict, image_shape: tuple[int, ...]) -> nn.Module:
    return ResNet(in_channels=image_shape[0], num_classes=10, depth=m.depth,
                  widths=list(m.widths), width_multiplier=m.width_multiplier,
                  residual_scale=m.residual_scale, image_size=tuple(image_shape[1:]),
                  **_speed_knobs(m), **common)


def _speed_knobs(m: Mapping) -> dict[str, str]:
    """A conv net's knobs that change speed only (layers.py): how a population's convs run and
    how activations lie in memory."""
    return {"conv_execution": m.get("conv_execution", "auto"),
            "memory_format": m.get("memory_format", "contiguous")}


def _resnet_checks(m: Mapping) -> list[tuple[str, bool, str]]:
    try:
        blocks_per_stage(m.get("depth"))
        depth_ok = True
    except ValueError:
        depth_ok = False
    return [("depth", depth_ok, "must be 6n + 2 with n >= 1 (8, 14, 20, 32, 56, 110, ...)"),
            ("residual_scale", m.get("residual_scale") in RESIDUAL_SCALES,
             f"choose one of {list(RESIDUAL_SCALES)}"),
            ("widths", len(m.get("widths") or ()) == STAGES, f"must give {STAGES} stage widths")]


def _cnn_widths(m: Mapping) -> list[int]:
    widths = stage_widths(m.widths, m.width_multiplier)
    if head_norm(m.norm) == m.norm and m.get("classifier_norm", True):  # the hidden linear
        # layer has the norm too
        widths.append(m.classifier_hidden)
    return widths


def _cnn_layers(m: Mapping) -> int:
    """Every conv, the hidden linear layer and the head (convs_per_stage: an int for every
    stage, or one per stage; the model refuses other values when it is built)."""
    depths = m.convs_per_stage
    return (len(m.widths) * depths if isinstance(depths, int) else sum(depths)) + 2


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(_build_mlp, conv=False, normalised_widths=lambda m: list(m.hidden),
                     num_layers=lambda m: len(m.hidden) + 1),
    "cnn": ModelSpec(_build_cnn, conv=True, normalised_widths=_cnn_widths,
                     num_layers=_cnn_layers),
    "resnet": ModelSpec(_build_resnet, conv=True, checks=_resnet_checks, residual=True,
                        normalised_widths=lambda m: stage_widths(m.widths, m.width_multiplier),
                        num_layers=lambda m: m.depth + 2),  # + the two 1x1 shortcuts
}


def build_model(cfgs: Sequence[Mapping], image_shape: tuple[int, ...]) -> nn.Module:
    """One model for the population `cfgs` (configs that share `model` but for the member keys:
    seed and dropout here) on images of `image_shape` (C, H, W)."""
    m = cfgs[0].model
    if m.kind not in MODELS:
        raise ValueError(f"model.kind must be one of {list(MODELS)}, got {m.kind!r}")
    common = dict(seeds=[c.seed for c in cfgs], norm=m.norm, activation=m.activation,
                  dropout=[c.model.dropout for c in cfgs], init_std=m.init_std, norm_cfg=m)
    return MODELS[m.kind].build(m, common, tuple(image_shape))


def step_streams(model: nn.Module) -> list[list[torch.Generator]]:
    """The generator lists a training forward pass of `model` draws from, each list once: the
    dropout layers' that drop, and the noisy norms' (one list, shared by the model's noisy
    layers)."""
    lists: dict[int, list[torch.Generator]] = {}
    for m in model.modules():
        if isinstance(m, PopulationDropout) and not m.off or isinstance(m, SanturkarNoise):
            lists.setdefault(id(m.generators), m.generators)
    return list(lists.values())


def move_step_streams(model: nn.Module, device: torch.device | str) -> None:
    """Put the streams of `step_streams(model)` on `device` (seeding's docstring). A dropout
    stream moves only for a member that drops (PopulationDropout.move_streams): one that never
    draws stays on the CPU, so a member without dropout resumes on any device."""
    for m in model.modules():
        if isinstance(m, PopulationDropout):
            m.move_streams(device)
        elif isinstance(m, SanturkarNoise):
            on_device(m.generators, device)
