"""What is measured at every evaluation: validation and test loss and accuracy, and probes.

Inputs are prepared once and fed to every member (shared):
- the validation split (`dataset.val_size` images held out from the training set: every
  selection and every "steps to reach X" uses it) and the test set (the reported curves; a
  fixed random subset of `trainer.test_examples` test images when set, the same for every run);
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
Forward passes run in chunks sized from `trainer.eval_memory_mb` (scaled up on a GPU:
device.py) and the model's widest layer, so a wide CNN population never materialises
thousands of examples' activations at once. Everything stays on the training device until the
per-member numbers are read back.

The train/inference gap (`probe.inference_gap: true`; off by default, then nothing below is
computed). For a norm with batch statistics (NormSpec.batch_statistics: bn, noisy_bn, brn,
lp1, lp2, lpinf) the test set is scored three ways, at every evaluation that scores it:
    test/acc, test/loss                  the configured inference network, as always: BN and
                                         noisy BN with Alg. 2's population statistics
                                         (model.bn_inference=population) or their moving
                                         averages (=running); Batch Renorm and l_p with their
                                         moving averages (their only inference);
    test/acc_batch, test/loss_batch      the training network N_BN^tr: the test images in a
                                         fixed random order (the same for every run; the
                                         mirrors are sorted by class), cut into mini-batches
                                         of trainer.batch_size, each normalised by its own
                                         statistics (bn_mode "batch"; Batch Renorm with its
                                         r, d clipped as at the last training step; no
                                         training noise). A last, short mini-batch is filled
                                         up with the first images of the order, which are not
                                         scored twice: every image is scored once, always in a
                                         mini-batch of exactly trainer.batch_size;
    test/acc_running, test/loss_running  the moving averages (the EMA most frameworks infer
                                         with), whatever model.bn_inference says: for BN and
                                         noisy BN with Alg. 2 configured, a separate pass with
                                         their running_mean/var (updated at every training
                                         step either way: rate bn_momentum, torch's unbiased
                                         batch variance); where the configured inference
                                         already is the moving averages (Batch Renorm, l_p,
                                         BN with bn_inference=running) it is test/acc itself,
                                         copied, not recomputed.
Norms without batch statistics (none, ln, gn, in, noise_only) compute the same function in
training and inference: they log test/acc and test/loss only; the _batch and _running keys are
absent (not copies), so a table never mistakes a copy for a measurement.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from bnrepro.data.datasets import Dataset, InputTransform
from bnrepro.data.sampling import fixed_subset
from bnrepro.device import eval_memory_mb
from bnrepro.measures.probes import ProbeCollector
from bnrepro.measures.shift import LayerSketch, ShiftTracker, UnitValues, successive_shift
from bnrepro.models import MODELS
from bnrepro.models.residual_variance import ResidualMoments
from bnrepro.norms import norm_spec
from bnrepro.norms.batch import bn_inference, bn_mode, estimate_population_statistics
from bnrepro.norms.noisy import probe_noise

PROBE_NETWORKS = {"inference": "act", "training": "act_train"}  # probe.networks -> key prefix
SHIFT_PREFIX = {"act_train": "shift", "act": "shift_inference"}  # probe prefix -> shift keys
# Float tensors of the widest layer's size alive at once in one forward pass (input, output
# and the normalisation's temporaries): the chunk size divides the budget by this much.
LIVE_ACTIVATIONS = 4
# Seeds of fixed_subset draws from the test set, distinct so that the two draws are unrelated:
TEST_SUBSET_SEED = 3  # which images trainer.test_examples keeps
BATCH_ORDER_SEED = 4  # the order in which test/acc_batch cuts the test images into mini-batches


def examples_per_chunk(model: nn.Module, memory_mb: float, multiple: int = 1) -> int:
    """How many examples one forward pass may take within `memory_mb`, rounded down to a
    multiple of `multiple` (whole mini-batches), and at least `multiple`."""
    per_example = model.widest_activation * 4 * LIVE_ACTIVATIONS  # float32 bytes
    fits = int(memory_mb * 2**20) // per_example
    return max(multiple, fits // multiple * multiple)


def _summed_scores(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and number correct per member: logits [P, n, C], labels [n]."""
    target = y.expand(logits.shape[0], -1)
    loss = F.cross_entropy(logits.transpose(1, 2), target, reduction="none").sum(1)
    return loss, (logits.argmax(-1) == target).sum(1)


@torch.no_grad()
def loss_and_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int
                      ) -> tuple[list[float], list[float]]:
    """Mean cross-entropy and accuracy per member on (x, y)."""
    loss_sum = correct = 0
    for start in range(0, len(x), chunk):
        loss, right = _summed_scores(model(x[start:start + chunk], shared=True),  # [P, n, C]
                                     y[start:start + chunk])
        loss_sum, correct = loss_sum + loss, correct + right
    return (loss_sum / len(x)).tolist(), [c / len(x) for c in correct.tolist()]


