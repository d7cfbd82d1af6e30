"""Per-seed cells of an experiment's tables, shared by the analyses that compare groups of
seeds (bnrepro.experiments.batchsize, .depth): which runs form one experiment (their configs
agree but for the keys the sweep varies or that never change a trajectory), and a cell's
mean, min and max over its seeds, as numbers and as text."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from bnrepro.config import flatten
from bnrepro.run.runs import Run


def matches(key: str, patterns: Sequence[str]) -> bool:
    """`key` is one of `patterns`, or lies under one ending in "." ("logger." = all under it)."""
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def flat_config(run: Run) -> dict[str, Any]:
    """A run's resolved config as {dotted key: value}."""
    return flatten(OmegaConf.to_container(run.config, resolve=True))


def differing_keys(configs: Iterable[Mapping[str, Any]], ignored: Sequence[str]) -> list[str]:
    """"key (value, value, ...)" for every flat config key outside `ignored` (`matches`) whose
    value is not the same in all `configs`; a config that lacks the key counts as "(absent)"."""
    configs = list(configs)
    differing = []
    for key in sorted({k for c in configs for k in c}):
        if matches(key, ignored):
            continue
        values = sorted({repr(c.get(key, "(absent)")) for c in configs})
        if len(values) > 1:
            differing.append(f"{key} ({', '.join(values)})")
    return differing


def spread(values: Sequence[float] | np.ndarray, name: str) -> dict[str, float]:
    """{name_mean, name_min, name_max} over the seeds' `values`, ignoring NaN (a seed without
    the number); all three NaN when no seed has it."""
    values = np.asarray(values, dtype=float)
    if np.isnan(values).all():
        return {f"{name}_mean": np.nan, f"{name}_min": np.nan, f"{name}_max": np.nan}
    return {f"{name}_mean": float(np.nanmean(values)), f"{name}_min": float(np.nanmin(values)),
            f"{name}_max": float(np.nanmax(values))}


def spread_text(cell: Mapping[str, Any], name: str, fmt: Callable[[float], str]) -> str:
    """"mean (min..max)" of `cell`'s `spread` numbers for `name`, each written by `fmt`."""
    return (f"{fmt(cell[f'{name}_mean'])} ({fmt(cell[f'{name}_min'])}.."
            f"{fmt(cell[f'{name}_max'])})")
