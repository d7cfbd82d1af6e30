"""bnrepro.experiments.fig1's claims (Sec. 4.1): verdicts computed from the runs by the documented
rules, checked on a hand-written fig1 run store (config.yaml, metrics.jsonl, summary.json per
run, as the trainer writes them) whose numbers each case sets; the drift is recomputed here
from the metrics directly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bnrepro import analyse
from bnrepro.claims import read_claims
from bnrepro.experiments import fig1
from bnrepro.run.runs import find_runs

STEPS = [0, 100, 200, 300]
HIGHER, FASTER, STABLE = (
    "BN helps the network achieve higher test accuracy", "BN helps the network train faster",
    "BN makes the distribution of a sigmoid's input more stable")


def write_run(root: Path, norm: str, seed: int, acc: list[float], q50: list[float],
              width: float) -> Path:
    """One run: test accuracy per step; the tracked unit's percentiles in every hidden layer
    are q50 -/+ width (the training net's copy shifted by 0.01)."""
    run_dir = root / f"model.norm={norm},seed={seed}"
    run_dir.mkdir(parents=True)
    config = {"name": "fig1_mnist", "seed": seed, "dataset": {"name": "mnist"},
              "model": {"norm": norm, "hidden": [4, 4]}, "probe": {"unit": 0},
              "optim": {"lr": 0.1}, "trainer": {"batch_size": 60}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    rows = []
    for step, a, m in zip(STEPS, acc, q50, strict=True):
        row = {"step": step, "test/acc": a}
        for prefix, shift in (("act", 0.0), ("act_train", 0.01)):
            for layer in (1, 2):
                row |= {f"{prefix}/h{layer}/q15": m - width + shift,
                        f"{prefix}/h{layer}/q50": m + shift,
                        f"{prefix}/h{layer}/q85": m + width + shift}
        rows.append(row)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed"}))
    return run_dir


def run(tmp_path: Path, bn_acc: list[list[float]], bn_q50: list[list[float]],
        none_acc: list[list[float]] | None = None) -> dict[str, dict]:
    root = tmp_path / "runs"
    for seed, (acc, q50) in enumerate(zip(bn_acc, bn_q50, strict=True)):
        write_run(root, "bn", seed, acc, q50, width=1.0)
    for seed, acc in enumerate(none_acc or []):
        # without BN the median wanders by 1.0 + seed/10 over training, the band widens
        write_run(root, "none", seed, acc, [0, 0.5, 1.0 + seed / 10, 0.2], width=0.5)
    out = tmp_path / "results"
    assert analyse.main(["fig1", str(root), "--out", str(out)]) == 0  # as `make fig1` runs it
    claims = read_claims(out / "fig1_mnist_claims.json")
    # the module's analysis is what the command wrote
    assert fig1.analyse(find_runs([root])).claims == claims["claims"]
    # no shift measures logged here: Fig. 1 and every layer's percentiles only
    assert claims["figures"] == ["fig1_mnist.png", "fig1_mnist_layers.png"]
    assert all((out / f).is_file() for f in claims["figures"])
    assert (out / "fig1_mnist_claims.md").read_text().count("| BN ") == 3
    return {c["claim"]: c for c in claims["claims"]}


NONE_ACC = [[0.1, 0.5, 0.7, 0.8], [0.1, 0.5, 0.72, 0.82]]  # final mean 0.81: the target


def test_bn_ahead_faster_and_stabler_holds_with_numbers_from_the_runs(tmp_path):
    claims = run(tmp_path, bn_acc=[[0.1, 0.85, 0.9, 0.9], [0.1, 0.7, 0.82, 0.91]],
                 bn_q50=[[0, 0.1, 0.1, 0], [0, 0, 0.2, 0.1]], none_acc=NONE_ACC)
    assert {c: claims[c]["verdict"] for c in (HIGHER, FASTER, STABLE)} == dict.fromkeys(
        (HIGHER, FASTER, STABLE), "holds")
    assert "with BN 0.9050 (0.9000..0.9100) vs without 0.8100 (0.8000..0.8200)" in \
        claims[HIGHER]["ours"]
    # target 0.81: BN seeds reach it at 100 and 200; without BN seed 1 at 300, seed 0 never
    assert "with BN 150 (100..200) vs without never (300..300); 1 of 2 never" in \
        claims[FASTER]["ours"]
    # drift = mean over q15/q50/q85 of (max - min) = the median's range (the band is rigid)
    assert "with BN 0.150 (0.100..0.200) vs without 1.050 (1.000..1.100)" in \
        claims[STABLE]["ours"]
    assert all(c["dataset"] == "mnist" and c["source"] == "Ioffe & Szegedy (2015)"
               for c in claims.values())


def test_verdicts_change_with_the_numbers(tmp_path):
    # BN ends lower on average; one BN seed drifts more than a seed without BN.
    claims = run(tmp_path, bn_acc=[[0.1, 0.85, 0.9, 0.75], [0.1, 0.7, 0.82, 0.8]],
                 bn_q50=[[0, 0.1, 0.1, 0], [0, 1.05, 0.2, 0.1]], none_acc=NONE_ACC)
    assert claims[HIGHER]["verdict"] == "does not hold"
    assert claims[FASTER]["verdict"] == "holds"  # still there first (steps 100 and 200)
    assert claims[STABLE]["verdict"] == "mixed"  # means 0.575 < 1.05, ranges overlap
    assert "with BN 0.575 (0.100..1.050)" in claims[STABLE]["ours"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_without_runs_of_one_net_every_claim_is_not_measured(tmp_path):
    claims = run(tmp_path, bn_acc=[[0.1, 0.85, 0.9, 0.9]], bn_q50=[[0, 0.1, 0.1, 0]])
    assert {c["verdict"] for c in claims.values()} == {"not measured"}
    assert all("no runs with model.norm=none" in c["ours"] for c in claims.values())
