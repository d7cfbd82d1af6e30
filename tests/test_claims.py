"""bnrepro.claims.compare: the one verdict rule. It decides a claim only when the exact
permutation test does, in either direction, and says "inconclusive" for a null effect (the
old rule said "does not hold" whenever the mean difference had the wrong sign)."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest

from bnrepro.claims import ALPHA, compare, permutation_p


def test_disjoint_ranges_decide_both_ways_at_three_seeds():
    a, b = [0.50, 0.52, 0.55], [0.40, 0.45, 0.49]
    assert compare(("a", a), ("b", b), "higher")[0] == "holds"
    assert compare(("b", b), ("a", a), "higher")[0] == "does not hold"
    assert compare(("a", a), ("b", b), "lower")[0] == "does not hold"
    assert permutation_p(a, b, "higher") == pytest.approx(1 / 20)


def test_a_null_effect_is_inconclusive_whatever_the_sign_of_the_mean_difference():
    # issue 26's example: BN-x30 vs BN-x5, means 0.4766 < 0.4782 but overlapping seeds
    x30, x5 = [0.4610, 0.4812, 0.4876], [0.4744, 0.4795, 0.4808]
    assert sum(x30) < sum(x5)
    result, evidence = compare(("BN-x30", x30), ("BN-x5", x5), "higher")
    assert result == "inconclusive"
    assert evidence["p_value"] > ALPHA and evidence["p_value_against"] > ALPHA


def test_under_the_null_a_decisive_verdict_is_as_rare_as_the_level_says():
    """Seeds drawn from one distribution: each direction is decided in at most ALPHA of the
    cases (exactly 1/20 each at 3 vs 3), so 'does not hold' is not the default."""
    rng = random.Random(0)
    verdicts = [compare(("a", [rng.gauss(0, 1) for _ in range(3)]),
                        ("b", [rng.gauss(0, 1) for _ in range(3)]), "higher")[0]
                for _ in range(4000)]
    for decided in ("holds", "does not hold"):
        assert verdicts.count(decided) / len(verdicts) < 0.07
    assert verdicts.count("inconclusive") / len(verdicts) > 0.85


def test_the_p_value_is_the_exact_share_of_relabellings():
    """Against a direct count: rank the 7 pooled values, and over all 35 ways to pick 4 of
    them, the share whose rank sum reaches the observed one."""
    a, b = [3.0, 1.0, 7.0, 4.0], [2.0, 5.0, 0.5]
    pooled = a + b
    rank = {v: r for r, v in enumerate(sorted(pooled), start=1)}  # no ties here
    observed = sum(rank[v] for v in a)
    picks = list(itertools.combinations(pooled, 4))
    share = sum(sum(rank[v] for v in pick) >= observed for pick in picks) / len(picks)
    assert permutation_p(a, b, "higher") == pytest.approx(share)
    assert permutation_p(b, a, "lower") == pytest.approx(share)


def test_nan_and_inf_count_as_worst_not_absent():
    """A diverged seed (NaN loss, never reached: inf steps) is the worst outcome, not dropped:
    dropping it would let a side with a diverged seed win."""
    bn, baseline = [100.0, 120.0, math.nan], [200.0, 210.0, 230.0]  # steps: lower is better
    assert compare(("BN", bn), ("baseline", baseline), "lower")[0] == "inconclusive"
    assert compare(("BN", bn[:2]), ("baseline", baseline), "lower")[0] != "does not hold"
    assert permutation_p([1.0, 2.0, math.inf], [3.0, 4.0, 5.0], "lower") > ALPHA
    assert permutation_p([math.nan] * 3, [1.0, 2.0, 3.0], "higher") == 1.0


def test_the_margin_is_part_of_the_claim():
    a, b = [0.60, 0.61, 0.62], [0.50, 0.51, 0.52]
    assert compare(("a", a), ("b", b), "higher", margin=0.05)[0] == "holds"
    assert compare(("a", a), ("b", b), "higher", margin=0.2)[0] == "does not hold"
    assert compare(("a", a), ("b", b), "higher", margin=0.1)[0] == "inconclusive"


def test_unmet_preconditions_and_missing_seeds_are_not_measured():
    a, b = [0.6, 0.7, 0.8], [0.1, 0.2, 0.3]
    result, evidence = compare(("a", a), ("b", b), "higher",
                               preconditions=[("the baseline plateaued", False)])
    assert result == "not measured"
    assert evidence["preconditions"] == [{"check": "the baseline plateaued", "met": False}]
    assert compare(("a", a), ("b", []), "higher")[0] == "not measured"


def test_two_seeds_a_side_can_never_decide():
    assert compare(("a", [9.0, 10.0]), ("b", [0.0, 1.0]), "higher")[0] == "inconclusive"


def test_the_evidence_recomputes_the_verdict_and_is_json():
    a, b = [0.50, 0.52, math.nan], [0.40, 0.45, 0.49]
    result, evidence = compare(("a", a), ("b", b), "higher")
    evidence = json.loads(json.dumps(evidence, allow_nan=False))
    sides = [s["seeds"] for s in evidence["sides"]]
    assert sides[0][2] is None
    again = compare(("a", sides[0]), ("b", sides[1]), evidence["better"], evidence["margin"])
    assert again[0] == result and again[1]["p_value"] == evidence["p_value"]
