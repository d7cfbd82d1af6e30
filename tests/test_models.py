import pytest
import torch
import torch.nn.functional as F

from bnrepro.models import MLP, PopulationLinear
from bnrepro.norms.batch import BatchNorm
from bnrepro.optim import PopulationSGD


def test_bn_drops_the_affine_bias_and_sits_before_the_nonlinearity():
    """Catches: a hidden bias kept beside beta (or dropped without BN), BN missing on a layer,
    BN placed after the sigmoid, a BN that only centres, or one that divides by the unbiased
    variance (its output's biased variance would be (N-1)/N = 0.983 at N = 60)."""
    with_bn = MLP([0], 784, [100, 100, 100], norm="bn")
    without = MLP([0], 784, [100, 100, 100], norm="none")
    assert all(layer.bias is None for layer in with_bn.hidden)
    assert all(layer.bias is not None for layer in without.hidden)
    assert all(isinstance(n, BatchNorm) for n in with_bn.norms)
    x = torch.rand(1, 60, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    pre: list[torch.Tensor] = []
    logits = with_bn(x, pre)
    assert logits.shape == (1, 60, 10) and [p.shape for p in pre] == [(1, 60, 100)] * 3
    # the recorded input to the sigmoid is BN's output (gamma 1, beta 0 at init): zero mean and
    # unit biased variance per unit, in every hidden layer (eps 1e-5 costs < 1e-3 here)
    for h in pre:
        torch.testing.assert_close(h.mean(1), torch.zeros(1, 100), atol=1e-5, rtol=0)
        torch.testing.assert_close(h.var(1, unbiased=False), torch.ones(1, 100), atol=1e-3,
                                   rtol=0)


def test_init_is_small_gaussian_with_configured_std():
    model = MLP([0], 784, [100], init_std=0.05)
    w = model.hidden[0].weight
    assert abs(w.std().item() - 0.05) < 0.002 and abs(w.mean().item()) < 0.002


def test_population_member_equals_the_model_alone():
    seeds = [3, 7, 11]
    population = MLP(seeds, 784, [20, 20], norm="bn", dropout=[0.0, 0.5, 0.2])
    x = torch.rand(3, 16, 784)
    out = population(x)
    for k, seed in enumerate(seeds):
        alone = MLP([seed], 784, [20, 20], norm="bn", dropout=[0.0, 0.5, 0.2][k])
        for a, b in zip(alone.parameters(), population.parameters(), strict=True):
            torch.testing.assert_close(a[0], b[k], atol=0, rtol=0)
        torch.testing.assert_close(alone(x[k:k + 1])[0], out[k], atol=1e-5, rtol=1e-5)


def test_shared_input_equals_per_member_copies():
    """Catches: the shared-input path dropping or misaligning the bias (a zero bias, as
    initialised, would hide both), or mixing up members in its [B, P*out] reshape."""
    layer = PopulationLinear(4, 10, 3, bias=True)
    torch.nn.init.normal_(layer.weight)
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(5, 10)
    torch.testing.assert_close(layer(x), layer(x.expand(4, 5, 10).contiguous()))


def test_dropout_rate_is_per_member():
    model = MLP([0, 1], 10, [1000], activation="relu", dropout=[0.0, 0.5])
    model.train()
    h = model.dropout(torch.ones(2, 8, 1000))
    assert (h[0] == 1).all()
    dropped = (h[1] == 0).float().mean().item()
    assert 0.45 < dropped < 0.55 and torch.allclose(h[1][h[1] > 0], torch.tensor(2.0))
    model.eval()
    assert (model.dropout(torch.ones(2, 8, 1000)) == 1).all()


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 1e-3)])
def test_population_sgd_matches_torch_sgd(momentum, weight_decay):
    model = MLP([0, 1], 12, [8], norm="bn")
    refs = [MLP([s], 12, [8], norm="bn") for s in (0, 1)]
    lrs = [0.1, 0.3]
    opt = PopulationSGD(model.parameters(), torch.tensor(lrs), torch.tensor([momentum] * 2),
                        torch.tensor([weight_decay] * 2))
    ref_opts = [torch.optim.SGD(r.parameters(), lr=lr, momentum=momentum,
                                weight_decay=weight_decay) for r, lr in zip(refs, lrs, strict=True)]
    x, y = torch.randn(2, 16, 12), torch.randint(0, 10, (2, 16))
    for _ in range(3):
        loss = F.cross_entropy(model(x).transpose(1, 2), y, reduction="none").mean(1)
        opt.zero_grad()
        loss.sum().backward()
        opt.step(torch.ones(2, dtype=torch.bool))
        for k, (r, o) in enumerate(zip(refs, ref_opts, strict=True)):
            o.zero_grad()
            F.cross_entropy(r(x[k:k + 1])[0], y[k]).backward()
            o.step()
    for k, r in enumerate(refs):
        for a, b in zip(r.parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(a[0], b[k], atol=1e-6, rtol=1e-5)


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="model.norm"):
        MLP([0], 4, [4], norm="layer")
    with pytest.raises(ValueError, match="model.activation"):
        MLP([0], 4, [4], activation="tanh")
