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


def test_per_member_exponential_decay_matches_torch_sgd_with_its_scheduler():
    """Each member follows torch.optim.SGD (momentum, weight decay) under LambdaLR with
    lr * decay^(t / steps): catches a schedule shared across members, one step off, or a
    staircase instead of a smooth decay."""
    settings = [(0.1, 0.5, 3.0, 0.9, 1e-2), (0.05, 1.0, 1.0, 0.5, 0.0), (0.2, 0.25, 2.0, 0.0, 1e-3)]
    P = len(settings)
    model = MLP(list(range(P)), 12, [8])
    lr, decay, steps, momentum, wd = (torch.tensor(c) for c in zip(*settings, strict=True))
    ours = PopulationSGD(model.parameters(), lr, momentum, wd, decay, steps)
    references = []
    for k, (lr_k, decay_k, steps_k, mom_k, wd_k) in enumerate(settings):
        params = [p.detach()[k].clone().requires_grad_() for p in model.parameters()]
        sgd = torch.optim.SGD(params, lr=lr_k, momentum=mom_k, weight_decay=wd_k)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            sgd, lambda t, d=decay_k, s=steps_k: d ** (t / s))
        references.append((params, sgd, schedule))
    x = torch.randn(10, P, 4, 12)
    for step in range(1, 11):
        model.zero_grad()
        (model(x[step - 1]) ** 2).sum().backward()
        ours.set_step(step)
        ours.step(torch.ones(P, dtype=torch.bool))
        for k, (params, sgd, schedule) in enumerate(references):
            for p, full in zip(params, model.parameters(), strict=True):
                p.grad = full.grad[k].clone()
            sgd.step()
            schedule.step()
    for k, (params, *_) in enumerate(references):
        for p, full in zip(params, model.parameters(), strict=True):
            torch.testing.assert_close(full.detach()[k], p.detach(), rtol=1e-5, atol=1e-6)
