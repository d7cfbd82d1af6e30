"""A frozen (diverged) member stays bit-identical, whatever its weights hold."""

import pytest
import torch

from bnrepro.models import MLP
from bnrepro.optim import PopulationSGD


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.0, 0.0), (0.0, 1e-3), (0.9, 1e-3)])
def test_frozen_member_is_untouched_even_with_inf_weights_and_nan_grads(momentum,
                                                                        weight_decay):
    """Seen: with weight decay, inf weights of a frozen member got inf * 0 = NaN written."""
    model = MLP([0, 1], 12, [8])
    opt = PopulationSGD(model.parameters(), torch.tensor([0.1, 0.1]),
                        torch.tensor([momentum] * 2), torch.tensor([weight_decay] * 2))
    model(torch.randn(2, 4, 12)).sum().backward()
    opt.step(torch.tensor([True, True]))  # fill the momentum buffers
    with torch.no_grad():
        model.hidden[0].weight[1, 0, 0] = float("inf")
    before = [p.detach().clone() for p in model.parameters()]
    buffers = [b.clone() for b in opt.buffers]
    model.zero_grad()
    model(torch.randn(2, 4, 12)).sum().backward()
    for p in model.parameters():
        p.grad[1] = float("nan")
    opt.step(torch.tensor([True, False]))
    for b, p in zip(before, model.parameters(), strict=True):
        assert torch.equal(b[1], p[1]) and not torch.equal(b[0], p[0])
    for b, buf in zip(buffers, opt.buffers, strict=True):
        assert torch.equal(b[1], buf[1])


def test_active_members_update_as_if_nobody_were_frozen():
    models = [MLP([0, 1], 12, [8]) for _ in range(2)]
    opts = [PopulationSGD(m.parameters(), torch.tensor([0.1, 0.2]), torch.tensor([0.9, 0.5]),
                          torch.tensor([1e-3, 1e-2])) for m in models]
    x = torch.randn(2, 4, 12)
    for active in ([True, True], [True, False]):
        for model in models:
            model.zero_grad()
            model(x).sum().backward()
        opts[0].step(torch.tensor([True, True]))
        opts[1].step(torch.tensor(active))
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a[0], b[0])
