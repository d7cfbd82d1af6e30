"""Claims files: how an experiment's analysis (bnrepro.experiments) hands its computed verdicts
to the report (bnrepro.report).

Each experiment that checks claims writes results/<name>_claims.json next to its figures:

    {"experiment": "fig2_cifar",                  # the config `name` of the runs
     "title": "Figs. 2-3: accelerating BN networks",
     "make": "make fig2",                         # the command that (re)produces it
     "setup": "cifar10-jpeg, 1200 steps, ...",    # the profile the runs used, in words
     "figures": ["fig2_cifar10-jpeg.png"],        # file names in the same folder
     "verdict_rule": "holds: ...",                # how the verdicts below were computed
     "trained_on": ["<CPU> (AVX512), 2 threads of 2 cores, torch 2.15.0: 21 runs"],
                                                  # machines of its runs (bnrepro.run.machine)
     "claims": [{"claim": ..., "paper": ..., "ours": ..., "verdict": ...,
                 "dataset": ..., "source": ..., "evidence": {...}}, ...]}

claim: the statement checked; paper: the paper's number or statement; ours: our number(s),
mean and spread over seeds; verdict: one of VERDICTS, computed from the runs, never typed;
dataset: exactly the data the runs used (cifar10-jpeg is not cifar10); source: the work the
claim comes from, one of SOURCES (the report counts verdicts per source); evidence: what the
verdict was computed from, so that a reader (or a script) can recompute it without the runs.
For a comparison (`compare`, the one rule):

    "evidence": {"sides": [{"label": "BN-x30", "seeds": [0.4610, 0.4812, 0.4876]},
                           {"label": "BN-x5",  "seeds": [0.4744, 0.4795, 0.4808]}],
                 "better": "higher",       # which way the claim points; the first side is
                 "margin": 0.0,            # the one it says is better, by this margin
                 "test": "exact one-sided permutation test of rank sums (3 vs 3 seeds, ...)",
                 "p_value": 0.35, "p_value_against": 0.8,
                 "preconditions": [{"check": "every schedule has rate left", "met": true}]}

A claim that is not a two-sided comparison (a slope in a range, "k of n diverged") records its
own numbers there in the same spirit, with "rule" saying how they decide. A bare list of claim
dicts is read too (the other fields then empty).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from bnrepro.atomic import atomic_write_json
from bnrepro.run.machine import trained_on

VERDICTS = ("holds", "inconclusive", "does not hold", "not measured")
# The rule before issue 26 called a claim "mixed" when the seed means agreed with it and the
# seed ranges overlapped (and "does not hold" whenever the means disagreed, a null effect too).
# Claims files written then are still read, and shown as decided by that old rule, until their
# experiment is rerun; nothing writes it any more.
OLD_RULE_VERDICT = "mixed"
# Worst last: the verdict of a claim checked in several places (layers, rates) is its worst.
RANK = {verdict: rank for rank, verdict in enumerate(VERDICTS)}
# Where a claim comes from. "ours": a check of our own setup (e.g. the baseline plateaued),
# reported beside the papers' claims but not counted as any paper's.
SOURCES = ("Ioffe & Szegedy (2015)", "Santurkar et al. (2018)", "Wu & He (2018)",
           "Ioffe (2017)", "De & Smith (2020)", "ours")
FIELDS = ("claim", "paper", "ours", "verdict", "dataset", "source")


def worst(*verdicts: str) -> str:
    """The worst of several verdicts (RANK): a claim made for every layer or rate holds only
    where it holds for each."""
    return max(verdicts, key=RANK.__getitem__)


ALPHA = 0.05  # the level of every test below
Better = Literal["higher", "lower"]


def _ranks(values: list[float]) -> list[float]:
    """Mid-ranks (1-based; ties share their mean rank)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in order[i:j + 1]:
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _as_better_higher(values: Sequence[float], better: Better) -> list[float]:
    """Values oriented so that higher is better; NaN (a diverged or unmeasurable seed) is the
    worst value there is, never left out."""
    sign = 1.0 if better == "higher" else -1.0
    floats = [math.nan if v is None else float(v) for v in values]
    return [-math.inf if math.isnan(v) else sign * v for v in floats]


