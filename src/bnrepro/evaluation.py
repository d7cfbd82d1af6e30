"""What is measured at every evaluation: test loss and accuracy, and the probes.

Inputs are prepared once and fed to every member (shared): the whole test set, a fixed probe
batch (the same examples every time), and fixed training mini-batches for Alg. 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from bnrepro.data import Dataset, InputTransform
from bnrepro.norm import bn_mode, estimate_population_statistics
from bnrepro.probes import sigmoid_input_quantiles
from bnrepro.sampling import fixed_subset

CHUNK = 5000  # examples per forward pass: bounds memory for large populations


@torch.no_grad()
def test_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[list[float], list[float]]:
    """Mean cross-entropy and accuracy per member on (x, y)."""
    loss_sum = correct = 0
    for start in range(0, len(x), CHUNK):
        logits = model(x[start:start + CHUNK], shared=True)  # [P, n, C]
        target = y[start:start + CHUNK].expand(logits.shape[0], -1)
        loss_sum = loss_sum + F.cross_entropy(logits.transpose(1, 2), target,
                                              reduction="none").sum(1)
        correct = correct + (logits.argmax(-1) == target).sum(1)
    return (loss_sum / len(x)).tolist(), [c / len(x) for c in correct.tolist()]


class Evaluator:
    def __init__(self, cfg: DictConfig, ds: Dataset, transform: InputTransform):
        device = ds.test_images.device
        self.cfg = cfg
        self.batch_size = cfg.trainer.batch_size
        self.test_x, self.test_y = transform(ds.test_images), ds.test_labels
        self.probe_x = self.test_x[fixed_subset(len(self.test_x),
                                                cfg.probe.num_examples).to(device)]
        population = fixed_subset(len(ds.train_labels),
                                  cfg.trainer.population_batches * self.batch_size)
        self.population_x = transform(ds.train_images[population.to(device)])

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> list[dict[str, float]]:
        """Per member: test/loss, test/acc and the act/h{i}/... probes. Leaves model in eval."""
        model.eval()
        if self.cfg.model.norm == "bn" and self.cfg.model.bn_inference == "population":
            chunk = max(1, CHUNK // self.batch_size) * self.batch_size  # whole mini-batches
            estimate_population_statistics(model, self.population_x.split(chunk),
                                           self.batch_size, lambda x: model(x, shared=True))
        with bn_mode(model, "eval"):
            losses, accs = test_metrics(model, self.test_x, self.test_y)
        preactivations: list[torch.Tensor] = []
        with bn_mode(model, "batch"):  # the training network N_BN^tr, as in Fig. 1(b, c)
            model(self.probe_x, preactivations, shared=True)
        probes = sigmoid_input_quantiles(preactivations, self.cfg.probe.unit,
                                         self.cfg.probe.quantiles)
        return [{"test/loss": loss, "test/acc": acc, **probe}
                for loss, acc, probe in zip(losses, accs, probes, strict=True)]
