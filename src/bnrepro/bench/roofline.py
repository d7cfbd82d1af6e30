"""The limit: a net's FLOPs per model-step against this machine's measured throughput.

FLOPs are counted, not estimated: torch.utils.flop_counter.FlopCounterMode records every
matrix product and convolution of one training step of the plain net (forward, and backward:
the weight gradient of every layer and the input gradient of every layer but the first, whose
input needs none; about 3x the forward). 2 FLOPs per multiply-add. Elementwise work (BN,
activations, pooling, loss, SGD) is not counted: the roofline is the time the step's matrix
products and convolutions alone would take at this machine's measured rates:

    roofline time = matmul FLOPs / large-sgemm rate + sum over convs of (conv FLOPs / rate of
                    a lone conv of that size, forward + backward, at the net's batch size)

and a row's "% of roofline" is that time over its measured ms per model-step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bnrepro.bench.timing import median_time
from bnrepro.bench.workloads import Workload


def _is_conv(op: object) -> bool:
    return "convolution" in str(op)


def count_flops(fn) -> dict[str, int]:
    """FLOPs of fn() by kind: {"matmul": ..., "conv": ...}."""
    with FlopCounterMode(display=False) as counter:
        fn()
    by_op = counter.get_flop_counts().get("Global", {})
    return {"matmul": sum(n for op, n in by_op.items() if not _is_conv(op)),
            "conv": sum(n for op, n in by_op.items() if _is_conv(op))}


def training_step_flops(w: Workload) -> dict[str, int]:
    """Matmul and conv FLOPs of one training step of one model (batch w.batch_size)."""
    model = w.build()
    x = w.inputs(w.images[:w.batch_size])
    y = w.labels[:w.batch_size]
    return count_flops(lambda: F.cross_entropy(model(x), y).backward())


def sgemm_gflops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """float32 GFLOP/s of an n x n x n matrix product."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n**3 / median_time(lambda: a @ b, 3, repeats, device) / 1e9


def conv_layers(w: Workload) -> list[tuple[nn.Conv2d, tuple[int, ...]]]:
    """Each conv of the plain net with the input shape it sees at the workload's batch."""
    model = w.build()
    seen: list[tuple[nn.Conv2d, tuple[int, ...]]] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append((m, tuple(args[0].shape))))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(w.inputs(w.images[:w.batch_size]))
    for h in hooks:
        h.remove()
    return seen


def conv_rates(w: Workload, repeats: int = 5, calls: int = 10) -> list[dict]:
    """Per conv of the net: forward + backward FLOPs and GFLOP/s of that conv alone (input
    gradient only where the net needs one: not for the first layer). Convs of the same shape
    (a ResNet's blocks within a stage) are timed once."""
    rates, measured = [], {}
    for i, (conv, shape) in enumerate(conv_layers(w)):
        key = (shape, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, i > 0)
        if key not in measured:
            x = torch.randn(shape, device=w.device, requires_grad=i > 0)
            weight = conv.weight.detach().clone().requires_grad_(True)

            def step(x=x, weight=weight, conv=conv) -> None:
                F.conv2d(x, weight, None, conv.stride, conv.padding).sum().backward()

            flops = count_flops(step)["conv"]
            seconds = median_time(step, calls, repeats, w.device)
            measured[key] = {"input": list(shape), "out_channels": conv.out_channels,
                             "flops": flops, "gflops": round(flops / seconds / 1e9, 2)}
        rates.append(measured[key])
    return rates


def roofline_ms(flops: dict[str, int], sgemm: float, convs: list[dict]) -> float:
    """ms per model-step if matmuls ran at the sgemm rate and each conv at its lone rate."""
    conv_seconds = sum(c["flops"] / (c["gflops"] * 1e9) for c in convs)
    if convs and abs(sum(c["flops"] for c in convs) - flops["conv"]) > 0.01 * flops["conv"]:
        raise ValueError("the measured convs do not add up to the net's conv FLOPs")
    return (flops["matmul"] / (sgemm * 1e9) + conv_seconds) * 1000
