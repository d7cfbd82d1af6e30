"""bnrepro.experiments.fig2 on tiny real fig2_cifar runs (trained once per session): steps to the
target read from the logged validation curves, "never" for a variant that does not get there,
diverged seeds counted (not dropped), verdicts that follow the numbers, lr-selection check, and
bad input refused with exit code 2. Cases other than the trained one are made by editing a
COPY of the real run store."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import defaultdict
from functools import reduce
from operator import getitem
from pathlib import Path

import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from bnrepro.claims import evidence_text, read_claims
from bnrepro.config import compose_config, flatten
from bnrepro.experiments import EXPERIMENTS, fig2
from tests.conftest import FIG2_DATASET, REPO, copy_store

DATASET = FIG2_DATASET


@pytest.fixture(scope="session")
def store(fig2_store: Path) -> Path:
    """Real runs: Baseline and BN-x5, seeds 0 and 1, 20 steps, evaluated every 10 (shared with
    the notebook test: conftest.fig2_store)."""
    return fig2_store


def run_dirs(root: Path, variant: str | None = None) -> list[Path]:
    dirs = sorted(p.parent for p in root.rglob("summary.json"))
    return [d for d in dirs if variant is None or config(d)["variant"] == variant]


def config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def edit_run(run_dir: Path, *, val=None, rows: int | None = None, status: str | None = None,
             **keys) -> None:
    """Edit a copied run in place: val(row) -> new val/acc, keep only the first `rows`
    evaluations, set the summary status, and set config keys given as a__b=value (a.b)."""
    cfg = config(run_dir)
    for dotted, value in keys.items():
        *parents, leaf = dotted.split("__")
        reduce(getitem, parents, cfg)[leaf] = value  # the dict that holds a.b.c's c
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    lines = metrics(run_dir)[:rows]
    for row in lines:
        if val is not None:
            row["val/acc"] = val(row)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if status:
        summary = json.loads((run_dir / "summary.json").read_text())
        summary |= {"status": status,
                    "diverged_at_step": lines[-1]["step"] + 1 if status == "diverged" else None}
        (run_dir / "summary.json").write_text(json.dumps(summary))


def clone_variant(root: Path, src_variant: str, new_variant: str, **edits) -> list[Path]:
    """Copies of `src_variant`'s runs relabelled `new_variant`, then edited."""
    clones = []
    for d in run_dirs(root, src_variant):
        clone = d.with_name(d.name + f",as={new_variant}")
        shutil.copytree(d, clone)
        edit_run(clone, variant=new_variant, **edits)
        clones.append(clone)
    return clones


def add_seed(root: Path, variant: str, seed: int = 2) -> Path:
    """A copy of `variant`'s first run as seed `seed` (the tiny store trains seeds 0 and 1;
    3 seeds a side are the fewest at which the permutation test can decide)."""
    src = run_dirs(root, variant)[0]
    clone = src.with_name(src.name + f",seed_copy={seed}")
    shutil.copytree(src, clone)
    edit_run(clone, seed=seed)
    return clone


def trained_baseline(root: Path, value: float = 0.3) -> None:
    """Three Baseline seeds that leave chance and have plateaued (flat after step 0): the
    preconditions of the claims that compare with the Baseline."""
    add_seed(root, "Baseline")
    for d in run_dirs(root, "Baseline"):
        edit_run(d, val=lambda r: 0.1 if r["step"] == 0 else value)


def evidence(numbers: dict, claim: str) -> dict:
    return next(c["evidence"] for c in numbers["claims"] if c["claim"] == claim)


def independent_target(root: Path) -> float:
    """Max over steps of the Baseline's seed-mean val/acc, from the metrics files alone."""
    by_step = defaultdict(list)
    for d in run_dirs(root, "Baseline"):
        for row in metrics(d):
            by_step[row["step"]].append(row["val/acc"])
    return max(sum(v) / len(v) for v in by_step.values())


def first_step(run_dir: Path, target: float) -> str:
    return next((str(r["step"]) for r in metrics(run_dir)
                 if r["val/acc"] is not None and r["val/acc"] >= target), "never")


