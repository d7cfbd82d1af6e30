"""bnrepro.report: REPORT.md gathers the analyses' claims and figures, its verdicts come
from the runs (change a run's numbers, rerun the analysis and the report, and the verdict
changes), its headline counts the claims, and experiments without results are named as not
run. The run store is a tiny hand-written fig2 store (config.yaml, metrics.jsonl,
summary.json per run, as the trainer writes them): no training needed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from bnrepro import report
from bnrepro.claims import ClaimsError, read_claims, write_claims
from bnrepro.experiments import fig2

DATASET = "cifar10-jpeg"
STEPS = [0, 10, 20, 30]
BASELINE = [0.10, 0.30, 0.40, 0.40]  # per step; seed s adds s / 100 (plateaued: a precondition)
FEWER_STEPS = "BN alone reaches the baseline's accuracy in fewer steps"


def write_run(root: Path, variant: str, seed: int, val: list[float]) -> None:
    run_dir = root / f"variant={variant},seed={seed}"
    run_dir.mkdir(parents=True)
    config = {"name": "fig2_cifar", "variant": variant, "seed": seed,
              "dataset": {"name": DATASET}, "model": {"norm": "none" if variant == "Baseline"
                                                      else "bn", "width_multiplier": 0.5},
              "optim": {"lr": 0.01}, "trainer": {"max_steps": STEPS[-1], "eval_every": 10}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"step": s, "val/acc": v + seed / 100, "test/acc": v} for s, v in zip(
        STEPS, val, strict=True)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed"}))


def fig2_store(root: Path, bn_curve: list[float]) -> Path:
    for seed in (0, 1, 2):  # 3 seeds: the fewest at which bnrepro.claims.compare can decide
        write_run(root, "Baseline", seed, BASELINE)
        write_run(root, "BN-Baseline", seed, bn_curve)
    return root


def verdict_in_report(text: str, claim: str) -> str:
    """The verdict of `claim` in the report's one-line-per-claim table."""
    row = next(line for line in text.splitlines() if line.startswith(f"| fig2 | {claim} |"))
    return re.search(r"\*\*(.+?)\*\* \|$", row)[1]


@pytest.mark.parametrize(("bn_curve", "expected", "bn_steps"), [
    ([0.10, 0.42, 0.45, 0.50], "holds", "10 (10..10)"),     # BN there at step 10
    # BN never reaches the target, nor does one Baseline seed: the test cannot decide.
    ([0.10, 0.15, 0.20, 0.25], "inconclusive", "never"),
])
def test_the_reports_verdict_follows_the_runs(tmp_path, bn_curve, expected, bn_steps):
    store = fig2_store(tmp_path / "runs", bn_curve)
    results = tmp_path / "results"
    assert fig2.main([str(store), "--out", str(results)]) == 0
    assert report.main(["--results", str(results)]) == 0
    text = (results / "REPORT.md").read_text()

    assert verdict_in_report(text, FEWER_STEPS) == expected
    # Target = max of the Baseline's seed-mean val curve = 0.41 at step 20, hit at 20 by
    # seeds 1 and 2 (0.41, 0.42), never by seed 0 (0.40).
    ours = "steps to target, median (min..max over seeds): BN-Baseline " + bn_steps
    assert ours in text
    assert "Baseline 20 (20..20); 1 of 3 never" in text
    assert f"| fig2 | {FEWER_STEPS} | Ioffe & Szegedy (2015) | 13.3M vs 31.0M steps |" in text
    row = next(line for line in text.splitlines() if line.startswith(f"| fig2 | {FEWER_STEPS}"))
    assert f"| {DATASET} | p = " in row  # dataset named exactly, then the test (evidence)


def test_headline_counts_every_claim_and_missing_experiments_are_named(tmp_path):
    results = tmp_path / "results"
    fig2.main([str(fig2_store(tmp_path / "runs", [0.1, 0.42, 0.45, 0.5])), "--out",
                    str(results)])
    claims = read_claims(results / f"fig2_{DATASET}_claims.json")["claims"]
    report.main(["--results", str(results)])
    text = (results / "REPORT.md").read_text()

    paper = [c for c in claims if c["source"] == "Ioffe & Szegedy (2015)"]
    counts = [sum(c["verdict"] == v for c in paper)
              for v in ("holds", "inconclusive", "does not hold", "not measured")]
    assert f"| Ioffe & Szegedy (2015) | {len(paper)} | {' | '.join(map(str, counts))} |" in text
    assert counts[3] >= 3  # BN-x5, BN-x30, ... have no runs here: "not measured", not dropped
    assert sum(line.startswith("| fig2 | ") for line in text.splitlines()) == len(claims)
    for make in ("make fig1", "make sweep-mnist", "make santurkar", "make batchsize",
                 "make depth"):
        assert f"**Not run**: `{make}`" in text
    assert "make sweep-cifar" in text.split("\n\n## ")[0]  # named in the not-run line only
    assert f"![fig2_{DATASET}.png](fig2_{DATASET}.png)" in text
    assert (results / f"fig2_{DATASET}.png").is_file()


