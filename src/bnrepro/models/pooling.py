"""Max-pooling of the folded conv layout [B, P*C, H, W]: F.max_pool2d's values and gradients,
bit for bit, faster on the CPU.

Why: torch's CPU max-pool forward on a contiguous (NCHW) tensor runs one output at a time,
while its channels_last kernel vectorises across channels; the backward kernels cost about the
same in both layouts. So the forward copies its input to channels_last and pools there, and
the backward routes the gradient with the NCHW kernel and the forward's indices (the gain, per
pooled size and population size: `python -m bnrepro.bench.pooling`, a table of `make bench`).
Both kernels pick the same element of each window (the first maximum in row-major order; ReLU's
tied zeros included), so the values, the indices and so the gradients are F.max_pool2d's
exactly (tests/test_pooling.py): this changes speed only, never a result.
Off the CPU it is F.max_pool2d itself (nothing measured there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _ChannelsLastMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: int) -> torch.Tensor:
        y, indices = F.max_pool2d_with_indices(x.contiguous(memory_format=torch.channels_last),
                                               kernel)
        ctx.save_for_backward(x, indices)
        ctx.kernel = kernel
        return y.contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, indices = ctx.saved_tensors
        k = [ctx.kernel] * 2
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(), x, k, k, [0, 0], [1, 1], False, indices.contiguous()), None


def max_pool2d(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """F.max_pool2d(x, kernel) (stride = kernel, no padding): the same floats, in the same
    memory layout (the next conv's kernel, and so its rounding, depends on that layout)."""
    nchw = x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    if x.device.type != "cpu" or x.dim() != 4 or not nchw:
        # channels_last already (convs keep the layout of their input, should a batch come so)
        # or ambiguous: torch's own kernel, output in the input's layout
        return F.max_pool2d(x, kernel)
    if not (torch.is_grad_enabled() and x.requires_grad):  # evaluation: no indices to keep
        return F.max_pool2d(x.contiguous(memory_format=torch.channels_last), kernel).contiguous()
    return _ChannelsLastMaxPool.apply(x, kernel)
