"""scripts/plot_depth.py: accuracies and slopes recomputed from the metrics files, diverged
runs (even those that logged nothing) counted as failures, verdicts that flip when the numbers
flip, and bad input refused with exit code 2.

The store the fast tests read is written with the harness's own RunStore from real
depth_cifar configs; its step-0 ratios are measured on the real initialised nets (random
inputs), its accuracies are made up (real training of 12 runs costs minutes: the test set alone
is scored twice per run). One slow test trains tiny real runs through the CLI and checks the
script end to end. Other cases are made by editing a COPY of the store."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from bnrepro.claims import read_claims
from bnrepro.config import compose_config
from bnrepro.data.datasets import DataUnavailableError, load_dataset
from bnrepro.models import build_model
from bnrepro.models.residual_variance import ResidualMoments
from bnrepro.run.store import RunStore
from tests.conftest import REPO, copy_store, data_missing, load_script

DATASET = "cifar10-jpeg"
# depth 8: 3 blocks, depth 14: 6 (= plot_depth.MIN_BLOCKS: the slope claims use it)
TINY = ["model.width_multiplier=0.25", "trainer.max_steps=4", "trainer.eval_every=2",
        "trainer.test_every=4", "dataset.val_size=200", "probe.num_examples=32",
        "trainer.batch_size=16", "trainer.population_batches=2", "trainer.progress=false",
        "trainer.eval_memory_mb=64"]
LABELS = {"bn": "BN", "none": "NoNorm", "skipinit": "SkipInit"}
# Made-up test accuracies per variant (and depth for NoNorm: None = diverged at step 1).
ACCURACY = {"BN": {8: 0.30, 14: 0.32}, "NoNorm": {8: 0.22, 14: None},
            "SkipInit": {8: 0.26, 14: 0.27}}

plot_depth = load_script("plot_depth")


@torch.no_grad()
def ratios_at_init(cfg) -> list[float]:
    """resid var_ratio per block of the real net of `cfg` at initialisation (BN: train mode)."""
    torch.manual_seed(cfg.seed)
    moments = ResidualMoments()
    build_model([cfg], (3, 32, 32))(torch.randn(16, 3, 32, 32), shared=True, moments=moments)
    return [row[key] for row in moments.result()
            for key in row if key.endswith("var_ratio")]


def write_run(run_dir: Path, cfg, accuracy: float | None) -> None:
    store = RunStore(run_dir, cfg)
    init = ratios_at_init(cfg)
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
    """BN, NoNorm and SkipInit at depths 8 and 14, seeds 0 and 1 (module docstring)."""
    root = tmp_path_factory.mktemp("depth") / f"depth_{DATASET}"
    for variant, label in LABELS.items():
        for depth in (8, 14):
            for seed in (0, 1):
                cfg = compose_config(["experiment=depth_cifar", f"dataset={DATASET}",
                                      f"depth_variant={variant}", f"model.depth={depth}",
                                      f"seed={seed}", *TINY])
                assert cfg.variant == label
                write_run(root / f"{variant},{depth},{seed}", cfg, ACCURACY[label][depth])
    return root


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory) -> Path:
    """Real runs: BN, NoNorm and SkipInit at depths 8 and 14, seeds 0 and 1, 4 steps."""
    try:
        load_dataset(DATASET, REPO / "data")  # the cache the training subprocess reads
    except DataUnavailableError as err:
        data_missing(str(err))
    sweep = tmp_path_factory.mktemp("depth_real") / f"depth_{DATASET}"
    env = {**os.environ, "WANDB_MODE": "offline"}
    result = subprocess.run(
        [sys.executable, "-m", "bnrepro.train", "-m", "experiment=depth_cifar",
         f"dataset={DATASET}", "model.depth=8,14", "seed=0,1", *TINY,
         f"hydra.sweep.dir={sweep}"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(sweep.rglob("summary.json"))) == 12
    return sweep


def config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_dirs(root: Path, variant: str | None = None, depth: int | None = None) -> list[Path]:
    dirs = sorted(p.parent for p in root.rglob("summary.json"))
    return [d for d in dirs if (variant is None or config(d)["variant"] == variant)
            and (depth is None or config(d)["model"]["depth"] == depth)]


def edit_run(run_dir: Path, *, row=None, rows: int | None = None, status: str | None = None,
             **keys) -> None:
    """Edit a copied run in place: row(dict) changes each logged row, keep only the first
    `rows` rows, set the summary status, and set config keys given as a__b=value (a.b)."""
    cfg = config(run_dir)
    for dotted, value in keys.items():
        *parents, leaf = dotted.split("__")
        node = cfg
        for p in parents:
            node = node[p]
        node[leaf] = value
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    lines = metrics(run_dir)[:rows]
    for r in lines:
        if row is not None:
            row(r)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if status:
        summary = json.loads((run_dir / "summary.json").read_text())
        summary["status"] = status
        (run_dir / "summary.json").write_text(json.dumps(summary))


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


def run_script(root: Path, out: Path) -> tuple[pd.DataFrame, dict]:
    assert plot_depth.main([str(root), "--out", str(out)]) == 0
    table = pd.read_csv(out / f"depth_{DATASET}.csv").set_index(["variant", "depth"])
    return table, json.loads((out / f"depth_{DATASET}.json").read_text())


def verdicts(numbers: dict) -> dict[str, str]:
    return {c["key"]: c["verdict"] for c in numbers["claims"]}


def independent_accuracy(run_dir: Path) -> float:
    """Test accuracy of the best-val evaluation among those with a test score; 0.1 if diverged."""
    if json.loads((run_dir / "summary.json").read_text())["status"] == "diverged":
        return 0.1
    tested = [r for r in metrics(run_dir) if r.get("test/acc") is not None]
    return max(tested, key=lambda r: r["val/acc"])["test/acc"]


def independent_slope(run_dir: Path) -> float:
    first = metrics(run_dir)[0]
    assert first["step"] == 0
    blocks = (config(run_dir)["model"]["depth"] - 2) // 2
    ratios = [first[f"resid/b{b}/var_ratio"] for b in range(1, blocks + 1)]
    if min(ratios) <= 0:
        return math.nan
    return float(np.polyfit(np.log(np.arange(1, blocks + 1)), np.log(ratios), 1)[0])


def check_numbers_against_the_files(root: Path, out: Path) -> dict:
    table, numbers = run_script(root, out)
    assert numbers["dataset"] == DATASET and numbers["depths"] == [8, 14]
    assert set(table.index) == {(v, d) for v in ("BN", "NoNorm", "SkipInit") for d in (8, 14)}
    for d in run_dirs(root):
        cfg = config(d)
        row = table.loc[(cfg["variant"], cfg["model"]["depth"])]
        assert row[f"accuracy_seed{cfg['seed']}"] == pytest.approx(independent_accuracy(d),
                                                                   abs=1e-4)
        seed = next(s for s in numbers["variants"][cfg["variant"]][str(cfg["model"]["depth"])]
                    ["per_seed"] if s["seed"] == cfg["seed"])
        expected = independent_slope(d)
        if math.isnan(expected):  # SkipInit: every ratio is 0 at initialisation (alpha = 0)
            assert seed["slope_at_init"] is None and cfg["variant"] == "SkipInit"
            assert set(seed["ratio_at_init"]) == {0.0}
        else:
            assert seed["slope_at_init"] == pytest.approx(expected, abs=1e-6)
    for suffix in (".png", ".pdf", "_claims.md"):
        assert (out / f"depth_{DATASET}{suffix}").stat().st_size > 0
    claims = (out / f"depth_{DATASET}_claims.md").read_text()
    assert f"checked on {DATASET}" in claims and "CIFAR-10" not in claims
    assert "Verdict rule" in claims and claims.count(f"| {DATASET}: ") == 5
    data = read_claims(out / f"depth_{DATASET}_claims.json")  # what scripts/report.py reads
    assert data["make"] == "make depth" and data["figures"] == [f"depth_{DATASET}.png"]
    assert [c["verdict"] for c in data["claims"]] == [c["verdict"] for c in numbers["claims"]]
    assert {(c["dataset"], c["source"]) for c in data["claims"]} == {(DATASET,
                                                                       "De & Smith (2020)")}
    return numbers


def test_numbers_are_those_of_the_metrics_files(store, tmp_path):
    numbers = check_numbers_against_the_files(store, tmp_path / "results")
    no_norm = numbers["variants"]["NoNorm"]["14"]
    assert (no_norm["diverged"], no_norm["accuracy_mean"]) == (2, 0.1)
    assert numbers["variants"]["BN"]["14"]["accuracy_mean"] == pytest.approx(0.325)
    # the figure's panel (c): step 4's ratio of block 1, mean over the two BN seeds at 14
    first = [metrics(d)[-1]["resid/b1/var_ratio"] for d in run_dirs(store, "BN", 14)]
    assert numbers["ratio_over_training_deepest"]["BN"]["resid/b1/var_ratio"]["4"] == (
        pytest.approx(sum(first) / 2, rel=1e-5))


@pytest.mark.slow
def test_real_runs_end_to_end(trained_store, tmp_path):
    check_numbers_against_the_files(trained_store, tmp_path / "results")


def test_a_run_that_diverged_before_logging_anything_is_a_failure(store, tmp_path):
    root = copy_store(store, tmp_path / "store")
    dead = run_dirs(root, "NoNorm", 14)[0]
    edit_run(dead, rows=0, status="diverged")
    table, numbers = run_script(root, tmp_path / "results")
    row = table.loc[("NoNorm", 14)]
    assert row["seeds"] == 2 and row["diverged"] >= 1
    assert row[f"accuracy_seed{config(dead)['seed']}"] == pytest.approx(0.1)
    cell = numbers["variants"]["NoNorm"]["14"]
    assert cell["seeds_with_ratio_at_init"] == 1  # the other seed's step 0 still counts
    # Both seeds dead before step 0 was logged: no ratios at the only slope depth.
    for d in run_dirs(root, "NoNorm", 14):
        edit_run(d, rows=0, status="diverged")
    table, numbers = run_script(root, tmp_path / "again")
    assert table.loc[("NoNorm", 14)]["diverged"] == 2
    claim = next(c for c in numbers["claims"] if c["key"] == "none_not_downscaled")
    assert claim["verdict"] == "not measured"
    assert verdicts(numbers)["none_fails"] == "holds"  # dead at once is failing to train


@pytest.mark.parametrize(("ratios", "expected"), [
    ({0: lambda b: 0.5 / b, 1: lambda b: 0.6 / b}, "holds"),
    ({0: lambda b: 0.5 / b, 1: lambda b: 0.5 * b ** -0.3}, "mixed"),  # mean slope -0.65
    ({0: lambda b: 0.5, 1: lambda b: 0.5 * b}, "does not hold")])
def test_the_bn_slope_verdict_follows_the_ratios(store, tmp_path, ratios, expected):
    root = copy_store(store, tmp_path / "store")
    for d in run_dirs(root, "BN", 14):
        edit_run(d, row=set_init_ratios(ratios[config(d)["seed"]]))
    assert verdicts(run_script(root, tmp_path / "results")[1])["bn_downscales"] == expected


def test_the_no_norm_slope_verdict_follows_the_ratios(store, tmp_path):
    root = copy_store(store, tmp_path / "store")
    for d in run_dirs(root, "NoNorm", 14):
        edit_run(d, row=set_init_ratios(lambda b: 1.0))
    assert verdicts(run_script(root, tmp_path / "a")[1])["none_not_downscaled"] == "holds"
    for d in run_dirs(root, "NoNorm", 14):
        edit_run(d, row=set_init_ratios(lambda b: 1.0 / b))
    assert verdicts(run_script(root, tmp_path / "b")[1])["none_not_downscaled"] == (
        "does not hold")


# Per (variant, depth): one outcome per seed, 0.x = completed with that accuracy, None =
# diverged after its step-0 evaluation (scores chance, 0.1). Trains = completed and > 0.15.
ALL_TRAIN = {("BN", 8): (0.4, 0.4), ("BN", 14): (0.4, 0.4), ("NoNorm", 8): (0.3, 0.3),
             ("NoNorm", 14): (None, None), ("SkipInit", 8): (0.35, 0.35),
             ("SkipInit", 14): (0.35, 0.35)}
TRAINING_CASES = [
    (ALL_TRAIN, ("holds", "holds", "holds")),
    # one SkipInit seed diverges (mean 0.225 > 0.15), one NoNorm seed trains (mean 0.2 > 0.15)
    (ALL_TRAIN | {("SkipInit", 14): (0.35, None), ("NoNorm", 14): (0.3, None)},
     ("mixed", "does not hold", "does not hold")),
    # a BN seed at 14 diverges: BN still trains there on the mean, not with every seed
    (ALL_TRAIN | {("BN", 14): (0.4, None)}, ("holds", "holds", "mixed")),
    # NoNorm at chance without diverging is a failure too; SkipInit at chance is not training
    (ALL_TRAIN | {("NoNorm", 14): (0.12, 0.12), ("SkipInit", 14): (0.12, 0.12)},
     ("does not hold", "holds", "holds")),
]


@pytest.mark.parametrize(("outcomes", "expected"), TRAINING_CASES)
def test_the_training_verdicts_follow_divergence_and_accuracy(store, tmp_path, outcomes,
                                                              expected):
    root = copy_store(store, tmp_path / "store")
    for (variant, depth), per_seed in outcomes.items():
        for d in run_dirs(root, variant, depth):
            acc = per_seed[config(d)["seed"]]
            if acc is None:
                edit_run(d, rows=1, status="diverged")
            else:
                edit_run(d, row=set_accuracy(acc), status="completed")
    v = verdicts(run_script(root, tmp_path / "results")[1])
    assert (v["skipinit_trains"], v["none_fails"], v["bn_depth"]) == expected


def test_mixed_setups_are_refused_naming_the_key(store, tmp_path, capsys):
    root = copy_store(store, tmp_path / "store")
    edit_run(run_dirs(root, "BN", 8)[0], optim__lr=1.0)
    assert plot_depth.main([str(root), "--out", str(tmp_path / "out")]) == 2
    assert "optim.lr" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_input_exits_2_with_one_error_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run([sys.executable, "scripts/plot_depth.py", str(empty), "--out",
                             str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and "no depth_cifar runs" in lines[0]


def test_runs_from_before_the_residual_probe_key_mix_with_new_ones():
    """probe.residual_variance changes no trajectory: the table scripts must not call a run
    made before the key existed (its config lacks it) another setup."""
    from bnrepro.experiments import fig2

    aggregate = load_script("aggregate")
    old, new = {"optim.lr": 0.1}, {"optim.lr": 0.1, "probe.residual_variance": True}
    assert aggregate.differing_keys([old, new]) == {}
    assert aggregate.differing_keys([old, {"optim.lr": 0.2}]) != {}  # the check does bite
    assert fig2.matches("probe.residual_variance", fig2.NON_TRAJECTORY_KEYS)
    assert plot_depth.matches("probe.residual_variance", plot_depth.IGNORED_KEYS)
