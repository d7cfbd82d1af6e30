"""Pre-activation residual networks for CIFAR-sized images, with a leading population dimension.

The form De & Smith (2020, arXiv 2002.10444) analyse, He et al.'s (2016) "identity mappings"
ResNet: every block computes

    x_{l+1} = s_l(x_l) + alpha_l * f_l(x_l),  f_l = norm -> act -> conv3x3 -> norm -> act -> conv3x3

with nothing (no norm, no activation) on the skip path s_l. The net: stem conv3x3 -> 3 stages
of n blocks (depth = 6n + 2 weight layers: 8, 14, 20, 32, 56, 110 ...) -> norm -> act ->
global average pool -> dropout -> linear.

Downsampling. The first block of stages 2 and 3 halves the resolution (its first conv has
stride 2) and doubles the width, so its skip path cannot be the identity: s_l is a strided 1x1
conv of x_l itself, with no norm or activation in front. He et al.'s pre-activation code feeds
that shortcut norm(act(x_l)) instead, which would reset the skip's variance at every stage;
ours keeps the skip path free of normalisation, as in De & Smith's argument, so the variance
the skip carries keeps accumulating across stages. The shortcut's weights start at
N(0, 1 / fan_in) (not He's 2 / fan_in: its input is not a ReLU output), so at initialisation
it passes the skip's variance on unchanged on average. Every other block has s_l = identity.

residual_scale: "none" (alpha_l = 1, fixed: no multiplication at all) | "skipinit" (De &
Smith's SkipInit: alpha_l a learnable scalar per block and member, [P], initialised to 0, so
every block starts as its skip path: exactly the identity, or the shortcut conv).

`norm` names a layer of the registry (bnrepro.norms); a norm that cancels a bias drops the
conv biases, as in the CNN (every conv output reaches a norm before any nonlinearity, through
the branch or along the residual stream to the final norm). Weights start as N(0, std^2),
std = init_std or, when None, He's sqrt(2 / fan_in) (fan_in = in_channels * k * k) for the
stem, branch convs and the head (shortcuts: see above), each member from its own "init"
stream. The head is linear with a bias (zero at init). `conv_execution` says how the convs
run a population (layers.CONV_EXECUTIONS) and `memory_format` how activations lie in memory
(layers.MEMORY_FORMATS): speed only.

A training step runs member by member where it can (as models.cnn does): each member's stem,
blocks and final norm on its own [B, C, H, W] tensors, its solo run's calls, so a member of a
population trains bit for bit as it does alone (tests/test_speed_knobs.py). That needs convs
that run per member (conv_execution auto on the CPU, or per_member) and a norm with a
per-member path (bn, gn, ln, in, none; norms.member_norms); the other norms, Alg. 2's grouped
statistics and the measurements that read preactivations or the residual moments run folded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from bnrepro.models.cnn import fan_in, stage_widths
from bnrepro.models.layers import (
    ACTIVATIONS,
    PopulationConv2d,
    PopulationDropout,
    PopulationLinear,
    check_norm_and_activation,
    in_memory_format,
    member_calls,
    use_memory_format,
)
from bnrepro.models.residual_variance import ResidualMoments
from bnrepro.norms import make_norm, norm_spec
from bnrepro.seeding import generator

RESIDUAL_SCALES = ("none", "skipinit")
STAGES = 3


def blocks_per_stage(depth: int) -> int:
    """n of depth = 6n + 2 (ValueError naming model.depth otherwise)."""
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"model.depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 56, ...), "
                         f"got {depth!r}")
    return (depth - 2) // 6


class BranchScale(nn.Module):
    """SkipInit's alpha: one learnable scalar per member, [P], initialised to 0."""

    def __init__(self, population_size: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(population_size))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.alpha.view(-1, *[1] * (h.dim() - 1))


