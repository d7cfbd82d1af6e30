"""What is measured at every evaluation: validation and test loss and accuracy, and probes.

Inputs are prepared once and fed to every member (shared):
- the validation split (`dataset.val_size` images held out from the training set: every
  selection and every "steps to reach X" uses it) and the test set (the reported curves);
- fixed training mini-batches for Alg. 2's population statistics;
- two probe sets for Fig. 1 (b, c), each a network the paper defines:
    `act/...`       the inference network (BN with Alg. 2's statistics: what the trained model
                    computes) on `probe.num_examples` fixed validation images;
    `act_train/...` the training network N_BN^tr on as many fixed training images, in
                    mini-batches of `trainer.batch_size`, each normalised by its own statistics.
- for models with residual blocks (MODELS[kind].residual) and probe.residual_variance:
    `resid/b{i}/...` De & Smith's branch/skip variances per block i (from 1), see
                    residual_variance.py: the training network (as `act_train`: the same
                    fixed training images, probe.num_examples rounded down to whole
                    mini-batches of trainer.batch_size, each mini-batch normalised by its own
                    statistics, nothing updated, no dropout; a noisy norm's noise as in
                    `act_train`); per member and block, the variance over all those images,
                    channels and positions of the skip term s(x_l) and of the branch term
                    alpha_l * f(x_l), and var_ratio = var_branch / var_skip. Step 0's
                    evaluation gives the values at initialisation.
On each probe set, also the distributional shift of every hidden layer since step 0 and since
the previous evaluation (shift.py; `shift/...` for the training network, the one that trains
and that Santurkar et al. look at, `shift_inference/...` for the inference network;
probe.shift). The training network's probes of a noisy norm
(noisy_bn, noise_only) include its noise (probe.train_noise), drawn for this evaluation from
the probe stream (norms/noisy.py: ProbeNoise): that is the network that trains.
Forward passes run in chunks sized from `trainer.eval_memory_mb` and the model's widest layer,
so a wide CNN population never materialises thousands of examples' activations at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from bnrepro.data import Dataset, InputTransform
from bnrepro.models import MODELS
from bnrepro.norms import norm_spec
from bnrepro.norms.batch import bn_mode, estimate_population_statistics
from bnrepro.norms.noisy import probe_noise
from bnrepro.probes import ProbeCollector
from bnrepro.residual_variance import ResidualMoments
from bnrepro.sampling import fixed_subset
from bnrepro.shift import ShiftTracker, UnitValues

PROBE_NETWORKS = {"inference": "act", "training": "act_train"}  # probe.networks -> key prefix
SHIFT_PREFIX = {"act_train": "shift", "act": "shift_inference"}  # probe prefix -> shift keys
# Float tensors of the widest layer's size alive at once in one forward pass (input, output
# and the normalisation's temporaries): the chunk size divides the budget by this much.
LIVE_ACTIVATIONS = 4


def examples_per_chunk(model: nn.Module, memory_mb: float, multiple: int = 1) -> int:
    """How many examples one forward pass may take within `memory_mb`, rounded down to a
    multiple of `multiple` (whole mini-batches), and at least `multiple`."""
    per_example = model.widest_activation * 4 * LIVE_ACTIVATIONS  # float32 bytes
    fits = int(memory_mb * 2**20) // per_example
    return max(multiple, fits // multiple * multiple)


@torch.no_grad()
def loss_and_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int
                      ) -> tuple[list[float], list[float]]:
    """Mean cross-entropy and accuracy per member on (x, y)."""
    loss_sum = correct = 0
    for start in range(0, len(x), chunk):
        logits = model(x[start:start + chunk], shared=True)  # [P, n, C]
        target = y[start:start + chunk].expand(logits.shape[0], -1)
        loss_sum = loss_sum + F.cross_entropy(logits.transpose(1, 2), target,
                                              reduction="none").sum(1)
        correct = correct + (logits.argmax(-1) == target).sum(1)
    return (loss_sum / len(x)).tolist(), [c / len(x) for c in correct.tolist()]


class Evaluator:
    """`seeds`: the members' seeds (the probe noise of noisy norms; default: cfg.seed for
    every member)."""

    def __init__(self, cfg: DictConfig, ds: Dataset, transform: InputTransform,
                 train_index: torch.Tensor, val_index: torch.Tensor,
                 seeds: Sequence[int] | None = None):
        device = ds.train_images.device
        self.cfg = cfg
        self.seeds = None if seeds is None else list(seeds)
        shift = cfg.probe.get("shift") or {}
        self.shift = ShiftTracker(shift["levels"]) if shift.get("enabled") else None
        self.max_values_per_unit = shift.get("max_values_per_unit", 0)
        self.train_noise = bool(cfg.probe.get("train_noise", False))
        self.batch_size = cfg.trainer.batch_size
        self.memory_mb = cfg.trainer.eval_memory_mb

        def images(index: torch.Tensor) -> torch.Tensor:
            return transform(ds.train_images[index.to(device)])

        self.val_x, self.val_y = images(val_index), ds.train_labels[val_index.to(device)]
        self.test_x, self.test_y = transform(ds.test_images), ds.test_labels
        self.alg2_x = images(train_index[fixed_subset(
            len(train_index), cfg.trainer.population_batches * self.batch_size)])
        num_probe = cfg.probe.num_examples
        self.probe_sets = {}  # key prefix -> (inputs, BN mode, examples per BN batch)
        if "inference" in cfg.probe.networks:
            self.probe_sets["act"] = (self.val_x[fixed_subset(len(self.val_x), num_probe)
                                                 .to(device)], "eval", 0)
        size = max(1, num_probe // self.batch_size) * self.batch_size  # whole mini-batches
        train_probe = None  # the training network's probe images, made when first needed
        if "training" in cfg.probe.networks:
            train_probe = images(train_index[fixed_subset(len(train_index), size, seed=1)])
            self.probe_sets["act_train"] = (train_probe, "batch", self.batch_size)
        self.residual_x = None
        spec = MODELS.get(cfg.model.kind)
        if cfg.probe.get("residual_variance", True) and spec is not None and spec.residual:
            self.residual_x = train_probe if train_probe is not None else images(
                train_index[fixed_subset(len(train_index), size, seed=1)])
        # Alg. 2 for the norms it applies to (BN, noisy BN); the others infer with moving
        # averages (Batch Renorm, l_p) or need no batch (LN, GN, IN, none).
        self.population_statistics = norm_spec(cfg.model.norm).population_statistics and \
            cfg.model.bn_inference == "population"

    def resumable(self) -> dict:
        """Per-member state a checkpoint must carry for a resumed run to log what an
        uninterrupted one does (checkpoint.save / restore `extras`)."""
        return {"shift": self.shift} if self.shift is not None else {}

    @torch.no_grad()
    def __call__(self, model: nn.Module, with_test: bool = True, step: int = 0
                 ) -> list[dict[str, float]]:
        """Per member: val/loss, val/acc, test/loss and test/acc (unless not `with_test`), the
        probes and the shift. `step` is the training step (it seeds the probe noise). Leaves
        model in eval mode."""
        model.eval()
        self.estimate_statistics(model)
        rows = self.losses(model, with_test)
        for row, probes in zip(rows, self.probes(model, step), strict=True):
            row |= probes
        return rows

    @torch.no_grad()
    def estimate_statistics(self, model: nn.Module) -> None:
        """Alg. 2's population statistics of the BN layers, where inference uses them."""
        if self.population_statistics:
            estimate_population_statistics(
                model, self.alg2_x.split(examples_per_chunk(model, self.memory_mb,
                                                            self.batch_size)),
                self.batch_size, lambda x: model(x, shared=True))

    @torch.no_grad()
    def losses(self, model: nn.Module, with_test: bool = True) -> list[dict[str, float]]:
        """Per member: validation (and test) loss and accuracy of the inference network."""
        chunk = examples_per_chunk(model, self.memory_mb)
        with bn_mode(model, "eval"):
            val = loss_and_accuracy(model, self.val_x, self.val_y, chunk)
            rows = [{"val/loss": vl, "val/acc": va} for vl, va in zip(*val, strict=True)]
            if with_test:
                for row, tl, ta in zip(rows, *loss_and_accuracy(model, self.test_x, self.test_y,
                                                                chunk), strict=True):
                    row |= {"test/loss": tl, "test/acc": ta}
        return rows

    @torch.no_grad()
    def probes(self, model: nn.Module, step: int = 0) -> list[dict[str, float]]:
        """Per member: the probes of every probe set (empty dicts when there are none) and the
        shift; `step` is the training step (it seeds the probe noise)."""
        rows: list[dict[str, float]] = [{} for _ in range(model_population_size(model))]
        for prefix, (x, mode, batch) in self.probe_sets.items():
            collector = ProbeCollector(self.cfg.probe.unit, self.cfg.probe.quantiles, len(x),
                                       prefix)
            units = UnitValues(len(x), self.max_values_per_unit) if self.shift else None
            seeds = self.seeds or [self.cfg.seed] * len(rows)
            noise = probe_noise(model, seeds, step, batch) \
                if mode == "batch" and self.train_noise else nullcontext()
            with bn_mode(model, mode, batch), noise as draws:
                offset = 0
                for part in x.split(examples_per_chunk(model, self.memory_mb, max(batch, 1))):
                    if draws is not None:
                        draws.offset = offset
                    preactivations: list[torch.Tensor] = []
                    model(part, preactivations, shared=True)
                    collector.add(preactivations)
                    if units is not None:
                        units.add(preactivations)
                    offset += len(part)
            for row, probes in zip(rows, collector.result(), strict=True):
                row |= probes
            if units is not None:
                shift = self.shift.update(SHIFT_PREFIX[prefix],
                                          units.sketches(self.shift.levels))
                for row, values in zip(rows, shift, strict=True):
                    row |= values
        if self.shift is not None:
            self.shift.finish_evaluation()
        if self.residual_x is not None:
            for row, variances in zip(rows, self.residual_variances(model, step), strict=True):
                row |= variances
        return rows

    @torch.no_grad()
    def residual_variances(self, model: nn.Module, step: int = 0) -> list[dict[str, float]]:
        """resid/b{i}/var_skip, var_branch, var_ratio per member (module docstring)."""
        moments = ResidualMoments()
        seeds = self.seeds or [self.cfg.seed] * model_population_size(model)
        noise = probe_noise(model, seeds, step, self.batch_size) if self.train_noise \
            else nullcontext()
        with bn_mode(model, "batch", self.batch_size), noise as draws:
            offset = 0
            for part in self.residual_x.split(examples_per_chunk(model, self.memory_mb,
                                                                 self.batch_size)):
                if draws is not None:
                    draws.offset = offset
                model(part, shared=True, moments=moments)
                offset += len(part)
        return moments.result()


def model_population_size(model: nn.Module) -> int:
    """P: the leading dimension every parameter of a population model has."""
    return next(model.parameters()).shape[0]