def _seeds(values: Sequence[float]) -> list[float | None]:
    """Per-seed values as a claims file stores them: NaN as null (JSON has no NaN)."""
    return [None if v is None or math.isnan(float(v)) else float(v) for v in values]


def permutation_p(a: Sequence[float], b: Sequence[float], better: Better) -> float:
    """Exact one-sided permutation p-value that side `a` is better than side `b`: the share of
    all ways to split the pooled seeds into groups of len(a) and len(b) whose `a` group has a
    rank sum at least as good as the observed one (ranks: infinite and NaN values allowed).
    With 3 seeds a side the smallest p is 1/20 = 0.05, reached only when every seed of `a` is
    better than every seed of `b` (the ranges do not overlap)."""
    pooled = _as_better_higher([*a, *b], better)
    ranks = _ranks(pooled)
    observed = sum(ranks[: len(a)])
    splits = list(itertools.combinations(range(len(pooled)), len(a)))
    at_least = sum(sum(ranks[i] for i in split) >= observed - 1e-9 for split in splits)
    return at_least / len(splits)


def compare(a: tuple[str, Sequence[float]], b: tuple[str, Sequence[float]], better: Better,
            margin: float = 0.0, preconditions: Sequence[tuple[str, bool]] = ()
            ) -> tuple[str, dict[str, Any]]:
    """The one rule for a claim "`a` is better than `b` (by `margin`)", each side (label,
    per-seed values): "holds" when the exact permutation test decides for it at ALPHA, "does not
    hold" when the same test decides against it (`b` better than `a` shifted by the margin),
    otherwise "inconclusive"; "not measured" when a precondition is unmet or a side has no
    seeds. Returns the verdict and its evidence (the claims-file format in the module
    docstring), from which a reader can recompute it."""
    (label_a, seeds_a), (label_b, seeds_b) = a, b
    shift = margin if better == "higher" else -margin
    shifted = [math.nan if v is None else float(v) - shift for v in seeds_a]
    evidence: dict[str, Any] = {
        "sides": [{"label": label_a, "seeds": _seeds(seeds_a)},
                  {"label": label_b, "seeds": _seeds(seeds_b)}],
        "better": better, "margin": margin,
        "preconditions": [{"check": check, "met": bool(met)} for check, met in preconditions]}
    if not seeds_a or not seeds_b or not all(met for _, met in preconditions):
        return "not measured", evidence
    p_for = permutation_p(shifted, seeds_b, better)
    p_against = permutation_p(seeds_b, shifted, better)
    evidence |= {"test": f"exact one-sided permutation test of rank sums ({len(seeds_a)} vs "
                         f"{len(seeds_b)} seeds, alpha {ALPHA:g})",
                 "p_value": round(p_for, 6), "p_value_against": round(p_against, 6)}
    result = "holds" if p_for <= ALPHA else "does not hold" if p_against <= ALPHA else \
        "inconclusive"
    return result, evidence


class ClaimsError(ValueError):
    """A claims file or row that does not follow the format above."""


def check_claim(row: dict[str, Any], old_rule: bool = False) -> dict[str, Any]:
    """`row` with every field a string but "evidence" (a dict: what the verdict was computed
    from, `compare`'s or the claim's own numbers); raises ClaimsError naming what is wrong.
    `old_rule`: also accept OLD_RULE_VERDICT (reading a file written before issue 26)."""
    if missing := [f for f in FIELDS if f not in row]:
        raise ClaimsError(f"claim {row.get('claim')!r} lacks {', '.join(missing)}")
    if row["verdict"] not in VERDICTS and not (old_rule and row["verdict"] == OLD_RULE_VERDICT):
        raise ClaimsError(f"claim {row['claim']!r}: verdict {row['verdict']!r} is not one of "
                          f"{', '.join(VERDICTS)}")
    if row["source"] not in SOURCES:
        raise ClaimsError(f"claim {row['claim']!r}: source {row['source']!r} is not one of "
                          f"{', '.join(SOURCES)}")
    if not isinstance(row.get("evidence", {}), dict):
        raise ClaimsError(f"claim {row['claim']!r}: evidence must be a dict, got "
                          f"{type(row['evidence']).__name__}")
    return {k: v if k == "evidence" else str(v) for k, v in row.items()}


