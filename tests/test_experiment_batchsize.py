"""bnrepro.experiments.batchsize on a tiny real batchsize_mnist run store (trained once per
session; SGD batch 32, BN and Batch Renorm with ghost batches of 2 and 32, GN once): cells
are the seeds' final test errors read from metrics.jsonl by statistics batch, diverged seeds
score chance, every verdict comes from bnrepro.claims.compare and follows the numbers (edited
COPIES of the real store flip them), Wu & He's claims are not measured on the MLP arm, the
learning-rate check, and bad input refused with exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bnrepro.claims import VERDICTS, check_claim
from bnrepro.experiments import batchsize
from tests import store_edits
from tests.conftest import copy_store
from tests.store_edits import config, metrics


@pytest.fixture(scope="session")
def store(batchsize_store) -> Path:
    return batchsize_store


def run_dirs(root: Path, norm: str | None = None, batch: int | None = None) -> list[Path]:
    """The runs of `norm` at statistics batch `batch` (GN: its one cell, at the SGD batch)."""
    ghost = None if batch is None else 0 if norm == "gn" else batch
    return store_edits.select_runs(root, model__norm=norm, model__bn_ghost_batch=ghost)


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


def verdict(numbers: dict | Path, starts: str, conv: bool = False) -> str:
    """The verdict of the claim starting with `starts`: from the command's JSON, or from
    `analyse` on a run store (no figure, no files: fast); with `conv` the store's numbers are
    judged as the conv arm's (batchsize.claims(conv=True)), as CIFAR's are."""
    if isinstance(numbers, Path):
        result = batchsize.analyse([numbers])
        numbers = {"claims": batchsize.claims("mnist", result.tables["mnist"], conv=True)
                   if conv else result.claims}
    found = [c["verdict"] for c in numbers["claims"] if c["claim"].startswith(starts)]
    assert len(found) == 1, (starts, [c["claim"] for c in numbers["claims"]])
    return found[0]


def test_cells_are_the_seeds_final_test_errors(store, tmp_path):
    out = tmp_path / "results"
    numbers = run_command(store, out)
    table = pd.read_csv(out / "batchsize_mnist.csv").set_index(["norm", "batch_size"])
    assert sorted(table.index) == [("bn", 2), ("bn", 32), ("brn", 2), ("brn", 32), ("gn", 32)]
    for (norm, batch), row in table.iterrows():
        finals = [metrics(d)[-1] for d in run_dirs(store, norm, batch)]
        assert all(f["step"] == 2 for f in finals)  # SGD batch 32, 64 examples, every cell
        for column, key in (("err", "test/acc"), ("err_batch", "test/acc_batch"),
                            ("err_running", "test/acc_running")):
            if norm == "gn" and key != "test/acc":  # no batch statistics: no gap numbers
                assert pd.isna(row[f"{column}_mean"])
                continue
            errors = [1 - f[key] for f in finals]
            assert row[f"{column}_mean"] == pytest.approx(sum(errors) / 3, abs=1e-6)
            assert row[f"{column}_min"] == pytest.approx(min(errors), abs=1e-6)
            assert row[f"{column}_max"] == pytest.approx(max(errors), abs=1e-6)
        scaling = config(run_dirs(store, norm, batch)[0])["batch_scaling"]
        assert row["lr"] == pytest.approx(scaling["base_lr"]) and row["seeds"] == 3
    # Batch Renorm infers with its moving averages: its Alg. 2 column is its running one
    assert (table.loc["brn", "err_mean"] == table.loc["brn", "err_running_mean"]).all()
    for suffix in (".png", ".pdf", ".csv", ".json"):
        assert (out / f"batchsize_mnist{suffix}").stat().st_size > 0
    claims = (out / "batchsize_claims.md").read_text()
    assert "Verdict rule" in claims and "| mnist | BN's error rises" in claims
    assert "34.7" in claims and numbers["wu_he_table2_imagenet_error_pct"]["GN"]["2"] == 24.1


def test_every_row_is_a_compare_verdict_with_evidence(store, tmp_path):
    """Issue 26: no "mixed"; every row carries compare's evidence and passes check_claim."""
    numbers = run_command(store, tmp_path / "out")
    assert len(numbers["claims"]) == 6
    for row in numbers["claims"]:
        check_claim(row)
        assert row["verdict"] in VERDICTS and row["verdict"] != "mixed"
        assert {"sides", "better", "margin", "preconditions"} <= set(row["evidence"])
    written = json.loads((tmp_path / "out" / "batchsize_claims.json").read_text())
    assert all("evidence" in c for c in written["claims"])


def test_wu_he_claims_are_not_measured_on_the_fully_connected_arm(store, tmp_path):
    """The MLP's BN normalises each unit over b values (at b = 2: exactly +-gamma + beta): a
    set-up choice, not Wu & He's conv BN, would decide their claims. Batch Renorm's (Ioffe's
    small-minibatch claims) are still judged there. Old code judged every row on MNIST."""
    root = copy_store(store, tmp_path / "store")
    set_errors(root, "bn", 2, [0.60, 0.61, 0.62])
    set_errors(root, "bn", 32, [0.10, 0.11, 0.12])
    set_errors(root, "gn", 32, [0.05, 0.06, 0.07])
    for starts in ("BN's error rises", "at the smallest statistics batch (b = 2) GN",
                   "at b = 32 GN is comparable"):
        assert verdict(root, starts) == "not measured"
        assert verdict(root, starts, conv=True) == "holds"
    rows = batchsize.analyse([root]).claims
    reason = next(r["ours"] for r in rows if r["claim"].startswith("BN's error rises"))
    assert "conv feature maps" in reason
    set_errors(root, "brn", 2, [0.30, 0.31, 0.32])
    assert verdict(root, "Batch Renorm is better") == "holds"


