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

from bnrepro.claims import read_claims
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


def test_diverged_seeds_are_counted_never_reach_later_values_and_score_chance(store, tmp_path):
    root = copy_store(store, tmp_path / "store")
    # Baseline-x5 made of the Baseline's runs, cut after their first evaluation (step 0).
    clones = clone_variant(root, "Baseline", "Baseline-x5", val=lambda r: 0.05, rows=1,
                           status="diverged")
    table, numbers = run_script(root, tmp_path / "a")
    row, curve = table.loc["Baseline-x5"], numbers["mean_curves"]["Baseline-x5"]
    assert (row["seeds"], row["diverged"], row["steps_to_target_median"]) == ("2", "2", "never")
    assert curve["0"] == pytest.approx(0.05) and curve["20"] == pytest.approx(0.1)
    assert verdicts(numbers)["Baseline-x5 diverges"] == "holds"
    # One seed completed (its val/acc kept below the target): some seeds diverge -> mixed.
    edit_run(clones[0], status="completed")
    assert verdicts(run_script(root, tmp_path / "b")[1])["Baseline-x5 diverges"] == "mixed"


@pytest.mark.parametrize(("value", "expected"), [(0.99, "holds"), (0.01, "does not hold")])
def test_verdicts_follow_the_numbers(store, tmp_path, value, expected):
    root = copy_store(store, tmp_path / "store")
    for d in run_dirs(root, "BN-x5"):
        edit_run(d, val=lambda r: 0.5)
    clone_variant(root, "BN-x5", "BN-x30", val=lambda r: value, optim__lr=1.0)
    numbers = run_script(root, tmp_path / "results")[1]
    assert verdicts(numbers)["BN-x30 ends higher than BN-x5"] == expected
    # BN-x30 at 0.99 and BN-x5 at 0.5 are both above the Baseline; at 0.01 BN-x30 is not.
    assert verdicts(numbers)["BN-x5 and BN-x30 exceed the baseline's maximum accuracy"] == (
        expected)
    claims = (tmp_path / "results" / f"fig2_{DATASET}_claims.md").read_text()
    assert "| BN-x30 ends higher than BN-x5 | 74.8% vs 73.0% max val acc |" in claims


@pytest.mark.parametrize(("best_factor", "expected"), [(1, "holds"), (2, "does not hold")])
def test_the_base_lr_is_checked_against_the_best_candidate(store, tmp_path, capsys, best_factor,
                                                           expected):
    lr_root = tmp_path / f"fig2_lr_{DATASET}"
    baseline = run_dirs(store, "Baseline")[0]
    base = config(baseline)["optim"]["lr"]  # the fig2 runs' fig2_baseline.lr
    best_lr = base * best_factor
    for lr, acc in ((base / 2, 0.3), (base, 0.4), (base * 2, 0.35)):
        d = lr_root / f"lr={lr}"
        shutil.copytree(baseline, d, ignore=shutil.ignore_patterns("*.pt", ".hydra", ".lock"))
        bonus = 0.2 if lr == best_lr else 0.0
        edit_run(d, val=lambda r, a=acc + bonus: a, name="fig2_cifar_lr", optim__lr=lr,
                 fig2_baseline__lr=lr)
    out = tmp_path / "results"
    numbers = run_script(store, out, "--lr-runs", str(lr_root))[1]
    assert verdicts(numbers)["base lr is the baseline's best candidate"] == expected
    lr_csv = pd.read_csv(out / f"fig2_lr_{DATASET}.csv")
    assert list(lr_csv.columns[:4]) == ["lr", "best_val_acc", "best_val_step", "status"]
    assert lr_csv.loc[lr_csv["best_val_acc"].idxmax(), "lr"] == pytest.approx(best_lr)
    assert ("WARNING" in capsys.readouterr().err) == (expected != "holds")


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
    assert all(f"| {c['claim']} | {c['paper']} | {c['ours']} | {c['verdict']} |" in md
               for c in claims["claims"])
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
