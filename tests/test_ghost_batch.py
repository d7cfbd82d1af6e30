"""Ghost batches (model.bn_ghost_batch, issue 26): in training every batch-statistics norm
normalises each group of b examples of the SGD mini-batch by that group's own statistics, as
the norm run on that group alone would; the moving averages take the mean of the groups'
statistics; the CNN's member-by-member path falls back; the evaluator's batch-mode probes
and Alg. 2 use groups of b; validation refuses what cannot work."""

from __future__ import annotations

import pytest
import torch

from bnrepro.config import compose_config
from bnrepro.models import build_model
from bnrepro.norms import make_norm
from bnrepro.norms.batch import bn_mode, estimate_population_statistics
from bnrepro.validation import config_problems

GHOST_NORMS = ["bn", "brn", "lp2"]


def inputs(spatial: bool, n: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    shape = (2, n, 3, 4, 4) if spatial else (2, n, 5)
    return torch.randn(shape, generator=g) * 3 + 1


@pytest.mark.parametrize("spatial", [False, True])
@pytest.mark.parametrize("norm", GHOST_NORMS)
def test_each_group_is_normalised_as_the_norm_on_that_group_alone(norm, spatial):
    b, x = 4, inputs(spatial)
    ghost = make_norm(norm, 2, 3 if spatial else 5, spatial, {"bn_ghost_batch": b})
    out = ghost(x)
    group_means = []
    for k in range(0, x.shape[1], b):
        alone = make_norm(norm, 2, 3 if spatial else 5, spatial)
        torch.testing.assert_close(out[:, k:k + b], alone(x[:, k:k + b]))
        group_means.append(alone.running_mean)  # from 0: momentum * mu_g
    # moving averages: one update with the mean over groups of the groups' statistics
    torch.testing.assert_close(ghost.running_mean, torch.stack(group_means).mean(0))
    if norm == "bn":
        whole = make_norm(norm, 2, 3 if spatial else 5, spatial)
        whole(x)
        assert not torch.allclose(ghost.running_var, whole.running_var)  # groups, not the batch


def test_bn_ghost_moving_variance_is_the_mean_of_the_groups_unbiased_variances():
    b, x = 4, inputs(False)
    ghost = make_norm("bn", 2, 5, False, {"bn_ghost_batch": b})
    ghost(x)
    groups = x.reshape(2, 4, b, 5)
    expected = 0.9 + 0.1 * groups.var(dim=2, unbiased=True).mean(1)
    torch.testing.assert_close(ghost.running_var, expected)


def test_ghost_batch_zero_is_the_whole_batch_bit_for_bit():
    x = inputs(True)
    for norm in GHOST_NORMS:
        a, b = make_norm(norm, 2, 3, True), make_norm(norm, 2, 3, True, {"bn_ghost_batch": 0})
        assert torch.equal(a(x), b(x))
        assert torch.equal(a.running_mean, b.running_mean)


def cnn_config(norm: str, ghost: int, batch: int = 8, seed: int = 0):
    return compose_config([f"seed={seed}", "model=cnn", f"model.norm={norm}",
                           f"model.bn_ghost_batch={ghost}", f"trainer.batch_size={batch}",
                           "dataset=cifar10-jpeg",
                           "model.width_multiplier=0.25", "model.classifier_norm=false"])


@pytest.mark.parametrize("norm", ["bn", "brn"])
def test_cnn_training_forward_is_the_batch_mode_probe_of_groups_of_b(norm):
    """The member-by-member path (per-member conv stages) must not normalise over the whole
    batch: a training forward equals bn_mode("batch", b), which groups by b explicitly."""
    cfgs = [cnn_config(norm, 2, seed=seed) for seed in (0, 1)]
    assert not config_problems(cfgs[0])
    model = build_model(cfgs, (3, 32, 32))
    model.train()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with bn_mode(model, "batch", 2):
        probe = model(x, shared=True)
    trained = model(x, shared=True)
    torch.testing.assert_close(trained, probe)
    with bn_mode(model, "batch", 8):
        whole = model(x, shared=True)
    assert not torch.allclose(trained, whole)


def test_alg2_collects_groups_of_the_ghost_batch():
    x = inputs(False)
    bn = make_norm("bn", 2, 5, False, {"bn_ghost_batch": 4})
    model = torch.nn.Sequential(bn)
    estimate_population_statistics(model, [x], 4)
    groups = x.reshape(2, 4, 4, 5)
    torch.testing.assert_close(bn.population_var, groups.var(dim=2, unbiased=True).mean(1))


@pytest.mark.parametrize(("norm", "ghost", "batch", "ok"), [
    ("bn", 4, 32, True), ("brn", 2, 32, True), ("lp2", 8, 32, True), ("bn", 0, 32, True),
    ("gn", 0, 32, True), ("bn", 3, 32, False), ("bn", 1, 32, False), ("bn", 64, 32, False),
    ("noisy_bn", 4, 32, False), ("gn", 4, 32, False), ("none", 2, 32, False)])
def test_validation_of_the_ghost_batch(norm, ghost, batch, ok):
    cfg = compose_config(["model=cnn", f"model.norm={norm}", f"model.bn_ghost_batch={ghost}",
                          f"trainer.batch_size={batch}", "dataset=cifar10-jpeg"])
    problems = [p for p in config_problems(cfg) if "bn_ghost_batch" in p]
    assert (not problems) == ok, problems