def run_script(store: Path, out: Path, *extra: str) -> tuple[pd.DataFrame, dict]:
    assert fig2.main([str(store), "--out", str(out), *extra]) == 0
    table = pd.read_csv(out / f"fig2_{DATASET}.csv", dtype=str).set_index("variant")
    return table, json.loads((out / f"fig2_{DATASET}.json").read_text())


def verdicts(numbers: dict) -> dict[str, str]:
    return {c["claim"]: c["verdict"] for c in numbers["claims"]}


def test_steps_to_target_are_first_logged_steps_at_the_baseline_mean_maximum(store, tmp_path):
    out = tmp_path / "results"
    table, numbers = run_script(store, out)
    target = independent_target(store)
    assert numbers["target"] == pytest.approx(target, abs=1e-6)
    assert list(table.index) == ["Baseline", "BN-x5"]  # paper order
    reached = 0
    for d in run_dirs(store):
        cfg = config(d)
        expected = first_step(d, target)
        assert table.loc[cfg["variant"], f"steps_to_target_seed{cfg['seed']}"] == expected, d
        reached += expected != "never" and cfg["variant"] == "Baseline"
    assert reached >= 1  # some Baseline seed is at or above its own seed mean's maximum
    assert table.loc["Baseline", "seeds"] == "2" and table.loc["BN-x5", "diverged"] == "0"
    for suffix in (".png", ".pdf", ".md", "_claims.md"):
        assert (out / f"fig2_{DATASET}{suffix}").stat().st_size > 0
    md = (out / f"fig2_{DATASET}.md").read_text()
    assert f"Fig. 3 on {DATASET}" in md and "CIFAR-10" not in md
    assert "maximum over evaluated steps of the Baseline's seed-mean validation" in md
    claims = (out / f"fig2_{DATASET}_claims.md").read_text()
    assert "Verdict rule" in claims and "the baseline plateaus within the run" in claims
    assert set(numbers["plateau"]) >= {"mean_curve_gain", "per_seed_gain"}


def test_a_variant_that_never_reaches_the_target_says_never(store, tmp_path):
    root = copy_store(store, tmp_path / "store")
    for d in run_dirs(root, "BN-x5"):
        edit_run(d, val=lambda r: 0.05)  # below any target (the Baseline starts near 0.1)
    table, numbers = run_script(root, tmp_path / "results")
    row = table.loc["BN-x5"]
    assert row["steps_to_target_median"] == "never"
    assert row["steps_to_target_seed0"] == row["steps_to_target_seed1"] == "never"
    assert row["seeds_never"] == "2"
    assert numbers["variants"]["BN-x5"]["steps_to_target_median"] == "never"
    md = (tmp_path / "results" / f"fig2_{DATASET}.md").read_text()
    assert "| BN-x5 | 2 | 0 | never (2 of 2 never) |" in md


FAILS = "Baseline-x5 fails to train (diverges, or ends at chance)"


def test_diverged_seeds_are_counted_never_reach_later_values_and_score_chance(store, tmp_path):
    root = copy_store(store, tmp_path / "store")
    trained_baseline(root)
    # Baseline-x5 made of the Baseline's runs, cut after their first evaluation (step 0).
    clone_variant(root, "Baseline", "Baseline-x5", val=lambda r: 0.05, rows=1,
                           status="diverged")
    table, numbers = run_script(root, tmp_path / "a")
    row, curve = table.loc["Baseline-x5"], numbers["mean_curves"]["Baseline-x5"]
    assert (row["seeds"], row["diverged"], row["steps_to_target_median"]) == ("3", "3", "never")
    assert curve["0"] == pytest.approx(0.05) and curve["20"] == pytest.approx(0.1)
    assert verdicts(numbers)[FAILS] == "holds"
    assert evidence(numbers, FAILS)["k"] == 3