def test_links_are_relative_to_the_report_and_stray_files_are_not_dropped(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "extra_plot.png").write_bytes(b"\x89PNG")
    write_claims(results / "custom_claims.json",
                 [{"claim": "c", "paper": "p", "ours": "o | x", "verdict": "inconclusive",
                   "dataset": "mnist", "source": "Wu & He (2018)"}],
                 experiment="custom", title="A custom check", make="make custom", setup="s",
                 figures=[], verdict_rule="r",
                 summaries=[{"machine": {"cpu": "CPU A", "cpu_capability": "AVX2", "threads": 1,
                                         "cores": 2, "gpu": "none", "torch": "2.15.0"}}, {}])
    report.main(["--results", str(results), "--out", str(tmp_path / "docs" / "R.md")])
    text = (tmp_path / "docs" / "R.md").read_text()
    assert ("Trained on: CPU A (AVX2), 1 thread of 2 cores, torch 2.15.0: 1 run; "
            "not recorded: 1 run.") in text
    assert "![extra_plot.png](../results/extra_plot.png)" in text
    assert ("| custom_claims.json | c | Wu & He (2018) | p | o \\| x | mnist | **inconclusive** |"
            in text)
    assert "| Wu & He (2018) | 1 | 0 | 1 | 0 | 0 |" in text


def test_a_claim_with_a_typed_or_unknown_verdict_is_refused(tmp_path):
    row = {"claim": "c", "paper": "p", "ours": "o", "verdict": "probably", "dataset": "d",
           "source": "ours"}
    with pytest.raises(ClaimsError, match="verdict 'probably'"):
        write_claims(tmp_path / "x_claims.json", [row], experiment="x", title="t", make="m",
                     setup="s", figures=[], verdict_rule="r", summaries=[])
    (tmp_path / "x_claims.json").write_text(json.dumps([row | {"verdict": "holds",
                                                               "source": "a blog"}]))
    with pytest.raises(ClaimsError, match="source 'a blog'"):
        read_claims(tmp_path / "x_claims.json")


def test_the_report_shows_each_verdicts_test_and_how_many_chance_would_decide(tmp_path):
    """A claim with evidence shows its p-values and its unmet preconditions beside the verdict;
    the headline says how many decisive verdicts chance alone would give (3 vs 3 seeds: 1/20
    in each direction, so 0.1 a claim), from the evidence, not typed."""
    from bnrepro.claims import compare

    results = tmp_path / "results"
    results.mkdir()
    decided = compare(("BN", [0.9, 0.91, 0.92]), ("none", [0.8, 0.81, 0.82]), "higher")
    null = compare(("BN", [0.80, 0.85, 0.90]), ("none", [0.82, 0.84, 0.88]), "higher")
    gated = compare(("BN", [0.9, 0.91, 0.92]), ("none", [0.8, 0.81, 0.82]), "higher",
                    preconditions=[("the baseline plateaued", False)])
    rows = [{"claim": f"claim {k}", "paper": "p", "ours": "o", "verdict": v, "evidence": e,
             "dataset": "mnist", "source": "Ioffe & Szegedy (2015)"}
            for k, (v, e) in enumerate((decided, null, gated))]
    assert [r["verdict"] for r in rows] == ["holds", "inconclusive", "not measured"]
    write_claims(results / "t_claims.json", rows, experiment="t", title="T", make="m",
                 setup="s", figures=[], verdict_rule="r", summaries=[])
    report.main(["--results", str(results)])
    text = (results / "REPORT.md").read_text()
    assert "p = 0.05 for, 1 against (3 vs 3 seeds) | **holds** |" in text
    assert "unmet: the baseline plateaued | **not measured** |" in text
    assert ("Of the 2 claims put to the permutation test, 1 came out decisive (holds or "
            "does not hold); with no effect at all, chance alone would give 0.2") in text


def test_claims_files_of_the_old_rule_are_read_and_flagged_never_written(tmp_path):
    """A claims file from before issue 26 (no evidence, "mixed" verdicts) stays readable, and
    the report marks its section and counts it apart; no analysis may write "mixed" now."""
    results = tmp_path / "results"
    results.mkdir()
    rows = [{"claim": "c", "paper": "p", "ours": "o", "verdict": v, "dataset": "mnist",
             "source": "Ioffe & Szegedy (2015)"} for v in ("mixed", "holds")]
    (results / "fig1_mnist_claims.json").write_text(json.dumps({"claims": rows}))
    assert [c["verdict"] for c in read_claims(results / "fig1_mnist_claims.json")["claims"]] \
        == ["mixed", "holds"]
    with pytest.raises(ClaimsError, match="verdict 'mixed'"):
        write_claims(tmp_path / "x_claims.json", rows, experiment="x", title="t", make="m",
                     setup="s", figures=[], verdict_rule="r", summaries=[])
    report.main(["--results", str(results)])
    text = (results / "REPORT.md").read_text()
    assert "**2 of the 2 claims were decided by the old rule**" in text
    assert "**Decided by the old rule**" in text and "rerun `make fig1`" in text
    assert "| Ioffe & Szegedy (2015) | 2 | 1 | 0 | 0 | 0 | 1 |" in text
