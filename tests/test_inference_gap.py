"""probe.inference_gap: BN's test accuracy with batch statistics, Alg. 2 and moving averages,
each checked against an independent computation on a population whose members differ."""

import copy
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F

from bnrepro.config import compose_config
from bnrepro.data.datasets import InputTransform
from bnrepro.data.sampling import fixed_subset, validation_split
from bnrepro.measures.evaluation import BATCH_ORDER_SEED, TEST_SUBSET_SEED, Evaluator
from bnrepro.models import build_model
from bnrepro.norms import set_norm_step
from bnrepro.norms.batch import BatchNorm
from bnrepro.norms.renorm import BatchRenorm
from bnrepro.run.checkpoint import fingerprint
from bnrepro.validation import config_problems

TEST_EXAMPLES = 50
BATCH = 7  # does not divide 50: the last mini-batch is filled up (wrap-around)
GAP_KEYS = ("test/loss_batch", "test/acc_batch", "test/loss_running", "test/acc_running")


@lru_cache
def config(norm: str, *extra: str):
    """The experiment's config, shrunk: small net, 500 validation images, Alg. 2 from 140."""
    return compose_config(["experiment=batchsize_mnist", f"model.norm={norm}",
                           "model.hidden=[20,20]", f"trainer.batch_size={BATCH}",
                           f"trainer.test_examples={TEST_EXAMPLES}", "dataset.val_size=500",
                           "batch_scaling.alg2_examples=140", *extra])


@pytest.fixture(scope="module")
def splits(mnist):
    cfg = config("bn")
    transform = InputTransform(mnist, cfg.dataset.binarize, cfg.dataset.standardize)
    train, val = validation_split(len(mnist.train_labels), cfg.dataset.val_size)
    keep = fixed_subset(len(mnist.test_labels), TEST_EXAMPLES, TEST_SUBSET_SEED)
    return transform, train, val, transform(mnist.test_images[keep]), mnist.test_labels[keep]


def population(norm: str, *extra: str):
    """Two members that differ (seeds, perturbed parameters and moving averages), trained 0
    steps; BN's moving averages are set far from Alg. 2's statistics."""
    cfgs = [config(norm, *extra, f"seed={s}") for s in (0, 1)]
    model = build_model(cfgs, (1, 28, 28))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for layer in model.modules():
            if isinstance(layer, BatchNorm):
                layer.running_mean.copy_(torch.randn_like(layer.running_mean))
                layer.running_var.copy_(0.5 + torch.rand_like(layer.running_var) * 3)
            if isinstance(layer, BatchRenorm):
                layer.running_mean.copy_(torch.randn_like(layer.running_mean))
                layer.running_std.copy_(0.5 + torch.rand_like(layer.running_std))
    set_norm_step(model, 10 ** 6)  # Batch Renorm fully relaxed: r and d clip at 3 and 5
    return cfgs, model


