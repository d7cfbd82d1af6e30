"""Every config group composes, and the Figure 1 recipe says what the paper says."""

import pytest
from omegaconf import OmegaConf

from bnrepro.config import CONF_DIR, compose_config


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["dataset", "model", "optim", "trainer", "probe", "logger",
                                   "experiment", "debug"])
def test_every_option_composes_and_resolves(group):
    assert options(group), f"conf/{group} is empty"
    for option in options(group):
        cfg = compose_config([f"{group}={option}"])
        OmegaConf.to_container(cfg, resolve=True)  # no dangling interpolation


def test_fig1_follows_the_paper():
    cfg = compose_config(["experiment=fig1_mnist"])
    assert cfg.dataset.name == "mnist" and cfg.dataset.binarize  # "28x28 binary image"
    assert list(cfg.model.hidden) == [100, 100, 100]  # "3 fully-connected hidden layers ..."
    assert cfg.model.activation == "sigmoid"
    assert cfg.trainer.batch_size == 60 and cfg.trainer.max_steps == 50000
    assert cfg.model.dropout == 0


def test_cifar_jpeg_is_never_called_cifar10():
    cfg = compose_config(["dataset=cifar10-jpeg"])
    assert cfg.dataset.name == "cifar10-jpeg"


def test_wandb_mode_follows_the_environment(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert compose_config(["logger=wandb"]).logger.mode == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    assert compose_config(["logger=wandb"]).logger.mode == "offline"
