"""The pre-activation ResNet (models/resnet.py) and De & Smith's branch/skip variance measure
(residual_variance.py): SkipInit's identity at initialisation, population members equal to
their solo runs for every kind of norm, the measure against a hand computation, and the
1/l fall of the ratio with BN that De & Smith describe (and its absence without a norm)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from bnrepro.config import compose_config
from bnrepro.data.datasets import DataUnavailableError, InputTransform, load_dataset
from bnrepro.data.sampling import fixed_subset, validation_split
from bnrepro.measures.context import model_layers
from bnrepro.measures.evaluation import Evaluator
from bnrepro.models import MODELS, ResNet, build_model
from bnrepro.models.residual_variance import ResidualMoments
from bnrepro.models.resnet import ResidualBlock
from bnrepro.norms import NORMS, set_norm_step
from bnrepro.norms.batch import BatchNorm, batch_norms
from bnrepro.run.checkpoint import fingerprint
from bnrepro.validation import ConfigError, validate
from tests.conftest import REPO, data_missing

TINY = {"widths": (4, 8, 8), "image_size": 8}


def blocks_identity_check(model: ResNet, x: torch.Tensor) -> tuple[int, int]:
    """Runs x through the stem and every block; returns (identity blocks, shortcut blocks)
    after asserting that each block's output is exactly its skip path's output."""
    identity = shortcut = 0
    h = model.stem(x)
    for block in model.blocks:
        out = block(h)
        if block.shortcut is None:
            assert torch.equal(out, h)
            identity += 1
        else:
            assert torch.equal(out, block.shortcut(h))
            shortcut += 1
        h = out
    return identity, shortcut


@pytest.mark.parametrize("norm", ["bn", "none", "gn"])
def test_skipinit_makes_every_block_its_skip_path_at_initialisation(norm):
    model = ResNet([3, 4], depth=14, residual_scale="skipinit", norm=norm, **TINY)
    x = torch.randn(2, 6, 3, 8, 8)
    assert blocks_identity_check(model, x) == (4, 2)  # 3 stages x 2 blocks, 2 downsample
    alphas = [block.alpha for block in model.blocks]
    assert all(a.shape == (2,) and a.requires_grad and not a.any() for a in alphas)
    # The check can fail: with alpha != 0 the branch is added and the block is not the skip.
    with torch.no_grad():
        model.blocks[0].alpha.fill_(0.5)
    h = model.stem(x)
    assert not torch.equal(model.blocks[0](h), h)
    # alpha is trained: a loss gives it a gradient although the branch starts switched off
    model(x).square().sum().backward()
    assert model.blocks[1].alpha.grad is not None and model.blocks[1].alpha.grad.abs().sum() > 0


def test_without_skipinit_no_block_is_the_identity():
    model = ResNet([0], depth=8, norm="bn", **TINY)
    h = model.stem(torch.randn(1, 6, 3, 8, 8))
    assert all(block.alpha is None for block in model.blocks)
    assert not torch.equal(model.blocks[0](h), h)


def test_shape_of_the_net():
    model = ResNet([0, 1], depth=20, widths=(16, 32, 64), width_multiplier=0.5,
                   image_size=32)
    assert len(model.blocks) == 9
    strides = [b.conv1.stride for b in model.blocks]
    assert strides == [1, 1, 1, 2, 1, 1, 2, 1, 1]
    assert [b.shortcut is not None for b in model.blocks] == [s == 2 for s in strides]
    pre: list[torch.Tensor] = []
    out = model(torch.randn(2, 3, 3, 32, 32), pre)
    assert out.shape == (2, 3, 10)
    assert len(pre) == 2 * 9 + 1  # two per block, then the final norm
    assert pre[0].shape == (2, 3, 8, 32, 32) and pre[-1].shape == (2, 3, 32, 8, 8)
    assert model.widest_activation == 2 * 8 * 32 * 32
    # BN cancels every conv bias; no norm keeps them
    assert all(c.bias is None for b in model.blocks for c in (b.conv1, b.conv2))
    plain = ResNet([0], depth=8, norm="none", **TINY)
    assert all(c.bias is not None for b in plain.blocks for c in (b.conv1, b.conv2))
    assert isinstance(model.blocks[0].norm1, BatchNorm)


def test_init_is_he_for_convs_and_variance_preserving_for_shortcuts():
    model = ResNet([0], depth=8, widths=(64, 128, 128), image_size=8)
    conv = model.blocks[0].conv1.weight  # fan_in 64 * 9
    assert conv.std().item() == pytest.approx((2 / 576) ** 0.5, rel=0.05)
    shortcut = model.blocks[1].shortcut.weight  # 1x1, fan_in 64
    assert shortcut.std().item() == pytest.approx((1 / 64) ** 0.5, rel=0.05)
    fixed = ResNet([0], depth=8, init_std=0.05, **TINY)
    assert fixed.blocks[1].shortcut.weight.std().item() == pytest.approx(0.05, rel=0.2)


@pytest.mark.parametrize(("norm", "residual_scale", "execution"), [
    *((norm, "none", "auto") for norm in NORMS),  # every norm of the registry
    ("bn", "skipinit", "auto"), ("none", "skipinit", "auto"), ("bn", "skipinit", "grouped"),
    ("none", "none", "per_member")])
def test_population_member_equals_its_solo_run(norm, residual_scale, execution):
    """Forward and gradients of member k equal the same seed's net alone (distinct seeds,
    dropout rates, alphas and inputs per member, so any mix-up shows), with either way of
    running the strided and 1x1 convs of a population (layers.CONV_EXECUTIONS)."""
    seeds, rates = [3, 7, 11], [0.0, 0.5, 0.2]
    kwargs = dict(depth=8, norm=norm, residual_scale=residual_scale, conv_execution=execution,
                  **TINY)
    population = ResNet(seeds, dropout=rates, **kwargs)
    x = torch.randn(3, 6, 3, 8, 8)
    y = torch.randint(0, 10, (3, 6))

    def set_alphas(model, values):
        with torch.no_grad():
            for j, block in enumerate(model.blocks):
                if block.alpha is not None:
                    block.alpha.copy_(torch.tensor(values) * (j + 1))

    set_alphas(population, [0.1, 0.3, 0.7])
    set_norm_step(population, 10_000)  # Batch Renorm fully relaxed: r and d not clipped to BN
    out = population(x)
    F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(1).sum().backward()
    for k, seed in enumerate(seeds):
        alone = ResNet([seed], dropout=rates[k], **kwargs)
        set_alphas(alone, [[0.1, 0.3, 0.7][k]])
        set_norm_step(alone, 10_000)
        solo = alone(x[k:k + 1])
        F.cross_entropy(solo.transpose(1, 2), y[k:k + 1], reduction="none").mean(1).sum().backward()
        torch.testing.assert_close(solo[0], out[k], atol=1e-5, rtol=1e-5)
        for (name, a), b in zip(alone.named_parameters(), population.parameters(), strict=True):
            torch.testing.assert_close(a[0], b[k], atol=0, rtol=0)
            torch.testing.assert_close(a.grad[0], b.grad[k], atol=1e-5, rtol=1e-4, msg=name)


def hand_block(block: ResidualBlock, h: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """Member k's skip and branch terms of a BN block in training mode, by hand: [B, C, H, W]."""
    w = {name: p[k] for name, p in block.named_parameters()}

    def bn(v, gamma, beta):
        mean = v.mean(dim=(0, 2, 3), keepdim=True)
        var = v.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        return (v - mean) / torch.sqrt(var + 1e-5) * gamma.view(1, -1, 1, 1) + \
            beta.view(1, -1, 1, 1)

    stride = block.conv1.stride
    a = F.conv2d(torch.relu(bn(h, w["norm1.weight"], w["norm1.bias"])), w["conv1.weight"],
                 stride=stride, padding=1)
    branch = F.conv2d(torch.relu(bn(a, w["norm2.weight"], w["norm2.bias"])), w["conv2.weight"],
                      padding=1) * w["scale.alpha"]
    skip = h if block.shortcut is None else F.conv2d(h, w["shortcut.weight"], stride=stride)
    return skip, branch


