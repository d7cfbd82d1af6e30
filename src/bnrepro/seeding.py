"""Independent random streams per run: init, data order, dropout, augmentation, norm noise,
and the noise of probes (drawn per evaluation, never from a training stream).

A member of a population draws from exactly the generators it would draw from if it ran
alone, so its trajectory does not depend on who else is in the population.

Where the streams live: init and data order draw on the CPU (once per run, once per epoch), so
weights and batches are the same on every device. The streams a training step draws from
(dropout masks, norm noise, augmentation) live on the training device (`on_device`), so a step
on a GPU draws and uses them there, with nothing copied from the host. On the CPU nothing
changes; on a GPU those draws come from CUDA's generator (Philox) instead of the CPU's
Mersenne Twister, so a GPU run's masks differ from a CPU run's of the same seed (its floats
differ anyway: cuBLAS and cuDNN reduce in other orders).
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


def on_device(generators: list[torch.Generator], device: torch.device | str) -> None:
    """Replace each generator of the list, in place (lists shared between layers stay shared),
    by one on `device` with the same seed. Only before the first draw: the state of a drawn
    CPU generator cannot be carried to another device's kind of generator."""
    device = torch.device(device)
    for i, g in enumerate(generators):
        if g.device.type == device.type:
            continue
        seed = g.initial_seed()
        if not torch.equal(g.get_state(), torch.Generator(g.device).manual_seed(seed).get_state()):
            raise RuntimeError("on_device: a generator that has drawn cannot change device")
        generators[i] = torch.Generator(device=device).manual_seed(seed)


def load_state(g: torch.Generator, state: torch.Tensor) -> None:
    """g.set_state(state), refusing (ValueError) a state saved by another kind of generator:
    a stream drawn on a GPU (Philox) cannot continue on the CPU (Mersenne Twister), or back."""
    if state.numel() != g.get_state().numel():
        raise ValueError(f"a random stream saved on another kind of device cannot continue on "
                         f"{g.device.type}")
    g.set_state(state)


def occasion_generator(seed: int, stream: str, *occasion: int) -> torch.Generator:
    """A generator of `stream` for one occasion (e.g. evaluation step, layer, mini-batch):
    independent of the stream's own generator and of every other occasion, and the same
    whenever the occasion recurs (a resumed run, another chunking of the same examples)."""
    base = stream_seed(seed, stream)
    digest = hashlib.sha256("/".join(map(str, (base, *occasion))).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)
