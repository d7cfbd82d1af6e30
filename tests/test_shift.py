"""Distributional shift (shift.py) and the probe noise of the training network: the W1 of the
sketches against an independent computation, exactly zero where nothing moved, the right
member / layer / unit in a population that differs, chunking and resumption change nothing."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from bnrepro.config import compose_config
from bnrepro.data.datasets import Dataset, InputTransform
from bnrepro.data.sampling import fixed_subset, validation_split
from bnrepro.measures.evaluation import Evaluator
from bnrepro.measures.shift import ShiftTracker, UnitValues, quantile_sketch, sketch_w1
from bnrepro.models import build_model
from bnrepro.norms.noisy import SanturkarNoise
from bnrepro.run import checkpoint
from bnrepro.run.store import read_metrics, read_summary
from bnrepro.seeding import occasion_generator
from bnrepro.train import train_population
from tests.conftest import REPO, stop_before_step


def w1_from_cdfs(a: torch.Tensor, b: torch.Tensor) -> float:
    """W1 = integral |F_a(x) - F_b(x)| dx over the merged support (scipy's algorithm, written
    out: scipy is not in the venv). Another formula than the sketch's sorted differences, and
    valid for samples of any sizes."""
    a, b = a.double().sort().values, b.double().sort().values
    points = torch.cat([a, b]).sort().values
    cdf_a = torch.searchsorted(a, points[:-1], right=True).double() / len(a)
    cdf_b = torch.searchsorted(b, points[:-1], right=True).double() / len(b)
    return float(((cdf_a - cdf_b).abs() * points.diff()).sum())


# ---- the measure itself ----

def test_the_sketch_at_as_many_levels_as_values_is_the_exact_w1():
    """Catches: quantile levels off by one (k/K or (k-1)/K), interpolated quantiles, a sketch
    that is not sorted, W1 as a difference of means."""
    g = torch.Generator().manual_seed(0)
    for M in (1, 7, 960):
        a = torch.randn(M, generator=g, dtype=torch.float64)
        b = 0.7 * torch.randn(M, generator=g, dtype=torch.float64) ** 3 + 0.3
        qa, qb = quantile_sketch(a, M), quantile_sketch(b, M)
        assert torch.equal(qa, a.sort().values)
        assert sketch_w1(qa, qb).item() == pytest.approx(w1_from_cdfs(a, b), rel=1e-12)


@pytest.mark.parametrize("same_examples", [False, True])
@pytest.mark.parametrize(("shift", "scale"), [(0.0, 1.0), (0.02, 1.05), (0.1, 1.0), (0.0, 1.3),
                                              (0.5, 0.8)])
def test_the_default_sketch_is_within_a_hundredth_of_a_std_on_probe_sized_gaussians(
        shift, scale, same_examples):
    """K = 100 levels for M = 960 values (MNIST's training-network probe set), values of
    std 1: |sketch W1 - exact W1| <= 0.01, the error the config comment and the shift.py
    docstring quote. Samples independent, or the same examples moved (as between two
    evaluations of one probe set)."""
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        a = torch.randn(960, generator=g, dtype=torch.float64)
        b = a if same_examples else torch.randn(960, generator=g, dtype=torch.float64)
        b = b * scale + shift + (0.05 * torch.randn(960, generator=g) if same_examples else 0)
        exact = w1_from_cdfs(a, b)
        approx = sketch_w1(quantile_sketch(a, 100), quantile_sketch(b, 100)).item()
        assert abs(approx - exact) <= 0.01


def test_the_sketch_error_bound_holds_for_heavy_tails():
    """|error| <= (range(a) + range(b)) / K, the bound of the docstring."""
    g = torch.Generator().manual_seed(2)
    for K in (3, 10, 100):
        a = torch.distributions.StudentT(1.5).sample((500,)).double()
        b = torch.empty(700, dtype=torch.float64).exponential_(generator=g)
        # unequal sizes: the sketch compares quantile functions, the bound still applies
        error = abs(sketch_w1(quantile_sketch(a, K), quantile_sketch(b, K)).item()
                    - w1_from_cdfs(a, b))
        assert error <= (a.max() - a.min() + b.max() - b.min()).item() / K


def distinct_units(P: int, N: int, U: int, *spatial: int) -> torch.Tensor:
    """[P, N, U, ...]: member k, unit u ~ N(100 k + 10 u, (1 + u)^2), so taking another member
    or unit changes every quantile."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(P, N, U, *spatial, generator=g)
    view = (P, 1, U, *[1] * len(spatial))
    centre = (100 * torch.arange(P).view(P, 1) + 10 * torch.arange(U)).view(view)
    return x * (1 + torch.arange(U, dtype=torch.float)).view(1, 1, U, *[1] * len(spatial)) \
        + centre


def test_unit_values_are_per_member_and_channel_and_do_not_depend_on_chunks():
    """Conv maps [P, N, C, H, W]: unit c of member k is h[k, :, c] at the kept positions, the
    same positions in every example. Catches a reshape that mixes channels or members, and a
    stride that restarts at each chunk (results would depend on eval_memory_mb)."""
    h = distinct_units(2, 12, 3, 5, 4)
    whole, chunked = UnitValues(12, 12 * 7), UnitValues(12, 12 * 7)  # stride ceil(20*12/84)=3
    whole.add([h])
    for part in h.split(5, dim=1):
        chunked.add([part])
    expected = h.flatten(3)[..., ::3].transpose(1, 2).reshape(2, 3, -1)  # 7 positions each
    assert torch.equal(torch.cat(whole.values[0], 2), expected)
    assert torch.equal(torch.cat(chunked.values[0], 2), expected)
    sketch = whole.sketches(5)[0]
    assert torch.equal(sketch.quantiles, quantile_sketch(expected, 5))
    assert torch.allclose(sketch.std, expected.std(dim=2, unbiased=False), rtol=1e-5)


def test_the_tracker_compares_each_member_with_its_own_references():
    """Catches: one member's reference used for another, w1_prev taken against step 0 (or
    w1_init against the previous evaluation), the relative value not divided by the
    reference's spread."""
    levels = 50  # = the number of values: the exact W1

    def sketch(x: torch.Tensor):
        units = UnitValues(x.shape[1], 10**6)
        units.add([x])
        return units.sketches(levels)

    tracker = ShiftTracker(levels)
    x0 = distinct_units(2, 50, 3)  # [P, N, U]
    x1 = x0.clone()
    x1[1] = x1[1] * 2 + 1  # member 1 moves, member 0 does not
    x2 = x1.clone()
    x2[0] = x2[0] + 3
    rows = []
    for x in (x0, x1, x2):
        rows.append(tracker.update("shift", sketch(x)))
        tracker.finish_evaluation()
    assert rows[0][0] == {"shift/h1/w1_init": 0.0, "shift/h1/w1_init_rel": 0.0}
    assert rows[1][0]["shift/h1/w1_prev"] == 0.0 and rows[1][0]["shift/h1/w1_init"] == 0.0

    def direct(now, ref, k):
        w1 = [w1_from_cdfs(now[k, :, u], ref[k, :, u]) for u in range(3)]
        return sum(w1) / 3, sum(w1) / ref[k].double().std(0, unbiased=False).sum().item()

    for step, (now, prev) in enumerate(((x1, x0), (x2, x1)), start=1):
        for k in (0, 1):
            for name, ref in (("prev", prev), ("init", x0)):
                mean, rel = direct(now, ref, k)
                assert rows[step][k][f"shift/h1/w1_{name}"] == pytest.approx(mean, rel=1e-5)
                assert rows[step][k][f"shift/h1/w1_{name}_rel"] == pytest.approx(rel, rel=1e-5)
    assert rows[2][0]["shift/h1/w1_prev"] == pytest.approx(3.0, rel=1e-6)  # a pure shift by 3


# ---- through the evaluator ----

def tiny_mnist() -> Dataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (700, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (700,), generator=g)
    return Dataset("mnist", images[:600], labels[:600], images[600:], labels[600:])


def evaluator_setup(norm: str, *overrides: str, seeds=(0, 1)):
    # 240 probe examples = 4 training mini-batches of 60; 240 levels: the exact W1
    cfg = compose_config(["experiment=fig1_mnist", "model.hidden=[12,12]", f"model.norm={norm}",
                          "dataset.val_size=300", "trainer.population_batches=2",
                          "probe.num_examples=240", "probe.shift.levels=240", *overrides])
    ds = tiny_mnist()
    transform = InputTransform(ds, cfg.dataset.binarize)
    train, val = validation_split(len(ds.train_labels), cfg.dataset.val_size)
    cfgs = [OmegaConf.merge(cfg, {"seed": s}) for s in seeds]
    model = build_model(cfgs, ds.image_shape)
    return cfg, ds, transform, train, val, model


@pytest.mark.parametrize("norm", ["none", "bn"])
def test_an_unchanged_net_has_exactly_zero_shift(norm):
    cfg, ds, transform, train, val, model = evaluator_setup(norm)
    evaluate = Evaluator(cfg, ds, transform, train, val, seeds=[0, 1])
    first, second = evaluate(model, step=0), evaluate(model, step=10)
    for rows in (first, second):
        for row in rows:
            shift = {k: v for k, v in row.items() if k.startswith("shift")}
            assert len(shift) == (2 if rows is first else 4) * 2 * 2  # keys x layers x networks
            assert set(shift.values()) == {0.0}
    assert "shift/h2/w1_prev" not in first[0]  # nothing to compare with at step 0


def test_evaluator_shift_is_the_w1_of_the_right_member_and_layer():
    """A population of 2 different nets; only member 1's first layer is changed between the
    evaluations. Catches: the wrong member, layer or network's values, probe examples other
    than the fixed ones, W1 of pooled units."""
    cfg, ds, transform, train, val, model = evaluator_setup("none")
    evaluate = Evaluator(cfg, ds, transform, train, val, seeds=[0, 1])
    probe = transform(ds.train_images[val[fixed_subset(len(val), 240)]]).flatten(1)
    layer = model.hidden[0]

    def first_layer(k: int) -> torch.Tensor:  # [240, 12]: the inference network's inputs
        return probe @ layer.weight[k].detach() + layer.bias[k].detach()

    evaluate(model, step=0)
    before = first_layer(1)
    with torch.no_grad():
        layer.weight[1] *= 1.5
        layer.bias[1] += 0.2
    rows = evaluate(model, step=5)
    after = first_layer(1)
    w1 = [w1_from_cdfs(after[:, u], before[:, u]) for u in range(12)]
    assert rows[1]["shift_inference/h1/w1_prev"] == pytest.approx(sum(w1) / 12, rel=1e-4)
    assert rows[1]["shift_inference/h1/w1_prev_rel"] == pytest.approx(
        sum(w1) / before.double().std(0, unbiased=False).sum().item(), rel=1e-4)
    assert rows[1]["shift_inference/h1/w1_init"] == rows[1]["shift_inference/h1/w1_prev"]
    assert rows[1]["shift_inference/h1/w1_prev"] > 0.05
    assert rows[0]["shift_inference/h1/w1_prev"] == 0.0 and rows[0]["shift/h2/w1_prev"] == 0.0
    assert rows[1]["shift_inference/h2/w1_prev"] > 0  # the change propagates to layer 2


def test_probe_noise_is_alg1_from_the_probe_stream_of_the_step():
    """The training network's probe of noisy BN: BN of each mini-batch of 60, then
    s * y + m with (mu, sigma) per unit from the probe stream of (seed, step, layer) and
    (m, s) per mini-batch from (seed, step, layer, batch), as Alg. 1 draws them. Catches: no
    noise in the probes, the training stream used (or advanced), noise per chunk instead of
    per evaluation, another member's seed."""
    cfg, ds, transform, train, val, model = evaluator_setup("noisy_bn", seeds=(3, 4))
    streams = [g for m in model.modules() if isinstance(m, SanturkarNoise) for g in m.generators]
    states = [g.get_state() for g in streams]
    rows = Evaluator(cfg, ds, transform, train, val, seeds=[3, 4])(model, step=7)
    assert all(torch.equal(g.get_state(), s) for g, s in zip(streams, states, strict=True))
    x = transform(ds.train_images[train[fixed_subset(len(train), 240, seed=1)]]).flatten(1)
    noise = model.norms[0].noise
    for k, seed in enumerate((3, 4)):
        raw = (x @ model.hidden[0].weight[k].detach()).unflatten(0, (4, 60))
        y = (raw - raw.mean(1, keepdim=True)) / torch.sqrt(raw.var(1, unbiased=False,
                                                                   keepdim=True) + 1e-5)
        y = y * model.norms[0].weight[k].detach() + model.norms[0].bias[k].detach()
        g = occasion_generator(seed, "probe_noise", 7, 0)
        mu = (torch.rand(12, generator=g) * 2 - 1) * 0.5  # n_mu 0.5, n_sigma 1.25
        sigma = 1 + torch.rand(12, generator=g) * 0.25
        noisy = []
        for b in range(4):
            g = occasion_generator(seed, "probe_noise", 7, 0, b)
            m = mu + (torch.rand(60, 12, generator=g) * 2 - 1) * noise.r_mu
            s = sigma + torch.randn(60, 12, generator=g) * noise.s_std
            noisy.append(s * y[b] + m)
        unit = torch.cat(noisy)[:, cfg.probe.unit]
        expected = torch.quantile(unit, torch.tensor([0.15, 0.5, 0.85])).tolist()
        got = [rows[k][f"act_train/h1/q{q}"] for q in (15, 50, 85)]
        assert got == pytest.approx(expected, abs=1e-4), k


def test_noisy_bn_shift_is_in_the_training_network_only_and_follows_the_step():
    """An unchanged noisy BN net: the inference network (no noise) has zero shift; the
    training network's noise is redrawn per evaluation (a step is a time t), so it shifts;
    the same step redraws the same noise; probe.train_noise=false removes it."""
    cfg, ds, transform, train, val, model = evaluator_setup("noisy_bn")
    evaluate = Evaluator(cfg, ds, transform, train, val, seeds=[0, 1])
    evaluate(model, step=0)
    moved = evaluate(model, step=10)
    same = evaluate(model, step=10)
    for k in (0, 1):
        assert moved[k]["shift_inference/h1/w1_prev"] == 0.0
        assert moved[k]["shift/h1/w1_prev_rel"] > 0.1
        assert same[k]["shift/h1/w1_prev"] == 0.0 and same[k]["shift/h2/w1_prev"] == 0
    quiet_cfg = OmegaConf.merge(cfg, {"probe": {"train_noise": False}})
    quiet = Evaluator(quiet_cfg, ds, transform, train, val, seeds=[0, 1])
    quiet(model, step=0)
    assert quiet(model, step=10)[0]["shift/h1/w1_prev"] == 0.0


def test_chunking_changes_no_probe_noise():
    cfg, ds, transform, train, val, model = evaluator_setup("noisy_bn")
    whole = Evaluator(cfg, ds, transform, train, val, seeds=[0, 1])
    tiny_cfg = OmegaConf.merge(cfg, {"trainer": {"eval_memory_mb": 0.01}})  # one batch a pass
    tiny = Evaluator(tiny_cfg, ds, transform, train, val, seeds=[0, 1])
    for step in (0, 3):
        a, b = whole(model, step=step), tiny(model, step=step)
        for ra, rb in zip(a, b, strict=True):
            assert ra.keys() == rb.keys()
            for key in ra:
                assert ra[key] == pytest.approx(rb[key], abs=1e-5), key


# ---- through the trainer: resumption ----

RUN = ["experiment=fig1_mnist", "model.hidden=[16,16]", "trainer.max_steps=40",
       "trainer.eval_every=10", "trainer.test_every=40", "trainer.checkpoint_every=20",
       "trainer.population_batches=2", "probe.num_examples=120", "trainer.progress=false"]


def stop_at(monkeypatch, step: int) -> None:
    """Make the trainer raise once, just before the update of `step`."""
    stop_before_step(monkeypatch, step)


def shift_rows(run_dir) -> dict[int, dict]:
    return {r["step"]: {k: v for k, v in r.items() if k.startswith("shift")}
            for r in read_metrics(run_dir)}


def test_a_resumed_population_logs_the_shift_of_an_uninterrupted_one(tmp_path, mnist,
                                                                      monkeypatch):
    """Stopped at step 25 (checkpoint at 20), rerun: the evaluations at 30 and 40 compare with
    the step-0 and step-20 sketches from the checkpoint. Catches references that are not
    saved (w1_init restarting at the resume, w1_prev missing at step 30) or restored to the
    wrong member (the seeds differ)."""
    cfgs = [compose_config([*RUN, "model.norm=noisy_bn", f"seed={s}"]) for s in (0, 1)]
    stopped = [tmp_path / f"stopped{k}" for k in range(2)]
    stop_at(monkeypatch, 25)
    with pytest.raises(RuntimeError, match="stopped for the test"):
        train_population(cfgs, stopped)
    assert checkpoint.steps(stopped[0]) == [20]
    train_population(cfgs, stopped)
    clean = [tmp_path / f"clean{k}" for k in range(2)]
    train_population(cfgs, clean)
    for a, b in zip(stopped, clean, strict=True):
        assert read_summary(a)["resumed_from_step"] == 20
        assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
        rows = shift_rows(a)
        assert rows[30]["shift/h2/w1_prev"] > 0 and rows[30]["shift_inference/h1/w1_init"] > 0
    assert shift_rows(stopped[0])[30] != shift_rows(stopped[1])[30]


def test_a_checkpoint_without_references_resumes_without_w1_init(tmp_path, mnist,
                                                                 monkeypatch):
    """A run checkpointed before the shift existed: no step-0 sketch to compare with, so no
    w1_init after the resume (not one measured against the resume step), and w1_prev from
    the second evaluation after it."""
    cfg = compose_config([*RUN, "model.norm=bn"])
    run = [tmp_path / "old"]
    stop_at(monkeypatch, 25)
    with pytest.raises(RuntimeError):
        train_population([cfg], run)
    file = checkpoint.path(run[0], 20)
    saved = torch.load(file, weights_only=True)
    del saved["state"]["shift"]
    torch.save(saved, file)
    train_population([cfg], run)
    rows = shift_rows(run[0])
    assert "shift_inference/h1/w1_init" in rows[20] and "shift_inference/h1/w1_init" not in rows[30]
    assert "shift_inference/h1/w1_prev" not in rows[30] and "shift_inference/h1/w1_prev" in rows[40]
    assert not any("w1_init" in k for s in (30, 40) for k in rows[s])
    assert math.isfinite(rows[40]["shift/h2/w1_prev"])


# ---- configuration: a measurement knob, not a trajectory key ----

def test_the_knob_turns_the_shift_off():
    cfg, ds, transform, train, val, model = evaluator_setup("bn", "probe.shift.enabled=false")
    evaluate = Evaluator(cfg, ds, transform, train, val, seeds=[0, 1])
    rows = [evaluate(model, step=s) for s in (0, 10)]
    assert not any(k.startswith("shift") for r in rows for row in r for k in row)
    assert evaluate.resumable() == {}
    assert "act_train/h1/q50" in rows[1][0]  # the probes themselves go on


def test_shift_knobs_change_neither_the_run_directory_nor_the_fingerprint():
    """Runs checkpointed before these knobs existed must resume (no ResumeMismatchError), and
    turning the measurement off or refining it must find the same run directory."""
    cfg = compose_config(["experiment=santurkar_mnist"])
    old = OmegaConf.to_container(cfg, resolve=True)
    del old["probe"]["shift"], old["probe"]["train_noise"]
    assert checkpoint.fingerprint(cfg) == checkpoint.fingerprint(OmegaConf.create(old))
    other = compose_config(["experiment=santurkar_mnist", "probe.shift.levels=7",
                            "probe.shift.enabled=false", "probe.train_noise=false"])
    assert checkpoint.fingerprint(other) == checkpoint.fingerprint(cfg)
    excluded = OmegaConf.load(REPO / "conf" / "train.yaml").hydra.job.config.override_dirname
    knobs = OmegaConf.load(REPO / "conf" / "probe" / "default.yaml")
    for key in [f"probe.shift.{k}" for k in knobs.shift] + ["probe.train_noise"]:
        assert key in excluded.exclude_keys, key