def test_variance_measure_equals_a_hand_computation():
    model = ResNet([0, 1], depth=8, norm="bn", residual_scale="skipinit", **TINY)
    with torch.no_grad():
        for j, block in enumerate(model.blocks):  # distinct alphas per member and block
            block.alpha.copy_(torch.tensor([0.5, 2.0]) * (j + 1))
        for p in model.parameters():  # BN's gamma/beta away from 1/0
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 12, 3, 8, 8) * 2 + 0.5
    moments = ResidualMoments()
    with torch.no_grad():
        model(x, moments=moments)
        rows = moments.result()
        for k in range(2):
            h = F.conv2d(x[k], model.stem.weight[k], padding=1)
            for i, block in enumerate(model.blocks, start=1):
                skip, branch = hand_block(block, h, k)
                var_skip = skip.var(unbiased=False).item()  # over examples, channels, positions
                var_branch = branch.var(unbiased=False).item()
                got = rows[k]
                assert got[f"resid/b{i}/var_skip"] == pytest.approx(var_skip, rel=1e-4)
                assert got[f"resid/b{i}/var_branch"] == pytest.approx(var_branch, rel=1e-4)
                assert got[f"resid/b{i}/var_ratio"] == pytest.approx(var_branch / var_skip,
                                                                     rel=1e-4)
                h = skip + branch
    assert set(rows[0]) == {f"resid/b{i}/{q}" for i in (1, 2, 3)
                            for q in ("var_skip", "var_branch", "var_ratio", "var_skip_channel",
                                      "var_branch_channel", "var_ratio_channel")}


