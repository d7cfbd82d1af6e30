"""The deep linear network of Santurkar et al. (App. A.1) and its training loop."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from bnrepro.config import CONF_DIR
from bnrepro.models.deep_linear import DeepLinearNet, squared_error
from bnrepro.run.store import read_metrics, read_summary
from bnrepro.train_dln import make_problem, train_population


def dln_config(tmp_path, **overrides):
    cfg = OmegaConf.load(CONF_DIR / "dln.yaml")
    cfg.pop("defaults")
    cfg.pop("hydra")
    measures = OmegaConf.load(CONF_DIR / "measures" / "default.yaml")
    cfg.measures = OmegaConf.merge(measures, cfg.measures)
    cfg.out_dir = str(tmp_path)
    cfg.progress = False
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def test_without_a_norm_the_net_is_the_product_of_its_matrices():
    x, _ = make_problem(0, 50, 4)
    net = DeepLinearNet([3, 7], dim=4, depth=5)
    out = net(x)
    for k in range(2):
        product = torch.eye(4)
        for layer in net.layers:
            product = product @ layer.weight[k]
        torch.testing.assert_close(out[k], x @ product, rtol=1e-5, atol=1e-5)


def test_glorot_uniform_per_member_from_its_seed():
    net = DeepLinearNet([1, 2], dim=10, depth=3)
    bound = math.sqrt(6 / 20)
    w = torch.stack([layer.weight for layer in net.layers])
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert not torch.equal(w[:, 0], w[:, 1])  # members differ
    solo = DeepLinearNet([2], dim=10, depth=3)  # member 1 alone: the same weights
    for a, b in zip(net.layers, solo.layers, strict=True):
        assert torch.equal(a.weight[1], b.weight[0])


def test_the_loss_is_the_summed_squared_error():
    pred, target = torch.randn(2, 5, 3), torch.randn(5, 3)
    expected = torch.stack([((pred[k] - target) ** 2).sum() for k in range(2)])
    torch.testing.assert_close(squared_error(pred, target), expected)


def test_targets_are_a_linear_map_of_the_inputs():
    x, y = make_problem(5, 30, 4)
    a = torch.linalg.lstsq(x, y).solution
    torch.testing.assert_close(x @ a, y, rtol=1e-4, atol=1e-4)
    assert torch.equal(make_problem(5, 30, 4)[1], y)


@pytest.mark.parametrize("norm", ["none", "bn"])
def test_a_member_trains_as_its_solo_run_and_gradient_descent_lowers_the_loss(tmp_path, norm):
    common = dict(steps=6, log_every=3, depth=6, samples=64, lrs=[1e-4, 3e-4])
    train_population(dln_config(tmp_path / "pop", seeds=[0, 1], **common), norm)
    solo = dict(common, lrs=[3e-4])
    train_population(dln_config(tmp_path / "solo", seeds=[1], **solo), norm)
    pop_rows = read_metrics(tmp_path / "pop" / f"norm={norm},lr=0.0003,seed=1")
    solo_rows = read_metrics(tmp_path / "solo" / f"norm={norm},lr=0.0003,seed=1")
    assert [r["step"] for r in pop_rows] == [0, 3, 6]
    for a, b in zip(pop_rows, solo_rows, strict=True):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5)
    losses = [r["train/loss"] for r in pop_rows]
    assert losses[-1] < losses[0]
    assert read_summary(tmp_path / "pop" / f"norm={norm},lr=0.0001,seed=0")["status"] == \
        "completed"


def test_measures_are_logged_at_their_steps_and_a_finished_run_is_not_retrained(tmp_path):
    cfg = dln_config(tmp_path, steps=4, log_every=2, depth=4, samples=32, seeds=[0],
                     lrs=[1e-4], **{"measures.ics.every": 2, "measures.ics.layers": [1, 3],
                                    "measures.landscape.every": 2})
    train_population(cfg, "bn")
    run = tmp_path / "norm=bn,lr=0.0001,seed=0"
    rows = read_metrics(run)
    measured = [r for r in rows if "ics/h3/l2" in r]
    assert [r["step"] for r in measured] == [2, 4]
    for r in measured:  # layer 1 has nothing below it (Def. 2.1)
        assert r["ics/h1/l2"] == 0 and r["ics/h1/cos"] == 1
        assert r["landscape/loss_range"] >= 0 and r["landscape/beta"] > 0
    before = (run / "metrics.jsonl").stat().st_mtime_ns
    train_population(cfg, "bn")
    assert (run / "metrics.jsonl").stat().st_mtime_ns == before


def test_the_runs_reader_finds_dln_runs_with_their_loss_rows_and_measures(tmp_path):
    from bnrepro.run.runs import find_runs

    cfg = dln_config(tmp_path, steps=4, log_every=2, depth=3, samples=16, seeds=[0],
                     lrs=[1e-4], **{"measures.landscape.steps": [1]})
    train_population(cfg, "none")
    (run,) = find_runs([tmp_path])
    assert list(run.metrics["step"]) == [0, 2, 4]
    assert list(run.measures["step"]) == [1]


def test_how_a_run_trains_does_not_make_a_finished_run_train_again(tmp_path):
    """progress and threads (like device) say how a run trains, not what it is: `make dln`
    after a run with progress=false retrained everything."""
    common = dict(steps=2, log_every=2, depth=3, samples=16, seeds=[0], lrs=[1e-4])
    train_population(dln_config(tmp_path, progress=False, threads=1, **common), "none")
    metrics = tmp_path / "norm=none,lr=0.0001,seed=0" / "metrics.jsonl"
    before = metrics.stat().st_mtime_ns
    train_population(dln_config(tmp_path, progress=True, threads=None, device="cpu",
                                **common), "none")
    assert metrics.stat().st_mtime_ns == before
