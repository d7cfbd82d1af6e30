"""Independent random streams per run: init, data order, dropout, augmentation, norm noise,
and the noise of probes (drawn per evaluation, never from a training stream).

A member of a population draws from exactly the generators it would draw from if it ran
alone, so its trajectory does not depend on who else is in the population.
"""

from __future__ import annotations

import hashlib

import torch

STREAMS = ("init", "data", "dropout", "augment", "noise", "probe_noise")


def stream_seed(seed: int, stream: str) -> int:
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; one of {STREAMS}")
    return int.from_bytes(hashlib.sha256(f"{seed}/{stream}".encode()).digest()[:8], "big") >> 1


def generator(seed: int, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(stream_seed(seed, stream))


def occasion_generator(seed: int, stream: str, *occasion: int) -> torch.Generator:
    """A generator of `stream` for one occasion (e.g. evaluation step, layer, mini-batch):
    independent of the stream's own generator and of every other occasion, and the same
    whenever the occasion recurs (a resumed run, another chunking of the same examples)."""
    base = stream_seed(seed, stream)
    digest = hashlib.sha256("/".join(map(str, (base, *occasion))).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)