def test_moments_pool_over_chunks():
    """Two chunks of examples give the variance of their union, not a mean of two."""
    moments = ResidualMoments()
    a, b = torch.randn(1, 5, 2, 3, 3), torch.randn(1, 7, 2, 3, 3) * 3 + 1
    for part in (a, b):
        moments.start_pass()
        moments.add(part, 2 * part)
    whole = torch.cat([a, b], 1)
    var = moments.variances()
    assert var[0, 0, 0].item() == pytest.approx(whole.var(unbiased=False).item(), rel=1e-6)
    assert var[0, 1, 0].item() == pytest.approx(4 * whole.var(unbiased=False).item(), rel=1e-6)


def ratios_at_init(norm: str, depth: int = 20) -> torch.Tensor:
    """Per block, the branch/skip variance ratio at initialisation, mean over 4 members."""
    torch.manual_seed(0)
    model = ResNet([0, 1, 2, 3], depth=depth, norm=norm, width_multiplier=0.5, image_size=16)
    moments = ResidualMoments()
    with torch.no_grad():
        model(torch.randn(32, 3, 16, 16), shared=True, moments=moments)
    var = moments.variances()  # [blocks, (skip, branch), P]
    return (var[:, 1] / var[:, 0]).mean(1), var


def test_bn_shrinks_the_branch_like_one_over_the_block_index_and_no_norm_does_not():
    """De & Smith, Sec. 2: with BN the branch's variance stays ~1 while the skip's grows ~1
    per block, so the ratio at block l falls like 1/l; without a norm both double per block.
    A norm on the skip path (ratio flat), a branch without its norm (variance not ~1), or no
    accumulation across stages would fail this."""
    bn, var = ratios_at_init("bn")
    blocks = len(bn)
    assert ((var[:, 1] > 0.5) & (var[:, 1] < 2)).all()  # each branch ~ unit variance
    fall = (bn[-1] / bn[0]).item()
    assert fall < 1 / 3  # falls ...
    assert 1 / (3 * blocks) < fall < 3 / blocks  # ... within a factor 3 of 1/l
    none, var = ratios_at_init("none")
    assert (none[-3:].mean() / none[0]).item() > 1 / 3  # does not fall
    growth = (var[-1, 0] / var[0, 0]).mean().item()
    assert growth > 2 ** ((blocks - 1) / 2)  # the skip's variance grows geometrically


@pytest.mark.parametrize(("override", "key", "allowed"), [
    ("model.depth=10", "model.depth=10", "6n + 2"),
    ("model.depth=2", "model.depth=2", "6n + 2"),
    ("model.residual_scale=fixup", "model.residual_scale='fixup'", "['none', 'skipinit']"),
    ("model.widths=[16,32]", "model.widths=", "3 stage widths"),
])
def test_bad_depth_and_residual_scale_are_refused_in_one_line(override, key, allowed):
    cfg = compose_config(["model=resnet", "dataset=cifar10-jpeg", override])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert key in message and allowed in message and "\n" not in message
    assert message.count("is not allowed") == 1


@pytest.mark.parametrize("overrides", [[], ["model.depth=8", "model.residual_scale=skipinit",
                                            "model.norm=gn", "model.width_multiplier=0.5"],
                                       ["experiment=depth_cifar"]])
def test_good_resnet_configs_pass_and_build(overrides):
    cfg = compose_config(["model=resnet", "dataset=cifar10-jpeg", *overrides])
    validate(cfg)
    model = build_model([cfg, cfg], (3, 32, 32))
    assert isinstance(model, ResNet) and len(model.blocks) == (cfg.model.depth - 2) // 2


def test_the_measurement_knob_changes_no_fingerprint():
    on = compose_config(["model=resnet", "dataset=cifar10-jpeg"])
    off = compose_config(["model=resnet", "dataset=cifar10-jpeg", "probe.residual_variance=false"])
    assert fingerprint(on) == fingerprint(off)


class TermRecorder:
    """Keeps every block's skip and branch terms (the model calls it like ResidualMoments)."""

    def __init__(self):
        self.terms: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        self.block = 0

    def start_pass(self):
        self.block = 0

    def add(self, skip, branch):
        if self.block == len(self.terms):
            self.terms.append([])
        self.terms[self.block].append((skip.clone(), branch.clone()))
        self.block += 1


@pytest.fixture(scope="module")
def cifar():
    try:
        return load_dataset("cifar10-jpeg", REPO / "data")
    except DataUnavailableError as err:
        data_missing(str(err))


