"""Claims files: how an experiment's analysis (bnrepro.experiments) hands its computed verdicts
to the report (bnrepro.analysis.report).

Each plot script that checks claims writes results/<name>_claims.json next to its figures:

    {"experiment": "fig2_cifar",                  # the config `name` of the runs
     "title": "Figs. 2-3: accelerating BN networks",
     "make": "make fig2",                         # the command that (re)produces it
     "setup": "cifar10-jpeg, 1200 steps, ...",    # the profile the runs used, in words
     "figures": ["fig2_cifar10-jpeg.png"],        # file names in the same folder
     "verdict_rule": "holds: ...",                # how the verdicts below were computed
     "trained_on": ["<CPU> (AVX512), 2 threads of 2 cores, torch 2.15.0: 21 runs"],
                                                  # machines of its runs (bnrepro.run.machine)
     "claims": [{"claim": ..., "paper": ..., "ours": ..., "verdict": ...,
                 "dataset": ..., "source": ...}, ...]}

claim: the statement checked; paper: the paper's number or statement; ours: our number(s),
mean and spread over seeds; verdict: one of VERDICTS, computed from the runs, never typed;
dataset: exactly the data the runs used (cifar10-jpeg is not cifar10); source: the work the
claim comes from, one of SOURCES (report.py counts verdicts per source). A bare list of claim
dicts is read too (the other fields then empty).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bnrepro.atomic import atomic_write_json
from bnrepro.run.machine import trained_on

VERDICTS = ("holds", "mixed", "does not hold", "not measured")
# Worst last: the verdict of a claim checked in several places (layers, rates) is its worst.
RANK = {verdict: rank for rank, verdict in enumerate(VERDICTS)}
# Where a claim comes from. "ours": a check of our own setup (e.g. the baseline plateaued),
# reported beside the papers' claims but not counted as any paper's.
SOURCES = ("Ioffe & Szegedy (2015)", "Santurkar et al. (2018)", "Wu & He (2018)",
           "Ioffe (2017)", "De & Smith (2020)", "ours")
FIELDS = ("claim", "paper", "ours", "verdict", "dataset", "source")


def verdict(means_hold: bool, decisive: bool) -> str:
    """The one verdict rule every experiment uses: "holds" when the comparison holds for the
    seed means (or medians) and `decisive` (the seed ranges do not overlap, or the claim's own
    stricter test passes); "mixed" when only the means hold; "does not hold" otherwise."""
    return "holds" if means_hold and decisive else "mixed" if means_hold else "does not hold"


def worst(*verdicts: str) -> str:
    """The worst of several verdicts (RANK): a claim made for every layer or rate holds only
    where it holds for each."""
    return max(verdicts, key=RANK.__getitem__)


class ClaimsError(ValueError):
    """A claims file or row that does not follow the format above."""


def check_claim(row: dict[str, Any]) -> dict[str, str]:
    """`row` with every field a string; raises ClaimsError naming what is wrong."""
    if missing := [f for f in FIELDS if f not in row]:
        raise ClaimsError(f"claim {row.get('claim')!r} lacks {', '.join(missing)}")
    if row["verdict"] not in VERDICTS:
        raise ClaimsError(f"claim {row['claim']!r}: verdict {row['verdict']!r} is not one of "
                          f"{', '.join(VERDICTS)}")
    if row["source"] not in SOURCES:
        raise ClaimsError(f"claim {row['claim']!r}: source {row['source']!r} is not one of "
                          f"{', '.join(SOURCES)}")
    return {k: str(v) for k, v in row.items()}


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
    data["claims"] = [check_claim(c) for c in data["claims"]]
    return data


def to_markdown(title: str, claims: list[dict[str, Any]], verdict_rule: str,
                paper_header: str = "paper") -> str:
    """The human-readable claims table (results/<name>_claims.md): claim, paper, ours, verdict,
    then the rule the verdicts follow."""
    lines = [f"# {title}", "", f"| claim | {paper_header} | ours | verdict |", "|---|---|---|---|"]
    lines += [f"| {c['claim']} | {c['paper']} | {c['ours']} | {c['verdict']} |" for c in claims]
    return "\n".join([*lines, "", f"Verdict rule: {verdict_rule}", ""])
