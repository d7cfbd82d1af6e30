"""Our BN against torch's, against autograd, and against Alg. 2 computed by hand."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from bnrepro.norms.batch import BatchNorm, bn_mode, estimate_population_statistics


def make_bn(P, F, **kw):
    torch.manual_seed(0)
    bn = BatchNorm(P, F, **kw)
    with torch.no_grad():  # non-trivial gamma/beta, different per member
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn


@pytest.mark.parametrize("P", [1, 3])
def test_training_mode_equals_torch_batchnorm1d(P):
    bn = make_bn(P, 7)
    x = torch.randn(P, 32, 7) * 3 + 1
    y = bn(x)
    for k in range(P):
        ref = nn.BatchNorm1d(7, eps=bn.eps, momentum=bn.momentum)
        with torch.no_grad():
            ref.weight.copy_(bn.weight[k])
            ref.bias.copy_(bn.bias[k])
        torch.testing.assert_close(y[k], ref(x[k]), atol=1e-5, rtol=1e-5)
        # moving averages follow torch's rule too (unbiased variance)
        torch.testing.assert_close(bn.running_mean[k], ref.running_mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bn.running_var[k], ref.running_var, atol=1e-5, rtol=1e-5)


def test_conv_maps_equal_torch_batchnorm2d():
    P, C = 2, 4
    bn = make_bn(P, C)
    x = torch.randn(P, 8, C, 5, 5)
    y = bn(x)
    for k in range(P):
        ref = nn.BatchNorm2d(C)
        with torch.no_grad():
            ref.weight.copy_(bn.weight[k])
            ref.bias.copy_(bn.bias[k])
        torch.testing.assert_close(y[k], ref(x[k]), atol=1e-5, rtol=1e-5)


def test_alg1_by_hand():
    bn = make_bn(1, 3)
    x = torch.randn(1, 16, 3)
    mu = x.mean(1, keepdim=True)
    var = ((x - mu) ** 2).mean(1, keepdim=True)  # biased: 1/m sum
    expected = (x - mu) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(bn(x), expected, atol=1e-5, rtol=1e-5)


def test_gradcheck_in_double():
    bn = make_bn(2, 3).double()
    x = torch.randn(2, 6, 3, dtype=torch.double, requires_grad=True)

    def f(x, weight, bias):
        return functional_call(bn, {"weight": weight, "bias": bias}, (x,))

    params = (bn.weight.detach().requires_grad_(), bn.bias.detach().requires_grad_())
    assert torch.autograd.gradcheck(f, (x, *params))
    with bn_mode(bn, "collect", 3):  # the Alg. 2 path (groups of 3 examples) too
        assert torch.autograd.gradcheck(f, (x, *params))


def test_population_statistics_equal_alg2_by_hand():
    P, F, m, batches = 2, 3, 5, 4
    bn = make_bn(P, F)
    x = torch.randn(P, m * batches, F) * torch.tensor([1.0, 2.0, 0.5]) + 3
    estimate_population_statistics(bn, [x[:, : 2 * m], x[:, 2 * m:]], batch_size=m)
    groups = x.view(P, batches, m, F)
    mean_of_means = groups.mean(2).mean(1)
    mean_of_vars = groups.var(2, unbiased=False).mean(1)
    torch.testing.assert_close(bn.population_mean, mean_of_means)
    torch.testing.assert_close(bn.population_var, m / (m - 1) * mean_of_vars)
    # Inference (Alg. 2 line 11): y = gamma / sqrt(Var + eps) * x + (beta - gamma E[x] / ...)
    x_new = torch.randn(P, 4, F)
    scale = bn.weight / torch.sqrt(m / (m - 1) * mean_of_vars + bn.eps)
    expected = scale[:, None] * x_new + (bn.bias - scale * mean_of_means)[:, None]
    with bn_mode(bn, "eval"):
        torch.testing.assert_close(bn(x_new), expected, atol=1e-5, rtol=1e-5)


def test_conv_population_unbiasing_counts_positions():
    """For maps, m' = m * H * W values enter each mini-batch variance (Sec. 3.2)."""
    bn = make_bn(1, 2)
    x = torch.randn(1, 6, 2, 3, 3)
    estimate_population_statistics(bn, [x], batch_size=3)
    g = x.view(1, 2, 3, 2, 9).transpose(3, 4).reshape(1, 2, 27, 2)  # [P, batches, m', C]
    m_prime = 27
    torch.testing.assert_close(
        bn.population_var, m_prime / (m_prime - 1) * g.var(2, unbiased=False).mean(1))


def test_batch_mode_updates_nothing_and_eval_running_uses_moving_averages():
    bn = make_bn(1, 4, inference="running")
    x = torch.randn(1, 10, 4)
    with bn_mode(bn, "batch"):
        bn(x)
    assert torch.equal(bn.running_mean, torch.zeros(1, 4))
    bn(x)  # train mode: updates
    with bn_mode(bn, "eval"):
        expected = (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight \
            + bn.bias
        torch.testing.assert_close(bn(x), expected[0][None], atol=1e-5, rtol=1e-5)


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="inference"):
        BatchNorm(1, 2, inference="median")
    with pytest.raises(ValueError, match="mode"), bn_mode(BatchNorm(1, 2), "sleep"):
        pass
