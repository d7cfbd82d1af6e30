"""bnrepro.experiments.depth: accuracies recomputed from the metrics files at each variant's
best rate on validation, diverged runs (even those that logged nothing) counted as failures,
verdicts that flip when the numbers flip (and say "not measured" when the depths tried cap the
comparison), the init sweep's ratios equal to a real run's step-0 evaluation, the per-channel
variance recomputed by hand, and bad input refused with exit code 2.

The store the fast tests read is written with the harness's own RunStore from real
depth_cifar configs at two rates; its accuracies are made up (real training of 24 runs costs
minutes). The init sweep runs for real on the cifar10-jpeg cache (fresh tiny nets, forward
passes). One slow test trains tiny real runs through the CLI and checks the command end to end.
Other cases are made by editing a COPY of the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bnrepro.analysis.seeds import matches
from bnrepro.claims import read_claims
from bnrepro.config import compose_config
from bnrepro.experiments import depth as depth_experiment
from bnrepro.models.residual_variance import ResidualMoments
from bnrepro.run.store import RunStore
from tests import store_edits
from tests.conftest import REPO, copy_store, require_dataset
from tests.store_edits import config, metrics

DATASET = "cifar10-jpeg"
# depth 8: 3 blocks, depth 14: 6 (= depth.MIN_BLOCKS: the slope claims use it)
TINY = ["model.width_multiplier=0.25", "trainer.max_steps=4", "trainer.eval_every=2",
        "trainer.test_every=4", "dataset.val_size=200", "probe.num_examples=32",
        "trainer.batch_size=16", "trainer.population_batches=2", "trainer.progress=false",
        "trainer.eval_memory_mb=64"]
LABELS = {"bn": "BN", "none": "NoNorm", "skipinit": "SkipInit"}
RATES = (0.05, 0.01)
INIT = ["--init-depths", "8,14"]  # the init sweep of the fast tests (depth 14: 6 blocks)
# Made-up test accuracies per variant, depth and rate (None = diverged at step 1).
ACCURACY = {"BN": {8: (0.30, 0.28), 14: (0.32, 0.29)}, "NoNorm": {8: (0.22, 0.24),
                                                                  14: (None, None)},
            "SkipInit": {8: (0.26, 0.25), 14: (0.27, 0.25)}}


def write_run(run_dir: Path, cfg, accuracy: float | None) -> None:
    store = RunStore(run_dir, cfg)
    init = [0.5 / b for b in range(1, (cfg.model.depth - 2) // 2 + 1)]  # made up: unused
    for step in (0, 2, 4):
        if accuracy is None and step > 0:
            break  # diverged at step 1: only the step-0 evaluation was logged
        acc = 0.1 if step == 0 else accuracy + 0.01 * cfg.seed - (0.02 if step == 2 else 0)
        row = {"step": step, "val/loss": 2.0, "val/acc": acc + 0.005}
        if step in (0, 4):
            row |= {"test/loss": 2.0, "test/acc": acc}
        row |= {f"resid/b{i}/var_ratio": r * (1 + step) for i, r in enumerate(init, start=1)}
        store.log(row)
    store.write_summary({"status": "diverged" if accuracy is None else "completed",
                         "diverged_at_step": 1 if accuracy is None else None})
    store.close()


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """BN, NoNorm and SkipInit at depths 8 and 14, rates RATES, seeds 0 and 1."""
    require_dataset(DATASET)  # the cache the init sweep reads
    root = tmp_path_factory.mktemp("depth") / f"depth_{DATASET}"
    for variant, label in LABELS.items():
        for depth in (8, 14):
            for k, lr in enumerate(RATES):
                for seed in (0, 1):
                    cfg = compose_config(["experiment=depth_cifar", f"dataset={DATASET}",
                                          f"depth_variant={variant}", f"model.depth={depth}",
                                          f"optim.lr={lr}", f"seed={seed}",
                                          f"dataset.root={REPO / 'data'}", *TINY])
                    assert cfg.variant == label
                    write_run(root / f"{variant},{depth},{lr},{seed}", cfg,
                              ACCURACY[label][depth][k])
    return root


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory) -> Path:
    """Real runs: BN, NoNorm and SkipInit at depths 8 and 14, seeds 0 and 1, 4 steps."""
    require_dataset(DATASET)  # the cache the training subprocess reads
    sweep = tmp_path_factory.mktemp("depth_real") / f"depth_{DATASET}"
    env = {**os.environ, "WANDB_MODE": "offline"}
    result = subprocess.run(
        [sys.executable, "-m", "bnrepro.train", "-m", "experiment=depth_cifar",
         f"dataset={DATASET}", "model.depth=8,14", "optim.lr=0.05,0.01", "seed=0,1", *TINY,
         f"hydra.sweep.dir={sweep}"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(sweep.rglob("summary.json"))) == 24
    return sweep


def run_dirs(root: Path, variant: str | None = None, depth: int | None = None,
             lr: float | None = None) -> list[Path]:
    return store_edits.select_runs(root, variant=variant, model__depth=depth, optim__lr=lr)


def edit_run(run_dir: Path, *, row=None, rows: int | None = None, status: str | None = None,
             **keys) -> None:
    """Edit a copied run in place: row(dict) changes each logged row, keep only the first
    `rows` rows, set the summary status, and set config keys given as a__b=value (a.b)."""
    store_edits.set_config(run_dir, **keys)
    lines = metrics(run_dir)[:rows]
    for r in lines:
        if row is not None:
            row(r)
    store_edits.write_metrics(run_dir, lines)
    if status:
        store_edits.update_summary(run_dir, {"status": status})


def set_init_ratios(values):
    """A row editor: step 0's var_ratio of block l becomes values(l)."""
    def edit(r: dict) -> None:
        if r["step"] == 0:
            for key in [k for k in r if k.endswith("/var_ratio")]:
                r[key] = values(int(key.split("/")[1][1:]))
    return edit


