"""Building blocks with a leading population dimension: P independent models evaluated as one.

Weights carry the member dimension first ([P, in, out] for linear layers, [P, out, in, k, k]
for convolutions) and are applied with batched products, so P small networks cost about as
much Python overhead as one. P = 1 is an ordinary single model.

Conv activations are [P, B, C, H, W] at every module boundary, but are laid out in memory as
[B, P*C, H, W]: the population is folded into channels, so each conv, pool and BN layer is one
torch call on a view, with no copies between layers. That memory is contiguous (NCHW), the
batches' layout (augment.py hands its batches over as NCHW too); a channels_last input would
stay channels_last, since convs keep the layout of their input (models/pooling.py keeps
whichever layout it is given).
A net may also run its convs member by member on each member's own contiguous tensors
(`PopulationConv2d.member_convs`; models.cnn does so where it can): its solo run's calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from bnrepro.norms import member_norms, norm_spec
from bnrepro.seeding import load_stream_states, on_device, stream_states

ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu}


def check_norm_and_activation(norm: str, activation: str) -> None:
    norm_spec(norm)  # raises, naming model.norm and the registry's names
    if activation not in ACTIVATIONS:
        raise ValueError(f"model.activation must be one of {sorted(ACTIVATIONS)}, got "
                         f"{activation!r}")


class PopulationLinear(nn.Module):
    """y = x W + b per member: x [P, B, in] -> [P, B, out]."""

    def __init__(self, population_size: int, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(population_size, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(population_size, 1, out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [P, B, in], or [B, in] shared by all members (one GEMM, no P copies of x)."""
        if x.dim() == 2:
            P, n_in, n_out = self.weight.shape
            y = (x @ self.weight.transpose(0, 1).reshape(n_in, P * n_out)).view(-1, P, n_out)
            y = y.transpose(0, 1)
            return y if self.bias is None else y + self.bias
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias, x, self.weight)


class PopulationDropout(nn.Module):
    """Inverted dropout with a probability and a random stream per member. Only the members
    that drop draw from their streams (as data/augment.py's): a member's stream is the same in
    any population, and one that never draws stays on the CPU (`move_streams`)."""

    def __init__(self, probabilities: torch.Tensor, generators: Sequence[torch.Generator]):
        super().__init__()
        self.register_buffer("keep", 1 - probabilities.float())
        self.generators = list(generators)
        self.drops = (probabilities > 0).tolist()
        self.off = not any(self.drops)  # no member drops: skip it (no check per step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.off:
            return x
        # Drawn on each generator's device: the training device once train.py has moved the
        # streams there (move_streams), so a GPU step copies nothing from the host. A member
        # that keeps everything gets noise 0, below its keep of 1 (as any draw in [0, 1) is).
        noise = torch.stack([torch.rand(x.shape[1:], generator=g, device=g.device).to(x.device)
                             if drops else torch.zeros(x.shape[1:], device=x.device)
                             for g, drops in zip(self.generators, self.drops, strict=True)])
        keep = self.keep.view(-1, *[1] * (x.dim() - 1))
        return x * (noise < keep) / keep

    def move_streams(self, device: torch.device | str) -> None:
        """Put the streams of the members that drop on `device` (seeding.on_device); the
        others stay on the CPU, so a member without dropout resumes on any device, in any
        population, whatever population it trained in."""
        on_device(self.generators, device, self.drops)

    def member_states(self) -> list[dict]:
        """Each member's stream (bnrepro.state.MemberState)."""
        return stream_states(self.generators)

    def load_member_states(self, states: Sequence[dict | None]) -> None:
        load_stream_states(self.generators, states)


def fold(x: torch.Tensor) -> torch.Tensor:
    """[P, B, C, H, W] -> [B, P*C, H, W] (a view when x came from `unfold`). A population
    whose members are channels_last (model.memory_format) folds into a channels_last
    [B, P*C, H, W]: one copy, after which the folded layers keep that layout."""
    if x.dim() == 5 and not x.is_contiguous() and is_channels_last(x):
        P, B, C, H, W = x.shape
        return x.permute(1, 3, 4, 0, 2).reshape(B, H, W, P * C).permute(0, 3, 1, 2)
    return x.transpose(0, 1).reshape(x.shape[1], -1, *x.shape[3:])


