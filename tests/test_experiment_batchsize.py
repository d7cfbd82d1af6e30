"""bnrepro.experiments.batchsize on a tiny real batchsize_mnist run store (trained once per
session): cells are the seeds' final test errors read from metrics.jsonl, diverged seeds score
chance, every verdict follows the numbers (edited COPIES of the real store flip them), the
learning-rate check, and bad input refused with exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bnrepro.experiments import batchsize
from tests import store_edits
from tests.conftest import copy_store
from tests.store_edits import config, metrics


@pytest.fixture(scope="session")
def store(batchsize_store) -> Path:
    return batchsize_store


def run_dirs(root: Path, norm: str | None = None, batch: int | None = None) -> list[Path]:
    return store_edits.select_runs(root, model__norm=norm, trainer__batch_size=batch)


def edit(run_dir: Path, *, status: str | None = None, rows: int | None = None,
         summary: dict | None = None, final: dict | None = None, **keys) -> None:
    """Edit a copied run in place: the final metrics row's values (`final`), keep only the first
    `rows` rows, the summary's status and fields, config keys given as a__b=value (a.b)."""
    store_edits.set_config(run_dir, **keys)
    lines = metrics(run_dir)[:rows]
    lines[-1] |= final or {}
    store_edits.write_metrics(run_dir, lines)
    store_edits.update_summary(run_dir, (summary or {}) | ({"status": status} if status else {}))


def set_errors(root: Path, norm: str, batch: int, errors: list[float], key: str = "test/acc"
               ) -> None:
    """Give the seeds of a cell these final test errors (for `key`: test/acc, _batch, ...)."""
    for d, err in zip(run_dirs(root, norm, batch), errors, strict=True):
        edit(d, final={key: 1 - err})


def run_command(root: Path, out: Path, *extra: str) -> dict:
    assert batchsize.main([str(root), "--out", str(out), *extra]) == 0
    return json.loads((out / "batchsize_mnist.json").read_text())


def verdict(numbers: dict | Path, starts: str) -> str:
    """The verdict of the claim starting with `starts`: from the command's JSON, or from
    `analyse` on a run store (no figure, no files: fast)."""
    if isinstance(numbers, Path):
        numbers = {"claims": batchsize.analyse([numbers]).claims}
    found = [c["verdict"] for c in numbers["claims"] if c["claim"].startswith(starts)]
    assert len(found) == 1, (starts, [c["claim"] for c in numbers["claims"]])
    return found[0]


