"""bnrepro.experiments.dln on small real deep-linear-net runs (bnrepro.train_dln): every claim
at every rate, each verdict by bnrepro.claims' rule with its evidence, non-finite measured
points and diverged runs as the worst values, and the edge-of-stability precondition."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from bnrepro.claims import read_claims
from bnrepro.experiments import dln
from bnrepro.run.store import read_metrics
from bnrepro.train_dln import train_population
from tests.test_dln import dln_config

RATES = (1e-4, 3e-5)
SEEDS = [0, 1, 2]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Standard and BN nets, two rates x 3 seeds, measured every 2 of 8 steps."""
    root = tmp_path_factory.mktemp("dln")
    cfg = dln_config(root, steps=8, log_every=4, depth=5, samples=48, seeds=SEEDS,
                     lrs=list(RATES), device="cpu",
                     **{"measures.ics.every": 2, "measures.ics.layers": [2, 4],
                        "measures.landscape.every": 2})
    for norm in ("none", "bn"):
        train_population(cfg, norm)
    return root


def runs_of(root):
    return dln.load_runs(root)


def null_steps(run_dir, key: str, count: int) -> None:
    """Write `key` as the store writes a non-finite value (null) at the first `count` steps
    that measured it."""
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in [r for r in rows if key in r][:count]:
        row[key] = None
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_every_claim_is_made_at_every_rate_with_its_evidence(store, tmp_path):
    assert dln.main([str(store), "--out", str(tmp_path)]) == 0
    data = read_claims(tmp_path / "dln_claims.json")
    claims = data["claims"]
    for lr in RATES:
        at_rate = [c for c in claims if f"lr {lr:g})" in c["claim"]]
        # loss, per layer (2, 4): BN's cos lower and the standard's near 1, 3 landscape
        assert len(at_rate) == 1 + 2 * 2 + 3, [c["claim"] for c in at_rate]
        assert sum("almost no ICS" in c["claim"] for c in at_rate) == 2
    assert len(claims) == len(RATES) * 8
    for c in claims:
        assert c["verdict"] in ("holds", "inconclusive", "does not hold", "not measured")
        evidence = c["evidence"]
        assert evidence["preconditions"]
        assert "p_value" in evidence or "rule" in evidence or c["verdict"] == "not measured"
        if "sides" in evidence:  # a comparison: BN first, its seeds as analysed
            assert [s["label"] for s in evidence["sides"]] == ["BN", "standard"]
            assert all(len(s["seeds"]) == len(SEEDS) for s in evidence["sides"])
    assert "mixed" not in (tmp_path / "dln_claims.md").read_text()
    assert (tmp_path / "dln.png").stat().st_size > 10_000


def copy_of(store, tmp_path):
    shutil.copytree(store, tmp_path / "runs")
    return tmp_path / "runs"


def test_the_loss_verdict_follows_the_numbers_at_each_rate(store, tmp_path):
    """The standard net's final loss set far below / above BN's at one rate: the verdict there
    follows it (3 seeds a side: the permutation test decides only when they separate)."""
    root = copy_of(store, tmp_path)
    verdicts = {}
    for final_loss in (1e-9, 1e9):
        for seed in SEEDS:
            path = root / f"norm=none,lr=3e-05,seed={seed}" / "metrics.jsonl"
            rows = read_metrics(path.parent)
            rows[-1]["train/loss"] = final_loss
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        claim = next(c for c in dln.analyse(runs_of(root))["claims"]
                     if c["claim"].endswith("lower loss (lr 3e-05)"))
        verdicts[final_loss] = claim["verdict"]
        assert f"{final_loss:.3g}" in claim["ours"]
    assert verdicts == {1e-9: "does not hold", 1e9: "holds"}


def test_non_finite_points_count_as_the_worst_value(store, tmp_path):
    copy = copy_of(store, tmp_path)
    run_dir = copy / "norm=bn,lr=0.0001,seed=0"
    null_steps(run_dir, "landscape/beta", 3)  # 3 of 4 measured steps not finite
    null_steps(run_dir, "ics/h4/cos", 3)
    result = dln.analyse(runs_of(copy))
    row = result["table"].set_index(["norm", "lr", "seed"]).loc[("bn", 1e-4, 0)]
    assert row["landscape/beta"] == math.inf  # not the median of the one finite step
    assert row["ics/h4/cos"] == -1.0
    beta = next(c for c in result["claims"]
                if "beta-smoothness" in c["claim"] and "lr 0.0001)" in c["claim"])
    assert beta["evidence"]["sides"][0]["seeds"][0] == math.inf
    assert math.isfinite(row["landscape/loss_range"])  # the others untouched


def test_a_diverged_run_is_its_sides_worst_seed_not_a_missing_one(tmp_path):
    cfg = dln_config(tmp_path, steps=6, log_every=2, depth=5, samples=48, seeds=[0, 1],
                     lrs=[1e-4, 1e6], device="cpu",
                     **{"measures.ics.every": 2, "measures.ics.layers": [2],
                        "measures.landscape.every": 2})
    for norm in ("none", "bn"):
        train_population(cfg, norm)
    runs = runs_of(tmp_path)
    assert any(r.summary["status"] == "diverged" for r in runs)
    claims = dln.analyse(runs)["claims"]
    loss = next(c for c in claims if "lower loss (lr 1e+06)" in c["claim"])
    assert all(len(s["seeds"]) == 2 for s in loss["evidence"]["sides"])
    assert all(p["met"] for p in loss["evidence"]["preconditions"])


def test_at_the_edge_of_stability_ics_and_landscape_are_not_measured(store, monkeypatch):
    runs = runs_of(store)
    table = dln.analyse(runs)["table"]
    assert (table["beta_x_lr"] == table["landscape/beta"] * table["lr"]).all()
    monkeypatch.setattr(dln, "EDGE", 0.0)  # every net at the edge
    for c in dln.analyse(runs)["claims"]:
        unmet = [p["check"] for p in c["evidence"]["preconditions"] if not p["met"]]
        if "lower loss" in c["claim"]:
            assert c["verdict"] != "not measured" and not unmet
        else:
            assert c["verdict"] == "not measured"
            assert unmet and "edge of stability" in unmet[0]
    # the standard net below the edge, BN at it: the standard's own ICS and the comparisons
    # are measured
    monkeypatch.setattr(dln, "edge", lambda rs, lr: 0.0 if rs[0].config.norm == "none" else 2.0)
    monkeypatch.setattr(dln, "EDGE", 1.0)
    for c in dln.analyse(runs)["claims"]:
        assert all(p["met"] for p in c["evidence"]["preconditions"]), c["claim"]


@pytest.mark.parametrize(("seeds", "expected"), [
    ([0.95, 0.99, 0.92, 0.97, 0.999], "holds"),
    ([0.95, 0.99, 0.92], "inconclusive"),  # 0.5^3 > 0.05: 3 seeds cannot decide
    ([0.5, -0.2, 0.1, 0.89, -1.0], "does not hold"),
    ([0.95, 0.99, 0.5, 0.97, 0.999], "inconclusive"),
])
def test_the_almost_no_ics_rule(seeds, expected):
    verdict, evidence = dln.sign_rule(seeds, 0.9, [("runs complete", True)])
    assert verdict == expected and evidence["at_or_above"] == sum(v >= 0.9 for v in seeds)
    assert dln.sign_rule(seeds, 0.9, [("runs complete", False)])[0] == "not measured"
