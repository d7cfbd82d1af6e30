import pytest
import torch

from bnrepro.measures.probes import quantile_key, sigmoid_input_quantiles

QUANTILES = [0.15, 0.5, 0.85]


def distinct_units(*shape: int) -> torch.Tensor:
    """Seeded [P, N, F, ...] values where every (member, unit) pair has its own distribution:
    unit f of member k is centred at 100 k + 10 f with spread 1 + f, so taking any other unit
    or member moves every quantile by at least 5 (far beyond float error)."""
    P, N, F = shape[:3]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    view = (P, 1, F, *[1] * (len(shape) - 3))
    centre = (100 * torch.arange(P).view(P, 1) + 10 * torch.arange(F)).view(view)
    spread = (1 + torch.arange(F, dtype=torch.float)).expand(P, F).reshape(view)
    return x * spread + centre


def expected_quantiles(values: torch.Tensor) -> list[float]:
    return torch.quantile(values.flatten(), torch.tensor(QUANTILES)).tolist()


@pytest.mark.parametrize("unit", [0, 2])
def test_mlp_unit_quantiles_are_exactly_those_of_its_slice(unit):
    """[P, N, F]: member k, unit u is h[k, :, u]. Catches: the wrong unit (h[..., 0] or an
    off-by-one), the wrong member (metrics from member 0 for all, or P and N swapped), quantiles
    over the whole layer, or approximated quantiles (a histogram, a subsample)."""
    h1, h2 = distinct_units(3, 500, 4), distinct_units(3, 300, 3)
    metrics = sigmoid_input_quantiles([h1, h2], unit=unit, quantiles=QUANTILES)
    assert len(metrics) == 3
    for k in range(3):
        for i, h in enumerate((h1, h2), start=1):
            got = [metrics[k][f"act/h{i}/{quantile_key(q)}"] for q in QUANTILES]
            assert got == expected_quantiles(h[k, :, unit])
            pooled = [metrics[k][f"act/h{i}/all_{quantile_key(q)}"] for q in QUANTILES]
            assert pooled == expected_quantiles(h[k])  # all units of member k, no other member
            assert metrics[k][f"act/h{i}/mean"] == pytest.approx(h[k].mean().item(), rel=1e-5)
            assert metrics[k][f"act/h{i}/std"] == pytest.approx(h[k].std().item(), rel=1e-5)


@pytest.mark.parametrize("unit", [0, 1, 3])
def test_conv_unit_is_a_feature_map(unit):
    """[P, N, C, H, W]: unit c of member k is all N*H*W values of h[k, :, c]. Catches: one
    position only (h[k, :, c, 0, 0]), indexing H or W instead of C, a reshape that mixes
    channels (h.reshape(P, N, -1)[:, :, c]), or the wrong member."""
    h = distinct_units(2, 20, 4, 5, 6)
    metrics = sigmoid_input_quantiles([h], unit=unit, quantiles=QUANTILES)
    assert len(metrics) == 2
    for k in range(2):
        got = [metrics[k][f"act/h1/{quantile_key(q)}"] for q in QUANTILES]
        assert got == expected_quantiles(h[k, :, unit])
        assert [metrics[k][f"act/h1/all_{quantile_key(q)}"] for q in QUANTILES] == \
            expected_quantiles(h[k])


def test_unit_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="probe.unit=5"):
        sigmoid_input_quantiles([torch.randn(1, 3, 4)], unit=5, quantiles=[0.5])


def test_quantile_key():
    assert [quantile_key(q) for q in (0.05, 0.15, 0.5, 0.85)] == ["q05", "q15", "q50", "q85"]