def test_cells_are_the_seeds_final_test_errors(store, tmp_path):
    out = tmp_path / "results"
    numbers = run_command(store, out)
    table = pd.read_csv(out / "batchsize_mnist.csv").set_index(["norm", "batch_size"])
    assert sorted(table.index) == [("bn", 2), ("bn", 32), ("brn", 2), ("brn", 32), ("gn", 2),
                                   ("gn", 32)]
    for (norm, batch), row in table.iterrows():
        finals = [metrics(d)[-1] for d in run_dirs(store, norm, batch)]
        assert all(f["step"] == 64 // batch for f in finals)  # every run saw 64 examples
        for column, key in (("err", "test/acc"), ("err_batch", "test/acc_batch"),
                            ("err_running", "test/acc_running")):
            if norm == "gn" and key != "test/acc":  # no batch statistics: no gap numbers
                assert pd.isna(row[f"{column}_mean"])
                continue
            errors = [1 - f[key] for f in finals]
            assert row[f"{column}_mean"] == pytest.approx(sum(errors) / 2, abs=1e-6)
            assert row[f"{column}_min"] == pytest.approx(min(errors), abs=1e-6)
            assert row[f"{column}_max"] == pytest.approx(max(errors), abs=1e-6)
        scaling = config(run_dirs(store, norm, batch)[0])["batch_scaling"]
        assert row["lr"] == pytest.approx(scaling["base_lr"] * batch / 32) and row["seeds"] == 2
    # Batch Renorm infers with its moving averages: its Alg. 2 column is its running one
    assert (table.loc["brn", "err_mean"] == table.loc["brn", "err_running_mean"]).all()
    for suffix in (".png", ".pdf", ".csv", ".json"):
        assert (out / f"batchsize_mnist{suffix}").stat().st_size > 0
    claims = (out / "batchsize_claims.md").read_text()
    assert "Verdict rule" in claims and "| mnist | BN's error rises" in claims
    assert "34.7" in claims and numbers["wu_he_table2_imagenet_error_pct"]["GN"]["2"] == 24.1


CLAIMS = {  # claim prefix -> (cells to set: (norm, batch, errors, key)), flipped by swapping
    "BN's error rises": [("bn", 2, [0.30, 0.32]), ("bn", 32, [0.10, 0.12])],
    "at the smallest batch (2) GN's error is below BN's": [("gn", 2, [0.10, 0.12]),
                                                         ("bn", 2, [0.30, 0.32])],
    "Batch Renorm recovers": [("brn", 2, [0.10, 0.12]), ("bn", 2, [0.30, 0.32])],
}


@pytest.mark.parametrize("claim", list(CLAIMS))
@pytest.mark.parametrize(("flip", "expected"), [(False, "holds"), (True, "does not hold")])
def test_cell_comparisons_follow_the_numbers(store, tmp_path, claim, flip, expected):
    root = copy_store(store, tmp_path / "store")
    (n1, b1, e1), (n2, b2, e2) = CLAIMS[claim]
    set_errors(root, n1, b1, e2 if flip else e1)
    set_errors(root, n2, b2, e1 if flip else e2)
    assert verdict(root, claim) == expected


def test_overlapping_seed_ranges_are_mixed(store, tmp_path):
    root = copy_store(store, tmp_path / "store")
    set_errors(root, "bn", 2, [0.10, 0.40])  # mean 0.25: above batch 32's mean, ranges overlap
    set_errors(root, "bn", 32, [0.15, 0.20])
    assert verdict(root, "BN's error rises") == "mixed"


@pytest.mark.parametrize(("gn", "bn", "expected"), [
    ((0.20, 0.20), (0.10, 0.40), "holds"),          # GN flat, BN varies by 30 points
    ((0.10, 0.40), (0.20, 0.20), "does not hold"),  # the other way round
    ((0.20, 0.22), (0.20, 0.25), "mixed")])         # smaller, but within the seeds' noise
def test_gn_variation_follows_the_numbers(store, tmp_path, gn, bn, expected):
    root = copy_store(store, tmp_path / "store")
    for norm, (at2, at32) in (("gn", gn), ("bn", bn)):
        set_errors(root, norm, 2, [at2 - 0.02, at2 + 0.02])
        set_errors(root, norm, 32, [at32 - 0.02, at32 + 0.02])
    assert verdict(root, "GN's error varies less") == expected


@pytest.mark.parametrize(("gn", "expected"), [(0.205, "holds"), (0.23, "mixed"),
                                              (0.40, "does not hold")])
def test_comparable_at_32_follows_the_numbers(store, tmp_path, gn, expected):
    root = copy_store(store, tmp_path / "store")
    set_errors(root, "bn", 32, [0.18, 0.22])
    set_errors(root, "gn", 32, [gn - 0.02, gn + 0.02])
    assert verdict(root, "at batch 32 GN is comparable") == expected


@pytest.mark.parametrize(("inference", "batch_stats", "expected"), [
    ((0.30, 0.35), (0.10, 0.12), "holds"), ((0.10, 0.12), (0.30, 0.35), "does not hold"),
    ((0.30, 0.10), (0.15, 0.15), "mixed")])  # mean above, one seed below
def test_gap_claims_follow_the_numbers(store, tmp_path, inference, batch_stats, expected):
    root = copy_store(store, tmp_path / "store")
    set_errors(root, "bn", 2, list(inference))
    set_errors(root, "bn", 2, list(inference), "test/acc_running")
    set_errors(root, "bn", 2, list(batch_stats), "test/acc_batch")
    assert verdict(root, "BN's Alg. 2 inference errs more") == expected
    assert verdict(root, "BN's moving-average inference errs more") == expected
    # the gap at batch 32 is made zero: larger at 2 exactly when the gap at 2 is positive
    for d in run_dirs(root, "bn", 32):
        final = metrics(d)[-1]
        edit(d, final={"test/acc_batch": final["test/acc"]})
    assert verdict(root, "BN's train/inference gap") == expected


def test_a_diverged_seed_scores_chance(store, tmp_path):
    root = copy_store(store, tmp_path / "store")
    dead, alive = run_dirs(root, "bn", 2)
    edit(dead, status="diverged", rows=1)
    cell = batchsize.analyse([root]).tables["mnist"]["bn"][2]
    assert cell["diverged"] == 1
    seeds = {s["seed"]: s for s in cell["per_seed"]}
    dead_seed = config(dead)["seed"]
    assert seeds[dead_seed]["err"] == seeds[dead_seed]["err_batch"] == 0.9
    other = 1 - metrics(alive)[-1]["test/acc"]
    assert cell["err_mean"] == pytest.approx((0.9 + other) / 2, abs=1e-6)


@pytest.mark.parametrize(("factor", "expected"), [(1, "holds"), (2, "does not hold")])
def test_the_base_rate_is_checked_against_the_best_candidate(store, tmp_path, factor, expected):
    lr_root = tmp_path / "batchsize_lr_mnist"
    base = config(run_dirs(store)[0])["batch_scaling"]["base_lr"]
    best = base * factor
    for d in run_dirs(store, batch=32):
        for lr in (base / 2, base, base * 2):
            clone = lr_root / f"{d.name},lr={lr}"
            shutil.copytree(d, clone, ignore=shutil.ignore_patterns("*.pt", ".hydra", ".lock"))
            edit(clone, optim__lr=lr, summary={"final_val_acc": 0.9 if lr == best else 0.5})
    out = tmp_path / "out"
    numbers = run_command(store, out, "--lr-runs", str(lr_root))
    assert verdict(numbers, "base lr is the best candidate") == expected
    assert numbers["lr_selection"]["best_lr"] == pytest.approx(best)
    lr_csv = pd.read_csv(out / "batchsize_lr_mnist.csv")
    assert len(lr_csv) == 18 and set(lr_csv["norm"]) == {"bn", "brn", "gn"}
    # lr candidates among the main runs are refused: they do not follow the scaling
    mixed = copy_store(store, tmp_path / "mixed")
    shutil.copytree(lr_root, mixed / "lr")
    assert batchsize.main([str(mixed), "--out", str(tmp_path / "o")]) == 2


def test_mixed_setups_are_refused_naming_the_key(store, tmp_path, capsys):
    root = copy_store(store, tmp_path / "store")
    edit(run_dirs(root, "gn", 2)[0], batch_scaling__examples=128)
    store_edits.assert_refuses(batchsize.main, root, tmp_path / "out", capsys,
                               "batch_scaling.examples")


def test_bad_input_exits_2_with_one_error_line(tmp_path):
    store_edits.assert_refuses_empty_folder("batchsize", tmp_path, "no batch-size runs")
