"""Independent random streams per run: init, data order, dropout, augmentation, norm noise.

A member of a population draws from exactly the generators it would draw from if it ran
alone, so its trajectory does not depend on who else is in the population.
"""

from __future__ import annotations

import hashlib

import torch

STREAMS = ("init", "data", "dropout", "augment", "noise")


def stream_seed(seed: int, stream: str) -> int:
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; one of {STREAMS}")
    return int.from_bytes(hashlib.sha256(f"{seed}/{stream}".encode()).digest()[:8], "big") >> 1


def generator(seed: int, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(stream_seed(seed, stream))