def test_a_run_that_ends_at_chance_failed_to_train_and_one_that_trains_did_not(store,
                                                                              tmp_path):
    """Issue 26: 'Baseline-x5 diverges' counted only divergence, while this net collapses to
    chance instead. A completed run whose final val acc is at chance failed to train."""
    root = copy_store(store, tmp_path / "store")
    trained_baseline(root)
    clones = clone_variant(root, "Baseline", "Baseline-x5", val=lambda r: 0.1)  # completed
    numbers = run_script(root, tmp_path / "a")[1]
    assert verdicts(numbers)[FAILS] == "holds"
    assert table_row(tmp_path / "a", "Baseline-x5")["failed_to_train"] == "3"
    # One seed trains (ends at 0.5): 2 of 3 failed, neither all nor none -> inconclusive.
    edit_run(clones[0], val=lambda r: 0.5)
    assert verdicts(run_script(root, tmp_path / "b")[1])[FAILS] == "inconclusive"
    # None fails -> does not hold; a Baseline that never leaves chance -> not measured.
    for d in clones:
        edit_run(d, val=lambda r: 0.5)
    assert verdicts(run_script(root, tmp_path / "c")[1])[FAILS] == "does not hold"
    for d in run_dirs(root, "Baseline"):
        edit_run(d, val=lambda r: 0.1)
    assert verdicts(run_script(root, tmp_path / "d")[1])[FAILS] == "not measured"


def table_row(out: Path, variant: str) -> pd.Series:
    return pd.read_csv(out / f"fig2_{DATASET}.csv", dtype=str).set_index("variant").loc[variant]


@pytest.mark.parametrize(("value", "expected"), [(0.99, "holds"), (0.01, "does not hold"),
                                                 (0.5, "inconclusive")])
def test_verdicts_follow_the_numbers(store, tmp_path, value, expected):
    """BN-x30 at `value` against BN-x5 at 0.5, 3 seeds each: a null effect (0.5 vs 0.5) is
    inconclusive, never "does not hold" (the old rule's verdict for equal means)."""
    root = copy_store(store, tmp_path / "store")
    trained_baseline(root)
    add_seed(root, "BN-x5")
    for d in run_dirs(root, "BN-x5"):
        edit_run(d, val=lambda r: 0.5)
    clone_variant(root, "BN-x5", "BN-x30", val=lambda r: value, optim__lr=1.0)
    numbers = run_script(root, tmp_path / "results")[1]
    assert verdicts(numbers)["BN-x30 ends higher than BN-x5"] == expected
    # Against the Baseline (0.3): BN-x5 at 0.5 is above it; BN-x30 above at 0.99 and 0.5, below
    # at 0.01.
    assert verdicts(numbers)["BN-x5 exceeds the baseline's maximum accuracy"] == "holds"
    assert verdicts(numbers)["BN-x30 exceeds the baseline's maximum accuracy"] == (
        "does not hold" if value < 0.3 else "holds")
    ev = evidence(numbers, "BN-x30 ends higher than BN-x5")
    assert [s["label"] for s in ev["sides"]] == ["BN-x30", "BN-x5"]
    assert ev["sides"][0]["seeds"] == [pytest.approx(value)] * 3 and ev["better"] == "higher"
    assert all(p["met"] for p in ev["preconditions"])
    claims = (tmp_path / "results" / f"fig2_{DATASET}_claims.md").read_text()
    assert "| BN-x30 ends higher than BN-x5 | 74.8% vs 73.0% max val acc |" in claims


def test_a_schedule_without_rate_left_makes_its_end_point_claims_not_measured(store, tmp_path):
    """Issue 26: BN-x5's rate was 1/4096 of its start at step 400 of 1200, its curve flat from
    step 600: 'BN-x30 ends higher than BN-x5' could not be tested. With a schedule that has
    (almost) no rate left for its second half, the claims on its end points are not measured,
    whatever the numbers."""
    root = copy_store(store, tmp_path / "store")
    trained_baseline(root)
    add_seed(root, "BN-x5")
    for d in run_dirs(root, "BN-x5"):
        edit_run(d, val=lambda r: 0.5, optim__lr_decay=0.5, optim__lr_decay_steps=1.0)
    clone_variant(root, "BN-x5", "BN-x30", val=lambda r: 0.99, optim__lr=1.0)
    numbers = run_script(root, tmp_path / "results")[1]
    for claim in ("BN-x30 ends higher than BN-x5", "BN-x5 exceeds the baseline's maximum "
                  "accuracy", "BN-x30 exceeds the baseline's maximum accuracy"):
        assert verdicts(numbers)[claim] == "not measured", claim
        unmet = [p["check"] for p in evidence(numbers, claim)["preconditions"] if not p["met"]]
        assert len(unmet) == 1 and "rate sum in its second half" in unmet[0]
    share = numbers["variants"]["BN-x5"]["rate_share_second_half"]
    assert share == pytest.approx(2 ** -10, rel=0.01)  # 20 steps halving every step
    assert numbers["variants"]["Baseline"]["rate_share_second_half"] > 0.4
    # The Baseline's own claims keep their verdicts.
    assert verdicts(numbers)["the baseline plateaus within the run (our check, not a paper "
                             "claim)"] == "holds"


