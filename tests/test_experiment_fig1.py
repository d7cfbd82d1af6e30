"""bnrepro.experiments.fig1's claims (Sec. 4.1): verdicts computed from the runs by the one rule
(bnrepro.claims.compare on per-seed values), checked on a hand-written fig1 run store
(config.yaml, metrics.jsonl, summary.json per run, as the trainer writes them) whose numbers
each case sets; the per-seed values are recomputed here from the metrics directly."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from bnrepro import analyse
from bnrepro.claims import read_claims
from bnrepro.config import compose_config
from bnrepro.experiments import fig1
from bnrepro.run.checkpoint import fingerprint
from bnrepro.run.runs import find_runs
from bnrepro.run.store import read_config

REPO = Path(__file__).resolve().parents[1]

STEPS = [0, 100, 200, 300]
HIGHER, FASTER, STABLE = (
    "BN helps the network achieve higher test accuracy", "BN helps the network train faster",
    "BN makes the distribution of a sigmoid's input more stable")


def write_run(root: Path, norm: str, seed: int, acc: list[float], q50: list[float],
              width: float, status: str = "completed") -> Path:
    """One run: test accuracy per step; the tracked unit's percentiles in every hidden layer
    are q50 -/+ width (the training net's copy shifted by 0.01)."""
    run_dir = root / f"model.norm={norm},seed={seed}"
    run_dir.mkdir(parents=True)
    config = {"name": "fig1_mnist", "seed": seed, "dataset": {"name": "mnist"},
              "model": {"norm": norm, "hidden": [4, 4]}, "probe": {"unit": 0},
              "optim": {"lr": 0.1}, "trainer": {"batch_size": 60}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    rows = []
    for step, a, m in zip(STEPS, acc, q50, strict=False):
        row = {"step": step, "test/acc": a}
        for prefix, shift in (("act", 0.0), ("act_train", 0.01)):
            for layer in (1, 2):
                row |= {f"{prefix}/h{layer}/q15": m - width + shift,
                        f"{prefix}/h{layer}/q50": m + shift,
                        f"{prefix}/h{layer}/q85": m + width + shift}
        rows.append(row)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "summary.json").write_text(json.dumps({"status": status}))
    return run_dir


# without BN the median wanders by 1.0 + seed/10 over training (drift 1.0, 1.1, 1.2)
NONE_Q50 = [[0, 0.5, 1.0 + seed / 10, 0.2] for seed in range(3)]
# final mean 0.81 (the target): seed 0 never reaches it, seeds 1 and 2 at step 300
NONE_ACC = [[0.1, 0.5, 0.7, 0.8], [0.1, 0.5, 0.72, 0.82], [0.1, 0.5, 0.75, 0.81]]


def run(tmp_path: Path, bn_acc: list[list[float]], bn_q50: list[list[float]],
        none_acc: list[list[float]] | None = None,
        statuses: dict[tuple[str, int], str] | None = None) -> dict[str, dict]:
    root, statuses = tmp_path / "runs", statuses or {}
    for seed, (acc, q50) in enumerate(zip(bn_acc, bn_q50, strict=True)):
        write_run(root, "bn", seed, acc, q50, width=1.0,
                  status=statuses.get(("bn", seed), "completed"))
    for seed, acc in enumerate(none_acc or []):
        write_run(root, "none", seed, acc, NONE_Q50[seed], width=0.5,
                  status=statuses.get(("none", seed), "completed"))
    out = tmp_path / "results"
    assert analyse.main(["fig1", str(root), "--out", str(out)]) == 0  # as `make fig1` runs it
    claims = read_claims(out / "fig1_mnist_claims.json")
    # the module's analysis is what the command wrote (JSON: NaN as null)
    runs = find_runs([root], statuses=fig1.ENDED, keep_empty=True)
    assert json.loads(json.dumps(fig1.analyse(runs).claims)) == claims["claims"]
    # no shift measures logged here: Fig. 1 and every layer's percentiles only
    assert claims["figures"] == ["fig1_mnist.png", "fig1_mnist_layers.png"]
    assert all((out / f).is_file() for f in claims["figures"])
    assert (out / "fig1_mnist_claims.md").read_text().count("| BN ") == 3
    return {c["claim"]: c for c in claims["claims"]}


def seeds(claim: dict, side: int) -> list[float | None]:
    return claim["evidence"]["sides"][side]["seeds"]


def test_bn_ahead_faster_and_stabler_holds_on_per_seed_values_from_the_runs(tmp_path):
    bn_acc = [[0.1, 0.85, 0.9, 0.9], [0.1, 0.7, 0.82, 0.91], [0.1, 0.83, 0.85, 0.86]]
    claims = run(tmp_path, bn_acc=bn_acc, bn_q50=[[0, 0.1, 0.1, 0], [0, 0, 0.2, 0.1],
                                                 [0, 0.3, 0, 0]], none_acc=NONE_ACC)
    assert {c: claims[c]["verdict"] for c in (HIGHER, FASTER, STABLE)} == dict.fromkeys(
        (HIGHER, FASTER, STABLE), "holds")
    # per-seed evidence, recomputed from the metrics: final accuracy, first step at the target
    # 0.81 (none: seed 0 never = null, the worst), drift = the median's range (rigid band)
    assert seeds(claims[HIGHER], 0) == [a[-1] for a in bn_acc]
    assert seeds(claims[HIGHER], 1) == [a[-1] for a in NONE_ACC]
    assert seeds(claims[FASTER], 0) == [100, 200, 100]
    assert seeds(claims[FASTER], 1) == [None, 300, 300]
    assert seeds(claims[STABLE], 0) == pytest.approx([0.1, 0.2, 0.3])
    assert seeds(claims[STABLE], 1) == pytest.approx([1.0, 1.1, 1.2])
    for claim, better in ((HIGHER, "higher"), (FASTER, "lower"), (STABLE, "lower")):
        evidence = claims[claim]["evidence"]
        assert evidence["better"] == better
        assert evidence["p_value"] == pytest.approx(1 / 20)  # 3 vs 3, ranges apart
        assert [s["label"] for s in evidence["sides"]] == ["with BN", "without BN"]
        assert all(p["met"] for p in evidence["preconditions"])
    assert "with BN 0.8900 (0.8600..0.9100) vs without 0.8100 (0.8000..0.8200)" in \
        claims[HIGHER]["ours"]
    assert "with BN 100 (100..200) vs without 300 (300..300); 1 of 3 never" in \
        claims[FASTER]["ours"]
    assert all(c["dataset"] == "mnist" and c["source"] == "Ioffe & Szegedy (2015)"
               for c in claims.values())


def test_a_null_effect_is_inconclusive_and_a_reversal_does_not_hold(tmp_path):
    # BN ends lower on average but the seeds overlap (the old rule: "does not hold"); one BN
    # seed drifts more than a seed without BN (the old rule: "mixed"). Its steps overlap too.
    claims = run(tmp_path / "null", bn_acc=[[0.1, 0.5, 0.7, 0.79], [0.1, 0.7, 0.82, 0.805],
                                            [0.1, 0.5, 0.6, 0.83]],
                 bn_q50=[[0, 0.1, 0.1, 0], [0, 1.15, 0.2, 0.1], [0, 0, 0.1, 0]],
                 none_acc=NONE_ACC)
    assert claims[HIGHER]["verdict"] == "inconclusive"
    assert claims[STABLE]["verdict"] == "inconclusive"
    assert claims[FASTER]["verdict"] == "inconclusive"
    assert "mixed" not in {c["verdict"] for c in claims.values()}
    # every BN seed below every seed without BN, and drifting more: decided against BN
    claims = run(tmp_path / "against", bn_acc=[[0.1, 0.5, 0.6, 0.7]] * 3,
                 bn_q50=[[0, 2, 0, 0], [0, 2.1, 0, 0], [0, 2.2, 0, 0]], none_acc=NONE_ACC)
    assert claims[HIGHER]["verdict"] == "does not hold"
    assert claims[STABLE]["verdict"] == "does not hold"
    assert claims[HIGHER]["evidence"]["p_value_against"] == pytest.approx(1 / 20)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_diverged_seed_counts_as_the_worst_value_not_as_absent(tmp_path):
    # without BN seed 2 diverged after step 100: the worst accuracy, drift and steps; dropped,
    # BN's 3 seeds against 2 could not decide anything (the smallest p is 1/10)
    bn_acc = [[0.1, 0.85, 0.9, 0.9], [0.1, 0.7, 0.82, 0.91], [0.1, 0.83, 0.85, 0.86]]
    claims = run(tmp_path, bn_acc=bn_acc, bn_q50=[[0, 0.1, 0.1, 0], [0, 0, 0.2, 0.1],
                                                 [0, 0.3, 0, 0]],
                 none_acc=[*NONE_ACC[:2], [0.1, 0.5]], statuses={("none", 2): "diverged"})
    assert seeds(claims[HIGHER], 1) == [0.8, 0.82, None]
    assert seeds(claims[STABLE], 1)[2] is None
    assert {c["verdict"] for c in claims.values()} == {"holds"}
    assert "1 of 3 diverged" in claims[HIGHER]["ours"]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_seed_missing_on_one_side_is_not_measured(tmp_path):
    # BN seed 2 was interrupted: the nets ran other seeds, so nothing is compared
    bn_acc = [[0.1, 0.85, 0.9, 0.9], [0.1, 0.7, 0.82, 0.91], [0.1, 0.83]]
    claims = run(tmp_path, bn_acc=bn_acc, bn_q50=[[0, 0.1, 0.1, 0], [0, 0, 0.2, 0.1],
                                                 [0, 0.3]],
                 none_acc=NONE_ACC, statuses={("bn", 2): "interrupted"})
    assert {c["verdict"] for c in claims.values()} == {"not measured"}
    for claim in claims.values():
        assert "with: [0, 1], without: [0, 1, 2]" in claim["ours"]
        assert [p["met"] for p in claim["evidence"]["preconditions"]][:2] == [True, False]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_without_runs_of_one_net_every_claim_is_not_measured(tmp_path):
    claims = run(tmp_path, bn_acc=[[0.1, 0.85, 0.9, 0.9]], bn_q50=[[0, 0.1, 0.1, 0]])
    assert {c["verdict"] for c in claims.values()} == {"not measured"}
    assert all("runs with and without BN are present" in c["ours"] for c in claims.values())


def test_the_one_thread_pin_is_make_fig1s_and_keeps_its_run_directories(run_train, mirror,
                                                                       tmp_path):
    # the experiment config leaves torch's threads alone: a user's multirun of it (through
    # any launcher) is not held to one thread
    assert compose_config(["experiment=fig1_mnist"]).trainer.threads is None
    # make fig1's command lines pin one thread (its two populations side by side)
    dry = subprocess.run(["make", "-n", "--no-print-directory", "fig1-norm-bn"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    (line,) = [x for x in dry.splitlines() if "bnrepro.train" in x]
    assert "experiment=fig1_mnist model.norm=bn trainer.threads=1" in line
    # ... without changing its run directories (so its runs resume as done), while the pin
    # stays in the checkpoint fingerprint (a run of other threads is refused, not resumed)
    store = tmp_path / "store"
    run_train("-m", "experiment=fig1_mnist", "debug=smoke", "model.norm=bn", "seed=0",
              "trainer.threads=1", f"hydra.sweep.dir={store}")
    (summary,) = store.rglob("summary.json")
    assert summary.parent.name == "debug=smoke,model.norm=bn,seed=0"
    assert fingerprint(read_config(summary.parent))["trainer"]["threads"] == 1