def tiny_cfg(*overrides: str):
    return compose_config(["model=resnet", "dataset=cifar10-jpeg", "model.depth=8",
                           "model.width_multiplier=0.25", "trainer.batch_size=8",
                           "probe.num_examples=20", "probe.networks=[]", "dataset.val_size=50",
                           "trainer.population_batches=1", *overrides])


@torch.no_grad()
def test_evaluation_measures_the_training_network_on_fixed_training_mini_batches(cifar):
    """resid/* = the variances over 16 fixed training images (20 rounded down to whole
    mini-batches of 8), each mini-batch normalised by its own BN statistics, nothing updated."""
    cfgs = [tiny_cfg(), tiny_cfg("seed=1")]
    transform = InputTransform(cifar, cfgs[0].dataset.binarize, cfgs[0].dataset.standardize)
    train, val = validation_split(len(cifar.train_labels), cfgs[0].dataset.val_size)
    model = build_model(cfgs, cifar.image_shape)
    noise = torch.Generator().manual_seed(0)  # not the global RNG: tests run in any order
    for p in model.parameters():  # BN's gamma/beta away from 1/0
        p.add_(0.1 * torch.randn(p.shape, generator=noise))
    by_hand = copy.deepcopy(model).train()  # train-mode BN: each forward's own statistics
    running = [bn.running_mean.clone() for bn in batch_norms(model)]
    rows = Evaluator(cfgs[0], cifar, transform, train, val)(model, with_test=False)
    assert all(torch.equal(a, bn.running_mean) for a, bn in zip(running, batch_norms(model),
                                                                  strict=True))

    x = transform(cifar.train_images[train[fixed_subset(len(train), 16, seed=1)]])
    recorder = TermRecorder()
    for batch in x.split(8):
        recorder.start_pass()
        by_hand(batch, shared=True, moments=recorder)
    assert len(recorder.terms) == 3
    for i, chunks in enumerate(recorder.terms, start=1):
        skip = torch.cat([s for s, _ in chunks], 1)  # [P, 16, C, H, W]
        branch = torch.cat([b for _, b in chunks], 1)
        for k in range(2):
            var_skip = skip[k].double().var(unbiased=False).item()
            var_branch = branch[k].double().var(unbiased=False).item()
            assert rows[k][f"resid/b{i}/var_skip"] == pytest.approx(var_skip, rel=1e-4)
            assert rows[k][f"resid/b{i}/var_branch"] == pytest.approx(var_branch, rel=1e-4)
    # The whole 16 as one BN batch (the wrong unit) would fail the check above by a margin.
    whole = TermRecorder()
    copy.deepcopy(model).train()(x, shared=True, moments=whole)
    gaps = [abs(term[k].double().var(unbiased=False).item() / rows[k][f"resid/b{i}/{name}"] - 1)
            for i, ((skip, branch),) in enumerate(whole.terms, start=1)
            for name, term in (("var_skip", skip), ("var_branch", branch)) for k in range(2)]
    assert max(gaps) > 1e-2

    off = Evaluator(tiny_cfg("probe.residual_variance=false"), cifar, transform, train, val)
    assert not any(key.startswith("resid/") for key in off(model, with_test=False)[0])


@pytest.mark.parametrize("overrides", [["model.norm=bn"], ["model.norm=none",
                                                          "model.residual_scale=skipinit",
                                                          "model.depth=14"]])
def test_weight_layers_split_every_parameter_once_input_first(overrides):
    """measures.ics walks weight_layers(): each parameter in exactly one layer, weight first,
    as many layers as ModelSpec.num_layers says (depth + the two 1x1 shortcuts)."""
    cfg = compose_config(["model=resnet", "dataset=cifar10-jpeg", "model.depth=8",
                          "model.width_multiplier=0.25", *overrides])
    model = build_model([cfg], (3, 32, 32))
    layers = model_layers(model)
    assert len(layers) == MODELS["resnet"].num_layers(cfg.model) == cfg.model.depth + 2
    every = [n for layer in layers for n in layer.params]
    assert sorted(every) == sorted(n for n, _ in model.named_parameters())
    assert all(layer.params[0] == layer.weight and layer.weight.endswith("weight")
               for layer in layers)
    assert layers[0].weight == "stem.weight" and layers[-1].weight == "head.weight"
    conv2 = next(layer for layer in layers if layer.weight == "blocks.0.conv2.weight")
    assert ("blocks.0.scale.alpha" in conv2.params) == (cfg.model.residual_scale == "skipinit")
    if cfg.model.norm == "bn":  # the norm that reads conv2's output next: block 2's norm1
        assert {"blocks.1.norm1.weight", "blocks.1.norm1.bias"} <= set(conv2.params)
