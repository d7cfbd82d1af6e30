"""The measuring protocol shared by every row: warm-up, timed steps, repeated rounds.

A row is set up once (untimed: building the net, reading data, compiling); each of its samples
then runs `warmup` untimed steps and `steps` timed ones and gives ms per model-step (one
model's step: a population of P divides its step's time by P). Rounds run every row once, in
order, and repeat, so each row's samples are spread over the whole run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    """Seconds for `calls` back-to-back calls of fn."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], calls: int, repeats: int, device: torch.device,
                warmup: bool = True) -> float:
    """Median over `repeats` of the seconds per call (one warm-up call first, unless not
    `warmup`)."""
    if warmup:
        fn()
    return statistics.median(time_calls(fn, calls, device) / calls for _ in range(repeats))


@dataclass
class Spread:
    """Median and range of a row's samples."""

    median: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Spread:
        return cls(statistics.median(samples), min(samples), max(samples))

    def as_dict(self, digits: int = 4) -> dict[str, float]:
        return {k: round(v, digits) for k, v in vars(self).items()}


@dataclass
class Row:
    """One way of training one net. `setup` returns `sample(warmup, steps) -> ms per
    model-step`; it runs once, before the first sample, and is not timed as training."""

    net: str  # "mlp" | "cnn"
    key: str  # stable identifier in the JSON (targets refer to rows by it)
    label: str
    ours: bool
    population_size: int
    setup: Callable[[], Callable[[int, int], float]]
    note: str = ""
    samples: list[float] = field(default_factory=list)
    error: str | None = None
    skipped: str | None = None  # why this run leaves the row out (e.g. --quick, no compile)
    extra: dict = field(default_factory=dict)  # e.g. compile seconds
    _sample: Callable[[int, int], float] | None = None

    def run_sample(self, warmup: int, steps: int) -> None:
        """One more sample; a failure (e.g. torch.compile on a machine without a compiler)
        is recorded in `error` and ends this row's samples, never the bench."""
        if self.error is not None or self.skipped is not None:
            return
        try:
            if self._sample is None:
                self._sample = self.setup()
            self.samples.append(self._sample(warmup, steps))
        except Exception as err:  # noqa: BLE001 (a row's failure is a result to report)
            self.error = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"

    @property
    def spread(self) -> Spread | None:
        return Spread.of(self.samples) if self.samples else None


def run_rounds(rows: Sequence[Row], warmup: int | dict[str, int], steps: dict[str, int],
               repeats: int, progress: Callable[[str], None] = print) -> None:
    """`repeats` rounds over all rows; warm-up and timed step counts per net."""
    for r in range(repeats):
        for row in rows:
            w = warmup[row.net] if isinstance(warmup, dict) else warmup
            start = time.perf_counter()
            row.run_sample(w, steps[row.net])
            shown = row.skipped or row.error or f"{row.samples[-1]:.3f} ms/model-step"
            progress(f"  round {r + 1}/{repeats}  {row.net} {row.label}: {shown} "
                     f"[{time.perf_counter() - start:.1f} s]")


def stepper(step: Callable[[], object], population_size: int, device: torch.device
            ) -> Callable[[int, int], float]:
    """The sample function of a row whose training step is one call of `step`."""

    def sample(warmup: int, steps: int) -> float:
        for _ in range(warmup):
            step()
        return time_calls(step, steps, device) / steps / population_size * 1000

    return sample
