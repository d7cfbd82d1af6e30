"""Compose the project's Hydra config from Python (scripts, tests, notebooks), and the
${bnrepro.*} resolvers its files use.

Where a run writes is one of them: a directory derived from its command-line overrides. The
same command therefore finds the same directory again, and resumes an interrupted run or skips
a finished one, for single runs and ad-hoc multiruns alike, not only for the experiment
configs. `fresh=true` asks for a new, timestamped directory instead.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

MAX_NAME = 150  # file systems cap a name at 255 bytes; long override lists are shortened


def run_subdir(override_dirname: str) -> str:
    """`model.norm=bn,seed=0` -> itself; no overrides -> `defaults`; too long -> cut + hash."""
    name = override_dirname or "defaults"
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:12]
        name = f"{name[:MAX_NAME - 13]}-{digest}"
    return name


def fresh_suffix(fresh: bool) -> str:
    """'' for the deterministic directory, '_<timestamp>' when `fresh` (a sibling of the
    deterministic one, never inside it)."""
    return _process_timestamp() if fresh else ""


@functools.cache
def _process_timestamp() -> str:
    """One per process, however often (and with whatever config) the run dir is resolved."""
    return time.strftime("_%Y-%m-%d_%H-%M-%S")


def times(value: float, factor: float) -> float:
    """${bnrepro.times:${x},5}: configs that define a setting relative to another (fig2's
    "BN-x5: the baseline's rate times 5") say so instead of repeating a computed number."""
    return value * factor


def divided(value: float, divisor: float) -> float:
    """${bnrepro.divided:${x},6}: "decay 6 times faster" as the config says it."""
    return value / divisor


def floor_divided(value: float, divisor: float) -> int:
    """${bnrepro.floor_divided:${x},${batch}}: how many whole `divisor`s fit in `value`, as an
    integer, for counts a config derives (steps = examples / batch size; the trainer's step
    counts must be integers, which ${bnrepro.divided:...} never is)."""
    if divisor <= 0:
        raise ValueError(f"bnrepro.floor_divided needs a divisor > 0, got {divisor}")
    return int(value // divisor)


def visible_gpus() -> int:
    """${bnrepro.visible_gpus:}: the GPUs this process sees (device.py; torch is imported
    only when a config asks)."""
    from bnrepro import device

    return device.visible_gpus()


def register_resolvers() -> None:
    """Make the ${bnrepro.*} resolvers known to OmegaConf (before Hydra composes a config:
    hydra.run.dir uses two of them)."""
    if not OmegaConf.has_resolver("bnrepro.run_subdir"):
        OmegaConf.register_new_resolver("bnrepro.run_subdir", run_subdir)
        OmegaConf.register_new_resolver("bnrepro.fresh_suffix", fresh_suffix)
        OmegaConf.register_new_resolver("bnrepro.times", times)
        OmegaConf.register_new_resolver("bnrepro.divided", divided)
        OmegaConf.register_new_resolver("bnrepro.floor_divided", floor_divided)
    if not OmegaConf.has_resolver("bnrepro.visible_gpus"):
        OmegaConf.register_new_resolver("bnrepro.visible_gpus", visible_gpus)


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The config `python -m bnrepro.train <overrides>` would run with (minus hydra.*)."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> {dotted key: leaf value}; lists are leaves (for tables that
    compare runs key by key)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resolved_without(cfg: DictConfig, dotted_keys: Iterable[str]) -> dict:
    """The resolved config as a plain dict, minus the given keys (e.g. "optim.lr", "logger")."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for dotted in dotted_keys:
        *parents, leaf = dotted.split(".")
        node = container
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return container
