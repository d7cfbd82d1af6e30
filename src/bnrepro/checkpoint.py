"""Per-run checkpoints: a killed run resumes where it was and ends bit-identical (CPU).

Each run directory holds its own `checkpoint.pt` with its member's slice of the population
state (weights, BN statistics, optimizer buffers, data order and every random stream), so a
run resumes whatever population it is regrouped into. Checkpoints are taken right after an
evaluation, where the running train-loss sums are empty, and written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from bnrepro.atomic import atomic_torch_save
from bnrepro.config import resolved_without
from bnrepro.models import PopulationDropout
from bnrepro.optim import PopulationSGD
from bnrepro.sampling import EpochSampler

CHECKPOINT = "checkpoint.pt"
FINAL_STATUSES = ("completed", "diverged")
# Keys that may change between a run and its resumption without changing its trajectory.
RESUME_INSENSITIVE = ("trainer.progress", "trainer.resume", "trainer.checkpoint_every",
                      "trainer.device", "logger", "dataset.root", "dataset.mirror")


class ResumeMismatchError(ValueError):
    """The run directory holds a run of another configuration."""


def fingerprint(cfg: DictConfig) -> dict:
    """The part of a config that determines a run's trajectory."""
    return resolved_without(cfg, RESUME_INSENSITIVE)


def _dropout_generators(model: nn.Module) -> list[list[torch.Generator]]:
    return [m.generators for m in model.modules() if isinstance(m, PopulationDropout)]


def save(run_dirs: Sequence[Path], cfgs: Sequence[DictConfig], step: int, model: nn.Module,
         optimizer: PopulationSGD, sampler: EpochSampler, summaries: Sequence[dict]) -> None:
    state = model.state_dict()
    dropout = _dropout_generators(model)
    for k, run_dir in enumerate(run_dirs):
        atomic_torch_save({
            "step": step,
            "config": fingerprint(cfgs[k]),
            "model": {name: t[k].detach().clone() for name, t in state.items()},
            "optimizer": [b[k].clone() for b in optimizer.buffers],
            "sampler": sampler.member_state(k),
            "dropout_rng": [gens[k].get_state() for gens in dropout],
            "summary": dict(summaries[k]),
        }, Path(run_dir) / CHECKPOINT)


def load(run_dir: Path, cfg: DictConfig) -> dict | None:
    """The run's checkpoint, or None if it has none; refuses one of another config."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    saved, current = checkpoint["config"], fingerprint(cfg)
    if saved != current:
        diff = sorted(_differences(saved, current))
        raise ResumeMismatchError(
            f"{run_dir} holds a run of another config (differs in {', '.join(diff[:5])}); "
            "use another run directory, or trainer.resume=false to start it over")
    return checkpoint


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = set(a) | set(b)
    out = []
    for key in keys:
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}: {x!r} -> {y!r}")
    return out


def restore(checkpoints: Sequence[dict], model: nn.Module, optimizer: PopulationSGD,
            sampler: EpochSampler) -> int:
    """Stack the members' checkpoints into the population; returns the step to resume after."""
    model.load_state_dict({name: torch.stack([c["model"][name] for c in checkpoints])
                           for name in checkpoints[0]["model"]})
    for i, buf in enumerate(optimizer.buffers):
        buf.copy_(torch.stack([c["optimizer"][i] for c in checkpoints]))
    sampler.load_member_states([c["sampler"] for c in checkpoints])
    for j, gens in enumerate(_dropout_generators(model)):
        for g, c in zip(gens, checkpoints, strict=True):
            g.set_state(c["dropout_rng"][j])
    return checkpoints[0]["step"]