@torch.no_grad()
def batch_statistics_loss_and_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                                       order: torch.Tensor, batch_size: int, memory_mb: float
                                       ) -> tuple[list[float], list[float]]:
    """Mean cross-entropy and accuracy per member of the training network N_BN^tr on (x, y):
    the examples taken in `order` (a permutation of x's indices), cut into consecutive
    mini-batches of `batch_size`, each normalised by its own statistics (bn_mode "batch").
    When batch_size does not divide len(x) the last mini-batch is completed with the first
    examples of `order` again; those are not scored twice, so every example is scored once,
    always in a mini-batch of exactly batch_size."""
    n = len(order)
    index = order[torch.arange(n + -n % batch_size, device=order.device) % n]
    chunk = examples_per_chunk(model, memory_mb, batch_size)  # whole mini-batches
    loss_sum = correct = 0
    with bn_mode(model, "batch", batch_size):
        for start in range(0, len(index), chunk):
            part = index[start:start + chunk]
            scored = min(len(part), n - start)  # past n: the fill of the last mini-batch
            loss, right = _summed_scores(model(x[part], shared=True)[:, :scored],
                                         y[part[:scored]])
            loss_sum, correct = loss_sum + loss, correct + right
    return (loss_sum / n).tolist(), [c / n for c in correct.tolist()]


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
        self.shift = (ShiftTracker(shift["levels"], None if seeds is None else len(seeds))
                      if shift.get("enabled") else None)
        self.max_values_per_unit = shift.get("max_values_per_unit", 0)
        # The shift between two successive training steps (w1_step): the training network's
        # sketches after the step before an evaluation, until that evaluation uses them.
        self.successive = self.shift is not None and bool(shift.get("successive", False))
        self.step_before: list[LayerSketch] | None = None
        self.train_noise = bool(cfg.probe.get("train_noise", False))
        self.batch_size = cfg.trainer.batch_size
        # The mini-batch a training step normalises by: a ghost batch, else the SGD batch. The
        # training network's probes and Alg. 2's collect pass use it (groups of norm_batch).
        self.norm_batch = cfg.model.get("bn_ghost_batch", 0) or self.batch_size
        self.memory_mb = eval_memory_mb(cfg.trainer.eval_memory_mb, device)

        def images(index: torch.Tensor) -> torch.Tensor:
            return transform(ds.train_images[index.to(device)])

        self.val_x, self.val_y = images(val_index), ds.train_labels[val_index.to(device)]
        self.test_x, self.test_y = transform(ds.test_images), ds.test_labels
        if cfg.trainer.get("test_examples"):
            keep = fixed_subset(len(self.test_y), cfg.trainer.test_examples,
                                TEST_SUBSET_SEED).to(device)
            self.test_x, self.test_y = self.test_x[keep], self.test_y[keep]
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
            self.probe_sets["act_train"] = (train_probe, "batch", self.norm_batch)
        self.residual_x = None
        spec = MODELS.get(cfg.model.kind)
        if cfg.probe.get("residual_variance", True) and spec is not None and spec.residual:
            self.residual_x = train_probe if train_probe is not None else images(
                train_index[fixed_subset(len(train_index), size, seed=1)])
        # Alg. 2 for the norms it applies to (BN, noisy BN); the others infer with moving
        # averages (Batch Renorm, l_p) or need no batch (LN, GN, IN, none).
        self.population_statistics = norm_spec(cfg.model.norm).population_statistics and \
            cfg.model.bn_inference == "population"
        # The train/inference gap: only norms whose training network differs from inference.
        self.batch_order = None
        if cfg.probe.get("inference_gap", False) and norm_spec(cfg.model.norm).batch_statistics:
            self.batch_order = fixed_subset(len(self.test_y), len(self.test_y),
                                            BATCH_ORDER_SEED).to(device)

    @torch.no_grad()
    def _inference_gap(self, model: nn.Module, rows: list[dict[str, float]],
                       test: tuple[list[float], list[float]], chunk: int) -> None:
        """Add test/{loss,acc}_batch and test/{loss,acc}_running to every member's row (see the
        module docstring); `test` is the configured inference's (losses, accuracies)."""
        batch = batch_statistics_loss_and_accuracy(model, self.test_x, self.test_y,
                                                   self.batch_order, self.norm_batch,
                                                   self.memory_mb)
        running = test  # the configured inference already uses the moving averages
        if self.population_statistics:
            with bn_inference(model, "running"), bn_mode(model, "eval"):
                running = loss_and_accuracy(model, self.test_x, self.test_y, chunk)
        for k, row in enumerate(rows):
            row |= {"test/loss_batch": batch[0][k], "test/acc_batch": batch[1][k],
                    "test/loss_running": running[0][k], "test/acc_running": running[1][k]}

    def resumable(self) -> dict:
        """The parts of the run state (bnrepro.state.MemberState) a checkpoint must carry for a
        resumed run to log what an uninterrupted one does, by name (train.run_state)."""
        return {"shift": self.shift} if self.shift is not None else {}

    @torch.no_grad()
    def __call__(self, model: nn.Module, with_test: bool = True, step: int = 0
                 ) -> list[dict[str, float]]:
        """Per member: val/loss, val/acc, test/loss and test/acc (unless not `with_test`; with
        probe.inference_gap also the _batch and _running test keys, see the module
        docstring), the probes and the shift. `step` is the training step (it seeds the probe
        noise). Leaves model in eval mode."""
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
                self.norm_batch, lambda x: model(x, shared=True))

    @torch.no_grad()
    def losses(self, model: nn.Module, with_test: bool = True) -> list[dict[str, float]]:
        """Per member: validation (and test) loss and accuracy of the inference network."""
        chunk = examples_per_chunk(model, self.memory_mb)
        with bn_mode(model, "eval"):
            val = loss_and_accuracy(model, self.val_x, self.val_y, chunk)
            rows = [{"val/loss": vl, "val/acc": va} for vl, va in zip(*val, strict=True)]
            if with_test:
                test = loss_and_accuracy(model, self.test_x, self.test_y, chunk)
                for row, tl, ta in zip(rows, *test, strict=True):
                    row |= {"test/loss": tl, "test/acc": ta}
        if with_test and self.batch_order is not None:
            self._inference_gap(model, rows, test, chunk)
        return rows

    @torch.no_grad()
    def probes(self, model: nn.Module, step: int = 0) -> list[dict[str, float]]:
        """Per member: the probes of every probe set (empty dicts when there are none) and the
        shift; `step` is the training step (it seeds the probe noise)."""
        rows: list[dict[str, float]] = [{} for _ in range(model_population_size(model))]
        for prefix, (x, _, _) in self.probe_sets.items():
            collector = ProbeCollector(self.cfg.probe.unit, self.cfg.probe.quantiles, len(x),
                                       prefix)
            units = UnitValues(len(x), self.max_values_per_unit) if self.shift else None
            self._probe_forward(model, prefix, step, [collector, *([units] if units else [])])
            for row, probes in zip(rows, collector.result(), strict=True):
                row |= probes
            if units is not None:
                sketches = units.sketches(self.shift.levels)
                shift = self.shift.update(SHIFT_PREFIX[prefix], sketches)
                if prefix == "act_train" and self.step_before is not None:
                    shift = [r | s for r, s in zip(shift, successive_shift(
                        SHIFT_PREFIX[prefix], self.step_before, sketches), strict=True)]
                for row, values in zip(rows, shift, strict=True):
                    row |= values
        self.step_before = None
        if self.shift is not None:
            self.shift.finish_evaluation()
        if self.residual_x is not None:
            for row, variances in zip(rows, self.residual_variances(model, step), strict=True):
                row |= variances
        return rows

    @torch.no_grad()
    def _probe_forward(self, model: nn.Module, prefix: str, step: int, sinks: Sequence) -> None:
        """One pass of probe set `prefix` through `model` in its BN mode (the training
        network's with the noise of `step` for noisy norms, probe.train_noise), each chunk's
        inputs to the nonlinearity handed to every sink's `add`. Updates no statistic and
        draws from no training stream."""
        x, mode, batch = self.probe_sets[prefix]
        seeds = self.seeds or [self.cfg.seed] * model_population_size(model)
        noise = probe_noise(model, seeds, step, batch) \
            if mode == "batch" and self.train_noise else nullcontext()
        with bn_mode(model, mode, batch), noise as draws:
            offset = 0
            for part in x.split(examples_per_chunk(model, self.memory_mb, max(batch, 1))):
                if draws is not None:
                    draws.offset = offset
                preactivations: list[torch.Tensor] = []
                model(part, preactivations, shared=True)
                for sink in sinks:
                    sink.add(preactivations)
                offset += len(part)

    @torch.no_grad()
    def before_evaluation(self, model: nn.Module, step: int) -> None:
        """Call after the update of `step` when step + 1 evaluates (probe.shift.successive):
        the training network's probe sketches at this step, against which the next
        evaluation measures the shift between two successive steps (w1_step, module
        docstring). The model is put in eval mode for the pass (no dropout, no training
        noise) and left in train mode; nothing that training reads changes."""
        if not (self.successive and "act_train" in self.probe_sets):
            return
        x = self.probe_sets["act_train"][0]
        units = UnitValues(len(x), self.max_values_per_unit)
        model.eval()
        try:
            self._probe_forward(model, "act_train", step, [units])
        finally:
            model.train()
        self.step_before = units.sketches(self.shift.levels)

    @torch.no_grad()
    def residual_variances(self, model: nn.Module, step: int = 0) -> list[dict[str, float]]:
        """resid/b{i}/var_skip, var_branch, var_ratio per member (module docstring)."""
        moments = ResidualMoments()
        seeds = self.seeds or [self.cfg.seed] * model_population_size(model)
        noise = probe_noise(model, seeds, step, self.norm_batch) if self.train_noise \
            else nullcontext()
        with bn_mode(model, "batch", self.norm_batch), noise as draws:
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