def test_a_variant_may_stop_sooner_on_its_own_evaluation_grid(store, tmp_path):
    """BN-x5 decays its rate 6x faster and stops sooner: runs of different lengths per variant
    are one experiment (the old check refused them), each variant's curve on its own grid."""
    root = copy_store(store, tmp_path / "store")
    for d in run_dirs(root, "BN-x5"):
        edit_run(d, rows=2, trainer__max_steps=10, trainer__eval_every=5)
    numbers = run_script(root, tmp_path / "results")[1]
    # BN-x5: 0, 5 (never logged: a seed's missing value scores chance), 10; nothing later.
    assert sorted(map(int, numbers["mean_curves"]["BN-x5"])) == [0, 5, 10]
    assert sorted(map(int, numbers["mean_curves"]["Baseline"])) == [0, 10, 20]
    assert numbers["max_steps_per_variant"] == {"Baseline": 20, "BN-x5": 10}
    md = (tmp_path / "results" / f"fig2_{DATASET}.md").read_text()
    assert "| 10 (" in md and "| 20 (" in md  # steps run (rate share)


def test_every_variant_keeps_the_crops_and_has_rate_left_and_the_lr_grid_has_3_seeds():
    """Issue 26: BN-x5 dropped the random crops (the paper reduces photometric distortions, of
    which we have none) and ran its 6x faster decay for the Baseline's 1200 steps."""
    base = flatten(OmegaConf.to_container(compose_config(
        ["experiment=fig2_cifar"]), resolve=True))
    for variant in ("baseline_x5", "baseline_sigmoid", "bn_baseline", "bn_x5", "bn_x30",
                    "bn_x5_sigmoid"):
        cfg = flatten(OmegaConf.to_container(compose_config(
            ["experiment=fig2_cifar", f"fig2_variant={variant}"]), resolve=True))
        assert (cfg["augment.crop_padding"], cfg["augment.flip"]) == (
            base["augment.crop_padding"], base["augment.flip"]), variant
        assert fig2.rate_share_second_half(cfg) >= fig2.SCHEDULE_MIN_SECOND_HALF, variant
    lr = yaml.safe_load((REPO / "conf/experiment/fig2_cifar_lr.yaml").read_text())
    assert str(lr["hydra"]["sweeper"]["params"]["seed"]).split(",") == ["0", "1", "2"]


@pytest.mark.parametrize(("best_factor", "expected"), [(1, "holds"), (2, "does not hold"),
                                                       (None, "inconclusive")])
def test_the_base_lr_is_checked_against_the_best_candidate(store, tmp_path, capsys, best_factor,
                                                           expected):
    """3 seeds per candidate rate; the fig2 rate against each other candidate by compare: a
    tie (best_factor None: every candidate scores the same) is inconclusive."""
    lr_root = tmp_path / f"fig2_lr_{DATASET}"
    baseline = run_dirs(store, "Baseline")[0]
    base = config(baseline)["optim"]["lr"]  # the fig2 runs' fig2_baseline.lr
    best_lr = None if best_factor is None else base * best_factor
    for lr, acc in ((base / 2, 0.3), (base, 0.4), (base * 2, 0.35)):
        for seed in (0, 1, 2):
            d = lr_root / f"lr={lr},seed={seed}"
            shutil.copytree(baseline, d, ignore=shutil.ignore_patterns("*.pt", ".hydra",
                                                                       ".lock"))
            value = 0.4 if best_lr is None else acc + (0.2 if lr == best_lr else 0.0)
            edit_run(d, val=lambda r, a=value + seed / 1000: a, name="fig2_cifar_lr",
                     optim__lr=lr, fig2_baseline__lr=lr, seed=seed)
    out = tmp_path / "results"
    numbers = run_script(store, out, "--lr-runs", str(lr_root))[1]
    assert verdicts(numbers)["base lr is the baseline's best candidate"] == expected
    lr_csv = pd.read_csv(out / f"fig2_lr_{DATASET}.csv")
    assert list(lr_csv.columns[:4]) == ["lr", "best_val_acc", "best_val_step", "status"]
    assert list(lr_csv["seeds"]) == [3, 3, 3]
    if best_lr is not None:
        assert lr_csv.loc[lr_csv["best_val_acc"].idxmax(), "lr"] == pytest.approx(best_lr)
    assert ("WARNING" in capsys.readouterr().err) == (expected == "does not hold")


