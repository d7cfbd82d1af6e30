"""A tier's plan (which runs it will train, and for how many steps) and its progress.

`python -m bnrepro.reproduce` first asks every training command of a tier for its runs
without training any: with the environment variable BNREPRO_PLAN set to a file, the population
launcher (hydra_plugins.bnrepro_population) and bnrepro.train_dln append one line per run,
{"run_dir": ..., "max_steps": ..., "step_flops": ...}, and return. Progress is then read from
the runs' own records (summary.json, metrics.jsonl), so it is right after a kill, across
sessions, and whichever process trains: a finished run counts its planned steps, a run in
progress the step of its last logged row.

A model-step of the long tier's VGG has ~400 times the FLOPs of its MNIST MLP's, so an ETA
from model-steps per minute is off by hours. Each run's steps are weighted by the FLOPs of one
of its training steps (forward and backward of one member at its batch, counted by torch's
FlopCounterMode), and the ETA is the FLOPs left over the FLOP rate measured. It is still a
guide: this CPU runs big convolutions at ~100 GFLOP/s and a ResNet's small ones, ghost batches
or an MLP at 25-50 (make bench), so while a conv-heavy part sets the rate the ETA of the
others is too short.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLAN_ENV = "BNREPRO_PLAN"
# Statuses of a run that trains on when its command is run again (train.py, train_dln.py).
UNFINISHED = ("running", "interrupted")


def plan_file() -> Path | None:
    """The plan file this process appends to, or None when it should train."""
    value = os.environ.get(PLAN_ENV, "")
    return Path(value) if value else None


# Image shapes of the datasets a plan can weigh (the plan loads no data); another dataset's
# runs are planned unweighted, and the ETA falls back to model-steps.
IMAGE_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar10-jpeg": (3, 32, 32)}


def add_to_plan(path: Path, run_dirs: list[Path], max_steps: list[int],
                step_flops: list[float | None] | None = None) -> None:
    """Append the runs a command would train (plain appends: one writer at a time), with the
    FLOPs of one training step of each where known."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flops = step_flops if step_flops is not None else [None] * len(run_dirs)
    with open(path, "a") as f:
        for run_dir, steps, fl in zip(run_dirs, max_steps, flops, strict=True):
            row = {"run_dir": str(Path(run_dir).resolve()), "max_steps": int(steps)}
            f.write(json.dumps(row | ({"step_flops": float(fl)} if fl else {})) + "\n")


def _rows(path: Path) -> dict[Path, dict]:
    """The plan's rows by run directory (a run planned twice counts once, the last row)."""
    rows = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[Path(row["run_dir"])] = row
    return rows


def read_plan(path: Path) -> dict[Path, int]:
    """Each planned run directory and its steps."""
    return {d: int(row["max_steps"]) for d, row in _rows(path).items()}


def read_step_flops(path: Path) -> dict[Path, float] | None:
    """Each planned run's FLOPs per training step, or None unless every run has a count."""
    rows = _rows(path)
    if not rows or any("step_flops" not in row for row in rows.values()):
        return None
    return {d: float(row["step_flops"]) for d, row in rows.items()}


def training_step_flops(cfg: Any, cache: dict | None = None) -> float | None:
    """FLOPs of one training step (forward, loss, backward) of one member of the run `cfg`
    at its batch size, on random images of its dataset's shape; None for a dataset of unknown
    shape. `cache` (a dict) skips runs whose model, batch and dataset were counted."""
    import torch
    import torch.nn.functional as F
    from omegaconf import OmegaConf

    from bnrepro.bench.roofline import count_flops
    from bnrepro.models import build_model

    shape = IMAGE_SHAPES.get(str(cfg.dataset.name))
    if shape is None:
        return None
    batch = int(cfg.trainer.batch_size)
    key = (OmegaConf.to_yaml(cfg.model, resolve=True), batch, shape)
    if cache is not None and key in cache:
        return cache[key]
    model = build_model([cfg], shape)
    model.train()
    x = torch.randn(1, batch, *shape)  # [members, batch, C, H, W], as a training step's
    y = torch.randint(0, 10, (batch,))
    counted = count_flops(lambda: F.cross_entropy(model(x).flatten(0, 1), y).backward())
    flops = float(sum(counted.values())) or None
    if cache is not None:
        cache[key] = flops
    return flops


def _last_step(metrics: Path) -> int:
    """The step of the last complete row of metrics.jsonl (0 when there is none)."""
    try:
        with open(metrics, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            lines = f.read().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue  # a row cut by a kill, or the first bytes of a cut window
    return 0


def steps_done(run_dir: Path, planned: int) -> tuple[int, bool]:
    """(steps done, finished) of one run: a finished one (completed, diverged, failed) has
    done all it will do, and counts its planned steps."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (FileNotFoundError, ValueError):
        summary = None
    if summary is not None and summary.get("status") not in UNFINISHED:
        return planned, True
    return min(_last_step(run_dir / "metrics.jsonl"), planned), False


@dataclass(frozen=True)
class Progress:
    steps_done: int
    steps_total: int
    runs_done: int
    runs_total: int
    flops_done: float = 0.0  # each run's steps times its FLOPs per step (0: not weighted)
    flops_total: float = 0.0

    @property
    def steps_left(self) -> int:
        return self.steps_total - self.steps_done

    @property
    def work_done(self) -> float:
        """What the ETA's rate measures: FLOPs where the plan has them, else model-steps."""
        return self.flops_done if self.flops_total else float(self.steps_done)

    @property
    def work_left(self) -> float:
        return (self.flops_total - self.flops_done if self.flops_total
                else float(self.steps_left))


def progress(plan: dict[Path, int], step_flops: dict[Path, float] | None = None) -> Progress:
    done = {d: steps_done(d, n) for d, n in plan.items()}
    flops = step_flops or {}
    return Progress(steps_done=sum(s for s, _ in done.values()), steps_total=sum(plan.values()),
                    runs_done=sum(f for _, f in done.values()), runs_total=len(plan),
                    flops_done=sum(done[d][0] * flops.get(d, 0.0) for d in plan),
                    flops_total=sum(n * flops.get(d, 0.0) for d, n in plan.items()))


def duration(seconds: float) -> str:
    """'2 h 05 min', '7 min', '40 s'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def progress_line(p: Progress, rate: float | None, part: str) -> str:
    """One line: model-steps done and left, runs done, the measured rate and the ETA.
    `rate`: p.work_done per second measured by the caller (None: not yet measured)."""
    share = p.steps_done / p.steps_total if p.steps_total else 1.0
    if not rate:
        eta = "ETA after the first minute"
    elif p.flops_total:
        eta = (f"ETA {duration(p.work_left / rate)} at {rate / 1e9:,.1f} GFLOP/s measured "
               "(steps weighted by their FLOPs)")
    else:
        eta = f"ETA {duration(p.work_left / rate)} at {rate * 60:,.0f} model-steps/min measured"
    return (f"{p.steps_done:,} of {p.steps_total:,} model-steps done ({share:.1%}), "
            f"{p.steps_left:,} left; {p.runs_done} of {p.runs_total} runs finished; "
            f"{eta}; now: {part}")
