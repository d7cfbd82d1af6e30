"""The two nets the bench trains, their data, and the config our trainer runs them with.

- mlp: the Fig. 1 net (784-100-100-100-10, sigmoid, BN on every hidden layer, batch 60) on
  MNIST, binarised as the paper's "28x28 binary images" (experiment=fig1_mnist).
- cnn: the quick CIFAR CNN of the experiments (model=cnn at width_multiplier 0.5: stages of
  8, 16, 32 channels, BN, ReLU, a 128-unit hidden layer), batch 64, SGD with fig2's momentum
  0.9 and weight decay 5e-4. Its images are random uint8 of CIFAR's shape: step times do not
  depend on pixel values, and the bench then needs no CIFAR download.
- the long tier's conv nets (CONV_NETS, LONG_NETS): the full-width quick CNN, the VGG-style
  net at width 0.25 and a ResNet-20, trained the same way on the same kind of images.

Every row of a net trains on the same uint8 tensors in memory (but the tutorial loop, which
reads MNIST through torchvision). Our trainer gets them through `trainer_dataset`, with the
test split and the validation split cut to `eval_images`: its evaluations at step 0 and at the
end are not timed, only waited for.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from bnrepro import train
from bnrepro.config import compose_config
from bnrepro.data.datasets import Dataset, InputTransform, load_dataset
from bnrepro.models.cnn import stage_widths
from bnrepro.models.resnet import blocks_per_stage

EVAL_IMAGES = 1000  # validation and test images of our trainer's (untimed) evaluations
CNN_TRAIN_IMAGES = 10_000  # random CIFAR-shaped training images


def cheap_evaluation(eval_images: int) -> list[str]:
    """Knobs of evaluations only (they do not touch a training step): our trainer's
    evaluations at step 0 and at the end stay short."""
    return ["probe.networks=[]", "trainer.population_batches=1",
            f"dataset.val_size={eval_images}", "probe.residual_variance=false"]


@dataclass
class Workload:
    """A net, its training data in memory, and how every row of the bench trains it."""

    net: str
    dataset: Dataset  # what our trainer reads (uint8); peers index its training split
    transform: InputTransform  # uint8 -> network input, as our trainer applies it
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    config: DictConfig  # our trainer's config for seed 0
    build: Callable[[], nn.Module]  # the net as a plain nn.Sequential (the peers' net)
    device: torch.device

    @property
    def images(self) -> torch.Tensor:
        return self.dataset.train_images

    @property
    def labels(self) -> torch.Tensor:
        return self.dataset.train_labels

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        return self.transform(images)

    def population(self, size: int, extra: Sequence[str] = ()) -> list[DictConfig]:
        """Configs of a population of `size` members (seeds 0..size-1): `config` with the
        `extra` overrides (key=value, values parsed as YAML, keys that exist)."""
        return population(OmegaConf.merge(self.config, OmegaConf.from_dotlist(list(extra))),
                          size)


def population(cfg: DictConfig, size: int) -> list[DictConfig]:
    """`size` copies of cfg with seeds 0..size-1 (composing each would take ~0.5 s)."""
    configs = []
    for seed in range(size):
        member = copy.deepcopy(cfg)
        member.seed = seed
        configs.append(member)
    return configs


def _cut_test_split(ds: Dataset, size: int) -> Dataset:
    return Dataset(ds.name, ds.train_images, ds.train_labels, ds.test_images[:size],
                   ds.test_labels[:size])


def mlp_workload(root: str | Path, device: torch.device, eval_images: int = EVAL_IMAGES
                 ) -> Workload:
    # torch's default threads, as every peer row runs (make fig1 itself uses one per norm)
    cfg = compose_config(["experiment=fig1_mnist", "trainer.threads=null",
                          *cheap_evaluation(eval_images)])
    ds = _cut_test_split(load_dataset("mnist", root), eval_images)
    hidden = list(cfg.model.hidden)

    def build() -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out in zip([784, *hidden[:-1]], hidden, strict=True):
            layers += [nn.Linear(n_in, n_out, bias=False), nn.BatchNorm1d(n_out), nn.Sigmoid()]
        return nn.Sequential(*layers, nn.Linear(hidden[-1], 10)).to(device)

    return Workload("mlp", ds.to(device), InputTransform(ds, binarize=True),
                    cfg.trainer.batch_size, cfg.optim.lr, cfg.optim.momentum,
                    cfg.optim.weight_decay, cfg, build, device)


def random_cifar(num_train: int, num_test: int, seed: int = 0) -> Dataset:
    """uint8 images of CIFAR-10's shape with random pixels and labels (timing only)."""
    g = torch.Generator().manual_seed(seed)
    return Dataset("cifar10",
                   torch.randint(0, 256, (num_train, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.randint(0, 10, (num_train,), generator=g),
                   torch.randint(0, 256, (num_test, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.randint(0, 10, (num_test,), generator=g))


# The conv nets of the bench: name -> (title, our trainer's overrides). "cnn" is the quick CNN
# of the experiments; the others are what the long tier trains for hours (conf/profile/long/):
# the full-width quick CNN, the VGG-style net at the long tier's width (stages of 16, 32, 64,
# 128 channels, 2 convs each) and a ResNet-20 (pre-activation, BN; width 0.5: 8, 16, 32).
CONV_NETS: dict[str, tuple[str, list[str]]] = {
    "cnn": ("quick CIFAR CNN (model=cnn, width 0.5, BN, ReLU, batch 64, random uint8 images)",
            ["model=cnn", "model.width_multiplier=0.5", "trainer.batch_size=64"]),
    "cnn_w1": ("full-width quick CNN (model=cnn, width 1.0: 16-32-64, batch 64)",
               ["model=cnn", "model.width_multiplier=1.0", "trainer.batch_size=64"]),
    "vgg": ("VGG-style net (model=cnn_paper, width 0.25: 2 x 16-32-64-128, batch 128)",
            ["model=cnn_paper", "model.width_multiplier=0.25", "trainer.batch_size=128"]),
    "resnet20": ("ResNet-20 (model=resnet, depth 20, width 0.5: 8-16-32, BN, batch 64)",
                 ["model=resnet", "model.depth=20", "model.width_multiplier=0.5",
                  "trainer.batch_size=64"]),
}
LONG_NETS = ("cnn_w1", "vgg", "resnet20")  # `make bench`'s long-tier section


def cnn_workload(device: torch.device, num_train: int = CNN_TRAIN_IMAGES,
                 eval_images: int = EVAL_IMAGES, net: str = "cnn") -> Workload:
    """A conv net of CONV_NETS on random CIFAR-shaped images: SGD with fig2's momentum 0.9
    and weight decay 5e-4 at rate 0.01."""
    cfg = compose_config([*CONV_NETS[net][1], "dataset=cifar10", "optim.lr=0.01",
                          "optim.momentum=0.9", "optim.weight_decay=5e-4",
                          *cheap_evaluation(eval_images)])
    m = cfg.model
    plain = PLAIN_NETS[m.kind]
    plain.check(m)
    ds = random_cifar(num_train, eval_images)
    return Workload(net, ds.to(device), InputTransform(ds, standardize=True),
                    cfg.trainer.batch_size, cfg.optim.lr, cfg.optim.momentum,
                    cfg.optim.weight_decay, cfg, lambda: plain.build(m).to(device), device)


@dataclass(frozen=True)
class PlainNet:
    """How the peers build a model kind as plain torch modules, and the config it mirrors."""

    build: Callable[[DictConfig], nn.Module]
    check: Callable[[DictConfig], None]


def _check_vgg(m: DictConfig) -> None:
    if m.norm != "bn" or m.activation != "relu" or m.dropout or not m.classifier_norm:
        raise ValueError("the bench's plain CNN mirrors model=cnn and model=cnn_paper with BN, "
                         "ReLU and no dropout; conf/model/ changed")


def _plain_vgg(m: DictConfig) -> nn.Module:
    """conv3x3 -> BN -> ReLU (convs_per_stage per stage) -> 2x2 max-pool, per stage; then
    flatten -> linear -> BN -> ReLU -> linear: models.cnn's net."""
    widths = stage_widths(m.widths, m.width_multiplier)
    depths = [m.convs_per_stage] * len(widths) if isinstance(m.convs_per_stage, int) \
        else list(m.convs_per_stage)
    layers: list[nn.Module] = []
    channels = 3
    for width, depth in zip(widths, depths, strict=True):
        for _ in range(depth):
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        layers.append(nn.MaxPool2d(2))
    size = 32 // 2 ** len(widths)
    layers += [nn.Flatten(), nn.Linear(channels * size * size, m.classifier_hidden, bias=False),
               nn.BatchNorm1d(m.classifier_hidden), nn.ReLU(),
               nn.Linear(m.classifier_hidden, 10)]
    return nn.Sequential(*layers)


class PlainBlock(nn.Module):
    """A pre-activation block as a user writes it: skip(x) + conv(relu(bn(conv(relu(bn(x)))))),
    the skip a 1x1 conv where the block downsamples or widens (models.resnet's block with
    residual_scale none). That 1x1 conv reads every stride-th position at stride 1, the same
    conv as nn.Conv2d(stride=2): oneDNN's strided 1x1 backward corrupts memory on
    channels_last inputs with few channels (models/layers.py), and the channels_last row would
    crash."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.bn1, self.bn2 = nn.BatchNorm2d(in_channels), nn.BatchNorm2d(out_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, bias=False) \
            if stride != 1 or in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(torch.relu(self.bn2(self.conv1(torch.relu(self.bn1(x))))))
        if self.shortcut is None:
            return x + h
        return self.shortcut(x[:, :, ::self.stride, ::self.stride]) + h


def _check_resnet(m: DictConfig) -> None:
    if m.norm != "bn" or m.activation != "relu" or m.dropout or m.residual_scale != "none":
        raise ValueError("the bench's plain ResNet mirrors model=resnet with BN, ReLU, "
                         "residual_scale none and no dropout; conf/model/resnet.yaml changed")


def _plain_resnet(m: DictConfig) -> nn.Module:
    """stem conv3x3 -> 3 stages of (depth - 2) / 6 PlainBlocks -> BN -> ReLU -> global average
    pool -> linear: models.resnet's net."""
    widths = stage_widths(m.widths, m.width_multiplier)
    layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1, bias=False)]
    channels = widths[0]
    for s, width in enumerate(widths):
        for b in range(blocks_per_stage(m.depth)):
            layers.append(PlainBlock(channels, width, 2 if s > 0 and b == 0 else 1))
            channels = width
    layers += [nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(channels, 10)]
    return nn.Sequential(*layers)


PLAIN_NETS = {"cnn": PlainNet(_plain_vgg, _check_vgg),
              "resnet": PlainNet(_plain_resnet, _check_resnet)}


@contextlib.contextmanager
def trainer_dataset(ds: Dataset) -> Iterator[None]:
    """Our trainer reads `ds` instead of loading its configured dataset."""
    cpu = ds.to("cpu")  # as load_dataset returns it; the trainer moves it to its device
    with mock.patch.object(train, "load_dataset", lambda *args, **kwargs: cpu):
        yield


class IndexStream:
    """Per member, a fresh random order of the training examples every epoch, cut into
    batches: what a plain loop's sampler does, for P members at once."""

    def __init__(self, num_examples: int, batch_size: int, population_size: int,
                 device: torch.device, seed: int = 0):
        self.num_examples, self.batch_size, self.P = num_examples, batch_size, population_size
        self.steps_per_epoch = num_examples // batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.device, self.position = device, 0
        self.order = torch.empty(0)

    def next(self) -> torch.Tensor:
        """Indices [P, batch_size]."""
        if self.position % self.steps_per_epoch == 0:
            noise = torch.rand(self.P, self.num_examples, generator=self.generator)
            self.order = noise.argsort(1).to(self.device)
        start = self.position % self.steps_per_epoch * self.batch_size
        self.position += 1
        return self.order[:, start:start + self.batch_size]
