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
from collections.abc import Sequence

import torch

STREAMS = ("init", "data", "dropout", "augment", "noise", "probe_noise")


def stream_seed(seed: int, stream: str) -> int:
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; one of {STREAMS}")
    return int.from_bytes(hashlib.sha256(f"{seed}/{stream}".encode()).digest()[:8], "big") >> 1


def generator(seed: int, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(stream_seed(seed, stream))


def on_device(generators: list[torch.Generator], device: torch.device | str,
              members: Sequence[bool] | None = None) -> None:
    """Replace each generator of the list (only those where `members`, if given), in place
    (lists shared between layers stay shared), by one on `device` with the same seed. Only
    before the first draw: the state of a drawn CPU generator cannot be carried to another
    device's kind of generator."""
    device = torch.device(device)
    for i, g in enumerate(generators):
        if g.device.type == device.type or members is not None and not members[i]:
            continue
        seed = g.initial_seed()
        if not torch.equal(g.get_state(), torch.Generator(g.device).manual_seed(seed).get_state()):
            raise RuntimeError("on_device: a generator that has drawn cannot change device")
        generators[i] = torch.Generator(device=device).manual_seed(seed)


class StreamDeviceError(ValueError):
    """A random stream's saved state is another kind of generator's than the one it would
    continue in (a GPU's Philox against the CPU's Mersenne Twister)."""


def load_state(g: torch.Generator, state: torch.Tensor) -> None:
    """g.set_state(state), refusing (StreamDeviceError) a state saved by another kind of
    generator: a stream drawn on a GPU (Philox) cannot continue on the CPU (Mersenne Twister),
    or back."""
    if state.numel() != g.get_state().numel():
        raise StreamDeviceError(f"a random stream saved on another kind of device cannot "
                                f"continue on {g.device.type}")
    g.set_state(state)


def stream_states(generators: Sequence[torch.Generator]) -> list[dict]:
    """Each member's stream as its checkpoint dict (bnrepro.state.MemberState)."""
    return [{"rng": g.get_state()} for g in generators]


def load_stream_states(generators: Sequence[torch.Generator],
                       states: Sequence[dict | None]) -> None:
    """Continue each member's stream from its dict, in the member's own generator (on the
    device chosen for that member: its state must be of that device's kind)."""
    for g, state in zip(generators, states, strict=True):
        load_state(g, state["rng"])


def occasion_generator(seed: int, stream: str, *occasion: int) -> torch.Generator:
    """A generator of `stream` for one occasion (e.g. evaluation step, layer, mini-batch):
    independent of the stream's own generator and of every other occasion, and the same
    whenever the occasion recurs (a resumed run, another chunking of the same examples)."""
    base = stream_seed(seed, stream)
    digest = hashlib.sha256("/".join(map(str, (base, *occasion))).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)