def set_accuracy(acc: float):
    def edit(r: dict) -> None:
        r["val/acc"] = acc
        if r.get("test/acc") is not None:
            r["test/acc"] = acc
    return edit


def run_command(root: Path, out: Path) -> tuple[pd.DataFrame, dict]:
    assert depth_experiment.main([str(root), "--out", str(out), *INIT]) == 0
    table = pd.read_csv(out / f"depth_{DATASET}.csv").set_index(["variant", "depth"])
    return table, json.loads((out / f"depth_{DATASET}.json").read_text())


def verdicts(numbers: dict) -> dict[str, str]:
    return {c["key"]: c["verdict"] for c in numbers["claims"]}


def independent(run_dir: Path, key: str) -> float:
    """`key` at the best-val evaluation among those with a test score; 0.1 if diverged."""
    if json.loads((run_dir / "summary.json").read_text())["status"] == "diverged":
        return 0.1
    tested = [r for r in metrics(run_dir) if r.get("test/acc") is not None]
    return max(tested, key=lambda r: r["val/acc"])[key]


def independent_best_rate(root: Path, variant: str, depth: int) -> float:
    """The rate whose seeds' mean validation score is highest (ties: the smaller rate)."""
    scores = {}
    for d in run_dirs(root, variant, depth):
        scores.setdefault(config(d)["optim"]["lr"], []).append(independent(d, "val/acc"))
    return max(sorted(scores), key=lambda lr: np.mean(scores[lr]))


def check_numbers_against_the_files(root: Path, out: Path) -> dict:
    table, numbers = run_command(root, out)
    assert numbers["dataset"] == DATASET and numbers["depths"] == [8, 14]
    assert numbers["rates"] == sorted(RATES)
    assert set(table.index) == {(v, d) for v in ("BN", "NoNorm", "SkipInit") for d in (8, 14)}
    for (variant, depth), row in table.iterrows():
        lr = independent_best_rate(root, variant, depth)
        assert row["best_rate"] == pytest.approx(lr)
        for d in run_dirs(root, variant, depth, lr):
            assert row[f"accuracy_seed{config(d)['seed']}"] == pytest.approx(
                independent(d, "test/acc"), abs=1e-4)
    for suffix in (".png", ".pdf", "_claims.md"):
        assert (out / f"depth_{DATASET}{suffix}").stat().st_size > 0
    claims = (out / f"depth_{DATASET}_claims.md").read_text()
    assert f"checked on {DATASET}" in claims and "CIFAR-10" not in claims
    assert "Verdict rule" in claims and claims.count(f"| {DATASET}: ") == 5
    data = read_claims(out / f"depth_{DATASET}_claims.json")  # what the report reads
    assert data["make"] == "make depth" and data["figures"] == [f"depth_{DATASET}.png"]
    assert [c["verdict"] for c in data["claims"]] == [c["verdict"] for c in numbers["claims"]]
    assert all(isinstance(c["evidence"], dict) and c["evidence"] for c in data["claims"])
    assert {(c["dataset"], c["source"]) for c in data["claims"]} == {(DATASET,
                                                                       "De & Smith (2020)")}
    return numbers


def test_numbers_are_those_of_the_metrics_files(store, tmp_path):
    numbers = check_numbers_against_the_files(store, tmp_path / "results")
    no_norm = numbers["variants"]["NoNorm"]["14"]
    assert (no_norm["diverged"], no_norm["accuracy_mean"]) == (2, 0.1)
    assert set(numbers["init_sweep"]["BN"]) == {"8", "14"}


@pytest.mark.slow
def test_real_runs_end_to_end(trained_store, tmp_path):
    check_numbers_against_the_files(trained_store, tmp_path / "results")


