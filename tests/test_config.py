"""Every config group composes, the Figure 1 recipe builds what the paper describes, and the
JPEG mirror is never passed off as CIFAR-10."""

import re

import pytest
import torch
from omegaconf import OmegaConf

from bnrepro.config import CONF_DIR, compose_config
from bnrepro.data.datasets import DataUnavailableError, InputTransform, load_dataset
from bnrepro.data.sampling import EpochSampler
from bnrepro.models import build_model
from bnrepro.norms.batch import BatchNorm
from bnrepro.train import axes, run_name
from tests.conftest import REPO, data_missing

PAPER = REPO.parent / "shared" / "papers" / "ioffe-szegedy-2015-batch-norm.txt"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["dataset", "model", "optim", "trainer", "probe", "logger",
                                   "experiment", "debug"])
def test_every_option_composes_and_resolves(group):
    assert options(group), f"conf/{group} is empty"
    for option in options(group):
        cfg = compose_config([f"{group}={option}"])
        OmegaConf.to_container(cfg, resolve=True)  # no dangling interpolation


@pytest.fixture(scope="module")
def paper_fig1() -> dict[str, int]:
    """The Fig. 1 network as Sec. 4.1 of the paper states it, read from the paper's text so
    that no number in the test is typed from the config it checks."""
    if not PAPER.is_file():
        data_missing(f"needs the paper's text at {PAPER}")
    text = " ".join(PAPER.read_text().split())  # the text has a line break every few words
    section = text[text.index("4.1 Activations over time"):text.index("Figure 1(a) shows")]

    def number(pattern: str) -> int:
        match = re.search(pattern, section)
        assert match, f"paper Sec. 4.1 no longer says {pattern!r}"
        return int(match.group(1))

    assert "with sigmoid nonlinearity" in section
    return {
        "side": number(r"with a (\d+)x\1 binary image as input"),
        "layers": number(r"(\d+) fully-connected hidden layers"),
        "width": number(r"hidden layers with (\d+) activations each"),
        "classes": number(r"fully-connected layer with (\d+) activations \(one per class\)"),
        "steps": number(r"trained the network for (\d+) steps"),
        "batch": number(r"with (\d+) examples per mini-batch"),
    }


def test_fig1_builds_the_papers_network(paper_fig1, mnist):
    """What train.py builds from experiment=fig1_mnist, against the paper's Sec. 4.1.

    Catches: hidden widths or depth not taken from the config (or a wrong config), the image
    flattened to the wrong size, a head that is not 10-way, BN after the sigmoid instead of
    before it (or missing on a layer), a hidden bias kept beside BN's beta (or dropped from
    the baseline), the binarize flag not reaching the transform, batch_size not reaching the
    sampler, and a run length other than the paper's."""
    p = paper_fig1
    models = {}
    for norm in ("bn", "none"):
        cfg = compose_config(["experiment=fig1_mnist", f"model.norm={norm}"])
        assert cfg.model.activation == "sigmoid"
        model = build_model([cfg], mnist.image_shape)
        widths = [p["side"] * p["side"], *[p["width"]] * p["layers"]]
        assert [tuple(layer.weight.shape) for layer in model.hidden] == \
            [(1, a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        assert tuple(model.head.weight.shape) == (1, p["width"], p["classes"])
        assert model.activation is torch.sigmoid
        # with BN its beta replaces the bias (paper Sec. 3.2); the baseline is y = g(Wu + b)
        assert all((layer.bias is None) == (norm == "bn") for layer in model.hidden)
        assert all(isinstance(n, BatchNorm) == (norm == "bn") for n in model.norms)
        models[norm] = (cfg, model)

    # One training step's data, built as train.py builds it.
    cfg, model = models["bn"]
    assert cfg.trainer.max_steps == p["steps"]  # the training loop runs steps 1..max_steps
    transform = InputTransform(mnist, cfg.dataset.binarize, cfg.dataset.standardize)
    sampler = EpochSampler(len(mnist.train_labels), cfg.trainer.batch_size, [cfg.seed])
    index = sampler.next()
    assert tuple(index.shape) == (1, p["batch"])
    x = transform(mnist.train_images[index])
    assert set(x.unique().tolist()) == {0.0, 1.0}  # "binary image"

    # BN sits before each sigmoid: what the next layer receives is sigmoid(BN output), and the
    # BN output (gamma 1, beta 0 at init) has zero mean and unit biased variance per unit.
    received: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, args, _out: received.append(args[0]))
             for layer in [*model.hidden[1:], model.head]]
    pre: list[torch.Tensor] = []
    with torch.no_grad():
        logits = model(x, pre)
    for hook in hooks:
        hook.remove()
    assert tuple(logits.shape) == (1, p["batch"], p["classes"])
    assert len(pre) == len(received) == p["layers"]
    for h, nxt in zip(pre, received, strict=True):
        assert torch.equal(nxt, torch.sigmoid(h))
        torch.testing.assert_close(h.mean(1), torch.zeros(1, p["width"]), atol=1e-5, rtol=0)
        torch.testing.assert_close(h.var(1, unbiased=False), torch.ones(1, p["width"]),
                                   atol=1e-3, rtol=0)


def test_the_jpeg_mirror_is_never_read_as_cifar10(mirror_dir, tmp_path):
    """With only the JPEG mirror and no download, true CIFAR-10 is unavailable. Catches: a
    loader that serves the mirror for "cifar10" (a name prefix match, a shared reader)."""
    assert (mirror_dir / "cifar10-jpeg.tar.gz").is_file()
    with pytest.raises(DataUnavailableError, match="holds no cifar10"):
        load_dataset("cifar10", tmp_path, mirror_dir, download=False)
    assert not (tmp_path / "cifar10.pt").exists()


def test_cifar10_jpeg_runs_are_labelled_cifar10_jpeg():
    """Catches: run names or sweep axes that shorten the dataset to "cifar10" (or take it from
    the experiment, whose default is true CIFAR-10), so JPEG results pass as CIFAR-10."""
    cfg = compose_config(["experiment=sweep_cifar", "dataset=cifar10-jpeg"])
    assert axes(cfg)["dataset"] == "cifar10-jpeg"
    assert run_name(cfg).startswith("cifar10-jpeg-")
    true_cifar = compose_config(["experiment=sweep_cifar"])
    assert "jpeg" not in run_name(true_cifar) and axes(true_cifar)["dataset"] == "cifar10"


def test_wandb_mode_follows_the_environment(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert compose_config(["logger=wandb"]).logger.mode == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    assert compose_config(["logger=wandb"]).logger.mode == "offline"
