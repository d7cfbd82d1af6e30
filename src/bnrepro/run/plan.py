"""A tier's plan (which runs it will train, and for how many steps) and its progress.

`python -m bnrepro.reproduce` first asks every training command of a tier for its runs
without training any: with the environment variable BNREPRO_PLAN set to a file, the population
launcher (hydra_plugins.bnrepro_population) and bnrepro.train_dln append one line per run,
{"run_dir": ..., "max_steps": ...}, and return. Progress is then read from the runs' own
records (summary.json, metrics.jsonl), so it is right after a kill, across sessions, and
whichever process trains: a finished run counts its planned steps, a run in progress the
step of its last logged row.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

PLAN_ENV = "BNREPRO_PLAN"
# Statuses of a run that trains on when its command is run again (train.py, train_dln.py).
UNFINISHED = ("running", "interrupted")


def plan_file() -> Path | None:
    """The plan file this process appends to, or None when it should train."""
    value = os.environ.get(PLAN_ENV, "")
    return Path(value) if value else None


def add_to_plan(path: Path, run_dirs: list[Path], max_steps: list[int]) -> None:
    """Append the runs a command would train (plain appends: one writer at a time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for run_dir, steps in zip(run_dirs, max_steps, strict=True):
            f.write(json.dumps({"run_dir": str(Path(run_dir).resolve()),
                                "max_steps": int(steps)}) + "\n")


def read_plan(path: Path) -> dict[Path, int]:
    """Each planned run directory and its steps (a run planned twice counts once)."""
    plan = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            plan[Path(row["run_dir"])] = int(row["max_steps"])
    return plan


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

    @property
    def steps_left(self) -> int:
        return self.steps_total - self.steps_done


def progress(plan: dict[Path, int]) -> Progress:
    done = [steps_done(d, n) for d, n in plan.items()]
    return Progress(steps_done=sum(s for s, _ in done), steps_total=sum(plan.values()),
                    runs_done=sum(f for _, f in done), runs_total=len(plan))


def duration(seconds: float) -> str:
    """'2 h 05 min', '7 min', '40 s'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def progress_line(p: Progress, rate: float | None, part: str) -> str:
    """One line: model-steps done and left, runs done, the measured rate and the ETA.
    `rate`: model-steps per second measured by the caller (None: not yet measured)."""
    share = p.steps_done / p.steps_total if p.steps_total else 1.0
    eta = (f"ETA {duration(p.steps_left / rate)} at {rate * 60:,.0f} model-steps/min "
           f"measured" if rate else "ETA after the first minute")
    return (f"{p.steps_done:,} of {p.steps_total:,} model-steps done ({share:.1%}), "
            f"{p.steps_left:,} left; {p.runs_done} of {p.runs_total} runs finished; "
            f"{eta}; now: {part}")