def test_mixed_setups_are_refused_naming_the_key(store, tmp_path, capsys):
    root = copy_store(store, tmp_path / "store")
    edit_run(run_dirs(root, "BN-x5")[0], trainer__max_steps=40)
    assert fig2.main([str(root), "--out", str(tmp_path / "out")]) == 2
    assert "trainer.max_steps" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_input_exits_2_with_one_error_line(store, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    no_baseline = copy_store(store, tmp_path / "store")
    for d in run_dirs(no_baseline, "Baseline"):
        shutil.rmtree(d)
    for folder, words in ((empty, "no fig2_cifar runs"), (no_baseline, "no Baseline runs")):
        result = subprocess.run([sys.executable, "-m", "bnrepro.analyse", "fig2", str(folder),
                                 "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True,
                                text=True, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, result.stderr
        assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0]


def test_claims_json_matches_the_table_and_wandb_gets_figure_and_claims(store, tmp_path,
                                                                        monkeypatch):
    calls = []
    monkeypatch.setattr(fig2.wandb_figures, "publish",
                        lambda *args, **kwargs: calls.append((args, kwargs)))
    out = tmp_path / "results"
    numbers = run_script(store, out, "--wandb")[1]
    claims = read_claims(out / f"fig2_{DATASET}_claims.json")
    assert claims["experiment"] == "fig2_cifar" and claims["figures"] == [f"fig2_{DATASET}.png"]
    assert [{k: c[k] for k in ("claim", "paper", "ours", "verdict")} for c in claims["claims"]] \
        == [{k: c[k] for k in ("claim", "paper", "ours", "verdict")} for c in numbers["claims"]]
    assert {c["dataset"] for c in claims["claims"]} == {DATASET}
    md = (out / f"fig2_{DATASET}_claims.md").read_text()
    assert all(f"| {c['claim']} | {c['paper']} | {c['ours']} | {evidence_text(c)} | "
               f"{c['verdict']} |" in md for c in claims["claims"])
    assert all(c["evidence"] for c in claims["claims"])  # every verdict says what decided it
    (enabled, config, images), kwargs = calls.pop()
    assert enabled and fig2.wandb_figures.target(config)["group"] == "fig2_cifar"
    assert images == [out / f"fig2_{DATASET}.png"] and kwargs["wandb_dir"] == store
    assert kwargs["claims"] == numbers["claims"]


def test_the_registry_unit_analyses_without_writing_and_names_figures_by_file_stem(store,
                                                                                  tmp_path):
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    result = fig2.analyse(store)
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    figures = fig2.figures(result)
    assert list(figures) == [f"fig2_{DATASET}"]
    labels = [line.get_label() for line in figures[f"fig2_{DATASET}"].axes[0].lines]
    assert all(any(label.startswith(v) for label in labels) for v in ("Baseline", "BN-x5"))
    out = tmp_path / "results"
    assert EXPERIMENTS["fig2"].load().main([str(store), "--out", str(out)]) == 0
    assert json.loads((out / f"fig2_{DATASET}.json").read_text()) == json.loads(
        json.dumps(fig2.numbers(result)))
    assert {p.name for p in out.iterdir()} >= {f"{stem}.png" for stem in figures}
