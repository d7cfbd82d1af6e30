"""What an evaluation measures: on which images, through which network, in which chunks."""

import pytest
import torch

from bnrepro.config import compose_config
from bnrepro.data.datasets import InputTransform
from bnrepro.data.sampling import EpochSampler, fixed_subset, validation_split
from bnrepro.measures.evaluation import Evaluator, examples_per_chunk
from bnrepro.models import build_model

QUANTILES = torch.tensor([0.15, 0.5, 0.85])


def test_the_validation_split_is_fixed_disjoint_and_never_trained_on():
    train, val = validation_split(60_000, 5000)
    again_train, again_val = validation_split(60_000, 5000)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert len(val) == 5000 and len(train) == 55_000
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(60_000))
    # one epoch of a member's batches, mapped through the training indices as train.py does
    sampler = EpochSampler(len(train), 60, [0])
    seen = torch.cat([train[sampler.next()[0]] for _ in range(sampler.steps_per_epoch)])
    assert not torch.isin(seen, val).any() and len(seen.unique()) == len(seen)
    with pytest.raises(ValueError, match="val_size"):
        validation_split(100, 100)


@pytest.fixture(scope="module")
def bn_setup(mnist):
    cfg = compose_config(["experiment=fig1_mnist", "debug=smoke", "model.hidden=[20,20]"])
    transform = InputTransform(mnist, cfg.dataset.binarize)
    train, val = validation_split(len(mnist.train_labels), cfg.dataset.val_size)
    model = build_model([cfg, cfg], mnist.image_shape)
    with torch.no_grad():  # members must differ, and BN's affine part must not be the identity
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return cfg, transform, train, val, model


def first_layer(model, x: torch.Tensor) -> torch.Tensor:
    """x W of the first hidden layer, per member: [P, N, F]."""
    return x.flatten(1) @ model.hidden[0].weight


def bn_output(model, normalised: torch.Tensor) -> torch.Tensor:
    bn = model.norms[0]
    return normalised * bn.weight[:, None] + bn.bias[:, None]


@torch.no_grad()
def test_probes_follow_the_inference_and_the_training_network(mnist, bn_setup):
    """Seen: the probe ran BN on the 1,000 probe (test) images as one batch, so the tracked
    input was standardised on the probe set itself. `act/` must be what the trained model
    computes (Alg. 2 statistics of training mini-batches) on held-out images; `act_train/`
    the training network on training mini-batches of batch_size."""
    cfg, transform, train, val, model = bn_setup
    rows = Evaluator(cfg, mnist, transform, train, val)(model)
    batch, n_probe, eps = cfg.trainer.batch_size, cfg.probe.num_examples, model.norms[0].eps

    # Alg. 2 by hand: E[mu_B], m/(m-1) E[sigma_B^2] over the fixed training mini-batches
    alg2 = train[fixed_subset(len(train), cfg.trainer.population_batches * batch)]
    groups = first_layer(model, transform(mnist.train_images[alg2])).unflatten(1, (-1, batch))
    mean = groups.mean(2).mean(1)[:, None]
    var = groups.var(2, unbiased=False).mean(1)[:, None] * batch / (batch - 1)
    probe = transform(mnist.train_images[val[fixed_subset(len(val), n_probe)]])
    inference = bn_output(model, (first_layer(model, probe) - mean) / torch.sqrt(var + eps))

    # the training network: each mini-batch of `batch` training images on its own statistics
    size = n_probe // batch * batch
    x = transform(mnist.train_images[train[fixed_subset(len(train), size, seed=1)]])
    raw = first_layer(model, x).unflatten(1, (-1, batch))
    mu, sigma2 = raw.mean(2, keepdim=True), raw.var(2, unbiased=False, keepdim=True)
    training = bn_output(model, ((raw - mu) / torch.sqrt(sigma2 + eps)).flatten(1, 2))

    for k in range(2):
        for prefix, values in (("act", inference), ("act_train", training)):
            expected = torch.quantile(values[k, :, cfg.probe.unit], QUANTILES).tolist()
            got = [rows[k][f"{prefix}/h1/q{q}"] for q in (15, 50, 85)]
            assert got == pytest.approx(expected, abs=1e-4), (prefix, k)
    # and the two networks really differ, by far more than the tolerance above (else the test
    # could not tell them apart; ~0.008-0.01 here, depending on the CPU threads that trained)
    assert abs(rows[0]["act/h1/q85"] - rows[0]["act_train/h1/q85"]) > 10 * 1e-4


def test_chunking_changes_no_result(mnist, bn_setup):
    cfg, transform, train, val, model = bn_setup
    whole = Evaluator(cfg, mnist, transform, train, val)(model)
    tiny = cfg.copy()
    tiny.trainer.eval_memory_mb = 0.05  # a few examples per forward pass
    assert examples_per_chunk(model, 0.05, cfg.trainer.batch_size) == cfg.trainer.batch_size
    assert examples_per_chunk(model, 0.05) < 100
    chunked = Evaluator(tiny, mnist, transform, train, val)(model)
    for a, b in zip(whole, chunked, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=1e-5), key


def test_chunks_fit_the_memory_budget_for_a_wide_cnn_population():
    """Seen: 5,000 images per forward whatever the population: ~35 GB for cnn_paper x 27."""
    cfg = compose_config(["model=cnn_paper", "dataset=cifar10-jpeg"])
    model = build_model([cfg] * 27, (3, 32, 32))
    budget = cfg.trainer.eval_memory_mb
    n = examples_per_chunk(model, budget)
    widest = 27 * 64 * 32 * 32  # the first stage's maps, all members
    assert model.widest_activation == widest
    assert n >= 1 and n * widest * 4 <= budget * 2**20
