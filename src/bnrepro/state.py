"""Run state: what a checkpoint holds of each stateful part of a population, one member at a time.

Every part that changes as a population trains (weights and buffers, optimizer buffers, data
order, the random streams of dropout, norm noise and augmentation, the shift references)
implements `MemberState`: one dict per member out, one dict per member in. The trainer
registers the parts by name in one place (train.run_state) and checkpoint.py saves and
restores whatever is registered, without knowing any kind. A member's dict is the same
whatever population it trained in, so a run resumes in any regrouping of its population.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class MemberState(Protocol):
    """A part of a population's state, one member at a time."""

    def member_states(self) -> list[dict]:
        """One picklable dict (tensors, numbers, lists, dicts) per member, tensors on the CPU
        and not views of population-wide storage (a view would save all of it)."""
        ...

    def load_member_states(self, states: Sequence[dict | None]) -> None:
        """Restore each member from its dict, every tensor and random stream onto the device
        that member's own part uses. None: that member's checkpoint lacks this part (only a
        part whose absence a run survives, e.g. a measurement's, accepts it)."""
        ...


def cpu_copy(t: torch.Tensor) -> torch.Tensor:
    """A detached copy of `t` on the CPU, owning its storage (for a checkpoint)."""
    return t.detach().to("cpu", copy=True)


def on_cpu(tree: Any) -> Any:
    """`tree` (dicts, lists, tuples of tensors and plain values) with every tensor on the CPU:
    a checkpoint then loads on any machine, and holds nothing of a GPU."""
    if isinstance(tree, torch.Tensor):
        return tree.cpu()
    if isinstance(tree, dict):
        return {key: on_cpu(value) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(on_cpu(value) for value in tree)
    return tree


class ModuleState:
    """A population module's parameters and buffers (every tensor has a leading member
    dimension): member k's dict holds slice k of each."""

    def __init__(self, module: nn.Module):
        self.module = module

    def member_states(self) -> list[dict]:
        state = self.module.state_dict()
        members = len(next(iter(state.values())))
        return [{name: cpu_copy(t[k]) for name, t in state.items()} for k in range(members)]

    def load_member_states(self, states: Sequence[dict | None]) -> None:
        # load_state_dict copies into the module's own tensors: they stay on its device
        self.module.load_state_dict({name: torch.stack([s[name] for s in states])
                                     for name in states[0]})


class SubmoduleStates:
    """The state of each submodule of `module` that has per-member state of its own
    (MemberState: e.g. dropout layers and noisy norms, for their random streams), under the
    submodule's name. `members`: the population's size (a module may have no such part)."""

    def __init__(self, module: nn.Module, members: int):
        self.members = members
        self.parts = {name: m for name, m in module.named_modules()
                      if m is not module and isinstance(m, MemberState)}

    def member_states(self) -> list[dict]:
        per_part = {name: part.member_states() for name, part in self.parts.items()}
        return [{name: states[k] for name, states in per_part.items()}
                for k in range(self.members)]

    def load_member_states(self, states: Sequence[dict | None]) -> None:
        for name, part in self.parts.items():
            part.load_member_states([s[name] for s in states])