def scores(logits: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
    target = y.expand(logits.shape[0], -1)
    loss = F.cross_entropy(logits.transpose(1, 2), target, reduction="none").mean(1)
    return loss.tolist(), [c / len(y) for c in (logits.argmax(-1) == target).sum(1).tolist()]


@torch.no_grad()
def training_network(model, x: torch.Tensor, y: torch.Tensor, batch: int):
    """By hand: the test images in the fixed order, mini-batches of `batch`, the last one
    filled up with the first images of the order; each mini-batch through a fresh copy of the
    model in TRAINING mode (as the trainer calls it), only the new images scored."""
    n = len(y)
    order = fixed_subset(n, n, BATCH_ORDER_SEED)
    logits = []
    for start in range(0, n, batch):
        index = order[start:start + batch]
        scored = len(index)
        index = torch.cat([index, order[:batch - scored]])
        trained = copy.deepcopy(model).train()
        logits.append(trained(x[index], shared=True)[:, :scored])
    return scores(torch.cat(logits, 1), y[order])


@torch.no_grad()
def fixed_statistics_network(model, x: torch.Tensor, y: torch.Tensor, statistics: str):
    """By hand: the MLP with every BN layer's (mean, var) buffers named by `statistics`
    ("running" or "population")."""
    h = x.flatten(1)
    for linear, norm in zip(model.hidden, model.norms, strict=True):
        mean = getattr(norm, f"{statistics}_mean")[:, None]
        var = getattr(norm, f"{statistics}_var")[:, None]
        h = h @ linear.weight
        h = (h - mean) / torch.sqrt(var + norm.eps) * norm.weight[:, None] + norm.bias[:, None]
        h = torch.relu(h)
    return scores(h @ model.head.weight + model.head.bias, y)


@pytest.mark.parametrize("norm", ["bn", "brn"])
def test_acc_batch_is_the_training_network_on_test_mini_batches(mnist, splits, norm):
    transform, train, val, test_x, test_y = splits
    cfgs, model = population(norm)
    rows = Evaluator(cfgs[0], mnist, transform, train, val)(model)
    loss, acc = training_network(model, test_x, test_y, BATCH)
    for k in range(2):
        assert rows[k]["test/loss_batch"] == pytest.approx(loss[k], abs=1e-5), k
        assert rows[k]["test/acc_batch"] == pytest.approx(acc[k], abs=1e-9), k
    assert rows[0]["test/loss_batch"] != pytest.approx(rows[1]["test/loss_batch"], abs=1e-3)
    # the training network is not the inference network here (else this could not tell)
    assert rows[0]["test/loss_batch"] != pytest.approx(rows[0]["test/loss"], abs=1e-3)


def test_acc_running_uses_the_moving_averages_and_acc_alg2_the_population_statistics(
        mnist, splits):
    transform, train, val, test_x, test_y = splits
    cfgs, model = population("bn")
    rows = Evaluator(cfgs[0], mnist, transform, train, val)(model)
    running = fixed_statistics_network(model, test_x, test_y, "running")
    alg2 = fixed_statistics_network(model, test_x, test_y, "population")  # filled by the eval
    for k in range(2):
        assert rows[k]["test/loss_running"] == pytest.approx(running[0][k], abs=1e-5), k
        assert rows[k]["test/acc_running"] == pytest.approx(running[1][k], abs=1e-9), k
        assert rows[k]["test/loss"] == pytest.approx(alg2[0][k], abs=1e-5), k
        assert rows[k]["test/acc"] == pytest.approx(alg2[1][k], abs=1e-9), k
        assert abs(rows[k]["test/loss_running"] - rows[k]["test/loss"]) > 1e-2, k
    assert abs(rows[0]["test/loss_running"] - rows[1]["test/loss_running"]) > 1e-3
    # the configured inference is untouched by the running pass
    assert all(layer.inference == "population" for layer in model.norms)


@pytest.mark.parametrize(("norm", "extra"), [("brn", ()), ("bn", ("model.bn_inference=running",))])
def test_where_the_inference_is_the_moving_averages_acc_running_is_acc(mnist, splits, norm,
                                                                        extra):
    transform, train, val, *_ = splits
    cfgs, model = population(norm, *extra)
    rows = Evaluator(cfgs[0], mnist, transform, train, val)(model)
    for row in rows:
        assert row["test/acc_running"] == row["test/acc"]
        assert row["test/loss_running"] == row["test/loss"]
        assert row["test/loss_batch"] != row["test/loss"]


@pytest.mark.parametrize(("norm", "extra"), [("gn", ()), ("ln", ()), ("none", ()),
                                             ("bn", ("probe.inference_gap=false",))])
def test_no_gap_keys_without_batch_statistics_or_with_the_knob_off(mnist, splits, norm, extra):
    transform, train, val, *_ = splits
    cfgs, model = population(norm, *extra)
    evaluate = Evaluator(cfgs[0], mnist, transform, train, val)
    for row in evaluate(model):
        assert "test/acc" in row and not set(GAP_KEYS) & set(row)


def test_an_evaluation_without_the_test_set_scores_it_no_way(mnist, splits):
    transform, train, val, *_ = splits
    cfgs, model = population("bn")
    rows = Evaluator(cfgs[0], mnist, transform, train, val)(model, with_test=False)
    assert rows[0]["val/acc"] and not any(key.startswith("test/") for row in rows for key in row)


def test_the_knob_is_off_by_default_and_changes_no_fingerprint():
    default = compose_config([])
    assert default.probe.inference_gap is False and default.trainer.test_examples is None
    on = compose_config(["probe.inference_gap=true", "trainer.test_examples=100"])
    assert fingerprint(on) == fingerprint(default)
    assert not config_problems(on)
    bad = compose_config(["probe.inference_gap=3", "trainer.test_examples=10001"])
    problems = " ".join(config_problems(bad))
    assert "probe.inference_gap" in problems and "trainer.test_examples" in problems