def write_claims(path: Path, claims: list[dict[str, Any]], *, experiment: str, title: str,
                 make: str, setup: str, figures: list[str], verdict_rule: str,
                 summaries: Iterable[dict]) -> Path:
    """Write a claims file (format above) atomically; every row is checked first.
    `summaries`: those of the runs the verdicts come from, for the machines that trained them
    (their floats depend on the CPU: bnrepro.run.machine)."""
    rows = [check_claim(c) for c in claims]
    atomic_write_json(Path(path), {"experiment": experiment, "title": title, "make": make,
                                   "setup": setup, "figures": figures,
                                   "verdict_rule": verdict_rule,
                                   "trained_on": trained_on(summaries), "claims": rows})
    return Path(path)


def read_claims(path: Path) -> dict[str, Any]:
    """A claims file as the dict above (a bare list becomes {"claims": list}, other fields
    empty); raises ClaimsError if it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ClaimsError(f"{path}: unreadable ({type(err).__name__}: {err})") from err
    if isinstance(data, list):
        data = {"claims": data}
    if not isinstance(data, dict) or not isinstance(data.get("claims"), list):
        raise ClaimsError(f"{path}: no list of claims")
    data = {"experiment": "", "title": Path(path).stem, "make": "", "setup": "",
            "figures": [], "verdict_rule": "", "trained_on": [], **data}
    data["claims"] = [check_claim(c, old_rule=True) for c in data["claims"]]
    return data


def by_old_rule(data: dict[str, Any]) -> bool:
    """A claims file (read_claims) written before claims carried their evidence: its verdicts
    come from the rule before issue 26 (OLD_RULE_VERDICT), until its experiment is rerun."""
    return bool(data["claims"]) and not any("evidence" in c for c in data["claims"])


def evidence_text(claim: dict[str, Any]) -> str:
    """The test behind a verdict in a few words: p-values for and against, or the claim's own
    rule, and every unmet precondition."""
    evidence = claim.get("evidence") or {}
    parts = []
    if "p_value" in evidence:
        sides = evidence["sides"]
        parts.append(f"p = {evidence['p_value']:.3g} for, {evidence['p_value_against']:.3g} "
                     f"against ({len(sides[0]['seeds'])} vs {len(sides[1]['seeds'])} seeds)")
    elif "rule" in evidence:
        parts.append(str(evidence["rule"]))
    parts += [f"unmet: {p['check']}" for p in evidence.get("preconditions", []) if not p["met"]]
    return "; ".join(parts) or "-"


def chance_decisions(claims: Iterable[dict[str, Any]]) -> float:
    """How many of `claims`' comparisons chance alone would decide ("holds" or "does not
    hold"): under no effect, an exact test at ALPHA decides each direction with probability
    floor(ALPHA * n) / n, n the number of ways to split the seeds (ties aside)."""
    expected = 0.0
    for claim in claims:
        evidence = claim.get("evidence") or {}
        if "p_value" in evidence:
            a, b = (len(side["seeds"]) for side in evidence["sides"])
            splits = math.comb(a + b, a)
            expected += 2 * math.floor(ALPHA * splits + 1e-9) / splits
    return expected


def to_markdown(title: str, claims: list[dict[str, Any]], verdict_rule: str,
                paper_header: str = "paper") -> str:
    """The human-readable claims table (results/<name>_claims.md): claim, paper, ours, the
    test (where the claims carry evidence), verdict, then the rule the verdicts follow."""
    tested = any("evidence" in c for c in claims)
    head = ["claim", paper_header, "ours", *(["test"] * tested), "verdict"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([c["claim"], c["paper"], c["ours"],
                                 *([evidence_text(c)] * tested), c["verdict"]]) + " |"
              for c in claims]
    return "\n".join([*lines, "", f"Verdict rule: {verdict_rule}", ""])