def unfold(y: torch.Tensor, population_size: int) -> torch.Tensor:
    """[B, P*C, H, W] -> [P, B, C, H, W], a view."""
    B, PC = y.shape[:2]
    return y.view(B, population_size, PC // population_size, *y.shape[2:]).transpose(0, 1)


# How a population's convolution runs (model.conv_execution): members stay exactly what they
# are alone either way; only speed and float rounding differ.
#   grouped:    one conv with groups=P over the folded [B, P*C, H, W] activations;
#   per_member: P ordinary convs on channel slices of that layout, outputs concatenated back;
#   auto:       AUTO_CONV_EXECUTION for the device type, else grouped.
# per_member runs each member's conv as its solo run does (P = 1 is the same call on the same
# values): bit-identical outputs and gradients (tests/test_conv_execution.py); grouped agrees
# to float rounding only. CPU -> per_member, for that, and because grouped was as fast or slower
# in the one quiet measurement we have (issue 10; 2 cores, torch 2.15, 16->32 conv at 16x16,
# batch 64, forward + backward, ms per member: grouped 3.9 vs per member 3.8 at P = 8, 9.4 vs
# 4.1 at P = 32). Re-measured here under heavy load from other jobs (1 thread, medians of 3):
# too noisy to rank them (per size and P, either won by up to 2x). Redo on a quiet machine:
# `python -m bnrepro.bench.conv_execution` (and `make bench`: its conv table and the
# "P=8, conv_execution=grouped" row next to auto's, in results/bench.json).
# CUDA: nothing measured (no GPU here): grouped, one kernel per layer, until a measurement says
# otherwise; the same command measures it.
CONV_EXECUTIONS = ("auto", "grouped", "per_member")
AUTO_CONV_EXECUTION = {"cpu": "per_member"}


class PopulationConv2d(nn.Module):
    """Per-member 2-D convolution: x [P, B, C, H, W] -> [P, B, out, H', W'] (H' = H with the
    defaults; about H / stride with a stride).

    `execution` picks how it runs (CONV_EXECUTIONS, comment above); results are the same up to
    float rounding.
    """

    def __init__(self, population_size: int, in_channels: int, out_channels: int,
                 kernel_size: int = 3, padding: int = 1, *, bias: bool, execution: str = "auto",
                 stride: int = 1):
        super().__init__()
        if execution not in CONV_EXECUTIONS:
            raise ValueError(f"model.conv_execution must be one of {list(CONV_EXECUTIONS)}, "
                             f"got {execution!r}")
        shape = (population_size, out_channels, in_channels, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.zeros(population_size, out_channels)) if bias else None
        self.padding, self.stride = padding, stride
        self.execution = execution

    def _conv2d(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                groups: int = 1) -> torch.Tensor:
        if self.stride > 1 and weight.shape[-1] == 1 and x.stride(-3) == 1 < x.shape[-3]:
            # oneDNN's backward of a strided 1x1 conv on a channels-innermost (nhwc) input with
            # fewer input channels than its block writes past a workspace (oneDNN issue 6035:
            # wrong weight gradients, hangs or crashes; here torch 2.15 aborted with "double
            # free or corruption" on the ResNet's shortcuts). The same conv: the positions it
            # reads, then stride 1 (tests/test_speed_knobs.py).
            return F.conv2d(x[..., ::self.stride, ::self.stride], weight, bias, 1, self.padding,
                            groups=groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, groups=groups)

    def member_convs(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """Per member, its conv on its own input [B, C, H, W]: the call its solo run makes, on
        views of this layer's weights (gradients reach them)."""
        biases = [None] * len(self.weight) if self.bias is None else self.bias.unbind(0)
        return [partial(self._conv2d, weight=w, bias=b)
                for w, b in zip(self.weight.unbind(0), biases, strict=True)]

    def resolved_execution(self, device: torch.device) -> str:
        """grouped or per_member: what `auto` means on `device`, or the forced choice."""
        if self.execution != "auto":
            return self.execution
        return AUTO_CONV_EXECUTION.get(device.type, "grouped")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [P, B, C, H, W], or [B, C, H, W] shared by all members."""
        P, n_out, n_in, k, _ = self.weight.shape
        weight = self.weight.reshape(P * n_out, n_in, k, k)
        bias = None if self.bias is None else self.bias.reshape(-1)
        if x.dim() == 4:
            # Shared input: one ungrouped conv whose P*out filters all read the same x,
            # so x is never copied P times.
            return unfold(self._conv2d(x, weight, bias), P)
        if P > 1 and self.resolved_execution(x.device) == "per_member":
            # Channel slices of the folded layout in, concatenated back into it: the next
            # layer sees the same [B, P*out, H, W] memory as after a grouped conv.
            members = fold(x).split(n_in, dim=1)
            biases = [None] * P if self.bias is None else self.bias.unbind(0)
            return unfold(torch.cat([self._conv2d(xm, wm, bm) for xm, wm, bm in
                                     zip(members, self.weight.unbind(0), biases, strict=True)],
                                    dim=1), P)
        # Grouped conv with groups=P: group p sees only member p's channels and filters.
        return unfold(self._conv2d(fold(x), weight, bias, groups=P), P)


# How a conv net lays out its activations in memory (model.memory_format): speed only.
#   contiguous:    NCHW, torch's default; a population folded into channels, [B, P*C, H, W].
#   channels_last: each member's [B, C, H, W] tensors channels-innermost (NHWC in memory): the
#                  input batch and every conv weight, so the convs, norms, activations and
#                  pooling that follow keep that layout (torch's CPU kernels of conv, batch_norm,
#                  group_norm, max-pooling and elementwise ops return their input's layout).
# Member by member (the training step where the net has one) a member then runs its solo run's
# channels_last calls. The folded layout of a channels_last population is [B, P*C, H, W]
# channels_last (each pixel's P*C values together), which fold() and the norms' folding reach
# by views; only the input's first fold copies (a channels_last [P, B, C, H, W] batch is not
# one). Floats differ from contiguous ones in the last bits (other conv kernels, other
# reduction orders in BN), as between two CPUs: tests/test_speed_knobs.py holds a few steps of
# training to 1e-4 relative.
MEMORY_FORMATS = ("contiguous", "channels_last")


def check_memory_format(memory_format: str) -> None:
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"model.memory_format must be one of {list(MEMORY_FORMATS)}, got "
                         f"{memory_format!r}")


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether x [..., C, H, W] holds each position's C values together (NHWC-like memory)."""
    return x.movedim(-3, -1).is_contiguous()


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """x [..., C, H, W] with each position's channels together in memory: torch.channels_last
    for [B, C, H, W] (or a conv weight [out, in, k, k]); for a population [P, B, C, H, W] (or
    its weights [P, out, in, k, k]) every member's slice is channels_last. x itself when it
    already is."""
    return x if is_channels_last(x) else x.movedim(-3, -1).contiguous().movedim(-1, -3)


def in_memory_format(x: torch.Tensor, memory_format: str) -> torch.Tensor:
    """A conv net's input in its memory format; contiguous leaves x as it comes (the batches
    are NCHW already: the default path stays the very floats it always computed)."""
    return channels_last(x) if memory_format == "channels_last" else x


def use_memory_format(model: nn.Module, memory_format: str) -> None:
    """Lay every PopulationConv2d weight of `model` out in `memory_format` (MEMORY_FORMATS):
    a conv on a channels_last weight returns channels_last outputs, whatever its input.
    Moves to another device keep the layout (Tensor.to preserves it), and so do the
    optimizer's momentum buffers (zeros_like) and checkpoints (copied into the parameters)."""
    check_memory_format(memory_format)
    if memory_format == "channels_last":
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, PopulationConv2d):
                    module.weight.data = channels_last(module.weight.data)


def member_calls(modules: Sequence[nn.Module], population_size: int, device: torch.device
                 ) -> list[list[Callable[[torch.Tensor], torch.Tensor]]] | None:
    """Per member, each of `modules` (PopulationConv2d layers and norms, in order) as the call
    that member's solo run makes on its own [B, C, H, W] tensors; None when one of them has no
    such call: a conv that runs grouped on `device` (at P > 1; one member's conv is the same
    call either way), or a norm without a per-member path (norms.member_norms).

    Why: a net that runs its conv stages member by member (models.cnn, models.resnet) gives
    each member its solo run's floats, and skips the folded layout's copies (each conv's input
    and output-gradient slices, the concatenation of outputs, and back again in the backward
    pass); each member's activations also stay small enough for the caches (`make bench`)."""
    per_module = []
    for module in modules:
        if isinstance(module, PopulationConv2d):
            if population_size > 1 and module.resolved_execution(device) != "per_member":
                return None
            per_module.append(module.member_convs())
        else:
            calls = member_norms(module, population_size)
            if calls is None:
                return None
            per_module.append(calls)
    return [list(calls) for calls in zip(*per_module, strict=True)]
