"""Per-run checkpoints: a killed run resumes where it was and ends bit-identical (CPU).

Each run directory holds its member's slice of the population state (weights, BN statistics,
optimizer buffers, data order and every random stream) in `checkpoint-<step>.pt`, so a run
resumes whatever population it is regrouped into. Checkpoints are taken right after an
evaluation, where the running train-loss sums are empty.

A population's checkpoint commits as one unit, although it spans several directories:
  1. every member's `checkpoint-<step>.pt` is written (to a temporary file, fsync'ed, renamed,
     directory fsync'ed);
  2. only then are the members' older checkpoints deleted.
Each file records the population's directories. `load` takes a member's newest checkpoint
that every member of its population also has: a kill during 1 falls back to the previous
step for all members alike, a kill during 2 finds the new step complete everywhere.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from bnrepro.atomic import atomic_torch_save, remove_stale_temporaries
from bnrepro.config import resolved_without
from bnrepro.data.augment import BatchAugment
from bnrepro.data.sampling import EpochSampler
from bnrepro.models import PopulationDropout
from bnrepro.norms import unused_knobs
from bnrepro.norms.noisy import SanturkarNoise
from bnrepro.optim import PopulationSGD
from bnrepro.seeding import load_state

FILE_PATTERN = re.compile(r"checkpoint-(\d+)\.pt")
# Keys that may change between a run and its resumption without changing its trajectory.
# probe.shift and probe.train_noise only measure (their streams are not the training ones).
RESUME_INSENSITIVE = ("fresh", "trainer.progress", "trainer.resume", "trainer.checkpoint_every",
                      "trainer.device", "trainer.eval_memory_mb", "trainer.test_every", "logger",
                      "trainer.divergence_check_every", "trainer.members_at_once",
                      "dataset.root", "dataset.mirror", "measures", "probe.shift",
                      "probe.train_noise", "model.conv_execution",
                      "probe.residual_variance", "trainer.test_examples",
                      "probe.inference_gap")


# Keys added after runs were made, with the value that reproduces how those runs trained: a
# checkpoint that lacks one matches a config holding that value, so an upgrade of the harness
# does not orphan the runs already on disk.
ADDED_KEYS = {"optim.lr_decay": 1.0, "optim.lr_decay_steps": None, "augment.crop_padding": 0,
              "augment.flip": False, "trainer.flush_denormal": False,
              # issue 27: on the CPU these two compute the floats older runs were trained with
              "trainer.precision": "ieee", "trainer.deterministic": True,
              # issue 26: ghost batches (0 = the whole mini-batch) and the CNN's FC-layer norm
              "model.bn_ghost_batch": 0, "model.classifier_norm": True}


class ResumeMismatchError(ValueError):
    """The run directory holds a run of another configuration."""


def fingerprint(cfg: DictConfig) -> dict:
    """The part of a config that determines a run's trajectory (the knobs of norms other than
    its own do not: runs saved before a norm's knobs existed still resume)."""
    return resolved_without(cfg, (*RESUME_INSENSITIVE, *unused_knobs(cfg.model)))


def _with_added_keys(saved: dict, current: dict) -> dict:
    """`saved` plus each ADDED_KEYS entry it lacks, at the current value where that value
    trains as the old runs did (None: any value does, e.g. the decay steps of no decay)."""
    saved = copy.deepcopy(saved)
    for dotted, neutral in ADDED_KEYS.items():
        *parents, leaf = dotted.split(".")
        new = current
        for part in parents:
            new = new.get(part, {})
        if leaf not in new:
            continue  # the current config lacks it too: nothing to fill in
        old = saved
        for part in parents:
            old = old.setdefault(part, {})
        if leaf not in old:
            old[leaf] = new[leaf] if neutral is None or new[leaf] == neutral else neutral
    return saved


def path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"checkpoint-{step:09d}.pt"


def steps(run_dir: str | Path) -> list[int]:
    """Steps of the checkpoint files in run_dir, newest first."""
    found = [FILE_PATTERN.fullmatch(p.name) for p in Path(run_dir).glob("checkpoint-*.pt")]
    return sorted((int(m[1]) for m in found if m), reverse=True)


def _dropout_generators(model: nn.Module) -> list[list[torch.Generator]]:
    return [m.generators for m in model.modules() if isinstance(m, PopulationDropout)]


def _noise_generators(model: nn.Module) -> list[list[torch.Generator]]:
    """The noisy norms' streams, each list once: a model's noisy layers share one."""
    found: dict[int, list[torch.Generator]] = {}
    for m in model.modules():
        if isinstance(m, SanturkarNoise):
            found.setdefault(id(m.generators), m.generators)
    return list(found.values())


