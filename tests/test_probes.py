import numpy as np
import pytest
import torch

from bnrepro.probes import quantile_key, sigmoid_input_quantiles


def test_quantiles_of_tracked_unit_and_of_the_layer():
    torch.manual_seed(0)
    h1 = torch.randn(2, 500, 4) * torch.tensor([1.0, 2.0, 3.0, 4.0]) + 1
    h2 = torch.rand(2, 500, 3)
    metrics = sigmoid_input_quantiles([h1, h2], unit=1, quantiles=[0.15, 0.5, 0.85])
    assert len(metrics) == 2
    for k in range(2):
        for q in (15, 50, 85):
            expected = np.percentile(h1[k, :, 1].numpy(), q)
            assert metrics[k][f"act/h1/q{q}"] == pytest.approx(expected, rel=1e-5)
            pooled = np.percentile(h2[k].numpy(), q)
            assert metrics[k][f"act/h2/all_q{q}"] == pytest.approx(pooled, rel=1e-5)
        assert metrics[k]["act/h1/mean"] == pytest.approx(h1[k].mean().item(), rel=1e-5)
        assert metrics[k]["act/h1/std"] == pytest.approx(h1[k].std().item(), rel=1e-5)


def test_conv_unit_is_a_feature_map():
    h = torch.randn(1, 10, 2, 4, 4)
    m = sigmoid_input_quantiles([h], unit=0, quantiles=[0.5])[0]
    assert m["act/h1/q50"] == pytest.approx(h[0, :, 0].median().item(), abs=0.2)


def test_unit_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="probe.unit=5"):
        sigmoid_input_quantiles([torch.randn(1, 3, 4)], unit=5, quantiles=[0.5])


def test_quantile_key():
    assert [quantile_key(q) for q in (0.05, 0.15, 0.5, 0.85)] == ["q05", "q15", "q50", "q85"]
