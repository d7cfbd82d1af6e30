"""Compose the project's Hydra config from Python (scripts, tests, notebooks)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The config `python -m bnrepro.train <overrides>` would run with (minus hydra.*)."""
    from bnrepro.rundir import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


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
