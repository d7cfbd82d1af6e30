import pytest
import torch
import torch.nn.functional as F

from bnrepro.models import CNN, PopulationConv2d
from bnrepro.norms.batch import BatchNorm
from bnrepro.optim import PopulationSGD

TINY = {"widths": (4, 8), "classifier_hidden": 16, "image_size": 8}


@pytest.mark.parametrize("bias", [True, False])
def test_population_conv_member_equals_conv2d_alone(bias):
    conv = PopulationConv2d(3, 2, 5, bias=bias)
    torch.nn.init.normal_(conv.weight)
    if bias:
        torch.nn.init.normal_(conv.bias)
    x = torch.randn(3, 4, 2, 7, 7)
    y = conv(x)
    assert y.shape == (3, 4, 5, 7, 7)
    for k in range(3):
        b = conv.bias[k] if bias else None
        expected = F.conv2d(x[k], conv.weight[k], b, padding=1)
        torch.testing.assert_close(y[k], expected, atol=1e-5, rtol=1e-5)
    # a shared input [B, C, H, W] is the same as every member getting a copy
    torch.testing.assert_close(conv(x[0]), conv(x[0].expand(3, -1, -1, -1, -1)), atol=1e-5,
                               rtol=1e-5)


@pytest.mark.parametrize("norm", ["bn", "none"])
def test_population_member_equals_the_cnn_alone(norm):
    seeds, rates = [3, 7, 11], [0.0, 0.5, 0.2]
    population = CNN(seeds, norm=norm, activation="relu", dropout=rates, convs_per_stage=(1, 2),
                     **TINY)
    x = torch.randn(3, 6, 3, 8, 8)
    out = population(x)
    assert out.shape == (3, 6, 10)
    for k, seed in enumerate(seeds):
        alone = CNN([seed], norm=norm, activation="relu", dropout=rates[k],
                    convs_per_stage=(1, 2), **TINY)
        for a, b in zip(alone.parameters(), population.parameters(), strict=True):
            torch.testing.assert_close(a[0], b[k], atol=0, rtol=0)
        torch.testing.assert_close(alone(x[k:k + 1])[0], out[k], atol=1e-5, rtol=1e-5)


def test_bn_preactivation_is_normalised_per_feature_map():
    model = CNN([0, 1], norm="bn", init_std=0.5, **TINY)
    pre: list[torch.Tensor] = []
    model(torch.randn(2, 16, 3, 8, 8) * 3 + 1, pre)
    assert [p.shape for p in pre] == [(2, 16, 4, 8, 8), (2, 16, 8, 4, 4), (2, 16, 16)]
    for h in pre[:2]:  # per member and map, over batch x H x W (Sec. 3.2)
        mean = h.mean(dim=(1, 3, 4))
        var = h.var(dim=(1, 3, 4), unbiased=False)
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0)
        torch.testing.assert_close(var, torch.ones_like(var), atol=1e-3, rtol=0)


def test_bn_drops_the_conv_bias():
    with_bn, without = CNN([0], norm="bn", **TINY), CNN([0], norm="none", **TINY)
    assert all(c.bias is None for c in with_bn.convs) and with_bn.hidden.bias is None
    assert all(c.bias is not None for c in without.convs) and without.hidden.bias is not None
    assert all(isinstance(n, BatchNorm) for n in [*with_bn.conv_norms, with_bn.hidden_norm])


def test_default_init_is_he_and_init_std_overrides_it():
    he = CNN([0], widths=(32,), classifier_hidden=8, image_size=4)
    w = he.convs[0].weight
    assert abs(w.std().item() - (2 / 27) ** 0.5) < 0.03
    fixed = CNN([0], widths=(32,), classifier_hidden=8, image_size=4, init_std=0.05)
    assert abs(fixed.convs[0].weight.std().item() - 0.05) < 0.005


@pytest.mark.parametrize("norm", ["bn", "none"])
def test_sgd_reduces_the_loss(norm):
    torch.manual_seed(0)
    model = CNN([0, 1], norm=norm, activation="relu", **TINY)
    opt = PopulationSGD(model.parameters(), torch.tensor([0.05, 0.05]), torch.tensor([0.9] * 2),
                        torch.zeros(2))
    x, y = torch.randn(2, 32, 3, 8, 8), torch.randint(0, 10, (2, 32))
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(x).transpose(1, 2), y, reduction="none").mean(1)
        losses.append(loss.detach())
        opt.zero_grad()
        loss.sum().backward()
        opt.step(torch.ones(2, dtype=torch.bool))
    assert (losses[-1] < 0.5 * losses[0]).all(), losses


def test_bad_names_and_shapes_are_refused():
    with pytest.raises(ValueError, match="model.norm"):
        CNN([0], norm="layer", **TINY)
    with pytest.raises(ValueError, match="model.activation"):
        CNN([0], activation="tanh", **TINY)
    with pytest.raises(ValueError, match="convs_per_stage"):
        CNN([0], convs_per_stage=(1, 1, 1), **TINY)
    with pytest.raises(ValueError, match="too small"):
        CNN([0], widths=(4, 4, 4, 4), image_size=4)