class ResidualBlock(nn.Module):
    """x -> s(x) + alpha * f(x) on [P, B, C, H, W] (see the module docstring)."""

    def __init__(self, population_size: int, in_channels: int, out_channels: int, stride: int,
                 norm: str, activation: Callable, residual_scale: str,
                 norm_cfg: Mapping | None, noise: Sequence[torch.Generator],
                 conv_execution: str = "auto"):
        super().__init__()
        P, bias = population_size, not norm_spec(norm).cancels_bias
        conv = dict(bias=bias, execution=conv_execution)
        self.activation = activation
        self.norm1 = make_norm(norm, P, in_channels, True, norm_cfg, noise)
        self.conv1 = PopulationConv2d(P, in_channels, out_channels, stride=stride, **conv)
        self.norm2 = make_norm(norm, P, out_channels, True, norm_cfg, noise)
        self.conv2 = PopulationConv2d(P, out_channels, out_channels, **conv)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = PopulationConv2d(P, in_channels, out_channels, kernel_size=1,
                                             padding=0, stride=stride, **conv)
        if residual_scale not in RESIDUAL_SCALES:
            raise ValueError(f"model.residual_scale must be one of {list(RESIDUAL_SCALES)}, "
                             f"got {residual_scale!r}")
        self.scale = BranchScale(P) if residual_scale == "skipinit" else None

    @property
    def alpha(self) -> nn.Parameter | None:
        """SkipInit's [P] scalars; None when alpha is the constant 1 (residual_scale none)."""
        return None if self.scale is None else self.scale.alpha

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.shortcut is None else self.shortcut(x)

    def branch(self, x: torch.Tensor, preactivations: list | None = None) -> torch.Tensor:
        """alpha * f(x); appends the inputs of its two nonlinearities to `preactivations`."""
        h = self.norm1(x)
        if preactivations is not None:
            preactivations.append(h)
        h = self.norm2(self.conv1(self.activation(h)))
        if preactivations is not None:
            preactivations.append(h)
        h = self.conv2(self.activation(h))
        return h if self.scale is None else self.scale(h)

    def forward(self, x: torch.Tensor, preactivations: list | None = None,
                moments: ResidualMoments | None = None) -> torch.Tensor:
        skip, branch = self.skip(x), self.branch(x, preactivations)
        if moments is not None:
            moments.add(skip, branch)
        return skip + branch

    def member_layers(self) -> list[nn.Module]:
        """The layers `member_forward` takes one member's calls of, in its order."""
        return [self.norm1, self.conv1, self.norm2, self.conv2,
                *([] if self.shortcut is None else [self.shortcut])]

    def member_forward(self, x: torch.Tensor, calls: Iterator[Callable],
                       alpha: torch.Tensor | None) -> torch.Tensor:
        """`forward` for one member's x [B, C, H, W]: its calls of `member_layers` (in that
        order) and its alpha (a 0-d view; None: 1), the same operations on its slice."""
        norm1, conv1, norm2, conv2 = (next(calls) for _ in range(4))
        skip = x if self.shortcut is None else next(calls)(x)
        h = conv2(self.activation(norm2(conv1(self.activation(norm1(x))))))
        return skip + (h if alpha is None else h * alpha)