def test_gn_variation_is_flat_by_construction_not_measured(store):
    """GN never sees the statistics batch: its flat curve is not a measurement."""
    assert verdict(store, "GN's error varies less", conv=True) == "not measured"


CLAIMS = {  # claim prefix -> (cells to set: (norm, batch, errors)); A (claimed better) first
    "BN's error rises": [("bn", 32, [0.10, 0.11, 0.12]), ("bn", 2, [0.30, 0.31, 0.32])],
    "at the smallest statistics batch (b = 2) GN's error is below BN's":
        [("gn", 32, [0.10, 0.11, 0.12]), ("bn", 2, [0.30, 0.31, 0.32])],
    "Batch Renorm is better than BN": [("brn", 2, [0.10, 0.11, 0.12]),
                                       ("bn", 2, [0.30, 0.31, 0.32])],
}


@pytest.mark.parametrize("claim", list(CLAIMS))
@pytest.mark.parametrize(("flip", "expected"), [(False, "holds"), (True, "does not hold")])
def test_cell_comparisons_follow_the_numbers(store, tmp_path, claim, flip, expected):
    root = copy_store(store, tmp_path / "store")
    (n1, b1, e1), (n2, b2, e2) = CLAIMS[claim]
    set_errors(root, n1, b1, e2 if flip else e1)
    set_errors(root, n2, b2, e1 if flip else e2)
    assert verdict(root, claim, conv=True) == expected


def test_overlapping_seed_ranges_are_inconclusive(store, tmp_path):
    """Old rule: means apart -> "mixed" (a verdict); compare: the test cannot decide."""
    root = copy_store(store, tmp_path / "store")
    set_errors(root, "bn", 2, [0.10, 0.40, 0.41])  # mean above batch 32's, ranges overlap
    set_errors(root, "bn", 32, [0.15, 0.20, 0.21])
    assert verdict(root, "BN's error rises", conv=True) == "inconclusive"


def test_a_cell_at_chance_is_not_measured(store, tmp_path):
    root = copy_store(store, tmp_path / "store")
    set_errors(root, "bn", 2, [0.88, 0.89, 0.90])  # never left chance
    set_errors(root, "bn", 32, [0.10, 0.11, 0.12])
    assert verdict(root, "BN's error rises", conv=True) == "not measured"


@pytest.mark.parametrize(("gn", "expected"), [(0.10, "holds"), (0.205, "inconclusive"),
                                              (0.40, "does not hold")])
def test_comparable_at_32_is_non_inferiority(store, tmp_path, gn, expected):
    root = copy_store(store, tmp_path / "store")
    set_errors(root, "bn", 32, [0.19, 0.20, 0.21])
    set_errors(root, "gn", 32, [gn - 0.01, gn, gn + 0.01])
    assert verdict(root, "at b = 32 GN is comparable", conv=True) == expected


@pytest.mark.parametrize(("brn_gap", "bn_gap", "expected"), [
    (0.0, 0.2, "holds"), (0.2, 0.0, "does not hold")])
def test_train_inference_agreement_follows_the_numbers(store, tmp_path, brn_gap, bn_gap,
                                                        expected):
    """Ioffe (2017): Batch Renorm's training and inference networks give the same outputs."""
    root = copy_store(store, tmp_path / "store")
    for norm, gap in (("brn", brn_gap), ("bn", bn_gap)):
        base = [0.20, 0.21, 0.22]
        set_errors(root, norm, 2, base, "test/acc_batch")
        set_errors(root, norm, 2, [e + gap + 0.001 * k for k, e in enumerate(base)])
    assert verdict(root, "Batch Renorm's training and inference") == expected


def test_a_diverged_seed_scores_chance(store, tmp_path):
    root = copy_store(store, tmp_path / "store")
    dead, *alive = run_dirs(root, "bn", 2)
    edit(dead, status="diverged", rows=1)
    cell = batchsize.analyse([root]).tables["mnist"]["bn"][2]
    assert cell["diverged"] == 1
    seeds = {s["seed"]: s for s in cell["per_seed"]}
    dead_seed = config(dead)["seed"]
    assert seeds[dead_seed]["err"] == seeds[dead_seed]["err_batch"] == 0.9
    others = [1 - metrics(d)[-1]["test/acc"] for d in alive]
    assert cell["err_mean"] == pytest.approx((0.9 + sum(others)) / 3, abs=1e-6)


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
    assert len(lr_csv) == 18 and set(lr_csv["norm"]) == {"bn", "brn"}
    # lr candidates among the main runs are refused: they do not follow the protocol's rate
    mixed = copy_store(store, tmp_path / "mixed")
    shutil.copytree(lr_root, mixed / "lr")
    assert batchsize.main([str(mixed), "--out", str(tmp_path / "o")]) == 2


def test_mixed_setups_are_refused_naming_the_key(store, tmp_path, capsys):
    root = copy_store(store, tmp_path / "store")
    edit(run_dirs(root, "gn", 32)[0], batch_scaling__examples=128)
    store_edits.assert_refuses(batchsize.main, root, tmp_path / "out", capsys,
                               "batch_scaling.examples")


def test_bad_input_exits_2_with_one_error_line(tmp_path):
    store_edits.assert_refuses_empty_folder("batchsize", tmp_path, "no batch-size runs")
