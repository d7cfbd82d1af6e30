"""When a measure runs: `every` N steps and at the listed `steps` (conf/measures/)."""

from __future__ import annotations

from collections.abc import Mapping


def is_due(knobs: Mapping, step: int) -> bool:
    """Whether training step `step` (1-based: the step whose batch and update are measured)
    is one of the measure's: a multiple of knobs.every (0 = none) or listed in knobs.steps."""
    every = knobs.get("every") or 0
    return bool(every and step % every == 0) or step in (knobs.get("steps") or ())


def is_scheduled(knobs: Mapping) -> bool:
    """Whether the measure runs at all (a run that asks for none pays nothing)."""
    return bool(knobs.get("every")) or bool(knobs.get("steps"))


def _integer(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def schedule_problems(prefix: str, knobs: Mapping, max_steps: object) -> list[str]:
    """Bad `every` / `steps` values of measures.<name>, one line each."""
    problems = []
    every, steps = knobs.get("every"), knobs.get("steps")
    if not (_integer(every) and every >= 0):
        problems.append(f"{prefix}.every={every!r} is not allowed: must be an integer >= 0 "
                        "(0 = off)")
    top = max_steps if _integer(max_steps) else None
    if steps is None or isinstance(steps, str) or not hasattr(steps, "__iter__") or not all(
            _integer(s) and s >= 1 and (top is None or s <= top) for s in steps):
        problems.append(f"{prefix}.steps={_plain(steps)!r} is not allowed: must be a list of "
                        f"training steps in [1, trainer.max_steps={max_steps}]")
    return problems


def _plain(value: object) -> object:
    return list(value) if hasattr(value, "__iter__") and not isinstance(value, str) else value