class ResNet(nn.Module):
    """The pre-activation ResNet of the module docstring for a population of `seeds`."""

    def __init__(self, seeds: Sequence[int], in_channels: int = 3, num_classes: int = 10,
                 depth: int = 20, widths: Sequence[int] = (16, 32, 64),
                 width_multiplier: float = 1.0, residual_scale: str = "none",
                 norm: str = "bn", activation: str = "relu",
                 dropout: Sequence[float] | float = 0.0, init_std: float | None = None,
                 norm_cfg: Mapping | None = None, image_size: int | Sequence[int] = 32,
                 conv_execution: str = "auto", memory_format: str = "contiguous"):
        super().__init__()
        check_norm_and_activation(norm, activation)
        if len(widths) != STAGES:
            raise ValueError(f"model.widths must give {STAGES} stage widths, got {widths!r}")
        n = blocks_per_stage(depth)
        P = len(seeds)
        self.population_size = P
        self.activation = ACTIVATIONS[activation]
        stages = stage_widths(widths, width_multiplier)
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        noise = [generator(s, "noise") for s in seeds]  # read by noisy norms only

        self.stem = PopulationConv2d(P, in_channels, stages[0], execution=conv_execution,
                                     bias=not norm_spec(norm).cancels_bias)
        blocks, channels = [], stages[0]
        # Floats one example produces at the widest layer, over all members (sizes eval chunks).
        self.widest_activation = 0
        for s, w in enumerate(stages):
            for b in range(n):
                stride = 2 if s > 0 and b == 0 else 1
                if stride == 2:
                    height, width = (height + 1) // 2, (width + 1) // 2
                blocks.append(ResidualBlock(P, channels, w, stride, norm, self.activation,
                                            residual_scale, norm_cfg, noise, conv_execution))
                channels = w
            self.widest_activation = max(self.widest_activation, P * w * height * width)
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = make_norm(norm, P, channels, True, norm_cfg, noise)
        probabilities = torch.as_tensor(dropout, dtype=torch.float).expand(P)
        self.dropout = PopulationDropout(probabilities, [generator(s, "dropout") for s in seeds])
        self.head = PopulationLinear(P, channels, num_classes, bias=True)

        layers = [self.stem, *(c for blk in self.blocks for c in (blk.conv1, blk.conv2,
                                                                   blk.shortcut) if c is not None),
                  self.head]
        stds = [init_std if init_std is not None else
                math.sqrt((1 if _is_shortcut(layer, self.blocks) else 2) / fan_in(layer))
                for layer in layers]
        with torch.no_grad():  # each member's weights from its own stream, layer by layer
            for k, seed in enumerate(seeds):
                g = generator(seed, "init")
                for layer, std in zip(layers, stds, strict=True):
                    layer.weight[k] = torch.randn(layer.weight.shape[1:], generator=g) * std
        use_memory_format(self, memory_format)
        self.memory_format = memory_format

    @property
    def residual_blocks(self) -> int:
        return len(self.blocks)

    def weight_layers(self) -> list[list[nn.Module]]:
        """The weight layers from the input up (measures.ics: layer 1, 2, ...), each as [its
        conv or linear module, the modules with parameters of their own that read its output
        next]: stem + block 1's norm1; per block the shortcut (if any, it reads the block's
        input), conv1 + norm2, conv2 + alpha + the next norm1 (or the final norm); the head.
        Every parameter is in exactly one layer."""
        layers: list[list[nn.Module]] = [[self.stem, self.blocks[0].norm1]]
        for i, block in enumerate(self.blocks):
            following = self.blocks[i + 1].norm1 if i + 1 < len(self.blocks) \
                else self.final_norm
            if block.shortcut is not None:
                layers.append([block.shortcut])
            layers.append([block.conv1, block.norm2])
            scale = [] if block.scale is None else [block.scale]
            layers.append([block.conv2, *scale, following])
        return [*layers, [self.head]]

    def forward(self, x: torch.Tensor, preactivations: list | None = None,
                shared: bool = False, moments: ResidualMoments | None = None) -> torch.Tensor:
        """x [P, B, C, H, W] (or [B, C, H, W] fed to every member when `shared`) -> [P, B, K].

        Appends the input to each nonlinearity (after its norm) to `preactivations` when
        given: two per block, [P, B, C, H, W], then the final norm's output. Reports each
        block's skip and branch terms to `moments` (residual_variance.ResidualMoments).
        """
        if x.dim() != (4 if shared else 5):
            raise ValueError(f"ResNet expects x [{'' if shared else 'P, '}B, C, H, W], got "
                             f"{tuple(x.shape)}")
        x = in_memory_format(x, self.memory_format)
        if not shared and preactivations is None and moments is None:
            features = self._member_features(x)
            if features is not None:
                return self.head(self.dropout(features))
        if moments is not None:
            moments.start_pass()
        h = self.stem(x)
        for block in self.blocks:
            h = block(h, preactivations, moments)
        h = self.final_norm(h)
        if preactivations is not None:
            preactivations.append(h)
        h = self.activation(h).mean(dim=(3, 4))  # global average pool: [P, B, C]
        return self.head(self.dropout(h))

    def _member_features(self, x: torch.Tensor) -> torch.Tensor | None:
        """The pooled features [P, B, C] of x [P, B, C, H, W], member by member (the module
        docstring), or None where a layer has no per-member call."""
        layers = [self.stem, *(m for block in self.blocks for m in block.member_layers()),
                  self.final_norm]
        calls = member_calls(layers, self.population_size, x.device)
        if calls is None:
            return None
        alphas = [None if block.alpha is None else block.alpha.unbind(0)
                  for block in self.blocks]
        features = []
        for k, member in enumerate(calls):
            steps = iter(member)
            h = next(steps)(x[k])  # the stem
            for block, alpha in zip(self.blocks, alphas, strict=True):
                h = block.member_forward(h, steps, None if alpha is None else alpha[k])
            features.append(self.activation(next(steps)(h)).mean(dim=(2, 3)))
        return torch.stack(features)


def _is_shortcut(layer: nn.Module, blocks: Sequence[ResidualBlock]) -> bool:
    return any(layer is block.shortcut for block in blocks)
