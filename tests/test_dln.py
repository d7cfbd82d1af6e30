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


# A population of two seeds, checkpointed every 4 of 12 steps; the measures fall on steps
# between checkpoints (ICS 3, 6, 9, 12; landscape 5, 10), so rows logged after a checkpoint
# (step 5's measures are the first) must be dropped and logged again on a resume.
RESUMABLE = dict(steps=12, log_every=2, checkpoint_every=4, depth=4, samples=32, seeds=[0, 1],
                 lrs=[1e-4], **{"measures.ics.every": 3, "measures.ics.layers": [1, 3],
                                "measures.landscape.every": 5})
TIMING_KEYS = ("wall_time_s", "resumed_from_step")


class Interrupted(KeyboardInterrupt):
    """Raised from on_step: ^C at a known step."""


def interrupt_after(step: int, seen: list[int]):
    def on_step(t: int) -> None:
        seen.append(t)
        if t == step:
            raise Interrupted(f"after the update of step {t}")
    return on_step


def final_state(run) -> dict:
    from bnrepro.run import checkpoint

    (step,) = checkpoint.steps(run)  # only the final one is left
    return torch.load(checkpoint.path(run, step), weights_only=True)


def member_dirs(root, norm):
    return [root / f"norm={norm},lr=0.0001,seed={s}" for s in RESUMABLE["seeds"]]


# noisy_bn: its forward pass draws from the members' noise streams, so a resume must restore
# them as they were before the forward pass of the checkpoint's step (not after it).
@pytest.mark.parametrize("norm", ["bn", "noisy_bn"])
def test_an_interrupted_population_resumes_and_ends_as_one_never_interrupted(tmp_path, norm):
    from bnrepro.run import checkpoint

    train_population(dln_config(tmp_path / "clean", **RESUMABLE), norm)
    cfg = dln_config(tmp_path / "killed", **RESUMABLE)
    first: list[int] = []
    with pytest.raises(Interrupted):
        train_population(cfg, norm, on_step=interrupt_after(7, first))
    killed, clean = member_dirs(tmp_path / "killed", norm), member_dirs(tmp_path / "clean", norm)
    for run in killed:
        assert read_summary(run)["status"] == "interrupted"
        assert checkpoint.steps(run) == [4]
        assert max(r["step"] for r in read_metrics(run)) > 4  # rows the resume must drop
    again: list[int] = []
    train_population(cfg, norm, on_step=again.append)
    assert again[0] == 5  # the updates after the checkpoint, not from step 1
    for a, b in zip(killed, clean, strict=True):
        assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
        resumed, whole = read_summary(a), read_summary(b)
        assert resumed["resumed_from_step"] == 4 and whole["resumed_from_step"] is None
        assert {k: v for k, v in resumed.items() if k not in TIMING_KEYS} == \
            {k: v for k, v in whole.items() if k not in TIMING_KEYS}
        # every tensor of the final state: weights, BN's running statistics, noise streams
        assert_same_tree(final_state(a)["state"], final_state(b)["state"])


def assert_same_tree(a, b, where: str = "state") -> None:
    """`a` and `b` (dicts and lists of tensors and plain values) hold the same keys and
    values, every tensor bit for bit."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_a_checkpoint_of_another_config_is_refused_with_what_to_do(tmp_path, capsys):
    from bnrepro.run import checkpoint
    from bnrepro.train_dln import main

    cfg = dln_config(tmp_path, **RESUMABLE)
    with pytest.raises(Interrupted):
        train_population(cfg, "bn", on_step=interrupt_after(5, []))
    changed = dln_config(tmp_path, **dict(RESUMABLE, samples=64))
    with pytest.raises(checkpoint.ResumeMismatchError, match="samples.*another out_dir"):
        train_population(changed, "bn")
    changed.norms = ["bn"]
    with pytest.raises(SystemExit) as exit_:  # the command line: one error line, status 2
        main.__wrapped__(changed)
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "samples" in line
    # nothing was trained or rewritten: the checkpoint still resumes the original config
    assert all(read_summary(run)["status"] == "interrupted" for run in member_dirs(tmp_path, "bn"))
    assert checkpoint.steps(member_dirs(tmp_path, "bn")[0]) == [4]
    # how a run trains is not what it is: another cadence of checkpoints resumes
    train_population(dln_config(tmp_path, **dict(RESUMABLE, checkpoint_every=0)), "bn")
    assert read_summary(member_dirs(tmp_path, "bn")[0])["resumed_from_step"] == 4


def test_a_finished_population_is_not_trained_again_diverged_members_included(tmp_path):
    """A member that diverged is finished too (its final checkpoint says so): a rerun trains
    nothing, and a changed config is refused rather than trained over the finished runs."""
    from bnrepro.run import checkpoint

    cfg = dln_config(tmp_path, **dict(RESUMABLE, lrs=[1e-4, 1e3]))  # 1e3 diverges
    train_population(cfg, "none")
    runs = [*member_dirs(tmp_path, "none"), tmp_path / "norm=none,lr=1000,seed=0"]
    assert read_summary(runs[0])["status"] == "completed"
    assert read_summary(runs[-1])["status"] == "diverged"
    before = {run: (run / "metrics.jsonl").stat().st_mtime_ns for run in runs}
    called: list[int] = []
    assert [s["status"] for s in train_population(cfg, "none", on_step=called.append)] == \
        ["completed", "completed", "diverged", "diverged"]
    assert not called
    assert {run: (run / "metrics.jsonl").stat().st_mtime_ns for run in runs} == before
    with pytest.raises(checkpoint.ResumeMismatchError):
        train_population(dln_config(tmp_path, **dict(RESUMABLE, lrs=[1e-4, 1e3], steps=20)),
                         "none")
