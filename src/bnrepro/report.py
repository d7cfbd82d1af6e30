"""Gather every figure and every checked claim in results/ into one page, results/REPORT.md.

    python -m bnrepro.report [--results results] [--out results/REPORT.md]

Reads only what the experiments' analyses (bnrepro.experiments) wrote: the claims files
<results>/*_claims.json (format: bnrepro.claims; each claim with the paper's number, ours with
its spread over seeds, the dataset, the source and a verdict computed from the runs) and the
figures <results>/*.png. Nothing here computes a verdict: rerun the analyses (`python -m
bnrepro.analyse <experiment>`, or `make reproduce`) to refresh them.

The page: the machine it was written on; a headline table (per source paper, how many of its
claims hold, are inconclusive, do not hold, were not measured); every claim, one line each; then one
section per experiment in the order of bnrepro.experiments.EXPERIMENTS, with its command, its
setup (as its analysis states it), its figures and its claims with the rule their verdicts
follow. An experiment with no claims file and no figure is not left out: it is listed as "not
run" with the command that runs it. Files that no experiment claims are shown under "Other
results".
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
from pathlib import Path
from typing import Any

import torch

from bnrepro.atomic import atomic_write_text
from bnrepro.claims import (
    OLD_RULE_VERDICT,
    SOURCES,
    VERDICTS,
    ClaimsError,
    by_old_rule,
    chance_decisions,
    evidence_text,
    read_claims,
)
from bnrepro.experiments import EXPERIMENTS
from bnrepro.run.machine import describe


def machine() -> str:
    """This machine in one line: OS, architecture, CPU (model, vector ISA), cores, GPU (if
    torch sees one), Python and torch (bnrepro.run.machine.describe)."""
    m = describe(torch.device("cuda") if torch.cuda.is_available() else None)
    gpu = "no GPU" if m["gpu"] == "none" else f"GPU {m['gpu']}"
    return (f"{m['os']}, {m['cpu']} ({m['cpu_capability']}), {m['cores']} CPU cores, {gpu}, "
            f"Python {m['python']}, torch {m['torch']}")


def trained_on_line(data: dict) -> list[str]:
    """Which machines trained the runs behind a claims file (floats depend on the CPU)."""
    machines = data.get("trained_on") or ["not recorded"]
    return [f"Trained on: {'; '.join(machines)}."]


def matching(names: list[str], patterns: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns))


def cell(text: Any) -> str:
    """A markdown table cell: no line breaks, no unescaped pipes."""
    return str(text).replace("\n", " ").replace("|", "\\|")


def claims_table(claims: list[dict[str, Any]], with_experiment: bool = False) -> list[str]:
    """One row per claim; a "test" column (bnrepro.claims.evidence_text) where any claim
    carries its evidence."""
    tested = any("evidence" in c for c in claims)
    head = ["claim", "source", "paper", "ours", "dataset", *(["test"] * tested), "verdict"]
    if with_experiment:
        head.insert(0, "experiment")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in claims:
        row = [evidence_text(c) if k == "test" else c[k] for k in head if k != "experiment"]
        if with_experiment:
            row.insert(0, c["experiment"])
        lines.append("| " + " | ".join(cell(x) for x in row[:-1]) + f" | **{row[-1]}** |")
    return lines


def headline(claims: list[dict[str, str]]) -> list[str]:
    """Per source, in SOURCES order: the count of each verdict (and of the old rule's "mixed",
    while a claims file from before issue 26 is still in the folder)."""
    verdicts = [*VERDICTS, *([OLD_RULE_VERDICT] * any(
        c["verdict"] == OLD_RULE_VERDICT for c in claims))]
    lines = ["| source | claims | " + " | ".join(verdicts) + " |",
             "|---|---|" + "---|" * len(verdicts)]
    for source in SOURCES:
        mine = [c for c in claims if c["source"] == source]
        if not mine:
            continue
        counts = [sum(c["verdict"] == v for c in mine) for v in verdicts]
        name = "our own checks (not paper claims)" if source == "ours" else source
        lines.append(f"| {name} | {len(mine)} | " + " | ".join(map(str, counts)) + " |")
    return lines


def old_rule_line(data: dict[str, Any], make: str) -> list[str]:
    """A warning above a claims table whose verdicts the old rule decided (bnrepro.claims)."""
    if not by_old_rule(data):
        return []
    return ["**Decided by the old rule** (before issue 26: the sign of the seed means decided, "
            "so a null effect could read \"does not hold\"; \"mixed\" = the means agree, the "
            f"seeds overlap), with no evidence recorded: rerun `{make}` for the one rule's "
            "verdicts.", ""]


def chance_line(claims: list[dict[str, Any]]) -> list[str]:
    """How many decisive verdicts chance alone would give at this many tested comparisons."""
    tested = [c for c in claims if "p_value" in (c.get("evidence") or {})]
    if not tested:
        return []
    decided = sum(c["verdict"] in ("holds", "does not hold") for c in tested)
    return [f"Of the {len(tested)} claims put to the permutation test, {decided} came out "
            f"decisive (holds or does not hold); with no effect at all, chance alone would give "
            f"{chance_decisions(tested):.1f} on average (each test at "
            "alpha 0.05 in either direction).", ""]


def load(results: Path) -> tuple[dict[str, dict[str, Any]], list[str], list[str]]:
    """Claims files by name, every figure name, and one warning per unreadable claims file."""
    files, problems = {}, []
    for path in sorted(results.glob("*_claims.json")):
        try:
            files[path.name] = read_claims(path)
        except ClaimsError as err:
            problems.append(str(err))
    return files, sorted(p.name for p in results.glob("*.png")), problems


def figure_lines(names: list[str], link_prefix: str) -> list[str]:
    return [f"![{n}]({link_prefix}{n})\n\n`{n}`\n" for n in names]


def render(results: Path, out: Path) -> tuple[str, dict[str, Any]]:
    """The report's markdown, and what it contains (for the caller's message and tests)."""
    files, figures, problems = load(results)
    link_prefix = os.path.relpath(results.resolve(), out.parent.resolve()).replace(os.sep, "/")
    link_prefix = "" if link_prefix == "." else link_prefix + "/"
    sections, all_claims, not_run = [], [], []
    used_files, used_figures = set(), set()
    for exp in EXPERIMENTS.values():
        names = matching(list(files), exp.claims)
        figs = matching(figures, exp.figures)
        for name in names:
            figs += [f for f in files[name]["figures"] if f in figures and f not in figs]
        used_files |= set(names)
        used_figures |= set(figs)
        if not names and not figs:
            not_run.append(exp)
            if exp.in_reproduce:
                sections += [f"## {exp.title}", "", f"**Not run**: `{exp.make}` (no "
                             f"{' / '.join(exp.claims)} and no {' / '.join(exp.figures)} in "
                             f"{results}).", ""]
            continue
        sections += [f"## {exp.title}", "", f"Produced by `{exp.make}`."
                     + ("" if exp.in_reproduce else " Not part of `make reproduce`."), ""]
        for name in names:
            data = files[name]
            for c in data["claims"]:
                all_claims.append({**c, "experiment": exp.name})
            sections += [f"### {data['title']}", "", f"Setup: {data['setup'] or '(not stated)'}."
                         f" Claims file: `{name}`.", "", *trained_on_line(data), "",
                         *old_rule_line(data, exp.make),
                         *claims_table(data["claims"]), "",
                         f"Verdict rule: {data['verdict_rule'] or '(not stated)'}", ""]
        if not names:
            sections += ["No claims are checked for this experiment; its figures:", ""]
        sections += figure_lines(sorted(figs), link_prefix)
    other_files = sorted(set(files) - used_files)
    other_figures = sorted(set(figures) - used_figures)
    if other_files or other_figures:
        sections += ["## Other results", ""]
        for name in other_files:
            data = files[name]
            all_claims += [{**c, "experiment": name} for c in data["claims"]]
            sections += [f"### {data['title']}", "", *trained_on_line(data), "",
                         *claims_table(data["claims"]), "",
                         f"Verdict rule: {data['verdict_rule'] or '(not stated)'}", ""]
        sections += figure_lines(other_figures, link_prefix)

    head = ["# Report: Batch Normalization's claims, checked on our runs", "",
            "Written by `python -m bnrepro.report` (`make report`) from the claims "
            f"files and figures in `{results}`, which the experiments' analyses compute from "
            "the run store. Every verdict is computed from the runs by the analysis of the "
            "experiment named in its section, with "
            "the rule stated there; nothing here is typed by hand.", "",
            f"Report written on: {machine()}. Each experiment's setup (steps, width, seeds) is "
            "stated in its section; the datasets are named exactly (cifar10-jpeg is the JPEG "
            "mirror, not CIFAR-10).", ""]
    if not_run:
        head += ["Not run: " + ", ".join(f"`{e.make}`" + ("" if e.in_reproduce else
                                                          " (optional)") for e in not_run)
                 + " (no results in this folder; their claims are not counted below).", ""]
    if problems:
        head += ["Unreadable claims files (left out): " + "; ".join(problems), ""]
    old = sum(len(d["claims"]) for d in files.values() if by_old_rule(d))
    if old:
        head += [f"**{old} of the {len(all_claims)} claims were decided by the old rule** (their "
                 "claims files predate issue 26's one rule and carry no evidence; their "
                 "sections say which command reruns them).", ""]
    head += ["## Headline", "", *headline(all_claims), "", *chance_line(all_claims),
             "## Every claim", "",
             *claims_table(all_claims, with_experiment=True), ""]
    text = "\n".join(head + sections).rstrip() + "\n"
    return text, {"claims": all_claims, "not_run": [e.name for e in not_run],
                  "figures": sorted(used_figures | set(other_figures)), "problems": problems}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="the folder the analyses wrote to")
    parser.add_argument("--out", type=Path, default=None,
                        help="the report file (default: <results>/REPORT.md)")
    args = parser.parse_args(argv)
    out = args.out or args.results / "REPORT.md"
    if not args.results.is_dir():
        print(f"error: no results folder {args.results}", file=sys.stderr)
        return 2
    text, contents = render(args.results, out)
    atomic_write_text(out, text)
    print(f"wrote {out}: {len(contents['claims'])} claims, {len(contents['figures'])} figures"
          + (f"; not run: {', '.join(contents['not_run'])}" if contents["not_run"] else ""))
    for problem in contents["problems"]:
        print(f"warning: {problem}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