def _trained_names(model: nn.Module) -> list[str]:
    """Names of the parameters PopulationSGD updates, in its order."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def save(run_dirs: Sequence[Path], cfgs: Sequence[DictConfig], step: int, model: nn.Module,
         optimizer: PopulationSGD, sampler: EpochSampler, augment: BatchAugment,
         summaries: Sequence[dict], finished: bool = False,
         extras: Mapping[str, Any] | None = None) -> None:
    """Commit the population's state at `step` (see the module docstring). `finished` marks
    the state at the end of training: a rerun then has nothing left to do. `extras`: name ->
    object with member_state(k) (e.g. the evaluator's shift references), saved per member."""
    state = model.state_dict()
    dropout, noise = _dropout_generators(model), _noise_generators(model)
    momentum_names = _trained_names(model) if optimizer.buffers else []
    population = [str(Path(d).resolve()) for d in run_dirs]
    for k, run_dir in enumerate(run_dirs):
        atomic_torch_save({
            "step": step,
            "finished": finished,
            "population": population,
            "config": fingerprint(cfgs[k]),
            "model": {name: t[k].detach().clone() for name, t in state.items()},
            "momentum": {n: b[k].clone() for n, b in zip(momentum_names, optimizer.buffers,
                                                         strict=True)},
            "sampler": sampler.member_state(k),
            "dropout_rng": [gens[k].get_state() for gens in dropout],
            "augment_rng": augment.member_state(k),
            "noise_rng": [gens[k].get_state() for gens in noise],
            "summary": dict(summaries[k]),
            "extras": {name: state.member_state(k) for name, state in (extras or {}).items()},
        }, path(run_dir, step), durable=True)
    for run_dir in run_dirs:  # every member has the new step: the old ones can go
        for old in steps(run_dir):
            if old != step:
                path(run_dir, old).unlink(missing_ok=True)


def _complete(checkpoint: dict, step: int) -> bool:
    """Every member of the checkpoint's population that still exists has this step saved."""
    return all(path(d, step).is_file() or not Path(d).is_dir()
               for d in checkpoint.get("population", []))


def load(run_dir: str | Path, cfg: DictConfig) -> dict | None:
    """The run's newest committed checkpoint, or None to start from step 0.

    Refuses a checkpoint of another config (ResumeMismatchError). An unreadable checkpoint
    is renamed to `*.corrupt`, named in a warning, and the next older one (or a fresh start)
    is used instead, so a damaged file never turns into a crash on every rerun.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    remove_stale_temporaries(run_dir)  # left by a kill in the middle of a write
    for step in steps(run_dir):
        file = path(run_dir, step)
        try:
            checkpoint = torch.load(file, map_location="cpu", weights_only=True)
            if checkpoint["step"] != step:
                raise ValueError(f"holds step {checkpoint['step']}")
        except Exception as err:
            aside = file.with_name(file.name + ".corrupt")
            file.replace(aside)
            warnings.warn(f"unreadable checkpoint {file} ({type(err).__name__}: {err}); kept "
                          f"as {aside.name}, resuming from an older one or from step 0",
                          stacklevel=2)
            continue
        if not _complete(checkpoint, step):
            continue  # its population's save was cut short: an older step is the committed one
        current = fingerprint(cfg)
        saved = _with_added_keys(checkpoint["config"], current)
        if saved != current:
            diff = sorted(_differences(saved, current))
            raise ResumeMismatchError(
                f"{run_dir} holds a run of another config (differs in {', '.join(diff[:5])}); "
                "use another run directory, or trainer.resume=false to start it over")
        return checkpoint
    return None


def discard(run_dir: str | Path) -> None:
    """Delete a run's checkpoints (trainer.resume=false starts it over)."""
    for step in steps(run_dir):
        path(run_dir, step).unlink(missing_ok=True)


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
            sampler: EpochSampler, augment: BatchAugment,
            extras: Mapping[str, Any] | None = None) -> int:
    """Stack the members' checkpoints into the population; returns the step to resume after.

    A member saved without momentum buffers (its population had momentum 0 everywhere) gets
    zeros: with its own momentum 0 the buffer's old value never enters its update. Each of
    `extras` (name -> object with load_member_states) gets the members' saved states, None
    for a member whose checkpoint has none (saved before it existed).
    """
    model.load_state_dict({name: torch.stack([c["model"][name] for c in checkpoints])
                           for name in checkpoints[0]["model"]})
    for name, buf in zip(_trained_names(model), optimizer.buffers, strict=False):
        for k, c in enumerate(checkpoints):
            saved = c["momentum"].get(name)
            buf[k].copy_(saved if saved is not None else torch.zeros_like(buf[k]))
    sampler.load_member_states([c["sampler"] for c in checkpoints])
    try:  # the streams a step draws from live on the training device (seeding.on_device)
        # A checkpoint from before augmentation existed: that run never drew from the stream.
        augment.load_member_states([c.get("augment_rng", g.get_state())
                                    for c, g in zip(checkpoints, augment.generators,
                                                    strict=True)])
        for j, gens in enumerate(_dropout_generators(model)):
            for g, c in zip(gens, checkpoints, strict=True):
                load_state(g, c["dropout_rng"][j])
        for j, gens in enumerate(_noise_generators(model)):
            for g, c in zip(gens, checkpoints, strict=True):
                load_state(g, c["noise_rng"][j])
    except ValueError as err:
        raise ResumeMismatchError(
            f"{(checkpoints[0].get('population') or ['this run'])[0]}: {err} (dropout, noise "
            "and augmentation draw on the training device); resume it with the trainer.device "
            "it trained on, or trainer.resume=false to start it over") from err
    for name, state in (extras or {}).items():
        state.load_member_states([c.get("extras", {}).get(name) for c in checkpoints])
    return checkpoints[0]["step"]
