"""Which device trains and how it computes there: trainer.device, trainer.precision and
trainer.deterministic (conf/trainer/default.yaml), for train.py, train_dln.py and the bench.

- `resolve_device`: `auto` takes the GPU when CUDA is usable, else the CPU and says so in one
  line (a torch built for a newer CUDA than the driver makes `torch.cuda.is_available()` false:
  without that line a GPU machine trains on its CPU unnoticed); `cuda` and `cuda:N` are refused
  (DeviceError, one line) when CUDA is unusable or N is not a visible GPU.
- `configure`: torch's process-wide numerics for a training on that device. `ieee` (default)
  computes float32 matrix products and convolutions in full float32 on a GPU (torch's own
  default runs convolutions in TF32 and linear layers in float32); `tf32` allows TF32 for both;
  `bf16` runs forward passes under torch.autocast(bfloat16) (`autocast`). `deterministic`
  (default) asks cuDNN and torch for deterministic kernels, so two runs of one config on one GPU
  give the same bytes; off lets cuDNN pick the fastest kernel per shape (benchmark mode). The
  CPU has no TF32 and its kernels are deterministic: there `ieee` and `tf32` compute the same
  floats, `deterministic` changes nothing, and nothing is set.
- `numerics`: what a summary records of it (summary.json's "machine"), with the CUDA and cuDNN
  versions torch was built with.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from functools import wraps

import torch
from torch import nn

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
PRECISIONS = ("ieee", "tf32", "bf16")
# The evaluation's activation budget (trainer.eval_memory_mb) is sized for a CPU's caches; a
# GPU gets at least this share of its memory (chunks of thousands of images: one launch each).
GPU_EVAL_MEMORY_SHARE = 1 / 16
# cuBLAS's deterministic workspace (torch's docs: use_deterministic_algorithms); read when
# cuBLAS starts, so it is set before the first CUDA computation of the process.
CUBLAS_DETERMINISTIC = ":4096:8"

_said: set[str] = set()  # the notices already printed by this process


class DeviceError(ValueError):
    """trainer.device names a device this process cannot use; the message says what to do."""


def why_no_cuda() -> str:
    """Why `torch.cuda.is_available()` is false here, in a few words (torch's own first
    sentence: no driver, a driver older than the build, no visible GPU)."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    try:
        torch.cuda.init()
    except Exception as err:  # torch raises RuntimeError or AssertionError here
        reason = str(err).split(". ")[0].strip().rstrip(".")
    else:
        reason = "no GPU found"
    return f"torch {torch.__version__} built for CUDA {torch.version.cuda}: {reason}"


def say_once(line: str) -> None:
    """Print `line` on stderr unless this process already has (once per multirun, not per
    job)."""
    if line not in _said:
        _said.add(line)
        print(line, file=sys.stderr, flush=True)


def resolve_device(name: str) -> torch.device:
    """trainer.device -> the device to train on (module docstring); DeviceError if unusable."""
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        say_once(f"trainer.device=auto: training on the CPU, CUDA is not usable here "
                 f"({why_no_cuda()}); trainer.device=cpu says so quietly")
        return torch.device("cpu")
    if not DEVICE_PATTERN.fullmatch(str(name)):
        raise DeviceError(f"trainer.device={name!r} is not allowed: choose auto, cpu, cuda or "
                          f"cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(f"trainer.device={name} but CUDA is not usable here ({why_no_cuda()})"
                          f"; train with trainer.device=cpu, or auto (the GPU when there is one)")
    device = torch.device(name)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceError(f"trainer.device={name} but this process sees {count} GPU"
                          f"{'' if count == 1 else 's'} (cuda:0 to cuda:{count - 1}; "
                          f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    return device


def configure(device: torch.device, precision: str = "ieee", deterministic: bool = True
              ) -> dict[str, str | bool]:
    """Set torch's numerics for training on `device` (module docstring; nothing on the CPU)
    and return what to record (`numerics`). Every switch is set, not only changed ones, so a
    process that trains several configs one after another never inherits the last one's."""
    if precision not in PRECISIONS:
        raise ValueError(f"trainer.precision={precision!r}: choose one of {list(PRECISIONS)}")
    if device.type == "cuda":
        fp32 = "tf32" if precision == "tf32" else "ieee"
        torch.backends.cuda.matmul.fp32_precision = fp32
        torch.backends.cudnn.conv.fp32_precision = fp32
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
        # warn_only: an op without a deterministic kernel warns (naming itself) instead of
        # failing a run hours in; gpu-check's "twice the same run" shows whether any did.
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
    return numerics(device, precision, deterministic)


def numerics(device: torch.device, precision: str, deterministic: bool
             ) -> dict[str, str | bool]:
    """How a run computed: its precision and determinism settings, what torch was set to on
    the GPU (the CPU has no TF32: always ieee there) and the CUDA and cuDNN versions torch was
    built with ("none" without). Plain str and bool: summaries go into checkpoints."""
    cuda = device.type == "cuda"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"precision": precision, "deterministic": bool(deterministic),
            "matmul_fp32": str(torch.backends.cuda.matmul.fp32_precision) if cuda else "ieee",
            "conv_fp32": str(torch.backends.cudnn.conv.fp32_precision) if cuda else "ieee",
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic) if cuda else True,
            "cuda": str(torch.version.cuda or "none"), "cudnn": str(cudnn or "none")}


def autocast(model: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """`model`, its forward passes under torch.autocast(bfloat16) when precision is bf16
    (outputs back in float32, so losses and metrics are float32 sums), else unchanged."""
    if precision != "bf16":
        return model
    forward: Callable = model.forward

    @wraps(forward)
    def bf16_forward(*args, **kwargs):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = forward(*args, **kwargs)
        return out.float() if isinstance(out, torch.Tensor) else out

    model.forward = bf16_forward
    return model


def eval_memory_mb(configured: float, device: torch.device) -> float:
    """trainer.eval_memory_mb on `device`: as configured on the CPU (a cache size, measured
    there), at least GPU_EVAL_MEMORY_SHARE of the GPU's memory on a GPU."""
    if device.type != "cuda":
        return configured
    total = torch.cuda.get_device_properties(device).total_memory / 2**20
    return max(configured, total * GPU_EVAL_MEMORY_SHARE)


def visible_gpus() -> int:
    """How many GPUs this process sees (0 without a usable CUDA): what a local submitit job
    asks for (conf/hydra/launcher/population_local.yaml, ${bnrepro.visible_gpus:})."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def visible_gpu_ids() -> tuple[int, ...]:
    """The GPUs of CUDA_VISIBLE_DEVICES as indices, for submitit's local executor, which
    otherwise gives its jobs GPUs 0..n-1 whatever this process was given; () when unset or
    not indices (UUIDs: submitit's default then)."""
    ids = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    return tuple(int(i) for i in ids) if all(i.strip().isdigit() for i in ids) else ()