@pytest.mark.slow
def test_the_init_sweep_measures_what_a_run_logs_at_step_0(trained_store):
    """Issue 26: the ratio claims read fresh nets up to depth 110; built from the runs'
    config, at depths the runs trained they must give the runs' own step-0 numbers."""
    runs = depth_experiment.load_runs(trained_store)
    init = depth_experiment.init_sweep(runs, (8, 14))
    for r in runs:
        first = r["metrics"].iloc[0]
        assert first["step"] == 0
        k = init[r["variant"]][r["depth"]]["seeds"].index(r["seed"])
        for measure, suffix in depth_experiment.MEASURES.items():
            logged = [first[f"resid/b{b}/var_ratio{suffix}"]
                      for b in range(1, (r["depth"] - 2) // 2 + 1)]
            assert init[r["variant"]][r["depth"]][f"ratio_{measure}"][k] == pytest.approx(
                logged, rel=1e-5, abs=1e-12)


def test_per_channel_variance_is_each_channels_variance_averaged():
    """De & Smith's measure beside the pooled one: the mean over channels of each channel's
    variance over examples and positions; channels with different means make them differ."""
    g = torch.Generator().manual_seed(0)
    skip = torch.randn(2, 6, 4, 5, 5, generator=g) + torch.arange(4.0).view(1, 1, 4, 1, 1) * 3
    branch = torch.randn(2, 6, 4, 5, 5, generator=g) * torch.tensor([1.0, 2.0]).view(2, 1, 1,
                                                                                   1, 1)
    moments = ResidualMoments()
    moments.start_pass()
    moments.add(skip[:, :4], branch[:, :4])  # two chunks of examples, one block
    moments.start_pass()
    moments.add(skip[:, 4:], branch[:, 4:])
    rows = moments.result()
    def per_channel(t, k):
        return t[k].double().numpy().transpose(1, 0, 2, 3).reshape(4, -1).var(axis=1).mean()

    for k, row in enumerate(rows):
        assert row["resid/b1/var_skip_channel"] == pytest.approx(per_channel(skip, k), rel=1e-9)
        assert row["resid/b1/var_branch_channel"] == pytest.approx(per_channel(branch, k),
                                                                   rel=1e-9)
        assert row["resid/b1/var_ratio_channel"] == pytest.approx(
            per_channel(branch, k) / per_channel(skip, k), rel=1e-9)
        assert row["resid/b1/var_skip"] == pytest.approx(skip[k].double().numpy().var(), rel=1e-9)
        assert row["resid/b1/var_skip"] > 2 * row["resid/b1/var_skip_channel"]


def test_a_run_that_diverged_before_logging_anything_is_a_failure(store, tmp_path):
    root = copy_store(store, tmp_path / "store")
    dead = run_dirs(root, "SkipInit", 14, 0.05)[0]
    edit_run(dead, rows=0, status="diverged")
    table, numbers = run_command(root, tmp_path / "results")
    cell = numbers["variants"]["SkipInit"]["14"]["rates"]
    assert cell["0.05"]["diverged"] == 1
    seed = next(s for s in numbers["grid"]["SkipInit"]["14"]["0.05"]["per_seed"]
                if s["seed"] == config(dead)["seed"])
    assert seed["accuracy"] == pytest.approx(0.1) and not seed["trains"]


def set_outcomes(root: Path, outcomes: dict) -> None:
    """(variant, depth, rate) -> one outcome per seed: 0.x = completed with that accuracy
    (validation and test), None = diverged after its step-0 evaluation (scores chance)."""
    for (variant, depth, lr), per_seed in outcomes.items():
        for d in run_dirs(root, variant, depth, lr):
            acc = per_seed[config(d)["seed"]]
            if acc is None:
                edit_run(d, rows=1, status="diverged")
            else:
                edit_run(d, row=set_accuracy(acc), status="completed")


def grid(**cells) -> dict:
    """Every (variant, depth, rate) trains (0.3) unless given as V_depth_k=(seed0, seed1)."""
    out = {(v, d, lr): (0.3, 0.3) for v in ("BN", "NoNorm", "SkipInit") for d in (8, 14)
           for lr in RATES}
    for key, value in cells.items():
        v, d, k = key.split("_")
        out[(v, int(d), RATES[int(k)])] = value
    return out


TRAINING_CASES = [
    # issue 26: NoNorm diverges at the large rate but trains at the small one, where BN also
    # trains: its failure was the rate's, and the net trains at its best rate
    (grid(NoNorm_14_0=(None, None)), ("holds", "does not hold", "not measured")),
    # NoNorm fails at 14 at every rate: BN trains deeper
    (grid(NoNorm_14_0=(None, None), NoNorm_14_1=(0.11, 0.12)),
     ("holds", "holds", "holds")),
    # BN fails at the deepest depth at every rate, NoNorm trains there: reversed
    (grid(BN_14_0=(None, None), BN_14_1=(0.12, 0.11)),
     ("not measured", "not measured", "does not hold")),
    # one SkipInit seed fails at its best rate, one NoNorm seed trains at a BN rate
    (grid(SkipInit_14_0=(0.35, None), SkipInit_14_1=(0.3, 0.12), NoNorm_14_0=(None, None),
          NoNorm_14_1=(0.3, None)), ("inconclusive", "inconclusive", "inconclusive")),
]


@pytest.mark.parametrize(("outcomes", "expected"), TRAINING_CASES)
def test_the_training_verdicts_follow_the_best_rate(store, tmp_path, outcomes, expected):
    root = copy_store(store, tmp_path / "store")
    set_outcomes(root, outcomes)
    v = verdicts(run_command(root, tmp_path / "results")[1])
    assert (v["skipinit_trains"], v["none_fails"], v["bn_depth"]) == expected


def test_a_missing_rate_makes_the_training_claims_not_measured(store, tmp_path):
    root = copy_store(store, tmp_path / "store")
    for d in run_dirs(root, "NoNorm", 14, 0.01):
        edit_run(d, optim__lr=0.002)  # that rate is now NoNorm's alone
    v = verdicts(run_command(root, tmp_path / "results")[1])
    assert (v["none_fails"], v["bn_depth"]) == ("not measured", "not measured")


@pytest.mark.parametrize(("bn", "nonorm", "expected"), [
    (lambda b: 0.5 / b, lambda b: 1.0, ("holds", "holds")),
    (lambda b: 0.5, lambda b: 1.0 / b, ("does not hold", "does not hold"))])
def test_the_slope_verdicts_follow_the_ratios(bn, nonorm, expected):
    def cells(ratio):
        blocks = np.arange(1, 7)
        values = [depth_experiment.slope(np.array([ratio(b) * (1 + 0.01 * s) ** b
                                                    for b in blocks])) for s in (0, 1)]
        return {14: {"slope_channel": values, "slope_pooled": values}}
    got = tuple(depth_experiment.slope_verdict(cells(f), ok)[0] for f, ok in (
        (bn, lambda x: depth_experiment.SLOPE_LOW <= x <= depth_experiment.SLOPE_HIGH),
        (nonorm, lambda x: x > depth_experiment.FLAT_SLOPE)))
    assert got == expected


def test_the_slope_verdict_is_inconclusive_when_the_measures_disagree():
    blocks = np.arange(1, 7)
    steep = depth_experiment.slope(0.5 / blocks)
    flat = depth_experiment.slope(0.5 + 0 * blocks)
    ok = lambda x: x > depth_experiment.FLAT_SLOPE  # noqa: E731
    cells = {14: {"slope_channel": [flat, flat], "slope_pooled": [steep, steep]}}
    assert depth_experiment.slope_verdict(cells, ok)[0] == "inconclusive"
    assert depth_experiment.slope_verdict({8: cells[14]}, ok)[0] == "not measured"  # 3 blocks


def test_the_init_sweep_reaches_depth_110(store):
    runs = depth_experiment.load_runs(store)
    init = depth_experiment.init_sweep(runs, (110,))
    for cells in init.values():
        assert len(cells[110]["ratio_channel"][0]) == 54
        assert len(cells[110]["slope_pooled"]) == 2
    assert set(init) == {"BN", "NoNorm", "SkipInit"}


def test_mixed_setups_are_refused_naming_the_key(store, tmp_path, capsys):
    root = copy_store(store, tmp_path / "store")
    edit_run(run_dirs(root, "BN", 8)[0], optim__momentum=0.5)
    store_edits.assert_refuses(depth_experiment.main, root, tmp_path / "out", capsys,
                               "optim.momentum")


def test_bad_input_exits_2_with_one_error_line(tmp_path):
    store_edits.assert_refuses_empty_folder("depth", tmp_path, "no depth_cifar runs")


def test_runs_from_before_the_residual_probe_key_mix_with_new_ones():
    """probe.residual_variance changes no trajectory: the table scripts must not call a run
    made before the key existed (its config lacks it) another setup."""
    from bnrepro.experiments import fig2, sweep

    old, new = {"optim.lr": 0.1}, {"optim.lr": 0.1, "probe.residual_variance": True}
    assert sweep.differing_keys([old, new]) == {}
    assert sweep.differing_keys([old, {"optim.lr": 0.2}]) != {}  # the check does bite
    assert fig2.matches("probe.residual_variance", fig2.NON_TRAJECTORY_KEYS)
    assert matches("probe.residual_variance", depth_experiment.IGNORED_KEYS)
