"""Per-run checkpoints: a killed run resumes where it was and ends bit-identical (CPU).

Each run directory holds its member's slice of the population state in `checkpoint-<step>.pt`:
the member's dict of each part the trainer registers (state.py: weights and BN statistics,
optimizer buffers, data order, every random stream, ...), by name, all on the CPU. This module
knows no kind of part. A run resumes whatever population it is regrouped into. Checkpoints are
taken right after an evaluation, where the running train-loss sums are empty.

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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig

from bnrepro.atomic import atomic_torch_save, remove_stale_temporaries
from bnrepro.config import resolved_without
from bnrepro.norms import unused_knobs
from bnrepro.seeding import StreamDeviceError
from bnrepro.state import MemberState, on_cpu

FILE_PATTERN = re.compile(r"checkpoint-(\d+)\.pt")
# What a checkpoint holds: 2 = the registered run state by name ("state"; state.py). A
# finished run's checkpoint of any format still marks it finished (its summary is all a rerun
# reads); an unfinished one of another format is refused by load.
FORMAT = 2
# Keys that may change between a run and its resumption without changing its trajectory.
# probe.shift and probe.train_noise only measure (their streams are not the training ones).
# scale: the tier's label and run folder; what it changes is in the other keys.
RESUME_INSENSITIVE = ("fresh", "scale", "trainer.progress", "trainer.resume",
                      "trainer.checkpoint_every", "trainer.device", "trainer.eval_memory_mb",
                      "trainer.test_every", "logger",
                      "trainer.divergence_check_every", "trainer.members_at_once",
                      "dataset.root", "dataset.mirror", "measures", "probe.shift",
                      "probe.train_noise", "model.conv_execution",
                      "model.memory_format", "trainer.compile",
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


# What a refused config is told to do (train.py's; train_dln.py has no trainer.resume).
REMEDY = "use another run directory, or trainer.resume=false to start it over"


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


def save(run_dirs: Sequence[Path], cfgs: Sequence[DictConfig], step: int,
         parts: Mapping[str, MemberState], summaries: Sequence[dict],
         finished: bool = False,
         fingerprint_of: Callable[[DictConfig], dict] = fingerprint) -> None:
    """Commit the population's state at `step` (see the module docstring): each of `parts`
    (name -> MemberState, train.run_state) by name, every tensor on the CPU. `finished`
    marks the state at the end of training: a rerun then has nothing left to do.
    `fingerprint_of(cfg)`: what of a config a resume must match (train.py's by default)."""
    states = {name: part.member_states() for name, part in parts.items()}
    for name, members in states.items():
        if len(members) != len(run_dirs):
            raise ValueError(f"run state {name!r}: {len(members)} member states for a "
                             f"population of {len(run_dirs)}")
    population = [str(Path(d).resolve()) for d in run_dirs]
    for k, run_dir in enumerate(run_dirs):
        atomic_torch_save({
            "format": FORMAT,
            "step": step,
            "finished": finished,
            "population": population,
            "config": fingerprint_of(cfgs[k]),
            "state": on_cpu({name: members[k] for name, members in states.items()}),
            "summary": dict(summaries[k]),
        }, path(run_dir, step), durable=True)
    for run_dir in run_dirs:  # every member has the new step: the old ones can go
        for old in steps(run_dir):
            if old != step:
                path(run_dir, old).unlink(missing_ok=True)


def _complete(checkpoint: dict, step: int) -> bool:
    """Every member of the checkpoint's population that still exists has this step saved."""
    return all(path(d, step).is_file() or not Path(d).is_dir()
               for d in checkpoint.get("population", []))


def load(run_dir: str | Path, cfg: DictConfig,
         fingerprint_of: Callable[[DictConfig], dict] = fingerprint,
         remedy: str = REMEDY) -> dict | None:
    """The run's newest committed checkpoint, or None to start from step 0.

    Refuses a checkpoint of another config (ResumeMismatchError, its message ending in
    `remedy`; `fingerprint_of`, as given to `save`, says what must match). An unreadable
    checkpoint is renamed to `*.corrupt`, named in a warning, and the next older one (or a
    fresh start) is used instead, so a damaged file never turns into a crash on every rerun.
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
        if not checkpoint["finished"] and checkpoint.get("format") != FORMAT:
            raise ResumeMismatchError(
                f"{run_dir} holds an unfinished run checkpointed in an older format (no "
                f"format {FORMAT}); delete its checkpoint-*.pt files to start it over, or "
                "finish it with the bnrepro version that trained it")
        current = fingerprint_of(cfg)
        saved = _with_added_keys(checkpoint["config"], current)
        if saved != current:
            diff = sorted(_differences(saved, current))
            raise ResumeMismatchError(
                f"{run_dir} holds a run of another config (differs in {', '.join(diff[:5])}); "
                f"{remedy}")
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


def restore(checkpoints: Sequence[dict], parts: Mapping[str, MemberState]) -> int:
    """Load the members' checkpoints into the population's `parts` (name -> MemberState);
    returns the step to resume after. A part a member's checkpoint lacks gets None for that
    member (a measurement switched on at the resume: it starts afresh)."""
    try:
        for name, part in parts.items():
            part.load_member_states([c["state"].get(name) for c in checkpoints])
    except StreamDeviceError as err:
        raise ResumeMismatchError(
            f"{(checkpoints[0].get('population') or ['this run'])[0]}: {err} (dropout, noise "
            "and augmentation draw on the training device); resume it with the trainer.device "
            "it trained on, or trainer.resume=false to start it over") from err
    return checkpoints[0]["step"]
