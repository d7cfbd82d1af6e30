"""Which examples a run sees: its per-epoch data order, and fixed evaluation subsets."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bnrepro.seeding import generator
from bnrepro.state import cpu_copy


def fixed_subset(num_examples: int, size: int, seed: int = 0) -> torch.Tensor:
    """The same `size` random indices for every run (the mirrors are sorted by class, so
    "the first N" would be one class only)."""
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed))
    return order[:size]


# Not 0: the held-out set must not coincide with the fixed_subset(...) draws made from the
# remaining training examples (Alg. 2 batches, probe examples).
VALIDATION_SEED = 2015


def validation_split(num_examples: int, val_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices into the official training set: `val_size` examples held out at
    random, the same for every run and seed; training uses the rest. Both sorted."""
    if not 0 < val_size < num_examples:
        raise ValueError(f"dataset.val_size={val_size} must be in (0, {num_examples})")
    val = fixed_subset(num_examples, val_size, VALIDATION_SEED).sort().values
    keep = torch.ones(num_examples, dtype=torch.bool)
    keep[val] = False
    return keep.nonzero().flatten(), val


class EpochSampler:
    """Per member, a fresh permutation of the training set every epoch, cut into batches.

    Each member draws from its own generator (the "data" stream of its seed), so its batches
    do not depend on the population it trains in. The last partial batch is dropped.
    """

    def __init__(self, num_examples: int, batch_size: int, seeds: list[int],
                 device: torch.device | str = "cpu"):
        """Orders are drawn on the CPU (the same batches on every device) and moved to
        `device` once per epoch: a step only slices them there."""
        self.num_examples, self.batch_size = num_examples, batch_size
        self.steps_per_epoch = num_examples // batch_size
        self.generators = [generator(s, "data") for s in seeds]
        self.device = torch.device(device)
        self.step = 0
        self.order = torch.empty(len(seeds), 0, dtype=torch.long, device=self.device)

    def next(self) -> torch.Tensor:
        """Indices [P, batch_size] for the next step."""
        position = self.step % self.steps_per_epoch
        if position == 0:
            self.order = torch.stack([torch.randperm(self.num_examples, generator=g)
                                      for g in self.generators]).to(self.device)
        self.step += 1
        return self.order[:, position * self.batch_size:(position + 1) * self.batch_size]

    def member_states(self) -> list[dict]:
        """Each member's stream and epoch order (bnrepro.state.MemberState)."""
        return [{"step": self.step, "rng": g.get_state(),
                 "order": cpu_copy(self.order[k]) if self.order.numel() else None}
                for k, g in enumerate(self.generators)]

    def load_member_states(self, states: Sequence[dict | None]) -> None:
        self.step = states[0]["step"]
        for g, state in zip(self.generators, states, strict=True):
            g.set_state(state["rng"])
        if states[0]["order"] is not None:
            self.order = torch.stack([s["order"] for s in states]).to(self.device)
