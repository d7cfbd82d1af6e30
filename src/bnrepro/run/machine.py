"""Which machine made a number: recorded in every run's summary.json, in the bench's JSON and
in the report.

A run's floats depend on more than its config and seed: the same code, torch and thread count
train the same run to different floats on different CPUs (docs/outputs.md, "Which machine made a
number"). The CPU's instruction set picks torch's vector kernels and the BLAS's
matrix-multiply kernels, and the thread count splits their sums. So a run records the CPU
model, the vector instruction set torch dispatched to and its thread count, and a results
file says which machines its runs came from.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from pathlib import Path

import torch


def cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe(device: torch.device | None = None) -> dict[str, str | int]:
    """This process's machine as torch computes on it now. `threads` is torch's current
    intra-op thread count, so call it where the work runs (inside trainer.threads)."""
    gpu = torch.cuda.get_device_name(device) if device is not None and device.type == "cuda" \
        else "none"
    # Plain str and int only: summaries go into checkpoints, and torch.load(weights_only=True)
    # refuses torch.__version__'s own class (TorchVersion), which would make every finished
    # run's checkpoint unreadable.
    return {"cpu": cpu_model(), "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
            "cores": int(cores()), "threads": int(torch.get_num_threads()), "gpu": str(gpu),
            "torch": str(torch.__version__), "python": platform.python_version(),
            "os": f"{platform.system()} {platform.machine()}"}


def one_line(machine: dict) -> str:
    """A recorded machine in words: 'Intel Xeon ... (AVX512), 2 threads of 2 cores, torch
    2.15.0'; a GPU, when one trained, leads."""
    threads = machine.get("threads", "?")
    cpu = f"{machine.get('cpu', '?')} ({machine.get('cpu_capability', '?')}), " \
          f"{threads} thread{'' if threads == 1 else 's'} of {machine.get('cores', '?')} cores"
    gpu = machine.get("gpu", "none")
    head = f"GPU {gpu} with {cpu}" if gpu != "none" else cpu
    return f"{head}, torch {machine.get('torch', '?')}"


def trained_on(summaries: Iterable[dict]) -> list[str]:
    """The distinct machines (one_line) that trained the runs of these summaries, most runs
    first; runs from before machines were recorded count as 'not recorded'."""
    counts: dict[str, int] = {}
    for s in summaries:
        key = one_line(s["machine"]) if s.get("machine") else "not recorded"
        counts[key] = counts.get(key, 0) + 1
    return [f"{key}: {n} run{'s' if n != 1 else ''}"
            for key, n in sorted(counts.items(), key=lambda kv: -kv[1])]
