"""VGG-style convolutional nets with a leading population dimension (models.layers)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from bnrepro.models.layers import (
    ACTIVATIONS,
    PopulationConv2d,
    PopulationDropout,
    PopulationLinear,
    check_norm_and_activation,
    fold,
    in_memory_format,
    member_calls,
    unfold,
    use_memory_format,
)
from bnrepro.models.pooling import max_pool2d
from bnrepro.norms import head_norm, make_norm, norm_spec
from bnrepro.seeding import generator


def stage_widths(widths: Sequence[int], width_multiplier: float) -> list[int]:
    """Output channels of each stage: `widths` scaled, rounded, at least 1."""
    return [max(1, round(w * width_multiplier)) for w in widths]


def _per_stage(value: Sequence[int] | int, stages: int, name: str) -> list[int]:
    values = [value] * stages if isinstance(value, int) else list(value)
    if len(values) != stages or min(values) < 1:
        raise ValueError(f"model.{name} must be a positive int or one per stage ({stages}), "
                         f"got {value!r}")
    return values


class CNN(nn.Module):
    """Per stage: `convs_per_stage` x (conv3x3 -> [norm] -> activation), then 2x2 max-pool;
    then flatten -> linear -> [norm] -> activation -> dropout -> linear to the classes.

    `norm` names a layer of the registry (bnrepro.norms), built with the knobs of `norm_cfg`
    (the model config node; None: the layers' defaults); a conv-only norm (IN) leaves the
    hidden linear layer without one (norms.head_norm). Where the norm cancels a bias (BN: its
    mean subtraction, paper Sec. 3.2) the conv and hidden-linear biases are dropped; each
    feature map gets one gamma/beta. Dropout is only in the head.
    Weights start as N(0, std^2) with std = init_std, or, when init_std is None, He's
    sqrt(2 / fan_in) (fan_in = in_channels * k * k for convs), which keeps ReLU nets trainable
    without BN. `image_size` (H or (H, W)) sets the flattened size; pooling floors odd sizes.
    `conv_execution` says how the convs run a population (layers.CONV_EXECUTIONS), and
    `memory_format` how activations lie in memory (layers.MEMORY_FORMATS): speed only.
    """

    def __init__(self, seeds: Sequence[int], in_channels: int = 3, num_classes: int = 10,
                 norm: str = "none", activation: str = "sigmoid",
                 dropout: Sequence[float] | float = 0.0, init_std: float | None = None,
                 widths: Sequence[int] = (64, 128, 256),
                 convs_per_stage: Sequence[int] | int = 1, width_multiplier: float = 1.0,
                 classifier_hidden: int = 256, norm_cfg: Mapping | None = None,
                 image_size: int | Sequence[int] = 32, conv_execution: str = "auto",
                 memory_format: str = "contiguous"):
        super().__init__()
        check_norm_and_activation(norm, activation)
        P = len(seeds)
        self.population_size = P
        self.activation = ACTIVATIONS[activation]
        # ReLU and a max commute, values and gradients alike (the window's winner is the same
        # for every positive maximum; otherwise every gradient is 0): the member-by-member
        # training step pools first and applies ReLU to a quarter of the values. The one
        # difference: a window whose largest value is -0.0 may keep -0.0 (relu(-0.0) = -0.0)
        # where ReLU first gives +0.0, which changes no sum that has any other term. Sigmoid's
        # saturated ties would move the winner, so it keeps the order.
        self.pool_first = activation == "relu"
        stages = stage_widths(widths, width_multiplier)
        depths = _per_stage(convs_per_stage, len(stages), "convs_per_stage")
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size

        channels = [in_channels]
        self.stage_ends: list[int] = []  # index of the last conv of each stage: pool after it
        # Floats one example produces at the widest layer, over all members (sizes eval chunks):
        # each stage's first conv output, at the stage's full resolution.
        self.widest_activation = P * classifier_hidden
        for w, depth in zip(stages, depths, strict=True):
            self.widest_activation = max(self.widest_activation, P * w * height * width)
            channels += [w] * depth
            self.stage_ends.append(len(channels) - 2)
            height, width = height // 2, width // 2
            if min(height, width) < 1:
                raise ValueError(f"image_size={image_size!r} is too small for "
                                 f"{len(stages)} pooling stages")
        conv_bias, fc_norm = not norm_spec(norm).cancels_bias, head_norm(norm)
        if not (norm_cfg or {}).get("classifier_norm", True):
            fc_norm = "none"  # the norm on the conv layers only (model.classifier_norm)
        self.convs = nn.ModuleList(PopulationConv2d(P, a, b, bias=conv_bias,
                                                    execution=conv_execution)
                                   for a, b in zip(channels[:-1], channels[1:], strict=True))
        noise = [generator(s, "noise") for s in seeds]  # read by noisy norms only
        self.conv_norms = nn.ModuleList(make_norm(norm, P, c, True, norm_cfg, noise)
                                        for c in channels[1:])
        self.hidden = PopulationLinear(P, channels[-1] * height * width, classifier_hidden,
                                       bias=not norm_spec(fc_norm).cancels_bias)
        self.hidden_norm = make_norm(fc_norm, P, classifier_hidden, False, norm_cfg, noise)
        probabilities = torch.as_tensor(dropout, dtype=torch.float).expand(P)
        self.dropout = PopulationDropout(probabilities, [generator(s, "dropout") for s in seeds])
        self.head = PopulationLinear(P, classifier_hidden, num_classes, bias=True)

        layers = [*self.convs, self.hidden, self.head]
        stds = [init_std if init_std is not None else math.sqrt(2 / fan_in(layer))
                for layer in layers]
        with torch.no_grad():  # each member's weights from its own stream, layer by layer
            for k, seed in enumerate(seeds):
                g = generator(seed, "init")
                for layer, std in zip(layers, stds, strict=True):
                    layer.weight[k] = torch.randn(layer.weight.shape[1:], generator=g) * std
        use_memory_format(self, memory_format)
        self.memory_format = memory_format

    def weight_layers(self) -> list[list[nn.Module]]:
        """The layers from the input up, each as [its weight module, the modules after it
        with parameters of their own (the norm)]: what measures.ics calls layer 1, 2, ..."""
        return [*([conv, norm] for conv, norm in zip(self.convs, self.conv_norms, strict=True)),
                [self.hidden, self.hidden_norm], [self.head]]

    def forward(self, x: torch.Tensor, preactivations: list | None = None,
                shared: bool = False) -> torch.Tensor:
        """x [P, B, C, H, W] (or [B, C, H, W] fed to every member when `shared`) -> [P, B, K].

        Appends the input to each nonlinearity (after the norm) to `preactivations` when given:
        [P, B, C, H, W] per conv, then [P, B, classifier_hidden].
        """
        P = self.population_size
        if x.dim() != (4 if shared else 5):
            raise ValueError(f"CNN expects x [{'' if shared else 'P, '}B, C, H, W], got "
                             f"{tuple(x.shape)}")
        x = in_memory_format(x, self.memory_format)
        members = None if shared or preactivations is not None else self._member_layers(x)
        if members is not None:
            h = torch.stack([self._member_features(x[k], layers)
                             for k, layers in enumerate(members)])
        else:
            h = x
            for i, (conv, norm) in enumerate(zip(self.convs, self.conv_norms, strict=True)):
                h = norm(conv(h))
                if preactivations is not None:
                    preactivations.append(h)
                h = self.activation(h)
                if i in self.stage_ends:
                    h = unfold(max_pool2d(fold(h), 2), P)  # F.max_pool2d's floats, faster
        h = self.hidden_norm(self.hidden(h.flatten(2)))
        if preactivations is not None:
            preactivations.append(h)
        return self.head(self.dropout(self.activation(h)))

    def _member_layers(self, x: torch.Tensor) -> list[list[tuple[Callable, Callable]]] | None:
        """Per member, its (conv, norm) calls, layer by layer, when the convs run member by
        member on x's device (layers.CONV_EXECUTIONS; always at P = 1) and every norm has a
        per-member path (norms.member_norms); else None (layers.member_calls says why)."""
        layers = [m for pair in zip(self.convs, self.conv_norms, strict=True) for m in pair]
        calls = member_calls(layers, self.population_size, x.device)
        if calls is None:
            return None
        return [list(zip(member[::2], member[1::2], strict=True)) for member in calls]

    def _member_features(self, x: torch.Tensor, layers: list[tuple[Callable, Callable]]
                         ) -> torch.Tensor:
        """One member's conv stages on its images x [B, C, H, W] -> [B, C', H', W']."""
        h = x
        for i, (conv, norm) in enumerate(layers):
            h = norm(conv(h))
            if i not in self.stage_ends:
                h = self.activation(h)
            elif self.pool_first:
                h = self.activation(max_pool2d(h, 2))
            else:
                h = max_pool2d(self.activation(h), 2)
        return h


def fan_in(layer: nn.Module) -> int:
    """Inputs feeding one output unit: in_channels * k * k for a conv, in_features for linear."""
    shape = layer.weight.shape  # conv [P, out, in, k, k]; linear [P, in, out]
    return math.prod(shape[2:]) if isinstance(layer, PopulationConv2d) else shape[1]
